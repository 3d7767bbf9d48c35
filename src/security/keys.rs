//! API keys: `--api-key` and/or `--api-key-file` (one key per line; blank lines and `#` comments
//! ignored; re-read on SIGHUP). When any key is configured, every call must present one as
//! `authorization: Bearer KEY` (gRPC metadata or HTTP header). Keys are compared in constant time
//! (`subtle`) and never logged.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
};

use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

struct Inner {
    fixed: Option<String>,
    file: Option<PathBuf>,
    from_file: RwLock<Vec<String>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("enabled", &self.enabled())
            .field("file", &self.inner.file)
            .finish_non_exhaustive()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    Malformed,
    Wrong,
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthError::Missing => "an API key is required: send `authorization: Bearer <key>`",
            AuthError::Malformed => "the authorization header must be `Bearer <key>`",
            AuthError::Wrong => "invalid API key",
        })
    }
}

impl ApiKeys {
    /// Reads the key file once (a start-up error when it cannot be read or holds no key).
    pub fn load(fixed: Option<String>, file: Option<PathBuf>) -> Result<Self, String> {
        let keys = ApiKeys {
            inner: Arc::new(Inner {
                fixed: fixed.filter(|k| !k.is_empty()),
                file,
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
                from_file: RwLock::new(Vec::new()),
            }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.fixed.is_some() || self.inner.file.is_some()
    }

    /// Re-reads the key file; on error the previous keys stay. Returns how many keys it holds.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.inner.file else {
            return Ok(0);
        };
        let keys = read_key_file(path)?;
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

    /// Checks an `authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled() {
            return Ok(());
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let (scheme, key) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let key = key.trim().as_bytes();
        // Every configured key is compared, whatever matches, so the time taken does not depend
        // on which key (if any) matched.
        let mut matched = subtle::Choice::from(0);
        if let Some(fixed) = &self.inner.fixed {
            matched |= fixed.as_bytes().ct_eq(key);
        }
        for k in self
            .inner
            .from_file
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            matched |= k.as_bytes().ct_eq(key);
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AuthError::Wrong)
        }
    }
}

fn read_key_file(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--api-key-file {}: {e}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
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
    fn without_keys_everything_passes() {
        let keys = ApiKeys::disabled();
        assert!(!keys.enabled());
        assert_eq!(keys.check(None), Ok(()));
        assert!(ApiKeys::load(None, None).is_ok_and(|k| !k.enabled()));
    }
}
