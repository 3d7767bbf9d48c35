//! Per-key quotas and the usage a billing job reads.
//!
//! A key line may carry `quota=N/day` or `quota=N/month`: at most N items per UTC day or
//! calendar month, counted in the unit the rate limit counts (images and texts embedded, items
//! classified, upserted or ranked, what the doors [`charge`](super::keys::charge)).
//! `--default-quota` applies to keys without one. Token and pixel quotas are not supported (a clear
//! error at load).
//!
//! Every keyed call's items are added to its key's row for the UTC day in a [`UsageStore`] (the
//! billing record `GET /v1/usage` reads), and for a key with a quota, to its period's row too,
//! conditionally: the charge is admitted only while the period's count is below the quota, in one
//! atomic step of the store (one redb write transaction with `--store local`, one
//! `INSERT .. ON CONFLICT .. DO UPDATE .. WHERE used < quota` statement with `--store postgres`).
//! So a key's count passes its quota by less than one call's items, however many replicas share
//! the PostgreSQL database.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use serde::Serialize;

/// The window a quota counts in (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// `quota=N/day` or `quota=N/month`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSpec {
    pub limit: u64,
    pub period: Period,
}

impl FromStr for QuotaSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected N/day or N/month (N items, a positive whole number)";
        if s.contains(':') {
            return Err(format!(
                "{s:?}: only item quotas are supported (no tokens: or pixels:); {expected}"
            ));
        }
        let (n, period) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: {expected}"))?;
        let limit = n
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0 && n < i64::MAX as u64)
            .ok_or_else(|| format!("{s:?}: {n:?} is not a positive whole number; {expected}"))?;
        let period = match period.trim() {
            "day" => Period::Day,
            "month" => Period::Month,
            other => return Err(format!("{s:?}: unknown period {other:?}; {expected}")),
        };
        Ok(QuotaSpec { limit, period })
    }
}

impl fmt::Display for QuotaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} items per {}", self.limit, self.period.name())
    }
}

/// Days since 1970-01-01 -> (year, month, day) (proleptic Gregorian; H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) -> days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` -> days since 1970-01-01, checked.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut parts = s.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A moment, as seconds since the Unix epoch (UTC).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The row names a charge at `now` (seconds since the epoch) writes: the day (`YYYY-MM-DD`), and
/// the quota's period (the day, or `YYYY-MM`) with the time until it resets.
pub fn window(period: Period, now: u64) -> (String, Duration) {
    let days = i64::try_from(now / 86_400).unwrap_or(i64::MAX / 2);
    let (y, m, _) = civil_from_days(days);
    let (name, end_day) = match period {
        Period::Day => (format_day(days), days + 1),
        Period::Month => {
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (format!("{y:04}-{m:02}"), days_from_civil(ny, nm, 1))
        }
    };
    let end = u64::try_from(end_day).unwrap_or(0) * 86_400;
    (name, Duration::from_secs(end.saturating_sub(now)))
}

/// One charge: `items` for `key` on `day`, and against `quota` (its period's row and limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub key: String,
    pub day: String,
    pub items: u64,
    /// The quota's row (the day's or `YYYY-MM`) and its limit.
    pub quota: Option<(String, u64)>,
}

/// What the store said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charged {
    /// Counted; with a quota, the period's count after this charge.
    Admitted { used: Option<u64> },
    /// The period's count had reached the quota: nothing was counted.
    Refused,
}

/// One key's items on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayUsage {
    pub key: String,
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    pub items: u64,
}

/// Where usage is counted: the local redb file or PostgreSQL (shared by replicas).
#[async_trait::async_trait]
pub trait UsageStore: Send + Sync {
    /// Counts `charge` atomically: the day's row always when admitted, the quota's row only
    /// while it is below its limit (else nothing at all).
    async fn charge(&self, charge: Charge) -> Result<Charged, String>;
    /// Day rows from `start` to `end` (inclusive, `YYYY-MM-DD`), of one key or all, in date then
    /// key order.
    async fn usage(
        &self,
        start: &str,
        end: &str,
        key: Option<&str>,
    ) -> Result<Vec<DayUsage>, String>;
}

/// The store and `--default-quota`, set once at start-up.
#[derive(Clone)]
pub struct Quotas {
    pub store: Arc<dyn UsageStore>,
    pub default: Option<QuotaSpec>,
}

impl fmt::Debug for Quotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quotas")
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// A key's quota state after its last admitted charge (for the `x-ratelimit-*-tokens` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaState {
    pub quota: QuotaSpec,
    pub remaining: u64,
    pub reset_in: Duration,
}

/// Why `GET /v1/usage` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageError {
    /// Not an admin key (or no keys at all).
    Forbidden(&'static str),
    Invalid(String),
    Unavailable(String),
}

/// The longest range one usage read covers, in days.
pub const MAX_USAGE_DAYS: i64 = 366;

/// Checks a usage query's dates: `YYYY-MM-DD`, `start <= end`, at most [`MAX_USAGE_DAYS`] days.
pub fn check_range(start: &str, end: &str) -> Result<(), UsageError> {
    let day = |name: &str, v: &str| {
        parse_date(v).ok_or_else(|| {
            UsageError::Invalid(format!("{name}={v:?} is not a date (expected YYYY-MM-DD)"))
        })
    };
    let (s, e) = (day("start", start)?, day("end", end)?);
    if e < s {
        return Err(UsageError::Invalid(format!(
            "end ({end}) is before start ({start})"
        )));
    }
    if e - s >= MAX_USAGE_DAYS {
        return Err(UsageError::Invalid(format!(
            "at most {MAX_USAGE_DAYS} days per read; split the range {start}..{end}"
        )));
    }
    Ok(())
}

/// `GET /v1/usage`: the day rows from `start` to `end` (default: today, UTC), of `key` or all.
/// `access` is what the caller's key says ([`super::keys::Allowance::admin_usage`]): `None` for
/// a non-admin key or no key at all, `Some(None)` for an admin key on a server counting nothing.
pub async fn read_usage(
    access: Option<Option<&Arc<dyn UsageStore>>>,
    start: Option<&str>,
    end: Option<&str>,
    key: Option<&str>,
) -> Result<(String, String, Vec<DayUsage>), UsageError> {
    let Some(store) = access else {
        return Err(UsageError::Forbidden(
            "usage is readable by admin keys only (role=admin on the key file line)",
        ));
    };
    let today = format_day(i64::try_from(now_secs() / 86_400).unwrap_or(0));
    let end = end.unwrap_or(&today);
    let start = start.unwrap_or(end);
    check_range(start, end)?;
    if let Some(key) = key
        && (key.is_empty() || key.len() > 64)
    {
        return Err(UsageError::Invalid(format!(
            "key={key:?}: a key name is 1-64 characters"
        )));
    }
    let store = store.ok_or_else(|| {
        UsageError::Unavailable("this server counts no usage (no API keys)".into())
    })?;
    let rows = store
        .usage(start, end, key)
        .await
        .map_err(UsageError::Unavailable)?;
    Ok((start.to_owned(), end.to_owned(), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_options_parse_or_say_what_is_wrong() {
        assert_eq!(
            "1000/day".parse::<QuotaSpec>(),
            Ok(QuotaSpec {
                limit: 1000,
                period: Period::Day
            })
        );
        assert_eq!(
            "5/month".parse::<QuotaSpec>().map(|q| q.period),
            Ok(Period::Month)
        );
        for (bad, says) in [
            ("0/day", "not a positive whole number"),
            ("-3/day", "not a positive whole number"),
            ("10", "expected N/day or N/month"),
            ("10/week", "unknown period \"week\""),
            ("tokens:10/day", "only item quotas"),
            ("x/month", "not a positive whole number"),
        ] {
            let e = bad.parse::<QuotaSpec>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn windows_are_utc_days_and_calendar_months() {
        // 2026-12-31T23:00:00Z
        let t = u64::try_from(days_from_civil(2026, 12, 31)).unwrap() * 86_400 + 23 * 3600;
        assert_eq!(
            window(Period::Day, t),
            ("2026-12-31".into(), Duration::from_secs(3600))
        );
        assert_eq!(
            window(Period::Month, t),
            ("2026-12".into(), Duration::from_secs(3600))
        );
        let feb = u64::try_from(days_from_civil(2028, 2, 1)).unwrap() * 86_400;
        assert_eq!(
            window(Period::Month, feb).1,
            Duration::from_secs(29 * 86_400)
        );
        assert_eq!(parse_date("2028-02-29"), Some(days_from_civil(2028, 2, 29)));
        assert_eq!(parse_date("2027-02-29"), None);
        assert_eq!(format_day(0), "1970-01-01");
        assert!(check_range("2026-01-02", "2026-01-01").is_err());
        assert!(check_range("2025-01-01", "2026-01-02").is_err());
        assert!(check_range("2025-01-01", "2026-01-01").is_ok(), "366 days");
        assert!(check_range("2026-01-01", "2026-12-31").is_ok());
    }
}
