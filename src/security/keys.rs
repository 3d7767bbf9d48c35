//! API keys: `--api-key` and/or `--api-key-file` (re-read on SIGHUP). When any key is configured,
//! every call must present one as `authorization: Bearer KEY` (gRPC metadata or HTTP header). Keys
//! are compared in constant time (`subtle`) and never logged.
//!
//! Key file lines (blank lines and `#` comments ignored):
//!
//! ```text
//! alice:sk-1234567890             a named key: usage metrics and logs say `alice`
//! bob:sk-abcdef rate=50:100       a per-key rate limit: 50 requests/s, bursts of 100
//! sk-bare-key                     a bare key, named by a short hash of it (`key-1a2b3c4d`)
//! ```
//!
//! A name is 1-64 characters of `A-Z a-z 0-9 _ . -`; a line whose text before the first `:` is not a
//! name is a bare key. `--rate-limit REQ_PER_S[:BURST]` is the limit of every key without its own;
//! each key has its own token bucket (`governor`, GCRA). Without keys there is no limit.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use governor::{Quota, RateLimiter, clock::Clock};
use sha2::Digest;
use subtle::ConstantTimeEq;

/// Requests per second and the burst a key may spend at once.
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

/// One configured key.
struct Key {
    name: Arc<str>,
    secret: String,
    limiter: Option<Arc<Limiter>>,
}

impl Key {
    fn new(name: Option<&str>, secret: &str, rate: Option<RateLimit>) -> Self {
        let name: Arc<str> = match name {
            Some(n) => n.into(),
            None => short_name(secret).into(),
        };
        Key {
            name,
            secret: secret.to_string(),
            limiter: rate.map(|r| {
                Arc::new(RateLimiter::direct(
                    Quota::per_second(r.per_second).allow_burst(r.burst),
                ))
            }),
        }
    }
}

/// `key-` and the first 8 hex digits of the key's SHA-256: stable, and says nothing of the key.
fn short_name(secret: &str) -> String {
    let digest = sha2::Sha256::digest(secret.as_bytes());
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
                "this API key's rate limit is spent; retry in {} ms",
                retry_after.as_millis().max(1)
            ),
        }
    }
}

/// Who is calling: the key's name (never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_name: Arc<str>,
}

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
            }),
        }
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

    /// Checks an `authorization` header value (and spends one request of the key's rate limit).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        self.authenticate(authorization).map(drop)
    }

    /// Who presented `authorization` (`None` when no keys are configured), after the key's rate
    /// limit admitted one more request.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<Caller>, AuthError> {
        if !self.enabled() {
            return Ok(None);
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let presented = key.trim().as_bytes();
        // Every configured key is compared, whatever matches, so the time taken does not depend
        // on which key (if any) matched.
        let from_file = self
            .inner
            .from_file
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut found: Option<&Key> = None;
        for k in self.inner.fixed.iter().chain(from_file.iter()) {
            let same = bool::from(k.secret.as_bytes().ct_eq(presented));
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
        for option in words {
            match option.strip_prefix("rate=") {
                Some(r) => rate = Some(r.parse().map_err(|e| format!("{}: rate={e}", at()))?),
                None => {
                    return Err(format!(
                        "{}: unknown option {option:?} (expected rate=REQ_PER_S[:BURST])",
                        at()
                    ));
                }
            }
        }
        let (name, secret) = match first.split_once(':') {
            Some((name, secret)) if is_name(name) && !secret.is_empty() => (Some(name), secret),
            _ => (None, first),
        };
        keys.push(Key::new(name, secret, rate));
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
    fn without_keys_everything_passes() {
        let keys = ApiKeys::disabled();
        assert!(!keys.enabled());
        assert_eq!(keys.check(None), Ok(()));
        assert_eq!(keys.authenticate(None), Ok(None));
        assert!(ApiKeys::load(None, None).is_ok_and(|k| !k.enabled()));
    }
}
