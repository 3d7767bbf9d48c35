//! Usage and quota counts with `--store local`: `<data-dir>/usage.redb`, one table keyed by
//! (key name, period) where a period is a UTC day (`YYYY-MM-DD`) or month (`YYYY-MM`). Each charge
//! is one fsynced redb write transaction (on the blocking pool), so a restart keeps every
//! admitted charge and redb's single writer makes the quota check and the increment one step.

use std::{path::Path, sync::Arc};

use redb::{Database, ReadableTable, TableDefinition};

use super::quota::{Charge, Charged, DayUsage, UsageStore};

const USAGE: TableDefinition<'static, (&str, &str), u64> = TableDefinition::new("usage");

pub struct LocalUsage {
    db: Arc<Database>,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    format!("usage store: {e}")
}

impl LocalUsage {
    /// Opens (or creates) `<data_dir>/usage.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir).map_err(err)?;
        let db = Database::create(data_dir.join("usage.redb")).map_err(err)?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(USAGE).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(LocalUsage { db: Arc::new(db) })
    }

    fn charge_blocking(db: &Database, c: &Charge) -> Result<Charged, String> {
        let txn = db.begin_write().map_err(err)?;
        let charged = {
            let mut table = txn.open_table(USAGE).map_err(err)?;
            let get = |t: &redb::Table<'_, (&str, &str), u64>, period: &str| {
                t.get((c.key.as_str(), period))
                    .map(|v| v.map_or(0, |v| v.value()))
                    .map_err(err)
            };
            let mut used = None;
            if let Some((period, limit)) = &c.quota {
                let now = get(&table, period)?;
                if now >= *limit {
                    return Ok(Charged::Refused);
                }
                let after = now.saturating_add(c.items);
                if *period != c.day {
                    table
                        .insert((c.key.as_str(), period.as_str()), after)
                        .map_err(err)?;
                }
                used = Some(after);
            }
            let day = get(&table, &c.day)?.saturating_add(c.items);
            table
                .insert((c.key.as_str(), c.day.as_str()), day)
                .map_err(err)?;
            Charged::Admitted { used }
        };
        txn.commit().map_err(err)?;
        Ok(charged)
    }

    fn usage_blocking(
        db: &Database,
        start: &str,
        end: &str,
        key: Option<&str>,
    ) -> Result<Vec<DayUsage>, String> {
        let txn = db.begin_read().map_err(err)?;
        let table = txn.open_table(USAGE).map_err(err)?;
        let mut rows = Vec::new();
        for entry in table.iter().map_err(err)? {
            let (k, v) = entry.map_err(err)?;
            let (name, period) = k.value();
            if period.len() == 10
                && period >= start
                && period <= end
                && key.is_none_or(|key| key == name)
            {
                rows.push(DayUsage {
                    key: name.to_owned(),
                    date: period.to_owned(),
                    items: v.value(),
                });
            }
        }
        rows.sort_by(|a, b| (&a.date, &a.key).cmp(&(&b.date, &b.key)));
        Ok(rows)
    }
}

#[async_trait::async_trait]
impl UsageStore for LocalUsage {
    async fn charge(&self, charge: Charge) -> Result<Charged, String> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || Self::charge_blocking(&db, &charge))
            .await
            .map_err(err)?
    }

    async fn usage(
        &self,
        start: &str,
        end: &str,
        key: Option<&str>,
    ) -> Result<Vec<DayUsage>, String> {
        let db = Arc::clone(&self.db);
        let (start, end, key) = (start.to_owned(), end.to_owned(), key.map(str::to_owned));
        tokio::task::spawn_blocking(move || Self::usage_blocking(&db, &start, &end, key.as_deref()))
            .await
            .map_err(err)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(items: u64, quota: Option<u64>) -> Charge {
        Charge {
            key: "alice".into(),
            day: "2026-12-06".into(),
            items,
            quota: quota.map(|q| ("2026-12".into(), q)),
        }
    }

    #[tokio::test]
    async fn a_quota_is_enforced_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalUsage::open(dir.path()).unwrap();
            assert_eq!(
                store.charge(charge(6, Some(10))).await,
                Ok(Charged::Admitted { used: Some(6) })
            );
            // Below the quota: admitted, even though it ends past it (by less than one call).
            assert_eq!(
                store.charge(charge(6, Some(10))).await,
                Ok(Charged::Admitted { used: Some(12) })
            );
            assert_eq!(
                store.charge(charge(1, Some(10))).await,
                Ok(Charged::Refused)
            );
        }
        // A restart reads the same counts: still refused; the day's usage has both charges.
        let store = LocalUsage::open(dir.path()).unwrap();
        assert_eq!(
            store.charge(charge(1, Some(10))).await,
            Ok(Charged::Refused)
        );
        assert_eq!(
            store.charge(charge(1, Some(20))).await,
            Ok(Charged::Admitted { used: Some(13) })
        );
        assert_eq!(
            store.charge(charge(2, None)).await,
            Ok(Charged::Admitted { used: None })
        );
        let rows = store
            .usage("2026-12-01", "2026-12-31", Some("alice"))
            .await
            .unwrap();
        assert_eq!(
            rows,
            vec![DayUsage {
                key: "alice".into(),
                date: "2026-12-06".into(),
                items: 15
            }]
        );
        assert!(
            store
                .usage("2026-12-07", "2026-12-31", None)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
