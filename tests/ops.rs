//! The operator commands against a real PostgreSQL and a running daemon: `teardown` removes
//! leadsync and nothing of the legacy data, `dlq list|retry` shows dead letters and replays
//! the contacts' current state, `validate` passes when synced — also under live writes — and
//! names every kind of drift, and `cutover` says GO under load and NO-GO with a pending
//! dead letter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use leadsync::cmd::cutover::{CutoverOptions, NEXT_STEP, run_cutover};
use leadsync::cmd::dlq::{DlqError, run_dlq_list, run_dlq_retry};
use leadsync::cmd::setup::run_setup;
use leadsync::cmd::teardown::{TeardownError, TeardownOptions, run_teardown};
use leadsync::cmd::validate::{Status, run_validate};
use leadsync::testing::{Daemon, TestDb, daemon_env};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(120);

/// A database with `contacts` generated contacts, every value cut to fit the target (so no
/// dead letter exists unless a test makes one), set up, and a daemon that has loaded it.
async fn running(contacts: u64) -> (TestDb, Daemon, Client) {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, contacts)
        .await
        .unwrap();
    leadsync::fixtures::shorten_misfits(&client).await.unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    (db, daemon, client)
}

async fn exec(client: &Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

async fn one<T: for<'a> tokio_postgres::types::FromSql<'a>>(client: &Client, sql: &str) -> T {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{sql}"))
        .get(0)
}

/// A checksum of every legacy row.
async fn legacy_checksum(client: &Client) -> String {
    one(
        client,
        "SELECT concat_ws('/',
            (SELECT md5(string_agg(c::text, ',' ORDER BY c.id)) FROM contacts c),
            (SELECT md5(string_agg(v::text, ',' ORDER BY v.contact_id, v.field_id))
               FROM contact_custom_fields v),
            (SELECT md5(string_agg(f::text, ',' ORDER BY f.id)) FROM custom_fields f),
            (SELECT md5(string_agg(w::text, ',' ORDER BY w.id)) FROM workspaces w))",
    )
    .await
}

/// Runs the binary with the daemon's environment; returns (exit code, stdout, stderr).
async fn leadsync(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    leadsync::testing::run_cli(BIN, daemon_env(db), args).await
}

/// Legacy writes in a loop until stopped: lead-status and tag updates, new contacts and
/// custom-field values, all of which fit the target.
struct Writer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

impl Writer {
    async fn start(db: &TestDb) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let client = db.client().await;
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let sql = match n % 3 {
                    0 => {
                        "UPDATE contacts SET lead_status = (ARRAY['new', 'qualified', 'won'])
                              [1 + floor(random() * 3)::int], tags = 'hvac roofing',
                              updated_at = now()
                          WHERE id = (SELECT id FROM contacts ORDER BY random() LIMIT 1)"
                    }
                    1 => {
                        "INSERT INTO contacts (workspace_id, firstname, email, phone_number,
                                                lead_status, appointment_date)
                          SELECT id, 'Live', 'live@example.com', '555-0100', 'new',
                                 now()::timestamp + interval '2 days'
                          FROM workspaces ORDER BY random() LIMIT 1"
                    }
                    _ => {
                        "INSERT INTO contact_custom_fields (contact_id, field_id, value)
                          SELECT c.id, f.id, to_jsonb(random()) FROM contacts c
                          JOIN custom_fields f ON f.workspace_id = c.workspace_id
                          ORDER BY random() LIMIT 1
                          ON CONFLICT (contact_id, field_id)
                          DO UPDATE SET value = EXCLUDED.value, updated_at = now()"
                    }
                };
                client.batch_execute(sql).await.expect("live write");
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        });
        Writer { stop, handle }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("writer")
    }
}

/// Teardown drops only what leadsync made: an application's view on a leadsync table stops
/// it before anything is dropped, named; and leadsync's own schema can be neither side.
#[tokio::test]
async fn teardown_refuses_to_take_other_objects_with_leadsyncs_schema() {
    let (db, mut daemon, client) = running(100).await;
    daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running after SIGTERM; {}", daemon.log()));
    exec(
        &client,
        "CREATE VIEW public.parked AS SELECT contact_id, error FROM leadsync.dead_letters",
    )
    .await;
    let refused = run_teardown(&db.settings(), TeardownOptions::default())
        .await
        .expect_err("teardown with a dependent view");
    assert!(matches!(refused, TeardownError::StateInUse(_)), "{refused}");
    assert!(refused.to_string().contains("view parked"), "{refused}");
    let left: (i64, i64) = (
        one(
            &client,
            "SELECT count(*) FROM pg_views WHERE viewname = 'parked'",
        )
        .await,
        one(
            &client,
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
                db.slot
            ),
        )
        .await,
    );
    assert_eq!(left, (1, 1), "a refused teardown dropped something");

    exec(&client, "DROP VIEW public.parked").await;
    run_teardown(&db.settings(), TeardownOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let schema: i64 = one(
        &client,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'leadsync'",
    )
    .await;
    assert_eq!(schema, 0);

    let mut settings = db.settings();
    settings.target.schema = "leadsync".into();
    let invalid = settings.validate().unwrap_err().to_string();
    assert!(invalid.contains("target.schema"), "{invalid}");
}

#[tokio::test]
async fn teardown_removes_leadsync_and_never_touches_legacy_data() {
    let (db, mut daemon, client) = running(300).await;
    let settings = db.settings();
    let before = legacy_checksum(&client).await;

    let refused = run_teardown(&settings, TeardownOptions::default())
        .await
        .expect_err("teardown under a running daemon");
    assert!(
        matches!(refused, TeardownError::DaemonRunning { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("stop it"), "{refused}");
    let slots: i64 = one(
        &client,
        &format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        ),
    )
    .await;
    assert_eq!(slots, 1, "a refused teardown dropped the slot");

    daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running after SIGTERM; {}", daemon.log()));

    let unconfirmed = run_teardown(
        &settings,
        TeardownOptions {
            drop_target_tables: true,
            confirm_drop_target_tables: false,
        },
    )
    .await
    .expect_err("dropping tables needs the confirmation");
    assert!(matches!(unconfirmed, TeardownError::NotConfirmed));
    assert!(unconfirmed.to_string().contains("--yes-drop-target-tables"));

    let report = run_teardown(&settings, TeardownOptions::default())
        .await
        .unwrap();
    let text = report.to_string();
    for object in [
        format!("replication slot {}", db.slot),
        format!("replication origin {}", db.slot),
        format!("publication {}", settings.publication.name),
        "schema leadsync".to_owned(),
    ] {
        assert!(text.contains(&object), "{object} not dropped:\n{text}");
    }
    let left: i64 = one(
        &client,
        &format!(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{s}')
                  + (SELECT count(*) FROM pg_replication_origin WHERE roname = '{s}')
                  + (SELECT count(*) FROM pg_publication WHERE pubname = '{p}')
                  + (SELECT count(*) FROM pg_namespace WHERE nspname = 'leadsync')",
            s = db.slot,
            p = settings.publication.name
        ),
    )
    .await;
    assert_eq!(left, 0, "teardown left objects behind:\n{text}");
    let customers: i64 = one(&client, "SELECT count(*) FROM customers").await;
    assert!(customers >= 300, "target tables kept without the flags");
    assert_eq!(
        legacy_checksum(&client).await,
        before,
        "legacy data changed"
    );
    let context_type: bool = one(
        &client,
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                        WHERE table_name = 'custom_fields' AND column_name = 'context_type')",
    )
    .await;
    assert!(context_type, "custom_fields.context_type must stay");

    let report = run_teardown(
        &settings,
        TeardownOptions {
            drop_target_tables: true,
            confirm_drop_target_tables: true,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.dropped.len(), 6, "{report}");
    let tables: i64 = one(
        &client,
        "SELECT count(*) FROM unnest(ARRAY['customers', 'leads', 'appointments',
            'customer_custom_fields', 'lead_custom_fields', 'appointment_custom_fields']) t
         WHERE to_regclass('public.' || t) IS NOT NULL",
    )
    .await;
    assert_eq!(tables, 0);
    assert_eq!(
        legacy_checksum(&client).await,
        before,
        "legacy data changed"
    );

    let again = run_teardown(&settings, TeardownOptions::default())
        .await
        .unwrap();
    assert!(again.dropped.is_empty(), "{again}");
    assert!(again.to_string().contains("nothing was left"), "{again}");
}

#[tokio::test]
async fn dlq_lists_dead_letters_and_retry_replays_the_current_state() {
    let (db, daemon, client) = running(300).await;
    let settings = db.settings();
    let workspace: Uuid = one(&client, "SELECT workspace_id FROM contacts LIMIT 1").await;
    let bad = Uuid::new_v4();
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, phone_number, lead_status)
             VALUES ('{bad}', '{workspace}', 'Long', '+1 (555) 010-0199 x1234', 'new')"
        ),
    )
    .await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;

    let list = run_dlq_list(&settings).await.unwrap();
    let parked = list
        .pending
        .iter()
        .find(|d| d.contact_id == Some(bad))
        .unwrap_or_else(|| panic!("no dead letter for {bad}: {list:?}"));
    assert!(parked.lsn.is_some());
    assert!(!parked.error.is_empty());
    let rendered = list.render();
    assert!(rendered.contains(&bad.to_string()), "{rendered}");
    assert!(rendered.contains("1 pending"), "{rendered}");
    // A healthy contact whose target rows were lost after the fact, with a dead letter
    // marked pending by hand: no source change will ever come to repair it.
    let good: Uuid = one(
        &client,
        "SELECT id FROM contacts WHERE lead_status IS NOT NULL ORDER BY id LIMIT 1",
    )
    .await;
    exec(
        &client,
        &format!("DELETE FROM customers WHERE cst_id = '{good}'"),
    )
    .await;
    let good_letter: i64 = one(
        &client,
        &format!(
            "INSERT INTO leadsync.dead_letters
               (slot_name, lsn, source_table, operation, contact_id, key, payload, error)
             VALUES ('{slot}', '0/1', 'contacts', 'upsert', '{good}',
                     jsonb_build_object('id', '{good}'), '{{\"contact\": null}}',
                     'lost by hand in a test')
             RETURNING id",
            slot = db.slot
        ),
    )
    .await;

    let unknown = run_dlq_retry(&settings, &[good_letter, 999_999], Duration::from_secs(5))
        .await
        .expect_err("unknown id");
    assert!(matches!(unknown, DlqError::UnknownIds(ref ids) if ids == &[999_999]));

    let report = run_dlq_retry(
        &settings,
        &[good_letter, parked.id],
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", daemon.log()));
    assert!(!report.requests.is_empty());
    let outcome = |id: i64| report.letters.iter().find(|l| l.id == id).unwrap();
    assert_eq!(
        outcome(good_letter).status,
        "replayed",
        "{}",
        report.render()
    );
    assert_eq!(outcome(parked.id).status, "pending", "{}", report.render());
    assert!(outcome(parked.id).error.is_some());
    assert!(report.render().contains("1 still pending"));
    let restored: i64 = one(
        &client,
        &format!("SELECT count(*) FROM customers WHERE cst_id = '{good}' AND deleted_at IS NULL"),
    )
    .await;
    assert_eq!(restored, 1, "retry did not restore the customer");
    db.assert_projection(&settings).await;

    let (code, json, err) = leadsync(&db, &["dlq", "list", "--json"]).await;
    assert_eq!(code, 0, "{json}{err}");
    let value: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(value["pending"][0]["contact_id"], bad.to_string());
}

#[tokio::test]
async fn each_rejected_class_is_parked_while_the_rest_applies_and_retry_applies_after_the_fix() {
    let (db, daemon, client) = running(200).await;
    let settings = db.settings();
    let workspace: Uuid = one(&client, "SELECT workspace_id FROM contacts LIMIT 1").await;
    // A rule of the new schema that some legacy data breaks.
    exec(
        &client,
        "ALTER TABLE customers ADD CONSTRAINT no_test_accounts
           CHECK (firstname IS DISTINCT FROM 'Rejected')",
    )
    .await;
    let [long_phone, long_email, breaks_rule, fine] = [(); 4].map(|_| Uuid::new_v4());
    let phone = "+1 (555) 010-0199 ext. 1234";
    let email = format!("{}@example.com", "a".repeat(300));
    // One legacy transaction; every write succeeds on the legacy side.
    exec(
        &client,
        &format!(
            "BEGIN;
             INSERT INTO contacts (id, workspace_id, firstname, phone_number, lead_status)
               VALUES ('{long_phone}', '{workspace}', 'Phone', '{phone}', 'new');
             INSERT INTO contacts (id, workspace_id, firstname, email, lead_status)
               VALUES ('{long_email}', '{workspace}', 'Email', '{email}', 'new');
             INSERT INTO contacts (id, workspace_id, firstname, lead_status)
               VALUES ('{breaks_rule}', '{workspace}', 'Rejected', 'new');
             INSERT INTO contacts (id, workspace_id, firstname, lead_status)
               VALUES ('{fine}', '{workspace}', 'Fine', 'new');
             COMMIT;"
        ),
    )
    .await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;

    let customers = |id: Uuid| {
        format!("SELECT count(*) FROM customers WHERE cst_id = '{id}' AND deleted_at IS NULL")
    };
    assert_eq!(
        one::<i64>(&client, &customers(fine)).await,
        1,
        "{}",
        daemon.log()
    );
    let leads: i64 = one(
        &client,
        &format!("SELECT count(*) FROM leads WHERE customer_id = '{fine}'"),
    )
    .await;
    assert_eq!(leads, 1, "the rest of the transaction applies");
    let list = run_dlq_list(&settings).await.unwrap();
    let expected = [
        (long_phone, "customers.phone1"),
        (long_email, "customers.email"),
        (breaks_rule, "no_test_accounts"),
    ];
    let mut ids = Vec::new();
    for (contact, names) in expected {
        assert_eq!(one::<i64>(&client, &customers(contact)).await, 0);
        let letter = list
            .pending
            .iter()
            .find(|d| d.contact_id == Some(contact))
            .unwrap_or_else(|| panic!("no dead letter for {contact}: {list:?}"));
        assert!(letter.error.contains(names), "{}", letter.error);
        assert!(letter.lsn.is_some(), "{letter:?}");
        let payload: serde_json::Value = one(
            &client,
            &format!(
                "SELECT payload FROM leadsync.dead_letters WHERE id = {}",
                letter.id
            ),
        )
        .await;
        assert_eq!(
            payload["contact"]["id"],
            contact.to_string(),
            "the payload is the contact: {payload}"
        );
        ids.push(letter.id);
    }
    assert_eq!(list.pending.len(), 3, "{list:?}");

    // Retrying before the fix changes nothing.
    let report = run_dlq_retry(&settings, &ids, CATCH_UP)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", daemon.log()));
    assert!(
        report.letters.iter().all(|l| l.status == "pending"),
        "{}",
        report.render()
    );

    // The fix: wider columns, the rule dropped. The retry applies the current state.
    exec(
        &client,
        "ALTER TABLE customers ALTER COLUMN phone1 TYPE VARCHAR(40),
                               ALTER COLUMN email TYPE VARCHAR(320),
                               DROP CONSTRAINT no_test_accounts",
    )
    .await;
    let report = run_dlq_retry(&settings, &ids, CATCH_UP)
        .await
        .unwrap_or_else(|e| panic!("{e}; {}", daemon.log()));
    assert!(
        report.letters.iter().all(|l| l.status == "replayed"),
        "{}\n{}",
        report.render(),
        daemon.log()
    );
    for (contact, _) in expected {
        assert_eq!(one::<i64>(&client, &customers(contact)).await, 1);
    }
    let stored: (String, String) = {
        let row = client
            .query_one(
                &format!(
                    "SELECT (SELECT phone1 FROM customers WHERE cst_id = '{long_phone}'),
                            (SELECT email FROM customers WHERE cst_id = '{long_email}')"
                ),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(stored, (phone.to_owned(), email));
    assert!(run_dlq_list(&settings).await.unwrap().pending.is_empty());
    db.assert_projection(&settings).await;
}

#[tokio::test]
async fn on_error_stop_halts_before_the_bad_change_and_a_restart_parks_it() {
    let (db, mut daemon, client) = running(100).await;
    let settings = db.settings();
    daemon.kill();
    db.wait_slot_released().await;
    let mut env = daemon_env(&db);
    env.push(("LEADSYNC_SYNC__ON_ERROR".into(), "stop".into()));
    let mut strict = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| strict.log()).await;

    let workspace: Uuid = one(&client, "SELECT workspace_id FROM contacts LIMIT 1").await;
    let [bad, after] = [(); 2].map(|_| Uuid::new_v4());
    exec(
        &client,
        &format!(
            "INSERT INTO contacts (id, workspace_id, firstname, phone_number)
               VALUES ('{bad}', '{workspace}', 'Long', '+1 (555) 010-0199 ext. 1234');
             INSERT INTO contacts (id, workspace_id, firstname)
               VALUES ('{after}', '{workspace}', 'After');"
        ),
    )
    .await;
    let log = strict.wait_failed(CATCH_UP).await;
    assert!(log.contains("sync.on_error"), "{log}");
    assert!(log.contains("customers.phone1"), "{log}");
    let applied: i64 = one(
        &client,
        &format!("SELECT count(*) FROM customers WHERE cst_id IN ('{bad}', '{after}')"),
    )
    .await;
    assert_eq!(applied, 0, "nothing at or after the bad change is applied");
    let parked: i64 = one(&client, "SELECT count(*) FROM leadsync.dead_letters").await;
    assert_eq!(parked, 0);

    // The default parks it and goes on.
    db.wait_slot_released().await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let applied: i64 = one(
        &client,
        &format!("SELECT count(*) FROM customers WHERE cst_id = '{after}'"),
    )
    .await;
    assert_eq!(applied, 1, "{}", daemon.log());
    let parked = run_dlq_list(&settings).await.unwrap().pending;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].contact_id, Some(bad));
    db.assert_projection(&settings).await;
}

#[tokio::test]
async fn validate_passes_under_live_writes_and_names_every_kind_of_drift() {
    let (db, daemon, client) = running(500).await;
    let settings = db.settings();

    let writer = Writer::start(&db).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let live = run_validate(&settings, Duration::from_secs(60))
        .await
        .unwrap();
    let writes = writer.stop().await;
    assert!(writes > 10, "the writer barely ran ({writes} writes)");
    assert!(
        live.passed,
        "live writes made validation fail:\n{}",
        live.render()
    );

    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let quiet = run_validate(&settings, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(quiet.passed, "{}", quiet.render());
    for check in quiet.checks.iter().filter(|c| c.group == "completeness") {
        assert_eq!(check.source, check.target, "{}", quiet.render());
    }

    let (code, out, err) = leadsync(&db, &["validate"]).await;
    assert_eq!(code, 0, "validate of a synced target failed:\n{out}{err}");
    assert!(out.contains("validation PASSED"), "{out}");

    // One kind of drift at a time; each must fail validation and name its table or check.
    let drifts: [(&str, &str); 5] = [
        (
            "customer_custom_fields",
            "DELETE FROM customer_custom_fields WHERE id = (SELECT v.id FROM customer_custom_fields v
               JOIN customers c ON c.cst_id = v.customer_id
               WHERE c.migrated_from_contact_id IS NOT NULL ORDER BY v.id LIMIT 1)",
        ),
        (
            "customers",
            "INSERT INTO customers (cst_id, workspace_id, firstname, migrated_from_contact_id)
             SELECT gen_random_uuid(), id, 'Ghost', gen_random_uuid() FROM workspaces LIMIT 1",
        ),
        (
            "leads",
            "UPDATE leads SET productid = 'BROKEN' WHERE id = (SELECT id FROM leads
               WHERE deleted_at IS NULL AND id NOT IN (SELECT lead_id FROM appointments)
               ORDER BY id LIMIT 1)",
        ),
        (
            "appointment_lead_relationship",
            "UPDATE leads SET deleted_at = now() WHERE id = (SELECT lead_id FROM appointments
               WHERE deleted_at IS NULL ORDER BY id LIMIT 1)",
        ),
        (
            "foreign_key_integrity",
            "UPDATE customers SET deleted_at = now() WHERE cst_id = (SELECT customer_id FROM leads
               WHERE deleted_at IS NULL AND productid <> 'BROKEN'
                 AND id NOT IN (SELECT lead_id FROM appointments)
               ORDER BY id DESC LIMIT 1)",
        ),
    ];
    for (name, sql) in drifts {
        let changed = client.execute(sql, &[]).await.unwrap();
        assert_eq!(changed, 1, "the drift for {name} changed nothing");
        let v = run_validate(&settings, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(!v.passed, "drift in {name} not detected:\n{}", v.render());
        let named = v.reconciliation.table(name).is_some_and(|t| !t.is_clean())
            || v.checks
                .iter()
                .any(|c| c.name == name && c.status == Status::Fail);
        assert!(named, "{name} not named:\n{}", v.render());
    }
    let (code, out, err) = leadsync(&db, &["validate"]).await;
    assert_eq!(code, 1, "{out}{err}");
    for name in [
        "customer_custom_fields",
        "customers",
        "leads",
        "appointment_lead_relationship",
        "foreign_key_integrity",
        "validation FAILED",
    ] {
        assert!(out.contains(name), "{name} missing from:\n{out}");
    }
    let (code, out, err) = leadsync(&db, &["validate", "--json"]).await;
    assert_eq!(code, 1, "{out}{err}");
    let value: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(value["passed"], false);
}

#[tokio::test]
async fn cutover_is_go_under_live_writes_and_no_go_with_a_pending_dead_letter() {
    let (db, daemon, client) = running(500).await;
    let settings = db.settings();

    let writer = Writer::start(&db).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut progress = Vec::new();
    let report = run_cutover(
        &settings,
        CutoverOptions {
            timeout: Duration::from_secs(120),
            validate_wait: Duration::from_secs(60),
        },
        &mut |line| progress.push(line),
    )
    .await
    .unwrap();
    let writes = writer.stop().await;
    assert!(writes > 10, "the writer barely ran ({writes} writes)");
    assert!(
        report.go,
        "NO-GO under live writes:\n{report}\n{}",
        daemon.log()
    );
    assert!(report.catch_up.caught_up);
    assert!(report.to_string().contains(NEXT_STEP));
    assert!(!progress.is_empty());

    exec(
        &client,
        "INSERT INTO contacts (workspace_id, firstname, phone_number)
         SELECT id, 'Long', '+1 (555) 010-0199 x1234' FROM workspaces LIMIT 1",
    )
    .await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let (code, out, err) = leadsync(&db, &["cutover", "--timeout", "60"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("NO-GO"), "{out}");
    assert!(out.contains("dead letter"), "{out}");
}
