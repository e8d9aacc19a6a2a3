//! End-to-end streaming throughput of the real `leadsync` binary against a throwaway
//! PostgreSQL 15 cluster (`fsync`, `synchronous_commit` and `full_page_writes` off; see
//! `BENCHMARKS.md`):
//!
//! - (a) many small transactions: single-row UPDATEs of `contacts` from several
//!   connections, once with the daemon running (writers and daemon compete for the same
//!   cores) and once written while the daemon is stopped and then caught up (pure apply
//!   throughput);
//! - (b) one transaction of a million inserted contacts, from its commit until caught up;
//! - (c) the daemon's peak RSS (`VmHWM`) and CPU time in each, one daemon process per
//!   scenario so the peaks do not mix.
//!
//! `cargo bench --features test-utils --bench stream` builds the release binary itself
//! (Cargo passes its path as `CARGO_BIN_EXE_leadsync`). Sizes can be changed with
//! `LEADSYNC_BENCH_CONTACTS`, `LEADSYNC_BENCH_UPDATES`, `LEADSYNC_BENCH_WRITERS` and
//! `LEADSYNC_BENCH_BIG`.

use std::time::{Duration, Instant};

use leadsync::cluster::{ClusterOptions, TempCluster};
use leadsync::cmd::setup::run_setup;
use leadsync::testing::{Daemon, TestDb, daemon_env};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const CATCH_UP: Duration = Duration::from_secs(1800);
const STATUSES: [&str; 4] = ["new", "contacted", "qualified", "won"];

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// What one scenario measured.
struct Figures {
    scenario: String,
    changes: u64,
    seconds: f64,
    writer_tps: Option<f64>,
    peak_rss_kib: u64,
    daemon_cpu_s: f64,
    /// Target transactions the daemon committed (origin-tagged commit records in the WAL).
    target_commits: Option<u64>,
    /// CPU seconds of the daemon's server processes: (walsender, apply and other sessions).
    server_cpu_s: (f64, f64),
}

/// CPU seconds used so far by the server processes of the daemon's sessions, as
/// (walsender, ordinary sessions). Tells whether the time goes to decoding or to applying.
async fn server_cpu(client: &Client, db: &TestDb) -> (f64, f64) {
    let rows = client
        .query(
            "SELECT pid, backend_type = 'walsender' FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'leadsync'",
            &[&db.name],
        )
        .await
        .unwrap();
    let mut cpu = (0.0, 0.0);
    for row in rows {
        let pid: i32 = row.get(0);
        let seconds = cpu_seconds(pid as u32);
        if row.get::<_, bool>(1) {
            cpu.0 += seconds;
        } else {
            cpu.1 += seconds;
        }
    }
    cpu
}

/// The server's current WAL position.
async fn wal_position(client: &Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Commit records carrying a replication origin between two WAL positions: the daemon's
/// target transactions, since only its apply session is bound to an origin. Tells how many
/// source transactions each target transaction grouped.
fn origin_commits(cluster: &TempCluster, from: &str, to: &str) -> Option<u64> {
    let out = std::process::Command::new(cluster.bindir().join("pg_waldump"))
        .arg("-p")
        .arg(cluster.dir().join("data").join("pg_wal"))
        .args(["-s", from, "-e", to, "-r", "Transaction"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let count = text
        .lines()
        .filter(|l| l.contains("desc: COMMIT") && l.contains("origin: node"))
        .count();
    (count > 0).then_some(count as u64)
}

/// `VmHWM` of a process in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // The command name may contain spaces; the fields after it are fixed.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

async fn connect(db: &TestDb) -> Client {
    let (client, connection) = tokio_postgres::connect(
        &format!("{}?application_name=leadsync-bench", db.url()),
        NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(connection);
    client
}

fn start_daemon(db: &TestDb) -> Daemon {
    Daemon::start(BIN, &daemon_env(db))
}

fn stop_daemon(mut daemon: Daemon) {
    let status = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the daemon did not stop cleanly; log:\n{}",
        daemon.log()
    );
}

/// `updates` single-row UPDATE transactions (status and email alternately, like the
/// baseline's pgbench mix) over `writers` connections, as fast as they go. Returns the
/// writers' transactions per second.
async fn write_updates(db: &TestDb, ids: &[Uuid], updates: u64, writers: u64) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = connect(db).await;
        let ids: Vec<Uuid> = ids.to_vec();
        let share = updates / writers + u64::from(w < updates % writers);
        tasks.push(tokio::spawn(async move {
            let status = client
                .prepare("UPDATE contacts SET lead_status = $2, updated_at = now() WHERE id = $1")
                .await
                .unwrap();
            let email = client
                .prepare("UPDATE contacts SET email = $2, updated_at = now() WHERE id = $1")
                .await
                .unwrap();
            for i in 0..share {
                let n = (i * writers + w) as usize;
                let id = &ids[n.wrapping_mul(7919) % ids.len()];
                if n % 2 == 0 {
                    client
                        .execute(&status, &[id, &STATUSES[n % 4]])
                        .await
                        .unwrap();
                } else {
                    let address = format!("bench{n}@example.com");
                    client.execute(&email, &[id, &address]).await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    updates as f64 / started.elapsed().as_secs_f64()
}

/// (a) with the daemon running: from the first write until the daemon has applied the last.
async fn small_transactions_live(
    cluster: &TempCluster,
    db: &TestDb,
    ids: &[Uuid],
    updates: u64,
    writers: u64,
) -> Figures {
    let daemon = start_daemon(db);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let client = connect(db).await;
    let from = wal_position(&client).await;
    let started = Instant::now();
    let tps = write_updates(db, ids, updates, writers).await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let seconds = started.elapsed().as_secs_f64();
    let to = wal_position(&client).await;
    let figures = Figures {
        scenario: format!("(a1) {updates} 1-row txns, {writers} writers, daemon running"),
        changes: updates,
        seconds,
        writer_tps: Some(tps),
        peak_rss_kib: peak_rss_kib(daemon.pid()),
        daemon_cpu_s: cpu_seconds(daemon.pid()),
        target_commits: origin_commits(cluster, &from, &to),
        server_cpu_s: server_cpu(&client, db).await,
    };
    stop_daemon(daemon);
    figures
}

/// (a) written while the daemon is stopped, then caught up: pure apply throughput, from the
/// daemon's start until it has applied the last.
async fn small_transactions_backlog(
    cluster: &TempCluster,
    db: &TestDb,
    ids: &[Uuid],
    updates: u64,
    writers: u64,
) -> Figures {
    let client = connect(db).await;
    let from = wal_position(&client).await;
    let tps = write_updates(db, ids, updates, writers).await;
    let started = Instant::now();
    let daemon = start_daemon(db);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let seconds = started.elapsed().as_secs_f64();
    let to = wal_position(&client).await;
    let figures = Figures {
        scenario: format!("(a2) {updates} 1-row txns written first, then caught up"),
        changes: updates,
        seconds,
        writer_tps: Some(tps),
        peak_rss_kib: peak_rss_kib(daemon.pid()),
        daemon_cpu_s: cpu_seconds(daemon.pid()),
        target_commits: origin_commits(cluster, &from, &to),
        server_cpu_s: server_cpu(&client, db).await,
    };
    stop_daemon(daemon);
    figures
}

/// (b) one transaction inserting `rows` contacts: from its commit until caught up.
async fn one_big_transaction(db: &TestDb, rows: u64) -> Figures {
    let daemon = start_daemon(db);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let client = connect(db).await;
    let started = Instant::now();
    client
        .execute(
            "INSERT INTO contacts (workspace_id, firstname, lastname, email, phone_number,
                                   st_address, city, state, zip, lead_status, lead_source, tags,
                                   appointment_status_id, appointment_result_id,
                                   appointment_date, priority, created_at, updated_at)
             SELECT ws[1 + g % array_length(ws, 1)],
                    'First' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'Last' || g END,
                    'big' || g || '@example.com', '555-' || lpad((g % 10000)::text, 4, '0'),
                    g || ' Main St', 'Austin', 'TX', lpad((g % 100000)::text, 5, '0'),
                    CASE WHEN g % 10 < 3 THEN NULL
                         ELSE (ARRAY['new','contacted','qualified','won'])[1 + g % 4] END,
                    CASE WHEN g % 7 = 0 THEN NULL ELSE 'web' END,
                    (ARRAY['solar','hvac,roofing','roofing',NULL,'vip','Solar'])[1 + g % 6],
                    g % 8, g % 6,
                    CASE WHEN g % 10 < 7 THEN NULL
                         ELSE TIMESTAMP '2024-01-01 09:00' + g * INTERVAL '1 minute' END,
                    CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + g % 5 END,
                    TIMESTAMP '2024-01-01' + g * INTERVAL '1 second',
                    TIMESTAMP '2024-02-01' + g * INTERVAL '1 second'
             FROM generate_series(1, $1::bigint) AS g,
                  (SELECT array_agg(id ORDER BY id) AS ws FROM workspaces) AS w",
            &[&(rows as i64)],
        )
        .await
        .unwrap();
    let insert = started.elapsed().as_secs_f64();
    let committed = Instant::now();
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let seconds = committed.elapsed().as_secs_f64();
    eprintln!("(b) the INSERT itself took {insert:.1} s");
    let figures = Figures {
        scenario: format!("(b) one {rows}-row INSERT transaction, commit -> caught up"),
        changes: rows,
        seconds,
        writer_tps: None,
        peak_rss_kib: peak_rss_kib(daemon.pid()),
        daemon_cpu_s: cpu_seconds(daemon.pid()),
        target_commits: None,
        server_cpu_s: server_cpu(&client, db).await,
    };
    stop_daemon(daemon);
    figures
}

/// The cluster's settings, stated in `BENCHMARKS.md`: the throwaway defaults (durability
/// off) plus enough kept WAL that `pg_waldump` still finds a scenario's records afterwards.
fn bench_cluster_options() -> ClusterOptions {
    ClusterOptions {
        settings: vec![("wal_keep_size".into(), "'4GB'".into())],
        ..ClusterOptions::default()
    }
}

async fn run() {
    let contacts = knob("LEADSYNC_BENCH_CONTACTS", 100_000);
    let updates = knob("LEADSYNC_BENCH_UPDATES", 50_000);
    let writers = knob("LEADSYNC_BENCH_WRITERS", 4);
    let big = knob("LEADSYNC_BENCH_BIG", 1_000_000);
    eprintln!("binary: {BIN}");

    let options = bench_cluster_options();
    let cluster = tokio::task::spawn_blocking(move || TempCluster::start(&options))
        .await
        .unwrap()
        .expect("throwaway cluster");
    let db = TestDb::spawn_on(cluster.port(), true).await;
    let client = connect(&db).await;
    let generated = Instant::now();
    leadsync::fixtures::generate_demo_data(&client, contacts)
        .await
        .unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
    eprintln!(
        "{contacts} generated contacts in {:.1} s",
        generated.elapsed().as_secs_f64()
    );
    let ids: Vec<Uuid> = client
        .query("SELECT id FROM contacts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // The first load runs in a daemon of its own, so that no scenario's peak includes it.
    let loading = Instant::now();
    let daemon = start_daemon(&db);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    eprintln!(
        "first load of {contacts} contacts: {:.1} s, peak RSS {} KiB",
        loading.elapsed().as_secs_f64(),
        peak_rss_kib(daemon.pid())
    );
    stop_daemon(daemon);

    let results = vec![
        small_transactions_live(&cluster, &db, &ids, updates, writers).await,
        small_transactions_backlog(&cluster, &db, &ids, updates, writers).await,
        one_big_transaction(&db, big).await,
    ];
    db.assert_projection(&db.settings()).await;
    drop(db);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();

    println!();
    println!(
        "| scenario | row changes | seconds | applied changes/s | writer TPS | daemon peak RSS (MiB) | daemon CPU s | walsender CPU s | apply session CPU s | target commits |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in &results {
        println!(
            "| {} | {} | {:.1} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            f.scenario,
            f.changes,
            f.seconds,
            f.changes as f64 / f.seconds,
            f.writer_tps.map_or("-".to_owned(), |t| format!("{t:.0}")),
            f.peak_rss_kib as f64 / 1024.0,
            f.daemon_cpu_s,
            f.server_cpu_s.0,
            f.server_cpu_s.1,
            f.target_commits.map_or("-".to_owned(), |c| c.to_string()),
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a harness-less bench has no options of its own.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}
