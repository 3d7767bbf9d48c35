//! API keys: `--api-key` and/or `--api-key-file` (re-read on SIGHUP). When any key is configured,
//! every call must present one as `authorization: Bearer KEY` (gRPC metadata or HTTP header). Keys
//! are never logged, and only their SHA-256 digests are kept: a presented key is hashed and its
//! digest compared with every stored digest in constant time (`subtle`), so the time a check takes
//! says nothing of the stored keys' lengths or contents.
//!
//! Key file lines (blank lines and `#` comments ignored):
//!
//! ```text
//! alice:sk-1234567890             a named key: usage metrics and logs say `alice`
//! bob:sk-abcdef rate=50:100       a per-key rate limit: 50 items/s, bursts of 100
//! free:sk-0987 priority=low       calls of this key run in the low class at most (and by default)
//! sk-bare-key                     a bare key, named by a short hash of it (`key-1a2b3c4d`)
//! ```
//!
//! A name is 1-64 characters of `A-Z a-z 0-9 _ . -`; a line whose text before the first `:` is not a
//! name is a bare key. `--rate-limit REQ_PER_S[:BURST]` is the limit of every key without its own;
//! each key has its own token bucket (`governor`, GCRA). Without keys there is no limit.
//!
//! Rate limits count work, not calls: the limit is in items per second. A call spends one item
//! when its key is checked (so every call, even one with nothing to embed, costs one), and the
//! doors [`charge`] the rest of its item count once the request is parsed (images and texts
//! embedded, images classified, items upserted, candidates ranked and their query), so a call of
//! n items costs n, and a call of one item costs what a call cost before. A stream spends one
//! item per item, as items arrive. A call that costs more than its key's burst is refused
//! (it could never pass); split it.
//!
//! Failed key checks are throttled per peer address (`--auth-failures-per-minute`): past that many
//! failures in a minute, every call from the address gets RESOURCE_EXHAUSTED / 429 at once,
//! without any key being checked, until the minute is over. IPv6 peers count per /64. The table
//! of peers is bounded ([`FAILURE_PEERS`], least recently used dropped first).

use std::{
    future::Future,
    net::IpAddr,
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, OnceLock, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::batch::priority::{Allowed, Priority};
use governor::{Quota, RateLimiter, clock::Clock};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// Items per second and the burst (in items) a key may spend at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    /// `REQ_PER_S` or `REQ_PER_S:BURST` (the burst defaults to one second's worth).
    fn from_str(s: &str) -> Result<Self, String> {
        let positive = |v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .ok_or_else(|| {
                    format!("{s:?}: expected REQ_PER_S[:BURST] with positive whole numbers")
                })
        };
        let (rate, burst) = match s.split_once(':') {
            Some((rate, burst)) => (positive(rate)?, positive(burst)?),
            None => (positive(s)?, positive(s)?),
        };
        Ok(RateLimit {
            per_second: rate,
            burst,
        })
    }
}

type Limiter = governor::DefaultDirectRateLimiter;

/// One configured key: its SHA-256 digest, never the key.
struct Key {
    name: Arc<str>,
    digest: [u8; 32],
    limiter: Option<Arc<Limiter>>,
    burst: u32,
    /// The priority classes its calls may use (`priority=`; any, by default).
    priority: Allowed,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(secret).into()
}

/// Whether `presented` hashes to `stored`: one fixed-length comparison, in constant time.
fn same_key(stored: &[u8; 32], presented: &[u8; 32]) -> bool {
    bool::from(stored.ct_eq(presented))
}

impl Key {
    fn new(name: Option<&str>, secret: &str, rate: Option<RateLimit>) -> Self {
        let digest = digest(secret.as_bytes());
        let name: Arc<str> = match name {
            Some(n) => n.into(),
            None => short_name(&digest).into(),
        };
        Key {
            name,
            digest,
            priority: Allowed::OPEN,
            burst: rate.map_or(u32::MAX, |r| r.burst.get()),
            limiter: rate.map(|r| {
                Arc::new(RateLimiter::direct(
                    Quota::per_second(r.per_second).allow_burst(r.burst),
                ))
            }),
        }
    }
}

/// `key-` and the first 8 hex digits of the key's SHA-256: stable, and says nothing of the key.
fn short_name(digest: &[u8; 32]) -> String {
    format!("key-{}", crate::common::hex(&digest[..4]))
}

#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

struct Inner {
    fixed: Option<Key>,
    file: Option<PathBuf>,
    default_rate: Option<RateLimit>,
    from_file: RwLock<Vec<Key>>,
    /// `--auth-failures-per-minute` (unset: failures are not throttled).
    failures: OnceLock<FailureThrottle>,
}

/// Peers whose failed key checks are remembered, at most.
pub const FAILURE_PEERS: usize = 65_536;

/// The window failed key checks are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Failed key checks per peer address in the current minute (a fixed window per peer).
struct FailureThrottle {
    per_minute: u32,
    peers: quick_cache::sync::Cache<IpAddr, (Instant, u32)>,
}

impl FailureThrottle {
    /// IPv6 peers count per /64 (one host has that many addresses); IPv4-mapped ones as IPv4.
    fn peer_key(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
            },
        }
    }

    /// How long `ip` is still refused, if it spent its failures this minute.
    fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let (start, failures) = self.peers.get(&Self::peer_key(ip))?;
        let left = FAILURE_WINDOW.checked_sub(start.elapsed())?;
        (failures >= self.per_minute && !left.is_zero()).then_some(left)
    }

    fn failed(&self, ip: IpAddr) {
        let key = Self::peer_key(ip);
        let now = Instant::now();
        let entry = match self.peers.get(&key) {
            Some((start, n)) if now.duration_since(start) < FAILURE_WINDOW => {
                (start, n.saturating_add(1))
            }
            _ => (now, 1),
        };
        self.peers.insert(key, entry);
    }
}

/// What the running call may still spend of its key's rate limit: the item the key check spent,
/// then the key's bucket. Cheap to clone; clones share the state.
#[derive(Clone)]
pub struct Allowance {
    inner: Arc<AllowanceInner>,
}

struct AllowanceInner {
    limiter: Option<Arc<Limiter>>,
    burst: u32,
    /// Items paid for by the key check and not charged yet.
    prepaid: AtomicU64,
    /// When the last refused charge may be retried (for `Retry-After`).
    refused: Mutex<Option<Duration>>,
}

impl std::fmt::Debug for Allowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allowance")
            .field("limited", &self.inner.limiter.is_some())
            .finish_non_exhaustive()
    }
}

impl Allowance {
    fn new(limiter: Option<Arc<Limiter>>, burst: u32, prepaid: u64) -> Self {
        Allowance {
            inner: Arc::new(AllowanceInner {
                limiter,
                burst,
                prepaid: AtomicU64::new(prepaid),
                refused: Mutex::new(None),
            }),
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Self {
        Allowance::new(None, u32::MAX, 0)
    }

    /// Spends `items` (what the key check paid for first): all of them, or none and the reason.
    pub fn charge(&self, items: u64) -> Result<(), AuthError> {
        let Some(limiter) = &self.inner.limiter else {
            return Ok(());
        };
        if items > u64::from(self.inner.burst) {
            return Err(AuthError::OverBurst {
                cost: items,
                burst: self.inner.burst,
            });
        }
        let prepaid = self
            .inner
            .prepaid
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(items))
            })
            .unwrap_or_default();
        let rest = items.saturating_sub(prepaid);
        let Some(n) = NonZeroU32::new(u32::try_from(rest).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let refusal = match limiter.check_n(n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => AuthError::RateLimited {
                retry_after: not_until
                    .wait_time_from(governor::clock::DefaultClock::default().now()),
            },
            Err(_) => AuthError::OverBurst {
                cost: items,
                burst: self.inner.burst,
            },
        };
        if let AuthError::RateLimited { retry_after } = refusal {
            *self
                .inner
                .refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(retry_after);
        }
        Err(refusal)
    }

    /// When a refused charge of this call may be retried, if one was refused.
    pub fn retry_after(&self) -> Option<Duration> {
        *self
            .inner
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

tokio::task_local! {
    static ALLOWANCE: Allowance;
}

/// Runs `work` as a call of the key `allowance` belongs to: [`charge`] spends from it. `None`: no
/// keys, nothing is charged.
pub async fn scoped<F: Future>(allowance: Option<Allowance>, work: F) -> F::Output {
    match allowance {
        Some(allowance) => ALLOWANCE.scope(allowance, work).await,
        None => work.await,
    }
}

/// The running call's allowance, to carry into tasks it spawns (with [`scoped`]).
pub fn current() -> Option<Allowance> {
    ALLOWANCE.try_with(Allowance::clone).ok()
}

/// Charges the running call `items` of its key's rate limit (the doors call this with the
/// request's item count once it is parsed). Outside a call of a key: nothing to charge.
pub fn charge(items: u64) -> Result<(), AuthError> {
    ALLOWANCE
        .try_with(|allowance| allowance.charge(items))
        .unwrap_or(Ok(()))
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("enabled", &self.enabled())
            .field("file", &self.inner.file)
            .field("default_rate", &self.inner.default_rate)
            .finish_non_exhaustive()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Wrong,
    /// The key's rate limit is spent; a token frees up after `retry_after`.
    RateLimited {
        retry_after: Duration,
    },
    /// The call costs more items than the key's burst: it could never pass.
    OverBurst {
        cost: u64,
        burst: u32,
    },
    /// Too many failed key checks from the caller's address this minute; no key was checked.
    PeerThrottled {
        retry_after: Duration,
    },
}

impl AuthError {
    /// A failed key check (it counts against the peer's address).
    fn is_failure(self) -> bool {
        matches!(
            self,
            AuthError::Missing | AuthError::Malformed | AuthError::Wrong
        )
    }

    /// When to retry, for refusals that pass with time.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            AuthError::RateLimited { retry_after } | AuthError::PeerThrottled { retry_after } => {
                Some(retry_after)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Missing => {
                f.write_str("an API key is required: send `authorization: Bearer <key>`")
            }
            AuthError::Malformed => f.write_str("the authorization header must be `Bearer <key>`"),
            AuthError::Wrong => f.write_str("invalid API key"),
            AuthError::RateLimited { retry_after } => write!(
                f,
                "this API key's rate limit (items per second) is spent; retry in {} ms",
                retry_after.as_millis().max(1)
            ),
            AuthError::OverBurst { cost, burst } => write!(
                f,
                "this call costs {cost} items, more than this API key's rate-limit burst ({burst}); \
                 send fewer items per call"
            ),
            AuthError::PeerThrottled { retry_after } => write!(
                f,
                "too many failed API key checks from this address; retry in {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }
}

/// Who is calling: the key's name (never the key), and what the call may still spend of the
/// key's rate limit.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_name: Arc<str>,
    pub allowance: Allowance,
    /// The priority classes the key's calls may use.
    pub priority: Allowed,
}

impl PartialEq for Caller {
    fn eq(&self, other: &Self) -> bool {
        self.key_name == other.key_name
    }
}

impl Eq for Caller {}

impl ApiKeys {
    /// Reads the key file once (a start-up error when it cannot be read or holds no key).
    pub fn load(fixed: Option<String>, file: Option<PathBuf>) -> Result<Self, String> {
        Self::load_with(fixed, file, None)
    }

    /// [`Self::load`] with `default_rate` for every key that sets none.
    pub fn load_with(
        fixed: Option<String>,
        file: Option<PathBuf>,
        default_rate: Option<RateLimit>,
    ) -> Result<Self, String> {
        let keys = ApiKeys {
            inner: Arc::new(Inner {
                fixed: fixed
                    .filter(|k| !k.is_empty())
                    .map(|k| Key::new(None, &k, default_rate)),
                file,
                default_rate,
                from_file: RwLock::new(Vec::new()),
                failures: OnceLock::new(),
            }),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// No keys configured: every call is let through.
    pub fn disabled() -> Self {
        ApiKeys {
            inner: Arc::new(Inner {
                fixed: None,
                file: None,
                default_rate: None,
                from_file: RwLock::new(Vec::new()),
                failures: OnceLock::new(),
            }),
        }
    }

    /// `--auth-failures-per-minute`: past `per_minute` failed key checks from one peer address in
    /// a minute, its calls are refused without a check until the minute is over (0: never). Set
    /// once, at start-up.
    pub fn throttle_failures(self, per_minute: u32) -> Self {
        if per_minute > 0 {
            let _ = self.inner.failures.set(FailureThrottle {
                per_minute,
                peers: quick_cache::sync::Cache::new(FAILURE_PEERS),
            });
        }
        self
    }

    pub fn enabled(&self) -> bool {
        self.inner.fixed.is_some() || self.inner.file.is_some()
    }

    /// Re-reads the key file; on error the previous keys stay. Returns how many keys it holds.
    /// Rate-limit buckets start full again after a reload.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.inner.file else {
            return Ok(0);
        };
        let keys = read_key_file(path, self.inner.default_rate)?;
        let n = keys.len();
        *self
            .inner
            .from_file
            .write()
            .unwrap_or_else(PoisonError::into_inner) = keys;
        Ok(n)
    }

    pub fn key_file(&self) -> Option<&Path> {
        self.inner.file.as_deref()
    }

    /// Checks an `authorization` header value (and spends one item of the key's rate limit).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        self.authenticate(authorization).map(drop)
    }

    /// Who presented `authorization` (`None` when no keys are configured), after the key's rate
    /// limit admitted one more item (what every call costs at least).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<Caller>, AuthError> {
        self.authenticate_from(authorization, None)
    }

    /// [`Self::authenticate`] for a call from `peer`: a peer past `--auth-failures-per-minute`
    /// is refused before any key is looked at, and a failed check counts against it.
    pub fn authenticate_from(
        &self,
        authorization: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<Option<Caller>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let throttle = self.inner.failures.get().zip(peer);
        if let Some((throttle, ip)) = throttle
            && let Some(retry_after) = throttle.blocked(ip)
        {
            return Err(AuthError::PeerThrottled { retry_after });
        }
        let checked = self.check_key(authorization);
        if let (Some((throttle, ip)), Err(e)) = (throttle, &checked)
            && e.is_failure()
        {
            throttle.failed(ip);
        }
        checked
    }

    fn check_key(&self, authorization: Option<&str>) -> Result<Option<Caller>, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        // Digests of equal length are compared, never the keys: how long this takes depends on
        // the presented key's length alone, never on a stored key's.
        let presented = digest(key.trim().as_bytes());
        // Every configured key is compared, whatever matches, so the time taken does not depend
        // on which key (if any) matched.
        let from_file = self
            .inner
            .from_file
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut found: Option<&Key> = None;
        for k in self.inner.fixed.iter().chain(from_file.iter()) {
            let same = same_key(&k.digest, &presented);
            if same && found.is_none() {
                found = Some(k);
            }
        }
        let key = found.ok_or(AuthError::Wrong)?;
        if let Some(limiter) = &key.limiter
            && let Err(not_until) = limiter.check()
        {
            let now = governor::clock::DefaultClock::default().now();
            return Err(AuthError::RateLimited {
                retry_after: not_until.wait_time_from(now),
            });
        }
        Ok(Some(Caller {
            key_name: Arc::clone(&key.name),
            allowance: Allowance::new(key.limiter.clone(), key.burst, 1),
            priority: key.priority,
        }))
    }
}

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn read_key_file(path: &Path, default_rate: Option<RateLimit>) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("--api-key-file {} line {}", path.display(), n + 1);
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let mut rate = default_rate;
        let mut priority = Allowed::OPEN;
        for option in words {
            if let Some(r) = option.strip_prefix("rate=") {
                rate = Some(r.parse().map_err(|e| format!("{}: rate={e}", at()))?);
            } else if let Some(p) = option.strip_prefix("priority=") {
                let class = match p {
                    "high" | "normal" | "low" => p.parse::<Priority>(),
                    _ => Err(format!("{p:?} is not high, normal or low")),
                };
                priority = Allowed::pinned(class.map_err(|e| format!("{}: priority={e}", at()))?);
            } else {
                return Err(format!(
                    "{}: unknown option {option:?} (expected rate=REQ_PER_S[:BURST] or \
                     priority=high|normal|low)",
                    at()
                ));
            }
        }
        let (name, secret) = match first.split_once(':') {
            Some((name, secret)) if is_name(name) && !secret.is_empty() => (Some(name), secret),
            _ => (None, first),
        };
        let mut key = Key::new(name, secret, rate);
        key.priority = priority;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(format!(
            "--api-key-file {}: no keys in it (one per line)",
            path.display()
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_flag_and_file_are_checked_and_the_file_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "# team a\nkey-one\n\n  key-two  \n").unwrap();
        let keys = ApiKeys::load(Some("fixed".into()), Some(file.clone())).unwrap();
        assert!(keys.enabled());
        for ok in ["Bearer fixed", "Bearer key-one", "bearer key-two"] {
            assert_eq!(keys.check(Some(ok)), Ok(()), "{ok}");
        }
        assert_eq!(keys.check(None), Err(AuthError::Missing));
        assert_eq!(keys.check(Some("key-one")), Err(AuthError::Malformed));
        assert_eq!(keys.check(Some("Basic key-one")), Err(AuthError::Malformed));
        assert_eq!(keys.check(Some("Bearer key-three")), Err(AuthError::Wrong));
        assert_eq!(keys.check(Some("Bearer key-on")), Err(AuthError::Wrong));

        std::fs::write(&file, "key-three\n").unwrap();
        assert_eq!(keys.reload(), Ok(1));
        assert_eq!(keys.check(Some("Bearer key-three")), Ok(()));
        assert_eq!(keys.check(Some("Bearer key-one")), Err(AuthError::Wrong));
        // A broken file keeps the previous keys.
        std::fs::write(&file, "# nothing\n").unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.check(Some("Bearer key-three")), Ok(()));
        assert!(format!("{keys:?}").contains("enabled: true"));
        assert!(
            !format!("{keys:?}").contains("key-three"),
            "keys are never printed"
        );
    }

    #[test]
    fn named_keys_and_bare_keys_have_names_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "alice:sk-alice\nsk-bare\nteam/x:sk-y\n").unwrap();
        let keys = ApiKeys::load(None, Some(file)).unwrap();
        let name = |auth: &str| keys.authenticate(Some(auth)).unwrap().unwrap().key_name;
        assert_eq!(&*name("Bearer sk-alice"), "alice");
        let bare = name("Bearer sk-bare");
        assert!(bare.starts_with("key-") && bare.len() == 12, "{bare}");
        assert!(!bare.contains("bare"));
        // "team/x" is not a name (a slash): the whole word is a bare key.
        assert_eq!(keys.check(Some("Bearer team/x:sk-y")), Ok(()));
        assert_eq!(keys.check(Some("Bearer sk-y")), Err(AuthError::Wrong));
        assert_eq!(
            keys.check(Some("Bearer alice:sk-alice")),
            Err(AuthError::Wrong)
        );
    }

    #[test]
    fn rate_limits_apply_per_key_with_overrides_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "slow:sk-slow rate=1:2\nfast:sk-fast\n").unwrap();
        let default = "1000:1000".parse().unwrap();
        let keys = ApiKeys::load_with(None, Some(file.clone()), Some(default)).unwrap();
        assert!(keys.check(Some("Bearer sk-slow")).is_ok());
        assert!(keys.check(Some("Bearer sk-slow")).is_ok());
        match keys.check(Some("Bearer sk-slow")) {
            Err(AuthError::RateLimited { retry_after }) => {
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1))
            }
            other => panic!("the third call in a burst of 2 is refused: {other:?}"),
        }
        for _ in 0..50 {
            assert!(
                keys.check(Some("Bearer sk-fast")).is_ok(),
                "another key's bucket"
            );
        }
        assert_eq!("5".parse::<RateLimit>().unwrap().burst.get(), 5);
        assert!("0:1".parse::<RateLimit>().is_err());
        assert!("x".parse::<RateLimit>().is_err());
        std::fs::write(&file, "a:b rate=fast\n").unwrap();
        assert!(keys.reload().unwrap_err().contains("line 1"));
        std::fs::write(&file, "a:b limit=3\n").unwrap();
        assert!(keys.reload().unwrap_err().contains("unknown option"));
    }

    #[test]
    fn a_key_line_pins_its_priority_class() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "free:sk-free priority=low\nopen:sk-open rate=5\n").unwrap();
        let keys = ApiKeys::load_with(None, Some(file.clone()), None).unwrap();
        let free = keys.authenticate(Some("Bearer sk-free")).unwrap().unwrap();
        assert_eq!(free.priority, Allowed::pinned(Priority::Low));
        let open = keys.authenticate(Some("Bearer sk-open")).unwrap().unwrap();
        assert_eq!(open.priority, Allowed::OPEN);
        std::fs::write(&file, "a:b priority=urgent\n").unwrap();
        let err = keys.reload().unwrap_err();
        assert!(err.contains("line 1") && err.contains("priority="), "{err}");
        // Integers are for requests (vLLM's field), not for key lines.
        std::fs::write(&file, "a:b priority=-1\n").unwrap();
        assert!(
            keys.reload()
                .unwrap_err()
                .contains("not high, normal or low")
        );
    }

    /// The least of a few timings of `f`: what it takes when the machine does not interfere.
    fn fastest(mut f: impl FnMut()) -> Duration {
        (0..15)
            .map(|_| {
                let started = std::time::Instant::now();
                f();
                started.elapsed()
            })
            .min()
            .unwrap_or_default()
    }

    #[test]
    fn a_key_check_takes_as_long_whether_or_not_the_length_matches() {
        // A long stored key makes a length-dependent comparison measurable: comparing the bytes
        // of a same-length key walks all of them, and a length check alone returns at once.
        let stored = "k".repeat(256 * 1024);
        let keys = ApiKeys::load(Some(stored.clone()), None).unwrap();
        let same_length = format!("Bearer {}x", &stored[1..]);
        let one_longer = format!("Bearer {stored}x");
        let time =
            |auth: &str| fastest(|| assert_eq!(keys.check(Some(auth)), Err(AuthError::Wrong)));
        let (same, longer) = (time(&same_length), time(&one_longer));
        let ratio = same.max(longer).as_secs_f64() / same.min(longer).as_secs_f64().max(1e-9);
        assert!(
            ratio < 3.0,
            "same length {same:?}, one byte longer {longer:?}: the time tells the stored length"
        );
        assert_eq!(keys.check(Some(&format!("Bearer {stored}"))), Ok(()));
        // Only digests are kept: equal digests are one fixed-length comparison.
        assert!(same_key(&digest(b"a"), &digest(b"a")));
        assert!(!same_key(&digest(b"a"), &digest(b"ab")));
    }

    #[tokio::test]
    async fn calls_are_charged_their_items_and_the_check_paid_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "a:sk-a rate=1:5\nfree:sk-free\n").unwrap();
        let keys = ApiKeys::load(None, Some(file)).unwrap();
        let caller = |auth: &str| keys.authenticate(Some(auth)).unwrap().unwrap();
        // A call of 3 items: 1 at the check, 2 more here; then 2 are left of the burst of 5.
        let first = caller("Bearer sk-a");
        scoped(Some(first.allowance.clone()), async {
            assert_eq!(charge(3), Ok(()));
        })
        .await;
        let second = caller("Bearer sk-a");
        let refused = scoped(Some(second.allowance.clone()), async { charge(3) }).await;
        let Err(AuthError::RateLimited { retry_after }) = refused else {
            panic!("5 items of 5 spent, 3 more asked: {refused:?}");
        };
        assert_eq!(second.allowance.retry_after(), Some(retry_after));
        // More than the burst can never pass: said so, not "retry".
        let big = scoped(Some(second.allowance.clone()), async { charge(6) }).await;
        assert_eq!(big, Err(AuthError::OverBurst { cost: 6, burst: 5 }));
        assert_eq!(big.unwrap_err().retry_after(), None);
        // One item (the one the check paid for) is free; outside a call nothing is charged.
        assert_eq!(charge(1_000), Ok(()));
        let third = caller("Bearer sk-a");
        scoped(Some(third.allowance), async {
            assert_eq!(charge(1), Ok(()))
        })
        .await;
        // A key without a limit is never refused.
        let free = caller("Bearer sk-free");
        scoped(Some(free.allowance), async {
            assert_eq!(charge(1_000_000), Ok(()));
        })
        .await;
    }

    #[test]
    fn failed_checks_are_throttled_per_peer_address() {
        let keys = ApiKeys::load(Some("sk-good".into()), None)
            .unwrap()
            .throttle_failures(3);
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let b: IpAddr = "198.51.100.8".parse().unwrap();
        for bad in [None, Some("Bearer nope"), Some("nope")] {
            assert!(
                keys.authenticate_from(bad, Some(a))
                    .unwrap_err()
                    .is_failure()
            );
        }
        // A's minute is spent: even the right key is not looked at.
        let e = keys
            .authenticate_from(Some("Bearer sk-good"), Some(a))
            .unwrap_err();
        let AuthError::PeerThrottled { retry_after } = e else {
            panic!("{e:?}");
        };
        assert!(retry_after <= FAILURE_WINDOW && retry_after > Duration::from_secs(50));
        assert!(
            e.to_string().contains("too many failed API key checks"),
            "{e}"
        );
        // Another address, and a call with no address (nothing to count it under), pass.
        assert!(
            keys.authenticate_from(Some("Bearer sk-good"), Some(b))
                .is_ok()
        );
        assert!(keys.authenticate(Some("Bearer sk-good")).is_ok());
        // Successes never count; IPv6 peers count per /64.
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            let _ = keys.authenticate_from(Some("Bearer wrong"), v6(host));
        }
        assert!(matches!(
            keys.authenticate_from(Some("Bearer sk-good"), v6("2001:db8:1:2::99")),
            Err(AuthError::PeerThrottled { .. })
        ));
        assert!(
            keys.authenticate_from(Some("Bearer sk-good"), v6("2001:db8:1:3::1"))
                .is_ok()
        );
        // Without the throttle, failures cost nothing more.
        let open = ApiKeys::load(Some("sk-good".into()), None).unwrap();
        for _ in 0..20 {
            let _ = open.authenticate_from(Some("Bearer x"), Some(a));
        }
        assert!(
            open.authenticate_from(Some("Bearer sk-good"), Some(a))
                .is_ok()
        );
    }

    #[test]
    fn without_keys_everything_passes() {
        let keys = ApiKeys::disabled();
        assert!(!keys.enabled());
        assert_eq!(keys.check(None), Ok(()));
        assert_eq!(keys.authenticate(None), Ok(None));
        assert!(ApiKeys::load(None, None).is_ok_and(|k| !k.enabled()));
    }
}
