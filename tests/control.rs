//! Operator controls on a real process: pause and resume by signal (persisted across a
//! restart, longer than `wal_sender_timeout`), `leadsync ctl`, and a standby taking over.

use std::time::Duration;

use leadsync::testing::{Daemon, TestDb, daemon_env, daemon_env_with_metrics, scrape_metrics};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");

/// The daemon's environment with a pidfile, and where it serves its metrics.
fn env_and_metrics(db: &TestDb) -> (Vec<(String, String)>, std::net::SocketAddr) {
    let (mut env, addr) = daemon_env_with_metrics(db);
    let pidfile = leadsync::testing::scratch_path(".pid");
    env.push((
        "LEADSYNC_CONTROL__PIDFILE".into(),
        pidfile.display().to_string(),
    ));
    (env, addr)
}

/// An unlabelled sample of a scrape, waiting (up to 10 s) for a daemon that has just
/// started streaming to set it.
async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape_metrics(addr).await;
        if let Some(value) = samples.get(name) {
            return *value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {name} in {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ctl(env: &[(String, String)], action: &str) -> String {
    let (code, text) = ctl_code(env, action);
    assert_eq!(code, Some(0), "ctl {action}: {text}");
    text
}

/// `leadsync ctl action`: its exit code and output.
fn ctl_code(env: &[(String, String)], action: &str) -> (Option<i32>, String) {
    let out = std::process::Command::new(BIN)
        .args(["ctl", action])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

async fn count_leads_with(db: &TestDb, disposition: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM leads WHERE disposition = $1 AND deleted_at IS NULL",
            &[&disposition],
        )
        .await
        .unwrap()
        .get(0)
}

async fn walsender_pid(db: &TestDb) -> Option<i32> {
    db.client()
        .await
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.slot],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

#[tokio::test]
async fn pause_holds_changes_survives_restart_and_timeouts_and_resume_catches_up() {
    let db = TestDb::spawn().await;
    db.make_ready(500).await;
    let (env, metrics) = env_and_metrics(&db);
    let mut daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    assert_eq!(metric(metrics, "leadsync_paused").await, 0.0);
    assert_eq!(metric(metrics, "leadsync_lag_seconds").await, 0.0);

    // The pidfile appears once the daemon runs.
    let text = ctl(&env, "pause");
    assert!(text.contains("pause"), "{text}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE contacts SET lead_status = 'held' WHERE id IN
               (SELECT id FROM contacts ORDER BY id LIMIT 25)",
        )
        .await
        .unwrap();
    let walsender = walsender_pid(&db).await;
    assert!(walsender.is_some());
    // Paused shows, and the lag grows in bytes (sampled against the server) and seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        metric(metrics, "leadsync_paused").await,
        1.0,
        "{}",
        daemon.log()
    );
    let bytes_before = metric(metrics, "leadsync_lag_bytes").await;
    let seconds_before = metric(metrics, "leadsync_lag_seconds").await;
    assert!(
        bytes_before > 0.0,
        "no lag in bytes while paused with writes pending"
    );
    assert!(seconds_before >= 1.0, "lag {seconds_before} s while paused");
    client
        .batch_execute(
            "UPDATE contacts SET firstname = firstname || '.' WHERE id IN
               (SELECT id FROM contacts ORDER BY id LIMIT 100)",
        )
        .await
        .unwrap();
    // Longer than the test cluster's wal_sender_timeout (10 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        count_leads_with(&db, "held").await,
        0,
        "applied while paused"
    );
    assert_eq!(
        walsender_pid(&db).await,
        walsender,
        "the slot connection did not survive the pause: {}",
        daemon.log()
    );
    // Running but paused: exit code 2.
    let (code, status) = ctl_code(&env, "status");
    assert_eq!(code, Some(2), "{status}");
    assert!(status.contains("(paused)"), "{status}");
    assert!(metric(metrics, "leadsync_lag_bytes").await > bytes_before);
    assert!(metric(metrics, "leadsync_lag_seconds").await >= seconds_before + 10.0);

    // A restart comes back paused.
    let code = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    assert_eq!(code.map(|c| c.code()), Some(Some(0)), "{}", daemon.log());
    // Not running: exit code 3.
    let (code, status) = ctl_code(&env, "status");
    assert_eq!(code, Some(3), "{status}");
    assert!(status.contains("not running"), "{status}");
    let daemon = Daemon::start(BIN, &env);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count_leads_with(&db, "held").await, 0, "{}", daemon.log());
    assert_eq!(
        metric(metrics, "leadsync_paused").await,
        1.0,
        "{}",
        daemon.log()
    );
    assert!(metric(metrics, "leadsync_lag_seconds").await >= seconds_before + 10.0);

    ctl(&env, "resume");
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    assert!(count_leads_with(&db, "held").await > 0);
    db.assert_projection(&db.settings()).await;
    assert_eq!(metric(metrics, "leadsync_paused").await, 0.0);
    assert_eq!(metric(metrics, "leadsync_lag_seconds").await, 0.0);
    let status = ctl(&env, "status");
    assert!(!status.contains("(paused)"), "{status}");
}

/// A second `leadsync run` with the same pidfile stops before touching it: the running
/// daemon stays reachable by `ctl`.
#[tokio::test]
async fn a_second_daemon_with_the_same_pidfile_refuses_to_start_and_leaves_it_alone() {
    let db = TestDb::spawn().await;
    db.make_ready(100).await;
    let (env, _) = env_and_metrics(&db);
    let first = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(60), &|| first.log())
        .await;
    let pidfile = env
        .iter()
        .find(|(k, _)| k == "LEADSYNC_CONTROL__PIDFILE")
        .map(|(_, v)| std::path::PathBuf::from(v))
        .unwrap();
    let before = std::fs::read_to_string(&pidfile).unwrap();

    let (code, out, err) = leadsync::testing::run_cli(BIN, env.clone(), &["run"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("another leadsync (pid {})", first.pid())),
        "{err}"
    );
    assert!(err.contains("control.pidfile"), "{err}");
    assert!(
        !err.contains("cannot listen"),
        "it got as far as the port: {err}"
    );
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), before);
    // `ctl` still reaches the first daemon (whatever it is doing this instant).
    let status = ctl(&env, "status");
    assert!(
        status.contains(&format!("pid {}", first.pid())) && !status.contains("not running"),
        "{status}"
    );
    ctl(&env, "pause");
}

#[tokio::test]
async fn a_standby_takes_over_when_the_active_daemon_dies() {
    let db = TestDb::spawn().await;
    db.make_ready(500).await;
    let mut first = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(60), &|| first.log())
        .await;
    let second = Daemon::start(BIN, &daemon_env(&db));
    second.wait_log("standby", Duration::from_secs(20)).await;
    first.kill();
    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE contacts SET lead_status = 'taken_over' WHERE id IN
               (SELECT id FROM contacts ORDER BY id LIMIT 10)",
        )
        .await
        .unwrap();
    db.wait_caught_up(Duration::from_secs(60), &|| second.log())
        .await;
    assert!(count_leads_with(&db, "taken_over").await > 0);
    db.assert_projection(&db.settings()).await;
}

/// With the server's default `wal_sender_timeout` (60 s) the server itself reports its WAL
/// position only every 30 s while it skips unpublished work; the daemon's heartbeat keeps
/// the slot moving anyway.
#[tokio::test]
async fn heartbeats_advance_the_slot_while_only_unpublished_tables_are_busy() {
    use leadsync::cluster::{ClusterOptions, TempCluster};
    let cluster = tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let db = TestDb::spawn_on(cluster.port(), true).await;
    db.make_ready(500).await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE noise (id bigserial PRIMARY KEY, payload text)")
        .await
        .unwrap();
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;

    let noise = |seconds: u64| {
        let client = &client;
        async move {
            let until = std::time::Instant::now() + Duration::from_secs(seconds);
            while std::time::Instant::now() < until {
                client
                    .batch_execute(
                        "INSERT INTO noise (payload) SELECT md5(g::text) FROM generate_series(1, 200) g",
                    )
                    .await
                    .unwrap();
            }
        }
    };
    noise(3).await;
    let mark: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    noise(14).await;
    let passed: bool = client
        .query_one(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots
             WHERE slot_name = $2",
            &[&mark, &db.slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(passed, "the slot stayed behind {mark}: {}", daemon.log());
    drop(daemon);
    drop(db);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn lag_in_seconds_shows_a_backlog_while_it_is_applied() {
    let db = TestDb::spawn().await;
    db.make_ready(300).await;
    let (env, metrics) = env_and_metrics(&db);
    let mut daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    daemon.kill();
    db.wait_slot_released().await;
    // A backlog of 20,000 one-row transactions, the oldest a few seconds old at restart.
    let client = db.client().await;
    client
        .batch_execute(
            "DO $$
             DECLARE ids uuid[] := ARRAY(SELECT id FROM contacts ORDER BY id);
             BEGIN
               FOR i IN 1..20000 LOOP
                 UPDATE contacts SET priority = i % 5 WHERE id = ids[1 + i % array_length(ids, 1)];
                 COMMIT;
               END LOOP;
             END $$",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let daemon = Daemon::start(BIN, &env);
    let mut seen: f64 = 0.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let samples = scrape_metrics(metrics).await;
        let lag = samples.get("leadsync_lag_seconds").copied().unwrap_or(0.0);
        seen = seen.max(lag);
        let applied = samples
            .get("leadsync_changes_total{table=\"contacts\",op=\"upsert\"}")
            .copied()
            .unwrap_or(0.0);
        if applied >= 20_000.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not applied in time: {samples:?}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen >= 3.0,
        "the lag never showed the backlog's age (max {seen} s)"
    );
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(metrics, "leadsync_lag_seconds").await, 0.0);
    db.assert_projection(&db.settings()).await;
}

/// SIGTERM in the middle of a large first load stops the daemon within seconds: the load
/// rolls back (nothing half-loaded, the keys set aside are back), and the next run loads
/// everything.
#[tokio::test]
async fn sigterm_during_the_first_load_stops_within_seconds_and_the_next_run_loads_again() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, 80_000)
        .await
        .unwrap();
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap();
    let keys = db.legacy_foreign_keys().await;
    let env = daemon_env(&db);
    let mut daemon = Daemon::start(BIN, &env);
    daemon
        .wait_log(
            "loading existing rows from its snapshot",
            Duration::from_secs(60),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = std::time::Instant::now();
    let status = daemon
        .signal_and_wait(libc::SIGTERM, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{}", daemon.log()));
    let took = asked.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    let log = daemon.log();
    assert!(
        !log.contains("first load committed"),
        "the load finished before SIGTERM; make it larger:\n{log}"
    );
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < Duration::from_secs(3),
        "stopped after {took:?}:\n{log}"
    );
    assert!(log.contains("stopped during the first load"), "{log}");

    // Rolled back: nothing loaded, the phase still the first load's, the keys back.
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM leadsync.contacts),
                    (SELECT phase FROM leadsync.sync_state WHERE slot_name = $1),
                    (SELECT failure FROM leadsync.sync_state WHERE slot_name = $1)",
            &[&db.slot],
        )
        .await
        .unwrap();
    let (customers, state, phase, failure): (i64, i64, String, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((customers, state), (0, 0), "{log}");
    assert_eq!(phase, "backfill");
    assert_eq!(failure, None, "a stop is not a failure");
    assert_eq!(db.legacy_foreign_keys().await, keys);

    db.wait_slot_released().await;
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(300), &|| daemon.log())
        .await;
    db.assert_projection(&db.settings()).await;
}

/// The first load shows its progress while it runs: rows done and to do per table (the
/// totals the source's own counts), percentage, ETA and the step, in `/status` and the
/// metrics; the lag in seconds grows from its snapshot; afterwards every table is done.
#[tokio::test]
async fn the_first_load_shows_its_progress_and_lag_while_it_runs() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    leadsync::fixtures::generate_demo_data(&client, 80_000)
        .await
        .unwrap();
    leadsync::cmd::setup::run_setup(&db.settings())
        .await
        .unwrap();
    let contacts: i64 = client
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    let (mut env, addr) = daemon_env_with_metrics(&db);
    env.push(("LEADSYNC_LOG__STATUS_EVERY_SECONDS".into(), "1".into()));
    let daemon = Daemon::start(BIN, &env);

    // While it loads.
    let mut seen_loading = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen_loading.is_none() {
        let (_, body) = leadsync::testing::http_get(addr, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status["state"] == "backfill"
            && status["backfill"]["rows_done"].as_u64() > Some(0)
            && status["lag_seconds"].as_f64() > Some(0.0)
        {
            seen_loading = Some(status.clone());
        } else if status["state"] == "streaming" {
            panic!("the load ended before it was seen: {}", daemon.log());
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let loading = seen_loading.unwrap();
    let load = &loading["backfill"];
    let tables = load["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 6, "{load}");
    assert_eq!(tables[0]["table"], "customers");
    assert_eq!(tables[0]["total"].as_i64(), Some(contacts), "{load}");
    let total: u64 = tables.iter().map(|t| t["total"].as_u64().unwrap()).sum();
    assert_eq!(load["rows_total"].as_u64(), Some(total));
    let percent = load["percent"].as_f64().unwrap();
    assert!(percent > 0.0 && percent < 100.0, "{load}");
    assert!(
        load["step"].as_str().unwrap().starts_with("copying"),
        "{load}"
    );
    assert!(load["eta_seconds"].is_u64(), "{load}");
    let samples = scrape_metrics(addr).await;
    assert_eq!(
        samples.get("leadsync_first_load_rows_expected{table=\"customers\"}"),
        Some(&(contacts as f64)),
        "{samples:?}"
    );

    // Once it is done.
    db.wait_caught_up(Duration::from_secs(120), &|| daemon.log())
        .await;
    let samples = scrape_metrics(addr).await;
    for t in tables {
        let table = t["table"].as_str().unwrap();
        let done = samples[&format!("leadsync_first_load_rows{{table=\"{table}\"}}")];
        let expected = samples[&format!("leadsync_first_load_rows_expected{{table=\"{table}\"}}")];
        assert_eq!(done, expected, "{table}");
    }
    let (_, body) = leadsync::testing::http_get(addr, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(status["backfill"].is_null(), "{status}");

    // The end-of-load summary names every step with its duration and the rows written; the
    // status line follows the stream.
    let log = daemon.log();
    let summary = log
        .lines()
        .find(|l| l.contains("first load in "))
        .unwrap_or_else(|| panic!("no summary:\n{log}"));
    for step in [
        "copy customers",
        "copy appointment_custom_fields",
        "indexes",
        "keys",
        "commit",
    ] {
        assert!(summary.contains(&format!("{step} ")), "{step}: {summary}");
    }
    let customers: i64 = client
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        summary.contains(&format!(
            "written {} customers",
            leadsync::statusline::thousands(customers as u64)
        )),
        "{summary}"
    );
    daemon
        .wait_log("streaming: ", Duration::from_secs(10))
        .await;
    let log = daemon.log();
    assert!(log.contains("changes/s applied, lag "));

    // The log reads as sentences: no Rust debug output, no long floats (past each line's
    // timestamp). The load parked rows, so it logged their contacts.
    assert!(log.contains("change parked"), "{log}");
    assert!(!log.contains("Some("), "{log}");
    for line in log.lines() {
        let text = line.split_once(' ').map_or(line, |(_, rest)| rest);
        let long_float = text
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|token| token.split_once('.'))
            .any(|(whole, fraction)| {
                !whole.is_empty()
                    && fraction.len() > 3
                    && fraction.chars().all(|c| c.is_ascii_digit())
            });
        assert!(!long_float, "{line}");
    }
}

/// `leadsync status` reads the daemon's own view; `--watch` redraws it with the history as
/// sparklines; without a daemon it says where it looked.
#[tokio::test]
async fn status_and_status_watch_show_the_daemon_live() {
    let db = TestDb::spawn_ready(300).await;
    let (env, addr) = env_and_metrics(&db);
    let daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    let writes = {
        let client = db.client().await;
        tokio::spawn(async move {
            for _ in 0..30 {
                let _ = client
                    .batch_execute(
                        "UPDATE contacts SET firstname = firstname || '.' WHERE id IN
                           (SELECT id FROM contacts ORDER BY random() LIMIT 20)",
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let (code, out, err) = leadsync::testing::run_cli(
        BIN,
        env.clone(),
        &["status", "--watch", "--frames", "3", "--interval", "1"],
    )
    .await;
    writes.await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let heading = format!("leadsync at {addr} — slot {} — streaming", db.slot);
    assert_eq!(out.matches(&heading).count(), 3, "{out}");
    let last = out.rsplit(&heading).next().unwrap();
    let applied = last
        .lines()
        .find(|l| l.starts_with("applied"))
        .unwrap_or_else(|| panic!("{out}"));
    // Three samples in the sparkline.
    let bars = applied.chars().filter(|c| ('▁'..='█').contains(c)).count();
    assert_eq!(bars, 3, "{applied}");
    assert!(out.lines().all(|l| l.chars().count() <= 100), "{out}");

    let (code, out, _) = leadsync::testing::run_cli(BIN, env.clone(), &["status"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.matches(&heading).count(), 1, "{out}");
    drop(daemon);
    let (code, _, err) = leadsync::testing::run_cli(BIN, env, &["status"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("no leadsync answers at {addr}")),
        "{err}"
    );
}
