//! The batcher's priority classes: strict order with small batches below a busy class, the
//! starvation bound, queue room by class, and the per-class metrics.

use super::{tests::test_shared as shared, *};

type Rx = oneshot::Receiver<Result<BatchOutput<u32>, BatchError>>;

fn push(s: &Shared<u32, u32>, rows: Vec<u32>, class: Priority) -> Result<Rx, BatchError> {
    let (tx, rx) = oneshot::channel();
    let mut q = s.queue.lock().unwrap();
    let limit = s.config.max_queue_rows;
    enqueue(&mut q, rows, None, tx, limit, Class::Live(class)).map(|()| rx)
}

#[test]
fn higher_classes_go_first_and_lower_ones_get_small_batches_meanwhile() {
    let s = shared(8, 1000, Duration::from_secs(60));
    let _low = push(&s, (100..120).collect(), Priority::Low).unwrap();
    let _normal = push(&s, (200..220).collect(), Priority::Normal).unwrap();
    let _high = push(&s, vec![1, 2, 3], Priority::High).unwrap();
    let mut q = s.queue.lock().unwrap();
    // The high rows first; with the high class busy, lower rows join only while the batch holds
    // fewer than --priority-yield-rows (2): none join these three.
    assert_eq!(take_batch(&mut q, &s).rows, vec![1, 2, 3]);
    // Only normal and low rows left, the high class busy a moment ago: normal rows, 2 at a time.
    assert_eq!(take_batch(&mut q, &s).rows, vec![200, 201]);
    // Nothing above has been busy for a second: full batches, normal before low.
    q.last_arrival = [None; 3];
    assert_eq!(take_batch(&mut q, &s).rows, (202..210).collect::<Vec<_>>());
    q.last_arrival = [None; 3];
    let rest: Vec<u32> = std::iter::from_fn(|| {
        let rows = take_batch(&mut q, &s).rows;
        (!rows.is_empty()).then_some(rows)
    })
    .flatten()
    .collect();
    let normal_after: Vec<u32> = (210..220).collect();
    assert_eq!(
        &rest[..10],
        &normal_after[..],
        "normal rows all before low ones"
    );
    assert_eq!(rest[10..], (100..120).collect::<Vec<_>>()[..]);
    assert_eq!(q.rows, 0);
    assert_eq!(q.class_rows, [0; 4]);
}

#[test]
fn a_job_that_waited_too_long_gets_a_row_in_every_batch_and_goes_before_normal_work() {
    let s = shared(4, 1000, Duration::from_millis(50));
    let _low = push(&s, vec![100, 101, 102], Priority::Low).unwrap();
    {
        let mut q = s.queue.lock().unwrap();
        // It has waited past the bound.
        q.live[2][0].enqueued -= Duration::from_millis(60);
    }
    let _high = push(&s, (1..20).collect(), Priority::High).unwrap();
    let mut q = s.queue.lock().unwrap();
    // A busy high class does not starve it: one of its rows leads every batch, and the high rows
    // fill the rest (the high job is not delayed by more than a row per batch).
    assert_eq!(take_batch(&mut q, &s).rows, vec![100, 1, 2, 3]);
    assert_eq!(take_batch(&mut q, &s).rows, vec![101, 4, 5, 6]);
    drop(q);
    // Aged work goes before normal work that has not waited as long, even without high traffic.
    let _normal = push(&s, vec![200, 201], Priority::Normal).unwrap();
    let mut q = s.queue.lock().unwrap();
    q.live[0].clear();
    q.last_arrival = [None; 3];
    assert_eq!(take_batch(&mut q, &s).rows, vec![102, 200, 201]);
}

#[test]
fn without_the_bound_a_busy_high_class_keeps_low_rows_waiting() {
    let s = shared(4, 1000, Duration::from_secs(3600));
    let _low = push(&s, vec![100, 101], Priority::Low).unwrap();
    let _high = push(&s, (1..9).collect(), Priority::High).unwrap();
    let mut q = s.queue.lock().unwrap();
    assert_eq!(take_batch(&mut q, &s).rows, vec![1, 2, 3, 4]);
    assert_eq!(take_batch(&mut q, &s).rows, vec![5, 6, 7, 8]);
    // The high queue is empty: the low rows, --priority-yield-rows (2) at most while the high
    // class was busy a moment ago.
    assert_eq!(take_batch(&mut q, &s).rows, vec![100, 101]);
}

#[test]
fn a_flood_of_low_work_leaves_room_for_the_rest() {
    let s = shared(4, 10, Duration::from_secs(60));
    let _a = push(&s, vec![0; 5], Priority::Low).unwrap();
    // Low work may fill half the queue.
    let err = push(&s, vec![0], Priority::Low).unwrap_err();
    assert_eq!(
        err,
        BatchError::QueueFull {
            queued: 5,
            requested: 1,
            limit: 5
        }
    );
    // Normal work fills it; high work a quarter more.
    let _b = push(&s, vec![0; 5], Priority::Normal).unwrap();
    assert!(push(&s, vec![0], Priority::Normal).is_err());
    let _c = push(&s, vec![0; 2], Priority::High).unwrap();
    assert!(push(&s, vec![0], Priority::High).is_err());
    assert_eq!(s.queue.lock().unwrap().class_rows, [2, 5, 5, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_class_comes_from_the_call_and_its_wait_is_counted_by_class() {
    struct Echo;
    impl Engine for Echo {
        type Row = u32;
        type Output = u32;
        fn run(&mut self, rows: Vec<u32>) -> Result<Vec<u32>, EngineError> {
            Ok(rows)
        }
    }
    let config = BatcherConfig {
        max_batch_size: 4,
        max_batch_delay: Duration::ZERO,
        max_queue_rows: 100,
        priority_aging: DEFAULT_PRIORITY_AGING,
        priority_yield_rows: DEFAULT_PRIORITY_YIELD_ROWS,
    };
    let batcher = Batcher::start(Echo, config, BatchMetrics::unregistered());
    let allowed = priority::Allowed::OPEN;
    let out = priority::scoped(
        allowed,
        Some(Priority::Low),
        batcher.submit(vec![7, 8], None),
    )
    .await
    .unwrap();
    assert_eq!(out.outputs, vec![7, 8]);
    let wait = &batcher.metrics().queue_wait;
    assert_eq!(wait[Priority::Low.index()].get_sample_count(), 2);
    assert_eq!(wait[Priority::High.index()].get_sample_count(), 0);
    assert_eq!(wait[Priority::Normal.index()].get_sample_count(), 0);
}
