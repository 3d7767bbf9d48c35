//! PostgreSQL as the shared store of `--store postgres`: the bounded connection pool, the schema
//! (created and migrated at start-up, see [`schema`]) and how its errors read to clients. The
//! collection store (`retrieve::postgres`) and the label-set store (`classify::postgres`) share one
//! pool.
//!
//! Layer: shared below the features, beside `common` (which it uses).

pub mod schema;
pub mod usage;

use crate::common::limit::{POSTGRES_LOCK_TIMEOUT, POSTGRES_STATEMENT_TIMEOUT};
use std::{
    ops::{Deref, DerefMut},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime,
    tokio_postgres::{self, config::SslMode},
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::common::ServiceError;

/// Where collections and label sets live (`--store`).
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per process, read at start-up: boxing would only add indirection"
)]
pub enum StoreConfig {
    /// Collections in a redb file under `--data-dir` (searched in memory), label sets as JSON files
    /// there: one replica's own.
    Local,
    /// PostgreSQL with pgvector, shared by every replica pointed at it.
    Postgres(PgConfig),
}

/// How to reach PostgreSQL. `Debug` never shows the URL or the password.
#[derive(Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/db?...` (a password in it works but is better given apart).
    pub url: String,
    pub password: Option<String>,
    pub pool_size: usize,
    /// Collections with fewer items are searched exactly.
    pub exact_below: usize,
    /// Connecting, and waiting for a pooled connection.
    pub connect_timeout: Duration,
    /// PEM CA certificates the server's certificate must chain to, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// New collections get their HNSW index over `halfvec` (half precision) instead of `vector`.
    pub halfvec: bool,
    /// The least `hnsw.ef_search` a search uses (it is at least 2 x top_k): more is better recall,
    /// slower searches.
    pub ef_search: usize,
    /// How new collections are indexed (`halfvec` above also makes it `Halfvec`).
    pub index: schema::IndexKind,
    /// New HNSW indexes' `m` and `ef_construction`.
    pub build: schema::HnswBuild,
    /// A binary search re-ranks `k` x this many candidates.
    pub oversample: usize,
    /// `statement_timeout` of every session (zero: none): a statement running longer is
    /// cancelled by PostgreSQL and the call answered UNAVAILABLE.
    pub statement_timeout: Duration,
    /// `lock_timeout` of every session (zero: none): a statement waiting longer for a lock (a row
    /// another write holds, a table a DeleteCollection drops) gives up, UNAVAILABLE.
    pub lock_timeout: Duration,
    /// The in-memory search mirrors of large collections (`--postgres-mirror-*`).
    pub mirror: MirrorConfig,
}

/// How this replica mirrors large collections' binary codes in memory (searched by a scan of
/// every code, the shortlist rescored in PostgreSQL): `retrieve::postgres::mirror`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorConfig {
    /// The most items mirrored, all collections together (0: no mirrors; searches use the
    /// collections' pgvector indexes).
    pub max_items: usize,
    /// How often the mirrors follow the change log (and new large collections are mirrored).
    pub poll: Duration,
    /// How long change-log rows are kept; a mirror that could not follow it for half of this is
    /// built again.
    pub retention: Duration,
    /// The most items changed since a mirror's last poll that a search rescores beside its
    /// shortlist (a search sees every committed write at once up to this many).
    pub max_recent: usize,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            max_items: 5_000_000,
            poll: Duration::from_secs(1),
            retention: Duration::from_secs(3600),
            max_recent: 10_000,
        }
    }
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &"<redacted>")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("exact_below", &self.exact_below)
            .field("connect_timeout", &self.connect_timeout)
            .field("ca_file", &self.ca_file)
            .field("halfvec", &self.halfvec)
            .field("ef_search", &self.ef_search)
            .field("index", &self.index)
            .field("build", &self.build)
            .field("oversample", &self.oversample)
            .field("statement_timeout", &self.statement_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("mirror", &self.mirror)
            .finish()
    }
}

/// Most statements one pooled connection keeps prepared (deadpool's statement cache). Statements
/// name a collection's table, so without a bound every collection ever searched on a connection
/// would stay prepared there (server memory) after it was deleted; past the bound the cache is
/// emptied (its statements deallocated) and fills again with the collections in use.
pub const MAX_CACHED_STATEMENTS: usize = 128;

/// The pool of connections to PostgreSQL, with what cancelling a query on one of them takes.
/// Dereferences to deadpool's pool.
#[derive(Clone)]
pub struct Pool {
    inner: deadpool_postgres::Pool,
    tls: MakeRustlsConnect,
    /// How long a connection whose call was abandoned may take to be idle again.
    probe_timeout: Duration,
}

impl Deref for Pool {
    type Target = deadpool_postgres::Pool;

    fn deref(&self) -> &deadpool_postgres::Pool {
        &self.inner
    }
}

/// A pool of at most `pool_size` connections, opened as calls need them (nothing connects here:
/// [`connect_and_migrate`] does). A broken connection is dropped and replaced on the next call,
/// so the pool reconnects by itself once PostgreSQL is back. Every new session gets
/// `statement_timeout` and `lock_timeout` (`SET` once it is open, so poolers in front of
/// PostgreSQL that refuse the `options` start-up parameter work too).
pub fn pool(config: &PgConfig) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = config.url.parse().map_err(|_| {
        anyhow::anyhow!(
            "--postgres-url is not a PostgreSQL connection URL (postgres://user@host:port/database)"
        )
    })?;
    if let Some(password) = &config.password {
        pg.password(password);
    }
    pg.connect_timeout(config.connect_timeout);
    // A vanished server (a partition, a dead host) fails calls within seconds instead of hanging
    // on TCP retransmissions: unacknowledged data for 20 s, or 10 s of silent keepalives, closes
    // the connection (the pool opens another when PostgreSQL is back).
    pg.keepalives_idle(Duration::from_secs(5));
    pg.keepalives_interval(Duration::from_secs(2));
    pg.keepalives_retries(3);
    pg.tcp_user_timeout(Duration::from_secs(20));
    if pg.get_application_name().is_none() {
        pg.application_name("clip-serve");
    }
    let tls = MakeRustlsConnect::new(tls_config(config.ca_file.as_deref(), pg.get_ssl_mode())?);
    let manager = Manager::from_config(
        pg,
        tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let session = session_settings(config.statement_timeout, config.lock_timeout);
    let inner = deadpool_postgres::Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .post_create(Hook::async_fn(move |client, _| {
            let session = session.clone();
            Box::pin(async move {
                client
                    .batch_execute(&session)
                    .await
                    .map_err(HookError::Backend)
            })
        }))
        .build()
        .map_err(|e| anyhow::anyhow!("the PostgreSQL pool: {e}"))?;
    Ok(Pool {
        inner,
        tls,
        probe_timeout: config.connect_timeout,
    })
}

/// The `SET`s every new session runs: milliseconds, at least 1 unless zero (PostgreSQL's "no
/// limit"), at most PostgreSQL's largest. A transaction left idle longer than the statement
/// timeout (a replica frozen or cut off mid-write, holding its collection's row lock) is ended by
/// PostgreSQL (`idle_in_transaction_session_timeout`), so it cannot block every other replica's
/// writes to that collection.
fn session_settings(statement_timeout: Duration, lock_timeout: Duration) -> String {
    let ms = |d: Duration| {
        if d.is_zero() {
            0
        } else {
            d.as_millis().clamp(1, i32::MAX as u128)
        }
    };
    format!(
        "SET statement_timeout = {0}; SET lock_timeout = {1}; \
         SET idle_in_transaction_session_timeout = {0}",
        ms(statement_timeout),
        ms(lock_timeout)
    )
}

/// TLS to PostgreSQL (rustls): the URL's `sslmode` decides whether it is used (`prefer`, the
/// default, when the server offers it; `require` always; `disable` never). The server's certificate
/// is verified against the system's roots plus `ca_file` (managed services' own CAs: RDS, Cloud SQL).
fn tls_config(ca_file: Option<&std::path::Path>, mode: SslMode) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if mode != SslMode::Disable {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 && ca_file.is_none() {
            tracing::debug!(
                "no system CA certificates: TLS to PostgreSQL needs --postgres-ca-file"
            );
        }
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("--postgres-ca-file {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert =
                cert.map_err(|e| anyhow::anyhow!("--postgres-ca-file {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| anyhow::anyhow!("--postgres-ca-file {}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!(
                "--postgres-ca-file {}: no certificate in it",
                path.display()
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS to PostgreSQL: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects and migrates the schema, retrying (with backoff, logged) while PostgreSQL is
/// unreachable; a schema that cannot be migrated is an error.
pub async fn connect_and_migrate(pool: &Pool) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    loop {
        let failure = match pool.get().await {
            Ok(mut client) => match schema::migrate(&mut client).await {
                Ok(found) => {
                    tracing::info!(
                        schema_found = found,
                        schema = schema::latest(),
                        "connected to PostgreSQL; collections and label sets shared there"
                    );
                    return Ok(());
                }
                // Unreachable, or another replica's migration held the lock past `lock_timeout`.
                Err(schema::MigrateError::Pg(e))
                    if e.as_db_error().is_none_or(|d| {
                        d.code() == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
                    }) =>
                {
                    e.to_string()
                }
                Err(e) => return Err(anyhow::anyhow!("migrating the PostgreSQL schema: {e}")),
            },
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %failure, retry_ms = delay.as_millis() as u64, "PostgreSQL unreachable at start-up; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// What a client sees when PostgreSQL does not answer (the details are logged).
pub fn unavailable() -> ServiceError {
    ServiceError::Unavailable(
        "the shared store (PostgreSQL) is unavailable; retry (the server logged the details)"
            .into(),
    )
}

/// What a client sees when the PostgreSQL node it reached only reads (a standby: a failover moved
/// the primary elsewhere). The pool drops its connections and reconnects.
const READ_ONLY: &str =
    "the shared store (PostgreSQL) is read-only now (a failover?); nothing was written; retry";

/// A statement cancelled by `statement_timeout`, a lock wait ended by `lock_timeout`: the
/// connection is fine.
static STATEMENT_TIMEOUT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("the shared store (PostgreSQL) took too long ({POSTGRES_STATEMENT_TIMEOUT}); retry")
});
static LOCK_TIMEOUT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "the shared store (PostgreSQL) is busy with a conflicting change ({POSTGRES_LOCK_TIMEOUT}); retry"
    )
});

/// A PostgreSQL error as the client sees it: connection trouble, a read-only node (SQLSTATE
/// 25006, after a failover), a statement over `statement_timeout` and a lock wait over
/// `lock_timeout` are UNAVAILABLE, a serialization conflict ABORTED, anything else INTERNAL
/// (logged).
pub fn pg_error(e: tokio_postgres::Error) -> ServiceError {
    let Some(db) = e.as_db_error() else {
        tracing::warn!(error = %e, "PostgreSQL unreachable");
        return unavailable();
    };
    let code = db.code().code();
    if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") {
        tracing::warn!(error = %e, code, "PostgreSQL unavailable");
        unavailable()
    } else if code == "25006" {
        tracing::warn!(error = %e, code, "PostgreSQL is read-only (failover?); reconnecting");
        ServiceError::Unavailable(READ_ONLY.into())
    } else if code == "57014" {
        tracing::warn!(error = %e, code, "a PostgreSQL statement ran past --postgres-statement-timeout");
        ServiceError::Unavailable(STATEMENT_TIMEOUT.clone())
    } else if code == "55P03" {
        tracing::warn!(error = %e, code, "a PostgreSQL lock wait ran past --postgres-lock-timeout");
        ServiceError::Unavailable(LOCK_TIMEOUT.clone())
    } else if matches!(code, "40001" | "40P01") {
        ServiceError::Aborted(
            "the write conflicted with a concurrent one in PostgreSQL; nothing was written; retry"
                .into(),
        )
    } else {
        tracing::error!(error = %e, code, "PostgreSQL failed");
        ServiceError::Internal(
            "the shared store (PostgreSQL) failed; the server logged the details".into(),
        )
    }
}

pub fn pool_error(e: PoolError) -> ServiceError {
    match e {
        PoolError::Backend(e) => pg_error(e),
        other => {
            tracing::warn!(error = %other, "no PostgreSQL connection");
            unavailable()
        }
    }
}

/// A connection from the pool, or UNAVAILABLE. Dereferences to deadpool's pooled client.
///
/// Cancellation: a `Conn` dropped before [`Conn::done`] (the call's future was dropped: the
/// client hung up, a deadline passed) has the statement it may be running cancelled with
/// PostgreSQL's cancel request, at once, in a task of its own. PostgreSQL rolls back a transaction
/// left open (tokio-postgres sends ROLLBACK for a dropped one), so a write either committed (its
/// COMMIT had been sent) or left nothing. The connection counts against the pool until then; it
/// goes back only once a probe queued behind the cancelled work answers (so a late cancel cannot
/// hit another call's statement), and is closed instead when the probe fails or takes longer
/// than the connect timeout.
pub struct Conn {
    obj: Option<Object>,
    pool: Pool,
}

impl Conn {
    /// The call is over (answered): `result` is handed through, and the connection goes back to
    /// the pool, or is closed when the result says PostgreSQL is unavailable or read-only (then
    /// the pool's idle connections are dropped too, so that the next calls reconnect, possibly to
    /// the new primary). A timeout leaves the connection as it was.
    pub fn done<T>(mut self, result: Result<T, ServiceError>) -> Result<T, ServiceError> {
        let obj = self.obj.take();
        if let Err(ServiceError::Unavailable(message)) = &result
            && *message != *STATEMENT_TIMEOUT
            && *message != *LOCK_TIMEOUT
        {
            if let Some(obj) = obj {
                drop(Object::take(obj));
            }
            if message == READ_ONLY {
                self.pool.retain(|_, _| false);
            }
        }
        result
    }
}

impl Deref for Conn {
    type Target = Object;

    #[allow(
        clippy::expect_used,
        reason = "only `done` (which consumes the Conn) and `drop` take the connection out"
    )]
    fn deref(&self) -> &Object {
        // Only `done` (which consumes the Conn) and `drop` take it out.
        self.obj
            .as_ref()
            .expect("a Conn holds its connection until done")
    }
}

impl DerefMut for Conn {
    #[allow(
        clippy::expect_used,
        reason = "only `done` (which consumes the Conn) and `drop` take the connection out"
    )]
    fn deref_mut(&mut self) -> &mut Object {
        self.obj
            .as_mut()
            .expect("a Conn holds its connection until done")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Shutting down: closing the connection ends its session.
            drop(Object::take(obj));
            return;
        };
        let tls = self.pool.tls.clone();
        let probe_timeout = self.pool.probe_timeout;
        runtime.spawn(async move {
            let token = obj.cancel_token();
            let cancelled = token.cancel_query(tls).await;
            if let Err(e) = &cancelled {
                tracing::debug!(error = %e, "cancelling an abandoned PostgreSQL statement");
            }
            // The probe runs after what the connection had queued (the abandoned statement, the
            // ROLLBACK of a dropped transaction): once it answers, the cancel has been spent.
            let idle = cancelled.is_ok()
                && matches!(
                    tokio::time::timeout(probe_timeout, obj.simple_query("SELECT 1")).await,
                    Ok(Ok(_))
                );
            if !idle {
                // Closing the connection ends its session (and rolls back what it had open).
                drop(Object::take(obj));
            }
        });
    }
}

/// A connection from the pool (see [`Conn`]), or UNAVAILABLE. Its statement cache is emptied
/// when it holds more than [`MAX_CACHED_STATEMENTS`].
pub async fn client(pool: &Pool) -> Result<Conn, ServiceError> {
    let obj = pool.get().await.map_err(pool_error)?;
    if obj.statement_cache.size() > MAX_CACHED_STATEMENTS {
        obj.statement_cache.clear();
    }
    Ok(Conn {
        obj: Some(obj),
        pool: pool.clone(),
    })
}

/// Whether PostgreSQL answers now, and writably: a node that is a standby (`pg_is_in_recovery()`)
/// or read-only by default (`transaction_read_only`), as a failed-over primary becomes, is
/// UNAVAILABLE (and the pool's connections are dropped, so the next try reconnects).
pub async fn ping(pool: &Pool) -> Result<(), ServiceError> {
    let conn = client(pool).await?;
    let result = async {
        let messages = conn
            .simple_query(
                "SELECT (pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on')::text",
            )
            .await
            .map_err(pg_error)?;
        let read_only = messages.iter().any(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("true"),
            _ => false,
        });
        if read_only {
            tracing::warn!("PostgreSQL is read-only (a standby: failover?); reconnecting");
            return Err(ServiceError::Unavailable(READ_ONLY.into()));
        }
        Ok(())
    }
    .await;
    conn.done(result)
}

/// Column `idx` of a row, or INTERNAL (logged) when it is not what this server's schema says.
pub fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    idx: &str,
) -> Result<T, ServiceError> {
    row.try_get(idx).map_err(|e| {
        tracing::error!(error = %e, column = idx, "unexpected PostgreSQL column");
        ServiceError::Internal(
            "the shared store (PostgreSQL) returned an unexpected row; the server logged the details"
                .into(),
        )
    })
}

/// Text PostgreSQL cannot hold (`text` and `jsonb` refuse U+0000).
pub fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timeouts_are_whole_milliseconds_within_postgres_range() {
        assert_eq!(
            session_settings(Duration::from_secs(30), Duration::from_micros(10)),
            "SET statement_timeout = 30000; SET lock_timeout = 1; \
             SET idle_in_transaction_session_timeout = 30000"
        );
        assert_eq!(
            session_settings(Duration::ZERO, Duration::from_secs(1 << 40)),
            format!(
                "SET statement_timeout = 0; SET lock_timeout = {}; \
                 SET idle_in_transaction_session_timeout = 0",
                i32::MAX
            )
        );
    }
}
