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
