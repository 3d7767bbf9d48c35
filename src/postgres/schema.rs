//! The PostgreSQL schema, created and migrated at start-up: versioned (`clip_schema_migrations`),
//! idempotent, and safe when several replicas start at once (every migration runs under one
//! transaction-scoped advisory lock, so a second replica waits, then finds the work done).
//!
//! Tables:
//! - `clip_collections`: one row per collection: name (key), the incarnation id (a UUID; a
//!   collection deleted and created again gets a new one), dimension, model, item count, whether
//!   it has an HNSW index. Writers lock their collection's row (`FOR UPDATE`), so a write and a
//!   DeleteCollection of the same collection are serialized, and the count stays exact.
//! - `clip_items_<id>`: one table per collection, named by its incarnation id: `id text` key,
//!   `embedding vector(dim)` with an HNSW index (cosine; dimensions up to 2000), `metadata jsonb`
//!   with a GIN index (`jsonb_path_ops`, for `@>` filters).
//!   Statement-level triggers log each written item id into `clip_item_changes` (with the
//!   writing transaction's id), which replicas' in-memory search mirrors follow.
//! - `clip_label_sets`: client-created label set definitions (name, JSON spec, its prompt count).
//! - `clip_label_sets_version`: one row, a number a trigger on `clip_label_sets` bumps with every
//!   change (by any replica, of any version), so replicas notice changes by reading one number each
//!   second instead of every definition.
//!
//! # Rolling upgrades: the compatibility rule
//!
//! During a rolling upgrade old and new replicas serve from one database at once, and the newest
//! migrates it first. So:
//! - A migration only adds: tables, columns (nullable or with a default, so an old replica's
//!   `INSERT` that does not name them still works), indexes, triggers, functions. It never drops,
//!   renames or retypes what an older replica reads or writes, nor adds a constraint its writes
//!   would break.
//! - Each migration records `min_reader`: the oldest schema version whose servers still work
//!   against a database with it applied (for an additive migration, the version before it).
//!   A server that finds a database newer than it knows starts (and migrates nothing) when every
//!   newer migration's `min_reader` is at most its own version; otherwise it refuses.
//! - Removing something is two releases: stop using it, then (once no replica that reads it can
//!   be running) a migration that drops it with `min_reader` past the versions that read it.
//! - Servers from before `min_reader` (schema 1 and 2) refuse any newer schema at start-up; once
//!   migrated they keep serving, but restart only as the new version.

use deadpool_postgres::tokio_postgres::Client;

/// `pg_advisory_xact_lock` key of schema migrations ("clipmigr").
const MIGRATION_LOCK: i64 = 0x636c_6970_6d69_6772;
/// `pg_advisory_xact_lock` key that serializes creating and deleting collections ("clipcoll").
pub const ADMIN_LOCK: i64 = 0x636c_6970_636f_6c6c;
/// `pg_advisory_xact_lock` key that serializes creating label sets ("cliplabl").
pub const LABEL_SET_LOCK: i64 = 0x636c_6970_6c61_626c;

/// One schema version: its statements and the oldest schema version that still works with it.
pub struct Migration {
    pub version: i32,
    /// The oldest schema version whose servers work against a database with this applied.
    pub min_reader: i32,
    pub sql: &'static str,
}

/// Each version's statements, applied in order, each once. Follow the rule in the module doc:
/// additive only.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        min_reader: 1,
        sql: "CREATE EXTENSION IF NOT EXISTS vector;
     CREATE TABLE clip_collections (
         name text PRIMARY KEY,
         id text NOT NULL UNIQUE,
         dimension integer NOT NULL,
         model text NOT NULL,
         count bigint NOT NULL DEFAULT 0,
         indexed boolean NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE clip_label_sets (
         name text PRIMARY KEY,
         spec jsonb NOT NULL,
         prompts integer NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now()
     );",
    },
    // How a collection's vectors are indexed: 'vector' (HNSW over the stored vectors),
    // 'halfvec' (HNSW over them cast to half precision), 'none' (searched exactly). (It made a
    // schema-1 server's INSERT fail: before the rule above.)
    Migration {
        version: 2,
        min_reader: 2,
        sql: "ALTER TABLE clip_collections ADD COLUMN index_kind text;
         UPDATE clip_collections SET index_kind = CASE WHEN indexed THEN 'vector' ELSE 'none' END;
         ALTER TABLE clip_collections ALTER COLUMN index_kind SET NOT NULL;",
    },
    // Each migration's `min_reader`, and the label sets' change counter (bumped by a trigger, so
    // schema-2 servers' writes bump it too). Additive: schema-2 servers keep working.
    Migration {
        version: 3,
        min_reader: 2,
        sql: "ALTER TABLE clip_schema_migrations ADD COLUMN IF NOT EXISTS min_reader integer;
         UPDATE clip_schema_migrations SET min_reader = version WHERE min_reader IS NULL;
         CREATE TABLE IF NOT EXISTS clip_label_sets_version (
             one boolean PRIMARY KEY DEFAULT true CHECK (one),
             version bigint NOT NULL
         );
         INSERT INTO clip_label_sets_version (one, version) VALUES (true, 1) ON CONFLICT DO NOTHING;
         CREATE OR REPLACE FUNCTION clip_label_sets_bump() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             UPDATE clip_label_sets_version SET version = version + 1;
             RETURN NULL;
         END $$;
         CREATE OR REPLACE TRIGGER clip_label_sets_changed
             AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON clip_label_sets
             FOR EACH STATEMENT EXECUTE FUNCTION clip_label_sets_bump();",
    },
    // The centre a 'binary' index's sign bits are taken around (a `vector` literal, frozen into
    // the index expression; NULL: uncentred). Additive: schema-2 and -3 servers keep working
    // (they read a 'binary' collection's index_kind as none and search it exactly).
    Migration {
        version: 4,
        min_reader: 2,
        sql: "ALTER TABLE clip_collections ADD COLUMN IF NOT EXISTS index_centre text;",
    },
    // The item change log that replicas' in-memory mirrors follow (`retrieve::postgres::mirror`):
    // one row per item written, by statement-level triggers on each item table (so writes of
    // any server version, and of plain SQL, are logged), stamped with the writing transaction's
    // id. An item NULL: the table was truncated. And each collection's own settings (`options`,
    // CreateCollection's HNSW build and recall target; NULL: none). Additive: older servers keep
    // working (their writes fire the triggers of tables that have them).
    Migration {
        version: 5,
        min_reader: 2,
        sql: "CREATE TABLE IF NOT EXISTS clip_item_changes (
             collection text NOT NULL,
             item text,
             xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
             at timestamptz NOT NULL DEFAULT clock_timestamp()
         );
         CREATE INDEX IF NOT EXISTS clip_item_changes_collection_xid
             ON clip_item_changes (collection, xid);
         CREATE INDEX IF NOT EXISTS clip_item_changes_at ON clip_item_changes (at);
         ALTER TABLE clip_collections ADD COLUMN IF NOT EXISTS options jsonb;
         CREATE OR REPLACE FUNCTION clip_items_changed() RETURNS trigger LANGUAGE plpgsql
             SET search_path FROM CURRENT AS $$
         BEGIN
             IF TG_OP = 'INSERT' THEN
                 INSERT INTO clip_item_changes (collection, item) SELECT TG_ARGV[0], id FROM clip_new;
             ELSIF TG_OP = 'UPDATE' THEN
                 INSERT INTO clip_item_changes (collection, item)
                     SELECT TG_ARGV[0], id FROM (SELECT id FROM clip_new UNION SELECT id FROM clip_old) u;
             ELSIF TG_OP = 'DELETE' THEN
                 INSERT INTO clip_item_changes (collection, item) SELECT TG_ARGV[0], id FROM clip_old;
             ELSE
                 INSERT INTO clip_item_changes (collection, item) VALUES (TG_ARGV[0], NULL);
             END IF;
             RETURN NULL;
         END $$;",
    },
];

/// The triggers that log every change of item table `table` into `clip_item_changes` (keyed by
/// the table's name): one per event, since a trigger with transition tables takes one event.
/// Idempotent (dropped if present, then created: `CREATE OR REPLACE TRIGGER` needs PostgreSQL 14).
pub fn change_triggers(table: &str) -> String {
    let mut sql = String::new();
    for (event, referencing) in [
        ("insert", "REFERENCING NEW TABLE AS clip_new"),
        (
            "update",
            "REFERENCING OLD TABLE AS clip_old NEW TABLE AS clip_new",
        ),
        ("delete", "REFERENCING OLD TABLE AS clip_old"),
        ("truncate", ""),
    ] {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS clip_changed_{event} ON {table};
             CREATE TRIGGER clip_changed_{event} AFTER {event} ON {table} {referencing}
                 FOR EACH STATEMENT EXECUTE FUNCTION clip_items_changed('{table}');"
        ));
    }
    sql
}

/// How many of [`change_triggers`] a table has (4: all).
pub const CHANGE_TRIGGERS: i64 = 4;

/// The first version whose `clip_schema_migrations` has `min_reader`.
const MIN_READER_SINCE: i32 = 3;

/// The newest schema version this server knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Brings the schema to [`latest`]; returns the version it found. A database migrated by a newer
/// server is left alone: this one starts when the newer migrations say it still works with them
/// (`min_reader`, see the module doc), and is refused otherwise.
pub async fn migrate(client: &mut Client) -> Result<i32, MigrateError> {
    migrate_to(client, latest()).await
}

/// [`migrate`] as a server that knows the schema up to `known` (tests: an older replica).
pub async fn migrate_to(client: &mut Client, known: i32) -> Result<i32, MigrateError> {
    let tx = client.transaction().await?;
    // Migrations may take long (indexes); waiting for another replica's migration lock is bounded
    // by the session's lock_timeout, and the caller retries.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS clip_schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM clip_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if found > known {
        // A migration recorded without `min_reader` (by a server before it) needs its own version.
        let needs: i32 = if found >= MIN_READER_SINCE {
            tx.query_one(
                "SELECT coalesce(max(coalesce(min_reader, version)), 0)
                 FROM clip_schema_migrations WHERE version > $1",
                &[&known],
            )
            .await?
            .try_get(0)?
        } else {
            found
        };
        if needs > known {
            return Err(MigrateError::Newer { found, known });
        }
        tracing::info!(
            found,
            known,
            needs,
            "the PostgreSQL schema is newer than this server knows, and compatible with it"
        );
        tx.commit().await?;
        return Ok(found);
    }
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > found && m.version <= known)
    {
        tx.batch_execute(m.sql).await?;
        if m.version >= MIN_READER_SINCE {
            tx.execute(
                "INSERT INTO clip_schema_migrations (version, min_reader) VALUES ($1, $2)",
                &[&m.version, &m.min_reader],
            )
            .await?;
        } else {
            tx.execute(
                "INSERT INTO clip_schema_migrations (version) VALUES ($1)",
                &[&m.version],
            )
            .await?;
        }
        tracing::info!(version = m.version, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(found)
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "the database's clip-serve schema is version {found}, newer than this server knows ({known}); run a newer clip-serve"
    )]
    Newer { found: i32, known: i32 },
    #[error("{0}")]
    Pg(#[from] deadpool_postgres::tokio_postgres::Error),
}

/// The item table of the collection incarnation `id` (a UUID: only its hex digits are used).
pub fn items_table(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("clip_items_{hex}")
}

/// How a collection's vectors are indexed (`clip_collections.index_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    /// Searched exactly (dimensions HNSW cannot index).
    None,
    /// HNSW over the stored `vector`s (up to 2000 dimensions).
    Vector,
    /// HNSW over the vectors cast to `halfvec` (half the index size; up to 4000 dimensions); the
    /// stored vectors, and the scores, stay full precision.
    Halfvec,
    /// HNSW over the vectors' sign bits (`binary_quantize`, Hamming distance; optionally around a
    /// centre frozen in the expression, see [`Centre`]): a shortlist of `k` x oversample from the
    /// index, re-ranked by the exact cosine of the stored vectors in the same query.
    Binary,
}

/// The build parameters of a collection's HNSW index (pgvector's `m` and `ef_construction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswBuild {
    pub m: u32,
    pub ef_construction: u32,
}

impl Default for HnswBuild {
    /// pgvector's own defaults.
    fn default() -> Self {
        HnswBuild {
            m: 16,
            ef_construction: 64,
        }
    }
}

impl HnswBuild {
    /// pgvector's bounds: `m` 2-100, `ef_construction` 4-1000 and at least 2 x `m`.
    pub fn check(self) -> Result<Self, String> {
        if !(2..=100).contains(&self.m) {
            return Err(format!("HNSW m {} is outside 2-100", self.m));
        }
        if !(4..=1000).contains(&self.ef_construction) || self.ef_construction < 2 * self.m {
            return Err(format!(
                "HNSW ef_construction {} is outside 4-1000 or under 2 x m ({})",
                self.ef_construction,
                2 * self.m
            ));
        }
        Ok(self)
    }

    fn with(self) -> String {
        format!(
            " WITH (m = {}, ef_construction = {})",
            self.m, self.ef_construction
        )
    }
}

/// The centre a binary index's sign bits are taken around, as a `vector` literal (`[0.1,...]`),
/// or none. CLIP's vectors sit in a narrow cone, so their raw sign bits mostly agree; around the
/// collection's mean they split.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Centre(Option<String>);

impl Centre {
    /// The literal of `mean` (finite components only; anything else is no centre).
    pub fn of(mean: &[f32]) -> Self {
        if mean.is_empty() || mean.iter().any(|x| !x.is_finite()) {
            return Centre(None);
        }
        let parts: Vec<String> = mean.iter().map(|x| format!("{x:?}")).collect();
        Centre(Some(format!("[{}]", parts.join(","))))
    }

    /// As stored in `clip_collections.index_centre`: only a well-formed literal of numbers is
    /// kept (it is spliced into SQL).
    pub fn parse(stored: Option<String>) -> Self {
        Centre(stored.filter(|s| {
            s.starts_with('[')
                && s.ends_with(']')
                && s.len() > 2
                && s.chars().all(|c| {
                    c.is_ascii_digit() || matches!(c, '[' | ']' | ',' | '.' | '-' | 'e' | 'E' | '+')
                })
        }))
    }

    pub fn literal(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// `value`, minus the centre if any (SQL).
    fn around(&self, value: &str) -> String {
        match &self.0 {
            Some(c) => format!("{value} - '{c}'::vector"),
            None => value.to_string(),
        }
    }
}

impl IndexKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::None => "none",
            IndexKind::Vector => "vector",
            IndexKind::Halfvec => "halfvec",
            IndexKind::Binary => "binary",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "vector" => IndexKind::Vector,
            "halfvec" => IndexKind::Halfvec,
            "binary" => IndexKind::Binary,
            _ => IndexKind::None,
        }
    }

    /// What a search orders by so that the index serves it (`$1` is the query `vector`).
    pub fn order_by(self, dimension: usize, centre: &Centre) -> String {
        match self {
            IndexKind::Halfvec => {
                format!("embedding::halfvec({dimension}) <=> $1::vector::halfvec({dimension})")
            }
            IndexKind::Binary => format!(
                "{} <~> binary_quantize({})::bit({dimension})",
                binary_expression(dimension, centre),
                centre.around("$1::vector")
            ),
            IndexKind::None | IndexKind::Vector => "embedding <=> $1".into(),
        }
    }
}

/// The indexed expression of a binary index (also what its searches order by).
fn binary_expression(dimension: usize, centre: &Centre) -> String {
    format!(
        "(binary_quantize({})::bit({dimension}))",
        centre.around("embedding")
    )
}

/// The statement creating the HNSW index of `table` (named `{table}_hnsw`), if `index` has one.
pub fn create_index(
    table: &str,
    dimension: usize,
    index: IndexKind,
    build: HnswBuild,
    centre: &Centre,
) -> String {
    let with = build.with();
    match index {
        IndexKind::None => String::new(),
        IndexKind::Vector => {
            format!(
                "CREATE INDEX {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops){with};"
            )
        }
        IndexKind::Halfvec => format!(
            "CREATE INDEX {table}_hnsw ON {table}
                 USING hnsw ((embedding::halfvec({dimension})) halfvec_cosine_ops){with};"
        ),
        IndexKind::Binary => format!(
            "CREATE INDEX {table}_hnsw ON {table}
                 USING hnsw ({} bit_hamming_ops){with};",
            binary_expression(dimension, centre)
        ),
    }
}

/// The statements creating a collection's item table and its indexes.
pub fn create_items_table(
    table: &str,
    dimension: usize,
    index: IndexKind,
    build: HnswBuild,
) -> String {
    let mut sql = format!(
        "CREATE TABLE {table} (
             id text PRIMARY KEY,
             embedding vector({dimension}) NOT NULL,
             metadata jsonb NOT NULL
         );
         CREATE INDEX {table}_metadata ON {table} USING gin (metadata jsonb_path_ops);"
    );
    sql.push_str(&change_triggers(table));
    sql.push_str(&create_index(
        table,
        dimension,
        index,
        build,
        &Centre::default(),
    ));
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_the_ids_hex_digits() {
        assert_eq!(
            items_table("6f1c-2a;DROP TABLE x"),
            "clip_items_6f1c2adroptablex"
        );
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        // A migration is read by servers of its own version at least; additive ones by the
        // previous version's too.
        assert!(MIGRATIONS.iter().all(|m| m.min_reader <= m.version));
        assert_eq!(latest(), 5);
        assert_eq!(MIGRATIONS[2].min_reader, 2);
        assert_eq!(MIGRATIONS[3].min_reader, 2);
        assert_eq!(MIGRATIONS[4].min_reader, 2);
    }

    #[test]
    fn index_statements_carry_the_build_parameters_and_the_centre() {
        let build = HnswBuild {
            m: 24,
            ef_construction: 200,
        };
        let sql = create_index("t", 4, IndexKind::Vector, build, &Centre::default());
        assert!(
            sql.contains("WITH (m = 24, ef_construction = 200)"),
            "{sql}"
        );
        let centre = Centre::of(&[0.5, -0.25, 0.0, 1e-3]);
        assert_eq!(centre.literal(), Some("[0.5,-0.25,0.0,0.001]"));
        let sql = create_index("t", 4, IndexKind::Binary, build, &centre);
        assert!(
            sql.contains("binary_quantize(embedding - '[0.5,-0.25,0.0,0.001]'::vector)::bit(4)"),
            "{sql}"
        );
        // What a search orders by names the same expression, so the index serves it.
        assert!(IndexKind::Binary.order_by(4, &centre).starts_with(
            "(binary_quantize(embedding - '[0.5,-0.25,0.0,0.001]'::vector)::bit(4)) <~>"
        ));
        assert_eq!(
            Centre::parse(Some("[1,2]'; DROP".into())),
            Centre::default()
        );
        assert_eq!(Centre::parse(centre.literal().map(String::from)), centre);
        assert!(
            HnswBuild {
                m: 16,
                ef_construction: 20
            }
            .check()
            .is_err()
        );
        assert!(
            HnswBuild {
                m: 1,
                ef_construction: 64
            }
            .check()
            .is_err()
        );
        assert!(HnswBuild::default().check().is_ok());
        assert_eq!(IndexKind::parse("binary"), IndexKind::Binary);
    }
}
