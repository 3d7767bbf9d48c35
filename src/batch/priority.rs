//! Request priorities: three live classes (high, normal, low) above the built-in background work.
//!
//! A call's class is set by its door for the work it does ([`scoped`], [`requested`]): the request
//! asks (vLLM's integer `priority` in an HTTP body: below 0 is high, 0 normal, above 0 low; the
//! `x-priority` header or gRPC metadata: `high`, `normal`, `low` or such an integer), and its key
//! allows ([`Allowed`]): a key with `priority=CLASS` on its line is pinned to that class at most
//! (and gets it by default); other keys, and calls without keys, may ask for any class and get
//! `normal` when they do not ask. The batcher reads the class when the call submits rows
//! ([`current`]).
//!
//! In the batcher (see `batch/mod.rs`): strict order between classes, with a starvation bound (a
//! job that has waited `--priority-aging` is served right after the high class, one of its rows in
//! every batch), small batches for a lower class while a higher one has had traffic in the last
//! second (`--priority-yield-rows`: a batch of low rows never keeps a high row waiting long), and
//! queue room by class: normal calls fill `--max-queue-rows`, high ones a quarter more, low ones
//! half of it, so a flood of low work never locks out the rest.

use std::{fmt, future::Future, str::FromStr};

/// A live request's class. Ordered: `High < Normal < Low` (served first to last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

/// The live classes, in the order they are served.
pub const CLASSES: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// Index into per-class tables (served first = 0).
    pub fn index(self) -> usize {
        self as usize
    }

    /// vLLM's `priority`: lower values are served earlier, 0 is the default.
    pub fn from_vllm(value: i64) -> Self {
        match value {
            ..0 => Priority::High,
            0 => Priority::Normal,
            _ => Priority::Low,
        }
    }

    /// The rows the queue may hold after a job of this class and `rows` rows joins it, when normal
    /// work may fill `limit`: a quarter more for high, half for low (but a low job larger than
    /// that still gets in when the queue is otherwise empty, so every request that fits the queue
    /// can run).
    pub fn queue_limit(self, limit: usize, rows: usize) -> usize {
        match self {
            Priority::High => limit.saturating_add(limit / 4),
            Priority::Normal => limit,
            Priority::Low => (limit / 2).max(rows.min(limit)),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Priority::High),
            "normal" => Ok(Priority::Normal),
            "low" => Ok(Priority::Low),
            other => match other.parse::<i64>() {
                Ok(n) => Ok(Priority::from_vllm(n)),
                Err(_) => Err(format!(
                    "{s:?} is not a priority (high, normal, low, or an integer: below 0 is high, \
                     0 normal, above 0 low)"
                )),
            },
        }
    }
}

/// The classes a key's calls may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// What a call that does not ask gets.
    pub default: Priority,
    /// The highest class a call may ask for.
    pub ceiling: Priority,
}

impl Allowed {
    /// Any class on request, `normal` by default (keys without `priority=`, or no keys).
    pub const OPEN: Allowed = Allowed {
        default: Priority::Normal,
        ceiling: Priority::High,
    };

    /// At most `class`, and `class` by default (a key's `priority=CLASS`).
    pub fn pinned(class: Priority) -> Self {
        Allowed {
            default: class,
            ceiling: class,
        }
    }

    /// What a call asking for `requested` gets: never more than the ceiling.
    pub fn choose(self, requested: Option<Priority>) -> Priority {
        requested.map_or(self.default, |r| r.max(self.ceiling))
    }
}

impl Default for Allowed {
    fn default() -> Self {
        Allowed::OPEN
    }
}

tokio::task_local! {
    static CURRENT: (Priority, Allowed);
}

/// Runs `work` (a call) in the class its key allows for what it asked (a door's header or metadata).
pub fn scoped<F: Future>(
    allowed: Allowed,
    requested: Option<Priority>,
    work: F,
) -> impl Future<Output = F::Output> {
    CURRENT.scope((allowed.choose(requested), allowed), work)
}

/// Runs `work` in the class a request body asked for, as far as the call's key allows.
pub fn requested<F: Future>(
    requested: Option<Priority>,
    work: F,
) -> impl Future<Output = F::Output> {
    let (current, allowed) = CURRENT
        .try_with(|c| *c)
        .unwrap_or((Priority::Normal, Allowed::OPEN));
    let class = match requested {
        Some(_) => allowed.choose(requested),
        None => current,
    };
    CURRENT.scope((class, allowed), work)
}

/// `work` in the current call's class, for a task the call spawns (a task-local does not follow
/// `tokio::spawn` by itself).
pub fn carried<F: Future>(work: F) -> impl Future<Output = F::Output> {
    let current = CURRENT
        .try_with(|c| *c)
        .unwrap_or((Priority::Normal, Allowed::OPEN));
    CURRENT.scope(current, work)
}

/// The class of the current call's work (`normal` outside any call).
pub fn current() -> Priority {
    CURRENT.try_with(|c| c.0).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_integers_map_to_classes() {
        assert_eq!(Priority::from_vllm(-5), Priority::High);
        assert_eq!(Priority::from_vllm(0), Priority::Normal);
        assert_eq!(Priority::from_vllm(3), Priority::Low);
        assert_eq!("-1".parse::<Priority>(), Ok(Priority::High));
        assert_eq!("LOW".parse::<Priority>(), Ok(Priority::Low));
        let err = "urgent".parse::<Priority>().unwrap_err();
        assert!(err.contains("not a priority"), "{err}");
    }

    #[test]
    fn a_pinned_key_may_lower_its_class_but_not_raise_it() {
        use Priority::*;
        assert_eq!(Allowed::pinned(Normal).choose(Some(High)), Normal);
        assert_eq!(Allowed::pinned(Normal).choose(Some(Low)), Low);
        assert_eq!(Allowed::pinned(High).choose(None), High);
        assert_eq!(Allowed::pinned(Low).choose(Some(High)), Low);
        assert_eq!(Allowed::OPEN.choose(None), Normal);
        assert_eq!(Allowed::OPEN.choose(Some(High)), High);
    }

    #[test]
    fn queue_room_by_class() {
        assert_eq!(Priority::High.queue_limit(1024, 8), 1280);
        assert_eq!(Priority::Normal.queue_limit(1024, 8), 1024);
        assert_eq!(Priority::Low.queue_limit(1024, 8), 512);
        // A low request of 600 rows fits an otherwise empty queue of 1024, and never more.
        assert_eq!(Priority::Low.queue_limit(1024, 600), 600);
        assert_eq!(Priority::Low.queue_limit(1024, 2000), 1024);
    }

    #[tokio::test]
    async fn the_class_follows_the_call_and_the_body_asks_within_the_key() {
        assert_eq!(current(), Priority::Normal);
        let inside = scoped(Allowed::pinned(Priority::Low), None, async { current() }).await;
        assert_eq!(inside, Priority::Low);
        // The body asks for high: a pinned-normal key gets normal, an open one high.
        let pinned = scoped(Allowed::pinned(Priority::Normal), None, async {
            requested(Some(Priority::High), async { current() }).await
        });
        assert_eq!(pinned.await, Priority::Normal);
        let open = scoped(Allowed::OPEN, Some(Priority::Low), async {
            requested(Some(Priority::High), async { current() }).await
        });
        assert_eq!(open.await, Priority::High);
        // A body that does not ask keeps what the header chose.
        let kept = scoped(Allowed::OPEN, Some(Priority::Low), async {
            requested(None, async { current() }).await
        });
        assert_eq!(kept.await, Priority::Low);
        // A task the call spawns keeps its class when carried.
        let spawned = scoped(Allowed::OPEN, Some(Priority::High), async {
            tokio::spawn(carried(async { current() })).await.unwrap()
        });
        assert_eq!(spawned.await, Priority::High);
    }
}
