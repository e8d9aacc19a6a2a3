//! `leadsync run` against a real PostgreSQL: every rule of the projection in streaming,
//! each test comparing the whole owned target tables with the SQL projection of the source
//! and then checking what the projection does not cover (rows that left it, `deleted_at`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use leadsync::config::Settings;
use leadsync::decode::{Datum, LogicalMessage, Relation, Update, decode_message};
use leadsync::testing::{Daemon, TestDb, daemon_env};
use serde_json::Value;
use tokio_postgres::{Client, SimpleQueryMessage};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);

/// Hand-written contacts, beside the generated ones.
const C1: &str = "c0000000-0000-4000-8000-000000000001";
const C2: &str = "c0000000-0000-4000-8000-000000000002";
const C3: &str = "c0000000-0000-4000-8000-000000000003";

/// Two of the generated workspaces.
const W1: &str = "md5('workspace1')::uuid";
const W2: &str = "md5('workspace2')::uuid";

/// A generated field of workspace `ws` (contexts: see `assign_demo_field_contexts`).
fn field(ws: u32, name: &str) -> String {
    format!(
        "(SELECT id FROM custom_fields WHERE workspace_id = md5('workspace{ws}')::uuid AND name = '{name}')"
    )
}

/// Contacts with pending dead letters (the generated data has phones too long for the
/// target) are excepted from the invariant, so counts leave them out too.
fn not_parked(id: &str) -> String {
    format!(
        "{id} NOT IN (SELECT contact_id FROM leadsync.dead_letters
                      WHERE status = 'pending' AND contact_id IS NOT NULL)"
    )
}

fn env_with(db: &TestDb, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = daemon_env(db);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// A database with `contacts` generated contacts and a daemon that has loaded them.
async fn running(contacts: u64, extra_env: &[(&str, &str)]) -> (TestDb, Daemon, Client) {
    let db = TestDb::spawn_ready(contacts).await;
    let daemon = Daemon::start(BIN, &env_with(&db, extra_env));
    caught_up(&db, &daemon).await;
    let client = db.client().await;
    (db, daemon, client)
}

async fn caught_up(db: &TestDb, daemon: &Daemon) {
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
}

/// Caught up, and the live owned rows equal the projection of the source.
async fn synced(db: &TestDb, daemon: &Daemon) {
    caught_up(db, daemon).await;
    db.assert_projection(&db.settings()).await;
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

async fn count(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
        .get(0)
}

/// When a source transaction committed: not before `from` (its `now()`), not after `to`
/// (read once the commit had returned).
#[derive(Debug, Clone, Copy)]
struct CommitWindow {
    from: NaiveDateTime,
    to: NaiveDateTime,
}

impl CommitWindow {
    fn assert_holds(&self, at: Option<NaiveDateTime>, what: &str) {
        let at = at.unwrap_or_else(|| panic!("{what}: deleted_at is NULL"));
        assert!(
            self.from <= at && at <= self.to,
            "{what}: deleted_at {at} is not the source commit time (between {} and {})",
            self.from,
            self.to
        );
    }
}

/// Runs `sql` as one transaction and returns when it committed.
async fn commit_timed(client: &mut Client, sql: &str) -> CommitWindow {
    let tx = client.transaction().await.unwrap();
    let from: NaiveDateTime = tx
        .query_one("SELECT now() AT TIME ZONE 'UTC'", &[])
        .await
        .unwrap()
        .get(0);
    tx.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
    tx.commit().await.unwrap();
    let to: NaiveDateTime = client
        .query_one("SELECT clock_timestamp() AT TIME ZONE 'UTC'", &[])
        .await
        .unwrap()
        .get(0);
    CommitWindow { from, to }
}

/// The owned row of `table` (customers, leads or appointments) made from `contact`, as JSON.
async fn row(client: &Client, table: &str, contact: &str) -> Option<Value> {
    client
        .query_opt(
            &format!(
                "SELECT to_jsonb(t) FROM {table} t WHERE migrated_from_contact_id = '{contact}'"
            ),
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn live_row(client: &Client, table: &str, contact: &str) -> Value {
    let row = row(client, table, contact)
        .await
        .unwrap_or_else(|| panic!("no {table} row for contact {contact}"));
    assert_eq!(
        row["deleted_at"],
        Value::Null,
        "{table} row is not live: {row}"
    );
    row
}

async fn deleted_at(client: &Client, table: &str, contact: &str) -> Option<NaiveDateTime> {
    client
        .query_opt(
            &format!("SELECT deleted_at FROM {table} WHERE migrated_from_contact_id = '{contact}'"),
            &[],
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no {table} row for contact {contact}"))
        .get(0)
}

type FieldValue = (String, String, Option<String>);

fn fv(parent: &str, field: &str, value: &str) -> FieldValue {
    (parent.to_owned(), field.to_owned(), Some(value.to_owned()))
}

/// Every target field value under the contact's customer, lead and appointment (live or
/// not), as (parent kind, field name, jsonb text).
async fn values(client: &Client, contact: &str) -> Vec<FieldValue> {
    let id: Uuid = contact.parse().unwrap();
    client
        .query(
            "SELECT 'customer', f.name, v.value::text FROM customer_custom_fields v
               JOIN custom_fields f ON f.id = v.field_id WHERE v.customer_id = $1
             UNION ALL
             SELECT 'lead', f.name, v.value::text FROM lead_custom_fields v
               JOIN leads l ON l.id = v.lead_id JOIN custom_fields f ON f.id = v.field_id
              WHERE l.migrated_from_contact_id = $1
             UNION ALL
             SELECT 'appointment', f.name, v.value::text FROM appointment_custom_fields v
               JOIN appointments a ON a.id = v.appointment_id
               JOIN custom_fields f ON f.id = v.field_id
              WHERE a.migrated_from_contact_id = $1
             ORDER BY 1, 2",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn lead_id(contact: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("leadsync:lead:{contact}").as_bytes(),
    )
    .to_string()
}

fn appointment_id(contact: &str) -> String {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("leadsync:appointment:{contact}").as_bytes(),
    )
    .to_string()
}

/// A contact in workspace 1 with a lead, an appointment and one value of each context.
fn insert_full_contact(id: &str) -> String {
    format!(
        "INSERT INTO contacts (id, workspace_id, firstname, lastname, email, phone_number, city,
                               lead_status, lead_source, tags, appointment_date,
                               appointment_status_id, appointment_result_id, priority)
         VALUES ('{id}', {W1}, 'Ada', 'Lovelace', 'ada@example.com', '555-0101', 'Austin',
                 'new', 'web', 'solar', '2024-05-01 10:00', 5, 1, 2);
         INSERT INTO contact_custom_fields (contact_id, field_id, value) VALUES
             ('{id}', {budget}, '1200'),
             ('{id}', {size}, '7.5'),
             ('{id}', {time}, '\"morning\"');",
        budget = field(1, "budget"),
        size = field(1, "system_size"),
        time = field(1, "preferred_time"),
    )
}

fn full_contact_values() -> Vec<FieldValue> {
    vec![
        fv("appointment", "preferred_time", "\"morning\""),
        fv("customer", "budget", "1200"),
        fv("lead", "system_size", "7.5"),
    ]
}

#[tokio::test]
async fn first_run_loads_existing_rows_then_streams_changes() {
    let db = TestDb::spawn_ready(2000).await;
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

#[tokio::test]
async fn soft_delete_keeps_last_values_and_marks_rows_deleted_at_the_commit_time() {
    let db = TestDb::spawn_ready(200).await;
    // Neither the server's default time zone nor the process's may leak into deleted_at.
    exec(
        &db.client().await,
        &format!(
            "ALTER DATABASE {} SET timezone TO 'America/New_York'",
            db.name
        ),
    )
    .await;
    let daemon = Daemon::start(BIN, &env_with(&db, &[("TZ", "America/New_York")]));
    caught_up(&db, &daemon).await;
    let mut client = db.client().await;
    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    let customer = live_row(&client, "customers", C1).await;
    assert_eq!(customer["firstname"], "Ada");
    assert_eq!(customer["country"], "US");
    let lead = live_row(&client, "leads", C1).await;
    assert_eq!(lead["productid"], "SOLAR");
    assert_eq!(lead["disposition"], "new");
    let appointment = live_row(&client, "appointments", C1).await;
    assert_eq!(appointment["disposition"], "Show");
    assert_eq!(
        (
            &appointment["apptset"],
            &appointment["verified"],
            &appointment["confirmed"]
        ),
        (&Value::Bool(true), &Value::Bool(true), &Value::Bool(false))
    );
    assert_eq!(values(&client, C1).await, full_contact_values());

    exec(
        &client,
        &format!(
            "UPDATE contacts SET firstname = 'Augusta', lead_status = 'won', tags = 'hvac',
                    appointment_result_id = 3 WHERE id = '{C1}'"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        live_row(&client, "customers", C1).await["firstname"],
        "Augusta"
    );
    let lead = live_row(&client, "leads", C1).await;
    assert_eq!(
        (&lead["productid"], &lead["disposition"]),
        (&"HVAC".into(), &"won".into())
    );

    // The appointment leaves first; the contact's delete must not move its deleted_at.
    let appointment_left = commit_timed(
        &mut client,
        &format!("UPDATE contacts SET appointment_date = NULL WHERE id = '{C1}'"),
    )
    .await;
    // A lead the application created under the owned customer is not the daemon's.
    let app_lead: Uuid = client
        .query_one(
            &format!(
                "INSERT INTO leads (customer_id, workspace_id, productid)
                 VALUES ('{C1}', {W1}, 'APP') RETURNING id"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let deleted = commit_timed(
        &mut client,
        &format!("DELETE FROM contacts WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    for table in ["customers", "leads"] {
        deleted.assert_holds(deleted_at(&client, table, C1).await, table);
    }
    appointment_left.assert_holds(
        deleted_at(&client, "appointments", C1).await,
        "appointments",
    );
    assert_eq!(
        count(
            &client,
            &format!("SELECT count(*) FROM leads WHERE id = '{app_lead}' AND deleted_at IS NULL")
        )
        .await,
        1,
        "the application's lead was marked"
    );
    let customer = row(&client, "customers", C1).await.unwrap();
    assert_eq!(
        customer["firstname"], "Augusta",
        "last values kept: {customer}"
    );
    let lead = row(&client, "leads", C1).await.unwrap();
    assert_eq!(
        (&lead["productid"], &lead["disposition"]),
        (&"HVAC".into(), &"won".into())
    );
    let appointment = row(&client, "appointments", C1).await.unwrap();
    assert_eq!(appointment["disposition"], "Cancelled");
    assert_eq!(values(&client, C1).await, vec![]);
}

#[tokio::test]
async fn hard_delete_removes_rows_and_values_and_reinsert_creates_them_again() {
    let (db, daemon, client) = running(200, &[("LEADSYNC_SYNC__DELETE_MODE", "hard")]).await;
    exec(&client, &insert_full_contact(C1)).await;
    exec(&client, &insert_full_contact(C2)).await;
    synced(&db, &daemon).await;
    assert_eq!(values(&client, C1).await, full_contact_values());

    exec(&client, &format!("DELETE FROM contacts WHERE id = '{C1}'")).await;
    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = NULL WHERE id = '{C2}'"),
    )
    .await;
    synced(&db, &daemon).await;
    for table in ["customers", "leads", "appointments"] {
        assert_eq!(
            row(&client, table, C1).await,
            None,
            "{table} row of C1 left"
        );
    }
    live_row(&client, "customers", C2).await;
    assert_eq!(row(&client, "leads", C2).await, None);
    assert_eq!(row(&client, "appointments", C2).await, None);
    assert_eq!(values(&client, C1).await, vec![]);
    assert_eq!(
        values(&client, C2).await,
        vec![fv("customer", "budget", "1200")]
    );

    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'back' WHERE id = '{C2}'"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(live_row(&client, "leads", C2).await["disposition"], "back");
    assert_eq!(values(&client, C2).await, full_contact_values());

    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    assert_eq!(
        live_row(&client, "leads", C1).await["id"],
        lead_id(C1).as_str()
    );
    assert_eq!(values(&client, C1).await, full_contact_values());
}

#[tokio::test]
async fn reinserted_contact_id_revives_the_same_rows_with_deleted_at_null() {
    let (db, daemon, client) = running(200, &[]).await;
    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    exec(&client, &format!("DELETE FROM contacts WHERE id = '{C1}'")).await;
    synced(&db, &daemon).await;
    assert!(deleted_at(&client, "leads", C1).await.is_some());

    exec(&client, &insert_full_contact(C1)).await;
    exec(
        &client,
        &format!("UPDATE contacts SET firstname = 'Back' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        live_row(&client, "customers", C1).await["firstname"],
        "Back"
    );
    assert_eq!(
        live_row(&client, "leads", C1).await["id"],
        lead_id(C1).as_str()
    );
    assert_eq!(
        live_row(&client, "appointments", C1).await["id"],
        appointment_id(C1).as_str()
    );
    for table in ["customers", "leads", "appointments"] {
        assert_eq!(
            count(
                &client,
                &format!("SELECT count(*) FROM {table} WHERE migrated_from_contact_id = '{C1}'")
            )
            .await,
            1,
            "{table}"
        );
    }
    assert_eq!(values(&client, C1).await, full_contact_values());
}

#[tokio::test]
async fn workspace_move_carries_customer_lead_and_appointment() {
    let (db, daemon, client) = running(200, &[]).await;
    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    let w2: Uuid = client
        .query_one(&format!("SELECT {W2}"), &[])
        .await
        .unwrap()
        .get(0);

    exec(
        &client,
        &format!("UPDATE contacts SET workspace_id = {W2} WHERE id = '{C1}'"),
    )
    .await;
    // A generated contact with whatever rows it has moves too.
    exec(
        &client,
        &format!(
            "UPDATE contacts SET workspace_id = {W1}
              WHERE id = (SELECT id FROM contacts WHERE workspace_id = {W2} AND lead_status IS NOT NULL
                          AND appointment_date IS NOT NULL ORDER BY id LIMIT 1)"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    for table in ["customers", "leads", "appointments"] {
        assert_eq!(
            live_row(&client, table, C1).await["workspace_id"],
            w2.to_string().as_str(),
            "{table}"
        );
    }
    // Values stay with their parents even though their fields belong to workspace 1.
    assert_eq!(values(&client, C1).await, full_contact_values());
}

#[tokio::test]
async fn lead_status_set_changed_cleared_and_set_again_drives_the_lead_and_its_values() {
    let (db, daemon, mut client) = running(200, &[]).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, tags, appointment_date)
             VALUES ('{C1}', {W1}, 'Lea', 'roofing', '2024-06-01 09:30');
             INSERT INTO contact_custom_fields (contact_id, field_id, value) VALUES
                 ('{C1}', {size}, '9.1'), ('{C1}', {utility}, '{{\"provider\": \"Xcel\"}}'),
                 ('{C1}', {time}, '\"evening\"'), ('{C1}', {budget}, '500');",
            size = field(1, "system_size"),
            utility = field(1, "utility"),
            time = field(1, "preferred_time"),
            budget = field(1, "budget"),
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(row(&client, "leads", C1).await, None);
    assert_eq!(row(&client, "appointments", C1).await, None);
    assert_eq!(
        values(&client, C1).await,
        vec![fv("customer", "budget", "500")]
    );
    let all_values = vec![
        fv("appointment", "preferred_time", "\"evening\""),
        fv("customer", "budget", "500"),
        fv("lead", "system_size", "9.1"),
        fv("lead", "utility", "{\"provider\": \"Xcel\"}"),
    ];

    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'new' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    let lead = live_row(&client, "leads", C1).await;
    assert_eq!(
        (&lead["disposition"], &lead["productid"]),
        (&"new".into(), &"ROOFING".into())
    );
    assert_eq!(lead["source"], "Unknown");
    live_row(&client, "appointments", C1).await;
    assert_eq!(values(&client, C1).await, all_values);

    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'contacted' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        live_row(&client, "leads", C1).await["disposition"],
        "contacted"
    );

    let cleared = commit_timed(
        &mut client,
        &format!("UPDATE contacts SET lead_status = NULL WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    cleared.assert_holds(deleted_at(&client, "leads", C1).await, "lead");
    cleared.assert_holds(deleted_at(&client, "appointments", C1).await, "appointment");
    assert_eq!(deleted_at(&client, "customers", C1).await, None);
    assert_eq!(
        row(&client, "leads", C1).await.unwrap()["disposition"],
        "contacted"
    );
    assert_eq!(
        values(&client, C1).await,
        vec![fv("customer", "budget", "500")]
    );

    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = '' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    let lead = live_row(&client, "leads", C1).await;
    assert_eq!(
        (&lead["id"], &lead["disposition"]),
        (&lead_id(C1).into(), &"".into())
    );
    assert_eq!(
        live_row(&client, "appointments", C1).await["id"],
        appointment_id(C1).as_str()
    );
    assert_eq!(values(&client, C1).await, all_values);
}

#[tokio::test]
async fn tags_choose_the_product_by_the_first_matching_rule() {
    let (db, daemon, client) = running(200, &[]).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, lead_status, tags)
             VALUES ('{C1}', {W1}, 'new', 'solar'), ('{C2}', {W1}, 'new', 'roofing,solar')"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(live_row(&client, "leads", C1).await["productid"], "SOLAR");
    assert_eq!(live_row(&client, "leads", C2).await["productid"], "SOLAR");

    let steps = [
        ("'hvac'", "HVAC"),
        ("'hvac,roofing'", "HVAC"),
        ("'roofing,solar'", "SOLAR"),
        ("'vip roofing'", "ROOFING"),
        ("'Solar'", "DEFAULT"),
        ("''", "DEFAULT"),
        ("NULL", "DEFAULT"),
        ("'residential solar'", "SOLAR"),
    ];
    for (tags, product) in steps {
        exec(
            &client,
            &format!("UPDATE contacts SET tags = {tags} WHERE id = '{C1}'"),
        )
        .await;
        synced(&db, &daemon).await;
        let lead = live_row(&client, "leads", C1).await;
        assert_eq!(lead["productid"], product, "tags {tags}");
        assert_eq!(lead["id"], lead_id(C1).as_str());
    }
}

#[tokio::test]
async fn configured_case_insensitive_rules_apply_in_their_order() {
    let rules = "roof=ROOFING,solar=SOLAR";
    let (db, daemon, client) = running(
        200,
        &[
            ("LEADSYNC_TRANSFORM__PRODUCT_RULES", rules),
            ("LEADSYNC_TRANSFORM__CASE_INSENSITIVE", "true"),
        ],
    )
    .await;
    let mut settings: Settings = db.settings();
    settings.transform.product_rules = leadsync::config::parse_rules(rules).unwrap();
    settings.transform.case_insensitive = true;
    caught_up(&db, &daemon).await;
    db.assert_projection(&settings).await;

    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, lead_status, tags) VALUES
                 ('{C1}', {W1}, 'new', 'SOLAR and ROOFing'), ('{C2}', {W1}, 'new', 'Solar'),
                 ('{C3}', {W1}, 'new', 'hvac')"
        ),
    )
    .await;
    caught_up(&db, &daemon).await;
    db.assert_projection(&settings).await;
    assert_eq!(live_row(&client, "leads", C1).await["productid"], "ROOFING");
    assert_eq!(live_row(&client, "leads", C2).await["productid"], "SOLAR");
    assert_eq!(live_row(&client, "leads", C3).await["productid"], "DEFAULT");
}

#[tokio::test]
async fn appointment_follows_date_status_and_result_changes() {
    let (db, daemon, mut client) = running(200, &[]).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, lead_status) VALUES ('{C1}', {W1}, 'new')"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(row(&client, "appointments", C1).await, None);

    let set = |sql: &str| format!("UPDATE contacts SET {sql} WHERE id = '{C1}'");
    exec(&client, &set("appointment_date = '2024-03-10 15:00'")).await;
    synced(&db, &daemon).await;
    let a = live_row(&client, "appointments", C1).await;
    assert_eq!(a["id"], appointment_id(C1).as_str());
    assert_eq!(a["lead_id"], lead_id(C1).as_str());
    assert_eq!(
        (
            &a["apptdate"],
            &a["setdate"],
            &a["verifieddate"],
            &a["confirmeddate"]
        ),
        (
            &"2024-03-10T15:00:00".into(),
            &"2024-03-09T15:00:00".into(),
            &"2024-03-10T11:00:00".into(),
            &"2024-03-10T14:00:00".into()
        )
    );
    assert_eq!(a["disposition"], "Pending");

    exec(&client, &set("appointment_date = '2024-03-12 08:15'")).await;
    synced(&db, &daemon).await;
    let a = live_row(&client, "appointments", C1).await;
    assert_eq!(
        (&a["apptdate"], &a["setdate"]),
        (&"2024-03-12T08:15:00".into(), &"2024-03-11T08:15:00".into())
    );

    // (status, apptset, verified, confirmed, lead stg_id)
    let statuses = [
        ("3", false, false, false, 3),
        ("4", true, false, false, 4),
        ("5", true, true, false, 1),
        ("6", true, true, true, 1),
        ("9", true, true, true, 1),
        ("NULL", false, false, false, 1),
    ];
    for (status, apptset, verified, confirmed, stg) in statuses {
        exec(&client, &set(&format!("appointment_status_id = {status}"))).await;
        synced(&db, &daemon).await;
        let a = live_row(&client, "appointments", C1).await;
        assert_eq!(
            (&a["apptset"], &a["verified"], &a["confirmed"]),
            (&apptset.into(), &verified.into(), &confirmed.into()),
            "status {status}"
        );
        assert_eq!(
            live_row(&client, "leads", C1).await["stg_id"],
            stg,
            "status {status}"
        );
    }

    let results = [
        ("1", "Show"),
        ("2", "No Show"),
        ("3", "Cancelled"),
        ("4", "Reschedule"),
        ("0", "Pending"),
        ("NULL", "Pending"),
    ];
    for (result, disposition) in results {
        exec(&client, &set(&format!("appointment_result_id = {result}"))).await;
        synced(&db, &daemon).await;
        assert_eq!(
            live_row(&client, "appointments", C1).await["disposition"],
            disposition,
            "result {result}"
        );
    }

    exec(&client, &set("appointment_result_id = 2")).await;
    let cleared = commit_timed(&mut client, &set("appointment_date = NULL")).await;
    synced(&db, &daemon).await;
    cleared.assert_holds(deleted_at(&client, "appointments", C1).await, "appointment");
    assert_eq!(
        row(&client, "appointments", C1).await.unwrap()["disposition"],
        "No Show"
    );
    live_row(&client, "leads", C1).await;

    exec(&client, &set("appointment_date = '2024-04-01 12:00'")).await;
    synced(&db, &daemon).await;
    let a = live_row(&client, "appointments", C1).await;
    assert_eq!(
        (&a["id"], &a["apptdate"]),
        (&appointment_id(C1).into(), &"2024-04-01T12:00:00".into())
    );
}

/// An application-created customer with a lead and a budget value: not owned, never touched.
async fn insert_application_rows(client: &Client) -> (Uuid, Uuid) {
    let row = client
        .query_one(
            &format!(
                "WITH c AS (INSERT INTO customers (workspace_id, firstname) VALUES ({W1}, 'App')
                            RETURNING cst_id),
                      v AS (INSERT INTO customer_custom_fields (customer_id, field_id, value)
                            SELECT cst_id, {budget}, '\"app\"' FROM c)
                 INSERT INTO leads (customer_id, workspace_id, productid)
                 SELECT cst_id, {W1}, 'APP' FROM c RETURNING customer_id, id",
                budget = field(1, "budget"),
            ),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn application_rows_intact(client: &Client, (customer, lead): (Uuid, Uuid)) {
    let intact = count(
        client,
        &format!(
            "SELECT count(*) FROM customers c
               JOIN leads l ON l.customer_id = c.cst_id
               JOIN customer_custom_fields v ON v.customer_id = c.cst_id
              WHERE c.cst_id = '{customer}' AND l.id = '{lead}' AND c.firstname = 'App'
                AND c.deleted_at IS NULL AND l.deleted_at IS NULL AND v.value = '\"app\"'"
        ),
    )
    .await;
    assert_eq!(intact, 1, "the application's own rows were touched");
}

/// Field values under owned parents, in all three tables.
async fn owned_values(client: &Client) -> i64 {
    count(
        client,
        "SELECT (SELECT count(*) FROM customer_custom_fields v
                   JOIN customers p ON p.cst_id = v.customer_id
                  WHERE p.migrated_from_contact_id IS NOT NULL)
              + (SELECT count(*) FROM lead_custom_fields v JOIN leads p ON p.id = v.lead_id
                  WHERE p.migrated_from_contact_id IS NOT NULL)
              + (SELECT count(*) FROM appointment_custom_fields v
                   JOIN appointments p ON p.id = v.appointment_id
                  WHERE p.migrated_from_contact_id IS NOT NULL)",
    )
    .await
}

#[tokio::test]
async fn truncating_field_values_removes_owned_values_only() {
    let (db, daemon, client) = running(300, &[]).await;
    let app = insert_application_rows(&client).await;
    assert!(owned_values(&client).await > 100);
    exec(&client, "TRUNCATE contact_custom_fields").await;
    synced(&db, &daemon).await;
    assert_eq!(owned_values(&client).await, 0);
    assert_eq!(
        owned_counts(&client, "customers").await.0,
        count(
            &client,
            &format!("SELECT count(*) FROM contacts WHERE {}", not_parked("id"))
        )
        .await
    );
    application_rows_intact(&client, app).await;
    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    assert_eq!(values(&client, C1).await, full_contact_values());
}

#[tokio::test]
async fn truncate_marks_every_owned_row_deleted_and_later_inserts_apply() {
    let (db, daemon, mut client) = running(300, &[]).await;
    let app = insert_application_rows(&client).await;
    let before: Vec<(String, i64)> = {
        let mut v = Vec::new();
        for table in ["customers", "leads", "appointments"] {
            let n = count(
                &client,
                &format!("SELECT count(*) FROM {table} WHERE migrated_from_contact_id IS NOT NULL"),
            )
            .await;
            assert!(n > 0, "{table} empty before the truncate");
            v.push((table.to_owned(), n));
        }
        v
    };

    // Changes before and after the TRUNCATE in its transaction keep their order.
    let truncated = commit_timed(
        &mut client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, lead_status) VALUES ('{C2}', {W1}, 'Gone', 'new');
             TRUNCATE contacts CASCADE;
             INSERT INTO contacts (id, workspace_id, firstname, lead_status) VALUES ('{C3}', {W1}, 'Kept', 'new');"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert!(
        row(&client, "customers", C2)
            .await
            .is_none_or(|c| c["deleted_at"] != Value::Null)
    );
    assert_eq!(
        live_row(&client, "customers", C3).await["firstname"],
        "Kept"
    );
    live_row(&client, "leads", C3).await;
    for (table, n) in &before {
        let (marked, from, to): (i64, Option<NaiveDateTime>, Option<NaiveDateTime>) = {
            let r = client
                .query_one(
                    &format!(
                        "SELECT count(*), min(deleted_at), max(deleted_at) FROM {table}
                          WHERE migrated_from_contact_id IS NOT NULL AND deleted_at IS NOT NULL
                            AND migrated_from_contact_id NOT IN ('{C2}', '{C3}')"
                    ),
                    &[],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1), r.get(2))
        };
        assert_eq!(marked, *n, "{table}: every owned row marked");
        truncated.assert_holds(from, table);
        truncated.assert_holds(to, table);
    }
    assert_eq!(owned_values(&client).await, 0);
    application_rows_intact(&client, app).await;

    // A new contact, and a generated contact id coming back.
    exec(&client, &insert_full_contact(C1)).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, lead_status, tags)
             VALUES (md5('contact1')::uuid, {W2}, 'won', 'hvac')"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(values(&client, C1).await, full_contact_values());
    let revived = client
        .query_one("SELECT md5('contact1')::uuid::text", &[])
        .await
        .unwrap()
        .get::<_, String>(0);
    assert_eq!(
        live_row(&client, "leads", &revived).await["productid"],
        "HVAC"
    );
    assert_eq!(
        owned_counts(&client, "customers").await.0,
        3,
        "C1, C3 and the revived contact"
    );
}

#[tokio::test]
async fn truncate_in_hard_mode_removes_owned_rows_only() {
    let (db, daemon, client) = running(300, &[("LEADSYNC_SYNC__DELETE_MODE", "hard")]).await;
    let app = insert_application_rows(&client).await;
    exec(&client, "TRUNCATE contacts CASCADE").await;
    synced(&db, &daemon).await;
    for table in ["customers", "leads", "appointments"] {
        assert_eq!(
            count(
                &client,
                &format!("SELECT count(*) FROM {table} WHERE migrated_from_contact_id IS NOT NULL")
            )
            .await,
            0,
            "{table}"
        );
    }
    assert_eq!(owned_values(&client).await, 0);
    application_rows_intact(&client, app).await;
    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    assert_eq!(values(&client, C1).await, full_contact_values());
}

#[tokio::test]
async fn field_values_follow_their_rows_and_wait_for_their_parent() {
    let (db, daemon, client) = running(200, &[]).await;
    let budget = field(1, "budget");
    let size = field(1, "system_size");
    let time = field(1, "preferred_time");
    let utility = field(1, "utility");
    let roof_age = field(1, "roof_age");
    let foreign = field(2, "hoa");
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname)
             VALUES ('{C1}', {W1}, 'Val'), ('{C2}', {W1}, 'Other')"
        ),
    )
    .await;
    exec(
        &client,
        &format!(
            "INSERT INTO contact_custom_fields (contact_id, field_id, value, created_at, updated_at)
             VALUES ('{C1}', {budget}, '100', '2024-01-01', '2024-01-02')"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![fv("customer", "budget", "100")]
    );

    exec(
        &client,
        &format!(
            "UPDATE contact_custom_fields SET value = '250', updated_at = '2024-02-01'
              WHERE contact_id = '{C1}' AND field_id = {budget};
             INSERT INTO contact_custom_fields (contact_id, field_id, value)
             VALUES ('{C1}', {foreign}, 'true');"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![
            fv("customer", "budget", "250"),
            fv("customer", "hoa", "true")
        ]
    );

    // Key changes: the value moves to another field, then to another contact.
    exec(
        &client,
        &format!(
            "UPDATE contact_custom_fields SET field_id = {roof_age}
              WHERE contact_id = '{C1}' AND field_id = {budget}"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![
            fv("customer", "hoa", "true"),
            fv("customer", "roof_age", "250")
        ]
    );
    exec(
        &client,
        &format!(
            "UPDATE contact_custom_fields SET contact_id = '{C2}'
              WHERE contact_id = '{C1}' AND field_id = {roof_age}"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![fv("customer", "hoa", "true")]
    );
    assert_eq!(
        values(&client, C2).await,
        vec![fv("customer", "roof_age", "250")]
    );

    exec(
        &client,
        &format!(
            "DELETE FROM contact_custom_fields WHERE contact_id = '{C1}' AND field_id = {budget}"
        ),
    )
    .await;
    // A lead value and an appointment value without their parents; then changed while waiting.
    exec(
        &client,
        &format!(
            "INSERT INTO contact_custom_fields (contact_id, field_id, value)
             VALUES ('{C1}', {size}, '3.5'), ('{C1}', {time}, NULL)"
        ),
    )
    .await;
    exec(
        &client,
        &format!(
            "UPDATE contact_custom_fields SET value = '4.5' WHERE contact_id = '{C1}' AND field_id = {size};
             UPDATE contact_custom_fields SET value = 'null' WHERE contact_id = '{C1}' AND field_id = {time};
             INSERT INTO contact_custom_fields (contact_id, field_id, value) VALUES ('{C1}', {utility}, '1');
             DELETE FROM contact_custom_fields WHERE contact_id = '{C1}' AND field_id = {utility};"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![fv("customer", "hoa", "true")]
    );

    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'new' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![
            fv("customer", "hoa", "true"),
            fv("lead", "system_size", "4.5")
        ]
    );

    exec(
        &client,
        &format!("UPDATE contacts SET appointment_date = '2024-09-09 09:00' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![
            fv("appointment", "preferred_time", "null"),
            fv("customer", "hoa", "true"),
            fv("lead", "system_size", "4.5")
        ]
    );

    // Deleting a field definition removes its values.
    exec(
        &client,
        &format!("DELETE FROM custom_fields WHERE id = {foreign}"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(
        values(&client, C1).await,
        vec![
            fv("appointment", "preferred_time", "null"),
            fv("lead", "system_size", "4.5")
        ]
    );
}

#[tokio::test]
async fn field_context_change_reroutes_all_its_values() {
    let (db, daemon, client) = running(400, &[]).await;
    let app = insert_application_rows(&client).await;
    let routed = |target: &'static str, name: &'static str| {
        let client = &client;
        async move {
            let (parent, key, fk) = match target {
                "customer_custom_fields" => ("customers", "cst_id", "customer_id"),
                "lead_custom_fields" => ("leads", "id", "lead_id"),
                _ => ("appointments", "id", "appointment_id"),
            };
            count(
                client,
                &format!(
                    "SELECT count(*) FROM {target} v JOIN custom_fields f ON f.id = v.field_id
                       JOIN {parent} p ON p.{key} = v.{fk}
                      WHERE f.name = '{name}' AND p.migrated_from_contact_id IS NOT NULL"
                ),
            )
            .await
        }
    };
    let source = |filter: &'static str, name: &'static str| {
        let client = &client;
        async move {
            count(
                client,
                &format!(
                    "SELECT count(*) FROM contact_custom_fields v
                       JOIN custom_fields f ON f.id = v.field_id
                       JOIN contacts c ON c.id = v.contact_id
                      WHERE f.name = '{name}' AND {filter} AND {parked}",
                    parked = not_parked("c.id"),
                ),
            )
            .await
        }
    };
    let all_budget = source("true", "budget").await;
    assert!(all_budget > 20);
    assert_eq!(routed("customer_custom_fields", "budget").await, all_budget);

    exec(
        &client,
        "UPDATE custom_fields SET context_type = 'lead' WHERE name = 'budget'",
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(routed("customer_custom_fields", "budget").await, 0);
    assert_eq!(
        routed("lead_custom_fields", "budget").await,
        source("c.lead_status IS NOT NULL", "budget").await
    );

    exec(
        &client,
        "UPDATE custom_fields SET context_type = 'appointment' WHERE name IN ('budget', 'system_size')",
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(routed("lead_custom_fields", "budget").await, 0);
    assert_eq!(routed("lead_custom_fields", "system_size").await, 0);
    let with_appointment = "c.lead_status IS NOT NULL AND c.appointment_date IS NOT NULL";
    assert_eq!(
        routed("appointment_custom_fields", "system_size").await,
        source(with_appointment, "system_size").await
    );
    assert!(source(with_appointment, "system_size").await > 0);

    // NULL counts as 'contact'.
    exec(
        &client,
        "UPDATE custom_fields SET context_type = NULL WHERE name = 'budget'",
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(routed("appointment_custom_fields", "budget").await, 0);
    assert_eq!(routed("customer_custom_fields", "budget").await, all_budget);
    application_rows_intact(&client, app).await;

    // A field created mid-stream, its values, and a context change in the same transaction
    // as more of its values.
    exec(
        &client,
        "INSERT INTO custom_fields (id, workspace_id, name, context_type)
         SELECT md5('warranty' || w.id)::uuid, w.id, 'warranty', 'lead' FROM workspaces w;
         INSERT INTO contact_custom_fields (contact_id, field_id, value)
         SELECT c.id, md5('warranty' || c.workspace_id)::uuid, '\"10y\"'
           FROM contacts c WHERE c.id::text < '8';",
    )
    .await;
    synced(&db, &daemon).await;
    let with_lead = source("c.lead_status IS NOT NULL", "warranty").await;
    assert!(with_lead > 0);
    assert_eq!(routed("lead_custom_fields", "warranty").await, with_lead);
    exec(
        &client,
        "BEGIN;
         INSERT INTO contact_custom_fields (contact_id, field_id, value)
         SELECT c.id, md5('warranty' || c.workspace_id)::uuid, '\"5y\"'
           FROM contacts c WHERE c.id::text >= '8';
         UPDATE custom_fields SET context_type = 'appointment' WHERE name = 'warranty';
         COMMIT;",
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(routed("lead_custom_fields", "warranty").await, 0);
    assert_eq!(
        routed("appointment_custom_fields", "warranty").await,
        source(with_appointment, "warranty").await
    );
}

#[tokio::test]
async fn contact_id_change_retires_the_old_rows_and_creates_new_ones() {
    let (db, daemon, mut client) = running(200, &[]).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, lead_status, appointment_date)
             VALUES ('{C1}', {W1}, 'Mover', 'new', '2024-07-07 07:00')"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    let moved = commit_timed(
        &mut client,
        &format!("UPDATE contacts SET id = '{C2}' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    for table in ["customers", "leads", "appointments"] {
        moved.assert_holds(deleted_at(&client, table, C1).await, table);
        live_row(&client, table, C2).await;
    }
    assert_eq!(
        live_row(&client, "customers", C2).await["firstname"],
        "Mover"
    );
}

#[tokio::test]
async fn replica_identity_full_keeps_the_invariant() {
    let (db, daemon, mut client) = running(300, &[]).await;
    exec(
        &client,
        "ALTER TABLE contacts REPLICA IDENTITY FULL;
         ALTER TABLE contact_custom_fields REPLICA IDENTITY FULL;
         ALTER TABLE contacts ALTER COLUMN tags SET STORAGE EXTERNAL;",
    )
    .await;
    exec(&client, &insert_full_contact(C1)).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, tags)
             VALUES ('{C2}', {W1}, 'Toast',
                     (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 700)) || ' hvac')"
        ),
    )
    .await;
    synced(&db, &daemon).await;

    exec(
        &client,
        &format!(
            "UPDATE contacts SET firstname = 'Full', tags = 'roofing' WHERE id = '{C1}';
             UPDATE contacts SET notes = 'no projected column' WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 30);
             UPDATE contacts SET lead_status = 'won', tags = 'solar' WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 40);
             UPDATE contacts SET appointment_date = NULL WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 20);
             UPDATE contacts SET workspace_id = {W2} WHERE id IN (SELECT id FROM contacts WHERE workspace_id = {W1} ORDER BY id LIMIT 10);
             UPDATE contacts SET lead_status = 'new' WHERE id = '{C2}';
             UPDATE contact_custom_fields SET value = '\"full\"' WHERE contact_id IN (SELECT id FROM contacts ORDER BY id LIMIT 40);
             DELETE FROM contact_custom_fields WHERE contact_id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 15);
             DELETE FROM contacts WHERE id IN (SELECT id FROM contacts WHERE id NOT IN ('{C1}', '{C2}') ORDER BY md5(id::text) LIMIT 10);"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(live_row(&client, "leads", C1).await["productid"], "ROOFING");
    assert_eq!(live_row(&client, "leads", C2).await["productid"], "HVAC");
    assert_eq!(
        live_row(&client, "customers", C2).await["firstname"],
        "Toast"
    );

    let cleared = commit_timed(
        &mut client,
        &format!("UPDATE contacts SET lead_status = NULL WHERE id = '{C1}'"),
    )
    .await;
    let deleted = commit_timed(
        &mut client,
        &format!("DELETE FROM contacts WHERE id = '{C2}'"),
    )
    .await;
    synced(&db, &daemon).await;
    cleared.assert_holds(deleted_at(&client, "leads", C1).await, "lead of C1");
    deleted.assert_holds(deleted_at(&client, "customers", C2).await, "customer of C2");
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL"
        )
        .await,
        11
    );
}

/// Reads the changes a second slot `peek` holds and returns the Updates of `table` with the
/// table's Relation.
async fn peek_updates(
    client: &Client,
    peek: &str,
    publication: &str,
    table: &str,
) -> Vec<(Relation, Update)> {
    let rows = client
        .query(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
                 'proto_version', '1', 'publication_names', $2)",
            &[&peek, &publication],
        )
        .await
        .unwrap();
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    let mut updates = Vec::new();
    for row in rows {
        let data: Vec<u8> = row.get(0);
        match decode_message(&bytes::Bytes::from(data)).unwrap() {
            LogicalMessage::Relation(r) => {
                relations.insert(r.id, r);
            }
            LogicalMessage::Update(u) => {
                let relation = relations[&u.relation_id].clone();
                if relation.name == table {
                    updates.push((relation, u));
                }
            }
            _ => {}
        }
    }
    updates
}

fn datum_of<'a>(relation: &Relation, update: &'a Update, column: &str) -> &'a Datum {
    let index = relation.column_index(column).unwrap();
    update.new.get(index).unwrap()
}

/// 20 kB of incompressible text, stored out of line once the column is `STORAGE EXTERNAL`.
const BIG_TEXT: &str = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 700))";

fn insert_toasted_contact(id: &str) -> String {
    format!(
        "INSERT INTO contacts (id, workspace_id, firstname, lastname, email, st_address, city,
                               lead_source, tags)
         VALUES ('{id}', {W1}, 'Tess', 'Toast', 'tess@example.com', {BIG_TEXT}, 'Reno', 'web',
                 {BIG_TEXT} || ' roofing')"
    )
}

#[tokio::test]
async fn unchanged_toasted_tags_still_decide_the_product() {
    let db = TestDb::spawn_ready(200).await;
    let client = db.client().await;
    exec(
        &client,
        "ALTER TABLE contacts ALTER COLUMN tags SET STORAGE EXTERNAL,
                              ALTER COLUMN st_address SET STORAGE EXTERNAL",
    )
    .await;
    // C2 comes through the first load, C1 through the stream.
    exec(&client, &insert_toasted_contact(C2)).await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    caught_up(&db, &daemon).await;
    exec(&client, &insert_toasted_contact(C1)).await;
    synced(&db, &daemon).await;
    let out_of_line = count(
        &client,
        &format!(
            "SELECT count(*) FROM contacts WHERE id IN ('{C1}', '{C2}')
                AND pg_column_size(tags) > 20000 AND pg_column_compression(tags) IS NULL
                AND pg_column_size(st_address) > 20000"
        ),
    )
    .await;
    assert_eq!(
        out_of_line, 2,
        "tags is not stored uncompressed out of line"
    );
    let customers_before = [
        live_row(&client, "customers", C1).await,
        live_row(&client, "customers", C2).await,
    ];

    let peek = format!("peek_{}", db.slot);
    exec(
        &client,
        &format!("SELECT pg_create_logical_replication_slot('{peek}', 'pgoutput')"),
    )
    .await;
    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'new' WHERE id IN ('{C1}', '{C2}')"),
    )
    .await;
    // Inserted and given a lead status in one transaction: the update still leaves tags out.
    exec(
        &client,
        &format!(
            "BEGIN; {}; UPDATE contacts SET lead_status = 'new' WHERE id = '{C3}'; COMMIT;",
            insert_toasted_contact(C3)
        ),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(live_row(&client, "leads", C3).await["productid"], "ROOFING");

    for (contact, before) in [C1, C2].into_iter().zip(customers_before) {
        let lead = live_row(&client, "leads", contact).await;
        assert_eq!(lead["productid"], "ROOFING", "{contact}");
        assert_eq!(lead["source"], "web", "{contact}");
        assert_eq!(live_row(&client, "customers", contact).await, before);
    }

    let updates = peek_updates(&client, &peek, &db.settings().publication.name, "contacts").await;
    assert_eq!(updates.len(), 3);
    for (relation, update) in &updates {
        assert_eq!(datum_of(relation, update, "tags"), &Datum::UnchangedToast);
        assert_eq!(
            datum_of(relation, update, "lead_status"),
            &Datum::Text(bytes::Bytes::from_static(b"new"))
        );
    }
    exec(
        &client,
        &format!("SELECT pg_drop_replication_slot('{peek}')"),
    )
    .await;

    // Later changes that leave tags out too, some while the daemon is down.
    exec(
        &client,
        &format!("UPDATE contacts SET firstname = 'Moved', workspace_id = {W2} WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    assert_eq!(live_row(&client, "leads", C1).await["productid"], "ROOFING");
    let mut daemon = daemon;
    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .expect("stops");
    assert!(status.success(), "{}", daemon.log());
    exec(
        &client,
        &format!(
            "UPDATE contacts SET lead_status = NULL WHERE id IN ('{C1}', '{C2}');
             UPDATE contacts SET lead_status = 'won', city = 'Tampa' WHERE id IN ('{C1}', '{C2}');"
        ),
    )
    .await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    synced(&db, &daemon).await;
    for contact in [C1, C2] {
        let lead = live_row(&client, "leads", contact).await;
        assert_eq!(
            (&lead["productid"], &lead["disposition"]),
            (&"ROOFING".into(), &"won".into())
        );
        let customer = live_row(&client, "customers", contact).await;
        assert!(
            customer["address1"]
                .as_str()
                .is_some_and(|a| a.len() > 20000),
            "{contact}"
        );
    }
}

fn insert_toasted_values(contact: &str) -> String {
    let big = format!("jsonb_build_object('notes', {BIG_TEXT})");
    format!(
        "INSERT INTO contacts (id, workspace_id, firstname) VALUES ('{contact}', {W1}, 'Jay');
         INSERT INTO contact_custom_fields (contact_id, field_id, value)
         VALUES ('{contact}', {budget}, {big}), ('{contact}', {size}, {big});",
        budget = field(1, "budget"),
        size = field(1, "system_size"),
    )
}

/// The source's jsonb text of the contact's value whose field has `context`.
async fn source_value(client: &Client, contact: &str, context: &str) -> String {
    client
        .query_one(
            &format!(
                "SELECT v.value::text FROM contact_custom_fields v
                   JOIN custom_fields f ON f.id = v.field_id
                  WHERE v.contact_id = '{contact}' AND f.context_type = '{context}'"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn unchanged_toasted_field_value_stays_intact() {
    let db = TestDb::spawn_ready(200).await;
    let client = db.client().await;
    exec(
        &client,
        "ALTER TABLE contact_custom_fields ALTER COLUMN value SET STORAGE EXTERNAL",
    )
    .await;
    // C2 comes through the first load, C1 through the stream.
    exec(&client, &insert_toasted_values(C2)).await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    caught_up(&db, &daemon).await;
    exec(&client, &insert_toasted_values(C1)).await;
    synced(&db, &daemon).await;
    let mut expected = Vec::new();
    for contact in [C1, C2] {
        let budget = source_value(&client, contact, "contact").await;
        let size = source_value(&client, contact, "lead").await;
        assert!(budget.len() > 20000 && size.len() > 20000);
        assert_eq!(
            values(&client, contact).await,
            vec![fv("customer", "budget", &budget)]
        );
        expected.push((contact, budget, size));
    }

    let peek = format!("peek_{}", db.slot);
    exec(
        &client,
        &format!("SELECT pg_create_logical_replication_slot('{peek}', 'pgoutput')"),
    )
    .await;
    exec(
        &client,
        &format!(
            "UPDATE contact_custom_fields SET updated_at = now() WHERE contact_id IN ('{C1}', '{C2}')"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    for (contact, budget, _) in &expected {
        assert_eq!(
            values(&client, contact).await,
            vec![fv("customer", "budget", budget)]
        );
    }

    // The lead values' parents appear only now: their values must come from what leadsync kept.
    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'new' WHERE id IN ('{C1}', '{C2}')"),
    )
    .await;
    synced(&db, &daemon).await;
    for (contact, budget, size) in &expected {
        assert_eq!(
            values(&client, contact).await,
            vec![
                fv("customer", "budget", budget),
                fv("lead", "system_size", size)
            ]
        );
    }

    let updates = peek_updates(
        &client,
        &peek,
        &db.settings().publication.name,
        "contact_custom_fields",
    )
    .await;
    assert_eq!(updates.len(), 4);
    for (relation, update) in &updates {
        assert_eq!(datum_of(relation, update, "value"), &Datum::UnchangedToast);
    }
    exec(
        &client,
        &format!("SELECT pg_drop_replication_slot('{peek}')"),
    )
    .await;
}

#[tokio::test]
async fn application_columns_of_owned_rows_are_never_overwritten() {
    let (db, daemon, client) = running(200, &[]).await;
    exec(&client, &insert_full_contact(C1)).await;
    synced(&db, &daemon).await;
    exec(
        &client,
        &format!(
            "UPDATE customers SET updated_by = md5('user1')::uuid WHERE cst_id = '{C1}';
             UPDATE leads SET lead_score = 88.5, sold = true WHERE migrated_from_contact_id = '{C1}';
             UPDATE appointments SET setbyname = 'Sam', sat = true WHERE migrated_from_contact_id = '{C1}';"
        ),
    )
    .await;
    let application_columns = || {
        let client = &client;
        async move {
            let r = client
                .query_one(
                    &format!(
                        "SELECT c.updated_by = md5('user1')::uuid, l.lead_score::text, l.sold,
                                a.setbyname, a.sat
                           FROM customers c JOIN leads l ON l.customer_id = c.cst_id
                           JOIN appointments a ON a.lead_id = l.id
                          WHERE c.cst_id = '{C1}'"
                    ),
                    &[],
                )
                .await
                .unwrap();
            let kept: (bool, String, bool, String, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
            assert_eq!(
                kept,
                (true, "88.50".to_owned(), true, "Sam".to_owned(), true),
                "(customer updated_by, lead_score, sold, setbyname, sat)"
            );
        }
    };
    exec(
        &client,
        &format!(
            "UPDATE contacts SET firstname = 'Other', lead_status = 'won', tags = 'hvac',
                    appointment_status_id = 6, appointment_date = '2024-05-02 10:00',
                    updated_at = now()
              WHERE id = '{C1}'"
        ),
    )
    .await;
    synced(&db, &daemon).await;
    application_columns().await;

    // Leaving the projection and coming back revives the rows; it does not recreate them.
    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = NULL WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    exec(
        &client,
        &format!("UPDATE contacts SET lead_status = 'new' WHERE id = '{C1}'"),
    )
    .await;
    synced(&db, &daemon).await;
    application_columns().await;
}

fn now_of(messages: &[SimpleQueryMessage]) -> NaiveDateTime {
    let text = messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a now() row");
    NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

#[tokio::test]
async fn a_burst_of_small_transactions_gives_exactly_the_projection() {
    let (db, daemon, client) = running(500, &[]).await;
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname) VALUES ('{C1}', {W1}, 'Burst');
             INSERT INTO contact_custom_fields (contact_id, field_id, value)
             VALUES ('{C1}', {size}, '1.0');",
            size = field(1, "system_size"),
        ),
    )
    .await;
    synced(&db, &daemon).await;

    // C1's lead is set, changed and cleared inside the burst; nothing touches C1 after.
    // C2 lives only inside the burst; contact 470 is deleted and comes back.
    const CLEAR: usize = 350;
    let x = "md5('contact470')::uuid";
    let special = |k: usize| match k {
        100 => Some(format!(
            "UPDATE contacts SET lead_status = 'new', tags = 'solar' WHERE id = '{C1}'"
        )),
        120 => Some(format!(
            "INSERT INTO contacts (id, workspace_id, lead_status) VALUES ('{C2}', {W1}, 'new')"
        )),
        130 => Some(format!("DELETE FROM contacts WHERE id = '{C2}'")),
        200 => Some(format!(
            "UPDATE contacts SET lead_status = 'contacted' WHERE id = '{C1}'"
        )),
        250 => Some(format!(
            "UPDATE contacts SET tags = 'hvac' WHERE id = '{C1}'"
        )),
        300 => Some(format!(
            "UPDATE contacts SET lead_status = 'qualified' WHERE id = '{C1}'"
        )),
        CLEAR => Some(format!(
            "UPDATE contacts SET lead_status = NULL WHERE id = '{C1}'"
        )),
        400 => Some(format!("DELETE FROM contacts WHERE id = {x}")),
        450 => Some(format!(
            "INSERT INTO contacts (id, workspace_id, firstname, lead_status, tags)
             VALUES ({x}, {W1}, 'Again', 'revived', 'roofing')"
        )),
        _ => None,
    };
    let statements: Vec<String> = (0..500)
        .map(|k| {
            let contact = format!("md5('contact{}')::uuid", (k * 7) % 450 + 1);
            let change = if let Some(sql) = special(k) {
                sql
            } else {
                match k % 5 {
                    0 => format!("UPDATE contacts SET firstname = 'b{k}', updated_at = now() WHERE id = {contact}"),
                    1 => format!(
                        "UPDATE contacts SET tags = (ARRAY['solar','hvac','roofing',NULL])[{}] WHERE id = {contact}",
                        k % 4 + 1
                    ),
                    2 => format!(
                        "UPDATE contacts SET lead_status = (ARRAY['new','won',NULL])[{}] WHERE id = {contact}",
                        k % 3 + 1
                    ),
                    3 => format!(
                        "UPDATE contacts SET appointment_date = CASE WHEN appointment_date IS NULL
                             THEN TIMESTAMP '2024-08-01' + interval '{k} minutes' END WHERE id = {contact}"
                    ),
                    _ => format!(
                        "UPDATE contact_custom_fields SET value = to_jsonb({k}) WHERE contact_id = {contact}"
                    ),
                }
            };
            format!("{change}; SELECT now() AT TIME ZONE 'UTC'")
        })
        .collect();
    // Sent without waiting for each other: one connection, so they commit in this order.
    let results =
        futures_util::future::join_all(statements.iter().map(|s| client.simple_query(s))).await;
    let starts: Vec<NaiveDateTime> = results
        .iter()
        .map(|r| now_of(r.as_ref().unwrap()))
        .collect();
    let cleared = CommitWindow {
        from: starts[CLEAR],
        to: starts[CLEAR + 1],
    };

    synced(&db, &daemon).await;
    let lead = row(&client, "leads", C1).await.expect("C1's lead");
    cleared.assert_holds(deleted_at(&client, "leads", C1).await, "C1's lead");
    assert_eq!(
        (&lead["disposition"], &lead["productid"]),
        (&"qualified".into(), &"HVAC".into()),
        "last live values: {lead}"
    );
    assert_eq!(values(&client, C1).await, vec![]);
    assert!(
        row(&client, "customers", C2)
            .await
            .is_none_or(|c| c["deleted_at"] != Value::Null)
    );
    let revived: String = client
        .query_one(&format!("SELECT {x}::text"), &[])
        .await
        .unwrap()
        .get(0);
    let lead = live_row(&client, "leads", &revived).await;
    assert_eq!(
        (&lead["disposition"], &lead["productid"]),
        (&"revived".into(), &"ROOFING".into())
    );
    assert_eq!(values(&client, &revived).await, vec![]);
}

/// Owned rows per table: (live, all).
async fn owned_counts(client: &Client, table: &str) -> (i64, i64) {
    let r = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FROM {table}
                  WHERE migrated_from_contact_id IS NOT NULL"
            ),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn backfill_started(client: &Client, slot: &str) -> chrono::DateTime<chrono::Utc> {
    client
        .query_one(
            "SELECT backfill_started_at FROM leadsync.sync_state WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn restart_after_sigterm_resumes_without_loss_or_duplicates() {
    let (db, mut daemon, client) = running(300, &[]).await;
    exec(&client, "UPDATE contacts SET lead_status = 'new' WHERE lead_status IS NULL AND id IN (SELECT id FROM contacts ORDER BY id LIMIT 20)").await;
    synced(&db, &daemon).await;
    let started = backfill_started(&client, &db.slot).await;

    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM; {}", daemon.log()));
    assert!(status.success(), "exit status {status}; {}", daemon.log());

    exec(&client, &insert_full_contact(C1)).await;
    exec(
        &client,
        "UPDATE contacts SET firstname = 'offline', tags = 'hvac' WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 60);
         UPDATE contacts SET lead_status = NULL WHERE id IN (SELECT id FROM contacts ORDER BY id DESC LIMIT 25);
         UPDATE contact_custom_fields SET value = '\"offline\"' WHERE contact_id IN (SELECT id FROM contacts ORDER BY id LIMIT 50);",
    )
    .await;
    exec(
        &client,
        &format!(
            "DELETE FROM contacts WHERE id IN (SELECT id FROM contacts WHERE id <> '{C1}' AND {}
                                               ORDER BY md5(id::text) LIMIT 12)",
            not_parked("id")
        ),
    )
    .await;

    let mut daemon = Daemon::start(BIN, &daemon_env(&db));
    synced(&db, &daemon).await;
    assert_eq!(
        backfill_started(&client, &db.slot).await,
        started,
        "the first load ran again"
    );
    let contacts = count(
        &client,
        &format!("SELECT count(*) FROM contacts WHERE {}", not_parked("id")),
    )
    .await;
    assert_eq!(
        owned_counts(&client, "customers").await,
        (contacts, contacts + 12)
    );
    let with_lead = count(
        &client,
        &format!(
            "SELECT count(*) FROM contacts WHERE lead_status IS NOT NULL AND {}",
            not_parked("id")
        ),
    )
    .await;
    assert_eq!(owned_counts(&client, "leads").await.0, with_lead);
    assert_eq!(values(&client, C1).await, full_contact_values());

    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .expect("stops again");
    assert!(status.success(), "{}", daemon.log());
}

#[tokio::test]
async fn kill_9_under_writes_then_restart_loses_and_duplicates_nothing() {
    let (db, mut daemon, client) = running(300, &[]).await;
    let writer = {
        let client = db.client().await;
        tokio::spawn(async move {
            for k in 0..400u32 {
                let contact = format!("md5('contact{}')::uuid", k % 290 + 1);
                client
                    .batch_execute(&format!(
                        "UPDATE contacts SET firstname = 'k{k}', lead_status = (ARRAY['new', NULL, 'won'])[{}]
                          WHERE id = {contact}",
                        k % 3 + 1
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    daemon.kill();
    writer.await.unwrap();
    exec(
        &client,
        &format!(
            "DELETE FROM contacts WHERE id IN (SELECT id FROM contacts WHERE {}
                                               ORDER BY md5(id::text) LIMIT 5)",
            not_parked("id")
        ),
    )
    .await;

    let daemon = Daemon::start(BIN, &daemon_env(&db));
    synced(&db, &daemon).await;
    let contacts = count(
        &client,
        &format!("SELECT count(*) FROM contacts WHERE {}", not_parked("id")),
    )
    .await;
    assert_eq!(
        owned_counts(&client, "customers").await,
        (contacts, contacts + 5)
    );
    let with_lead = count(
        &client,
        &format!(
            "SELECT count(*) FROM contacts WHERE lead_status IS NOT NULL AND {}",
            not_parked("id")
        ),
    )
    .await;
    assert_eq!(owned_counts(&client, "leads").await.0, with_lead);
}
