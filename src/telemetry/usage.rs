//! Usage per API key: `clip_usage_total{key, kind}` with kinds `requests`, `images`,
//! `text_tokens` and `rerank_documents`. The `key` label is the key's name only with
//! `--metrics-key-names`; by default every key counts under `key="redacted"`.
//!
//! The doors know who is calling (the key's name, never the key) and scope a [`Usage`] around the
//! call's future (a tokio task-local); the domain records what it computed where it computes it
//! (`embed` counts images and text tokens, `retrieve` ranked documents), so every route of both
//! doors is counted the same way without each handler counting. Outside a scope (no keys, or
//! background work such as label-set builds) recording does nothing.
//!
//! A task-local does not cross `tokio::spawn`: work a call spawns goes through [`spawn`] (or
//! [`spawn_in`] for a `JoinSet`), which carries the scope into the task. Background work
//! (`common::tasks::Background`) runs outside every scope on purpose: it is the server's.

use std::{future::Future, sync::Arc};

use prometheus::IntCounter;

use super::metrics::Metrics;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageKind {
    Requests,
    Images,
    TextTokens,
    RerankDocuments,
}

impl UsageKind {
    pub const ALL: [UsageKind; 4] = [
        UsageKind::Requests,
        UsageKind::Images,
        UsageKind::TextTokens,
        UsageKind::RerankDocuments,
    ];

    pub fn label(self) -> &'static str {
        match self {
            UsageKind::Requests => "requests",
            UsageKind::Images => "images",
            UsageKind::TextTokens => "text_tokens",
            UsageKind::RerankDocuments => "rerank_documents",
        }
    }
}

/// One key's counters.
#[derive(Clone)]
pub struct Usage {
    key: Arc<str>,
    counters: Arc<[IntCounter; 4]>,
}

tokio::task_local! {
    static CURRENT: Usage;
}

impl Usage {
    pub fn for_key(metrics: &Metrics, key: Arc<str>) -> Usage {
        let counters = UsageKind::ALL.map(|kind| metrics.usage_counter(&key, kind.label()));
        Usage {
            key,
            counters: Arc::new(counters),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    fn add(&self, kind: UsageKind, n: u64) {
        self.counters[kind as usize].inc_by(n);
    }
}

/// Adds `n` of `kind` to the calling key's usage, if a call of a known key is running.
pub fn record(kind: UsageKind, n: u64) {
    let _ = CURRENT.try_with(|usage| usage.add(kind, n));
}

/// The usage scope of the running call, to carry into tasks it spawns.
pub fn current() -> Option<Usage> {
    CURRENT.try_with(Usage::clone).ok()
}

/// Runs `work` with `usage` as the running call's (counting one request), or as it is without.
pub async fn scoped<F: Future>(usage: Option<Usage>, work: F) -> F::Output {
    match usage {
        Some(usage) => {
            usage.add(UsageKind::Requests, 1);
            CURRENT.scope(usage, work).await
        }
        None => work.await,
    }
}

/// Runs `work` in the same usage scope as `usage` without counting another request (a task
/// spawned by a call).
pub async fn carried<F: Future>(usage: Option<Usage>, work: F) -> F::Output {
    match usage {
        Some(usage) => CURRENT.scope(usage, work).await,
        None => work.await,
    }
}

/// Spawns `work` for the running call, in its usage scope: what the task computes counts for the
/// caller's key. (A bare `tokio::spawn` starts outside every scope.)
pub fn spawn<F>(work: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(carried(current(), work))
}

/// [`spawn`] into a `JoinSet`.
pub fn spawn_in<F>(tasks: &mut tokio::task::JoinSet<F::Output>, work: F) -> tokio::task::AbortHandle
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tasks.spawn(carried(current(), work))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn key_names_stay_out_of_metrics_unless_asked() {
        let metrics = Metrics::new().unwrap();
        for key in ["alice", "key-1a2b3c4d"] {
            scoped(Some(Usage::for_key(&metrics, key.into())), async {
                record(UsageKind::Images, 2);
            })
            .await;
        }
        let text = metrics.render();
        assert!(
            !text.contains("alice") && !text.contains("key-1a2b"),
            "{text}"
        );
        assert!(
            text.contains("clip_usage_total{key=\"redacted\",kind=\"images\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("clip_usage_total{key=\"redacted\",kind=\"requests\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn usage_is_counted_per_key_inside_a_scope_only() {
        let metrics = Metrics::new().unwrap().with_key_names(true);
        record(UsageKind::Images, 5); // no scope: nothing
        let alice = Usage::for_key(&metrics, "alice".into());
        scoped(Some(alice.clone()), async {
            record(UsageKind::Images, 3);
            record(UsageKind::TextTokens, 7);
            let carried_usage = current();
            tokio::spawn(carried(carried_usage, async {
                record(UsageKind::Images, 1);
            }))
            .await
            .unwrap();
        })
        .await;
        let text = metrics.render();
        let line = |kind: &str| format!("clip_usage_total{{key=\"alice\",kind=\"{kind}\"}}");
        assert!(text.contains(&format!("{} 1", line("requests"))), "{text}");
        assert!(text.contains(&format!("{} 4", line("images"))), "{text}");
        assert!(
            text.contains(&format!("{} 7", line("text_tokens"))),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} 0", line("rerank_documents"))),
            "{text}"
        );
    }

    /// Work a call spawns counts for the call's key through [`spawn`] and [`spawn_in`]; the same
    /// work under a bare `tokio::spawn` counts for nobody (what the helpers are for).
    #[tokio::test]
    async fn spawned_work_is_attributed_to_the_callers_key() {
        let metrics = Metrics::new().unwrap().with_key_names(true);
        let bob = Usage::for_key(&metrics, "bob".into());
        scoped(Some(bob), async {
            spawn(async { record(UsageKind::Images, 2) }).await.unwrap();
            let mut set = tokio::task::JoinSet::new();
            spawn_in(&mut set, async {
                // A task spawned by a spawned task keeps the scope too.
                spawn(async { record(UsageKind::TextTokens, 5) })
                    .await
                    .unwrap();
            });
            while set.join_next().await.is_some() {}
            tokio::spawn(async { record(UsageKind::Images, 100) })
                .await
                .unwrap();
        })
        .await;
        let text = metrics.render();
        let line = |kind: &str| format!("clip_usage_total{{key=\"bob\",kind=\"{kind}\"}}");
        assert!(text.contains(&format!("{} 2\n", line("images"))), "{text}");
        assert!(
            text.contains(&format!("{} 5\n", line("text_tokens"))),
            "{text}"
        );
    }
}
