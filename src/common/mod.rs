//! The lowest layer: what every domain module shares and nothing else. The request error and its
//! field paths ([`error`]), the two modalities, and small helpers used by more than one domain
//! (hex digests, safe names, prompt filling, durations, blocking work). Imports nothing of the
//! crate.

pub mod error;
pub mod limit;
pub mod tasks;

use std::{fmt, time::Duration};

pub use error::{Field, Invalid, List, ServiceError};
pub use limit::Limit;

/// The two modalities of a CLIP model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Image => "image",
            Modality::Text => "text",
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lower-case hex of `bytes` (digests in file names and fingerprints).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `template` with its `{}` replaced by `label` (what open_clip's `template.format(label)` gives
/// for templates with exactly one `{}` and no other brace, which label sets require).
pub fn fill_template(template: &str, label: &str) -> String {
    template.replacen("{}", label, 1)
}

/// Names of stored things (label sets, collections): 1-64 characters of `[a-z0-9._-]`, starting
/// with a letter or digit, so they are safe as file names. `kind` says what is named.
pub fn check_name(kind: &str, name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            Field::Param("name"),
            format!(
                "{name:?} is not a valid {kind} name (1-64 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit)"
            ),
        ))
    }
}

/// `10s`, `250ms`, `500us`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 250ms"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use us, ms, s or m)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Runs `what` on the blocking pool; failures and panics are logged and become INTERNAL.
pub async fn run_blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ServiceError> {
    let error = match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e,
        Err(e) => format!("task panicked: {e}"),
    };
    tracing::error!(error = %error, "{what} failed");
    Err(ServiceError::Internal(format!(
        "{what} failed; the server logged the details"
    )))
}

/// Hands the allocator's free heap pages back to the operating system (glibc's `malloc_trim`;
/// nothing elsewhere). Loading a large collection allocates every stored vector on its own
/// (2 KiB each at 512 dimensions) before the index copies them into one matrix; glibc keeps the
/// freed small chunks mapped, so without this the process would hold about twice the vectors'
/// bytes after start-up (5.75 KB per 512-d vector at 1M, measured, against 2.2 KB of index).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only walks the allocator's own free lists; it is
    // thread-safe (it takes each arena's lock).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_file_names() {
        for good in ["imagenet-1k", "my_set.v2", "0abc"] {
            assert!(check_name("label set", good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "Upper", "a/b", "..", "x y", &"a".repeat(65)] {
            assert!(check_name("label set", bad).is_err(), "{bad}");
        }
        let e = check_name("collection", "A").unwrap_err().to_string();
        assert!(
            e.starts_with("name: \"A\" is not a valid collection name"),
            "{e}"
        );
    }

    #[test]
    fn templates_fill_like_str_format() {
        assert_eq!(
            fill_template("a photo of a {}.", "cat"),
            "a photo of a cat."
        );
        // A label that itself contains braces is inserted verbatim.
        assert_eq!(fill_template("a {}.", "{}"), "a {}.");
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn durations_parse_in_human_forms() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[tokio::test]
    async fn blocking_failures_and_panics_become_internal() {
        assert_eq!(run_blocking("ok", || Ok(3)).await.unwrap(), 3);
        let e = run_blocking::<()>("a step", || Err("no".into()))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ServiceError::Internal(m) if m == "a step failed; the server logged the details")
        );
        let e = run_blocking::<()>("a step", || panic!("boom"))
            .await
            .unwrap_err();
        assert!(matches!(e, ServiceError::Internal(_)));
    }
}
