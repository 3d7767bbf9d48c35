//! Usage of keys **without** a quota, counted in memory and written in one go every
//! `--usage-flush-interval` instead of one store transaction (an fsync with the local store, a
//! round trip with PostgreSQL) per call. A key with a quota still charges the store on every
//! call: its admission depends on the shared count, so it cannot wait.
//!
//! What is pending is bounded (`--usage-max-pending` (key, day) rows; one more forces a flush
//! from the call that found it full), written at every interval, before every usage read (so
//! `GET /v1/usage` sees it) and at shutdown. A flush that fails keeps its counts for the next one:
//! nothing is lost but what a crash (kill -9) takes within one interval.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use super::quota::{Charge, Charged, DayUsage, UsageStore};
use crate::common::tasks::Background;

/// The usage store behind a buffer for quota-less charges.
pub struct Buffered {
    inner: Arc<dyn UsageStore>,
    pending: Mutex<HashMap<(String, String), u64>>,
    max_pending: usize,
    /// One flush at a time: a second waits, then finds what the first left.
    flushing: tokio::sync::Mutex<()>,
}

impl Buffered {
    pub fn new(inner: Arc<dyn UsageStore>, max_pending: usize) -> Arc<Self> {
        Arc::new(Buffered {
            inner,
            pending: Mutex::new(HashMap::new()),
            max_pending: max_pending.max(1),
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (key, day) rows waiting to be written.
    pub fn pending_rows(&self) -> usize {
        self.pending().len()
    }

    /// Writes every pending count to the store. A row the store refuses goes back (added to what
    /// came in meanwhile), and the first error is returned.
    pub async fn flush(&self) -> Result<(), String> {
        let _one = self.flushing.lock().await;
        let rows = std::mem::take(&mut *self.pending());
        let mut first_error = None;
        let mut rows = rows.into_iter();
        while let Some(((key, day), items)) = rows.next() {
            let charge = Charge {
                key: key.clone(),
                day: day.clone(),
                items,
                quota: None,
            };
            if let Err(e) = self.inner.charge(charge).await {
                // This row and every one not tried yet go back.
                let mut pending = self.pending();
                for ((key, day), items) in std::iter::once(((key, day), items)).chain(rows) {
                    *pending.entry((key, day)).or_default() += items;
                }
                first_error = Some(e);
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Flushes every `interval` until `background` stops, then once more.
    pub fn spawn_flusher(self: &Arc<Self>, background: &Background, interval: Duration) {
        let this = Arc::clone(self);
        let stop = background.clone();
        background.spawn_unstoppable(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = stop.stopping() => break,
                }
                if let Err(e) = this.flush().await {
                    tracing::error!(error = %e, "usage not written; kept for the next flush");
                }
            }
            if let Err(e) = this.flush().await {
                tracing::error!(error = %e, "usage not written at shutdown");
            }
        });
    }
}

#[async_trait::async_trait]
impl UsageStore for Buffered {
    async fn charge(&self, charge: Charge) -> Result<Charged, String> {
        if charge.quota.is_some() {
            return self.inner.charge(charge).await;
        }
        let full = {
            let mut pending = self.pending();
            *pending.entry((charge.key, charge.day)).or_default() += charge.items;
            pending.len() > self.max_pending
        };
        if full && let Err(e) = self.flush().await {
            // Admitted all the same: the count stays pending, and a key without a quota is
            // never refused for its usage.
            tracing::error!(error = %e, "usage not written; kept for the next flush");
        }
        Ok(Charged::Admitted { used: None })
    }

    async fn usage(
        &self,
        start: &str,
        end: &str,
        key: Option<&str>,
    ) -> Result<Vec<DayUsage>, String> {
        self.flush().await?;
        self.inner.usage(start, end, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Counts the store's writes; fails them while `fail` is set.
    #[derive(Default)]
    struct Counting {
        writes: AtomicUsize,
        fail: AtomicBool,
        rows: Mutex<HashMap<(String, String), u64>>,
    }

    #[async_trait::async_trait]
    impl UsageStore for Counting {
        async fn charge(&self, c: Charge) -> Result<Charged, String> {
            if self.fail.load(Ordering::SeqCst) {
                return Err("store down".into());
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            *self.rows.lock().unwrap().entry((c.key, c.day)).or_default() += c.items;
            Ok(Charged::Admitted { used: None })
        }
        async fn usage(&self, _: &str, _: &str, _: Option<&str>) -> Result<Vec<DayUsage>, String> {
            let rows = self.rows.lock().unwrap();
            let mut out: Vec<DayUsage> = rows
                .iter()
                .map(|((key, date), items)| DayUsage {
                    key: key.clone(),
                    date: date.clone(),
                    items: *items,
                })
                .collect();
            out.sort_by(|a, b| (&a.date, &a.key).cmp(&(&b.date, &b.key)));
            Ok(out)
        }
    }

    fn charge(key: &str, items: u64, quota: Option<u64>) -> Charge {
        Charge {
            key: key.into(),
            day: "2026-12-07".into(),
            items,
            quota: quota.map(|q| ("2026-12-07".into(), q)),
        }
    }

    #[tokio::test]
    async fn quota_less_calls_are_written_once_per_flush_and_read_back_whole() {
        let store = Arc::new(Counting::default());
        let buffered = Buffered::new(store.clone(), 100);
        for _ in 0..50 {
            buffered.charge(charge("a", 2, None)).await.unwrap();
            buffered.charge(charge("b", 1, None)).await.unwrap();
        }
        assert_eq!(
            store.writes.load(Ordering::SeqCst),
            0,
            "nothing written per call"
        );
        // A usage read flushes first: it sees every item.
        let usage = buffered
            .usage("2026-12-07", "2026-12-07", None)
            .await
            .unwrap();
        let items: Vec<(String, u64)> = usage.into_iter().map(|u| (u.key, u.items)).collect();
        assert_eq!(items, [("a".to_string(), 100), ("b".to_string(), 50)]);
        assert_eq!(
            store.writes.load(Ordering::SeqCst),
            2,
            "one write per (key, day)"
        );
        // A key with a quota charges the store on every call.
        buffered.charge(charge("q", 1, Some(10))).await.unwrap();
        buffered.charge(charge("q", 1, Some(10))).await.unwrap();
        assert_eq!(store.writes.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_flush_keeps_every_count_and_a_full_buffer_flushes_itself() {
        let store = Arc::new(Counting::default());
        let buffered = Buffered::new(store.clone(), 3);
        for key in ["a", "b", "c"] {
            buffered.charge(charge(key, 1, None)).await.unwrap();
        }
        store.fail.store(true, Ordering::SeqCst);
        assert!(buffered.flush().await.is_err());
        assert_eq!(buffered.pending_rows(), 3, "nothing lost");
        // A fourth row overflows the bound: the call flushes, fails, keeps the counts, and is
        // admitted all the same.
        assert_eq!(
            buffered.charge(charge("d", 1, None)).await.unwrap(),
            Charged::Admitted { used: None }
        );
        assert_eq!(buffered.pending_rows(), 4);
        store.fail.store(false, Ordering::SeqCst);
        // Still over the bound: the next call writes everything, its own count included.
        buffered.charge(charge("a", 5, None)).await.unwrap();
        assert_eq!(buffered.pending_rows(), 0, "the full buffer flushed itself");
        let total: u64 = store.rows.lock().unwrap().values().sum();
        assert_eq!(total, 9);
        assert_eq!(
            store.rows.lock().unwrap()[&("a".into(), "2026-12-07".into())],
            6
        );
        // Under the bound again: counted in memory only.
        buffered.charge(charge("e", 1, None)).await.unwrap();
        assert_eq!(buffered.pending_rows(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_writes_every_interval_and_once_more_at_shutdown() {
        let store = Arc::new(Counting::default());
        let buffered = Buffered::new(store.clone(), 100);
        let background = Background::new();
        buffered.spawn_flusher(&background, Duration::from_secs(1));
        buffered.charge(charge("a", 1, None)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(store.writes.load(Ordering::SeqCst), 1);
        buffered.charge(charge("a", 1, None)).await.unwrap();
        background.stop().await;
        assert_eq!(
            store.writes.load(Ordering::SeqCst),
            2,
            "written at shutdown"
        );
        assert_eq!(buffered.pending_rows(), 0);
    }
}
