//! `leadsync run` against a real PostgreSQL: every rule of the projection in streaming,
//! each test comparing the whole owned target tables with the SQL projection of the source.

use std::time::Duration;

use leadsync::cmd::setup::run_setup;
use leadsync::testing::{Daemon, TestDb, daemon_env};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);

async fn ready(contacts: u64) -> TestDb {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    if contacts > 0 {
        leadsync::fixtures::generate_demo_data(&client, contacts)
            .await
            .unwrap();
    }
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    db
}

async fn caught_up(db: &TestDb, daemon: &Daemon) {
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
}

#[tokio::test]
async fn first_run_loads_existing_rows_then_streams_changes() {
    let db = ready(2000).await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    caught_up(&db, &daemon).await;
    db.assert_projection(&db.settings()).await;

    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE contacts SET lead_status = 'won', tags = 'hvac' WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 50);
             UPDATE contacts SET lead_status = NULL WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 30);
             DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY md5(id::text) LIMIT 20);
             UPDATE contact_custom_fields SET value = '\"changed\"' WHERE contact_id IN (SELECT id FROM contacts ORDER BY id LIMIT 40);",
        )
        .await
        .unwrap();
    caught_up(&db, &daemon).await;
    db.assert_projection(&db.settings()).await;
    let deleted: i64 = client
        .query_one(
            "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 20, "{}", daemon.log());
}
