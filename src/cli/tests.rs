//! The flags parse and validate into the [`Config`] they always did.

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches};

use super::{
    help_tests::{CHILD, rerun_alone},
    *,
};
use crate::{model::Provider, postgres::StoreConfig};

/// `clip-serve serve ARGS...`, validated, with the environment twins ignored (a developer's
/// `CLIP_SERVE_*` must not decide a test).
fn parse(args: &[&str]) -> Result<Config, String> {
    let mut full = vec!["clip-serve", "serve"];
    full.extend_from_slice(args);
    let command = Cli::command().mut_subcommand("serve", |serve| {
        serve.mut_args(|arg| arg.env(None::<&'static str>))
    });
    let matches = command
        .try_get_matches_from(full)
        .map_err(|e| e.to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(args) => args.validate(),
        other => Err(format!("parsed as {other:?}")),
    }
}

#[test]
fn defaults_are_valid() {
    let config = parse(&[]).expect("defaults validate");
    assert_eq!(config.grpc_addr.to_string(), "0.0.0.0:50051");
    assert_eq!(config.http_addr.to_string(), "0.0.0.0:8080");
    assert_eq!(config.model_dir, PathBuf::from(DEFAULT_MODEL_DIR));
    assert_eq!(config.providers.provider, Provider::Cpu);
    assert!(config.intra_op_threads >= 1);
    assert!(!config.embed.apply_exif_orientation);
}

#[test]
fn fetch_flags_validate() {
    assert_eq!(parse(&[]).unwrap().fetch, None);
    let err = parse(&["--fetch-allow-hosts", "a.com"]).unwrap_err();
    assert!(err.contains("--fetch-image-urls"), "{err}");
    let config = parse(&[
        "--fetch-image-urls",
        "--fetch-allow-hosts",
        "a.com,127.0.0.1:9",
    ]);
    let fetch = config.unwrap().fetch.unwrap();
    assert_eq!(fetch.allow_hosts.len(), 2);
    assert_eq!(fetch.max_bytes, 16 * 1024 * 1024);
    assert_eq!(fetch.timeout, Duration::from_secs(10));
    assert_eq!((fetch.concurrency, fetch.per_request), (16, 4));
    let err = parse(&["--fetch-image-urls", "--fetch-allow-hosts", "*"]).unwrap_err();
    assert!(err.contains("--fetch-allow-hosts"), "{err}");
}

#[test]
fn zero_limits_are_refused_with_the_flag_name() {
    let err = parse(&["--max-items-per-request", "0"]).unwrap_err();
    assert!(err.contains("--max-items-per-request"), "{err}");
    let err = parse(&["--max-image-pixels", "0"]).unwrap_err();
    assert!(err.contains("--max-image-pixels"), "{err}");
}

#[test]
fn postgres_index_flags_reach_the_config_and_bad_build_parameters_are_named() {
    let pg = |extra: &[&str]| {
        let mut args = vec!["--store", "postgres", "--postgres-url", "postgres://h/db"];
        args.extend_from_slice(extra);
        parse(&args).map(|c| match c.store {
            StoreConfig::Postgres(pg) => pg,
            other => panic!("{other:?}"),
        })
    };
    use crate::postgres::schema::{HnswBuild, IndexKind};
    let defaults = pg(&[]).unwrap();
    assert_eq!(defaults.index, IndexKind::Vector);
    assert_eq!(defaults.build, HnswBuild::default());
    assert_eq!(defaults.oversample, 40);
    assert_eq!(defaults.mirror, crate::postgres::MirrorConfig::default());
    let set = pg(&[
        "--postgres-index",
        "binary",
        "--postgres-oversample",
        "80",
        "--postgres-hnsw-m",
        "24",
        "--postgres-hnsw-ef-construction",
        "200",
    ])
    .unwrap();
    assert_eq!(set.index, IndexKind::Binary);
    assert_eq!(
        set.build,
        HnswBuild {
            m: 24,
            ef_construction: 200
        }
    );
    assert_eq!(set.oversample, 80);
    assert_eq!(
        pg(&["--postgres-halfvec"]).unwrap().index,
        IndexKind::Halfvec
    );
    assert_eq!(
        pg(&["--postgres-index", "none", "--postgres-halfvec"])
            .unwrap()
            .index,
        IndexKind::None
    );
    let err = pg(&["--postgres-hnsw-m", "48"]).unwrap_err();
    assert!(err.contains("--postgres-hnsw-ef-construction"), "{err}");
    let err = pg(&["--postgres-oversample", "0"]).unwrap_err();
    assert!(err.contains("--postgres-oversample"), "{err}");
    // The mirrors' flags.
    let mirror = pg(&[
        "--postgres-mirror-max-items",
        "0",
        "--postgres-mirror-poll",
        "250ms",
        "--postgres-mirror-max-recent",
        "7",
        "--postgres-change-retention",
        "2m",
    ])
    .unwrap()
    .mirror;
    assert_eq!(
        mirror,
        crate::postgres::MirrorConfig {
            max_items: 0,
            poll: std::time::Duration::from_millis(250),
            retention: std::time::Duration::from_secs(120),
            max_recent: 7,
        }
    );
    let err = pg(&["--postgres-mirror-poll", "0s"]).unwrap_err();
    assert!(err.contains("--postgres-mirror-poll"), "{err}");
    let err = pg(&["--postgres-change-retention", "30s"]).unwrap_err();
    assert!(err.contains("--postgres-change-retention"), "{err}");
    let err = pg(&["--postgres-mirror-max-recent", "0"]).unwrap_err();
    assert!(err.contains("--postgres-mirror-max-recent"), "{err}");
}

#[test]
fn store_flags_select_and_configure_postgres() {
    assert!(matches!(parse(&[]).unwrap().store, StoreConfig::Local));
    let err = parse(&["--store", "postgres"]).unwrap_err();
    assert!(err.contains("--postgres-url"), "{err}");
    let err = parse(&["--postgres-url", "postgres://h/db"]).unwrap_err();
    assert!(err.contains("--store postgres"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cret\n").unwrap();
    let config = parse(&[
        "--store",
        "postgres",
        "--postgres-url",
        "postgres://clip@db:5432/clip",
        "--postgres-password-file",
        file.to_str().unwrap(),
        "--postgres-pool-size",
        "4",
    ])
    .unwrap();
    let StoreConfig::Postgres(pg) = &config.store else {
        panic!("{:?}", config.store)
    };
    assert_eq!(pg.password.as_deref(), Some("s3cret"));
    assert_eq!((pg.pool_size, pg.exact_below), (4, 10_000));
    assert_eq!(
        (pg.statement_timeout, pg.lock_timeout),
        (Duration::from_secs(30), Duration::from_secs(5))
    );
    // Neither the password nor the URL is ever printed.
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("db:5432"),
        "{shown}"
    );
    let err = parse(&[
        "--store",
        "postgres",
        "--postgres-url",
        "postgres://h/db",
        "--postgres-pool-size",
        "0",
    ])
    .unwrap_err();
    assert!(err.contains("--postgres-pool-size"), "{err}");
}

#[test]
fn flags_parse() {
    let config = parse(&[
        "--model-dir",
        "/m",
        "--grpc-addr",
        "127.0.0.1:9000",
        "--provider",
        "tensorrt",
        "--intra-op-threads",
        "3",
        "--apply-exif-orientation",
    ])
    .unwrap();
    assert_eq!(config.model_dir, PathBuf::from("/m"));
    assert_eq!(config.grpc_addr.port(), 9000);
    assert_eq!(config.providers.provider, Provider::Tensorrt);
    assert_eq!(config.intra_op_threads, 3);
    assert!(config.embed.apply_exif_orientation);
    assert!(parse(&["--provider", "tpu"]).is_err());
    let gpu = parse(&[
        "--provider",
        "tensorrt",
        "--trt-fp16",
        "--trt-engine-cache-dir",
        "/cache",
        "--trt-workspace-bytes",
        "4294967296",
        "--max-batch-size",
        "128",
    ])
    .unwrap();
    assert!(gpu.providers.trt_fp16);
    assert_eq!(
        gpu.providers.trt_engine_cache_dir,
        Some(PathBuf::from("/cache"))
    );
    assert_eq!(gpu.providers.trt_workspace_bytes, Some(1 << 32));
    assert_eq!(gpu.embed.batch.max_batch_size, 128);
    assert_eq!(gpu.providers.max_batch_size, 128);
    let aliases = parse(&[
        "--model-alias",
        "jina-clip-v2,rerank-v3.5",
        "--model-alias",
        "ViT-B-32__openai",
    ])
    .unwrap();
    assert_eq!(
        aliases.model_aliases,
        ["jina-clip-v2", "rerank-v3.5", "ViT-B-32__openai"]
    );
    let err = parse(&["--provider", "cuda", "--trt-fp16"]).unwrap_err();
    assert!(err.contains("--provider tensorrt"), "{err}");
}

#[test]
fn durations_parse_in_human_forms() {
    assert_eq!(
        parse(&["--shutdown-grace", "1500ms"])
            .unwrap()
            .shutdown_grace,
        Duration::from_millis(1500)
    );
}

#[test]
fn clap_states_the_rules_between_flags() {
    let err = parse(&["--tls-cert", "/c.pem"]).unwrap_err();
    assert!(err.contains("--tls-key"), "{err}");
    let err = parse(&["--tls-key", "/k.pem"]).unwrap_err();
    assert!(err.contains("--tls-cert"), "{err}");
    let err = parse(&["--tls-client-ca", "/ca.pem", "--tls-cert", "/c.pem"]).unwrap_err();
    assert!(err.contains("--tls-key"), "{err}");
    let tls = parse(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"])
        .unwrap()
        .tls;
    assert_eq!(tls.cert, Some(PathBuf::from("/c.pem")));
    let err = parse(&[
        "--store",
        "postgres",
        "--postgres-url",
        "postgres://h/db",
        "--postgres-password",
        "pw",
        "--postgres-password-file",
        "/pw",
    ])
    .unwrap_err();
    assert!(
        err.contains("--postgres-password") && err.contains("cannot be used with"),
        "{err}"
    );
    // The trt flags need --provider tensorrt: a rule on a value, still checked by hand.
    let err = parse(&["--trt-fp16"]).unwrap_err();
    assert!(err.contains("not cpu"), "{err}");
}

#[test]
fn for_model_reads_no_environment() {
    if std::env::var_os(CHILD).is_none() {
        return rerun_alone(
            "cli::tests::for_model_reads_no_environment",
            &[
                (CHILD, "1"),
                ("CLIP_SERVE_MAX_BATCH_SIZE", "7"),
                ("CLIP_SERVE_STORE", "postgres"),
                ("CLIP_SERVE_POSTGRES_URL", "postgres://h/db"),
                ("CLIP_SERVE_SHUTDOWN_GRACE", "3s"),
                ("ORT_DYLIB_PATH", "/elsewhere/libonnxruntime.so"),
            ],
        );
    }
    let config = Config::for_model("/m");
    assert_eq!(config.embed.batch.max_batch_size, 32);
    assert!(matches!(config.store, StoreConfig::Local), "{config:?}");
    assert_eq!(config.shutdown_grace, Duration::from_secs(20));
    assert_eq!(config.ort_dylib_path, PathBuf::from(DEFAULT_ORT_DYLIB));
    // `clip-serve serve` still honours every twin.
    let Command::Serve(args) = Cli::try_parse_from(["clip-serve", "serve"])
        .unwrap()
        .command
    else {
        panic!("`serve` parsed as another command")
    };
    let served = args.validate().unwrap();
    assert_eq!(served.embed.batch.max_batch_size, 7);
    assert!(matches!(served.store, StoreConfig::Postgres(_)));
    assert_eq!(served.shutdown_grace, Duration::from_secs(3));
    assert_eq!(
        served.ort_dylib_path,
        PathBuf::from("/elsewhere/libonnxruntime.so")
    );
}

#[test]
fn the_batch_lease_parses_and_is_bounded_below() {
    assert_eq!(parse(&[]).unwrap().jobs.lease, Duration::from_secs(30));
    let config = parse(&["--batch-lease", "5s"]).unwrap();
    assert_eq!(config.jobs.lease, Duration::from_secs(5));
    let err = parse(&["--batch-lease", "10ms"]).unwrap_err();
    assert!(err.contains("--batch-lease"), "{err}");
}

#[test]
fn the_recall_check_duty_is_a_bounded_share() {
    assert_eq!(parse(&[]).unwrap().retrieve.recall.duty_permille, 100);
    let set = parse(&["--recall-check-duty", "0.25"]).unwrap();
    assert_eq!(set.retrieve.recall.duty_permille, 250);
    for bad in ["0", "1.5", "NaN", "-0.1"] {
        let err = parse(&[&format!("--recall-check-duty={bad}")]).unwrap_err();
        assert!(err.contains("--recall-check-duty"), "{bad}: {err}");
    }
}
