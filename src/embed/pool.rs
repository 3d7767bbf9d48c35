//! The preprocessing pool: image decode + resize and tokenization run on tokio's blocking pool,
//! overlapped with inference on the engine threads, under two bounds:
//!
//! - CPU: at most `workers` jobs at once (one per core by default: more threads than cores only
//!   adds switching);
//! - memory: a decode first reserves the bytes its header says it will need
//!   (`preprocess::image::decode_cost`) from `--max-decode-bytes`, so concurrent decodes never
//!   hold more than that whatever their sizes; one that needs more than the whole budget is
//!   refused (the client's fault, like an over-limit pixel count).
//!
//! Places are shared fairly between requests: each request ([`RequestShare`], one per call) queues
//! its jobs in its own FIFO, and a free worker takes the next job of the next request in turn
//! (round-robin), so one request of 64 large images delays another request's image by at most
//! one job per request ahead of it, not by 64. A worker and a job's decode bytes are granted
//! together; when the request whose turn it is waits for bytes, no later request's decode starts
//! before it, so a large image is not starved by a stream of small ones (jobs that need no bytes,
//! tokenization, still run meanwhile).
//!
//! Grants move into the blocking job, so work that outlives a cancelled call still counts
//! against both bounds; a job whose caller went away before it started never runs. A panicking
//! job becomes INTERNAL, never a crash.

use crate::common::limit::MAX_DECODE_BYTES;
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus::IntGauge;
use tokio::sync::oneshot;

use crate::common::ServiceError;

/// The decode budget is counted in KiB.
const UNIT: u64 = 1024;

#[derive(Clone)]
pub struct PreprocessPool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<Scheduler>,
    decode_units: u64,
    decode_in_use: IntGauge,
    next_request: AtomicU64,
}

/// A job waiting for its grant.
struct Waiter {
    units: u64,
    grant: oneshot::Sender<Grant>,
}

/// What is free, and who waits, request by request.
struct Scheduler {
    free_workers: usize,
    free_units: u64,
    /// Each request's waiting jobs, oldest first.
    queues: HashMap<u64, VecDeque<Waiter>>,
    /// Requests with waiting jobs, the one whose turn it is first.
    turns: VecDeque<u64>,
}

/// A worker and a job's decode bytes; handed back (and the next job started) when dropped.
struct Grant {
    shared: Option<Arc<Shared>>,
    units: u64,
}

impl Grant {
    /// Hands the grant back to `state` (already locked by the caller).
    fn undo(mut self, state: &mut Scheduler) {
        if let Some(shared) = self.shared.take() {
            state.free_workers += 1;
            state.free_units += self.units;
            shared.decode_in_use.sub(gauge_bytes(self.units));
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.decode_in_use.sub(gauge_bytes(self.units));
            let mut state = shared.lock();
            state.free_workers += 1;
            state.free_units += self.units;
            shared.dispatch(&mut state);
        }
    }
}

fn gauge_bytes(units: u64) -> i64 {
    i64::try_from(units.saturating_mul(UNIT)).unwrap_or(i64::MAX)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // The scheduler's state stays consistent at every step: a panic elsewhere cannot leave
        // it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts waiting jobs, a request at a time in turn, while a worker and their bytes are free.
    fn dispatch(self: &Arc<Self>, state: &mut Scheduler) {
        while state.free_workers > 0 {
            // Jobs whose callers went away are dropped unstarted.
            let Scheduler { queues, turns, .. } = &mut *state;
            turns.retain(|id| {
                let empty = queues.get_mut(id).is_none_or(|queue| {
                    while queue.front().is_some_and(|w| w.grant.is_closed()) {
                        queue.pop_front();
                    }
                    queue.is_empty()
                });
                if empty {
                    queues.remove(id);
                }
                !empty
            });
            // The request whose turn it is, when its next job's bytes are free; while they are
            // not, no one else's decode starts before it (running decodes will free them), but a
            // job that needs no bytes (tokenization) does.
            let free_units = state.free_units;
            let position = state.turns.iter().enumerate().find_map(|(i, id)| {
                let units = state.queues.get(id)?.front()?.units;
                let runs = if i == 0 {
                    units <= free_units
                } else {
                    units == 0
                };
                runs.then_some(i)
            });
            let Some(request) = position.and_then(|i| state.turns.remove(i)) else {
                return;
            };
            let Some(queue) = state.queues.get_mut(&request) else {
                continue;
            };
            let Some(waiter) = queue.pop_front() else {
                continue;
            };
            if queue.is_empty() {
                state.queues.remove(&request);
            } else {
                state.turns.push_back(request);
            }
            state.free_workers -= 1;
            state.free_units -= waiter.units;
            self.decode_in_use.add(gauge_bytes(waiter.units));
            let grant = Grant {
                shared: Some(Arc::clone(self)),
                units: waiter.units,
            };
            if let Err(grant) = waiter.grant.send(grant) {
                grant.undo(state);
            }
        }
    }
}

/// One request's share of the pool: its jobs queue together and take turns with other
/// requests'. Cheap to clone; make one per call ([`PreprocessPool::request`]).
#[derive(Clone)]
pub struct RequestShare {
    shared: Arc<Shared>,
    id: u64,
}

/// A decode needs more than the whole `--max-decode-bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub needed: u64,
    pub limit: u64,
}

impl std::fmt::Display for OverBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decoding this image needs about {} MiB, more than the server's decode budget of {} MiB \
             ({MAX_DECODE_BYTES})",
            self.needed.div_ceil(1 << 20),
            self.limit >> 20
        )
    }
}

impl PreprocessPool {
    /// `decode_bytes`: the decode budget; `decode_in_use` shows what is reserved of it.
    pub fn new(workers: usize, decode_bytes: u64, decode_in_use: IntGauge) -> Self {
        let decode_units = (decode_bytes / UNIT).max(1);
        PreprocessPool {
            shared: Arc::new(Shared {
                state: Mutex::new(Scheduler {
                    free_workers: workers.max(1),
                    free_units: decode_units,
                    queues: HashMap::new(),
                    turns: VecDeque::new(),
                }),
                decode_units,
                decode_in_use,
                next_request: AtomicU64::new(0),
            }),
        }
    }

    /// A new request's share: its jobs take turns with every other request's.
    pub fn request(&self) -> RequestShare {
        RequestShare {
            shared: Arc::clone(&self.shared),
            id: self.shared.next_request.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// [`RequestShare::run_decode`] as a request of its own.
    pub async fn run_decode<T: Send + 'static>(
        &self,
        what: &'static str,
        bytes: u64,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, OverBudget>, ServiceError> {
        self.request().run_decode(what, bytes, job).await
    }

    /// [`RequestShare::run`] as a request of its own.
    pub async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.request().run(what, job).await
    }

    /// Jobs waiting for a worker, over all requests (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.shared.lock().queues.values().map(VecDeque::len).sum()
    }
}

impl RequestShare {
    /// Runs a decode of `bytes` working memory once they are reserved and a worker is free, in
    /// this request's turn.
    pub async fn run_decode<T: Send + 'static>(
        &self,
        what: &'static str,
        bytes: u64,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Result<T, OverBudget>, ServiceError> {
        let units = bytes.div_ceil(UNIT).max(1);
        if units > self.shared.decode_units {
            return Ok(Err(OverBudget {
                needed: bytes,
                limit: self.shared.decode_units * UNIT,
            }));
        }
        self.run_with(what, units, job).await.map(Ok)
    }

    /// Runs `job` when a worker is free, in this request's turn and the caller's span. `what`
    /// names it in logs.
    pub async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.run_with(what, 0, job).await
    }

    async fn run_with<T: Send + 'static>(
        &self,
        what: &'static str,
        units: u64,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            let queue = state.queues.entry(self.id).or_default();
            let first = queue.is_empty();
            queue.push_back(Waiter { units, grant: tx });
            if first {
                state.turns.push_back(self.id);
            }
            self.shared.dispatch(&mut state);
        }
        let grant = rx
            .await
            .map_err(|_| ServiceError::Unavailable("server is shutting down".into()))?;
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _grant = grant;
            let _span = span.enter();
            job()
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "{what} task panicked");
            ServiceError::Internal(format!("{what} failed; the server logged the details"))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn at_most_workers_jobs_run_at_once() {
        let pool = PreprocessPool::new(2, 1 << 30, IntGauge::new("g", "g").unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (pool, running, peak) = (pool.clone(), Arc::clone(&running), Arc::clone(&peak));
            tasks.push(tokio::spawn(async move {
                pool.run("test", move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_internal_and_frees_its_worker() {
        let pool = PreprocessPool::new(1, 1 << 30, IntGauge::new("g", "g").unwrap());
        let e = pool
            .run("decoding", || panic!("bad decoder"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Internal(m) if m == "decoding failed; the server logged the details")
        );
        assert_eq!(pool.run("decoding", || 7).await.unwrap(), 7);
    }

    /// Two workers, but a budget for one 6 MiB decode at a time: the second waits for the
    /// first's bytes; the gauge shows the reservation while a decode runs and nothing after.
    #[tokio::test]
    async fn decodes_share_the_byte_budget() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let pool = PreprocessPool::new(2, 10 << 20, gauge.clone());
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (pool, running, peak, gauge) = (
                pool.clone(),
                Arc::clone(&running),
                Arc::clone(&peak),
                gauge.clone(),
            );
            tasks.push(tokio::spawn(async move {
                pool.run_decode("test", 6 << 20, move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert_eq!(gauge.get(), 6 << 20);
                    std::thread::sleep(Duration::from_millis(10));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap().expect("fits the budget");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert_eq!(gauge.get(), 0);
    }

    /// Jobs that wait for a ticket each, and say when they start.
    struct Gate {
        tickets: std::sync::Mutex<usize>,
        ready: std::sync::Condvar,
    }

    impl Gate {
        fn pass(&self) {
            let mut tickets = self.tickets.lock().unwrap();
            while *tickets == 0 {
                tickets = self.ready.wait(tickets).unwrap();
            }
            *tickets -= 1;
        }
        fn open(&self, n: usize) {
            *self.tickets.lock().unwrap_or_else(PoisonError::into_inner) += n;
            self.ready.notify_all();
        }
    }

    /// Lets every job through when the test ends, passed or failed (the runtime waits for them).
    struct OpenAtEnd(Arc<Gate>);

    impl Drop for OpenAtEnd {
        fn drop(&mut self) {
            self.0.open(usize::MAX / 2);
        }
    }

    /// Yields until `done` holds (at most 10 s: the test's assertions then say what went wrong).
    async fn until(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() && std::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
    }

    async fn next(
        started: &mut tokio::sync::mpsc::UnboundedReceiver<&'static str>,
    ) -> &'static str {
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("a job starts")
            .expect("open")
    }

    /// Request A queues 64 slow decodes first; request B's one decode, queued after them, starts
    /// before at most `workers + 1` more of A's (round-robin; a FIFO pool would start all of A's
    /// first). Deterministic: each job waits for a ticket, handed out one at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_later_request_is_not_stuck_behind_a_large_one() {
        let workers = 2;
        let pool = PreprocessPool::new(workers, 1 << 30, IntGauge::new("g", "g").unwrap());
        let gate = Arc::new(Gate {
            tickets: std::sync::Mutex::new(0),
            ready: std::sync::Condvar::new(),
        });
        let _open_at_end = OpenAtEnd(Arc::clone(&gate));
        let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
        let submit = |share: RequestShare, name: &'static str| {
            let (gate, started_tx) = (Arc::clone(&gate), started_tx.clone());
            tokio::spawn(async move {
                share
                    .run_decode("test", 8 << 20, move || {
                        let _ = started_tx.send(name);
                        gate.pass();
                    })
                    .await
            })
        };
        let a = pool.request();
        let mut tasks: Vec<_> = (0..64).map(|_| submit(a.clone(), "a")).collect();
        // The first `workers` of A's run; the other 62 wait.
        for _ in 0..workers {
            assert_eq!(next(&mut started).await, "a");
        }
        until(|| pool.waiting() == 64 - workers).await;
        assert_eq!(pool.waiting(), 64 - workers);
        tasks.push(submit(pool.request(), "b"));
        until(|| pool.waiting() == 64 - workers + 1).await;
        assert_eq!(pool.waiting(), 64 - workers + 1, "B's job queued");
        let mut a_after_b = 0;
        loop {
            gate.open(1);
            match next(&mut started).await {
                "b" => break,
                _ => a_after_b += 1,
            }
        }
        assert!(
            a_after_b <= workers + 1,
            "{a_after_b} of A's jobs started before B's, queued after them"
        );
        gate.open(64);
        for t in tasks {
            t.await.unwrap().unwrap().expect("fits the budget");
        }
    }

    /// A decode waiting for bytes holds back other decodes, not tokenization: a text request
    /// runs while an image request waits for a running decode's bytes.
    #[tokio::test]
    async fn tokenization_does_not_wait_behind_a_decode_waiting_for_bytes() {
        let pool = PreprocessPool::new(2, 10 << 20, IntGauge::new("g", "g").unwrap());
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run_decode("test", 6 << 20, move || hold.recv().ok())
                    .await
            }
        });
        until(|| pool.shared.lock().free_workers == 1).await;
        let second = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run_decode("test", 6 << 20, || 2).await }
        });
        until(|| pool.waiting() == 1).await;
        assert_eq!(pool.waiting(), 1, "the second decode waits for bytes");
        let text = tokio::time::timeout(Duration::from_secs(10), pool.run("tokenization", || 3))
            .await
            .expect("tokenization is not held back")
            .unwrap();
        assert_eq!(text, 3);
        assert_eq!(pool.waiting(), 1, "the second decode still waits");
        release.send(()).unwrap();
        first.await.unwrap().unwrap().expect("fits");
        assert_eq!(second.await.unwrap().unwrap(), Ok(2));
    }

    /// A caller that goes away before its job starts frees its place: the job never runs, and
    /// the next one starts.
    #[tokio::test]
    async fn a_job_whose_caller_left_never_runs() {
        let pool = PreprocessPool::new(1, 1 << 30, IntGauge::new("g", "g").unwrap());
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run("test", move || hold.recv().ok()).await }
        });
        until(|| pool.shared.lock().free_workers == 0).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let left = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run("test", move || r.fetch_add(1, Ordering::SeqCst))
                    .await
            }
        });
        until(|| pool.waiting() == 1).await;
        left.abort();
        let _ = left.await;
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(pool.run("test", || 7).await.unwrap(), 7);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(pool.waiting(), 0);
    }

    #[tokio::test]
    async fn a_decode_over_the_whole_budget_is_refused_without_running() {
        let pool = PreprocessPool::new(2, 10 << 20, IntGauge::new("g", "g").unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let refused = pool
            .run_decode("test", 11 << 20, move || r.fetch_add(1, Ordering::SeqCst))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let message = refused.to_string();
        assert!(
            message.contains("11 MiB") && message.contains("--max-decode-bytes"),
            "{message}"
        );
    }
}
