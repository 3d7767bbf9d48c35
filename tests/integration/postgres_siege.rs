//! `--store postgres` under pressure (issue 20, item 16): every session's `statement_timeout` and
//! `lock_timeout`, a dropped call's statement cancelled, prepared statements bounded across
//! collection create/drop cycles, a node turned read-only (a failover) detected and reconnected,
//! label-set changes noticed from one number, and migrations an older replica keeps working
//! with. Skipped (with a SKIPPED line) without CLIP_SERVE_TEST_POSTGRES_URL.

use std::time::{Duration, Instant};

use crate::{
    common::*,
    postgres::{pg, pg_store, pseudo, search, test_database, vector_item},
};
use clip_serve::{
    classify::{postgres::LabelSetStore, prompts::LabelSetSpec},
    common::ServiceError,
    grpc::pb::{self, retrieve_client::RetrieveClient},
    postgres::{PgConfig, StoreConfig, schema},
    retrieve::{
        backend::{CollectionStore, Record},
        index::Metadata,
        postgres::PgStore,
        store::CollectionMeta,
    },
};
use deadpool_postgres::tokio_postgres::{self, Client, NoTls};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn raw(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

fn record(id: &str, dim: usize) -> Record {
    let v = pseudo(id.len() as u64 + 7, dim);
    Record {
        id: id.into(),
        unit: v.clone(),
        stored: v,
        metadata: Metadata::from([("kind".to_string(), "x".to_string())]),
    }
}

async fn store_with(cfg: &PgConfig) -> PgStore {
    let store = pg_store(cfg);
    store.load().await.unwrap();
    store
}

/// Backends of this database's clip-serve sessions that wait for a lock.
async fn lock_waiters(admin: &Client) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
             AND application_name = 'clip-serve' AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Locks collection `name`'s row (as a write in flight holds it) until the transaction ends.
async fn hold_row<'a>(holder: &'a mut Client, name: &str) -> tokio_postgres::Transaction<'a> {
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM clip_collections WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await
    .unwrap();
    tx
}

#[tokio::test]
async fn postgres_sessions_have_a_statement_and_a_lock_timeout() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = pg(&url);
    cfg.statement_timeout = Duration::from_millis(300);
    cfg.lock_timeout = Duration::from_millis(200);
    let store = store_with(&cfg).await;
    let pool = clip_serve::postgres::pool(&cfg).unwrap();
    let client = pool.get().await.unwrap();
    let shown: Vec<String> = client
        .simple_query(
            "SHOW statement_timeout; SHOW lock_timeout; SHOW idle_in_transaction_session_timeout",
        )
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(shown, ["300ms", "200ms", "300ms"]);
    // A statement past the timeout is cancelled by PostgreSQL.
    let started = Instant::now();
    let e = client.simple_query("SELECT pg_sleep(5)").await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|d| d.code().code()),
        Some("57014"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A write behind a lock held elsewhere gives up after the lock timeout: UNAVAILABLE.
    store
        .create(CollectionMeta::new("c".into(), 4, "m".into()), 10)
        .await
        .unwrap();
    let meta = store.collection("c").await.unwrap();
    let mut holder = raw(&url).await;
    let tx = hold_row(&mut holder, "c").await;
    let started = Instant::now();
    let e = store.upsert(&meta, vec![record("a", 4)]).await.unwrap_err();
    assert!(matches!(e, ServiceError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    tx.rollback().await.unwrap();
    assert_eq!(store.upsert(&meta, vec![record("a", 4)]).await.unwrap(), 1);
}

#[tokio::test]
async fn postgres_a_dropped_call_has_its_statement_cancelled_and_writes_nothing() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = pg(&url);
    // No timeouts: only the cancel can end the wait. One connection: it must come back.
    cfg.pool_size = 1;
    cfg.statement_timeout = Duration::ZERO;
    cfg.lock_timeout = Duration::ZERO;
    let store = store_with(&cfg).await;
    store
        .create(CollectionMeta::new("c".into(), 4, "m".into()), 10)
        .await
        .unwrap();
    let meta = store.collection("c").await.unwrap();
    let admin = raw(&url).await;
    let mut holder = raw(&url).await;
    let tx = hold_row(&mut holder, "c").await;
    {
        let upsert = store.upsert(&meta, vec![record("a", 4)]);
        tokio::pin!(upsert);
        let deadline = Instant::now() + Duration::from_secs(5);
        // Until the upsert waits for the row in PostgreSQL.
        loop {
            tokio::select! {
                r = &mut upsert => panic!("the upsert finished behind a held lock: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if lock_waiters(&admin).await == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the upsert never waited");
        }
        // The caller leaves.
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while lock_waiters(&admin).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the abandoned statement still runs after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its transaction is rolled back, not left open (the lock holder has not let go yet).
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let open: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                 AND application_name = 'clip-serve' AND xact_start IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned transaction is still open after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.rollback().await.unwrap();
    // Nothing of the abandoned write: no item, the count unchanged.
    assert_eq!(store.info("c").await.unwrap().count, 0);
    let got = store.get_items(&meta, vec!["a".into()]).await.unwrap();
    assert!(got[0].is_none());
    // The pool still serves.
    assert_eq!(store.upsert(&meta, vec![record("a", 4)]).await.unwrap(), 1);
}

#[tokio::test]
async fn postgres_prepared_statements_stay_bounded_across_collection_create_drop_cycles() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = pg(&url);
    cfg.pool_size = 1; // one session: its prepared statements are all of them
    let store = store_with(&cfg).await;
    for i in 0..60 {
        let name = format!("c{i}");
        store
            .create(CollectionMeta::new(name.clone(), 4, "m".into()), 10)
            .await
            .unwrap();
        let meta = store.collection(&name).await.unwrap();
        store.upsert(&meta, vec![record("a", 4)]).await.unwrap();
        store
            .search(&meta, pseudo(1, 4), 3, Metadata::new())
            .await
            .unwrap();
        store
            .search(
                &meta,
                pseudo(1, 4),
                3,
                Metadata::from([("kind".to_string(), "x".to_string())]),
            )
            .await
            .unwrap();
        store.get_items(&meta, vec!["a".into()]).await.unwrap();
        store.delete(&meta, vec!["a".into()]).await.unwrap();
        store.drop_collection(&name).await.unwrap();
    }
    // The store's one session.
    let conn = clip_serve::postgres::client(store.pool()).await.unwrap();
    let prepared: i64 = conn
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    let cached = conn.statement_cache.size();
    drop(conn.done(Ok::<(), ServiceError>(())));
    let bound = clip_serve::postgres::MAX_CACHED_STATEMENTS as i64 + 8;
    assert!(
        prepared <= bound && cached <= bound as usize,
        "{prepared} statements prepared ({cached} cached) after 60 collections, over {bound}"
    );
}

fn spec(name: &str) -> LabelSetSpec {
    LabelSetSpec {
        name: name.into(),
        labels: vec!["cat".into(), "dog".into()],
        templates: vec!["a photo of a {}".into()],
    }
}

#[tokio::test]
async fn postgres_label_set_changes_are_noticed_from_one_number_without_rereading() {
    let Some(url) = test_database().await else {
        return;
    };
    let cfg = pg(&url);
    store_with(&cfg).await; // migrates
    // Two replicas.
    let a = LabelSetStore::new(clip_serve::postgres::pool(&cfg).unwrap());
    let b = LabelSetStore::new(clip_serve::postgres::pool(&cfg).unwrap());
    assert_eq!(a.load_if_changed().await.unwrap(), Some(vec![]));
    for _ in 0..5 {
        assert_eq!(a.load_if_changed().await.unwrap(), None);
    }
    assert_eq!(a.loads(), 1, "an unchanged database is not read again");
    b.insert(&spec("pets"), 10, 100).await.unwrap();
    assert_eq!(a.load_if_changed().await.unwrap(), Some(vec![spec("pets")]));
    assert_eq!(a.load_if_changed().await.unwrap(), None);
    // A replica of the previous schema writes the table without knowing the counter: the trigger
    // bumps it all the same.
    let old = raw(&url).await;
    old.execute("DELETE FROM clip_label_sets WHERE name = 'pets'", &[])
        .await
        .unwrap();
    assert_eq!(a.load_if_changed().await.unwrap(), Some(vec![]));
    assert_eq!(a.loads(), 3);
}

/// The statements a schema-2 replica (before the rolling upgrade) runs, as it runs them.
async fn old_replica_queries(c: &Client, n: usize) {
    let name = format!("old{n}");
    c.execute(
        "INSERT INTO clip_collections (name, id, dimension, model, indexed, index_kind)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&name, &format!("id{n}"), &4i32, &"m", &true, &"vector"],
    )
    .await
    .unwrap();
    c.query(
        "SELECT name, id, dimension, model, count, index_kind FROM clip_collections WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await
    .unwrap();
    c.execute(
        "UPDATE clip_collections SET count = count + $2 WHERE name = $1 RETURNING count",
        &[&name, &1i64],
    )
    .await
    .unwrap();
    let json = serde_json::to_value(spec(&name)).unwrap();
    c.execute(
        "INSERT INTO clip_label_sets (name, spec, prompts) VALUES ($1, $2, $3)",
        &[&name, &json, &2i32],
    )
    .await
    .unwrap();
    c.query(
        "SELECT EXISTS (SELECT 1 FROM clip_label_sets WHERE name = $1) AS present,
                count(*) AS sets, coalesce(sum(prompts), 0)::bigint AS stored FROM clip_label_sets",
        &[&name],
    )
    .await
    .unwrap();
    c.query("SELECT name, spec FROM clip_label_sets ORDER BY name", &[])
        .await
        .unwrap();
    c.execute("DELETE FROM clip_label_sets WHERE name = $1", &[&name])
        .await
        .unwrap();
    c.query(
        "DELETE FROM clip_collections WHERE name = $1 RETURNING id",
        &[&name],
    )
    .await
    .unwrap();
}

/// (table, column, type, nullable, default) of every clip_* column.
async fn columns(c: &Client) -> Vec<(String, String, String, String, Option<String>)> {
    c.query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text,
                column_default::text
         FROM information_schema.columns WHERE table_name LIKE 'clip\\_%' ORDER BY 1, 2",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[tokio::test]
async fn postgres_migrations_are_additive_and_an_older_replica_keeps_working() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut c = raw(&url).await;
    // The database as schema-2 replicas left it, in use by them.
    assert_eq!(schema::migrate_to(&mut c, 2).await.unwrap(), 0);
    old_replica_queries(&c, 1).await;
    let before = columns(&c).await;
    // The new replica migrates (twice: idempotent).
    assert_eq!(schema::migrate(&mut c).await.unwrap(), 2);
    assert_eq!(schema::migrate(&mut c).await.unwrap(), schema::latest());
    let after = columns(&c).await;
    // Additive: every column an old replica knows is still there, unchanged; columns new in its
    // tables are nullable or defaulted (its INSERTs do not name them).
    for col in &before {
        assert!(after.contains(col), "{col:?} changed or went away");
    }
    let old_tables: Vec<&String> = before.iter().map(|c| &c.0).collect();
    for col in after
        .iter()
        .filter(|c| !before.contains(c) && old_tables.contains(&&c.0))
    {
        assert!(col.3 == "YES" || col.4.is_some(), "{col:?}");
    }
    // The old replica's statements all still work.
    old_replica_queries(&c, 2).await;
    // An older server (schema 2) that starts now finds a newer but compatible schema; schema 1
    // is refused.
    assert_eq!(
        schema::migrate_to(&mut c, 2).await.unwrap(),
        schema::latest()
    );
    let e = schema::migrate_to(&mut c, 1).await.unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");
    // A future additive migration keeps this server starting; a breaking one does not.
    let next = schema::latest() + 1;
    c.execute(
        "INSERT INTO clip_schema_migrations (version, min_reader) VALUES ($1, $2)",
        &[&next, &schema::latest()],
    )
    .await
    .unwrap();
    assert_eq!(schema::migrate(&mut c).await.unwrap(), next);
    c.execute(
        "INSERT INTO clip_schema_migrations (version, min_reader) VALUES ($1, $1)",
        &[&(next + 1)],
    )
    .await
    .unwrap();
    let e = schema::migrate(&mut c).await.unwrap_err().to_string();
    assert!(e.contains("newer"), "{e}");
}

async fn retrieve_status(health: &mut HealthClient<tonic::transport::Channel>) -> i32 {
    health
        .check(HealthCheckRequest {
            service: "clip.v1.Retrieve".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_node_turned_read_only_is_unavailable_not_serving_then_reconnected() {
    let Some(url) = test_database().await else {
        return;
    };
    let mut cfg = config(&tiny_model());
    cfg.store = StoreConfig::Postgres(pg(&url));
    let server = serve(cfg).await;
    let mut c = RetrieveClient::new(server.channel.clone());
    let mut health = HealthClient::new(server.channel.clone());
    c.create_collection(pb::CreateCollectionRequest {
        name: "c".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let upsert = |id: &str| pb::UpsertRequest {
        collection: "c".into(),
        items: vec![vector_item(id, pseudo(3, 32), "v")],
        model: String::new(),
    };
    c.upsert(upsert("a")).await.unwrap();
    // A failover: the node this replica reaches is a read-only standby now (new sessions are
    // read-only; the old ones were cut).
    let db = url.rsplit('/').next().unwrap().to_string();
    let admin = raw(&url).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_read_only = on;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{db}' AND pid <> pg_backend_pid();"
        ))
        .await
        .unwrap();
    let mut read_only_seen = false;
    for i in 0..5 {
        let e = c.upsert(upsert(&format!("b{i}"))).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        read_only_seen |= e.message().contains("read-only");
    }
    assert!(read_only_seen, "a write to a read-only node says so");
    let deadline = Instant::now() + Duration::from_secs(10);
    while retrieve_status(&mut health).await != ServingStatus::NotServing as i32 {
        assert!(Instant::now() < deadline, "Retrieve still SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The failover completes: the node is writable again (a new primary behind the same name).
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} RESET default_transaction_read_only"
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while retrieve_status(&mut health).await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "Retrieve never SERVING again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pool's connections are new ones: writes go through.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c.upsert(upsert("z")).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "writes never recover: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let found = c.search(search("c", pseudo(3, 32), 5, &[])).await.unwrap();
    assert!(!found.into_inner().hits.is_empty());
}
