//! PostgreSQL as the shared store of `--store postgres`: the bounded connection pool, the schema
//! (created and migrated at start-up, see [`schema`]) and how its errors read to clients. The
//! collection store (`retrieve::postgres`) and the label-set store (`classify::postgres`) share one
//! pool.
//!
//! Layer: shared below the features, beside `common` (which it uses).

pub mod schema;

use std::{path::PathBuf, sync::Arc, time::Duration};

pub use deadpool_postgres::Pool;
use deadpool_postgres::{
    Manager, ManagerConfig, PoolError, RecyclingMethod, Runtime,
    tokio_postgres::{self, config::SslMode},
};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::common::ServiceError;

/// Where collections and label sets live (`--store`).
#[derive(Debug, Clone)]
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
            .finish()
    }
}

/// A pool of at most `pool_size` connections, opened as calls need them (nothing connects here:
/// [`connect_and_migrate`] does). A broken connection is dropped and replaced on the next call,
/// so the pool reconnects by itself once PostgreSQL is back.
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
    let tls = tls_config(config.ca_file.as_deref(), pg.get_ssl_mode())?;
    let manager = Manager::from_config(
        pg,
        tokio_postgres_rustls::MakeRustlsConnect::new(tls),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .build()
        .map_err(|e| anyhow::anyhow!("the PostgreSQL pool: {e}"))
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
                Err(schema::MigrateError::Pg(e)) if e.as_db_error().is_none() => e.to_string(),
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

/// A PostgreSQL error as the client sees it: connection trouble is UNAVAILABLE, a serialization
/// conflict ABORTED, anything else INTERNAL (logged).
pub fn pg_error(e: tokio_postgres::Error) -> ServiceError {
    let Some(db) = e.as_db_error() else {
        tracing::warn!(error = %e, "PostgreSQL unreachable");
        return unavailable();
    };
    let code = db.code().code();
    if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") {
        tracing::warn!(error = %e, code, "PostgreSQL unavailable");
        unavailable()
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

/// A connection from the pool, or UNAVAILABLE.
pub async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, ServiceError> {
    pool.get().await.map_err(pool_error)
}

/// Whether PostgreSQL answers now.
pub async fn ping(pool: &Pool) -> Result<(), ServiceError> {
    let client = client(pool).await?;
    client.simple_query("SELECT 1").await.map_err(pg_error)?;
    Ok(())
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
