//! Fast paths that must not change a vector: variable-length text batches on a text tower with a
//! dynamic sequence axis, and reduced-precision variants served only behind their accuracy gate.

use crate::common::*;
use clip_serve::{
    grpc::pb,
    model::{CpuFeatures, Precision, PrecisionArg},
};

async fn info(server: &TestServer) -> pb::GetInfoResponse {
    server
        .info()
        .get_info(pb::GetInfoRequest {})
        .await
        .expect("Info")
        .into_inner()
}

async fn embed_texts(server: &TestServer, texts: &[&str]) -> Vec<Vec<f32>> {
    server
        .embed()
        .embed_texts(pb::EmbedTextsRequest {
            texts: texts.iter().map(|t| t.to_string()).collect(),
        })
        .await
        .expect("EmbedTexts")
        .into_inner()
        .embeddings
        .into_iter()
        .map(|e| e.values)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Each fixture text alone (so its batch runs only as long as it needs), against open_clip torch at
/// the full 77 ids: the same vector, including texts cut at the context length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variable_length_text_equals_open_clip_at_full_length() {
    let server = serve(config(&tiny_model())).await;
    let text = info(&server).await.text.expect("a text tower");
    assert!(
        text.dynamic_length,
        "the standard fixture has a dynamic sequence axis: {text:?}"
    );
    let reference = reference();
    let mut worst = 1.0f64;
    let mut truncated = 0;
    for want in &reference.texts {
        let got = &embed_texts(&server, &[&want.text]).await[0];
        let c = cosine(got, &want.embedding);
        worst = worst.min(c);
        assert!(c >= 0.99999, "text {:?}: cosine {c}", want.text);
        truncated += usize::from(want.ids.last().is_some_and(|&id| id != 0));
    }
    assert!(
        truncated > 0,
        "the fixtures include a text that fills the context"
    );
    println!("variable length vs open_clip at 77: worst cosine {worst:.9}");
}

/// The same text in batches whose longest member differs (so they run at different lengths):
/// within 1e-6 of each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_gets_the_same_vector_whatever_it_is_batched_with() {
    let server = serve(config(&tiny_model())).await;
    let short = "a photo of a cat.";
    let long = "a very long caption that goes on and on about a small grey cat sitting on a wooden \
                table next to a cup of coffee in the morning light of a quiet kitchen";
    let alone = embed_texts(&server, &[short]).await.remove(0);
    let with_long = embed_texts(&server, &[short, long]).await.remove(0);
    let with_short = embed_texts(&server, &[long, short, short]).await.remove(1);
    let d1 = max_abs_diff(&alone, &with_long);
    let d2 = max_abs_diff(&alone, &with_short);
    assert!(d1 <= 1e-6 && d2 <= 1e-6, "max |diff| {d1:e} and {d2:e}");
    // The batches really ran at different lengths: the short one alone at 8 ids, the others longer.
    let metrics = http_get(server.server.http_addr, "/metrics").await.1;
    let at_most = |le: &str| {
        metric_value(
            &metrics,
            &format!("clip_text_batch_length_tokens_bucket{{le=\"{le}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(at_most("8") >= 1.0, "a batch ran at 8 ids");
    assert!(
        at_most("77") - at_most("16") >= 2.0,
        "two batches ran longer than 16 ids"
    );
}

/// A static-length export (Immich's style) keeps working at the full context length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_length_export_runs_at_the_full_context() {
    let server = serve(config(&tiny_model_immich())).await;
    let text = info(&server).await.text.expect("a text tower");
    assert!(!text.dynamic_length);
    let reference = reference();
    for want in reference.texts.iter().take(8) {
        let got = &embed_texts(&server, &[&want.text]).await[0];
        assert!(cosine(got, &want.embedding) >= 0.9999, "{:?}", want.text);
    }
}

/// The fixture model's int8 and fp16 variants serve behind their passed gate, close to fp32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_variants_serve_at_each_precision() {
    let fp32 = serve(config(&tiny_model())).await;
    let texts = ["a photo of a cat.", "a diagram", ""];
    let want = embed_texts(&fp32, &texts).await;
    let image = read_fixture("images/coffee_small.bmp");
    let embed_image = |server: &TestServer| {
        let mut client = server.embed();
        let image = image.clone();
        async move {
            client
                .embed_images(pb::EmbedImagesRequest {
                    images: vec![image],
                })
                .await
                .expect("EmbedImages")
                .into_inner()
                .embeddings
                .remove(0)
                .values
        }
    };
    let want_image = embed_image(&fp32).await;
    assert_eq!(info(&fp32).await.precision, "fp32");
    for precision in [Precision::Int8, Precision::Fp16] {
        let mut cfg = config(&tiny_model());
        cfg.precision = precision.into();
        let server = serve(cfg).await;
        let info = info(&server).await;
        assert_eq!(info.precision, precision.as_str());
        let gate = info.precision_gate.expect("the gate's figures");
        assert!(!gate.ungated);
        let textual = gate.textual.expect("textual gate");
        assert!(textual.passed && textual.cosine_min >= 0.99, "{textual:?}");
        assert!(info.text.unwrap().path.ends_with(precision.file_name()));
        for (got, want) in embed_texts(&server, &texts).await.iter().zip(&want) {
            let c = cosine(got, want);
            assert!(
                c >= textual.cosine_min - 1e-3,
                "{precision:?}: text cosine {c}"
            );
        }
        let c = cosine(&embed_image(&server).await, &want_image);
        assert!(c >= 0.99, "{precision:?}: image cosine {c}");
        let metrics = http_get(server.server.http_addr, "/metrics").await.1;
        assert!(
            metrics.contains(&format!("precision=\"{}\"", precision.as_str())),
            "clip_model_info has the precision label"
        );
    }
}

/// A variant whose gate failed (or that was never gated) is refused at start-up, naming why,
/// unless --allow-ungated-precision, which Info then reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungated_variant_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_model(), &model);
    let report = model.join("quantization.json");
    let mut gate: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    gate["variants"]["int8"]["towers"]["visual"]["pass"] = false.into();
    gate["variants"]["int8"]["towers"]["visual"]["failures"] = serde_json::json!(["made to fail"]);
    std::fs::write(&report, gate.to_string()).unwrap();
    let mut cfg = config(&model);
    cfg.precision = Precision::Int8.into();
    let e = match clip_serve::server::start(cfg.clone(), Default::default()).await {
        Ok(_) => panic!("a failed gate must refuse the variant"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("visual tower failed its accuracy gate") && e.contains("made to fail"),
        "{e}"
    );
    std::fs::remove_file(&report).unwrap();
    let e = match clip_serve::server::start(cfg.clone(), Default::default()).await {
        Ok(_) => panic!("a missing gate must refuse the variant"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("no accuracy gate report"), "{e}");
    cfg.allow_ungated_precision = true;
    let server = serve(cfg).await;
    let gate = info(&server).await.precision_gate.expect("gate");
    assert!(gate.ungated);
}

/// `--full-length-text` runs every text at the context length: the same vectors, the slow way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_length_text_turns_trimming_off() {
    let trimmed = serve(config(&tiny_model())).await;
    let mut cfg = config(&tiny_model());
    cfg.full_length_text = true;
    let full = serve(cfg).await;
    let texts = ["a photo of a dog.", "a diagram of a cat on a mat"];
    let a = embed_texts(&trimmed, &texts).await;
    let b = embed_texts(&full, &texts).await;
    for (x, y) in a.iter().zip(&b) {
        assert!(max_abs_diff(x, y) <= 1e-6);
    }
    let metrics = http_get(full.server.http_addr, "/metrics").await.1;
    let bucket = |le: &str| {
        metric_value(
            &metrics,
            &format!("clip_text_batch_length_tokens_bucket{{le=\"{le}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(bucket("64"), 0.0, "no batch ran short");
    assert!(bucket("77") >= 1.0);
}

/// `--precision auto` with the CPU flags injected (not this machine's): int8 where the fixture's
/// int8 gate passed and the CPU has VNNI (also with AMX-BF16, since the fixture has no bf16 gate),
/// fp32 on an AVX2-only CPU; Info and `clip_model_info` report the choice and Info says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_precision_follows_the_cpu_and_the_gates() {
    let cases = [
        ("avx2 avx512f avx512_vnni avx512_bf16", "int8", "VNNI"),
        (
            "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8",
            "int8",
            "no passed bf16 gate",
        ),
        ("avx2", "fp32", "no VNNI or AMX-INT8"),
    ];
    for (flags, want, why) in cases {
        let mut cfg = config(&tiny_model());
        cfg.precision = PrecisionArg::Auto;
        cfg.cpu_features = Some(CpuFeatures::from_flags(flags));
        let server = serve(cfg).await;
        let info = info(&server).await;
        assert_eq!(info.precision, want, "{flags}");
        assert_eq!(info.execution_provider, "cpu");
        assert!(
            info.precision_reason.contains(why) && info.precision_reason.contains("textual: auto"),
            "{flags}: {}",
            info.precision_reason
        );
        assert_eq!(info.precision_gate.is_some(), want != "fp32");
        let metrics = http_get(server.server.http_addr, "/metrics").await.1;
        assert!(
            metrics.contains(&format!("precision=\"{want}\"")),
            "clip_model_info reports {want}"
        );
    }
}
