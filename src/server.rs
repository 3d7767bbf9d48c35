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
    admission::{AdmissionConfig, DoorConfig, Gate, connections::ConnectionLimit},
    classify::ClassifyService,
    cli::Config,
    common::tasks::Background,
    embed::EmbedService,
    grpc, http,
    model::{
        CpuFeatures, LoadedModel, ModelFiles, Precision, Provider, WeightsKind, openvino, plan,
        runtime,
    },
    postgres::StoreConfig,
    retrieve::RetrieveService,
    security::{ApiKeys, tls::TlsFiles},
    telemetry::metrics::Metrics,
};

mod keys;

use keys::{load_security, shutdown_signal, with_usage_store};

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
/// the model in the background. Each step is one function below, in this order.
pub async fn start(config: Config, options: StartOptions) -> anyhow::Result<RunningServer> {
    // Cheap checks first, so a wrong path or a missing library fails before anything is bound.
    let (env, files) = open_model_files(&config)?;
    let listeners = Listeners::bind(&config).await?;
    // The server's own tasks (loads, the store watch, the key reloader): stopped at shutdown.
    let background = Background::new();
    let (keys, tls) = load_security(&config, &background)?;
    let metrics = Metrics::new()
        .context("registering metrics")?
        .with_key_names(config.metrics_key_names);
    let classify_metrics = metrics.classify();
    let bounds = Bounds::new(&config, &metrics)?;
    let service = EmbedService::new(config.embed, bounds.gate.clone(), metrics);
    let (classify, retrieve, keys, jobs_store) =
        open_stores(&config, &service, classify_metrics, keys, &background)?;
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
            limit: bounds.connections.clone(),
            max_age: config.max_connection_age,
            age_grace: config.shutdown_grace,
            keepalive: config.http2_keepalive,
            preface_timeout: config.doors.header_read_timeout,
            idle_timeout: config.doors.idle_timeout,
            unary: bounds.unary.clone(),
        },
    )
    .await?;
    let routers = http_routers(
        &config, &service, &classify, &retrieve, keys, &bounds, jobs_store,
    )?;

    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = watch::channel(Readiness::Loading);
    let collections = spawn_collections_load(
        &background,
        &retrieve,
        &health,
        &classify,
        options.hold_collections_load,
    )
    .await;
    spawn_model_load(
        &background,
        &config,
        ModelLoad {
            files,
            env,
            service: service.clone(),
            classify: classify.clone(),
            health: health.clone(),
            hold: options.hold_model_load,
            collections,
            ready: ready_tx,
        },
    );
    let (grpc_addr, http_addr, probe_addr) = listeners.addrs;
    let task = tokio::spawn(serve_until_shutdown(Serving {
        endpoint,
        listeners,
        routers,
        tls,
        bounds,
        doors: config.doors.clone(),
        grace: config.shutdown_grace,
        service: service.clone(),
        health,
        classify: classify.clone(),
        retrieve,
        background,
        shutdown: shutdown_rx,
    }));

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

/// Step 1: the ONNX Runtime library and the model directory, checked before anything is bound.
fn open_model_files(
    config: &Config,
) -> anyhow::Result<(&'static ort::environment::Environment, ModelFiles)> {
    let env = runtime::environment(&config.ort_dylib_path)?;
    let cpu = config.cpu_features.unwrap_or_else(CpuFeatures::detect);
    let plugin = &config.providers.openvino_plugin;
    let plan = plan::resolve(
        config.precision,
        config.providers.provider,
        &config.model_dir,
        &cpu,
        &mut || {
            openvino::prepare(env, Provider::Openvino, Precision::Bf16, plugin, &cpu)
                .map_err(|e| e.to_string())
        },
    );
    for (tower, p) in [("visual", &plan.visual), ("textual", &plan.textual)] {
        openvino::prepare(env, p.provider, p.precision, plugin, &cpu)?;
        tracing::info!(
            tower,
            precision = p.precision.as_str(),
            provider = p.provider.as_str(),
            reason = %p.reason,
            cpu_flags = %cpu.describe(),
            "precision chosen"
        );
    }
    let mut files = ModelFiles::open_at(&config.model_dir, plan, config.allow_ungated_precision)?;
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
    Ok((env, files))
}

/// Step 2: the listeners, bound before the model loads so that probes answer meanwhile.
struct Listeners {
    grpc: TcpListener,
    http: TcpListener,
    probe: Option<TcpListener>,
    /// The addresses bound (port 0 resolved): gRPC, HTTP, probes.
    addrs: (SocketAddr, SocketAddr, Option<SocketAddr>),
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding {}", config.grpc_addr))?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding --http-addr {}", config.http_addr))?;
        let probe = match config.probe_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --probe-addr {addr}"))?,
            ),
            None => None,
        };
        let probe_addr = probe.as_ref().map(TcpListener::local_addr).transpose()?;
        let addrs = (grpc.local_addr()?, http.local_addr()?, probe_addr);
        Ok(Listeners {
            grpc,
            http,
            probe,
            addrs,
        })
    }
}

/// Step 4: what both doors are held to (docs/ARCHITECTURE.md, "Bounds").
struct Bounds {
    gate: Gate,
    connections: ConnectionLimit,
    /// The probe listener has places of its own, outside those an attacker can fill.
    probe_connections: ConnectionLimit,
    unary: grpc::progress::UnaryRules,
    body: http::body::BodyRules,
}

impl Bounds {
    fn new(config: &Config, metrics: &Metrics) -> anyhow::Result<Self> {
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
        let doors = &config.doors;
        let connections = ConnectionLimit::new(
            doors.max_connections,
            doors.max_connections_per_peer,
            open,
            refused,
        );
        let probe_connections = ConnectionLimit::new(
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
        let body = http::body::BodyRules::new(
            config.embed.limits.max_message_bytes,
            gate.bytes().clone(),
            doors.body_read_timeout,
            doors.body_min_rate,
            doors.max_body_readers,
        );
        Ok(Bounds {
            gate,
            connections,
            probe_connections,
            unary,
            body,
        })
    }
}

/// The Batch API's shared store (`--store postgres`).
type JobsStore = Arc<dyn crate::jobs::SharedStore>;

/// Step 5: the label sets and the collections, in the data directory or PostgreSQL (with
/// `--store postgres` both share one pool).
fn open_stores(
    config: &Config,
    service: &EmbedService,
    classify_metrics: crate::telemetry::metrics::ClassifyMetrics,
    keys: ApiKeys,
    background: &Background,
) -> anyhow::Result<(ClassifyService, RetrieveService, ApiKeys, Option<JobsStore>)> {
    let shared = match &config.store {
        StoreConfig::Local => None,
        StoreConfig::Postgres(pg) => Some((crate::postgres::pool(pg)?, pg.clone())),
    };
    let jobs_store = shared.as_ref().map(|(pool, _)| -> JobsStore {
        Arc::new(crate::jobs::postgres::PgJobs::new(pool.clone()))
    });
    let classify = ClassifyService::open(
        service.clone(),
        &config.data_dir,
        config.classify,
        classify_metrics,
        shared.as_ref().map(|(pool, _)| pool.clone()),
    )?;
    let keys = with_usage_store(
        keys,
        config,
        shared.as_ref().map(|(pool, _)| pool),
        background,
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
                index = pg.index.as_str(),
                m = pg.build.m,
                ef_construction = pg.build.ef_construction,
                "collections and label sets in PostgreSQL"
            );
            RetrieveService::with_postgres(
                service.clone(),
                pool,
                &pg,
                config.retrieve,
                Some(service.metrics().search_recall()),
                service.metrics().mirror(),
            )
        }
    }
    .with_search_paths(service.metrics().search_paths());
    Ok((classify, retrieve, keys, jobs_store))
}

/// The HTTP API's router and the probe listener's.
struct Routers {
    api: axum::Router,
    probes: axum::Router,
}

/// Step 6: the HTTP side (the gRPC endpoint is `grpc::transport::endpoint`).
fn http_routers(
    config: &Config,
    service: &EmbedService,
    classify: &ClassifyService,
    retrieve: &RetrieveService,
    keys: ApiKeys,
    bounds: &Bounds,
    jobs_store: Option<JobsStore>,
) -> anyhow::Result<Routers> {
    let jobs =
        crate::jobs::JobsService::open(&config.data_dir, config.jobs, service.clone(), jobs_store)
            .with_context(|| {
                format!(
                    "opening the Batch API's files under {}",
                    config.data_dir.display()
                )
            })?;
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
    let api = http::router(http::Services {
        fetcher,
        embed: service.clone(),
        classify: classify.clone(),
        retrieve: retrieve.clone(),
        jobs,
        keys,
        body: bounds.body.clone(),
        allowed_hosts: config.doors.allowed_hosts.clone(),
        model_aliases: config.model_aliases.clone(),
        json: http::body::JsonLimits {
            max_labels: config.classify.prompts.max_labels,
            max_depth: config.max_json_depth,
            max_value_bytes: config.max_json_bytes,
            max_metadata_bytes: config.retrieve.max_metadata_bytes,
            ..Default::default()
        },
    });
    let probes = http::probes::routes(service.clone(), retrieve.clone());
    Ok(Routers { api, probes })
}

/// Step 7: the collections are read into memory in the background (seconds for millions of
/// vectors): Retrieve turns SERVING when they are in. A shared store (PostgreSQL) holds back
/// Retrieve alone while it is being reached and migrated: the server as a whole serves meanwhile,
/// and the store is watched from then on.
async fn spawn_collections_load(
    background: &Background,
    retrieve: &RetrieveService,
    health: &grpc::transport::Health,
    classify: &ClassifyService,
    hold: Option<oneshot::Receiver<()>>,
) -> JoinHandle<Option<Result<(), String>>> {
    let shared_store = retrieve.store_kind().is_shared();
    if shared_store {
        health.store_available(false).await;
        health.ready(grpc::transport::Part::Collections).await;
    }
    let (retrieve, health, classify) = (retrieve.clone(), health.clone(), classify.clone());
    let tasks = background.clone();
    background.spawn("collections load", async move {
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        match retrieve.load().await {
            Ok(()) if shared_store => {
                health.store_available(true).await;
                tasks.spawn("store watch", watch_store(retrieve, health, classify));
                Ok(())
            }
            Ok(()) => {
                health.ready(grpc::transport::Part::Collections).await;
                Ok(())
            }
            Err(e) => Err(format!("reading the collections: {e:#}")),
        }
    })
}

/// What the model load needs and reports to.
struct ModelLoad {
    files: ModelFiles,
    env: &'static ort::environment::Environment,
    service: EmbedService,
    classify: ClassifyService,
    health: grpc::transport::Health,
    hold: Option<oneshot::Receiver<()>>,
    collections: JoinHandle<Option<Result<(), String>>>,
    ready: watch::Sender<Readiness>,
}

/// Step 8: load and warm up the model in the background; health turns SERVING when done, and
/// readiness once the collections are in too.
fn spawn_model_load(background: &Background, config: &Config, load: ModelLoad) {
    // TensorRT's profiles cover the batches the batcher forms.
    let mut providers = config.providers.clone();
    providers.max_batch_size = config.embed.batch.max_batch_size;
    let threads = config.intra_op_threads;
    let skip_warmup = config.skip_warmup;
    let ModelLoad {
        files,
        env,
        service,
        classify,
        health,
        hold,
        collections,
        ready: ready_tx,
    } = load;
    background.spawn("model load", async move {
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
                    provider = %model.provider_label(),
                    precision = %model.precision_label(),
                    image_tower = model.image.is_some(),
                    text_tower = model.text.is_some(),
                    onnxruntime = %runtime::onnxruntime_version(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "model loaded and warmed up; Embed, Classify and Info serving"
                );
                let ready = match collections.await {
                    Ok(Some(Ok(()))) => {
                        tracing::info!("collections loaded; every service SERVING");
                        Readiness::Ready
                    }
                    Ok(Some(Err(e))) => Readiness::Failed(e),
                    Ok(None) => Readiness::Failed("shut down while loading".into()),
                    Err(e) => Readiness::Failed(format!("reading the collections: {e}")),
                };
                let _ = ready_tx.send(ready);
            }
            Ok(Err(e)) => {
                let _ = ready_tx.send(Readiness::Failed(format!("{e:#}")));
            }
            Err(e) => {
                let _ = ready_tx.send(Readiness::Failed(format!("model loading panicked: {e}")));
            }
        }
    });
}

/// Everything the serving task owns.
struct Serving {
    endpoint: grpc::transport::Endpoint,
    listeners: Listeners,
    routers: Routers,
    tls: Option<TlsFiles>,
    bounds: Bounds,
    doors: DoorConfig,
    grace: Duration,
    service: EmbedService,
    health: grpc::transport::Health,
    classify: ClassifyService,
    retrieve: RetrieveService,
    background: Background,
    shutdown: oneshot::Receiver<()>,
}

/// Step 9: serve both doors until shutdown, then stop in order: the gRPC listener once the calls
/// in flight are done (or the grace period is over), the background tasks, classifier builds, the
/// HTTP listeners (with what is left of the grace period), and last the collections' flush.
async fn serve_until_shutdown(serving: Serving) -> anyhow::Result<()> {
    let Serving {
        endpoint,
        listeners,
        routers,
        tls,
        bounds,
        doors,
        grace,
        service,
        health,
        classify,
        retrieve,
        background,
        shutdown,
    } = serving;
    // When shutdown began: every listener is done by then + grace.
    let shutdown_at: Arc<OnceLock<Instant>> = Arc::default();
    // The listener stays open while admitted calls finish, so that a client calling on its open
    // connection meanwhile gets a clear UNAVAILABLE (retry elsewhere) rather than a reset
    // connection; then it closes and tonic waits for the remaining connections.
    let signal = {
        let (service, shutdown_at) = (service.clone(), Arc::clone(&shutdown_at));
        async move {
            let _ = shutdown.await;
            let _ = shutdown_at.set(Instant::now());
            service.begin_shutdown();
            health.stopping().await;
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: NOT_SERVING, finishing calls in flight"
            );
            service.drained().await;
            tracing::info!("calls in flight finished; closing the listener");
        }
    };
    // Streams that never end (a client's Health.Watch, an idle EmbedStream) must not hold the
    // process forever: after the grace period the remaining connections are dropped.
    let grace_over = async move {
        service.shutdown_started().await;
        tokio::time::sleep(grace).await;
    };
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let mut http_tasks = serve_http(
        listeners.http,
        listeners.probe,
        routers,
        tls,
        &bounds,
        &doors,
        &http_stop_rx,
    );
    let serve = endpoint.serve(listeners.grpc, signal);
    let result = tokio::select! {
        result = serve => result,
        () = grace_over => {
            tracing::warn!("shutdown grace period over; closing the connections still open");
            Ok(())
        }
    };
    // Background work stops in order: the loads and the store watch, then classifier builds
    // (nothing starts new ones once the loads are gone), then the HTTP side.
    background.stop().await;
    classify.stop_builds().await;
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
    retrieve.flush().await;
    result.context("gRPC server failed")
}

/// The HTTP API listener and the probe listener, each until `stop` turns true.
fn serve_http(
    http_listener: TcpListener,
    probe_listener: Option<TcpListener>,
    routers: Routers,
    tls: Option<TlsFiles>,
    bounds: &Bounds,
    doors: &DoorConfig,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinSet<std::io::Result<()>> {
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut http_tasks = tokio::task::JoinSet::new();
    let rules = |limit: &ConnectionLimit| http::ConnectionRules {
        limit: limit.clone(),
        header_read_timeout: doors.header_read_timeout,
        write_stall: doors.idle_timeout,
    };
    let (api_rules, api_stop) = (rules(&bounds.connections), stopped(stop.clone()));
    http_tasks.spawn(async move {
        http::serve(
            http_listener,
            routers.api,
            tls.as_ref(),
            api_rules,
            api_stop,
        )
        .await
    });
    if let Some(probe_listener) = probe_listener {
        let (probe_rules, probe_stop) = (rules(&bounds.probe_connections), stopped(stop.clone()));
        let probes = routers.probes;
        http_tasks.spawn(async move {
            http::serve(probe_listener, probes, None, probe_rules, probe_stop).await
        });
    }
    http_tasks
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
        let store = retrieve.store_kind().as_str();
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
