//! The gRPC endpoint: tonic's server with our services, health checking and reflection (v1 and
//! v1alpha, so grpcurl needs no .proto file). `server.rs` drives its lifecycle without touching tonic.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{
    SERVICE_NAMES,
    classify::ClassifyApi,
    embed::EmbedApi,
    info::InfoApi,
    pb::{
        self, classify_server::ClassifyServer, embed_server::EmbedServer, info_server::InfoServer,
        retrieve_server::RetrieveServer,
    },
    retrieve::RetrieveApi,
};
use crate::{
    admission::connections::{ConnectionLimit, Counted},
    classify::ClassifyService,
    embed::EmbedService,
    retrieve::RetrieveService,
    security::{ApiKeys, TlsFiles},
};

/// Connection-level bounds of the endpoint.
pub struct Connections {
    /// Open connections across both listeners (`--max-connections`).
    pub limit: ConnectionLimit,
    /// Close a connection after this long (GOAWAY, calls in flight finish within `age_grace`), so
    /// clients reconnect and new replicas behind an autoscaler get their share.
    pub max_age: Option<Duration>,
    pub age_grace: Duration,
    /// HTTP/2 pings on idle connections; a peer that does not answer within 20 s is dropped.
    pub keepalive: Option<Duration>,
    /// The HTTP/2 preface (and with TLS, the handshake) must arrive within this
    /// (`--header-read-timeout`).
    pub preface_timeout: Duration,
    /// A connection on which nothing arrives for this long is closed (`--idle-timeout`; `None`:
    /// never). Live clients answer keepalive pings, so this cuts only silent or dead peers.
    pub idle_timeout: Option<Duration>,
    /// Unary requests: charged as they arrive, within `--body-read-timeout`, at
    /// `--body-min-rate`.
    pub unary: super::progress::UnaryRules,
}

impl tonic::transport::server::Connected
    for crate::admission::deadline::Deadlined<Counted<tokio::net::TcpStream>>
{
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().io.connect_info()
    }
}

/// What secures the endpoint.
pub struct Security {
    pub keys: ApiKeys,
    /// Reflection answers without a key.
    pub public_reflection: bool,
    pub tls: Option<TlsFiles>,
}

/// Concurrent HTTP/2 streams (calls) per client connection. tonic passes no limit to hyper unless
/// told, which lifts hyper's own default of 200.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// HTTP/2 flow-control windows: what a client may send ahead of what the server has read, per
/// stream and per connection. With --max-connections they bound what waits unread in buffers
/// (hyper's defaults, megabytes per stream, let 64 connections x 4 streams of large images park
/// over a gigabyte).
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// What the server waits for before a service answers SERVING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The model is loaded and warmed up: Embed, Info and Classify serve.
    Model,
    /// The collections are read into memory: Retrieve serves (with the model).
    Collections,
}

#[derive(Debug, Default, Clone, Copy)]
struct HealthState {
    model: bool,
    collections: bool,
    /// A shared store stopped answering (after the collections were first loaded).
    store_down: bool,
    stopping: bool,
    /// What was last published, (model services, Retrieve, ""): watchers see changes only.
    published: Option<(bool, bool, bool)>,
}

/// The `grpc.health.v1.Health` status of the server ("": everything is ready) and of each service.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Held while publishing, so two updates never publish out of order.
    state: std::sync::Arc<tokio::sync::Mutex<HealthState>>,
}

impl Health {
    /// `part` is ready (ignored once stopping).
    pub async fn ready(&self, part: Part) {
        let mut state = self.state.lock().await;
        match part {
            Part::Model => state.model = true,
            Part::Collections => state.collections = true,
        }
        self.publish(&mut state).await;
    }

    /// Whether a shared collection store (PostgreSQL) answers: while it does not, Retrieve is
    /// NOT_SERVING; the server as a whole ("") and the other services are not affected.
    pub async fn store_available(&self, available: bool) {
        let mut state = self.state.lock().await;
        state.store_down = !available;
        self.publish(&mut state).await;
    }

    /// Shutdown began: NOT_SERVING everywhere, for good.
    pub async fn stopping(&self) {
        let mut state = self.state.lock().await;
        state.stopping = true;
        self.publish(&mut state).await;
    }

    async fn publish(&self, state: &mut HealthState) {
        let status = |serving: bool| {
            if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let model = state.model && !state.stopping;
        let whole = model && state.collections;
        let retrieve = whole && !state.store_down;
        let now = [model, retrieve, whole];
        let before = state.published.replace((model, retrieve, whole));
        let changed = |part: usize| before.is_none_or(|(m, r, w)| [m, r, w][part] != now[part]);
        if changed(2) {
            self.reporter.set_service_status("", status(whole)).await;
        }
        for name in SERVICE_NAMES {
            let part = usize::from(name == "clip.v1.Retrieve");
            if changed(part) {
                self.reporter
                    .set_service_status(name, status(now[part]))
                    .await;
            }
        }
    }
}

type ProgressLayer = super::progress::TrackLayer;
type CallLayer = super::context::CallLayer;

/// The server's layers, outermost first: the call layer, body progress. (A request message that
/// does not decode is INVALID_ARGUMENT from the codec itself, `grpc::codec`.)
type Layers = tower::layer::util::Stack<
    ProgressLayer,
    tower::layer::util::Stack<CallLayer, tower::layer::util::Identity>,
>;

/// Everything that answers on the gRPC port, not yet listening.
pub struct Endpoint {
    router: tonic::transport::server::Router<Layers>,
    limit: ConnectionLimit,
    preface_timeout: Duration,
    idle_timeout: Option<Duration>,
}

/// Builds the endpoint; health starts NOT_SERVING.
pub async fn endpoint(
    service: EmbedService,
    classify: ClassifyService,
    retrieve: RetrieveService,
    max_message_bytes: usize,
    security: Security,
    connections: Connections,
) -> anyhow::Result<(Endpoint, Health)> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health {
        reporter,
        state: Default::default(),
    };
    health.publish(&mut *health.state.lock().await).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let embed = EmbedServer::new(EmbedApi::new(service.clone()))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let classify = ClassifyServer::new(ClassifyApi::new(service.clone(), classify))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let retrieve = RetrieveServer::new(RetrieveApi::new(service.clone(), retrieve))
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let info = InfoServer::new(InfoApi::new(service.clone()));

    // Every call (health's aside) goes through the call layer: request id, key check, usage
    // scope, span, metrics by code. It is outermost, so it sees the status clients see.
    let calls = CallLayer::new(
        security.keys.clone(),
        service.metrics().clone(),
        security.public_reflection,
    );
    let mut builder = Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .http2_keepalive_interval(connections.keepalive)
        .http2_keepalive_timeout(connections.keepalive.map(|_| Duration::from_secs(20)));
    if let Some(age) = connections.max_age {
        builder = builder
            .max_connection_age(age)
            .max_connection_age_grace(connections.age_grace);
    }
    let mut builder = builder
        .layer(calls)
        .layer(super::progress::TrackLayer(connections.unary.clone()));
    if let Some(tls) = &security.tls {
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
            .timeout(connections.preface_timeout);
        if let Some(ca) = &tls.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(embed)
        .add_service(classify)
        .add_service(retrieve)
        .add_service(info);
    Ok((
        Endpoint {
            router,
            limit: connections.limit,
            preface_timeout: connections.preface_timeout,
            idle_timeout: connections.idle_timeout,
        },
        health,
    ))
}

impl Endpoint {
    /// Serves on `listener` until `shutdown` resolves, then lets calls in flight finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Without TCP_NODELAY, small replies wait on delayed ACKs (Nagle): tens of ms per call.
        let (limit, preface, idle) = (self.limit, self.preface_timeout, self.idle_timeout);
        let incoming = tokio_stream::StreamExt::filter_map(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(60))),
            move |accepted| match accepted {
                Ok(stream) => {
                    let peer = stream.peer_addr().ok()?.ip();
                    // Over --max-connections or --max-connections-per-peer: closed at once.
                    let counted = limit.try_open(stream, peer)?;
                    Some(Ok(crate::admission::deadline::Deadlined::new(
                        counted, preface, idle,
                    )))
                }
                Err(e) => Some(Err(e)),
            },
        );
        self.router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        Ok(())
    }
}
