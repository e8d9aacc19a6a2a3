//! Schema drift under a running `leadsync run` (SPEC §5): legacy columns the projection does
//! not read may be added and dropped without stopping the daemon; dropping one it reads stops
//! it with a message naming the column, before applying anything from that point on, and
//! losing nothing; a slot dropped while the daemon was down is reported, not papered over.

use std::time::Duration;

use leadsync::cmd::setup::run_setup;
use leadsync::decode::{Datum, LogicalMessage, decode_message};
use leadsync::testing::{Daemon, TestDb, daemon_env};
use serde_json::Value;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);
const C1: &str = "c0000000-0000-4000-8000-000000000001";
const W1: &str = "md5('workspace1')::uuid";
const BUDGET: &str = "(SELECT id FROM custom_fields WHERE workspace_id = md5('workspace1')::uuid AND name = 'budget')";

async fn running(contacts: u64) -> (TestDb, Daemon, Client) {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, contacts)
        .await
        .unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    synced(&db, &daemon).await;
    (db, daemon, client)
}

async fn synced(db: &TestDb, daemon: &Daemon) {
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&db.settings()).await;
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

async fn customer(client: &Client, contact: &str) -> Value {
    client
        .query_one(
            &format!(
                "SELECT to_jsonb(c) FROM customers c WHERE migrated_from_contact_id = '{contact}'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn value_count(client: &Client, contact: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM customer_custom_fields WHERE customer_id = '{contact}'"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn assert_running(daemon: &mut Daemon) {
    if let Some(status) = daemon.try_wait() {
        panic!("the daemon exited ({status}); {}", daemon.log());
    }
}

#[tokio::test]
async fn added_legacy_columns_are_ignored_and_streaming_goes_on() {
    let (db, mut daemon, client) = running(200).await;
    exec(
        &client,
        "ALTER TABLE contacts ADD COLUMN loyalty_tier TEXT;
         ALTER TABLE contact_custom_fields ADD COLUMN origin TEXT DEFAULT 'import';
         ALTER TABLE custom_fields ADD COLUMN color TEXT;",
    )
    .await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, lead_status, tags, loyalty_tier)
             VALUES ('{C1}', {W1}, 'Drift', 'new', 'solar', 'gold');
             INSERT INTO contact_custom_fields (contact_id, field_id, value, origin)
             VALUES ('{C1}', {BUDGET}, '10', 'api');
             UPDATE contacts SET loyalty_tier = 'silver', firstname = 'Tiered'
              WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 20);
             UPDATE custom_fields SET color = 'red', context_type = 'lead' WHERE name = 'hoa';"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_running(&mut daemon);
    assert_eq!(value_count(&client, C1).await, 1);

    // A column added between two writes of one transaction.
    exec(
        &client,
        &format!(
            "BEGIN;
             UPDATE contacts SET firstname = 'Before' WHERE id = '{C1}';
             ALTER TABLE contacts ADD COLUMN score INT DEFAULT 7;
             UPDATE contacts SET firstname = 'After', score = 9 WHERE id = '{C1}';
             COMMIT;"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_running(&mut daemon);
    assert_eq!(customer(&client, C1).await["firstname"], "After");
}

#[tokio::test]
async fn dropping_an_unprojected_column_does_not_stop_the_daemon() {
    let (db, mut daemon, client) = running(200).await;
    exec(&client, "ALTER TABLE contacts DROP COLUMN notes").await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, lead_status) VALUES ('{C1}', {W1}, 'NoNotes', 'new');
             UPDATE contacts SET lead_status = 'won', tags = 'hvac'
              WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 20);
             DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 5);"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_running(&mut daemon);
    assert_eq!(customer(&client, C1).await["firstname"], "NoNotes");
}

#[tokio::test]
async fn dropping_a_projected_column_stops_the_daemon_before_applying_anything_after() {
    let (db, mut daemon, client) = running(200).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, lead_status, tags)
             VALUES ('{C1}', {W1}, 'Kept', 'new', 'solar')"
        ),
    )
    .await;
    synced(&db, &daemon).await;

    // The value written before the DROP belongs to the same source transaction: atomicity
    // says it must not be applied either.
    exec(
        &client,
        &format!(
            "BEGIN;
             INSERT INTO contact_custom_fields (contact_id, field_id, value) VALUES ('{C1}', {BUDGET}, '1');
             ALTER TABLE contacts DROP COLUMN tags;
             UPDATE contacts SET firstname = 'Unseen' WHERE id = '{C1}';
             COMMIT;"
        ),
    )
    .await;
    let touched = client
        .execute(
            "UPDATE contact_custom_fields SET value = '\"later\"'
              WHERE contact_id = (SELECT contact_id FROM contact_custom_fields
                                  ORDER BY contact_id LIMIT 1)",
            &[],
        )
        .await
        .unwrap();
    assert!(touched > 0);
    let log = daemon.wait_failed(Duration::from_secs(30)).await;
    assert!(
        log.contains("contacts.tags"),
        "the message does not name the column: {log}"
    );
    assert_eq!(customer(&client, C1).await["firstname"], "Kept");
    assert_eq!(value_count(&client, C1).await, 0);
    let later: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM customer_custom_fields WHERE value = '\"later\"')
                  + (SELECT count(*) FROM lead_custom_fields WHERE value = '\"later\"')
                  + (SELECT count(*) FROM appointment_custom_fields WHERE value = '\"later\"')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(later, 0, "a later transaction was applied");

    // Nothing was lost: the slot still holds the change the daemon stopped at. The
    // walsender of the exited daemon may need a moment to release the slot.
    db.wait_slot_released().await;
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', $2)",
            &[&db.slot, &db.settings().publication.name],
        )
        .await
        .unwrap();
    let mut contacts_relation = None;
    let mut held = false;
    for row in rows {
        let data: Vec<u8> = row.get(0);
        match decode_message(&bytes::Bytes::from(data)).unwrap() {
            LogicalMessage::Relation(r) if r.name == "contacts" => contacts_relation = Some(r),
            LogicalMessage::Update(u) => {
                if let Some(r) = contacts_relation.as_ref().filter(|r| r.id == u.relation_id) {
                    let firstname = r.column_index("firstname").unwrap();
                    held |= u.new.get(firstname)
                        == Some(&Datum::Text(bytes::Bytes::from_static(b"Unseen")));
                }
            }
            _ => {}
        }
    }
    assert!(
        held,
        "the slot was acknowledged past the change the daemon did not apply"
    );

    // A restart stops at the same change instead of skipping it.
    drop(daemon);
    db.wait_slot_released().await;
    let mut again = Daemon::start(BIN, &daemon_env(&db));
    let log = again.wait_failed(Duration::from_secs(30)).await;
    assert!(
        log.contains("starting over after the failure recorded"),
        "{log}"
    );
    assert!(log.contains("contacts.tags"), "{log}");
    assert_eq!(customer(&client, C1).await["firstname"], "Kept");

    // The way out the message names, without teardown: restore the column with its values
    // (here from leadsync's own copy, standing in for a backup) and retry. What changed
    // while it was missing is re-read from the source; nothing is lost.
    assert!(
        again.log().contains("ADD COLUMN tags text"),
        "{}",
        again.log()
    );
    exec(
        &client,
        "ALTER TABLE contacts ADD COLUMN tags TEXT;
         UPDATE contacts c SET tags = m.tags FROM leadsync.contacts m
          WHERE m.id = c.id AND m.tags IS NOT NULL;",
    )
    .await;
    exec(
        &client,
        &format!("UPDATE contacts SET tags = 'roofing', lead_status = 'won' WHERE id = '{C1}'"),
    )
    .await;
    // The failed daemon starts over by itself once told the cause is fixed.
    let (code, out, err) =
        leadsync::testing::run_cli(BIN, daemon_env(&db), &["ctl", "retry"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cleared the failure"), "{out}");
    let mut restored = again;
    db.wait_rereads_done(CATCH_UP, &|| restored.log()).await;
    assert_running(&mut restored);
    db.assert_projection(&db.settings()).await;
    let c1 = customer(&client, C1).await;
    assert_eq!(
        c1["firstname"],
        "Unseen",
        "the change made while tags was missing; {}",
        restored.log()
    );
    assert_eq!(value_count(&client, C1).await, 1);
    let product: String = client
        .query_one(
            &format!("SELECT productid FROM leads WHERE migrated_from_contact_id = '{C1}'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(product, "ROOFING");
    let replayed: i64 = client
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters
             WHERE status = 'replayed' AND contact_id = $1::text::uuid",
            &[&C1],
        )
        .await
        .unwrap()
        .get(0);
    assert!(replayed >= 1, "{}", restored.log());
}

#[tokio::test]
async fn a_slot_dropped_while_stopped_is_reported_with_how_to_recover() {
    let (db, mut daemon, client) = running(200).await;
    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running after SIGTERM; {}", daemon.log()));
    assert!(status.success(), "{}", daemon.log());

    db.wait_slot_released().await;
    exec(
        &client,
        &format!("SELECT pg_drop_replication_slot('{}')", db.slot),
    )
    .await;
    exec(&client, "UPDATE contacts SET firstname = 'while gone' WHERE id IN (SELECT id FROM contacts LIMIT 5)").await;

    let mut daemon = Daemon::start(BIN, &daemon_env(&db));
    let log = daemon.wait_failed(Duration::from_secs(30)).await;
    assert!(
        log.contains(&db.slot),
        "the message does not name the slot: {log}"
    );
    assert!(
        log.contains("teardown") && log.contains("setup"),
        "the message does not say how to recover: {log}"
    );
    let recreated: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recreated, 0, "the slot was silently recreated");
}
