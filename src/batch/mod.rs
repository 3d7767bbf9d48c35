//! The dynamic batcher, one per modality.
//!
//! Shape borrowed from text-embeddings-inference: callers submit *jobs* (one request's rows) into a
//! bounded queue; the engine thread forms the next batch of at most `max_batch_size` rows at the
//! moment it is about to run it (forming one is moving a few row handles: microseconds, so there
//! is nothing to prefetch), runs it, and hands each job its rows back, in order, through a oneshot
//! channel.
//!
//! - Continuous batching: whatever queued while the engine ran forms the next batch. With
//!   `max_batch_delay` > 0 the engine waits up to that long for a batch to fill (useful on GPUs).
//! - Fairness: rows are taken round-robin across *all* queued jobs, one row per job per turn, and
//!   the turn carries over from one batch to the next. A job queued behind J others gets its first
//!   row into one of the next ceil((J + 1) / max_batch_size) batches, however many rows they have
//!   (J + 1 batches when rows of different cost are grouped: see `fill`).
//! - Dropped callers (their receiver is gone) and jobs whose deadline passed are removed when the
//!   batch that would carry them is formed, so their rows never cost compute, and counted.
//! - Background work (label-set classifier builds, [`Batcher::submit_background`]) runs below live
//!   traffic: its rows go into a batch only when no live row is queued, and while live requests
//!   have come in the last second such a batch holds at most a quarter of `max_batch_size` rows,
//!   so a live request arriving meanwhile waits for a small batch at most. On an idle server the
//!   build runs full batches.
//! - Priorities ([`priority`]): live jobs come in three classes, served in strict order (high,
//!   normal, low) with round-robin within a class; a job that has waited `priority_aging` is served
//!   right after the high class with one row in every batch (the starvation bound), and while a
//!   higher class has had traffic in the last second rows of a lower class join a batch only while
//!   it holds fewer than `priority_yield_rows`, so a high row never waits behind, nor carries, a
//!   long batch of low ones.
//! - Bounded: normal jobs may queue `max_queue_rows` rows, high ones a quarter more, low ones half
//!   (a flood of low work leaves room for the rest); a job that does not fit is refused at once
//!   ([`BatchError::QueueFull`]).
//!
//! The batcher knows nothing of images or text: the engine's input and output are opaque rows. Each
//! job carries its caller's `tracing` span (with the request id) into the engine thread: the batch
//! span follows from every job span in it, and each job logs its queue and inference time in its own
//! span.
//!
//! Layer: engine plumbing. Knows rows, tensors-to-be and reply channels, nothing of images, texts or
//! either wire; depends on `telemetry` (its metrics) only.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;
use tracing::Span;

pub mod priority;

pub use priority::Priority;

pub use crate::{model::EngineError, telemetry::metrics::BatchMetrics};

/// Runs batches. Implemented by the ONNX towers and, in tests, by fakes.
pub trait Engine: Send + 'static {
    type Row: Send + 'static;
    type Output: Send + 'static;
    /// Returns one output per input row, in order.
    fn run(&mut self, rows: Vec<Self::Row>) -> Result<Vec<Self::Output>, EngineError>;

    /// What a row costs relative to others in the same batch, when a batch costs as much as its
    /// most expensive row (token rows run at the length of the longest). Rows of similar cost are
    /// grouped when several are queued; the default (all equal) turns grouping off.
    fn cost(_row: &Self::Row) -> usize {
        0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    pub max_batch_delay: Duration,
    pub max_queue_rows: usize,
    /// A normal or low job that has waited this long is served right after the high class, with
    /// one of its rows in every batch (the starvation bound).
    pub priority_aging: Duration,
    /// While a higher class has had traffic in the last second, a batch takes rows of a lower class
    /// only up to this many rows in all (`--priority-yield-rows`).
    pub priority_yield_rows: usize,
}

/// The default `priority_aging` (`--priority-aging`).
pub const DEFAULT_PRIORITY_AGING: Duration = Duration::from_secs(2);

/// The default `priority_yield_rows` (`--priority-yield-rows`).
pub const DEFAULT_PRIORITY_YIELD_ROWS: usize = 2;

/// Why a job got no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    #[error(
        "queue full: {queued} rows queued, {requested} more would pass the limit of {limit} rows"
    )]
    QueueFull {
        queued: usize,
        requested: usize,
        limit: usize,
    },
    #[error("deadline passed before the rows were computed")]
    DeadlineExceeded,
    #[error("engine failed: {0}")]
    Engine(EngineError),
    #[error("the batcher has stopped")]
    Stopped,
}

/// A job's outputs, in order, and where its time went.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutput<O> {
    pub outputs: Vec<O>,
    /// From queueing to the last batch with its rows being formed, less inference time.
    pub queue: Duration,
    /// Total inference time of the batches that carried its rows (shared with the other jobs in them).
    pub inference: Duration,
}

type Reply<O> = oneshot::Sender<Result<BatchOutput<O>, BatchError>>;

/// One caller's rows. `results` fills as batches finish; the reply goes out when all are in.
struct Job<R, O> {
    pending: VecDeque<R>,
    next_row: usize,
    results: Arc<Mutex<JobResults<O>>>,
    deadline: Option<Instant>,
    enqueued: Instant,
    /// The class it was queued in (it may be served in the aged tier once it has waited).
    class: Class,
}

/// Where a job queues: a live class, or below them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Live(Priority),
    Background,
}

impl Class {
    /// Index into per-class metrics: the live classes, then background.
    fn index(self) -> usize {
        match self {
            Class::Live(p) => p.index(),
            Class::Background => priority::CLASSES.len(),
        }
    }
}

struct JobResults<O> {
    slots: Vec<Option<O>>,
    filled: usize,
    reply: Option<Reply<O>>,
    enqueued: Instant,
    inference: Duration,
    /// Sequence number of the last batch whose time was added to `inference`.
    last_batch: u64,
    span: Span,
}

impl<O> JobResults<O> {
    fn is_closed(&self) -> bool {
        self.reply.as_ref().is_none_or(|r| r.is_closed())
    }

    fn fail(&mut self, error: BatchError) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(error));
        }
    }

    /// Sends the outputs (all slots are filled) with the job's timings.
    fn finish(&mut self) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let total = self.enqueued.elapsed();
        let queue = total.saturating_sub(self.inference);
        let inference = self.inference;
        self.span.in_scope(|| {
            tracing::debug!(
                rows = self.slots.len(),
                queue_ms = queue.as_secs_f64() * 1e3,
                inference_ms = inference.as_secs_f64() * 1e3,
                "rows computed"
            )
        });
        let outputs = std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect();
        let _ = reply.send(Ok(BatchOutput {
            outputs,
            queue,
            inference,
        }));
    }
}

struct Queue<R, O> {
    /// Live jobs by class, served first to last.
    live: [VecDeque<Job<R, O>>; 3],
    /// Normal and low jobs that have waited `priority_aging`: served after the high class and
    /// before the normal one, with one row in every batch.
    aged: VecDeque<Job<R, O>>,
    /// Jobs that run only when no live row waits.
    background: VecDeque<Job<R, O>>,
    /// When a job of each live class last arrived.
    last_arrival: [Option<Instant>; 3],
    rows: usize,
    /// Rows queued by class (as queued: an aged job still counts for its own class).
    class_rows: [usize; 4],
    stopped: bool,
}

impl<R, O> Queue<R, O> {
    fn new() -> Self {
        Queue {
            live: Default::default(),
            aged: VecDeque::new(),
            background: VecDeque::new(),
            last_arrival: [None; 3],
            rows: 0,
            class_rows: [0; 4],
            stopped: false,
        }
    }

    /// Takes `n` rows of `class` off the counts.
    fn remove_rows(&mut self, class: Class, n: usize) {
        self.rows -= n;
        self.class_rows[class.index()] -= n;
    }
}

struct Shared<R, O> {
    queue: Mutex<Queue<R, O>>,
    wake: Condvar,
    config: BatcherConfig,
    metrics: BatchMetrics,
    /// The engine's [`Engine::cost`].
    cost: fn(&R) -> usize,
}

/// A batch on its way to the engine: rows plus where each result goes.
struct Batch<R, O> {
    rows: Vec<R>,
    targets: Vec<(Arc<Mutex<JobResults<O>>>, usize)>,
}

/// Handle to a running batcher; cheap to clone. Dropping the last handle stops its threads.
pub struct Batcher<R: Send + 'static, O: Send + 'static> {
    shared: Arc<Shared<R, O>>,
    _stop: Arc<StopOnDrop<R, O>>,
}

impl<R: Send + 'static, O: Send + 'static> Clone for Batcher<R, O> {
    fn clone(&self) -> Self {
        Batcher {
            shared: Arc::clone(&self.shared),
            _stop: Arc::clone(&self._stop),
        }
    }
}

struct StopOnDrop<R, O>(Arc<Shared<R, O>>);

impl<R, O> Drop for StopOnDrop<R, O> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.stopped = true;
        let mut jobs = std::mem::take(&mut q.background);
        jobs.append(&mut q.aged);
        for class in &mut q.live {
            jobs.append(class);
        }
        for job in jobs {
            job.results
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fail(BatchError::Stopped);
        }
        q.rows = 0;
        q.class_rows = [0; 4];
        self.0.metrics.queue_depth.set(0);
        self.0.wake.notify_all();
    }
}

impl<R: Send + 'static, O: Send + 'static> Batcher<R, O> {
    /// Starts the engine thread.
    pub fn start<E: Engine<Row = R, Output = O>>(
        engine: E,
        config: BatcherConfig,
        metrics: BatchMetrics,
    ) -> Self {
        assert!(
            config.max_batch_size > 0 && config.max_queue_rows > 0,
            "batch and queue sizes must be positive"
        );
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new()),
            wake: Condvar::new(),
            config,
            metrics,
            cost: E::cost,
        });
        let owner = Arc::clone(&shared);
        #[allow(
            clippy::expect_used,
            reason = "at start-up, before any request: a process that cannot start a thread cannot serve"
        )]
        thread::Builder::new()
            .name("batch-engine".into())
            .spawn(move || engine_loop(engine, &owner))
            .expect("spawning the engine thread");
        Batcher {
            _stop: Arc::new(StopOnDrop(Arc::clone(&shared))),
            shared,
        }
    }

    pub fn metrics(&self) -> &BatchMetrics {
        &self.shared.metrics
    }

    /// Rows waiting in the queue.
    pub fn queued_rows(&self) -> usize {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rows
    }

    /// Queues `rows` in the current call's class ([`priority::current`]) and returns their
    /// outputs, in order. Dropping the returned future before it resolves withdraws the rows that
    /// have not been computed yet. The current span follows the rows into the engine thread.
    pub async fn submit(
        &self,
        rows: Vec<R>,
        deadline: Option<Instant>,
    ) -> Result<BatchOutput<O>, BatchError> {
        self.submit_as(rows, deadline, Class::Live(priority::current()))
            .await
    }

    /// [`Self::submit`] for background work, which runs only when no live row waits.
    pub async fn submit_background(&self, rows: Vec<R>) -> Result<BatchOutput<O>, BatchError> {
        self.submit_as(rows, None, Class::Background).await
    }

    async fn submit_as(
        &self,
        rows: Vec<R>,
        deadline: Option<Instant>,
        class: Class,
    ) -> Result<BatchOutput<O>, BatchError> {
        let n = rows.len();
        if n == 0 {
            return Ok(BatchOutput {
                outputs: Vec::new(),
                queue: Duration::ZERO,
                inference: Duration::ZERO,
            });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let queued = enqueue(
                &mut q,
                rows,
                deadline,
                tx,
                self.shared.config.max_queue_rows,
                class,
            );
            self.shared.metrics.queue_depth.set(q.rows as i64);
            if let Err(e) = queued {
                if matches!(e, BatchError::QueueFull { .. }) {
                    self.shared.metrics.rejected.inc_by(n as u64);
                    self.shared.metrics.refused_by_class[class.index()].inc();
                }
                return Err(e);
            }
        }
        self.shared.wake.notify_all();
        rx.await.unwrap_or(Err(BatchError::Stopped))
    }
}

/// Adds a job unless it would take the queue past its class's share of `limit` rows (normal and
/// background work: `limit`; see [`Priority::queue_limit`]).
fn enqueue<R, O>(
    q: &mut Queue<R, O>,
    rows: Vec<R>,
    deadline: Option<Instant>,
    reply: Reply<O>,
    limit: usize,
    class: Class,
) -> Result<(), BatchError> {
    if q.stopped {
        return Err(BatchError::Stopped);
    }
    let n = rows.len();
    let limit = match class {
        Class::Live(p) => p.queue_limit(limit, n),
        Class::Background => limit,
    };
    if q.rows + n > limit {
        return Err(BatchError::QueueFull {
            queued: q.rows,
            requested: n,
            limit,
        });
    }
    q.rows += n;
    q.class_rows[class.index()] += n;
    let enqueued = Instant::now();
    let queue = match class {
        Class::Live(p) => {
            q.last_arrival[p.index()] = Some(enqueued);
            &mut q.live[p.index()]
        }
        Class::Background => &mut q.background,
    };
    queue.push_back(Job {
        pending: rows.into(),
        next_row: 0,
        results: Arc::new(Mutex::new(JobResults {
            slots: (0..n).map(|_| None).collect(),
            filled: 0,
            reply: Some(reply),
            enqueued,
            inference: Duration::ZERO,
            last_batch: 0,
            // The rows' time in the batcher, a child of the caller's span; the batch that
            // computes them links to it (see `engine_loop`).
            span: tracing::debug_span!("queue", rows = n),
        })),
        deadline,
        enqueued,
        class,
    });
    Ok(())
}

/// Waits for rows (and, with a batch delay, for the batch to fill), then forms the next batch.
/// `None` once the batcher has stopped.
fn next_batch<R, O>(shared: &Shared<R, O>) -> Option<Batch<R, O>> {
    let config = shared.config;
    let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        while q.rows == 0 && !q.stopped {
            q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        if q.stopped {
            return None;
        }
        if !config.max_batch_delay.is_zero() && q.rows < config.max_batch_size {
            let until = Instant::now() + config.max_batch_delay;
            while q.rows < config.max_batch_size && !q.stopped {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                q = shared
                    .wake
                    .wait_timeout(q, until - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let batch = take_batch(&mut q, shared);
        shared.metrics.queue_depth.set(q.rows as i64);
        if !batch.rows.is_empty() {
            return Some(batch);
        }
    }
}

/// How long after a request of a class the batches of lower classes stay small.
const LIVE_RECENTLY: Duration = Duration::from_secs(1);

/// Forms the next batch, dropping dead jobs first: one row of the longest-waiting aged job (the
/// starvation bound), then rows round-robin from the highest class that has any, the aged jobs
/// right after the high class, the room left filled from the classes below; only when no live row
/// waits, background rows. While a higher class has had traffic in the last second, rows of a
/// lower class join only while the batch holds fewer than `priority_yield_rows` (on a CPU a
/// batch's time grows with its rows: a high request neither waits behind a long batch of low
/// rows nor carries them in its own).
fn take_batch<R, O>(q: &mut Queue<R, O>, shared: &Shared<R, O>) -> Batch<R, O> {
    let now = Instant::now();
    for class in 0..q.live.len() {
        let mut jobs = std::mem::take(&mut q.live[class]);
        drop_dead(&mut jobs, q, shared, now);
        q.live[class] = jobs;
    }
    for tier in [Tier::Aged, Tier::Background] {
        let mut jobs = std::mem::take(tier.of(q));
        drop_dead(&mut jobs, q, shared, now);
        *tier.of(q) = jobs;
    }
    promote_aged(q, shared.config.priority_aging, now);

    let max = shared.config.max_batch_size;
    let small = (max / 4).max(1);
    let yield_rows = shared.config.priority_yield_rows.clamp(1, max);
    let mut batch = Batch {
        rows: Vec::with_capacity(max.min(q.rows)),
        targets: Vec::with_capacity(max.min(q.rows)),
    };
    let recently = |t: Option<Instant>| t.is_some_and(|t| now.duration_since(t) < LIVE_RECENTLY);
    let mut aged = std::mem::take(&mut q.aged);
    fill(&mut batch, &mut aged, 1, q, shared, now);
    for class in 0..q.live.len() {
        let busy_above = q.last_arrival[..class].iter().any(|&t| recently(t));
        let cap = if busy_above { yield_rows } else { max };
        if class == 1 && batch.rows.len() < cap {
            fill(&mut batch, &mut aged, cap, q, shared, now);
        }
        if batch.rows.len() >= cap {
            continue;
        }
        let mut jobs = std::mem::take(&mut q.live[class]);
        fill(&mut batch, &mut jobs, cap, q, shared, now);
        q.live[class] = jobs;
    }
    q.aged = aged;
    if batch.rows.is_empty() {
        let live_lately = q.last_arrival.iter().any(|&t| recently(t));
        let cap = if live_lately { small } else { max };
        let mut background = std::mem::take(&mut q.background);
        fill(&mut batch, &mut background, cap, q, shared, now);
        q.background = background;
    }
    batch
}

/// The queues outside the live classes.
#[derive(Clone, Copy)]
enum Tier {
    Aged,
    Background,
}

impl Tier {
    fn of<R, O>(self, q: &mut Queue<R, O>) -> &mut VecDeque<Job<R, O>> {
        match self {
            Tier::Aged => &mut q.aged,
            Tier::Background => &mut q.background,
        }
    }
}

/// Moves the normal and low jobs that have waited `aging` to the back of the aged tier (the
/// starvation bound: from there one of their rows leads every batch, and they are served before
/// the normal class).
fn promote_aged<R, O>(q: &mut Queue<R, O>, aging: Duration, now: Instant) {
    for class in 1..q.live.len() {
        while q.live[class]
            .front()
            .is_some_and(|job| now.duration_since(job.enqueued) >= aging)
        {
            if let Some(job) = q.live[class].pop_front() {
                q.aged.push_back(job);
            }
        }
    }
}

/// Removes jobs whose caller went away or whose deadline passed, counting their rows.
fn drop_dead<R, O>(
    jobs: &mut VecDeque<Job<R, O>>,
    q: &mut Queue<R, O>,
    shared: &Shared<R, O>,
    now: Instant,
) {
    let metrics = &shared.metrics;
    let mut kept = VecDeque::with_capacity(jobs.len());
    for job in jobs.drain(..) {
        let mut results = job.results.lock().unwrap_or_else(PoisonError::into_inner);
        let left = job.pending.len() as u64;
        if results.is_closed() {
            metrics.dropped_cancelled.inc_by(left);
            q.remove_rows(job.class, job.pending.len());
            results
                .span
                .in_scope(|| tracing::debug!(rows = left, "caller went away; rows dropped"));
        } else if job.deadline.is_some_and(|d| d <= now) {
            metrics.dropped_deadline.inc_by(left);
            q.remove_rows(job.class, job.pending.len());
            results.span.in_scope(|| {
                tracing::debug!(rows = left, "deadline passed in the queue; rows dropped")
            });
            results.fail(BatchError::DeadlineExceeded);
        } else {
            drop(results);
            kept.push_back(job);
        }
    }
    *jobs = kept;
}

/// Adds rows of `jobs` round-robin until the batch holds `max`: the job at the front has its turn,
/// one row, then goes to the back (if it has more), so the next batch continues the round.
///
/// Grouping by cost: the first row sets the batch's cost; jobs whose next row costs more are set
/// aside while cheaper-or-equal rows fill the batch, and only if room is left do they join (so a
/// batch is never smaller for it). Set-aside jobs keep their turn: they go back to the front, and
/// the next batch starts with them. Every batch serves the job at the front and moves a job it
/// passes over at least one place forward, so a job behind J others gets a row within J + 1
/// batches (not ceil((J + 1) / max) as without grouping: costlier and costlier jobs ahead, each
/// set aside behind the last while cheap rows fill the batches, take a batch each).
fn fill<R, O>(
    batch: &mut Batch<R, O>,
    jobs: &mut VecDeque<Job<R, O>>,
    max: usize,
    q: &mut Queue<R, O>,
    shared: &Shared<R, O>,
    now: Instant,
) {
    let cost = shared.cost;
    let mut target: Option<usize> = None;
    let mut set_aside: VecDeque<Job<R, O>> = VecDeque::new();
    while batch.rows.len() < max {
        let Some(mut job) = jobs.pop_front() else {
            break;
        };
        let Some(next) = job.pending.front() else {
            continue;
        };
        let c = cost(next);
        if target.is_some_and(|t| c > t) {
            set_aside.push_back(job);
            continue;
        }
        target.get_or_insert(c);
        take_row(batch, &mut job, q, shared, now);
        if !job.pending.is_empty() {
            jobs.push_back(job);
        }
    }
    // Room left: the costlier rows join after all, round-robin.
    while batch.rows.len() < max {
        let Some(mut job) = set_aside.pop_front() else {
            break;
        };
        take_row(batch, &mut job, q, shared, now);
        if !job.pending.is_empty() {
            set_aside.push_back(job);
        }
    }
    // Jobs still set aside have their turn next.
    while let Some(job) = set_aside.pop_back() {
        jobs.push_front(job);
    }
}

fn take_row<R, O>(
    batch: &mut Batch<R, O>,
    job: &mut Job<R, O>,
    q: &mut Queue<R, O>,
    shared: &Shared<R, O>,
    now: Instant,
) {
    if let Some(row) = job.pending.pop_front() {
        shared.metrics.queue_wait[job.class.index()]
            .observe(now.duration_since(job.enqueued).as_secs_f64());
        batch.rows.push(row);
        batch.targets.push((Arc::clone(&job.results), job.next_row));
        job.next_row += 1;
        q.remove_rows(job.class, 1);
    }
}

/// Runs batches and hands each job its rows.
fn engine_loop<E: Engine>(mut engine: E, shared: &Shared<E::Row, E::Output>) {
    let metrics = &shared.metrics;
    let mut seq: u64 = 0;
    while let Some(Batch { rows, targets }) = next_batch(shared) {
        seq += 1;
        let n = rows.len();
        // The jobs in this batch, each once (rows of one job are interleaved with others').
        let mut jobs: Vec<Arc<Mutex<JobResults<E::Output>>>> = Vec::new();
        for (job, _) in &targets {
            if !jobs.iter().any(|j| Arc::ptr_eq(j, job)) {
                jobs.push(Arc::clone(job));
            }
        }
        let span = tracing::debug_span!(parent: None, "inference", rows = n, jobs = jobs.len());
        for job in &jobs {
            span.follows_from(&job.lock().unwrap_or_else(PoisonError::into_inner).span);
        }
        let started = Instant::now();
        // A panicking engine fails its batch, not the batcher: the thread lives on.
        let outcome = span.in_scope(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run(rows)))
                .unwrap_or_else(|_| Err(EngineError::Panicked))
        });
        let took = started.elapsed();
        metrics.batch_size.observe(n as f64);
        metrics.inference.observe(took.as_secs_f64());
        for job in &jobs {
            let mut results = job.lock().unwrap_or_else(PoisonError::into_inner);
            if results.last_batch != seq {
                results.last_batch = seq;
                results.inference += took;
            }
        }
        let error = match outcome {
            Ok(outputs) if outputs.len() == n => {
                metrics.rows_computed.inc_by(n as u64);
                for ((job, index), output) in targets.into_iter().zip(outputs) {
                    let mut results = job.lock().unwrap_or_else(PoisonError::into_inner);
                    if results.slots[index].is_none() {
                        results.slots[index] = Some(output);
                        results.filled += 1;
                    }
                    if results.filled == results.slots.len() {
                        results.finish();
                    }
                }
                continue;
            }
            Ok(outputs) => BatchError::Engine(EngineError::OutputCount {
                outputs: outputs.len(),
                rows: n,
            }),
            Err(e) => BatchError::Engine(e),
        };
        for job in jobs {
            job.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .fail(error.clone());
        }
    }
}

#[cfg(test)]
mod priority_tests;
#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;

    const NORMAL: Class = Class::Live(Priority::Normal);

    fn shared(max_batch_size: usize, max_queue_rows: usize) -> Shared<u32, u32> {
        test_shared(max_batch_size, max_queue_rows, DEFAULT_PRIORITY_AGING)
    }

    /// A batcher's shared state without its engine thread, for tests that form batches by hand.
    pub(super) fn test_shared(
        max_batch_size: usize,
        max_queue_rows: usize,
        priority_aging: Duration,
    ) -> Shared<u32, u32> {
        Shared {
            queue: Mutex::new(Queue::new()),
            wake: Condvar::new(),
            config: BatcherConfig {
                max_batch_size,
                max_batch_delay: Duration::ZERO,
                max_queue_rows,
                priority_aging,
                priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
            },
            metrics: BatchMetrics::unregistered(),
            cost: |_| 0,
        }
    }

    fn push(
        s: &Shared<u32, u32>,
        rows: Vec<u32>,
        deadline: Option<Instant>,
    ) -> oneshot::Receiver<Result<BatchOutput<u32>, BatchError>> {
        let (tx, rx) = oneshot::channel();
        let mut q = s.queue.lock().unwrap();
        enqueue(&mut q, rows, deadline, tx, s.config.max_queue_rows, NORMAL).unwrap();
        rx
    }

    #[test]
    fn batches_respect_the_size_and_interleave_jobs() {
        let s = shared(4, 100);
        let _big = push(&s, (100..110).collect(), None);
        let _small = push(&s, vec![7], None);
        let mut q = s.queue.lock().unwrap();
        let first = take_batch(&mut q, &s);
        // Round robin: the 1-row job rides in the first batch instead of waiting behind 10 rows.
        assert_eq!(first.rows, vec![100, 7, 101, 102]);
        let second = take_batch(&mut q, &s);
        assert_eq!(second.rows, vec![103, 104, 105, 106]);
        let third = take_batch(&mut q, &s);
        assert_eq!(third.rows, vec![107, 108, 109]);
        assert_eq!(q.rows, 0);
        assert!(take_batch(&mut q, &s).rows.is_empty());
    }

    #[test]
    fn the_queue_refuses_what_does_not_fit() {
        let s = shared(4, 5);
        let _a = push(&s, vec![1, 2, 3], None);
        let (tx, _rx) = oneshot::channel();
        let mut q = s.queue.lock().unwrap();
        let err = enqueue(&mut q, vec![4, 5, 6], None, tx, 5, NORMAL).unwrap_err();
        assert_eq!(
            err,
            BatchError::QueueFull {
                queued: 3,
                requested: 3,
                limit: 5
            }
        );
        let (tx, _rx) = oneshot::channel();
        enqueue(&mut q, vec![4, 5], None, tx, 5, NORMAL).expect("exactly fits");
    }

    #[test]
    fn dropped_callers_and_expired_deadlines_cost_no_compute() {
        let s = shared(8, 100);
        let gone = push(&s, vec![1, 2, 3], None);
        drop(gone);
        let late = push(
            &s,
            vec![4, 5],
            Some(Instant::now() - Duration::from_millis(1)),
        );
        let mut live = push(&s, vec![6], Some(Instant::now() + Duration::from_secs(60)));
        let mut late = late;
        let mut q = s.queue.lock().unwrap();
        let batch = take_batch(&mut q, &s);
        assert_eq!(batch.rows, vec![6]);
        assert_eq!(s.metrics.dropped_cancelled.get(), 3);
        assert_eq!(s.metrics.dropped_deadline.get(), 2);
        assert_eq!(late.try_recv().unwrap(), Err(BatchError::DeadlineExceeded));
        assert!(
            live.try_recv().is_err(),
            "the live job is still waiting for its row"
        );
        assert_eq!(q.rows, 0);
    }

    /// Doubles each row; optionally waits for a go signal before each batch and reports batch sizes.
    struct Doubler {
        sizes: std_mpsc::Sender<usize>,
        fail_on: Option<u32>,
    }

    impl Engine for Doubler {
        type Row = u32;
        type Output = u32;
        fn run(&mut self, rows: Vec<u32>) -> Result<Vec<u32>, EngineError> {
            let _ = self.sizes.send(rows.len());
            if let Some(bad) = self.fail_on
                && rows.contains(&bad)
            {
                return Err(format!("row {bad} is poison").into());
            }
            Ok(rows.into_iter().map(|r| r * 2).collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_caller_gets_exactly_its_own_rows_in_order() {
        let (sizes_tx, sizes_rx) = std_mpsc::channel();
        let config = BatcherConfig {
            max_batch_size: 8,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 100_000,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(
            Doubler {
                sizes: sizes_tx,
                fail_on: None,
            },
            config,
            BatchMetrics::unregistered(),
        );
        let mut tasks = Vec::new();
        // A deterministic pseudo-random mix of job sizes, submitted concurrently.
        let mut seed = 0x9E37_79B9u32;
        for job in 0..200u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = seed % 20 + 1;
            let rows: Vec<u32> = (0..n).map(|i| job * 1000 + i).collect();
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move {
                let want: Vec<u32> = rows.iter().map(|r| r * 2).collect();
                let got = b.submit(rows, None).await.expect("computed");
                assert_eq!(got.outputs, want);
                n as u64
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("task");
        }
        assert_eq!(batcher.metrics().rows_computed.get(), total);
        let sizes: Vec<usize> = sizes_rx.try_iter().collect();
        assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>() as u64, total);
        assert_eq!(batcher.queued_rows(), 0);
    }

    #[tokio::test]
    async fn an_engine_failure_fails_only_the_jobs_in_that_batch() {
        let (sizes_tx, _sizes_rx) = std_mpsc::channel();
        let config = BatcherConfig {
            max_batch_size: 1,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 100,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(
            Doubler {
                sizes: sizes_tx,
                fail_on: Some(13),
            },
            config,
            BatchMetrics::unregistered(),
        );
        let err = batcher.submit(vec![13], None).await.unwrap_err();
        assert!(
            matches!(err, BatchError::Engine(ref m) if m.contains("poison")),
            "{err:?}"
        );
        assert_eq!(
            batcher.submit(vec![1, 2], None).await.unwrap().outputs,
            vec![2, 4]
        );
        assert_eq!(
            batcher.submit(Vec::new(), None).await.unwrap().outputs,
            Vec::<u32>::new()
        );
    }

    #[tokio::test]
    async fn a_panicking_engine_fails_its_batch_and_keeps_serving() {
        struct Fragile;
        impl Engine for Fragile {
            type Row = u32;
            type Output = u32;
            fn run(&mut self, rows: Vec<u32>) -> Result<Vec<u32>, EngineError> {
                assert!(!rows.contains(&0), "zero is fatal");
                Ok(rows)
            }
        }
        let config = BatcherConfig {
            max_batch_size: 1,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 10,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(Fragile, config, BatchMetrics::unregistered());
        let err = batcher.submit(vec![0], None).await.unwrap_err();
        assert!(
            matches!(err, BatchError::Engine(ref m) if m.contains("panicked")),
            "{err:?}"
        );
        assert_eq!(
            batcher.submit(vec![7], None).await.unwrap().outputs,
            vec![7]
        );
    }

    /// Waits for a go signal before each batch, so tests control when the engine is busy.
    struct Gated {
        go: std_mpsc::Receiver<()>,
        sizes: std_mpsc::Sender<usize>,
    }

    impl Engine for Gated {
        type Row = u32;
        type Output = u32;
        fn run(&mut self, rows: Vec<u32>) -> Result<Vec<u32>, EngineError> {
            let _ = self.sizes.send(rows.len());
            self.go.recv().map_err(|e| e.to_string())?;
            Ok(rows.into_iter().map(|r| r + 1).collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_delay_waits_for_rows_to_fill_the_batch() {
        let (go_tx, go) = std_mpsc::channel();
        let (sizes, sizes_rx) = std_mpsc::channel();
        let config = BatcherConfig {
            max_batch_size: 4,
            // Long enough that three separate submissions land in the same batch.
            max_batch_delay: Duration::from_secs(2),
            max_queue_rows: 100,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(Gated { go, sizes }, config, BatchMetrics::unregistered());
        for _ in 0..3 {
            go_tx.send(()).unwrap();
        }
        let started = Instant::now();
        let a = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(vec![1], None).await }
        });
        let b = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(vec![2, 3], None).await }
        });
        let c = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(vec![4, 5], None).await }
        });
        let (a, b, c) = (a.await.unwrap(), b.await.unwrap(), c.await.unwrap());
        assert_eq!(a.unwrap().outputs, vec![2]);
        assert_eq!(b.unwrap().outputs, vec![3, 4]);
        assert_eq!(c.unwrap().outputs, vec![5, 6]);
        // 5 rows, batches of at most 4: the first batch filled to 4 before its delay ran out (it ran
        // as soon as it was full, not after 2 s), then the last row waited out the delay alone.
        let sizes: Vec<usize> = sizes_rx.try_iter().collect();
        assert_eq!(sizes, vec![4, 1]);
        assert!(started.elapsed() >= Duration::from_secs(2));
        assert_eq!(batcher.metrics().batch_size.get_sample_count(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_and_counts_the_rows() {
        let (go_tx, go) = std_mpsc::channel();
        let (sizes, sizes_rx) = std_mpsc::channel();
        let config = BatcherConfig {
            max_batch_size: 2,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 4,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(Gated { go, sizes }, config, BatchMetrics::unregistered());
        // Jobs of 2 rows: the first goes to the engine (which blocks); nothing is formed ahead of
        // the engine, so the next two wait in the queue and fill it.
        let mut waiting = Vec::new();
        for r in 0..3u32 {
            let b = batcher.clone();
            waiting.push(tokio::spawn(async move {
                b.submit(vec![r * 2, r * 2 + 1], None).await
            }));
            if r == 0 {
                // Rows are counted as they leave the queue.
                while batcher.metrics().queue_wait[1].get_sample_count() < 2 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        while batcher.queued_rows() < 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(sizes_rx.recv().unwrap(), 2, "the engine holds one batch");
        let err = batcher.submit(vec![99], None).await.unwrap_err();
        assert!(
            matches!(err, BatchError::QueueFull { limit: 4, .. }),
            "{err:?}"
        );
        assert_eq!(batcher.metrics().rejected.get(), 1);
        assert_eq!(batcher.metrics().queue_depth.get(), 4);
        for _ in 0..3 {
            go_tx.send(()).unwrap();
        }
        for (r, w) in waiting.into_iter().enumerate() {
            let r = r as u32;
            let out = w.await.unwrap().unwrap();
            assert_eq!(out.outputs, vec![r * 2 + 1, r * 2 + 2]);
            assert!(out.queue + out.inference <= Duration::from_secs(60));
        }
        assert_eq!(batcher.metrics().queue_depth.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timings_split_queue_wait_from_inference() {
        struct Slow;
        impl Engine for Slow {
            type Row = u32;
            type Output = u32;
            fn run(&mut self, rows: Vec<u32>) -> Result<Vec<u32>, EngineError> {
                thread::sleep(Duration::from_millis(30));
                Ok(rows)
            }
        }
        let config = BatcherConfig {
            max_batch_size: 1,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 10,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(Slow, config, BatchMetrics::unregistered());
        let out = batcher.submit(vec![1, 2, 3], None).await.unwrap();
        // Three batches of one row, 30 ms each, all of them this job's.
        assert!(out.inference >= Duration::from_millis(90), "{out:?}");
        assert!(out.queue < out.inference, "{out:?}");
        assert_eq!(batcher.metrics().batch_size.get_sample_count(), 3);
        assert_eq!(batcher.metrics().queue_wait[1].get_sample_count(), 3);
    }

    #[test]
    fn a_small_job_behind_many_large_ones_waits_at_most_its_round() {
        // 40 jobs of 25 rows queued first, then a 1-row job; batches of 32.
        let s = shared(32, 10_000);
        let mut keep = Vec::new();
        for j in 0..40u32 {
            keep.push(push(&s, (0..25).map(|r| j * 100 + r).collect(), None));
        }
        keep.push(push(&s, vec![9_999], None));
        let mut q = s.queue.lock().unwrap();
        let mut batches_until_small = 0;
        loop {
            let batch = take_batch(&mut q, &s);
            assert!(!batch.rows.is_empty(), "the small job was never served");
            batches_until_small += 1;
            if batch.rows.contains(&9_999) {
                break;
            }
        }
        // ceil((40 jobs ahead + itself) / 32) = 2 batches, not the ~25 a restart at the front takes.
        assert_eq!(batches_until_small, 2);
    }

    #[test]
    fn the_round_carries_over_between_batches() {
        let s = shared(2, 100);
        let _a = push(&s, vec![10, 11, 12], None);
        let _b = push(&s, vec![20, 21, 22], None);
        let _c = push(&s, vec![30, 31, 32], None);
        let mut q = s.queue.lock().unwrap();
        assert_eq!(take_batch(&mut q, &s).rows, vec![10, 20]);
        // c had no turn yet: it goes first now.
        assert_eq!(take_batch(&mut q, &s).rows, vec![30, 11]);
        assert_eq!(take_batch(&mut q, &s).rows, vec![21, 31]);
    }

    /// Blocks each batch until told to go; reports the rows it was given.
    struct Held {
        go: std_mpsc::Receiver<()>,
        seen: std_mpsc::Sender<Vec<u32>>,
    }

    impl Engine for Held {
        type Row = u32;
        type Output = u32;
        fn run(&mut self, rows: Vec<u32>) -> Result<Vec<u32>, EngineError> {
            let _ = self.seen.send(rows.clone());
            self.go.recv().map_err(|e| e.to_string())?;
            Ok(rows)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_is_formed_ahead_of_the_engine_so_late_and_gone_rows_cost_nothing() {
        let (go_tx, go) = std_mpsc::channel();
        let (seen_tx, seen) = std_mpsc::channel();
        let config = BatcherConfig {
            max_batch_size: 4,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 100,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = Batcher::start(
            Held { go, seen: seen_tx },
            config,
            BatchMetrics::unregistered(),
        );
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(vec![1], None).await }
        });
        // The engine is busy with the first batch ...
        assert_eq!(seen.recv_timeout(Duration::from_secs(10)).unwrap(), vec![1]);
        // ... while a job with a short deadline and a job whose caller leaves wait behind it.
        let late = tokio::spawn({
            let b = batcher.clone();
            let deadline = Instant::now() + Duration::from_millis(50);
            async move { b.submit(vec![2, 3], Some(deadline)).await }
        });
        let gone = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(vec![4], None).await }
        });
        while batcher.queued_rows() < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gone.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let live = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(vec![5], None).await }
        });
        while batcher.queued_rows() < 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        go_tx.send(()).unwrap();
        go_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().outputs, vec![1]);
        assert_eq!(
            late.await.unwrap().unwrap_err(),
            BatchError::DeadlineExceeded
        );
        assert_eq!(live.await.unwrap().unwrap().outputs, vec![5]);
        // The second batch the engine saw holds only the live row.
        assert_eq!(seen.recv_timeout(Duration::from_secs(10)).unwrap(), vec![5]);
        let m = batcher.metrics();
        assert_eq!(m.dropped_deadline.get(), 2);
        assert_eq!(m.dropped_cancelled.get(), 1);
        assert_eq!(m.rows_computed.get(), 2);
    }

    #[test]
    fn background_rows_run_only_when_no_live_row_waits_and_in_small_batches() {
        let s = shared(8, 1000);
        let (tx, _build) = oneshot::channel();
        {
            let mut q = s.queue.lock().unwrap();
            enqueue(
                &mut q,
                (0..100).collect(),
                None,
                tx,
                1000,
                Class::Background,
            )
            .unwrap();
        }
        let _live = push(&s, vec![500, 501, 502], None);
        let mut q = s.queue.lock().unwrap();
        // Live rows first, alone, though the batch has room.
        assert_eq!(take_batch(&mut q, &s).rows, vec![500, 501, 502]);
        // Then the build, a quarter batch at a time.
        assert_eq!(take_batch(&mut q, &s).rows, vec![0, 1]);
        drop(q);
        let _late = push(&s, vec![900], None);
        let mut q = s.queue.lock().unwrap();
        assert_eq!(
            take_batch(&mut q, &s).rows,
            vec![900],
            "a live row overtakes the build"
        );
        assert_eq!(take_batch(&mut q, &s).rows, vec![2, 3]);
        // No live request for a while: full batches.
        q.last_arrival = [None, Some(Instant::now() - LIVE_RECENTLY), None];
        assert_eq!(take_batch(&mut q, &s).rows, (4..12).collect::<Vec<_>>());
    }

    #[test]
    fn rows_of_similar_cost_are_grouped_without_losing_turns_or_batch_size() {
        // The cost of a row is the row itself (think: its length).
        let mut s = shared(3, 100);
        s.cost = |r: &u32| *r as usize;
        let _a = push(&s, vec![8, 8], None);
        let _long = push(&s, vec![72], None);
        let _b = push(&s, vec![8], None);
        let _c = push(&s, vec![16], None);
        let mut q = s.queue.lock().unwrap();
        // Costlier rows are set aside while rows of the first row's cost fill the batch ...
        assert_eq!(take_batch(&mut q, &s).rows, vec![8, 8, 8]);
        // ... and they start the next batch, in their turn.
        assert_eq!(take_batch(&mut q, &s).rows, vec![72, 16]);
        drop(q);
        // Not enough cheap rows: the batch is filled with costlier ones rather than run short.
        let _d = push(&s, vec![8], None);
        let _e = push(&s, vec![72, 72], None);
        let mut q = s.queue.lock().unwrap();
        assert_eq!(take_batch(&mut q, &s).rows, vec![8, 72, 72]);
    }
}
