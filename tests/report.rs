//! `leadsync report` reports the database's real figures.

use std::time::Duration;

use leadsync::testing::{Daemon, TestDb, daemon_env};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

fn report(env: &[(String, String)], json: bool) -> String {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("report");
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn report_gives_the_real_counts_validation_and_dead_letters() {
    let db = TestDb::spawn_ready(1500).await;
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    let client = db.client().await;
    let expected = client
        .query_one(
            "SELECT (SELECT count(*) FROM contacts),
                    (SELECT count(*) FROM customers WHERE deleted_at IS NULL),
                    (SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'),
                    (SELECT count(*) FROM contact_custom_fields)",
            &[],
        )
        .await
        .unwrap();
    let (contacts, customers, pending, values): (i64, i64, i64, i64) = (
        expected.get(0),
        expected.get(1),
        expected.get(2),
        expected.get(3),
    );
    assert!(pending > 0, "the demo data parks some contacts");

    let env = daemon_env(&db);
    let json: serde_json::Value = serde_json::from_str(
        &tokio::task::spawn_blocking({
            let env = env.clone();
            move || report(&env, true)
        })
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json["phase"], "streaming");
    assert_eq!(json["paused"], false);
    assert!(json["first_load_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(json["counts"][0]["source"], contacts);
    assert_eq!(json["counts"][0]["target"], customers);
    assert_eq!(json["counts"][3]["source"], values);
    assert_eq!(json["validation"]["passed"], true, "{json:#}");
    let pending_reported = json["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d[0] == "pending")
        .map(|d| d[1].as_i64().unwrap());
    assert_eq!(pending_reported, Some(pending));
    let tables: Vec<&str> = json["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["table"].as_str().unwrap())
        .collect();
    assert!(tables.contains(&"public.customers"), "{tables:?}");

    let text = tokio::task::spawn_blocking(move || report(&env, false))
        .await
        .unwrap();
    assert!(text.contains("LEADSYNC MIGRATION REPORT"), "{text}");
    assert!(text.contains("2. VALIDATION: PASS"), "{text}");
    assert!(text.contains(&format!("pending: {pending}")), "{text}");
}

/// What the commands print fits a 100-column terminal, on data with wide values, dead
/// letters and drift to report.
#[tokio::test]
async fn every_command_fits_a_100_column_terminal() {
    let db = TestDb::spawn_ready(1500).await;
    let env = daemon_env(&db);
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    // Drift for validate and cutover to explain.
    db.client()
        .await
        .batch_execute(
            "UPDATE leads SET disposition = 'drifted' WHERE id IN
               (SELECT id FROM leads ORDER BY id LIMIT 3)",
        )
        .await
        .unwrap();
    for args in [
        &["setup"][..],
        &["assess"],
        &["validate", "--wait-seconds", "1"],
        &["report", "--wait-seconds", "1"],
        &["cutover", "--timeout", "30"],
        &["dlq", "list"],
        &["ctl", "status"],
    ] {
        let (_, out, err) = leadsync::testing::run_cli(BIN, env.clone(), args).await;
        assert!(!out.trim().is_empty(), "{args:?} printed nothing: {err}");
        let wide: Vec<&str> = out.lines().filter(|l| l.chars().count() > 100).collect();
        assert!(
            wide.is_empty(),
            "{args:?} prints wider than 100 columns:\n{out}"
        );
    }
}

/// The history the HTML report charts: the active daemon keeps a sample of its lag and
/// throughput every `metrics.history_every_seconds` (a standby none), and the first load's
/// steps with their durations.
#[tokio::test]
async fn the_daemon_keeps_the_history_of_the_migration() {
    let db = TestDb::spawn_ready(500).await;
    let mut env = daemon_env(&db);
    env.push(("LEADSYNC_METRICS__HISTORY_EVERY_SECONDS".into(), "1".into()));
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    let standby = Daemon::start(BIN, &env);
    standby.wait_log("standby", Duration::from_secs(30)).await;
    let client = db.client().await;
    let updated = client
        .execute(
            "UPDATE contacts SET firstname = firstname || '.' WHERE id IN
               (SELECT id FROM contacts ORDER BY id LIMIT 200)",
            &[],
        )
        .await
        .unwrap();
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE state = 'streaming'),
                    bool_and(state IN ('backfill', 'streaming')), sum(changes)::int8,
                    bool_and(seconds > 0 AND lag_seconds >= 0)
             FROM leadsync.samples WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap();
    let (samples, streaming, states, changes, sane): (i64, i64, bool, i64, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert!(samples >= 3, "{samples} samples");
    // Only the active daemon's: one sample a second, not two.
    let elapsed: f64 = client
        .query_one(
            "SELECT extract(epoch FROM max(at) - min(at))::float8 FROM leadsync.samples
             WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        (samples as f64) <= elapsed + 2.0,
        "{samples} samples in {elapsed} s"
    );
    assert!(
        streaming >= 2 && states,
        "{streaming} of {samples} streaming"
    );
    assert!(
        changes >= updated as i64,
        "{changes} changes sampled, {updated} applied"
    );
    assert!(sane);

    let steps: Vec<String> = client
        .query(
            "SELECT step FROM leadsync.load_steps WHERE slot_name = $1 ORDER BY position",
            &[&db.slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(steps.first().map(String::as_str), Some("copy customers"));
    assert_eq!(steps.last().map(String::as_str), Some("commit"));
    assert!(steps.iter().any(|s| s == "indexes"), "{steps:?}");
}
