//! Nothing lost at the edges (SPEC §4, §5), on a real process: a customer edit never writes
//! a stale image over a legacy edit (parked, paused or locked); values PostgreSQL holds
//! but chrono does not (`infinity`) are carried, from the first load on; a key change or a
//! value moved to another field keeps what pgoutput did not resend; a `timestamptz` legacy
//! schema loads and streams; the database's own timeouts never stop the daemon.

use std::time::{Duration, Instant};

use leadsync::cmd::setup::run_setup;
use leadsync::cmd::validate::{Status, run_validate};
use leadsync::testing::{Daemon, TestDb, daemon_env};
use tokio_postgres::Client;
use tokio_postgres::types::FromSqlOwned;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(120);
const W: &str = "e0000000-0000-4000-8000-0000000000a1";
/// A field of context `contact` and one of context `lead`, in workspace `W`.
const F_CONTACT: &str = "e0000000-0000-4000-8000-0000000000f1";
const F_LEAD: &str = "e0000000-0000-4000-8000-0000000000f2";
const X: &str = "e0000000-0000-4000-8000-000000000001";
const Y: &str = "e0000000-0000-4000-8000-000000000002";
const X2: &str = "e0000000-0000-4000-8000-000000000003";

/// A daemon on a database holding workspace `W`, its two fields and whatever `before`
/// inserts (loaded by the first load).
struct Edge {
    db: TestDb,
    daemon: Daemon,
    client: Client,
}

impl Edge {
    async fn start(before: &str) -> Edge {
        Self::start_with(before, None).await
    }

    /// As [`Edge::start`]; `user` runs the daemon as another role.
    async fn start_with(before: &str, user: Option<&str>) -> Edge {
        let db = TestDb::spawn().await;
        let client = db.client().await;
        exec(
            &client,
            &format!("INSERT INTO workspaces (id, name) VALUES ('{W}', 'edges')"),
        )
        .await;
        run_setup(&db.settings()).await.unwrap();
        exec(
            &client,
            &format!(
                "INSERT INTO custom_fields (id, workspace_id, name, context_type) VALUES
                   ('{F_CONTACT}', '{W}', 'budget', 'contact'),
                   ('{F_LEAD}', '{W}', 'size', 'lead');
                 {before}"
            ),
        )
        .await;
        let mut env = daemon_env(&db);
        if let Some(user) = user {
            env.retain(|(k, _)| k != "LEADSYNC_SOURCE__URL");
            env.push(("LEADSYNC_SOURCE__URL".into(), db.url_as(user)));
        }
        let daemon = Daemon::start(BIN, &env);
        let edge = Edge { db, daemon, client };
        edge.settle().await;
        edge
    }

    /// Caught up with everything written so far, what the daemon's own writes lead to (a
    /// write-back, then the forward write it causes) included.
    async fn settle(&self) {
        self.db.settle(&self.daemon).await;
    }

    async fn exec(&self, sql: &str) {
        exec(&self.client, sql).await;
    }

    async fn one<T: FromSqlOwned>(&self, sql: &str) -> T {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
            .get(0)
    }

    /// Pending dead letters of a contact.
    async fn pending(&self, contact: &str) -> i64 {
        self.one(&format!(
            "SELECT count(*) FROM leadsync.dead_letters
             WHERE status = 'pending' AND contact_id = '{contact}'"
        ))
        .await
    }

    /// A contact's columns as text, for comparing.
    async fn contact(&self, id: &str, columns: &str) -> Vec<Option<String>> {
        let row = self
            .client
            .query_one(
                &format!("SELECT ARRAY[{columns}]::text[] FROM contacts WHERE id = '{id}'"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        row.get(0)
    }

    async fn customer(&self, id: &str, columns: &str) -> Vec<Option<String>> {
        let row = self
            .client
            .query_one(
                &format!("SELECT ARRAY[{columns}]::text[] FROM customers WHERE cst_id = '{id}'"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
        row.get(0)
    }

    /// A legacy transaction that holds contact `id`'s row until `COMMIT` on the returned
    /// session.
    async fn hold(&self, id: &str) -> Client {
        let locker = self.db.client().await;
        exec(
            &locker,
            &format!("BEGIN; UPDATE contacts SET notes = 'held' WHERE id = '{id}'"),
        )
        .await;
        locker
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.daemon.pid() as i32, signal) };
    }

    /// Waits for `check` to hold, for at most `timeout`.
    async fn eventually(&self, timeout: Duration, what: &str, check: &str) {
        let deadline = Instant::now() + timeout;
        while !self.one::<bool>(check).await {
            assert!(
                Instant::now() < deadline,
                "{what}: not true after {timeout:?}: {check}\n{}",
                self.daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

fn texts(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some((*v).to_owned())).collect()
}

fn insert_contact(id: &str, extra_columns: &str, extra_values: &str) -> String {
    format!(
        "INSERT INTO contacts (id, workspace_id, firstname, lastname, email, phone_number,
                               lead_status, tags{extra_columns})
         VALUES ('{id}', '{W}', 'Ana', 'Lopez', 'old@example.com', '555-0100', 'new',
                 'solar'{extra_values});"
    )
}

/// Issue item 1: a legacy edit parked as a dead letter (the phone does not fit) leaves the
/// customer behind its contact; an application edit of another customer column must write
/// back only that column, never the stale image.
#[tokio::test]
async fn a_customer_edit_never_writes_a_stale_image_over_a_parked_legacy_edit() {
    let e = Edge::start(&insert_contact(X, "", "")).await;
    e.exec(&format!(
        "UPDATE contacts SET email = 'new@example.com',
                phone_number = '(555) 123-4567 ext. 1234' WHERE id = '{X}'"
    ))
    .await;
    e.settle().await;
    assert_eq!(e.pending(X).await, 1);
    e.exec(&format!(
        "UPDATE customers SET firstname = 'Anabel' WHERE cst_id = '{X}'"
    ))
    .await;
    e.settle().await;
    assert_eq!(
        e.contact(X, "firstname, email, phone_number").await,
        texts(&["Anabel", "new@example.com", "(555) 123-4567 ext. 1234"]),
        "the legacy edit was lost"
    );
    assert_eq!(e.pending(X).await, 1, "the phone still does not fit");

    // Fixed on the legacy side: the contact is written from state holding every change.
    e.exec(&format!(
        "UPDATE contacts SET phone_number = '555-0199' WHERE id = '{X}'"
    ))
    .await;
    e.settle().await;
    assert_eq!(e.pending(X).await, 0);
    assert_eq!(
        e.customer(X, "firstname, email, phone1").await,
        texts(&["Anabel", "new@example.com", "555-0199"])
    );
    e.db.assert_projection(&e.db.settings()).await;
}

/// Issue item 8: during a pause the legacy side sets `email`, then the application sets
/// the customer's `firstname`; after the resume both survive (column by column).
#[tokio::test]
async fn during_a_pause_a_legacy_edit_and_a_customer_edit_of_another_column_both_survive() {
    let e = Edge::start(&insert_contact(X, "", "")).await;
    e.signal(libc::SIGUSR1);
    e.daemon
        .wait_log("paused: applying nothing", Duration::from_secs(10))
        .await;
    e.exec(&format!(
        "UPDATE contacts SET email = 'later@example.com' WHERE id = '{X}'"
    ))
    .await;
    e.exec(&format!(
        "UPDATE customers SET firstname = 'FromApp' WHERE cst_id = '{X}'"
    ))
    .await;
    e.signal(libc::SIGUSR2);
    e.daemon
        .wait_log("resumed: catching up", Duration::from_secs(10))
        .await;
    e.settle().await;
    assert_eq!(
        e.contact(X, "firstname, email").await,
        texts(&["FromApp", "later@example.com"])
    );
    assert_eq!(
        e.customer(X, "firstname, email").await,
        texts(&["FromApp", "later@example.com"])
    );
    e.db.assert_projection(&e.db.settings()).await;
}

/// Issue item 6: a legacy transaction holding a contact's row delays only that contact's
/// write-back; forward sync goes on for everyone, and the edit lands once the lock is gone,
/// next to what the lock holder wrote.
#[tokio::test]
async fn a_locked_contact_delays_only_its_own_write_back() {
    let e = Edge::start(&format!(
        "{}{}",
        insert_contact(X, "", ""),
        insert_contact(Y, "", "")
    ))
    .await;
    let locker = e.hold(X).await;
    e.exec(&format!(
        "UPDATE customers SET lastname = 'Applied' WHERE cst_id = '{X}'"
    ))
    .await;
    e.exec(&format!(
        "UPDATE contacts SET firstname = 'Moves' WHERE id = '{Y}'"
    ))
    .await;
    e.eventually(
        Duration::from_secs(15),
        "forward sync while a contact is locked",
        &format!("SELECT firstname = 'Moves' FROM customers WHERE cst_id = '{Y}'"),
    )
    .await;
    assert!(
        e.daemon
            .log()
            .contains("contact locked by a legacy transaction"),
        "{}",
        e.daemon.log()
    );
    exec(&locker, "COMMIT").await;
    e.eventually(
        Duration::from_secs(15),
        "the write-back after the lock",
        &format!("SELECT lastname = 'Applied' FROM contacts WHERE id = '{X}'"),
    )
    .await;
    e.settle().await;
    assert_eq!(
        e.contact(X, "lastname, notes, firstname").await,
        texts(&["Applied", "held", "Ana"])
    );
    assert_eq!(
        e.one::<i64>("SELECT count(*) FROM leadsync.reverse_queue")
            .await,
        0
    );
    e.db.assert_projection(&e.db.settings()).await;
}

/// Issue items 3 and 4: `infinity` is a timestamp the target holds, so it is projected —
/// from the first load on, in the stream, and when a resync or a dead-letter retry reads it
/// again — and later changes of the contact follow. A change of `appointment_date` to
/// `timestamptz` goes on streaming.
#[tokio::test]
async fn infinite_timestamps_are_carried_from_the_first_load_on() {
    let e = Edge::start(&format!(
        "{}{}",
        insert_contact(
            X,
            ", appointment_date, appointment_status_id, created_at",
            ", 'infinity', 5, '-infinity'"
        ),
        insert_contact(Y, "", "")
    ))
    .await;
    assert_eq!(e.pending(X).await, 0);
    let appointment = format!(
        "SELECT ARRAY[apptdate, setdate, confirmeddate]::text[] FROM appointments
         WHERE migrated_from_contact_id = '{X}'"
    );
    let infinite = texts(&["infinity", "infinity", "infinity"]);
    assert_eq!(e.one::<Vec<Option<String>>>(&appointment).await, infinite);
    assert_eq!(e.customer(X, "dateadded").await, texts(&["-infinity"]));

    // In the stream, and a later change follows it.
    e.exec(&format!(
        "UPDATE contacts SET appointment_date = '-infinity' WHERE id = '{Y}';
         UPDATE contacts SET tags = 'hvac' WHERE id = '{X}';"
    ))
    .await;
    e.settle().await;
    assert_eq!(e.pending(X).await + e.pending(Y).await, 0);
    assert_eq!(
        e.one::<String>(&format!(
            "SELECT productid FROM leads WHERE migrated_from_contact_id = '{X}'"
        ))
        .await,
        "HVAC"
    );
    e.db.assert_projection(&e.db.settings()).await;

    // A resync and a dead-letter retry read the same rows again from the source.
    e.exec(&format!(
        "UPDATE contacts SET phone_number = '(555) 123-4567 ext. 1234' WHERE id = '{Y}'"
    ))
    .await;
    e.settle().await;
    assert_eq!(e.pending(Y).await, 1);
    let (code, out, err) = leadsync(&e.db, &["resync"]).await;
    assert_eq!(code, 0, "{out}{err}");
    e.exec("ALTER TABLE customers ALTER COLUMN phone1 TYPE VARCHAR(40)")
        .await;
    let (code, out, err) = leadsync(&e.db, &["dlq", "retry", "--timeout", "60"]).await;
    assert_eq!(code, 0, "{out}{err}\n{}", e.daemon.log());
    e.settle().await;
    assert_eq!(e.pending(Y).await, 0);
    assert_eq!(e.one::<Vec<Option<String>>>(&appointment).await, infinite);

    // appointment_date becomes timestamptz: read as UTC, nothing parked.
    e.exec(&format!(
        "ALTER TABLE contacts ALTER COLUMN appointment_date TYPE timestamptz;
         UPDATE contacts SET appointment_date = '2025-03-01 10:00:00+02' WHERE id = '{X}';
         UPDATE contacts SET lead_status = 'won' WHERE id IN ('{X}', '{Y}');"
    ))
    .await;
    e.settle().await;
    assert_eq!(e.pending(X).await + e.pending(Y).await, 0);
    assert_eq!(
        e.one::<Vec<Option<String>>>(&appointment).await,
        texts(&[
            "2025-03-01 08:00:00",
            "2025-02-28 08:00:00",
            "2025-03-01 07:00:00"
        ])
    );
    e.db.assert_projection(&e.db.settings()).await;
    assert!(
        e.daemon.log().contains("resync finished"),
        "{}",
        e.daemon.log()
    );
}

/// Issue item 2: a large (out-of-line) value moved to another field arrives unchanged; it
/// is the moved row's value, and a later unrelated change of the contact leaves it right.
#[tokio::test]
async fn a_large_value_moved_to_another_field_keeps_its_value() {
    let big = "(SELECT to_jsonb(string_agg(md5(i::text), '')) FROM generate_series(1, 200) i)";
    let e = Edge::start(&format!(
        "ALTER TABLE contact_custom_fields ALTER COLUMN value SET STORAGE EXTERNAL;
         {}
         INSERT INTO contact_custom_fields (contact_id, field_id, value)
         VALUES ('{X}', '{F_CONTACT}', {big});",
        insert_contact(X, "", "")
    ))
    .await;
    e.exec(&format!(
        "UPDATE contact_custom_fields SET field_id = '{F_LEAD}'
         WHERE contact_id = '{X}' AND field_id = '{F_CONTACT}'"
    ))
    .await;
    e.exec(&format!(
        "UPDATE contacts SET lead_status = 'won' WHERE id = '{X}'"
    ))
    .await;
    e.settle().await;
    assert_eq!(e.pending(X).await, 0);
    let moved: bool = e
        .one(&format!(
            "SELECT v.value = {big} FROM lead_custom_fields v JOIN leads l ON l.id = v.lead_id
             WHERE l.migrated_from_contact_id = '{X}' AND v.field_id = '{F_LEAD}'"
        ))
        .await;
    assert!(moved);
    assert_eq!(
        e.one::<i64>(&format!(
            "SELECT count(*) FROM customer_custom_fields WHERE customer_id = '{X}'"
        ))
        .await,
        0
    );
    e.db.assert_projection(&e.db.settings()).await;
}

/// Issue item 7: a contact's id changes while its large `tags` is not resent: the new id
/// gets its customer and a lead whose product comes from those tags.
#[tokio::test]
async fn a_key_change_of_a_contact_with_large_tags_moves_its_rows() {
    let tags =
        "(SELECT string_agg(md5(i::text), ' ') || ' roofing' FROM generate_series(1, 200) i)";
    let e = Edge::start(&format!(
        "ALTER TABLE contacts ALTER COLUMN tags SET STORAGE EXTERNAL;
         {}
         UPDATE contacts SET tags = {tags} WHERE id = '{X}';",
        insert_contact(X, "", "")
    ))
    .await;
    e.exec(&format!("UPDATE contacts SET id = '{X2}' WHERE id = '{X}'"))
        .await;
    e.settle().await;
    assert_eq!(e.pending(X).await + e.pending(X2).await, 0);
    assert_eq!(
        e.one::<String>(&format!(
            "SELECT productid FROM leads
             WHERE migrated_from_contact_id = '{X2}' AND deleted_at IS NULL"
        ))
        .await,
        "ROOFING"
    );
    assert!(
        e.one::<bool>(&format!(
            "SELECT deleted_at IS NOT NULL FROM customers WHERE cst_id = '{X}'"
        ))
        .await
    );
    e.db.assert_projection(&e.db.settings()).await;
}

/// Issue item 9: the legacy schema as Supabase makes it (`timestamptz` everywhere) loads
/// and streams: nothing parked, leads appear for newly set statuses, and `validate`
/// compares instants.
#[tokio::test]
async fn a_timestamptz_legacy_schema_loads_and_streams() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    exec(
        &client,
        "ALTER TABLE contacts ALTER COLUMN created_at TYPE timestamptz,
                              ALTER COLUMN updated_at TYPE timestamptz,
                              ALTER COLUMN appointment_date TYPE timestamptz;
         ALTER TABLE contact_custom_fields ALTER COLUMN created_at TYPE timestamptz,
                                           ALTER COLUMN updated_at TYPE timestamptz;
         SET TimeZone = 'America/New_York';",
    )
    .await;
    leadsync::fixtures::generate_demo_data(&client, 2_000)
        .await
        .unwrap();
    leadsync::fixtures::shorten_misfits(&client).await.unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&db.settings()).await;

    // Single-row updates, as an application makes them.
    let ids: Vec<uuid::Uuid> = client
        .query(
            "SELECT id FROM contacts WHERE lead_status IS NULL ORDER BY id LIMIT 150",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(ids.len() > 50);
    for id in &ids {
        client
            .execute(
                "UPDATE contacts SET lead_status = 'qualified', updated_at = now(),
                        appointment_date = now() + interval '3 days'
                 WHERE id = $1",
                &[id],
            )
            .await
            .unwrap();
    }
    exec(
        &client,
        "UPDATE contact_custom_fields SET updated_at = now()
         WHERE contact_id IN (SELECT id FROM contacts ORDER BY id LIMIT 100)",
    )
    .await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let parked: i64 = client
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, 0, "{}", daemon.log());
    let leads: i64 = client
        .query_one(
            "SELECT count(*) FROM leads WHERE migrated_from_contact_id = ANY($1)
               AND deleted_at IS NULL",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leads, ids.len() as i64);
    db.assert_projection(&db.settings()).await;
    let validation = run_validate(&db.settings(), Duration::from_secs(30))
        .await
        .unwrap();
    assert!(validation.passed, "{}", validation.render());
    assert!(
        validation
            .checks
            .iter()
            .all(|c| c.status == Status::Pass || c.status == Status::Warn),
        "{}",
        validation.render()
    );
}

/// The database's own guards, set on the daemon's role, never stop it: its sessions turn
/// them off, from the first load through streaming and write-backs.
#[tokio::test]
async fn the_databases_timeouts_never_stop_the_daemon() {
    let role = format!("guarded_{}", std::process::id());
    let setup = TestDb::spawn().await;
    exec(
        &setup.client().await,
        &format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} SUPERUSER LOGIN;
               END IF;
             END $$;
             ALTER ROLE {role} SET statement_timeout = '20ms';
             ALTER ROLE {role} SET lock_timeout = '5ms';
             ALTER ROLE {role} SET idle_in_transaction_session_timeout = '10ms';
             ALTER ROLE {role} SET idle_session_timeout = '500ms';"
        ),
    )
    .await;
    let many = "INSERT INTO contacts (workspace_id, firstname, email, lead_status, tags)
                SELECT (SELECT id FROM workspaces LIMIT 1), 'N' || i, i || '@example.com',
                       CASE WHEN i % 2 = 0 THEN 'new' END, 'solar'
                FROM generate_series(1, 5000) i;";
    let e = Edge::start_with(&format!("{many}{}", insert_contact(X, "", "")), Some(&role)).await;
    e.db.assert_projection(&e.db.settings()).await;
    // One large source transaction, then a write-back to a locked contact.
    e.exec("UPDATE contacts SET lead_status = 'bulk', updated_at = now()")
        .await;
    let locker = e.hold(X).await;
    e.exec(&format!(
        "UPDATE customers SET firstname = 'Guarded' WHERE cst_id = '{X}'"
    ))
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exec(&locker, "COMMIT").await;
    e.eventually(
        Duration::from_secs(20),
        "the write-back",
        &format!("SELECT firstname = 'Guarded' FROM contacts WHERE id = '{X}'"),
    )
    .await;
    e.settle().await;
    e.db.assert_projection(&e.db.settings()).await;
    let log = e.daemon.log();
    assert!(!log.contains("retrying from the checkpoint"), "{log}");
}

/// Runs the binary with the daemon's environment; returns (exit code, stdout, stderr).
async fn leadsync(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    leadsync::testing::run_cli(BIN, daemon_env(db), args).await
}
