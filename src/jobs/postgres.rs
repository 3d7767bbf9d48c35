//! The Batch API's files, batches and finished lines with `--store postgres`, shared by every
//! replica ([`crate::jobs::SharedStore`]):
//!
//! - `clip_batch_files (id, owner, seq, purpose, bytes, meta, content)`: uploads and the output
//!   and error files (content in `bytea`, so a file is bounded by `--batch-max-file-bytes` or
//!   `--batch-max-output-bytes`);
//! - `clip_batches (id, owner, seq, input_file_id, final, state, completed, failed, lease_owner,
//!   lease_until)`: a batch's state (its JSON), its line counts while it runs, and the lease of
//!   the replica working it. A replica claims runnable batches with `UPDATE .. WHERE id IN
//!   (SELECT .. WHERE NOT final AND lease_until < now() .. FOR UPDATE SKIP LOCKED) RETURNING`, so
//!   two replicas never claim one batch, and a dead replica's batch is claimable once its lease
//!   ran out;
//! - `clip_batch_lines (batch, idx, ok, line)`: one finished line's output line, inserted in the
//!   same statement that adds it to the batch's counts, only while the writer holds the lease,
//!   and never twice (`ON CONFLICT DO NOTHING` on (batch, idx)). Removed once the batch is
//!   final.
//!
//! JSON is kept as `text` (PostgreSQL's `jsonb` refuses `\u0000`, which clients may send).
//! Bounds per key are checked under a transaction-scoped advisory lock on the key, so replicas
//! uploading or creating batches for one key at once cannot pass a bound together. The tables are
//! created on first use (`CREATE .. IF NOT EXISTS` under an advisory lock), as
//! `postgres/usage.rs` does: they only add to the schema. (Beside the other features' PostgreSQL
//! stores, `classify/postgres.rs` and `retrieve/postgres.rs`: `postgres/` is plumbing below the
//! features and imports none of them.)

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use deadpool_postgres::tokio_postgres::{Row, Transaction};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::{Batch, BatchCheck, Change, FileCheck, FileMeta, SharedStore};
use crate::{
    common::ServiceError,
    postgres::{Conn, Pool, client, col, pg_error},
};

/// `pg_advisory_xact_lock` key that serializes creating the tables ("clipjobs").
const JOBS_LOCK: i64 = 0x636c_6970_6a6f_6273;

const CREATE: &str = "CREATE SEQUENCE IF NOT EXISTS clip_batch_seq;
    CREATE TABLE IF NOT EXISTS clip_batch_files (
        id text PRIMARY KEY,
        owner text NOT NULL,
        seq bigint NOT NULL DEFAULT nextval('clip_batch_seq'),
        purpose text NOT NULL,
        bytes bigint NOT NULL,
        meta text NOT NULL,
        content bytea NOT NULL);
    CREATE INDEX IF NOT EXISTS clip_batch_files_owner ON clip_batch_files (owner);
    CREATE TABLE IF NOT EXISTS clip_batches (
        id text PRIMARY KEY,
        owner text NOT NULL,
        seq bigint NOT NULL DEFAULT nextval('clip_batch_seq'),
        input_file_id text NOT NULL,
        final boolean NOT NULL,
        state text NOT NULL,
        completed bigint NOT NULL DEFAULT 0,
        failed bigint NOT NULL DEFAULT 0,
        lease_owner text,
        lease_until timestamptz NOT NULL DEFAULT '-infinity');
    CREATE INDEX IF NOT EXISTS clip_batches_owner ON clip_batches (owner);
    CREATE INDEX IF NOT EXISTS clip_batches_runnable ON clip_batches (seq) WHERE NOT final;
    CREATE TABLE IF NOT EXISTS clip_batch_lines (
        batch text NOT NULL,
        idx integer NOT NULL,
        ok boolean NOT NULL,
        line text NOT NULL,
        PRIMARY KEY (batch, idx));";

/// The lock of one key's files and batches.
const LOCK_OWNER: &str = "SELECT pg_advisory_xact_lock(hashtextextended('clip_batch:' || $1, 0))";

const BATCH_COLUMNS: &str = "seq, state, completed, failed";

/// Claims up to `$3` runnable batches, oldest first, for `$1` for `$2` seconds.
const CLAIM: &str = "UPDATE clip_batches
    SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
    WHERE id IN (SELECT id FROM clip_batches WHERE NOT final AND lease_until < now()
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED)
    RETURNING seq, state, completed, failed";

/// Stores line `$2` of batch `$1` and counts it, once, while `$5` holds the lease.
const WRITE_LINE: &str = "WITH held AS (
      SELECT id FROM clip_batches WHERE id = $1 AND lease_owner = $5 AND NOT final
        AND lease_until >= now() FOR UPDATE),
    ins AS (
      INSERT INTO clip_batch_lines (batch, idx, ok, line) SELECT $1, $2, $3, $4 FROM held
      ON CONFLICT (batch, idx) DO NOTHING RETURNING ok)
    UPDATE clip_batches SET completed = completed + (SELECT count(*) FROM ins WHERE ok),
      failed = failed + (SELECT count(*) FROM ins WHERE NOT ok)
    WHERE id IN (SELECT id FROM held) RETURNING id";

pub struct PgJobs {
    pool: Pool,
    created: OnceCell<()>,
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn corrupt(what: &str, e: serde_json::Error) -> ServiceError {
    tracing::error!(error = %e, what, "an unreadable Batch API record in PostgreSQL");
    ServiceError::Internal(format!(
        "a stored {what} could not be read; the server logged the details"
    ))
}

fn to_text<T: serde::Serialize>(what: &str, value: &T) -> Result<String, ServiceError> {
    serde_json::to_string(value).map_err(|e| corrupt(what, e))
}

fn lease_lost(id: &str) -> ServiceError {
    ServiceError::Aborted(format!(
        "this replica no longer holds the lease of batch {id:?}; another replica works it"
    ))
}

/// A batch from a row of [`BATCH_COLUMNS`]: while it runs, its counts are the row's.
fn batch_row(row: &Row) -> Result<Batch, ServiceError> {
    let state: String = col(row, "state")?;
    let mut batch: Batch = serde_json::from_str(&state).map_err(|e| corrupt("batch", e))?;
    batch.seq = unsigned(col(row, "seq")?);
    if !batch.status.is_final() {
        batch.request_counts.completed = unsigned(col(row, "completed")?);
        batch.request_counts.failed = unsigned(col(row, "failed")?);
    }
    Ok(batch)
}

fn file_row(row: &Row) -> Result<FileMeta, ServiceError> {
    let meta: String = col(row, "meta")?;
    let mut meta: FileMeta = serde_json::from_str(&meta).map_err(|e| corrupt("file", e))?;
    meta.seq = unsigned(col(row, "seq")?);
    Ok(meta)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgJobs {
    pub fn new(pool: Pool) -> Self {
        PgJobs {
            pool,
            created: OnceCell::new(),
        }
    }

    /// A connection, the tables created first (once per process).
    async fn conn(&self) -> Result<Conn, ServiceError> {
        self.created
            .get_or_try_init(|| async {
                let mut conn = client(&self.pool).await?;
                let result = async {
                    let txn = conn.transaction().await.map_err(pg_error)?;
                    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&JOBS_LOCK])
                        .await
                        .map_err(pg_error)?;
                    txn.batch_execute(CREATE).await.map_err(pg_error)?;
                    txn.commit().await.map_err(pg_error)
                }
                .await;
                conn.done(result)
            })
            .await?;
        client(&self.pool).await
    }

    async fn upsert_file(
        txn: &Transaction<'_>,
        meta: &FileMeta,
        content: &[u8],
    ) -> Result<u64, ServiceError> {
        let row = txn
            .query_one(
                "INSERT INTO clip_batch_files (id, owner, purpose, bytes, meta, content)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET bytes = EXCLUDED.bytes, meta = EXCLUDED.meta,
                   content = EXCLUDED.content
                 RETURNING seq",
                &[
                    &meta.id,
                    &meta.owner,
                    &meta.purpose,
                    &signed(meta.bytes),
                    &to_text("file", meta)?,
                    &content,
                ],
            )
            .await
            .map_err(pg_error)?;
        Ok(unsigned(col(&row, "seq")?))
    }
}

#[async_trait::async_trait]
impl SharedStore for PgJobs {
    async fn create_file(
        &self,
        meta: &FileMeta,
        content: Bytes,
        check: FileCheck<'_>,
    ) -> Result<FileMeta, ServiceError> {
        let mut conn = self.conn().await?;
        let result = async {
            let txn = conn.transaction().await.map_err(pg_error)?;
            txn.execute(LOCK_OWNER, &[&meta.owner])
                .await
                .map_err(pg_error)?;
            let row = txn
                .query_one(
                    "SELECT count(*) AS n, coalesce(sum(bytes), 0)::bigint AS bytes
                     FROM clip_batch_files WHERE owner = $1 AND purpose = 'batch'",
                    &[&meta.owner],
                )
                .await
                .map_err(pg_error)?;
            let count = usize::try_from(col::<i64>(&row, "n")?).unwrap_or(usize::MAX);
            check(count, unsigned(col(&row, "bytes")?))?;
            let seq = Self::upsert_file(&txn, meta, &content).await?;
            txn.commit().await.map_err(pg_error)?;
            Ok(FileMeta {
                seq,
                ..meta.clone()
            })
        }
        .await;
        conn.done(result)
    }

    async fn list_files(&self, owner: &str) -> Result<Vec<FileMeta>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let rows = conn
                .query(
                    "SELECT seq, meta FROM clip_batch_files WHERE owner = $1",
                    &[&owner],
                )
                .await
                .map_err(pg_error)?;
            rows.iter().map(file_row).collect()
        }
        .await;
        conn.done(result)
    }

    async fn get_file(&self, id: &str) -> Result<Option<FileMeta>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let row = conn
                .query_opt(
                    "SELECT seq, meta FROM clip_batch_files WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            row.as_ref().map(file_row).transpose()
        }
        .await;
        conn.done(result)
    }

    async fn file_content(&self, id: &str) -> Result<Option<Bytes>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let row = conn
                .query_opt("SELECT content FROM clip_batch_files WHERE id = $1", &[&id])
                .await
                .map_err(pg_error)?;
            row.map(|r| col::<Vec<u8>>(&r, "content").map(Bytes::from))
                .transpose()
        }
        .await;
        conn.done(result)
    }

    async fn delete_file(&self, owner: &str, id: &str) -> Result<bool, ServiceError> {
        let mut conn = self.conn().await?;
        let result = async {
            let txn = conn.transaction().await.map_err(pg_error)?;
            txn.execute(LOCK_OWNER, &[&owner]).await.map_err(pg_error)?;
            let used = txn
                .query_opt(
                    "SELECT 1 FROM clip_batches WHERE input_file_id = $1 AND NOT final LIMIT 1",
                    &[&id],
                )
                .await
                .map_err(pg_error)?;
            if used.is_some() {
                return Err(super::file_in_use(id));
            }
            let deleted = txn
                .execute(
                    "DELETE FROM clip_batch_files WHERE id = $1 AND owner = $2",
                    &[&id, &owner],
                )
                .await
                .map_err(pg_error)?;
            txn.commit().await.map_err(pg_error)?;
            Ok(deleted > 0)
        }
        .await;
        conn.done(result)
    }

    async fn create_batch(
        &self,
        batch: &Batch,
        check: BatchCheck<'_>,
    ) -> Result<Batch, ServiceError> {
        let mut conn = self.conn().await?;
        let result = async {
            let txn = conn.transaction().await.map_err(pg_error)?;
            txn.execute(LOCK_OWNER, &[&batch.owner])
                .await
                .map_err(pg_error)?;
            let input = txn
                .query_opt(
                    "SELECT 1 FROM clip_batch_files WHERE id = $1 AND owner = $2",
                    &[&batch.input_file_id, &batch.owner],
                )
                .await
                .map_err(pg_error)?;
            if input.is_none() {
                return Err(ServiceError::NotFound(format!(
                    "input_file_id: no file with id {:?}",
                    batch.input_file_id
                )));
            }
            let row = txn
                .query_one(
                    "SELECT count(*) AS n FROM clip_batches WHERE owner = $1 AND NOT final",
                    &[&batch.owner],
                )
                .await
                .map_err(pg_error)?;
            check(usize::try_from(col::<i64>(&row, "n")?).unwrap_or(usize::MAX))?;
            let row = txn
                .query_one(
                    "INSERT INTO clip_batches (id, owner, input_file_id, final, state)
                     VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                    &[
                        &batch.id,
                        &batch.owner,
                        &batch.input_file_id,
                        &batch.status.is_final(),
                        &to_text("batch", batch)?,
                    ],
                )
                .await
                .map_err(pg_error)?;
            let seq = unsigned(col(&row, "seq")?);
            txn.commit().await.map_err(pg_error)?;
            Ok(Batch {
                seq,
                ..batch.clone()
            })
        }
        .await;
        conn.done(result)
    }

    async fn list_batches(&self, owner: &str) -> Result<Vec<Batch>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let sql = format!("SELECT {BATCH_COLUMNS} FROM clip_batches WHERE owner = $1");
            let rows = conn.query(&sql, &[&owner]).await.map_err(pg_error)?;
            rows.iter().map(batch_row).collect()
        }
        .await;
        conn.done(result)
    }

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let sql = format!("SELECT {BATCH_COLUMNS} FROM clip_batches WHERE id = $1");
            let row = conn.query_opt(&sql, &[&id]).await.map_err(pg_error)?;
            row.as_ref().map(batch_row).transpose()
        }
        .await;
        conn.done(result)
    }

    async fn update_batch(
        &self,
        id: &str,
        lease_owner: Option<&str>,
        change: Change<'_>,
    ) -> Result<Option<Batch>, ServiceError> {
        let mut conn = self.conn().await?;
        let result = async {
            let txn = conn.transaction().await.map_err(pg_error)?;
            let sql = format!(
                "SELECT {BATCH_COLUMNS}, lease_owner, lease_until >= now() AS held
                 FROM clip_batches WHERE id = $1 FOR UPDATE"
            );
            let Some(row) = txn.query_opt(&sql, &[&id]).await.map_err(pg_error)? else {
                return Ok(None);
            };
            if let Some(me) = lease_owner {
                let holder: Option<String> = col(&row, "lease_owner")?;
                if holder.as_deref() != Some(me) || !col::<bool>(&row, "held")? {
                    return Err(lease_lost(id));
                }
            }
            let mut batch = batch_row(&row)?;
            if change(&mut batch)? {
                txn.execute(
                    "UPDATE clip_batches SET state = $2, final = $3 WHERE id = $1",
                    &[&id, &to_text("batch", &batch)?, &batch.status.is_final()],
                )
                .await
                .map_err(pg_error)?;
                txn.commit().await.map_err(pg_error)?;
            }
            Ok(Some(batch))
        }
        .await;
        conn.done(result)
    }

    async fn claim(
        &self,
        replica: &str,
        lease: Duration,
        n: usize,
    ) -> Result<Vec<Batch>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let limit = i64::try_from(n).unwrap_or(i64::MAX);
            let rows = conn
                .query(CLAIM, &[&replica, &secs(lease), &limit])
                .await
                .map_err(pg_error)?;
            let mut batches = rows.iter().map(batch_row).collect::<Result<Vec<_>, _>>()?;
            batches.sort_by_key(|b| b.seq);
            Ok(batches)
        }
        .await;
        conn.done(result)
    }

    async fn renew(
        &self,
        replica: &str,
        id: &str,
        lease: Duration,
    ) -> Result<Option<Batch>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let row = conn
                .query_opt(
                    "UPDATE clip_batches SET lease_until = now() + make_interval(secs => $3)
                     WHERE id = $1 AND lease_owner = $2 AND lease_until >= now() AND NOT final
                     RETURNING seq, state, completed, failed",
                    &[&id, &replica, &secs(lease)],
                )
                .await
                .map_err(pg_error)?;
            row.as_ref().map(batch_row).transpose()
        }
        .await;
        conn.done(result)
    }

    async fn release(&self, replica: &str, id: &str) -> Result<(), ServiceError> {
        let conn = self.conn().await?;
        let result = conn
            .execute(
                "UPDATE clip_batches SET lease_until = '-infinity'
                 WHERE id = $1 AND lease_owner = $2",
                &[&id, &replica],
            )
            .await
            .map(drop)
            .map_err(pg_error);
        conn.done(result)
    }

    async fn write_line(
        &self,
        replica: &str,
        batch: &str,
        index: usize,
        ok: bool,
        line: &Value,
    ) -> Result<(), ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let index = i32::try_from(index)
                .map_err(|_| ServiceError::Internal("a batch line index past i32".into()))?;
            let text = to_text("line", line)?;
            let row = conn
                .query_opt(WRITE_LINE, &[&batch, &index, &ok, &text, &replica])
                .await
                .map_err(pg_error)?;
            row.map(drop).ok_or_else(|| lease_lost(batch))
        }
        .await;
        conn.done(result)
    }

    async fn line_index(&self, batch: &str) -> Result<BTreeMap<usize, (bool, u64)>, ServiceError> {
        let conn = self.conn().await?;
        let result = async {
            let rows = conn
                .query(
                    "SELECT idx, ok, octet_length(line)::bigint AS bytes
                     FROM clip_batch_lines WHERE batch = $1",
                    &[&batch],
                )
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    let index = usize::try_from(col::<i32>(r, "idx")?).unwrap_or(usize::MAX);
                    Ok((index, (col(r, "ok")?, unsigned(col(r, "bytes")?))))
                })
                .collect()
        }
        .await;
        conn.done(result)
    }

    async fn assemble(
        &self,
        replica: &str,
        batch: &str,
        output: &mut FileMeta,
        errors: &mut FileMeta,
        extra_errors: &[Value],
    ) -> Result<(u64, u64), ServiceError> {
        let mut conn = self.conn().await?;
        let result = async {
            let rows = conn
                .query(
                    "SELECT ok, line FROM clip_batch_lines WHERE batch = $1 ORDER BY idx",
                    &[&batch],
                )
                .await
                .map_err(pg_error)?;
            let mut contents = [Vec::new(), Vec::new()];
            for row in &rows {
                let ok: bool = col(row, "ok")?;
                let line: &str = col(row, "line")?;
                let out = &mut contents[usize::from(!ok)];
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
            for line in extra_errors {
                contents[1].extend_from_slice(to_text("line", line)?.as_bytes());
                contents[1].push(b'\n');
            }
            let txn = conn.transaction().await.map_err(pg_error)?;
            let held = txn
                .query_opt(
                    "SELECT 1 FROM clip_batches WHERE id = $1 AND lease_owner = $2
                       AND lease_until >= now() FOR UPDATE",
                    &[&batch, &replica],
                )
                .await
                .map_err(pg_error)?;
            if held.is_none() {
                return Err(lease_lost(batch));
            }
            for (meta, content) in [&mut *output, &mut *errors].into_iter().zip(&contents) {
                if content.is_empty() {
                    continue;
                }
                meta.bytes = content.len() as u64;
                meta.seq = Self::upsert_file(&txn, meta, content).await?;
            }
            txn.commit().await.map_err(pg_error)?;
            Ok((contents[0].len() as u64, contents[1].len() as u64))
        }
        .await;
        conn.done(result)
    }

    async fn remove_lines(&self, batch: &str) -> Result<(), ServiceError> {
        let conn = self.conn().await?;
        let result = conn
            .execute("DELETE FROM clip_batch_lines WHERE batch = $1", &[&batch])
            .await
            .map(drop)
            .map_err(pg_error);
        conn.done(result)
    }
}
