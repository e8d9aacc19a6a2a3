//! The first load: the target equals the projection of the snapshot, the schema ends
//! exactly as `setup` made it, and rows that do not fit are parked, not fatal.

use std::time::Duration;

use leadsync::cmd::setup::run_setup;
use leadsync::testing::{Daemon, TestDb, daemon_env, schema_dump};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

#[tokio::test]
async fn first_load_matches_the_projection_and_leaves_the_schema_as_setup_made_it() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, 3000)
        .await
        .unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    let schema_before = schema_dump(db.port(), &db.name);

    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(120), &|| daemon.log())
        .await;
    db.assert_projection(&db.settings()).await;

    let schema_after = schema_dump(db.port(), &db.name);
    let changed: Vec<_> = schema_after
        .lines()
        .zip(schema_before.lines())
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(
        schema_after == schema_before,
        "the load changed the schema: {changed:?}"
    );

    // Every contact is either projected or parked: nothing is lost.
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM contacts),
                    (SELECT count(*) FROM customers WHERE migrated_from_contact_id IS NOT NULL),
                    (SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'),
                    (SELECT count(*) FROM contacts WHERE char_length(phone_number) > 20
                        OR char_length(email) > 255)",
            &[],
        )
        .await
        .unwrap();
    let (contacts, customers, parked, too_long): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert!(too_long > 0, "the demo data has rows that do not fit");
    assert_eq!(parked, too_long);
    assert_eq!(customers + parked, contacts);
}

/// Legacy writes of every kind, until `stop` is set. Returns how many transactions ran.
async fn write_load(db: &TestDb, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u64 {
    use std::sync::atomic::Ordering;
    let client = db.client().await;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let sql = match n % 5 {
            0 => "UPDATE contacts SET lead_status = 'won', tags = 'roofing', updated_at = now()
                  WHERE id = (SELECT id FROM contacts ORDER BY md5(id::text || now()::text) LIMIT 1)",
            1 => "UPDATE contacts SET lead_status = NULL, updated_at = now()
                  WHERE id = (SELECT id FROM contacts WHERE lead_status IS NOT NULL
                              ORDER BY md5(id::text || now()::text) LIMIT 1)",
            2 => "WITH c AS (INSERT INTO contacts (workspace_id, firstname, lead_status, appointment_date)
                             SELECT id, 'Live', 'new', now() FROM workspaces LIMIT 1 RETURNING id)
                  INSERT INTO contact_custom_fields (contact_id, field_id, value)
                  SELECT c.id, f.id, '\"live\"' FROM c, custom_fields f
                  WHERE f.workspace_id = (SELECT id FROM workspaces LIMIT 1) LIMIT 2",
            3 => "DELETE FROM contacts WHERE id = (SELECT id FROM contacts ORDER BY md5(id::text || now()::text) LIMIT 1)",
            _ => "UPDATE contact_custom_fields SET value = to_jsonb(now()::text), updated_at = now()
                  WHERE (contact_id, field_id) = (SELECT contact_id, field_id FROM contact_custom_fields
                                                  ORDER BY md5(contact_id::text || now()::text) LIMIT 1)",
        };
        client.batch_execute(sql).await.unwrap();
        n += 1;
    }
    n
}

#[tokio::test]
async fn writes_during_the_first_load_are_neither_lost_nor_applied_twice() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let db = TestDb::spawn_ready(20_000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let db = &db;
        async move { write_load(db, stop).await }
    };
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    let watch = async {
        // Keep writing until the load is over and the daemon streams, then a bit more.
        let client = db.client().await;
        loop {
            let streaming: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM leadsync.sync_state WHERE phase = 'streaming')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if streaming {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
    };
    let (written, ()) = tokio::join!(load, watch);
    assert!(
        written > 20,
        "only {written} transactions ran during the load"
    );
    db.wait_caught_up(Duration::from_secs(120), &|| daemon.log())
        .await;
    db.assert_projection(&db.settings()).await;
}

#[tokio::test]
async fn a_kill_during_the_first_load_leaves_nothing_half_copied_and_a_restart_recovers() {
    let db = TestDb::spawn_ready(20_000).await;
    let client = db.client().await;
    let schema_before = schema_dump(db.port(), &db.name);
    let keys_before = db.legacy_foreign_keys().await;
    assert_eq!(keys_before.len(), 18, "{keys_before:?}");
    let mut daemon = Daemon::start(BIN, &daemon_env(&db));
    // Wait until the load is under way (the slot exists, nothing committed yet).
    daemon
        .wait_log("slot created", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM leadsync.contacts),
                    (SELECT phase FROM leadsync.sync_state)",
            &[],
        )
        .await
        .unwrap();
    let (customers, mirrored, phase): (i64, i64, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (customers, mirrored, phase.as_str()),
        (0, 0, "backfill"),
        "the kill must land inside the load: {}",
        daemon.log()
    );
    // The foreign keys into legacy tables were set aside before the snapshot and are
    // recorded, not lost.
    assert!(db.legacy_foreign_keys().await.is_empty());
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM leadsync.deferred_constraints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 18);
    client
        .batch_execute("UPDATE contacts SET lead_status = 'revived' WHERE id = (SELECT id FROM contacts ORDER BY id LIMIT 1)")
        .await
        .unwrap();

    let daemon = Daemon::start(BIN, &daemon_env(&db));
    assert_loaded(&db, &daemon, &["unfinished first load"], &schema_before).await;
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        slots, 1,
        "the unfinished load's slot was replaced, not added to"
    );
    assert_eq!(db.legacy_foreign_keys().await, keys_before);
}

/// Waits until the daemon has caught up, then checks that its log says each of `says`, that
/// the target equals the projection and that the schema is `schema_before`.
async fn assert_loaded(db: &TestDb, daemon: &Daemon, says: &[&str], schema_before: &str) {
    db.wait_caught_up(Duration::from_secs(120), &|| daemon.log())
        .await;
    let log = daemon.log();
    for needle in says {
        assert!(log.contains(needle), "no {needle:?} in:\n{log}");
    }
    db.assert_projection(&db.settings()).await;
    assert_eq!(schema_dump(db.port(), &db.name), schema_before);
}

/// A session that holds the next first load at its copy of leadsync's state — after the
/// keys are set aside and the snapshot is taken, before the keys come back — until it
/// commits.
async fn hold_the_load(db: &TestDb) -> tokio_postgres::Client {
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE leadsync.contacts IN ACCESS SHARE MODE")
        .await
        .unwrap();
    holder
}

#[tokio::test]
async fn a_busy_legacy_table_delays_the_first_load_but_never_blocks_the_application() {
    let db = TestDb::spawn_ready(3000).await;
    let client = db.client().await;
    let schema_before = schema_dump(db.port(), &db.name);
    // The application holds a write lock on workspaces in a transaction left open.
    let app = db.client().await;
    app.batch_execute("BEGIN; INSERT INTO workspaces (name) VALUES ('opened during the load')")
        .await
        .unwrap();
    let mut env = daemon_env(&db);
    env.push(("LEADSYNC_TARGET__LOCK_TIMEOUT_MS".into(), "100".into()));
    let daemon = Daemon::start(BIN, &env);
    daemon.wait_log("is busy", Duration::from_secs(30)).await;
    // While leadsync waits, the application keeps writing contacts (their foreign key
    // checks lock workspaces rows) and reading workspaces: each waits at most one
    // lock_timeout behind leadsync's request, never for the open transaction.
    let other = db.client().await;
    for i in 0..10 {
        let sql = format!(
            "INSERT INTO contacts (workspace_id, firstname, lead_status)
             SELECT id, 'during {i}', 'new' FROM workspaces ORDER BY id LIMIT 1;
             SELECT count(*) FROM workspaces"
        );
        tokio::time::timeout(Duration::from_secs(5), other.batch_execute(&sql))
            .await
            .unwrap_or_else(|_| panic!("a legacy write waited 5 s:\n{}", daemon.log()))
            .unwrap();
    }
    let phase: String = client
        .query_one("SELECT phase FROM leadsync.sync_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(phase, "backfill", "the load must still be waiting");
    app.batch_execute("COMMIT").await.unwrap();

    assert_loaded(&db, &daemon, &[], &schema_before).await;
}

#[tokio::test]
async fn a_parent_row_deleted_during_the_first_load_starts_it_again_and_nothing_dangles() {
    let db = TestDb::spawn_ready(5000).await;
    let client = db.client().await;
    let schema_before = schema_dump(db.port(), &db.name);
    // Hold the load until the workspace is gone.
    let holder = hold_the_load(&db).await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    daemon
        .wait_log("slot created", Duration::from_secs(60))
        .await;
    // The busiest workspace goes, with its contacts and custom fields (legacy cascades).
    let workspace = db.busiest_workspace().await;
    client
        .execute("DELETE FROM workspaces WHERE id = $1", &[&workspace])
        .await
        .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();

    assert_loaded(&db, &daemon, &["first load starts again"], &schema_before).await;
    let dangling: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM customers WHERE workspace_id = $1)
                  + (SELECT count(*) FROM leads WHERE workspace_id = $1)",
            &[&workspace],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
}

#[tokio::test]
async fn teardown_after_an_unfinished_first_load_gives_the_target_tables_their_keys_back() {
    let db = TestDb::spawn_ready(20_000).await;
    let keys_before = db.legacy_foreign_keys().await;
    let mut daemon = Daemon::start(BIN, &daemon_env(&db));
    daemon
        .wait_log("set aside for the first load", Duration::from_secs(60))
        .await;
    daemon.kill();
    assert!(db.legacy_foreign_keys().await.is_empty());
    db.wait_slot_released().await;
    let report = leadsync::cmd::teardown::run_teardown(&db.settings(), Default::default())
        .await
        .unwrap();
    assert!(
        report.to_string().contains("added back 18 foreign keys"),
        "{report}"
    );
    assert_eq!(db.legacy_foreign_keys().await, keys_before);
}

#[tokio::test]
async fn an_application_session_waiting_for_the_new_tables_makes_the_load_yield() {
    let db = TestDb::spawn_ready(3000).await;
    let client = db.client().await;
    let schema_before = schema_dump(db.port(), &db.name);
    let holder = hold_the_load(&db).await;
    let mut env = daemon_env(&db);
    env.push(("LEADSYNC_TARGET__LOCK_TIMEOUT_MS".into(), "100".into()));
    let daemon = Daemon::start(BIN, &env);
    daemon
        .wait_log("slot created", Duration::from_secs(60))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'customers'::regclass
                                AND mode = 'AccessExclusiveLock' AND granted)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if held {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The application writes a workspace, then reads the new tables in the same
    // transaction: it waits for the load, which will need that workspaces lock to finish.
    let app = db.client().await;
    app.batch_execute("BEGIN; INSERT INTO workspaces (name) VALUES ('app')")
        .await
        .unwrap();
    let read = tokio::spawn(async move {
        let customers: i64 = app
            .query_one("SELECT count(*) FROM customers", &[])
            .await
            .unwrap()
            .get(0);
        app.batch_execute("COMMIT").await.unwrap();
        customers
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.unwrap();

    // The load gives way (its rows roll back, the reader sees none) instead of waiting for
    // a session that waits for it.
    let customers = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("the application waited for good:\n{}", daemon.log()))
        .unwrap();
    assert_eq!(customers, 0);
    let says = ["waits for the new tables", "the first load starts again"];
    assert_loaded(&db, &daemon, &says, &schema_before).await;
}
