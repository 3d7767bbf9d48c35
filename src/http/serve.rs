//! The HTTP listeners' accept loop: hyper's HTTP/1 server with a real timer, so that every wait a
//! client controls has a deadline (`axum::serve` runs hyper without one, which silently turns its
//! header-read timeout off):
//!
//! - a connection's places (`--max-connections`, `--max-connections-per-peer`) are taken before
//!   anything else; over either bound it is closed at once;
//! - the TLS handshake must finish within `--header-read-timeout`;
//! - a request's head must arrive within `--header-read-timeout`, and so must the next request on
//!   a keep-alive connection (hyper runs the same timer while the connection is idle): idle
//!   connections are closed;
//! - bodies have their own deadline and minimum rate (`super::body`);
//! - a reply the client stops reading closes the connection after `--idle-timeout`.
//!
//! Each request carries the peer's address (`ConnectInfo<SocketAddr>` and `call::PeerAddr`).

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use super::call::PeerAddr;
use crate::{
    admission::{connections::ConnectionLimit, deadline::Deadlined},
    security::TlsFiles,
};

/// How a listener treats its connections.
#[derive(Clone)]
pub struct ConnectionRules {
    /// Places for connections (the probe listener has its own, apart from the API's).
    pub limit: ConnectionLimit,
    /// The TLS handshake, a request head, and the wait for the next request on an idle
    /// keep-alive connection (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// A reply whose writing makes no progress for this long closes the connection (a client that
    /// stopped reading; `--idle-timeout`).
    pub write_stall: Option<Duration>,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish (the
/// caller bounds how long: `server.rs` aborts this when `--shutdown-grace` is over); with `tls`,
/// HTTPS only.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<&TlsFiles>,
    rules: ConnectionRules,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = match tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
            tls.rustls_config().map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(rules.header_read_timeout)
        .keep_alive(true);
    let http1 = Arc::new(http1);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors (or a connection reset before accept): wait a
                    // little rather than spin; the listener itself is fine.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without it small replies wait on delayed ACKs (Nagle).
        let _ = stream.set_nodelay(true);
        // Over a bound: closed at once (dropped).
        let Some(counted) = rules.limit.try_open(stream, peer.ip()) else {
            continue;
        };
        let counted = Deadlined::writes_only(counted, rules.write_stall);
        let service = router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(PeerAddr(peer));
                request
            },
        );
        let service = TowerToHyperService::new(service);
        let (http1, acceptor, watcher) = (Arc::clone(&http1), acceptor.clone(), graceful.watcher());
        let handshake_timeout = rules.header_read_timeout;
        tokio::spawn(async move {
            let result = match acceptor {
                None => {
                    let conn = http1.serve_connection(TokioIo::new(counted), service);
                    watcher.watch(conn).await
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(counted),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out (--header-read-timeout)");
                            return;
                        }
                    };
                    let conn = http1.serve_connection(TokioIo::new(tls), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "HTTP connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
