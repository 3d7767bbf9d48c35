//! The mirrors' SQL: a build from scratch, a poll of the change log, the log's pruning (see the
//! parent module for why it is exact).

use std::{collections::HashMap, sync::PoisonError, time::Instant};

use deadpool_postgres::tokio_postgres::{IsolationLevel, types::ToSql};
use pgvector::{Bit, Vector};
use tokio_stream::StreamExt;

use super::{Codes, Mirror};
use crate::{
    common::ServiceError,
    postgres::{Pool, col, pg_error, schema},
};

fn params<'a>(
    p: &'a [&'a (dyn ToSql + Sync)],
) -> impl ExactSizeIterator<Item = &'a dyn ToSql> + 'a {
    p.iter().map(|p| *p as &dyn ToSql)
}

/// Codes of `table` as PostgreSQL computes them: sign bits of the unit vector minus `$1`.
fn codes_sql(table: &str, rest: &str) -> String {
    format!("SELECT id, binary_quantize(l2_normalize(embedding) - $1) AS code FROM {table} {rest}")
}

/// `item`s of the change-log rows of collection `$c` made by transactions that snapshot `$s` (a
/// `pg_snapshot` as text; `snapshot` is the same, read here) does not see: begun after it was
/// taken (xid at or past its xmax) or running then (its in-progress list, written into the
/// statement as constants, usually none), at most `$l` of each. Exactly the complement of what it
/// sees, and each part walks the (collection, xid) index even as a generic plan (a cached
/// prepared statement): one OR, or an `ANY` of the list read in the statement, made PostgreSQL
/// scan the whole log (134 ms at a million rows). A long transaction elsewhere in the cluster
/// (which holds every snapshot's xmin back) does not make each read walk the log since it began.
pub(super) fn unseen_items(snapshot: &str, c: usize, s: usize, l: usize) -> String {
    let mut sql = format!(
        "(SELECT item FROM clip_item_changes
          WHERE collection = ${c} AND xid >= pg_snapshot_xmax(${s}::text::pg_snapshot) LIMIT ${l})"
    );
    let running = xip_of(snapshot);
    if !running.is_empty() {
        let list: Vec<String> = running.iter().map(|x| format!("'{x}'")).collect();
        sql.push_str(&format!(
            " UNION ALL (SELECT item FROM clip_item_changes
              WHERE collection = ${c} AND xid IN ({}) LIMIT ${l})",
            list.join(",")
        ));
    }
    sql
}

/// The in-progress transaction ids of a `pg_snapshot`'s text form (`xmin:xmax:xip,...`), as
/// numbers (nothing else ever reaches a statement).
pub(super) fn xip_of(snapshot: &str) -> Vec<u64> {
    snapshot
        .split(':')
        .nth(2)
        .map(|list| list.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// A read-only REPEATABLE READ transaction on `conn` (after `settings`, `SET LOCAL` statements
/// or nothing) and its snapshot, as text: everything it reads holds as of that snapshot.
async fn snapshot_tx<'a>(
    conn: &'a mut deadpool_postgres::ClientWrapper,
    settings: &str,
) -> Result<(deadpool_postgres::Transaction<'a>, String), ServiceError> {
    let tx = conn
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)?;
    if !settings.is_empty() {
        tx.batch_execute(settings).await.map_err(pg_error)?;
    }
    // The first query takes the transaction's snapshot (SET takes none).
    let row = tx
        .query_one("SELECT pg_current_snapshot()::text AS s", &[])
        .await
        .map_err(pg_error)?;
    let snapshot = col(&row, "s")?;
    Ok((tx, snapshot))
}

/// The xmax of a `pg_snapshot`'s text form (`xmin:xmax:xip,...`).
fn xmax_of(snapshot: &str) -> Option<u64> {
    snapshot.split(':').nth(1)?.parse().ok()
}

/// Builds the codes of `table` (`dim`-dimensional, about `count` items) from scratch, at most
/// `limit` items (more: an error, the collection stays unmirrored; the query asks for one more
/// row than that, so PostgreSQL never streams the rest of a table that does not fit). Installs
/// the change triggers first when the table lacks them (made by an older server).
pub(super) async fn build(
    pool: &Pool,
    table: &str,
    dim: usize,
    count: usize,
    limit: usize,
    generation: u64,
) -> Result<Codes, ServiceError> {
    let mut conn = crate::postgres::client(pool).await?;
    let built = async {
        let present: i64 = conn
            .query_one(
                "SELECT count(*) AS n FROM pg_trigger
                 WHERE tgrelid = $1::text::regclass AND tgname LIKE 'clip_changed_%'",
                &[&table],
            )
            .await
            .map_err(pg_error)?
            .try_get("n")
            .map_err(pg_error)?;
        if present < schema::CHANGE_TRIGGERS {
            conn.batch_execute(&schema::change_triggers(table))
                .await
                .map_err(pg_error)?;
        }
        // A build reads the whole table: no statement timeout.
        let (tx, snapshot) = snapshot_tx(&mut conn, "SET LOCAL statement_timeout = 0").await?;
        let centre: Option<Vector> = col(
            &tx.query_one(
                &format!("SELECT avg(l2_normalize(embedding)) AS c FROM {table}"),
                &[],
            )
            .await
            .map_err(pg_error)?,
            "c",
        )?;
        let centre = centre.unwrap_or_else(|| Vector::from(vec![0.0; dim]));
        let mut codes = Codes::new(dim, centre.clone(), snapshot, generation);
        codes.reserve(count.min(limit));
        let stmt = tx
            .prepare(&codes_sql(table, "LIMIT $2"))
            .await
            .map_err(pg_error)?;
        let most = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = tx
            .query_raw(&stmt, params(&[&centre, &most]))
            .await
            .map_err(pg_error)?;
        tokio::pin!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(pg_error)?;
            let id: String = col(&row, "id")?;
            let bits: Bit = col(&row, "code")?;
            codes.put(&id, &bits);
        }
        if codes.slots.len() > limit {
            return Err(ServiceError::ResourceExhausted(format!(
                "{table} holds more than the {limit} items left under --postgres-mirror-max-items"
            )));
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(codes)
    }
    .await;
    conn.done(built)
}

/// What one poll of a mirror found.
pub(super) enum Polled {
    /// The changes were applied (how many).
    Applied(usize),
    /// Build it again: the table was truncated, more items changed than `--postgres-mirror-max-
    /// recent` (a bulk load: a build reads them faster than one `ANY` of them), or the database
    /// went back in time (a failover that lost transactions).
    Rebuild(&'static str),
}

/// Applies the changes `mirror` lacks (see the parent module): at most `max_recent` items.
pub(super) async fn poll(
    pool: &Pool,
    table: &str,
    mirror: &std::sync::Arc<Mirror>,
    max_recent: usize,
) -> Result<Polled, ServiceError> {
    let (snapshot, centre, generation) = {
        let guard = mirror.table.read().unwrap_or_else(PoisonError::into_inner);
        let Some(codes) = guard.as_ref() else {
            return Ok(Polled::Rebuild("never built"));
        };
        (codes.snapshot.clone(), codes.centre.clone(), codes.build)
    };
    let mut conn = crate::postgres::client(pool).await?;
    let read = async {
        let (tx, now) = snapshot_tx(&mut conn, "").await?;
        if xmax_of(&now) < xmax_of(&snapshot) {
            return Ok(Err(
                "the database's transaction ids went back (a failover?)",
            ));
        }
        let most = i64::try_from(max_recent.saturating_add(1)).unwrap_or(i64::MAX);
        let changed = tx
            .query(
                &format!("SELECT item FROM ({}) u", unseen_items(&snapshot, 1, 2, 3)),
                &[&table, &snapshot, &most],
            )
            .await
            .map_err(pg_error)?;
        if changed.len() > max_recent {
            return Ok(Err("more items changed than --postgres-mirror-max-recent"));
        }
        let mut items = Vec::with_capacity(changed.len());
        for row in &changed {
            match col::<Option<String>>(row, "item")? {
                Some(item) => items.push(item),
                None => return Ok(Err("the table was truncated")),
            }
        }
        items.sort_unstable();
        items.dedup();
        let rows = if items.is_empty() {
            Vec::new()
        } else {
            let sql = codes_sql(table, "WHERE id = ANY($2)");
            tx.query(&sql, &[&centre, &items]).await.map_err(pg_error)?
        };
        tx.commit().await.map_err(pg_error)?;
        Ok(Ok((now, items, rows)))
    }
    .await;
    let (now, items, rows) = match conn.done(read)? {
        Ok(read) => read,
        Err(why) => return Ok(Polled::Rebuild(why)),
    };
    let mut current = HashMap::with_capacity(rows.len());
    for row in &rows {
        current.insert(col::<String>(row, "id")?, col::<Bit>(row, "code")?);
    }
    // Applied on the blocking pool: the write lock waits for the scans in flight.
    let mirror = mirror.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = mirror.table.write().unwrap_or_else(PoisonError::into_inner);
        let Some(codes) = guard.as_mut().filter(|c| c.build == generation) else {
            // Built again meanwhile: this read is older than the new build.
            return Polled::Applied(0);
        };
        for item in &items {
            match current.get(item) {
                Some(bits) => codes.put(item, bits),
                None => codes.remove(item),
            }
        }
        codes.snapshot = now;
        codes.synced = Instant::now();
        Polled::Applied(items.len())
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("applying the change log failed: {e}")))
}

/// Deletes change-log rows of finished transactions older than `retention`, in batches of
/// 10,000 (each its own statement under the statement timeout), skipping rows another replica's
/// prune or a DeleteCollection holds. Returns how many went.
pub(super) async fn prune(
    pool: &Pool,
    retention: std::time::Duration,
) -> Result<u64, ServiceError> {
    let conn = crate::postgres::client(pool).await?;
    let pruned = async {
        let mut total = 0;
        // At most 100 batches a round (a million rows); the next round goes on.
        for _ in 0..100 {
            let n = conn
                .execute(
                    "DELETE FROM clip_item_changes WHERE ctid = ANY(ARRAY(
                         SELECT ctid FROM clip_item_changes
                         WHERE at < clock_timestamp() - make_interval(secs => $1)
                           AND xid < pg_snapshot_xmin(pg_current_snapshot())
                         LIMIT 10000 FOR UPDATE SKIP LOCKED))",
                    &[&retention.as_secs_f64()],
                )
                .await
                .map_err(pg_error)?;
            total += n;
            if n < 10_000 {
                break;
            }
        }
        Ok(total)
    }
    .await;
    conn.done(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshots_xmax_is_read_from_its_text() {
        assert_eq!(xmax_of("100:104:100,102"), Some(104));
        assert_eq!(xmax_of("7:7:"), Some(7));
        assert_eq!(xmax_of("garbage"), None);
        // Unreadable compares below any reading: never taken for time going back.
        assert!(xmax_of("garbage") < xmax_of("1:2:"));
        assert_eq!(xip_of("100:104:100,102"), [100, 102]);
        assert!(xip_of("7:7:").is_empty());
        // Only numbers reach the statement.
        assert_eq!(xip_of("1:9:3,4');DROP TABLE x;--"), [3]);
        let sql = unseen_items("100:104:100,102", 3, 4, 5);
        assert!(sql.contains("xid IN ('100','102')"), "{sql}");
        assert!(!unseen_items("7:7:", 3, 4, 5).contains("UNION"));
    }
}
