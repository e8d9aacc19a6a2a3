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
