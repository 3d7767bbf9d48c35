//! Admission: who may start work now, and the shutdown state every door reads.
//!
//! One [`Gate`] per server, below both protocol layers. Unary calls try to take a request permit
//! and are refused at once (RESOURCE_EXHAUSTED) when none is free; stream items wait for one, but
//! only within the streams' share (3/4 of the permits), so busy streams cannot lock unary callers
//! out. Control calls (collection and label-set administration, deletes, reads of stored items)
//! are cheap, so they take a permit from a pool of their own and never queue behind embedding
//! traffic, but they are admitted, refused and drained like everything else. Shutdown flips one
//! watch channel: new work is refused with UNAVAILABLE, admitted work finishes, and
//! [`Gate::drained`] resolves once every permit of both pools is back.

pub mod bytes;
pub mod connections;
pub mod deadline;

use crate::common::limit::MAX_CONCURRENT_REQUESTS;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::common::ServiceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Requests (and stream items) processed at once.
    pub max_concurrent_requests: usize,
    /// Request payload bytes held at once, across both doors.
    pub max_inflight_bytes: u64,
    /// Streams that may be reading (and holding) a message not yet admitted against the byte
    /// budget, at once.
    pub max_stream_readers: usize,
}

/// What both doors hold their connections and request bodies to (docs/ARCHITECTURE.md, "Bounds"):
/// nothing a client controls can hold a place forever, and no one client can take every place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoorConfig {
    /// Open connections across the gRPC and HTTP listeners.
    pub max_connections: usize,
    /// Open connections of one peer (an IPv4 address or an IPv6 /64; 0: no bound).
    pub max_connections_per_peer: usize,
    /// A TLS handshake, an HTTP request head, the wait for the next request on an idle HTTP/1
    /// keep-alive connection, and the HTTP/2 preface must each arrive within this.
    pub header_read_timeout: std::time::Duration,
    /// A gRPC connection on which nothing arrives for this long is closed (`None`: never).
    pub idle_timeout: Option<std::time::Duration>,
    /// A request body (a unary gRPC message) must arrive within this ...
    pub body_read_timeout: std::time::Duration,
    /// ... and, after a 5 s grace, at least at this many bytes per second (0: no minimum).
    pub body_min_rate: u64,
    /// HTTP bodies being read at once.
    pub max_body_readers: usize,
    /// `Host` names a browser may use when no API key is required (besides IP literals and
    /// `localhost`); `*`: any.
    pub allowed_hosts: Vec<String>,
}

impl Default for DoorConfig {
    fn default() -> Self {
        DoorConfig {
            max_connections: 1024,
            max_connections_per_peer: 256,
            header_read_timeout: std::time::Duration::from_secs(10),
            idle_timeout: Some(std::time::Duration::from_secs(120)),
            body_read_timeout: std::time::Duration::from_secs(30),
            body_min_rate: 4096,
            max_body_readers: 128,
            allowed_hosts: Vec::new(),
        }
    }
}

/// A body slower than `--body-min-rate` is cut off only after this long (a client's first bytes
/// may wait on its own scheduling or a TCP slow start).
pub const MIN_RATE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `received` bytes after `elapsed` are below `min_rate` bytes/s (0: no minimum), once the
/// grace is over: the one rule both doors cut slow bodies by.
pub fn below_min_rate(min_rate: u64, received: u64, elapsed: std::time::Duration) -> bool {
    min_rate > 0
        && elapsed >= MIN_RATE_GRACE
        && (received as f64) < min_rate as f64 * elapsed.as_secs_f64()
}

/// How a call is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Unary work: a request permit now, or RESOURCE_EXHAUSTED.
    TryNow,
    /// Stream items: wait for a request permit within the streams' share.
    Wait,
    /// Cheap control calls: a permit from their own pool now, or RESOURCE_EXHAUSTED.
    Control,
}

/// A permit; counted in `clip_requests_in_flight` while held.
pub struct Permit {
    _permit: OwnedSemaphorePermit,
    _stream_share: Option<OwnedSemaphorePermit>,
    in_flight: prometheus::IntGauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// Request permits a large call takes on top of its own (see [`Gate::try_extra`]).
pub struct ExtraPermits {
    _permits: Option<OwnedSemaphorePermit>,
}

struct Inner {
    config: AdmissionConfig,
    requests: Arc<Semaphore>,
    /// The share of `requests` that stream items may hold at once.
    stream_share: Arc<Semaphore>,
    /// Control calls, as many at once as requests.
    control: Arc<Semaphore>,
    /// Flips to true when shutdown begins; calls and streams read or wait on it.
    shutdown: watch::Sender<bool>,
    in_flight: prometheus::IntGauge,
    bytes: bytes::ByteBudget,
    stream_readers: Arc<Semaphore>,
}

/// Cheap to clone; clones share the permits and the shutdown state.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

fn shutting_down() -> ServiceError {
    ServiceError::Unavailable("server is shutting down".into())
}

impl Gate {
    /// `in_flight` is the gauge that counts held permits; `bytes_in_use` the payload bytes held.
    pub fn new(
        config: AdmissionConfig,
        in_flight: prometheus::IntGauge,
        bytes_in_use: prometheus::IntGauge,
    ) -> Self {
        let max = config.max_concurrent_requests.max(1);
        Gate {
            inner: Arc::new(Inner {
                config,
                requests: Arc::new(Semaphore::new(max)),
                stream_share: Arc::new(Semaphore::new((max * 3 / 4).max(1))),
                control: Arc::new(Semaphore::new(max)),
                shutdown: watch::Sender::new(false),
                in_flight,
                bytes: bytes::ByteBudget::new(config.max_inflight_bytes, bytes_in_use),
                stream_readers: Arc::new(Semaphore::new(config.max_stream_readers.max(1))),
            }),
        }
    }

    pub fn config(&self) -> AdmissionConfig {
        self.inner.config
    }

    /// A turn to read a stream's next message: a decoded message is held from the moment it is
    /// read until the byte budget admits it, so only `max_stream_readers` streams read at once
    /// (the others wait unread: HTTP/2 flow control holds their clients back).
    pub async fn stream_reader(&self) -> Result<OwnedSemaphorePermit, ServiceError> {
        let readers = Arc::clone(&self.inner.stream_readers);
        tokio::select! {
            permit = readers.acquire_owned() => permit.map_err(|_| shutting_down()),
            () = self.shutdown_started() => Err(shutting_down()),
        }
    }

    /// The budget request payloads are held against (`--max-inflight-bytes`).
    pub fn bytes(&self) -> &bytes::ByteBudget {
        &self.inner.bytes
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// UNAVAILABLE once shutdown has begun.
    pub fn check_open(&self) -> Result<(), ServiceError> {
        if self.is_shutting_down() {
            Err(shutting_down())
        } else {
            Ok(())
        }
    }

    /// New work is refused from now on; work already admitted finishes.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_started(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        let _ = rx.wait_for(|started| *started).await;
    }

    /// Resolves when no permit is held (every admitted call and stream item has finished).
    pub async fn drained(&self) {
        let all =
            u32::try_from(self.inner.config.max_concurrent_requests.max(1)).unwrap_or(u32::MAX);
        let _ = self.inner.requests.acquire_many(all).await;
        let _ = self.inner.control.acquire_many(all).await;
    }

    /// `n` more request permits for an admitted call whose work is worth more than one request
    /// (an inline Classify with thousands of prompts), at once or RESOURCE_EXHAUSTED naming `what`.
    /// A call can never need more than the server has: refused as INVALID_ARGUMENT instead.
    pub fn try_extra(&self, n: usize, what: &str) -> Result<ExtraPermits, ServiceError> {
        if n == 0 {
            return Ok(ExtraPermits { _permits: None });
        }
        let max = self.inner.config.max_concurrent_requests;
        if n >= max {
            return Err(ServiceError::invalid_request(format!(
                "{what} costs {} requests' worth of work, more than the server's {max} ({MAX_CONCURRENT_REQUESTS})",
                n + 1
            )));
        }
        let permits = Arc::clone(&self.inner.requests)
            .try_acquire_many_owned(u32::try_from(n).unwrap_or(u32::MAX))
            .map_err(|_| {
                ServiceError::ResourceExhausted(format!(
                    "{what} costs {} requests' worth of work and the server is too busy for it now ({MAX_CONCURRENT_REQUESTS} {max}); retry later",
                    n + 1
                ))
            })?;
        Ok(ExtraPermits {
            _permits: Some(permits),
        })
    }

    /// Takes a permit: at once or RESOURCE_EXHAUSTED (`TryNow`, `Control`), or waiting for a
    /// place in the streams' share first and then for a permit (`Wait`). All refuse after shutdown.
    pub async fn admit(&self, admission: Admission) -> Result<Permit, ServiceError> {
        let requests = Arc::clone(&self.inner.requests);
        let at_limit = |what: &str| {
            ServiceError::ResourceExhausted(format!(
                "server is at its limit of {} concurrent {what} ({MAX_CONCURRENT_REQUESTS}); retry later",
                self.inner.config.max_concurrent_requests
            ))
        };
        let (request, stream_share) = match admission {
            Admission::TryNow => {
                self.check_open()?;
                let permit = requests
                    .try_acquire_owned()
                    .map_err(|_| at_limit("requests"))?;
                (permit, None)
            }
            Admission::Control => {
                self.check_open()?;
                let permit = Arc::clone(&self.inner.control)
                    .try_acquire_owned()
                    .map_err(|_| at_limit("control calls"))?;
                (permit, None)
            }
            Admission::Wait => {
                let share = Arc::clone(&self.inner.stream_share);
                tokio::select! {
                    permits = async {
                        let share = share.acquire_owned().await.map_err(|_| shutting_down())?;
                        let request = requests.acquire_owned().await.map_err(|_| shutting_down())?;
                        Ok::<_, ServiceError>((request, Some(share)))
                    } => permits?,
                    () = self.shutdown_started() => return Err(shutting_down()),
                }
            }
        };
        self.inner.in_flight.inc();
        Ok(Permit {
            _permit: request,
            _stream_share: stream_share,
            in_flight: self.inner.in_flight.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn gate(max: usize) -> (Gate, prometheus::IntGauge) {
        let gauge = prometheus::IntGauge::new("in_flight", "test").unwrap();
        let config = AdmissionConfig {
            max_concurrent_requests: max,
            max_inflight_bytes: 1 << 20,
            max_stream_readers: 2,
        };
        let bytes = prometheus::IntGauge::new("bytes", "test").unwrap();
        (Gate::new(config, gauge.clone(), bytes), gauge)
    }

    #[tokio::test]
    async fn unary_calls_are_refused_when_every_permit_is_held() {
        let (gate, in_flight) = gate(2);
        let a = gate.admit(Admission::TryNow).await.unwrap();
        let _b = gate.admit(Admission::TryNow).await.unwrap();
        assert_eq!(in_flight.get(), 2);
        let e = gate.admit(Admission::TryNow).await.err().unwrap();
        assert!(
            matches!(&e, ServiceError::ResourceExhausted(m) if m.contains("--max-concurrent-requests")),
            "{e}"
        );
        drop(a);
        assert_eq!(in_flight.get(), 1);
        assert!(gate.admit(Admission::TryNow).await.is_ok());
    }

    #[tokio::test]
    async fn streams_keep_a_quarter_of_the_permits_for_unary_calls() {
        let (gate, _) = gate(4);
        let mut stream_permits = Vec::new();
        for _ in 0..3 {
            stream_permits.push(gate.admit(Admission::Wait).await.unwrap());
        }
        // A fourth stream item waits, though a permit is free ...
        let waiting = tokio::time::timeout(Duration::from_millis(50), gate.admit(Admission::Wait));
        assert!(waiting.await.is_err(), "the streams' share is 3 of 4");
        // ... and that permit still serves a unary call.
        assert!(gate.admit(Admission::TryNow).await.is_ok());
        // A stream item gets its permit as soon as one in the share is back.
        let g = gate.clone();
        let next = tokio::spawn(async move { g.admit(Admission::Wait).await.map(|_| ()) });
        drop(stream_permits.pop());
        next.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_refuses_new_work_wakes_waiters_and_drains_admitted_work() {
        let (gate, _) = gate(1);
        let held = gate.admit(Admission::TryNow).await.unwrap();
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.admit(Admission::Wait).await.map(|_| ()) });
        tokio::task::yield_now().await;
        gate.begin_shutdown();
        assert!(matches!(
            waiter.await.unwrap(),
            Err(ServiceError::Unavailable(_))
        ));
        assert!(matches!(
            gate.admit(Admission::TryNow).await,
            Err(ServiceError::Unavailable(_))
        ));
        gate.shutdown_started().await;
        let g = gate.clone();
        let drained = tokio::spawn(async move { g.drained().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drained.is_finished(), "a permit is still held");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drained once the permit is back")
            .unwrap();
    }

    #[tokio::test]
    async fn control_calls_have_their_own_pool_and_are_drained_too() {
        let (gate, in_flight) = gate(1);
        let busy = gate.admit(Admission::TryNow).await.unwrap();
        // Embedding traffic holds every request permit; a control call still gets in.
        let control = gate.admit(Admission::Control).await.unwrap();
        assert_eq!(in_flight.get(), 2);
        assert!(matches!(
            gate.admit(Admission::Control).await,
            Err(ServiceError::ResourceExhausted(m)) if m.contains("control calls")
        ));
        gate.begin_shutdown();
        drop(busy);
        let g = gate.clone();
        let drained = tokio::spawn(async move { g.drained().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !drained.is_finished(),
            "the control call is still in flight"
        );
        assert!(matches!(
            gate.admit(Admission::Control).await,
            Err(ServiceError::Unavailable(_))
        ));
        drop(control);
        tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .expect("drained")
            .unwrap();
    }

    #[tokio::test]
    async fn a_large_call_takes_extra_permits_or_is_refused() {
        let (gate, _) = gate(4);
        let _own = gate.admit(Admission::TryNow).await.unwrap();
        let extra = gate.try_extra(2, "this Classify").unwrap();
        // 3 of 4 permits held: one more unary call fits, a second does not.
        let one = gate.admit(Admission::TryNow).await.unwrap();
        assert!(gate.admit(Admission::TryNow).await.is_err());
        drop(one);
        let e = gate.try_extra(2, "this Classify").err().unwrap();
        assert!(
            matches!(&e, ServiceError::ResourceExhausted(m) if m.contains("this Classify costs 3")),
            "{e}"
        );
        let e = gate.try_extra(4, "this Classify").err().unwrap();
        assert!(matches!(&e, ServiceError::InvalidArgument(_)), "{e}");
        drop(extra);
        assert!(gate.try_extra(2, "this Classify").is_ok());
    }
}
