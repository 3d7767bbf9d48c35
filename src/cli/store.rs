//! Where state lives: `--data-dir`, `--store local|postgres`, and PostgreSQL's connection, pool,
//! index and timeout settings.
//!
//! clap says two of the rules: `--store postgres` requires `--postgres-url` (`required_if_eq`), and
//! the password is given once (`conflicts_with`). The `--postgres-*` flags with `--store local` is
//! a rule on another flag's value, which clap cannot say: [`StoreArgs::config`] checks it.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    common::parse_duration,
    postgres::{
        MirrorConfig, PgConfig, StoreConfig,
        schema::{HnswBuild, IndexKind},
    },
};

/// `--postgres-index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PgIndex {
    Vector,
    Halfvec,
    Binary,
    None,
}

/// `--store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Local,
    Postgres,
}

/// The data directory and the store of collections.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Where label sets (and later collections) persist.
    #[arg(
        long,
        env = "CLIP_SERVE_DATA_DIR",
        default_value = "data",
        display_order = 450
    )]
    pub data_dir: PathBuf,

    /// Where collections (and, with postgres, label sets) live: `local` (a redb file under
    /// --data-dir, searched in memory; one replica's own) or `postgres` (PostgreSQL with pgvector,
    /// shared by every replica pointed at it; needs --postgres-url).
    #[arg(long, env = "CLIP_SERVE_STORE", value_enum, default_value_t = StoreKind::Local, display_order = 550)]
    pub store: StoreKind,

    /// PostgreSQL connection URL for --store postgres, e.g.
    /// `postgres://clip@db.example.com:5432/clip?sslmode=disable`. Give the password apart
    /// (--postgres-password-file or CLIP_SERVE_POSTGRES_PASSWORD); it is never logged.
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_URL",
        hide_env_values = true,
        required_if_eq("store", "postgres"),
        display_order = 560
    )]
    pub postgres_url: Option<String>,

    /// A file holding the PostgreSQL password (trailing newline ignored), e.g. a mounted secret.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_PASSWORD_FILE", display_order = 570)]
    pub postgres_password_file: Option<PathBuf>,

    /// The PostgreSQL password. Prefer the environment variable or the file: a flag shows in `ps`.
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_PASSWORD",
        hide_env_values = true,
        conflicts_with = "postgres_password_file",
        display_order = 580
    )]
    pub postgres_password: Option<String>,

    /// PEM CA certificates PostgreSQL's TLS certificate must chain to, besides the system's (a
    /// managed service's CA bundle). TLS itself follows the URL's `sslmode` (prefer by default).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_CA_FILE", display_order = 590)]
    pub postgres_ca_file: Option<PathBuf>,

    /// New collections get their HNSW index over half-precision copies of the vectors (`halfvec`):
    /// half the index memory and disk, dimensions up to 4000; stored vectors and scores stay full
    /// precision. Existing collections keep their index.
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_HALFVEC",
        default_value_t = false,
        display_order = 600
    )]
    pub postgres_halfvec: bool,

    /// The least `hnsw.ef_search` (candidates pgvector's HNSW explores) a search uses; it is at
    /// least 2 x top_k. More finds more of the true neighbours, slower: on 1M clustered vectors
    /// recall@10 was 0.83 at 64 and 0.88 at 200 for 1.2 ms more (BENCHMARKS.md).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_EF_SEARCH", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000), display_order = 610)]
    pub postgres_ef_search: u32,

    /// How new PostgreSQL collections are indexed: `vector` (HNSW over the vectors), `halfvec`
    /// (HNSW over half-precision copies; the same as --postgres-halfvec), `binary` (HNSW over
    /// their sign bits, Hamming distance; a shortlist of top_k x --postgres-oversample re-ranked
    /// by the exact cosine in the same query) or `none` (no HNSW index: upserts skip its upkeep,
    /// 50-150x faster on 2 cores (BENCHMARKS.md), and large collections are searched by the
    /// replicas' mirrors; filtered searches, and all searches while a mirror builds, are exact
    /// scans). Existing collections keep their index.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_INDEX", value_enum, default_value_t = PgIndex::Vector, display_order = 611)]
    pub postgres_index: PgIndex,

    /// A search from a mirror, or by a `binary` index, re-ranks top_k x this many candidates by
    /// the exact cosine (at most 20,000): more finds more of the true neighbours, slower
    /// (BENCHMARKS.md, issue 23).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_OVERSAMPLE", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=20_000), display_order = 612)]
    pub postgres_oversample: u32,

    /// `m` of new collections' HNSW indexes (links per node, 2-100; pgvector's default 16): more
    /// is better recall at a larger index and a slower build.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_HNSW_M", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=100), display_order = 613)]
    pub postgres_hnsw_m: u32,

    /// `ef_construction` of new collections' HNSW indexes (4-1000, at least 2 x m; pgvector's
    /// default 64): more is a better graph at a slower build.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_HNSW_EF_CONSTRUCTION", default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=1000), display_order = 614)]
    pub postgres_hnsw_ef_construction: u32,

    /// Most items this replica mirrors in memory, all collections together (about 160 bytes
    /// each at 512-d: 800 MB at the default): collections of at least --postgres-exact-below items are searched by a
    /// scan of their binary codes here, the shortlist rescored in PostgreSQL, instead of by
    /// their pgvector index (0: no mirrors).
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_MIRROR_MAX_ITEMS",
        default_value_t = 5_000_000,
        display_order = 615
    )]
    pub postgres_mirror_max_items: u64,

    /// How often the mirrors follow the item change log (other replicas' writes), and large
    /// collections get a mirror. A search sees every committed write at once either way.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_MIRROR_POLL", default_value = "1s", value_parser = parse_duration, display_order = 616)]
    pub postgres_mirror_poll: Duration,

    /// The most items written since a mirror's last poll that a search rescores beside its
    /// shortlist (past it, the newest writes may be missed until the next poll).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_MIRROR_MAX_RECENT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..), display_order = 617)]
    pub postgres_mirror_max_recent: u32,

    /// How long the item change log keeps a row; a mirror that could not poll for half of it is
    /// built again.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_CHANGE_RETENTION", default_value = "60m", value_parser = parse_duration, display_order = 618)]
    pub postgres_change_retention: Duration,

    /// Most connections this replica holds to PostgreSQL (the pool; opened as needed).
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_POOL_SIZE",
        default_value_t = 16,
        display_order = 620
    )]
    pub postgres_pool_size: u32,

    /// Collections with fewer items are searched exactly (a scan) instead of by the HNSW index.
    #[arg(
        long,
        env = "CLIP_SERVE_POSTGRES_EXACT_BELOW",
        default_value_t = 10_000,
        display_order = 630
    )]
    pub postgres_exact_below: u64,

    /// How long to wait for a PostgreSQL connection (connecting, or a free one in the pool)
    /// before answering UNAVAILABLE.
    #[arg(long, env = "CLIP_SERVE_POSTGRES_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration, display_order = 640)]
    pub postgres_connect_timeout: Duration,

    /// `statement_timeout` of every PostgreSQL session: a statement running longer is cancelled
    /// and the call answered UNAVAILABLE; also its `idle_in_transaction_session_timeout` (a
    /// replica frozen mid-write loses its locks) (0: no limit).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_STATEMENT_TIMEOUT", default_value = "30s", value_parser = parse_duration, display_order = 650)]
    pub postgres_statement_timeout: Duration,

    /// `lock_timeout` of every PostgreSQL session: a statement waiting longer for a lock (a write
    /// behind another on the same collection, a search behind a DeleteCollection) gives up,
    /// UNAVAILABLE (0: no limit).
    #[arg(long, env = "CLIP_SERVE_POSTGRES_LOCK_TIMEOUT", default_value = "5s", value_parser = parse_duration, display_order = 660)]
    pub postgres_lock_timeout: Duration,
}

impl StoreArgs {
    /// `--store` and the `--postgres-*` flags; reads the password file.
    pub(super) fn config(&self) -> Result<StoreConfig, String> {
        let postgres_set = self.postgres_url.is_some()
            || self.postgres_password.is_some()
            || self.postgres_password_file.is_some()
            || self.postgres_ca_file.is_some();
        match self.store {
            StoreKind::Local if postgres_set => Err(
                "--postgres-url, --postgres-password(-file) and --postgres-ca-file apply to --store postgres, not local"
                    .into(),
            ),
            StoreKind::Local => Ok(StoreConfig::Local),
            StoreKind::Postgres => self.postgres(),
        }
    }

    fn postgres(&self) -> Result<StoreConfig, String> {
        // clap requires the flag; an empty CLIP_SERVE_POSTGRES_URL meets that but names nothing.
        let url = self
            .postgres_url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or("--store postgres needs --postgres-url (or CLIP_SERVE_POSTGRES_URL)")?;
        let password = match (&self.postgres_password_file, &self.postgres_password) {
            // Refused by clap already (`conflicts_with`); kept for arguments built in code.
            (Some(_), Some(_)) => {
                return Err(
                    "give the PostgreSQL password once: --postgres-password-file or --postgres-password".into(),
                );
            }
            (Some(path), None) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("--postgres-password-file {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (None, password) => password.clone().filter(|p| !p.is_empty()),
        };
        if self.postgres_pool_size == 0 {
            return Err("--postgres-pool-size must be greater than 0".into());
        }
        if self.postgres_connect_timeout.is_zero() {
            return Err("--postgres-connect-timeout must be greater than 0".into());
        }
        let build = HnswBuild {
            m: self.postgres_hnsw_m,
            ef_construction: self.postgres_hnsw_ef_construction,
        }
        .check()
        .map_err(|e| format!("--postgres-hnsw-m / --postgres-hnsw-ef-construction: {e}"))?;
        if self.postgres_mirror_poll.is_zero() {
            return Err("--postgres-mirror-poll must be greater than 0".into());
        }
        if self.postgres_change_retention < Duration::from_secs(60) {
            return Err("--postgres-change-retention must be at least 1m".into());
        }
        let index = match (self.postgres_index, self.postgres_halfvec) {
            (PgIndex::None, _) => IndexKind::None,
            (PgIndex::Binary, _) => IndexKind::Binary,
            (PgIndex::Halfvec, _) | (PgIndex::Vector, true) => IndexKind::Halfvec,
            (PgIndex::Vector, false) => IndexKind::Vector,
        };
        Ok(StoreConfig::Postgres(PgConfig {
            url,
            password,
            pool_size: self.postgres_pool_size as usize,
            exact_below: usize::try_from(self.postgres_exact_below).unwrap_or(usize::MAX),
            connect_timeout: self.postgres_connect_timeout,
            ca_file: self.postgres_ca_file.clone(),
            halfvec: self.postgres_halfvec,
            ef_search: self.postgres_ef_search as usize,
            index,
            build,
            oversample: self.postgres_oversample as usize,
            statement_timeout: self.postgres_statement_timeout,
            lock_timeout: self.postgres_lock_timeout,
            mirror: MirrorConfig {
                max_items: usize::try_from(self.postgres_mirror_max_items).unwrap_or(usize::MAX),
                poll: self.postgres_mirror_poll,
                retention: self.postgres_change_retention,
                max_recent: self.postgres_mirror_max_recent as usize,
            },
        }))
    }
}
