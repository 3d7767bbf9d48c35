//! OpenAI's `x-ratelimit-*` reply headers for keyed calls, from the key's own limits:
//!
//! - `-requests`: the key's rate limit (`rate=` / `--rate-limit`), in items, not requests:
//!   `limit` is the bucket's size (the burst), `remaining` what it held after this call's
//!   charges, `reset` how long until it is full again at the key's items per second.
//! - `-tokens`: the key's quota (`quota=` / `--default-quota`), in items, not tokens: `limit` is
//!   the quota, `remaining` what is left of it this period after this call, `reset` how long until
//!   the period (UTC day or month) ends.
//!
//! A family is absent when the key has no such limit (or the call charged nothing against it).
//! Durations are written as OpenAI writes them (`6m0s`, `1s`, `20ms`).

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use crate::security::keys::Allowance;

/// `20ms`, `1s`, `6m0s`, `2h3m4s` (seconds rounded up once past one).
pub fn openai_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

/// Puts the key's `x-ratelimit-*` headers on a reply.
pub fn put(headers: &mut HeaderMap, allowance: &Allowance) {
    let mut family = |names: [&'static str; 3], limit: u64, remaining: u64, reset: Duration| {
        let [l, r, t] = names;
        headers.insert(l, HeaderValue::from(limit));
        headers.insert(r, HeaderValue::from(remaining));
        if let Ok(v) = HeaderValue::from_str(&openai_duration(reset)) {
            headers.insert(t, v);
        }
    };
    if let Some((rate, left)) = allowance.rate_state() {
        let burst = rate.burst.get();
        let refill = f64::from(burst.saturating_sub(left)) / f64::from(rate.per_second.get());
        family(
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            u64::from(burst),
            u64::from(left.min(burst)),
            Duration::from_secs_f64(refill),
        );
    }
    if let Some(q) = allowance.quota_state() {
        family(
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
            q.quota.limit,
            q.remaining,
            q.reset_in,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_openai_writes_them() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "2s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(7384)), "2h3m4s");
    }
}
