//! Property tests of the batcher: every row is answered exactly once, to its own caller, in order;
//! batches are as full as the queue allows; and the round-robin fairness bounds hold.
//!
//! The bounds the implementation guarantees (read off [`super::fill`]), with `L` the number of
//! live jobs queued when a batch is formed (the job itself included) and `max` the batch size:
//!
//! - Without cost grouping (every row costs the same): the rows taken are exactly a round-robin
//!   over the jobs in arrival order, one row per job per turn, the turn carried over between
//!   batches. So between two rows of one job, every other job takes at most one row, and a job
//!   queued with `L` live jobs gets a row in one of the next `ceil(L / max)` batches.
//! - With cost grouping: the job at the front of the queue always gets a row, and every batch that
//!   passes a job over moves it at least one place forward (the jobs served go behind it, the ones
//!   set aside keep their places ahead of it). So a job gets a row in one of the next `L` batches.
//!   That is the tight bound: jobs ahead of it whose rows cost more and more, each set aside
//!   behind the previous one while cheap rows fill the batches, take one batch each (see
//!   `costlier_jobs_ahead_each_take_a_batch`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use proptest::prelude::*;
use tokio::sync::oneshot;

use super::*;

const NORMAL: Class = Class::Live(Priority::Normal);

/// A row: (job, index within the job, cost).
type Row = (u32, u32, u32);

fn shared(max_batch_size: usize, grouped: bool) -> Shared<Row, Row> {
    Shared {
        queue: Mutex::new(Queue::new()),
        wake: Condvar::new(),
        config: BatcherConfig {
            max_batch_size,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 1_000_000,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        },
        metrics: BatchMetrics::unregistered(),
        cost: if grouped {
            |r: &Row| r.2 as usize
        } else {
            |_: &Row| 0
        },
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// A job arrives with these row costs.
    Push(Vec<u32>),
    /// The engine forms a batch.
    Take,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => prop::collection::vec(0u32..4, 1..8).prop_map(Op::Push),
        3 => Just(Op::Take),
    ]
}

/// Runs `ops` (then drains the queue) through `take_batch`; returns every batch's rows and, per
/// batch, the jobs live when it was formed. Checks on the way that every row is taken once, in
/// its job's order, into its own job's slot, and that every batch is as full as the queue allows;
/// without grouping, also that each batch is exactly the round-robin reference's.
fn run(max: usize, grouped: bool, ops: &[Op]) -> (Vec<Vec<Row>>, Vec<Vec<u32>>) {
    type Results = Arc<Mutex<JobResults<Row>>>;
    let s = shared(max, grouped);
    // Per job: its rows left (indices), and where its results go.
    let mut pending: HashMap<u32, (VecDeque<u32>, Results)> = HashMap::new();
    // The reference's turns: jobs with rows left, in the order of their next turn.
    let mut turns: VecDeque<u32> = VecDeque::new();
    let mut replies = Vec::new();
    let mut batches = Vec::new();
    let mut live_at = Vec::new();
    let mut next_job = 0u32;
    let drain = std::iter::repeat_n(&Op::Take, 1_000);
    for op in ops.iter().chain(drain) {
        let mut q = s.queue.lock().unwrap();
        match op {
            Op::Push(costs) => {
                let job = next_job;
                next_job += 1;
                let rows: Vec<Row> = costs
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| (job, i as u32, c))
                    .collect();
                let (tx, rx) = oneshot::channel();
                enqueue(&mut q, rows, None, tx, 1_000_000, NORMAL).unwrap();
                replies.push(rx);
                let results = Arc::clone(&q.live[1].back().unwrap().results);
                pending.insert(job, ((0..costs.len() as u32).collect(), results));
                turns.push_back(job);
            }
            Op::Take => {
                let queued: usize = pending.values().map(|p| p.0.len()).sum();
                assert_eq!(q.rows, queued);
                if queued == 0 {
                    continue;
                }
                let mut live: Vec<u32> = pending
                    .iter()
                    .filter(|(_, p)| !p.0.is_empty())
                    .map(|(j, _)| *j)
                    .collect();
                live.sort_unstable();
                live_at.push(live);
                // The reference: one row per job per turn, the turn carried over.
                let mut left: HashMap<u32, usize> =
                    pending.iter().map(|(j, p)| (*j, p.0.len())).collect();
                let mut want = Vec::new();
                while !grouped && want.len() < max {
                    let Some(job) = turns.pop_front() else {
                        break;
                    };
                    want.push(job);
                    let n = left.get_mut(&job).unwrap();
                    *n -= 1;
                    if *n > 0 {
                        turns.push_back(job);
                    }
                }
                let batch = take_batch(&mut q, &s);
                assert_eq!(
                    batch.rows.len(),
                    max.min(queued),
                    "a batch is as full as the queue allows"
                );
                for (row, (results, slot)) in batch.rows.iter().zip(&batch.targets) {
                    let (job, index, _) = *row;
                    let (left, own) = pending.get_mut(&job).expect("a queued job");
                    assert!(Arc::ptr_eq(results, own), "a row goes to its own job");
                    assert_eq!(*slot, index as usize, "a row goes to its own slot");
                    assert_eq!(left.pop_front(), Some(index), "rows in order, once");
                }
                if !grouped {
                    let got: Vec<u32> = batch.rows.iter().map(|r| r.0).collect();
                    assert_eq!(got, want, "exactly the round-robin order");
                }
                batches.push(batch.rows);
            }
        }
    }
    assert!(pending.values().all(|p| p.0.is_empty()), "all taken");
    (batches, live_at)
}

/// Every job live when batch `t` is formed gets a row in one of batches `t..t + bound(L)`.
fn assert_fair(batches: &[Vec<Row>], live_at: &[Vec<u32>], bound: impl Fn(usize) -> usize) {
    for (t, live) in live_at.iter().enumerate() {
        let within = bound(live.len());
        for &job in live {
            let served = batches[t..(t + within).min(batches.len())]
                .iter()
                .any(|b| b.iter().any(|r| r.0 == job));
            assert!(
                served,
                "job {job}, live with {} jobs at batch {t}, got no row within {within} batches: \
                 {batches:?}",
                live.len()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Without grouping: the batches are exactly the round-robin reference, every row once, in
    /// order, to its own job; and a live job gets a row within `ceil(L / max)` batches.
    #[test]
    fn round_robin_is_exact_and_fair(
        max in 1usize..6,
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let (batches, live_at) = run(max, false, &ops);
        assert_fair(&batches, &live_at, |l| l.div_ceil(max));
        // Between two rows of one job, every other job takes at most one row.
        let all: Vec<u32> = batches.iter().flatten().map(|r| r.0).collect();
        for (i, &job) in all.iter().enumerate() {
            if let Some(next) = all[i + 1..].iter().position(|&j| j == job) {
                let between = &all[i + 1..i + 1 + next];
                for other in between {
                    prop_assert_eq!(between.iter().filter(|&j| j == other).count(), 1);
                }
            }
        }
    }

    /// With cost grouping: every row once, in order, to its own job, batches never smaller for
    /// it; and a live job gets a row within `L` batches.
    #[test]
    fn cost_grouping_keeps_rows_and_a_bounded_wait(
        max in 1usize..6,
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let (batches, live_at) = run(max, true, &ops);
        assert_fair(&batches, &live_at, |l| l);
    }

    /// Through the engine thread, callers submitting at once: each gets exactly its own rows back,
    /// in order; the engine computed each row exactly once, in batches of at most `max`.
    #[test]
    fn every_row_is_answered_once_to_its_own_caller_in_order(
        max in 1usize..6,
        grouped in any::<bool>(),
        jobs in prop::collection::vec(prop::collection::vec(0u32..4, 1..10), 1..12),
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = BatcherConfig {
            max_batch_size: max,
            max_batch_delay: Duration::ZERO,
            max_queue_rows: 10_000,
            priority_aging: DEFAULT_PRIORITY_AGING,
            priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
        };
        let batcher = if grouped {
            Batcher::start(Echo::<true>(Arc::clone(&seen)), config, BatchMetrics::unregistered())
        } else {
            Batcher::start(Echo::<false>(Arc::clone(&seen)), config, BatchMetrics::unregistered())
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let submitted: Vec<Vec<Row>> = jobs
            .iter()
            .enumerate()
            .map(|(j, costs)| {
                costs
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| (j as u32, i as u32, c))
                    .collect()
            })
            .collect();
        let answers = runtime.block_on(async {
            let tasks: Vec<_> = submitted
                .iter()
                .map(|rows| {
                    let (b, rows) = (batcher.clone(), rows.clone());
                    tokio::spawn(async move { b.submit(rows, None).await })
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.unwrap());
            }
            answers
        });
        for (rows, answer) in submitted.iter().zip(answers) {
            prop_assert_eq!(&answer.unwrap().outputs, rows);
        }
        let seen = seen.lock().unwrap();
        prop_assert!(seen.iter().all(|b: &Vec<Row>| (1..=max).contains(&b.len())));
        let mut computed: Vec<Row> = seen.iter().flatten().copied().collect();
        computed.sort_unstable();
        let mut want: Vec<Row> = submitted.into_iter().flatten().collect();
        want.sort_unstable();
        prop_assert_eq!(computed, want, "each row computed exactly once");
        prop_assert_eq!(batcher.queued_rows(), 0);
    }
}

/// Returns its rows and records every batch; with `GROUPED`, a row's cost is its third field.
struct Echo<const GROUPED: bool>(Arc<Mutex<Vec<Vec<Row>>>>);

impl<const GROUPED: bool> Engine for Echo<GROUPED> {
    type Row = Row;
    type Output = Row;
    fn run(&mut self, rows: Vec<Row>) -> Result<Vec<Row>, crate::batch::EngineError> {
        self.0.lock().unwrap().push(rows.clone());
        Ok(rows)
    }
    fn cost(row: &Row) -> usize {
        if GROUPED { row.2 as usize } else { 0 }
    }
}

/// The bound with grouping is `L` batches, not `ceil(L / max)` plus one: a cheap job at the front
/// and costlier and costlier jobs behind it, with cheap rows to fill every batch.
#[test]
fn costlier_jobs_ahead_each_take_a_batch() {
    let ops = [
        Op::Push(vec![0; 8]),
        Op::Push(vec![1]),
        Op::Push(vec![2]),
        Op::Push(vec![3]),
        Op::Push(vec![0; 8]),
    ];
    let (batches, _) = run(3, true, &ops);
    let first_row_of = |job: u32| batches.iter().position(|b| b.iter().any(|r| r.0 == job));
    // Without grouping jobs 1..=3 would all be in the first two batches (5 jobs, batches of 3).
    assert_eq!(first_row_of(1), Some(1));
    assert_eq!(first_row_of(2), Some(2));
    assert_eq!(first_row_of(3), Some(3));
}
