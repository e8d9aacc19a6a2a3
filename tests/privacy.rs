//! Personal data and connection details stay where they belong: a change the target rejects
//! keeps its row in the dead letter's payload (what a replay needs) and nowhere else — not
//! in the stored error, the log or `/status` — and resolved dead letters go after
//! `dlq.retention_days` or on `leadsync dlq purge`. `/status`, served to whatever reaches
//! the metrics port, does not name the database connection.
#![cfg(feature = "test-utils")]

use std::time::Duration;

use leadsync::testing::{Daemon, TestDb, daemon_env_with_metrics, http_get, run_cli};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);

/// The personal data of the rejected contacts: none of it may show outside the payload.
const PERSONAL: [&str; 4] = ["ann.secret", "Annsurname", "bob.secret", "Bobsurname"];

fn assert_no_personal_data(place: &str, text: &str) {
    for needle in PERSONAL {
        assert!(!text.contains(needle), "{needle:?} in {place}:\n{text}");
    }
}

#[tokio::test]
async fn rejected_rows_leave_no_personal_data_outside_their_dead_letter() {
    let db = TestDb::spawn_ready(30).await;
    let admin = db.client().await;
    // Target constraints the legacy data can violate: a check (its error quotes the whole
    // row) and a unique key (its error quotes the key's values).
    admin
        .batch_execute(
            "ALTER TABLE customers ADD CONSTRAINT no_blocked
               CHECK (email IS NULL OR email NOT LIKE '%@blocked.example');
             CREATE UNIQUE INDEX customers_dup_email ON customers (email)
               WHERE email LIKE '%@dup.example';",
        )
        .await
        .unwrap();
    let (env, addr) = daemon_env_with_metrics(&db);
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    admin
        .batch_execute(
            "INSERT INTO contacts (workspace_id, firstname, lastname, email, lead_status,
                                   created_at, updated_at)
             SELECT workspace_id, 'Ann', 'Annsurname', 'ann.secret@blocked.example', 'new',
                    now(), now()
             FROM contacts ORDER BY id LIMIT 1;
             INSERT INTO contacts (workspace_id, firstname, lastname, email, lead_status,
                                   created_at, updated_at)
             SELECT workspace_id, 'Bob', 'Bobsurname', 'bob.secret@dup.example', 'new',
                    now(), now()
             FROM contacts ORDER BY id LIMIT 2;",
        )
        .await
        .unwrap();
    db.settle(&daemon).await;

    let errors: Vec<(String, String)> = admin
        .query(
            "SELECT error, payload::text FROM leadsync.dead_letters
             WHERE status = 'pending' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(errors.len() >= 2, "{errors:?}\n{}", daemon.log());
    let all_errors: Vec<&str> = errors.iter().map(|(e, _)| e.as_str()).collect();
    let joined = all_errors.join("\n");
    assert_no_personal_data("the dead letters' errors", &joined);
    assert!(
        joined.contains("Failing row contains (values not shown)"),
        "{joined}"
    );
    assert!(
        joined.contains("Key (email)=(…) already exists"),
        "{joined}"
    );
    // The payload keeps the row: a replay needs it.
    assert!(
        errors.iter().any(|(_, p)| p.contains("ann.secret")),
        "{errors:?}"
    );
    assert_no_personal_data("the daemon's log", &daemon.log());
    let (_, status) = http_get(addr, "/status").await;
    assert_no_personal_data("/status", &status);
    drop(daemon);

    // Purging: resolved ones past the given age, then pending ones only when confirmed.
    let mut env = env;
    env.retain(|(k, _)| k != "LEADSYNC_METRICS__LISTEN");
    env.push(("LEADSYNC_METRICS__LISTEN".into(), "127.0.0.1:0".into()));
    admin
        .batch_execute(
            "INSERT INTO leadsync.dead_letters
               (slot_name, source_table, operation, key, payload, error, status, created_at,
                resolved_at)
             VALUES ('x', 'contacts', 'insert', '{}', '{\"email\": \"old@x\"}', 'e',
                     'discarded', now() - interval '50 days', now() - interval '40 days'),
                    ('x', 'contacts', 'insert', '{}', '{\"email\": \"new@x\"}', 'e',
                     'replayed', now() - interval '5 days', now() - interval '1 day');",
        )
        .await
        .unwrap();
    let count = |status: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one(
                    "SELECT count(*) FROM leadsync.dead_letters WHERE status = $1",
                    &[&status],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let pending = count("pending").await;
    let (code, out, err) = run_cli(
        BIN,
        env.clone(),
        &["dlq", "purge", "--older-than-days", "30"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("purged 1 discarded"), "{out}{err}");
    assert_eq!(
        (
            count("discarded").await,
            count("replayed").await,
            count("pending").await
        ),
        (0, 1, pending)
    );
    let (code, out, err) = run_cli(BIN, env.clone(), &["dlq", "purge", "--pending"]).await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("--yes-lose-pending"), "{out}{err}");
    assert_eq!(count("pending").await, pending);

    // The daemon deletes resolved ones past dlq.retention_days by itself.
    admin
        .batch_execute(
            "UPDATE leadsync.dead_letters SET resolved_at = now() - interval '8 days'
             WHERE status = 'replayed'",
        )
        .await
        .unwrap();
    let mut with_retention = env.clone();
    with_retention.push(("LEADSYNC_DLQ__RETENTION_DAYS".into(), "7".into()));
    let daemon = Daemon::start(BIN, &with_retention);
    daemon
        .wait_log(
            "resolved dead letters past their retention deleted",
            CATCH_UP,
        )
        .await;
    assert_eq!(
        (count("replayed").await, count("pending").await),
        (0, pending)
    );
    drop(daemon);

    let (code, out, err) = run_cli(
        BIN,
        env,
        &["dlq", "purge", "--pending", "--yes-lose-pending"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(count("pending").await, 0);
}

/// `/status` is served to whatever reaches the metrics port: its last error does not say
/// which user, host, port or database the daemon connects to.
#[tokio::test]
async fn status_does_not_name_the_connection() {
    let db = TestDb::spawn().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let (mut env, addr) = daemon_env_with_metrics(&db);
    let url = format!("postgres://crm_sidecar@127.0.0.1:{closed}/crm_production");
    for (k, v) in env.iter_mut() {
        if k == "LEADSYNC_SOURCE__URL" {
            *v = url.clone();
        }
    }
    let daemon = Daemon::start(BIN, &env);
    daemon.wait_log("retrying", CATCH_UP).await;
    let (_, status) = http_get(addr, "/status").await;
    let value: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let error = value["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("cannot connect to the source database"),
        "{status}"
    );
    for needle in [
        "crm_sidecar",
        "crm_production",
        &closed.to_string(),
        "127.0.0.1",
    ] {
        assert!(!status.contains(needle), "{needle} in /status: {status}");
    }
    // The log, read by the operator, still says where.
    assert!(daemon.log().contains(&format!("127.0.0.1:{closed}")));
}

/// Dead letters from every source show in monitoring: rows the first load parks and rows the
/// stream parks count in `leadsync_dead_letters_total`, and `leadsync_dead_letters_pending`
/// and `/status` report what the table holds pending, whoever parked it — the number that
/// makes a cutover NO-GO.
#[tokio::test]
async fn dead_letters_of_every_source_show_in_the_metrics_and_status() {
    let db = TestDb::spawn().await;
    let admin = db.client().await;
    leadsync::fixtures::generate_demo_data(&admin, 40)
        .await
        .unwrap();
    // Two contacts whose phone does not fit customers.phone1 (VARCHAR(20)) before the load.
    admin
        .batch_execute(
            "UPDATE contacts SET phone_number = '(555) 123-4567 ext. 12345'
             WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 2)",
        )
        .await
        .unwrap();
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (env, addr) = daemon_env_with_metrics(&db);
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    // One more from the stream.
    admin
        .batch_execute(
            "UPDATE contacts SET phone_number = '(555) 765-4321 ext. 98765'
             WHERE id = (SELECT id FROM contacts ORDER BY id DESC LIMIT 1)",
        )
        .await
        .unwrap();
    db.settle(&daemon).await;
    let pending: i64 = admin
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 3, "{}", daemon.log());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let samples = leadsync::testing::scrape_metrics(addr).await;
        let gauge = samples.get("leadsync_dead_letters_pending").copied();
        let total = samples.get("leadsync_dead_letters_total").copied();
        let (_, status) = http_get(addr, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        if gauge == Some(3.0) && total == Some(3.0) && status["dead_letters_pending"] == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pending gauge {gauge:?}, total {total:?}, /status {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Resolved, they leave the gauge.
    admin
        .batch_execute("UPDATE leadsync.dead_letters SET status = 'discarded', resolved_at = now()")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while leadsync::testing::scrape_metrics(addr)
        .await
        .get("leadsync_dead_letters_pending")
        != Some(&0.0)
    {
        assert!(std::time::Instant::now() < deadline, "the gauge stays up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
