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
    let mut daemon = Daemon::start(BIN, &daemon_env(&db));
    // Wait until the load is under way (the slot exists, nothing committed yet).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if daemon.log().contains("slot created") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    client
        .batch_execute("UPDATE contacts SET lead_status = 'revived' WHERE id = (SELECT id FROM contacts ORDER BY id LIMIT 1)")
        .await
        .unwrap();

    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(120), &|| daemon.log())
        .await;
    assert!(
        daemon.log().contains("unfinished first load"),
        "{}",
        daemon.log()
    );
    db.assert_projection(&db.settings()).await;
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
}
