//! A sidecar that fails safe: an error no retry fixes leaves the daemon up in the failed
//! state (ready, not healthy, saying why, recorded for the standbys), and the operator's
//! fix — `leadsync ctl retry`, or a fixed password, or a `setup` that was missing — starts
//! it over without a restart.

use std::time::Duration;

use leadsync::testing::{
    Daemon, TestDb, daemon_env, daemon_env_with_metrics, http_get, run_cli, scrape_metrics,
    scratch_path,
};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(60);

/// A daemon's environment with its own metrics port and pidfile.
fn instance(db: &TestDb, extra: &[(&str, &str)]) -> (Vec<(String, String)>, std::net::SocketAddr) {
    let (mut env, addr) = daemon_env_with_metrics(db);
    env.push((
        "LEADSYNC_CONTROL__PIDFILE".into(),
        scratch_path(".pid").display().to_string(),
    ));
    for (k, v) in extra {
        env.push(((*k).into(), (*v).into()));
    }
    (env, addr)
}

async fn status_json(addr: std::net::SocketAddr) -> serde_json::Value {
    let (head, body) = http_get(addr, "/status").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(&body).unwrap()
}

async fn code_of(addr: std::net::SocketAddr, path: &str) -> u16 {
    let (head, _) = http_get(addr, path).await;
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits until `/status` says `state`.
async fn wait_state(addr: std::net::SocketAddr, state: &str, log: &dyn Fn() -> String) {
    let deadline = std::time::Instant::now() + CATCH_UP;
    loop {
        let status = status_json(addr).await;
        if status["state"] == state {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not {state}: {status}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a failed daemon shows everywhere, and that it is still up.
async fn assert_failed(daemon: &mut Daemon, addr: std::net::SocketAddr, because: &str) {
    let log = daemon.wait_failed(CATCH_UP).await;
    assert!(log.contains(because), "{log}");
    let status = status_json(addr).await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["last_error"].as_str().unwrap().contains(because),
        "{status}"
    );
    assert!(status["failed_since"].is_string(), "{status}");
    // Ready, so the application's pod stays in its Service; alive for the liveness probe;
    // not healthy, for monitoring.
    assert_eq!(code_of(addr, "/readyz").await, 200);
    assert_eq!(code_of(addr, "/livez").await, 200);
    assert_eq!(code_of(addr, "/healthz").await, 503);
    assert_eq!(
        scrape_metrics(addr).await.get("leadsync_failed"),
        Some(&1.0)
    );
}

#[tokio::test]
async fn a_fatal_error_keeps_the_sidecar_up_and_failed_and_ctl_retry_starts_it_over() {
    let db = TestDb::spawn_ready(300).await;
    let client = db.client().await;
    // Only the row below is to stop the daemon.
    client
        .batch_execute("UPDATE contacts SET phone_number = left(phone_number, 20)")
        .await
        .unwrap();
    let strict = [("LEADSYNC_SYNC__ON_ERROR", "stop")];
    let (env, addr) = instance(&db, &strict);
    let mut active = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| active.log()).await;
    let (standby_env, standby_addr) = instance(&db, &strict);
    let mut standby = Daemon::start(BIN, &standby_env);
    wait_state(standby_addr, "standby", &|| standby.log()).await;

    // A row that does not fit, with sync.on_error = "stop": an error no retry fixes.
    let workspace: Uuid = client
        .query_one("SELECT workspace_id FROM contacts LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let bad = Uuid::new_v4();
    client
        .execute(
            "INSERT INTO contacts (id, workspace_id, firstname, phone_number)
             VALUES ($1, $2, 'Long', '+1 (555) 010-0199 ext. 1234')",
            &[&bad, &workspace],
        )
        .await
        .unwrap();
    assert_failed(&mut active, addr, "customers.phone1").await;

    // Recorded for the standbys, by the instance that failed.
    let row = client
        .query_one(
            "SELECT failure, failed_by FROM leadsync.sync_state WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap();
    let (failure, by): (Option<String>, Option<String>) = (row.get(0), row.get(1));
    assert!(failure.unwrap().contains("customers.phone1"));
    assert!(
        by.unwrap().ends_with(&format!("pid {}", active.pid())),
        "recorded by the active instance"
    );
    // The standby does not take over to fail the same way: it waits, failed, naming why.
    assert_failed(&mut standby, standby_addr, "customers.phone1").await;
    assert!(
        standby
            .log()
            .contains("another leadsync failed on this slot")
    );
    let applied: i64 = client
        .query_one("SELECT count(*) FROM customers WHERE cst_id = $1", &[&bad])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, 0);

    // `ctl status` says failed (exit status 4) with the reason and the way out.
    let (code, out, err) = run_cli(BIN, env.clone(), &["ctl", "status"]).await;
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("customers.phone1"), "{out}");
    assert!(out.contains("leadsync ctl retry"), "{out}");

    // The fix (the column made wide enough: the change in the slot still carries the long
    // value), then `ctl retry`: no restart, and the row arrives.
    client
        .batch_execute("ALTER TABLE customers ALTER COLUMN phone1 TYPE varchar(40)")
        .await
        .unwrap();
    let (code, out, err) = run_cli(BIN, env.clone(), &["ctl", "retry"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cleared the failure"), "{out}");
    db.wait_caught_up(CATCH_UP, &|| format!("{}\n{}", active.log(), standby.log()))
        .await;
    db.assert_projection(&db.settings()).await;
    for (daemon, addr) in [(&mut active, addr), (&mut standby, standby_addr)] {
        assert!(daemon.try_wait().is_none(), "{}", daemon.log());
        let deadline = std::time::Instant::now() + CATCH_UP;
        while scrape_metrics(addr).await.get("leadsync_failed") != Some(&0.0) {
            assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(code_of(addr, "/healthz").await, 200);
    }
    let (code, out, _) = run_cli(BIN, env.clone(), &["ctl", "status"]).await;
    assert!(code == 0, "{out}");
}

#[tokio::test]
async fn sigterm_stops_a_failed_daemon_within_seconds() {
    let db = TestDb::spawn().await;
    let (env, addr) = instance(&db, &[]);
    let mut daemon = Daemon::start(BIN, &env);
    assert_failed(&mut daemon, addr, "leadsync setup").await;
    let started = std::time::Instant::now();
    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{}", daemon.log()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(1),
        "stopped while failed: {}",
        daemon.log()
    );
}

/// `run` against a database where `setup` never ran says so, instead of waiting as a
/// standby; once `setup` runs, it starts by itself.
#[tokio::test]
async fn run_before_setup_says_so_and_starts_once_setup_has_run() {
    let db = TestDb::spawn().await;
    leadsync::fixtures::generate_demo_data(&db.client().await, 100)
        .await
        .unwrap();
    let (env, addr) = instance(&db, &[]);
    let mut daemon = Daemon::start(BIN, &env);
    assert_failed(&mut daemon, addr, "run `leadsync setup` first").await;
    assert!(!daemon.log().contains("standby"), "{}", daemon.log());

    let (code, out, err) = run_cli(BIN, daemon_env(&db), &["setup"]).await;
    assert_eq!(code, 0, "{out}{err}");
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&db.settings()).await;
    assert_eq!(status_json(addr).await["state"], "streaming");
}

/// A refused password is not "connection lost" retried forever behind a green health
/// check: it is named, the daemon is failed (not healthy), and it starts over by itself
/// once the database takes the password.
#[tokio::test]
async fn a_refused_password_is_named_and_not_healthy_until_the_database_takes_it() {
    use leadsync::cluster::{ClusterOptions, TempCluster};
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let db = TestDb::spawn_on(cluster.port(), true).await;
    db.make_ready(100).await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE pw_checked LOGIN SUPERUSER REPLICATION PASSWORD 'Right-Pw-1'",
        )
        .await
        .unwrap();
    let hba = cluster.dir().join("data").join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all pw_checked 127.0.0.1/32 scram-sha-256\n\
             host replication pw_checked 127.0.0.1/32 scram-sha-256\n{rules}"
        ),
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (mut env, addr) = instance(&db, &[]);
    env.retain(|(k, _)| k != "LEADSYNC_SOURCE__URL");
    env.push((
        "LEADSYNC_SOURCE__URL".into(),
        format!(
            "postgres://pw_checked:Wrong-Pw-2@127.0.0.1:{}/{}",
            db.port(),
            db.name
        ),
    ));
    let mut daemon = Daemon::start(BIN, &env);
    assert_failed(&mut daemon, addr, "password authentication failed").await;
    let log = daemon.log();
    assert!(log.contains("refused leadsync"), "{log}");
    assert!(!log.contains("connection was lost"), "{log}");
    assert!(!log.contains("Wrong-Pw-2"), "{log}");

    // The database takes the daemon's password now: it starts over without a restart.
    admin
        .batch_execute("ALTER ROLE pw_checked PASSWORD 'Wrong-Pw-2'")
        .await
        .unwrap();
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    db.assert_projection(&db.settings()).await;
    assert_eq!(code_of(addr, "/healthz").await, 200);
    drop(daemon);
    drop(db);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
