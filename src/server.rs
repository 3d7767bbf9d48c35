//! Wiring: load the model -> warm up -> gRPC services + health + reflection, the HTTP side
//! (metrics, health) -> graceful shutdown.
//!
//! The listeners are bound first so that health checks answer NOT_SERVING (and /readyz 503) while
//! the model loads (seconds for the full-size model); the services turn SERVING once the model is
//! warmed up. On shutdown the HTTP side stays up until the gRPC calls have drained, so the drain
//! can be watched in the metrics.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinHandle,
};

use crate::{
    admission::{AdmissionConfig, Gate, connections::ConnectionLimit},
    classify::ClassifyService,
    cli::Config,
    embed::EmbedService,
    grpc, http,
    model::{LoadedModel, ModelFiles, WeightsKind, runtime},
    postgres::StoreConfig,
    retrieve::RetrieveService,
    security::ApiKeys,
    telemetry::metrics::Metrics,
};

/// Connections the probe listener takes at once (kubelet probes and a scraper need a few).
const PROBE_MAX_CONNECTIONS: usize = 64;

/// Hooks for tests and embedders.
#[derive(Default)]
pub struct StartOptions {
    /// When set, model loading waits for this signal, so a test can observe NOT_SERVING.
    pub hold_model_load: Option<oneshot::Receiver<()>>,
    /// When set, reading the collections into memory waits for this signal.
    pub hold_collections_load: Option<oneshot::Receiver<()>>,
}

/// A server running in this process.
pub struct RunningServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The plain-HTTP probe listener (`--probe-addr`), if any.
    pub probe_addr: Option<SocketAddr>,
    pub service: EmbedService,
    pub classify: ClassifyService,
    shutdown: Option<oneshot::Sender<()>>,
    ready: watch::Receiver<Readiness>,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Model loading progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Loading,
    Ready,
    Failed(String),
}

impl RunningServer {
    /// Waits until the model is loaded and warmed up, or returns its loading error.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let state = self
            .ready
            .wait_for(|r| *r != Readiness::Loading)
            .await
            .context("server stopped while loading")?;
        match &*state {
            Readiness::Ready => Ok(()),
            Readiness::Failed(e) => Err(anyhow::anyhow!("{e}")),
            Readiness::Loading => unreachable!("wait_for returned while loading"),
        }
    }

    /// Starts a graceful shutdown and waits for the server to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("server task panicked")?
    }
}

/// Validates the model directory, binds the gRPC listener, starts serving health checks, and loads
/// the model in the background.
pub async fn start(config: Config, options: StartOptions) -> anyhow::Result<RunningServer> {
    // Cheap checks first, so a wrong path or a missing library fails before anything is bound.
    let env = runtime::environment(&config.ort_dylib_path)?;
    let mut files = ModelFiles::open_at(
        &config.model_dir,
        config.precision,
        config.allow_ungated_precision,
    )?;
    files.full_length_text = config.full_length_text;
    match files.config.weights {
        WeightsKind::RandomInit => tracing::warn!(
            model = %files.config.display_name(),
            "THIS MODEL HAS RANDOM WEIGHTS: its vectors are meaningless; use it for speed measurements only"
        ),
        WeightsKind::Test => {
            tracing::warn!(model = %files.config.display_name(), "serving a tiny TEST model")
        }
        WeightsKind::Unspecified => tracing::info!(
            model = %files.config.display_name(),
            "config.json does not say what the weights are (no `weights` field)"
        ),
        WeightsKind::Pretrained => {}
    }

    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding {}", config.grpc_addr))?;
    let grpc_addr = listener.local_addr()?;
    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding --http-addr {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let probe_listener = match config.probe_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --probe-addr {addr}"))?,
        ),
        None => None,
    };
    let probe_addr = probe_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    let keys = ApiKeys::load_with(
        config.api_key.as_ref().map(|k| k.0.clone()),
        config.api_key_file.clone(),
        config.rate_limit,
    )
    .map_err(|e| anyhow::anyhow!(e))?
    .throttle_failures(config.auth_failures_per_minute);
    let tls = config.tls.load().map_err(|e| anyhow::anyhow!(e))?;
    if keys.enabled() {
        tracing::info!(key_file = ?keys.key_file(), public_reflection = config.public_reflection, "API keys required");
        spawn_key_reloader(keys.clone());
    } else if config.rate_limit.is_some() {
        tracing::warn!("--rate-limit has no effect without API keys (limits are per key)");
    }
    let metrics = Metrics::new()
        .context("registering metrics")?
        .with_key_names(config.metrics_key_names);
    let classify_metrics = metrics.classify();
    let gate = Gate::new(
        AdmissionConfig {
            max_concurrent_requests: config.embed.limits.max_concurrent_requests,
            max_inflight_bytes: config.max_inflight_bytes,
            max_stream_readers: config.max_stream_readers,
        },
        metrics.requests_in_flight().clone(),
        metrics.inflight_bytes(),
    );
    let (open, refused) = metrics.connections();
    let doors = config.doors.clone();
    let connection_limit = ConnectionLimit::new(
        doors.max_connections,
        doors.max_connections_per_peer,
        open,
        refused,
    );
    // The probe listener has places of its own, outside those an attacker can fill.
    let probe_limit = ConnectionLimit::new(
        PROBE_MAX_CONNECTIONS,
        0,
        prometheus::IntGauge::new("probe_connections_open", "unregistered")?,
        prometheus::IntCounter::new("probe_connections_refused", "unregistered")?,
    );
    let unary = grpc::progress::UnaryRules {
        budget: gate.bytes().clone(),
        timeout: doors.body_read_timeout,
        min_rate: doors.body_min_rate,
    };
    let body_rules = http::body::BodyRules::new(
        config.embed.limits.max_message_bytes,
        gate.bytes().clone(),
        doors.body_read_timeout,
        doors.body_min_rate,
        doors.max_body_readers,
    );
    let service = EmbedService::new(config.embed, gate, metrics);
    // With --store postgres, collections and label sets share one pool.
    let shared = match &config.store {
        StoreConfig::Local => None,
        StoreConfig::Postgres(pg) => Some((crate::postgres::pool(pg)?, pg.clone())),
    };
    let classify = ClassifyService::open(
        service.clone(),
        &config.data_dir,
        config.classify,
        classify_metrics,
        shared.as_ref().map(|(pool, _)| pool.clone()),
    )?;
    let retrieve = match shared {
        None => RetrieveService::open(
            service.clone(),
            &config.data_dir,
            config.retrieve,
            service.metrics().store_records_skipped(),
            Some(service.metrics().search_recall()),
        )?,
        Some((pool, pg)) => {
            tracing::info!(
                pool_size = pool.status().max_size,
                exact_below = pg.exact_below,
                halfvec = pg.halfvec,
                "collections and label sets in PostgreSQL"
            );
            RetrieveService::with_postgres(service.clone(), pool, &pg, config.retrieve)
        }
    }
    .with_search_paths(service.metrics().search_paths());
    let (endpoint, health) = grpc::transport::endpoint(
        service.clone(),
        classify.clone(),
        retrieve.clone(),
        config.embed.limits.max_message_bytes,
        grpc::transport::Security {
            keys: keys.clone(),
            public_reflection: config.public_reflection,
            tls: tls.clone(),
        },
        grpc::transport::Connections {
            limit: connection_limit.clone(),
            max_age: config.max_connection_age,
            age_grace: config.shutdown_grace,
            keepalive: config.http2_keepalive,
            preface_timeout: doors.header_read_timeout,
            idle_timeout: doors.idle_timeout,
            unary,
        },
    )
    .await?;
    let fetcher = match config.fetch.clone() {
        Some(fetch) => Some(
            crate::embed::fetch::Fetcher::new(
                fetch,
                service.metrics().image_fetches(),
                Some(service.gate().bytes().clone()),
            )
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let http_router = http::router(http::Services {
        fetcher,
        embed: service.clone(),
        classify: classify.clone(),
        retrieve: retrieve.clone(),
        keys,
        body: body_rules,
        allowed_hosts: doors.allowed_hosts.clone(),
        model_aliases: config.model_aliases.clone(),
        json: http::body::JsonLimits {
            max_labels: config.classify.prompts.max_labels,
            max_depth: config.max_json_depth,
            max_value_bytes: config.max_json_bytes,
            max_metadata_bytes: config.retrieve.max_metadata_bytes,
            ..Default::default()
        },
    });
    let probe_router = http::probes::routes(service.clone(), retrieve.clone());

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = watch::channel(Readiness::Loading);

    // The collections are read into memory in the background (seconds for millions of vectors):
    // Retrieve turns SERVING when they are in. A shared store (PostgreSQL) holds back Retrieve
    // alone while it is being reached and migrated: the server as a whole serves meanwhile.
    let shared_store = retrieve.store_kind() != "local";
    if shared_store {
        health.store_available(false).await;
        health.ready(grpc::transport::Part::Collections).await;
    }
    let collections = {
        let (retrieve, health, classify) = (retrieve.clone(), health.clone(), classify.clone());
        let hold = options.hold_collections_load;
        tokio::spawn(async move {
            if let Some(hold) = hold {
                let _ = hold.await;
            }
            match retrieve.load().await {
                Ok(()) if shared_store => {
                    health.store_available(true).await;
                    tokio::spawn(watch_store(retrieve, health, classify));
                    Ok(())
                }
                Ok(()) => {
                    health.ready(grpc::transport::Part::Collections).await;
                    Ok(())
                }
                Err(e) => Err(format!("reading the collections: {e:#}")),
            }
        })
    };

    // Load and warm up in the background; health turns SERVING when done.
    let loader = {
        let service = service.clone();
        let classify = classify.clone();
        let health = health.clone();
        // TensorRT's profiles cover the batches the batcher forms.
        let mut providers = config.providers.clone();
        providers.max_batch_size = config.embed.batch.max_batch_size;
        let threads = config.intra_op_threads;
        let skip_warmup = config.skip_warmup;
        let hold = options.hold_model_load;
        tokio::spawn(async move {
            if let Some(hold) = hold {
                let _ = hold.await;
            }
            let started = Instant::now();
            let loaded = tokio::task::spawn_blocking(move || -> anyhow::Result<LoadedModel> {
                let model = LoadedModel::load(files, env, &providers, threads)?;
                if !skip_warmup {
                    model.warm_up()?;
                }
                Ok(model)
            })
            .await;
            match loaded {
                Ok(Ok(model)) => {
                    let model = Arc::new(model);
                    // Label sets first, so that Classify sees their stored classifiers from its
                    // very first call.
                    let pending = classify.load_classifiers(&model).await;
                    service.set_model(Arc::clone(&model));
                    classify.start_builds(pending);
                    // A shutdown that began while loading keeps health at NOT_SERVING.
                    if !service.is_ready() {
                        let _ = ready_tx.send(Readiness::Failed("shut down while loading".into()));
                        return;
                    }
                    health.ready(grpc::transport::Part::Model).await;
                    tracing::info!(
                        model = %model.config.display_name(),
                        weights = model.config.weights.as_str(),
                        provider = model.provider.as_str(),
                        image_tower = model.image.is_some(),
                        text_tower = model.text.is_some(),
                        onnxruntime = %runtime::onnxruntime_version(),
                        load_ms = started.elapsed().as_millis() as u64,
                        "model loaded and warmed up; Embed, Classify and Info serving"
                    );
                    let ready = match collections.await {
                        Ok(Ok(())) => {
                            tracing::info!("collections loaded; every service SERVING");
                            Readiness::Ready
                        }
                        Ok(Err(e)) => Readiness::Failed(e),
                        Err(e) => Readiness::Failed(format!("reading the collections: {e}")),
                    };
                    let _ = ready_tx.send(ready);
                }
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Readiness::Failed(format!("{e:#}")));
                }
                Err(e) => {
                    let _ =
                        ready_tx.send(Readiness::Failed(format!("model loading panicked: {e}")));
                }
            }
        })
    };

    let shutdown_service = service.clone();
    let shutdown_health = health.clone();
    let flush_retrieve = retrieve.clone();
    let grace = config.shutdown_grace;
    let grace_service = service.clone();
    // When shutdown began: every listener is done by then + grace.
    let shutdown_at: Arc<OnceLock<Instant>> = Arc::default();
    let shutdown_at_signal = Arc::clone(&shutdown_at);
    let task = tokio::spawn(async move {
        // The listener stays open while admitted calls finish, so that a client calling on its open
        // connection meanwhile gets a clear UNAVAILABLE (retry elsewhere) rather than a reset
        // connection; then it closes and tonic waits for the remaining connections.
        let signal = async move {
            let _ = shutdown_rx.await;
            let _ = shutdown_at_signal.set(Instant::now());
            shutdown_service.begin_shutdown();
            shutdown_health.stopping().await;
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: NOT_SERVING, finishing calls in flight"
            );
            shutdown_service.drained().await;
            tracing::info!("calls in flight finished; closing the listener");
        };
        // Streams that never end (a client's Health.Watch, an idle EmbedStream) must not hold the
        // process forever: after the grace period the remaining connections are dropped.
        let grace_over = async move {
            grace_service.shutdown_started().await;
            tokio::time::sleep(grace).await;
        };
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut http_tasks = tokio::task::JoinSet::new();
        {
            let stop = stopped(http_stop_rx.clone());
            let rules = http::ConnectionRules {
                limit: connection_limit,
                header_read_timeout: doors.header_read_timeout,
                write_stall: doors.idle_timeout,
            };
            http_tasks.spawn(async move {
                http::serve(http_listener, http_router, tls.as_ref(), rules, stop).await
            });
        }
        if let Some(probe_listener) = probe_listener {
            let stop = stopped(http_stop_rx.clone());
            let rules = http::ConnectionRules {
                limit: probe_limit,
                header_read_timeout: doors.header_read_timeout,
                write_stall: doors.idle_timeout,
            };
            http_tasks.spawn(async move {
                http::serve(probe_listener, probe_router, None, rules, stop).await
            });
        }
        let serve = endpoint.serve(listener, signal);
        let result = tokio::select! {
            result = serve => result,
            () = grace_over => {
                tracing::warn!("shutdown grace period over; closing the connections still open");
                Ok(())
            }
        };
        loader.abort();
        let _ = http_stop_tx.send(true);
        // HTTP connections still open (a client trickling a body) get what is left of the grace
        // period, then they are dropped with their listener.
        let deadline = shutdown_at.get().copied().unwrap_or_else(Instant::now) + grace;
        let all_stopped = async {
            while let Some(joined) = http_tasks.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "HTTP listener failed"),
                    Err(e) => tracing::warn!(error = %e, "HTTP listener panicked"),
                }
            }
        };
        if tokio::time::timeout_at(deadline.into(), all_stopped)
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; closing the HTTP connections still open");
            http_tasks.abort_all();
        }
        // Every call is done: what the collections keep beside the store (HNSW graphs) is saved.
        flush_retrieve.flush().await;
        result.context("gRPC server failed")
    });

    tracing::info!(%grpc_addr, %http_addr, probe_addr = ?probe_addr, model_dir = %config.model_dir.display(), "listening; loading the model");
    Ok(RunningServer {
        grpc_addr,
        http_addr,
        probe_addr,
        service,
        classify,
        shutdown: Some(shutdown_tx),
        ready: ready_rx,
        task,
    })
}

/// Runs the server until SIGINT or SIGTERM, then shuts down gracefully. A model that fails to load
/// stops the server with that error.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let mut server = start(config, StartOptions::default()).await?;
    // One listener for the whole life of the server: a signal that arrives just as loading ends
    // must not fall between two listeners.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    tokio::select! {
        ready = server.wait_ready() => {
            if let Err(e) = ready {
                let _ = server.shutdown().await;
                return Err(e);
            }
        }
        () = &mut signal => return server.shutdown().await,
    }
    signal.await;
    server.shutdown().await
}

/// Re-reads the API key file on SIGHUP (the keys themselves are never logged).
fn spawn_key_reloader(keys: ApiKeys) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; the API key file will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match keys.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: API key file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: API key file not reloaded; the previous keys stay")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = keys;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Health of a shared store: Retrieve turns NOT_SERVING while it does not answer, and SERVING
/// again when it does (Embed and Classify are unaffected). Label sets created or deleted through
/// other replicas are picked up on each round.
async fn watch_store(
    retrieve: RetrieveService,
    health: grpc::transport::Health,
    classify: ClassifyService,
) {
    let mut serving = true;
    loop {
        // Reads the label sets' change counter; the definitions only when another replica changed
        // them.
        if let Err(e) = classify.refresh_if_changed().await {
            tracing::debug!(error = %e, "label sets not refreshed");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), retrieve.ping()).await,
            Ok(Ok(()))
        );
        if ok == serving {
            continue;
        }
        serving = ok;
        let store = retrieve.store_kind();
        if ok {
            tracing::info!(
                store,
                "the collection store answers again; Retrieve SERVING"
            );
            health.store_available(true).await;
        } else {
            tracing::warn!(
                store,
                "the collection store does not answer; Retrieve NOT_SERVING"
            );
            health.store_available(false).await;
        }
    }
}
