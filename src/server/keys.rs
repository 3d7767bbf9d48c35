//! Start-up steps of `server.rs` that concern the callers rather than the doors: API keys (reloaded
//! on SIGHUP), TLS files, the usage and quota store, and the process signals that stop the server.

use std::sync::Arc;

use crate::{
    cli::Config,
    common::tasks::Background,
    security::{ApiKeys, tls::TlsFiles},
};

/// Step 3: API keys (reloaded on SIGHUP) and the TLS files.
pub(super) fn load_security(
    config: &Config,
    background: &Background,
) -> anyhow::Result<(ApiKeys, Option<TlsFiles>)> {
    let keys = ApiKeys::load_with(
        config.api_key.as_ref().map(|k| k.0.clone()),
        config.api_key_file.clone(),
        config.rate_limit,
    )
    .map_err(|e| anyhow::anyhow!(e))?
    .throttle_failures(config.auth_failures_per_minute);
    let tls = config.tls.load().map_err(|e| anyhow::anyhow!(e))?;
    if keys.enabled() {
        tracing::info!(key_file = ?keys.key_file(), public_reflection = config.public_reflection, "API keys required");
        spawn_key_reloader(background, keys.clone());
    } else if config.rate_limit.is_some() {
        tracing::warn!("--rate-limit has no effect without API keys (limits are per key)");
    }
    Ok((keys, tls))
}

/// Counts keyed calls' usage (and enforces quotas) in the configured store: PostgreSQL's
/// `clip_usage` when shared, else `<data-dir>/usage.redb`, keys without a quota through the
/// in-memory buffer of `--usage-flush-interval`. Nothing without keys.
pub(super) fn with_usage_store(
    keys: ApiKeys,
    config: &Config,
    pool: Option<&crate::postgres::Pool>,
    background: &Background,
) -> anyhow::Result<ApiKeys> {
    if !keys.enabled() {
        return Ok(keys);
    }
    let store: Arc<dyn crate::security::quota::UsageStore> = match pool {
        Some(pool) => Arc::new(crate::postgres::usage::PgUsage::new(pool.clone())),
        None => Arc::new(
            crate::security::usage_local::LocalUsage::open(&config.data_dir)
                .map_err(|e| anyhow::anyhow!(e))?,
        ),
    };
    if config.usage_flush_interval.is_zero() {
        return Ok(keys.with_quotas(store, config.default_quota));
    }
    let buffered = crate::security::usage_buffer::Buffered::new(store, config.usage_max_pending);
    buffered.spawn_flusher(background, config.usage_flush_interval);
    Ok(keys.with_quotas(buffered, config.default_quota))
}

/// Re-reads the API key file on SIGHUP (the keys themselves are never logged).
fn spawn_key_reloader(background: &Background, keys: ApiKeys) {
    // Weak: a server shut down in-process lets go of its keys (and their usage store's file).
    let keys = keys.downgrade();
    #[cfg(unix)]
    background.spawn("API key reloader", async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP; the API key file will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            let Some(keys) = keys.upgrade() else { return };
            match keys.reload() {
                Ok(n) => tracing::info!(keys = n, "SIGHUP: API key file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: API key file not reloaded; the previous keys stay")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (background, keys);
}

pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
