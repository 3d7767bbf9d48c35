//! Usage and quota counts with `--store postgres`, shared by every replica: `clip_usage (key,
//! period, used)`, a period being a UTC day (`YYYY-MM-DD`) or month (`YYYY-MM`). A charge is one
//! statement, one round trip: an `INSERT .. ON CONFLICT (key, period) DO UPDATE SET used = used +
//! n WHERE used < quota RETURNING used` on the quota's row (the row lock serializes replicas, and
//! the `WHERE` sees the committed count), chained in the same statement to the day's row when the
//! quota is monthly. No row returned: refused, and nothing was counted. So however many replicas
//! charge at once, a period's count ends below `quota + n` for the last admitted call's `n`.
//!
//! The table is created on first use (`CREATE TABLE IF NOT EXISTS` under an advisory lock): it only
//! adds, as the schema's compatibility rule asks.

use tokio::sync::OnceCell;

use super::Pool;
use crate::security::quota::{Charge, Charged, DayUsage, UsageStore};

/// `pg_advisory_xact_lock` key that serializes creating the usage table ("clipusag").
const USAGE_LOCK: i64 = 0x636c_6970_7573_6167;

const CREATE: &str = "CREATE TABLE IF NOT EXISTS clip_usage (
    key text NOT NULL,
    period text NOT NULL,
    used bigint NOT NULL,
    PRIMARY KEY (key, period))";

/// One row: counted unconditionally (no quota, or the day's row).
const CHARGE: &str = "INSERT INTO clip_usage AS u (key, period, used) VALUES ($1, $2, $3)
    ON CONFLICT (key, period) DO UPDATE SET used = u.used + EXCLUDED.used
    WHERE u.used < $4 RETURNING u.used";

/// The quota's month row conditionally, then the day's row only if the month's admitted.
const CHARGE_MONTH: &str = "WITH q AS (
      INSERT INTO clip_usage AS u (key, period, used) VALUES ($1, $5, $3)
      ON CONFLICT (key, period) DO UPDATE SET used = u.used + EXCLUDED.used
      WHERE u.used < $4 RETURNING u.used),
    d AS (
      INSERT INTO clip_usage AS u (key, period, used) SELECT $1, $2, $3 FROM q
      ON CONFLICT (key, period) DO UPDATE SET used = u.used + EXCLUDED.used)
    SELECT used FROM q";

const USAGE: &str = "SELECT key, period, used FROM clip_usage
    WHERE length(period) = 10 AND period >= $1 AND period <= $2 AND ($3::text IS NULL OR key = $3)
    ORDER BY period, key";

pub struct PgUsage {
    pool: Pool,
    created: OnceCell<()>,
}

fn err(e: impl std::fmt::Display) -> String {
    format!("usage store (PostgreSQL): {e}")
}

impl PgUsage {
    pub fn new(pool: Pool) -> Self {
        PgUsage {
            pool,
            created: OnceCell::new(),
        }
    }

    async fn ensure_table(&self) -> Result<(), String> {
        self.created
            .get_or_try_init(|| async {
                let mut client = self.pool.get().await.map_err(err)?;
                let txn = client.transaction().await.map_err(err)?;
                txn.execute("SELECT pg_advisory_xact_lock($1)", &[&USAGE_LOCK])
                    .await
                    .map_err(err)?;
                txn.batch_execute(CREATE).await.map_err(err)?;
                txn.commit().await.map_err(err)
            })
            .await
            .map(drop)
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait::async_trait]
impl UsageStore for PgUsage {
    async fn charge(&self, c: Charge) -> Result<Charged, String> {
        self.ensure_table().await?;
        let client = self.pool.get().await.map_err(err)?;
        let items = signed(c.items);
        let (limit, quota_row) = match &c.quota {
            Some((row, limit)) => (signed(*limit), Some(row)),
            None => (i64::MAX, None),
        };
        let row = match quota_row {
            Some(period) if *period != c.day => {
                let statement = client.prepare_cached(CHARGE_MONTH).await.map_err(err)?;
                client
                    .query_opt(&statement, &[&c.key, &c.day, &items, &limit, period])
                    .await
            }
            _ => {
                let statement = client.prepare_cached(CHARGE).await.map_err(err)?;
                client
                    .query_opt(&statement, &[&c.key, &c.day, &items, &limit])
                    .await
            }
        }
        .map_err(err)?;
        Ok(match row {
            None => Charged::Refused,
            Some(row) => {
                let used: i64 = row.try_get(0).map_err(err)?;
                Charged::Admitted {
                    used: quota_row.map(|_| u64::try_from(used).unwrap_or(0)),
                }
            }
        })
    }

    async fn usage(
        &self,
        start: &str,
        end: &str,
        key: Option<&str>,
    ) -> Result<Vec<DayUsage>, String> {
        self.ensure_table().await?;
        let client = self.pool.get().await.map_err(err)?;
        let rows = client
            .query(USAGE, &[&start, &end, &key])
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| {
                Ok(DayUsage {
                    key: r.try_get(0).map_err(err)?,
                    date: r.try_get(1).map_err(err)?,
                    items: u64::try_from(r.try_get::<_, i64>(2).map_err(err)?).unwrap_or(0),
                })
            })
            .collect()
    }
}
