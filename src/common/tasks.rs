//! Background work the server owns (docs/ARCHITECTURE.md, "Background tasks"): the model and
//! collection loads, the shared store's watch (with the label-set refresh), the API-key reloader,
//! classifier builds. Each group is a [`Background`]: a `TaskTracker` that knows which of its
//! tasks still run and a `CancellationToken` that asks them to stop, so shutdown stops them in
//! order and waits for each group instead of leaving them to die with the runtime.
//!
//! Work spawned *for a call* (an EmbedStream's reader, its items) is not background work: it goes
//! through `telemetry::usage::spawn`, which keeps the call's usage attribution.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// A group of background tasks, stopped together.
#[derive(Clone, Debug, Default)]
pub struct Background {
    tracker: TaskTracker,
    token: CancellationToken,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work` until it ends (`Some` of its output) or the group is stopped (`None`; `work` is
    /// dropped at its next `.await`). `name` is logged when a task is stopped.
    pub fn spawn<F>(&self, name: &'static str, work: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = token.cancelled() => {
                    tracing::debug!(task = name, "background task stopped");
                    None
                }
                output = work => Some(output),
            }
        })
    }

    /// Runs `work` to its end even when the group is stopped (a write that must finish, a load
    /// whose result someone awaits): [`Self::stop`] waits for it.
    pub fn spawn_unstoppable<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Whether [`Self::stop`] was called: for loops that check between rounds.
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the group is asked to stop.
    pub async fn stopping(&self) {
        self.token.cancelled().await;
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Asks every task to stop, refuses none that is spawned later (it is stopped at once), and
    /// waits until all have ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    /// Dropped when its task ends: tells whether the task is really gone after `stop`.
    struct Ended(Arc<AtomicBool>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stop_ends_endless_tasks_and_waits_for_them() {
        let tasks = Background::new();
        let ended = Arc::new(AtomicBool::new(false));
        let guard = Ended(Arc::clone(&ended));
        tasks.spawn("forever", async move {
            let _guard = guard;
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        });
        assert_eq!(tasks.len(), 1);
        tasks.stop().await;
        assert!(ended.load(Ordering::SeqCst), "the task was dropped");
        assert!(tasks.is_empty());
        // Spawned after the stop: stopped at once, never run to its end.
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        tasks.spawn("late", async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            r.store(true, Ordering::SeqCst);
        });
        tasks.stop().await;
        assert!(!ran.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn stop_waits_for_unstoppable_work() {
        let tasks = Background::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let d = Arc::clone(&done);
        tasks.spawn_unstoppable(async move {
            let _ = rx.await;
            d.store(true, Ordering::SeqCst);
        });
        let stop = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.stop().await }
        });
        tokio::task::yield_now().await;
        assert!(!stop.is_finished(), "stop waits for the write");
        tx.send(()).unwrap();
        stop.await.unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}
