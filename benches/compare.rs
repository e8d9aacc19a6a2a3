//! Legacy writers under three kinds of sync, side by side on one throwaway PostgreSQL 15
//! cluster (see `BENCHMARKS.md`, section "Writers under three kinds of sync"):
//!
//! - **none**: the legacy tables only (the publication `leadsync setup` made exists, no
//!   slot, no trigger);
//! - **guide**: the guide's sync triggers (its "Data Synchronization Setup" Steps 1-3,
//!   `benches/sql/guide_triggers.sql`) on target tables filled with the guide's mapping
//!   (`benches/sql/set_based.sql`);
//! - **leadsync**: the release binary `leadsync run` streaming from its own slot, its first
//!   load done and caught up before the timed load.
//!
//! The load is the real `pgbench` (`-M prepared`, scripts in `benches/sql/pgbench/`), for a
//! fixed time: (U) single-row UPDATEs of random existing contacts, lead_status and email
//! 50/50; (I) an INSERT of a contact with two custom-field values in one transaction. Every
//! run starts on a fresh `CREATE DATABASE … TEMPLATE` clone followed by a `CHECKPOINT`.
//! With leadsync, a run at a fixed rate (`pgbench -R`, half of the no-sync TPS measured
//! just before) gives the lag at half saturation.
//!
//! Lag is measured end to end by a probe: every 100 ms a separate session updates one
//! reserved contact's `firstname` to `probe-<n>` (autocommit) and notes when the commit was
//! acknowledged; another session reads that customer's `firstname` every 10 ms and notes
//! when each `n` first becomes visible. leadsync applies whole source transactions in
//! commit order, so the probe's lag is that of every transaction committed around it. A
//! last probe written when pgbench exits gives the catch-up time.
//!
//! ```text
//! cargo bench --features test-utils --bench compare
//! ```
//!
//! Knobs (not `LEADSYNC_*`: those are read as leadsync settings): `BENCH_CONTACTS` (100000),
//! `BENCH_SECONDS` per run (20), `BENCH_CLIENTS` (4), `BENCH_THREADS` (2), `BENCH_DURABLE`
//! (0: `fsync = off` and otherwise PostgreSQL's defaults, synchronous_commit and
//! full_page_writes on, as in the trigger baseline; 1: fsync on too, which on a shared disk
//! measures mostly the disk's flush latency), `BENCH_PLAN` (the runs in order,
//! `workload:variant` with workload `U` or `I` and variant `none`, `guide`, `leadsync` or
//! `rate`; default `U:none,U:guide,U:leadsync,U:rate,U:none,I:none,I:guide,I:leadsync,I:none`:
//! no sync brackets the others, and ratios use the mean of its runs),
//! `BENCH_RATE_FRACTION` (0.5 of the no-sync TPS measured before), `BENCH_PROBE_MS` (100),
//! `BENCH_POLL_MS` (10).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadsync::cluster::{ClusterOptions, TempCluster};
use leadsync::cmd::setup::run_setup;
use leadsync::config::Settings;
use leadsync::testing::{Daemon, Databases, scrape_metrics};
use secrecy::SecretString;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const SET_BASED_SQL: &str = include_str!("sql/set_based.sql");
const GUIDE_TRIGGERS_SQL: &str = include_str!("sql/guide_triggers.sql");
const PGBENCH_SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/sql/pgbench");
/// Publication made by `leadsync setup` in the template, copied into every clone.
const PUBLICATION: &str = "bench_compare_pub";
const BASE_TEMPLATE: &str = "cmp_tpl_base";
const GUIDE_TEMPLATE: &str = "cmp_tpl_guide";
const CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);

/// The contact the lag probe updates; pgbench never picks it (its ids come from
/// `md5('contact' || i)`).
const PROBE_CONTACT: &str = "
INSERT INTO contacts (id, workspace_id, firstname, lastname, email, lead_status, created_at,
                      updated_at)
VALUES (md5('lagprobe')::uuid, md5('workspace1')::uuid, 'probe-0', 'Probe',
        'probe@example.com', 'new', now(), now())";

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn knob_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Single-row UPDATEs of lead_status or email, 50/50.
    Update,
    /// One contact and two custom-field values per transaction.
    Insert,
}

impl Workload {
    fn key(self) -> &'static str {
        match self {
            Workload::Update => "U",
            Workload::Insert => "I",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::Update => "(U) UPDATE mix",
            Workload::Insert => "(I) INSERT contact + 2 values",
        }
    }

    /// pgbench `-f` arguments.
    fn scripts(self) -> Vec<String> {
        match self {
            Workload::Update => vec![
                format!("{PGBENCH_SCRIPTS}/upd_status.sql@50"),
                format!("{PGBENCH_SCRIPTS}/upd_email.sql@50"),
            ],
            Workload::Insert => vec![format!("{PGBENCH_SCRIPTS}/ins_contact.sql")],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoSync,
    Guide,
    Leadsync,
    /// leadsync with the writers held to a fixed rate.
    Rate,
}

impl Variant {
    fn key(self) -> &'static str {
        match self {
            Variant::NoSync => "none",
            Variant::Guide => "guide",
            Variant::Leadsync => "leadsync",
            Variant::Rate => "rate",
        }
    }

    fn streams(self) -> bool {
        matches!(self, Variant::Leadsync | Variant::Rate)
    }
}

fn parse_plan(plan: &str) -> Vec<(Workload, Variant)> {
    plan.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (w, v) = item
                .split_once(':')
                .unwrap_or_else(|| panic!("BENCH_PLAN item {item:?} is not workload:variant"));
            let w = match w {
                "U" | "u" => Workload::Update,
                "I" | "i" => Workload::Insert,
                other => panic!("unknown workload {other:?} (U or I)"),
            };
            let v = match v {
                "none" => Variant::NoSync,
                "guide" => Variant::Guide,
                "leadsync" => Variant::Leadsync,
                "rate" => Variant::Rate,
                other => panic!("unknown variant {other:?} (none, guide, leadsync, rate)"),
            };
            (w, v)
        })
        .collect()
}

/// What pgbench reported.
#[derive(Debug, Default, Clone)]
struct Pgbench {
    txns: u64,
    failed: u64,
    tps: f64,
    latency_ms: f64,
    schedule_lag_ms: Option<f64>,
}

fn parse_pgbench(out: &str) -> Pgbench {
    let mut r = Pgbench::default();
    let number = |s: &str| -> f64 {
        s.trim()
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number in pgbench line {s:?}"))
    };
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            r.txns = number(v) as u64;
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            r.failed = number(v) as u64;
        } else if let Some(v) = line.strip_prefix("latency average =") {
            r.latency_ms = number(v);
        } else if let Some(v) = line.strip_prefix("tps =") {
            r.tps = number(v);
        } else if let Some(v) = line.strip_prefix("rate limit schedule lag: avg") {
            r.schedule_lag_ms = Some(number(v));
        }
    }
    assert!(
        r.txns > 0 && r.tps > 0.0,
        "unexpected pgbench output:\n{out}"
    );
    r
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
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

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// User + system CPU seconds a process has used (0 if it is gone).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may contain spaces; the fields after it are fixed.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

/// Busy CPU ticks of the whole machine (all cores), from `/proc/stat`.
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().next().expect("cpu line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let idle = v[3] + v[4];
    v.iter().take(8).sum::<u64>() - idle
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A session of the bench itself, named so that it is never counted as the daemon's.
async fn connect(url: &str) -> Client {
    let (client, connection) =
        tokio_postgres::connect(&format!("{url}?application_name=compare-bench"), NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    tokio::spawn(connection);
    client
}

fn settings(url: &str, slot: &str) -> Settings {
    let mut s = Settings::default();
    s.source.url = Some(SecretString::from(url.to_owned()));
    s.slot.name = slot.to_owned();
    s.publication.name = PUBLICATION.to_owned();
    s
}

/// CPU seconds used so far by the server processes of the daemon's sessions, as
/// (walsender, apply and side sessions).
async fn server_cpu(client: &Client, db: &str) -> (f64, f64) {
    let rows = client
        .query(
            "SELECT pid, backend_type = 'walsender' FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'leadsync'",
            &[&db],
        )
        .await
        .unwrap();
    let mut cpu = (0.0, 0.0);
    for row in rows {
        let seconds = cpu_seconds(row.get::<_, i32>(0) as u32);
        if row.get::<_, bool>(1) {
            cpu.0 += seconds;
        } else {
            cpu.1 += seconds;
        }
    }
    cpu
}

/// `pg_stat_wal`: WAL records and full-page images so far (cluster-wide).
async fn stat_wal(client: &Client) -> (f64, f64) {
    let row = client
        .query_one(
            "SELECT wal_records::float8, wal_fpi::float8 FROM pg_stat_wal",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The daemon's `leadsync_transactions_total`: target transactions committed.
async fn commit_metrics(addr: SocketAddr) -> f64 {
    let m = scrape_metrics(addr).await;
    m.get("leadsync_transactions_total").copied().unwrap_or(0.0)
}

#[derive(Default)]
struct ProbeLog {
    /// Probe number and when its commit was acknowledged.
    acks: Vec<(u64, Instant)>,
    /// The highest probe number visible in the target, and when it was first seen.
    seen: Vec<(u64, Instant)>,
}

impl ProbeLog {
    fn visible_at(&self, seq: u64) -> Option<Instant> {
        self.seen.iter().find(|(s, _)| *s >= seq).map(|(_, t)| *t)
    }
}

/// The lag probe: a writer and a reader session (see the module documentation).
struct Probe {
    log: Arc<Mutex<ProbeLog>>,
    stop_writer: Arc<Notify>,
    stop_reader: Arc<AtomicBool>,
    writer: JoinHandle<(Client, u64)>,
    reader: JoinHandle<()>,
}

const PROBE_WRITE: &str = "UPDATE contacts SET firstname = $1, updated_at = now()
                           WHERE id = md5('lagprobe')::uuid";

impl Probe {
    async fn start(url: &str, every: Duration, poll: Duration) -> Probe {
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let stop_writer = Arc::new(Notify::new());
        let stop_reader = Arc::new(AtomicBool::new(false));
        let client = connect(url).await;
        let (l, stop) = (log.clone(), stop_writer.clone());
        let writer = tokio::spawn(async move {
            let stmt = client.prepare(PROBE_WRITE).await.unwrap();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.notified() => break,
                }
                seq += 1;
                client
                    .execute(&stmt, &[&format!("probe-{seq}")])
                    .await
                    .unwrap();
                l.lock().unwrap().acks.push((seq, Instant::now()));
            }
            (client, seq)
        });
        let client = connect(url).await;
        let (l, stop) = (log.clone(), stop_reader.clone());
        let reader = tokio::spawn(async move {
            let stmt = client
                .prepare(
                    "SELECT firstname::text FROM customers WHERE cst_id = md5('lagprobe')::uuid",
                )
                .await
                .unwrap();
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Some(row) = client.query_opt(&stmt, &[]).await.unwrap() else {
                    continue;
                };
                let seq = row
                    .get::<_, Option<String>>(0)
                    .and_then(|n| n.strip_prefix("probe-")?.parse::<u64>().ok());
                if let Some(seq) = seq
                    && seq > last
                {
                    last = seq;
                    l.lock().unwrap().seen.push((seq, Instant::now()));
                }
            }
        });
        Probe {
            log,
            stop_writer,
            stop_reader,
            writer,
            reader,
        }
    }

    /// Stops the periodic writes and writes one last probe; returns its number.
    async fn last_probe(&mut self) -> u64 {
        self.stop_writer.notify_one();
        let (client, seq) = (&mut self.writer).await.unwrap();
        let seq = seq + 1;
        client
            .execute(PROBE_WRITE, &[&format!("probe-{seq}")])
            .await
            .unwrap();
        self.log.lock().unwrap().acks.push((seq, Instant::now()));
        seq
    }

    async fn wait_visible(&self, seq: u64, daemon: Option<&mut Daemon>) -> Instant {
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        let mut daemon = daemon;
        loop {
            if let Some(t) = self.log.lock().unwrap().visible_at(seq) {
                return t;
            }
            if let Some(d) = daemon.as_deref_mut()
                && let Some(status) = d.try_wait()
            {
                panic!(
                    "leadsync exited with {status} while catching up:\n{}",
                    d.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "probe {seq} not visible after {CATCH_UP_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn stop(self) -> ProbeLog {
        self.stop_reader.store(true, Ordering::Relaxed);
        self.reader.await.unwrap();
        Arc::try_unwrap(self.log)
            .ok()
            .expect("probe log still shared")
            .into_inner()
            .unwrap()
    }
}

/// Samples of the slot's distance from the WAL end (bytes) and of the daemon's
/// `leadsync_lag_seconds`, every 200 ms.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<(Vec<f64>, Vec<f64>)>,
}

impl Sampler {
    async fn start(url: &str, slot: &str, metrics: SocketAddr) -> Sampler {
        let client = connect(url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, slot) = (stop.clone(), slot.to_owned());
        let task = tokio::spawn(async move {
            let (mut bytes, mut seconds) = (Vec::new(), Vec::new());
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                let b: Option<f64> = client
                    .query_one(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::float8
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                    .unwrap()
                    .get(0);
                bytes.extend(b);
                if let Some(v) = scrape_metrics(metrics).await.get("leadsync_lag_seconds") {
                    seconds.push(*v);
                }
            }
            (bytes, seconds)
        });
        Sampler { stop, task }
    }

    async fn stop(self) -> (Vec<f64>, Vec<f64>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// What the writers' and the daemon's server sessions are doing, sampled from
/// `pg_stat_activity` every 100 ms: (who, pid, state or wait event) → samples.
struct Waits {
    stop: Arc<AtomicBool>,
    task: JoinHandle<BTreeMap<(String, i32, String), u64>>,
}

impl Waits {
    async fn start(url: &str, db: &str) -> Waits {
        let client = connect(url).await;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, db) = (stop.clone(), db.to_owned());
        let task = tokio::spawn(async move {
            let stmt = client
                .prepare(
                    "SELECT CASE WHEN backend_type = 'walsender' THEN 'walsender'
                                 WHEN application_name = 'leadsync' THEN 'apply'
                                 ELSE 'pgbench' END,
                            pid,
                            CASE WHEN state = 'active'
                                 THEN coalesce(wait_event_type || ':' || wait_event, 'CPU')
                                 ELSE coalesce(state, '?') END
                     FROM pg_stat_activity
                     WHERE datname = $1 AND application_name IN ('pgbench', 'leadsync')",
                )
                .await
                .unwrap();
            let mut counts = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                for row in client.query(&stmt, &[&db]).await.unwrap() {
                    *counts
                        .entry((row.get(0), row.get(1), row.get(2)))
                        .or_insert(0) += 1;
                }
            }
            counts
        });
        Waits { stop, task }
    }

    /// Per kind of session, its most frequent states, as shares of its samples. Of the
    /// daemon's ordinary sessions only the apply session is shown: the one seen busy most
    /// often (the others, such as the lag sampler's, are idle nearly always).
    async fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let counts = self.task.await.unwrap();
        let busy = |pid: i32| -> u64 {
            counts
                .iter()
                .filter(|((w, p, what), _)| w == "apply" && *p == pid && what != "idle")
                .map(|(_, n)| n)
                .sum()
        };
        let daemon_pids: std::collections::BTreeSet<i32> = counts
            .keys()
            .filter(|(w, _, _)| w == "apply")
            .map(|(_, p, _)| *p)
            .collect();
        let apply_pid = daemon_pids.iter().copied().max_by_key(|p| busy(*p));
        let mut parts = Vec::new();
        for who in ["pgbench", "walsender", "apply"] {
            let mut mine: BTreeMap<&str, u64> = BTreeMap::new();
            for ((w, pid, what), n) in &counts {
                if w == who && (who != "apply" || Some(*pid) == apply_pid) {
                    *mine.entry(what.as_str()).or_insert(0) += n;
                }
            }
            let total: u64 = mine.values().sum();
            if total == 0 {
                continue;
            }
            let mut mine: Vec<(&str, u64)> = mine.into_iter().collect();
            mine.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            let top: Vec<String> = mine
                .iter()
                .take(5)
                .map(|(what, n)| format!("{what} {:.0}%", 100.0 * *n as f64 / total as f64))
                .collect();
            let label = if who == "apply" {
                format!(
                    "apply session ({} other daemon sessions left out)",
                    daemon_pids.len().saturating_sub(1)
                )
            } else {
                who.to_owned()
            };
            parts.push(format!("{label}: {}", top.join(", ")));
        }
        parts.join("; ")
    }
}

/// What one run measured.
struct Outcome {
    workload: Workload,
    variant: Variant,
    rate: Option<f64>,
    pg: Pgbench,
    load_s: f64,
    wal_bytes: f64,
    /// Probe lag during the load: p50, p99, max seconds and the number of probes.
    lag: Option<(f64, f64, f64, usize)>,
    catch_up_s: Option<f64>,
    /// `leadsync_lag_seconds` samples during the load: p99, max.
    metric_lag: Option<(f64, f64)>,
    /// Slot distance from the WAL end during the load: p99, max bytes.
    slot_bytes: Option<(f64, f64)>,
    rss_kib: Option<u64>,
    /// CPU seconds from the load's start until caught up: daemon, walsender, apply sessions.
    cpu: Option<(f64, f64, f64)>,
    first_load_s: Option<f64>,
    /// Sampled session states during the load.
    waits: String,
    /// pg_stat_wal over the run: records and full-page images.
    wal_records: f64,
    wal_fpi: f64,
    /// Target transactions the daemon committed during the run (its metrics).
    target_commits: Option<f64>,
    machine_busy_cores: f64,
    load_avg: (f64, f64),
    check: String,
}

impl Outcome {
    /// Source transactions applied per second: written / (load + catch-up).
    fn applied_tps(&self) -> Option<f64> {
        self.catch_up_s
            .filter(|_| self.variant.streams())
            .map(|c| self.pg.txns as f64 / (self.load_s + c))
    }

    fn label(&self) -> String {
        match self.variant {
            Variant::NoSync => "no sync".into(),
            Variant::Guide => "guide triggers".into(),
            Variant::Leadsync => "leadsync".into(),
            Variant::Rate => format!("leadsync, -R {:.0}", self.rate.unwrap_or_default()),
        }
    }
}

struct Bench {
    dbs: Databases,
    bindir: PathBuf,
    contacts: u64,
    workspaces: i64,
    seconds: u64,
    clients: u64,
    threads: u64,
    probe_every: Duration,
    poll_every: Duration,
}

impl Bench {
    /// The legacy data, `leadsync setup` (target tables, publication, `leadsync` schema),
    /// field contexts and the probe contact; returns a description of the data.
    async fn base_template(&mut self) -> String {
        for sql in [
            format!("DROP DATABASE IF EXISTS {BASE_TEMPLATE} WITH (FORCE)"),
            format!("CREATE DATABASE {BASE_TEMPLATE}"),
        ] {
            self.dbs.admin.batch_execute(&sql).await.unwrap();
        }
        let url = self.dbs.url(BASE_TEMPLATE);
        let client = connect(&url).await;
        let started = Instant::now();
        leadsync::fixtures::load_legacy_schema(&client)
            .await
            .unwrap();
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"")
            .await
            .unwrap();
        leadsync::fixtures::generate_demo_data(&client, self.contacts)
            .await
            .expect("generate demo data");
        let shortened = leadsync::fixtures::shorten_misfits(&client).await.unwrap();
        client.execute(PROBE_CONTACT, &[]).await.unwrap();
        run_setup(&settings(&url, &format!("cmp_tpl_{}", std::process::id())))
            .await
            .expect("leadsync setup on the template");
        leadsync::fixtures::assign_demo_field_contexts(&client)
            .await
            .unwrap();
        client.batch_execute("VACUUM ANALYZE").await.unwrap();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM workspaces),
                        (SELECT count(*) FROM contact_custom_fields),
                        pg_size_pretty(pg_database_size(current_database()))",
                &[],
            )
            .await
            .unwrap();
        self.workspaces = row.get(0);
        let missing: i64 = client
            .query_one(
                "SELECT count(*) FROM generate_series(1, $1::bigint) AS w
                 WHERE NOT EXISTS (SELECT 1 FROM custom_fields f
                                   WHERE f.id = md5('field' || w || '-5')::uuid
                                     AND f.context_type = 'contact')",
                &[&self.workspaces],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            missing, 0,
            "the INSERT script's fields are not where it expects"
        );
        drop(client);
        self.dbs.terminate(BASE_TEMPLATE).await;
        format!(
            "{} contacts (+1 probe contact), {} field values, {} workspaces; {shortened} \
             contacts had values shortened to fit; template database {}; built in {:.1} s",
            self.contacts,
            row.get::<_, i64>(1),
            self.workspaces,
            row.get::<_, String>(2),
            started.elapsed().as_secs_f64()
        )
    }

    /// A clone of the base template with the target filled by the guide's mapping and the
    /// guide's triggers installed.
    async fn guide_template(&self) -> String {
        self.dbs.clone_from(BASE_TEMPLATE, GUIDE_TEMPLATE).await;
        let client = connect(&self.dbs.url(GUIDE_TEMPLATE)).await;
        let started = Instant::now();
        client
            .batch_execute(SET_BASED_SQL)
            .await
            .unwrap_or_else(|e| panic!("set_based.sql: {}", leadsync::db::error_text(&e)));
        client
            .batch_execute(GUIDE_TRIGGERS_SQL)
            .await
            .unwrap_or_else(|e| panic!("guide_triggers.sql: {}", leadsync::db::error_text(&e)));
        client.batch_execute("VACUUM ANALYZE").await.unwrap();
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM leads),
                        (SELECT count(*) FROM customer_custom_fields)",
                &[],
            )
            .await
            .unwrap();
        drop(client);
        self.dbs.terminate(GUIDE_TEMPLATE).await;
        format!(
            "guide template: {} customers, {} leads, {} customer_custom_fields filled by \
             set_based.sql, triggers installed, in {:.1} s",
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            started.elapsed().as_secs_f64()
        )
    }

    fn start_daemon(&self, url: &str, slot: &str) -> (Daemon, SocketAddr) {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let env: Vec<(String, String)> = vec![
            ("LEADSYNC_SOURCE__URL".into(), url.into()),
            ("LEADSYNC_SLOT__NAME".into(), slot.into()),
            ("LEADSYNC_PUBLICATION__NAME".into(), PUBLICATION.into()),
            ("LEADSYNC_SLOT__STATUS_INTERVAL_MS".into(), "100".into()),
            ("LEADSYNC_METRICS__LISTEN".into(), addr.to_string()),
            ("LEADSYNC_LOG__LEVEL".into(), "info".into()),
        ];
        (Daemon::start(BIN, &env), addr)
    }

    /// Waits until the daemon is streaming and the slot is acknowledged past the WAL
    /// position of the call.
    async fn wait_caught_up(&self, client: &Client, slot: &str, daemon: &mut Daemon) {
        let target: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        loop {
            let row = client
                .query_one(
                    "SELECT (SELECT confirmed_flush_lsn >= $1::text::pg_lsn
                             FROM pg_replication_slots WHERE slot_name = $2),
                            EXISTS (SELECT 1 FROM leadsync.sync_state
                                        WHERE slot_name = $2 AND phase = 'streaming')",
                    &[&target, &slot],
                )
                .await
                .unwrap();
            if row.get::<_, Option<bool>>(0) == Some(true) && row.get::<_, bool>(1) {
                return;
            }
            if let Some(status) = daemon.try_wait() {
                panic!("leadsync exited with {status}:\n{}", daemon.log());
            }
            assert!(Instant::now() < deadline, "not caught up with {target}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop_daemon(&self, client: &Client, slot: &str, mut daemon: Daemon) {
        let status = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "the daemon did not stop cleanly ({status:?}); log:\n{}",
            daemon.log()
        );
        // Its walsender may take a moment to release the slot.
        for _ in 0..200 {
            let active: bool = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .unwrap()
                .is_some_and(|r| r.get(0));
            if !active {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("slot {slot} still active 20 s after the daemon stopped");
    }

    fn pgbench_args(&self, workload: Workload, rate: Option<f64>) -> Vec<String> {
        let mut args: Vec<String> = ["-n", "-M", "prepared"].map(String::from).to_vec();
        args.extend([
            "-c".into(),
            self.clients.to_string(),
            "-j".into(),
            self.threads.to_string(),
            "-T".into(),
            self.seconds.to_string(),
        ]);
        if let Some(r) = rate {
            args.extend(["-R".into(), format!("{r:.0}")]);
        }
        args.extend([
            "-D".into(),
            format!("N={}", self.contacts),
            "-D".into(),
            format!("W={}", self.workspaces),
        ]);
        for f in workload.scripts() {
            args.extend(["-f".into(), f]);
        }
        args
    }

    async fn pgbench(&self, db: &str, workload: Workload, rate: Option<f64>) -> Pgbench {
        let out = tokio::process::Command::new(self.bindir.join("pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.dbs.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(self.pgbench_args(workload, rate))
            .arg(db)
            .env_remove("PGOPTIONS")
            .output()
            .await
            .expect("run pgbench");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pgbench failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_pgbench(&stdout)
    }

    async fn run(
        &self,
        index: usize,
        workload: Workload,
        variant: Variant,
        rate: Option<f64>,
    ) -> Outcome {
        let db = format!(
            "cmp_{index}_{}_{}",
            workload.key().to_lowercase(),
            variant.key()
        );
        let template = if variant == Variant::Guide {
            GUIDE_TEMPLATE
        } else {
            BASE_TEMPLATE
        };
        self.dbs.clone_from(template, &db).await;
        let url = self.dbs.url(&db);
        let client = connect(&url).await;
        let slot = format!("cmp_{}_{index}", std::process::id());

        let mut daemon = None;
        let mut first_load_s = None;
        if variant.streams() {
            run_setup(&settings(&url, &slot))
                .await
                .expect("leadsync setup on the clone");
            // The first load in a daemon of its own, so that the peak RSS is the stream's.
            let started = Instant::now();
            let (mut loader, _) = self.start_daemon(&url, &slot);
            self.wait_caught_up(&client, &slot, &mut loader).await;
            first_load_s = Some(started.elapsed().as_secs_f64());
            self.stop_daemon(&client, &slot, loader).await;
            let (mut d, addr) = self.start_daemon(&url, &slot);
            self.wait_caught_up(&client, &slot, &mut d).await;
            daemon = Some((d, addr));
        }
        client.batch_execute("CHECKPOINT").await.unwrap();
        if let Some((d, _)) = daemon.as_mut() {
            self.wait_caught_up(&client, &slot, d).await;
        }

        let wal_start: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let stat_wal_start = stat_wal(&client).await;
        let metrics_start = match &daemon {
            Some((_, addr)) => Some(commit_metrics(*addr).await),
            None => None,
        };
        let cpu_start = match &daemon {
            Some((d, _)) => Some((cpu_seconds(d.pid()), server_cpu(&client, &db).await)),
            None => None,
        };
        let mut probe = Probe::start(&url, self.probe_every, self.poll_every).await;
        let sampler = match &daemon {
            Some((_, addr)) => Some(Sampler::start(&url, &slot, *addr).await),
            None => None,
        };
        let waits = Waits::start(&url, &db).await;
        let (load_start, machine_start) = (loadavg(), machine_ticks());
        let started = Instant::now();
        let pg = self.pgbench(&db, workload, rate).await;
        let ended = Instant::now();
        let (load_end, machine_end) = (loadavg(), machine_ticks());
        let load_s = ended.duration_since(started).as_secs_f64();
        let waits = waits.stop().await;
        let samples = match sampler {
            Some(s) => Some(s.stop().await),
            None => None,
        };
        let last = probe.last_probe().await;
        let catch_up_s = match variant {
            Variant::NoSync => None,
            _ => {
                let seen = probe
                    .wait_visible(last, daemon.as_mut().map(|(d, _)| d))
                    .await;
                Some(seen.saturating_duration_since(ended).as_secs_f64())
            }
        };
        let log = probe.stop().await;
        let wal_bytes: f64 = client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
                &[&wal_start],
            )
            .await
            .unwrap()
            .get(0);

        let stat_wal_end = stat_wal(&client).await;
        let target_commits = match (&daemon, metrics_start) {
            (Some((_, addr)), Some(n0)) => Some(commit_metrics(*addr).await - n0),
            _ => None,
        };
        let lag = (variant != Variant::NoSync).then(|| {
            let mut lags: Vec<f64> = log
                .acks
                .iter()
                .filter(|(seq, at)| *seq < last && *at >= started && *at <= ended)
                .filter_map(|(seq, at)| {
                    log.visible_at(*seq)
                        .map(|seen| seen.saturating_duration_since(*at).as_secs_f64())
                })
                .collect();
            lags.sort_by(f64::total_cmp);
            (
                percentile(&lags, 0.50),
                percentile(&lags, 0.99),
                lags.last().copied().unwrap_or(f64::NAN),
                lags.len(),
            )
        });
        let (metric_lag, slot_bytes) = match samples {
            Some((mut bytes, mut seconds)) => {
                bytes.sort_by(f64::total_cmp);
                seconds.sort_by(f64::total_cmp);
                (
                    Some((
                        percentile(&seconds, 0.99),
                        seconds.last().copied().unwrap_or(f64::NAN),
                    )),
                    Some((
                        percentile(&bytes, 0.99),
                        bytes.last().copied().unwrap_or(f64::NAN),
                    )),
                )
            }
            None => (None, None),
        };

        let mut cpu = None;
        let mut rss_kib = None;
        if let (Some((d, _)), Some((daemon0, (wal0, apply0)))) = (&daemon, cpu_start) {
            let (wal1, apply1) = server_cpu(&client, &db).await;
            cpu = Some((cpu_seconds(d.pid()) - daemon0, wal1 - wal0, apply1 - apply0));
            rss_kib = Some(peak_rss_kib(d.pid()));
        }

        let check = self.check(&client, &url, &slot, variant).await;
        if let Some((d, _)) = daemon {
            self.stop_daemon(&client, &slot, d).await;
        }
        drop(client);
        self.dbs
            .drop_clone(&db, variant.streams().then_some(slot.as_str()))
            .await;

        let busy = machine_end - machine_start;
        Outcome {
            workload,
            variant,
            rate,
            pg,
            load_s,
            wal_bytes,
            lag,
            catch_up_s,
            metric_lag,
            slot_bytes,
            rss_kib,
            cpu,
            first_load_s,
            waits,
            wal_records: stat_wal_end.0 - stat_wal_start.0,
            wal_fpi: stat_wal_end.1 - stat_wal_start.1,
            target_commits,
            machine_busy_cores: busy as f64 / clock_ticks() / load_s,
            load_avg: (load_start, load_end),
            check,
        }
    }

    /// After a sync variant: is the target complete? For leadsync a full reconciliation
    /// against the SQL projection of the source; for the triggers, counts.
    async fn check(&self, client: &Client, url: &str, slot: &str, variant: Variant) -> String {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM contacts), (SELECT count(*) FROM customers),
                        (SELECT count(*) FROM leads),
                        (SELECT count(*) FROM customer_custom_fields)",
                &[],
            )
            .await
            .unwrap();
        let counts = format!(
            "contacts {}, customers {}, leads {}, customer_custom_fields {}",
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3)
        );
        if !variant.streams() {
            return counts;
        }
        let s = settings(url, slot);
        let rules = leadsync::project::ProductRules::new(
            &s.transform.product_rules,
            s.transform.case_insensitive,
        );
        let mut session = connect(url).await;
        let report = leadsync::reconcile::reconcile(
            &mut session,
            &leadsync::reconcile::ReconcileOptions {
                source_schema: &s.source.schema,
                target_schema: &s.target.schema,
                rules: &rules,
                except_dead_letters: false,
            },
        )
        .await
        .expect("reconcile");
        let dead: i64 = client
            .query_one("SELECT count(*) FROM leadsync.dead_letters", &[])
            .await
            .unwrap()
            .get(0);
        if report.is_clean() {
            format!(
                "{counts}; target reconciled against the SQL projection of the source: \
                 no difference; {dead} dead letters"
            )
        } else {
            eprintln!("{report}");
            let diffs: Vec<String> = report
                .tables
                .iter()
                .filter(|t| !t.is_clean())
                .map(|t| {
                    format!(
                        "{} missing {} extra {} different {}",
                        t.table, t.missing, t.extra, t.different
                    )
                })
                .collect();
            format!(
                "{counts}; **reconciliation found differences**: {}; {dead} dead letters",
                diffs.join(", ")
            )
        }
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn report(outcomes: &[Outcome]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| workload | variant | txns | writer TPS | avg latency ms | × no-sync TPS | WAL bytes/tx | lag p50 / p99 / max s | catch-up s | applied tx/s | × guide TPS | daemon peak RSS MiB | CPU s daemon / walsender / apply |"
    );
    let _ = writeln!(
        md,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    // Mean over the runs of a variant (no sync may run more than once, to bracket the others).
    let tps_of = |w: Workload, v: Variant| {
        let runs: Vec<f64> = outcomes
            .iter()
            .filter(|o| o.workload == w && o.variant == v)
            .map(|o| o.pg.tps)
            .collect();
        (!runs.is_empty()).then(|| runs.iter().sum::<f64>() / runs.len() as f64)
    };
    for o in outcomes {
        let none = tps_of(o.workload, Variant::NoSync);
        let guide = tps_of(o.workload, Variant::Guide);
        let applied = o.applied_tps();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.3} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            o.workload.label(),
            o.label(),
            o.pg.txns,
            o.pg.tps,
            o.pg.latency_ms,
            fmt_opt(none.map(|n| o.pg.tps / n), 2),
            o.wal_bytes / o.pg.txns as f64,
            o.lag.map_or("-".into(), |(p50, p99, max, _)| format!(
                "{p50:.3} / {p99:.3} / {max:.3}"
            )),
            fmt_opt(o.catch_up_s, 2),
            fmt_opt(applied, 0),
            fmt_opt(
                applied
                    .zip(guide)
                    .filter(|_| o.variant == Variant::Leadsync)
                    .map(|(a, g)| a / g),
                2
            ),
            fmt_opt(o.rss_kib.map(|k| k as f64 / 1024.0), 1),
            o.cpu
                .map_or("-".into(), |(d, w, a)| format!("{d:.1} / {w:.1} / {a:.1}")),
        );
    }
    let _ = writeln!(md);
    for o in outcomes {
        let mut parts = vec![format!(
            "load {:.1} s, failed txns {}, machine CPU busy {:.2} of 2 cores during the load, \
             load average {:.2} → {:.2}",
            o.load_s, o.pg.failed, o.machine_busy_cores, o.load_avg.0, o.load_avg.1
        )];
        if let Some(l) = o.pg.schedule_lag_ms {
            parts.push(format!("pgbench schedule lag avg {l:.3} ms"));
        }
        if let Some((_, _, _, n)) = o.lag {
            parts.push(format!("{n} probes"));
        }
        if let Some((p99, max)) = o.metric_lag {
            parts.push(format!(
                "daemon's leadsync_lag_seconds p99 {p99:.2} s, max {max:.2} s"
            ));
        }
        if let Some((p99, max)) = o.slot_bytes {
            parts.push(format!(
                "slot behind the WAL end p99 {:.2} MB, max {:.2} MB",
                p99 / 1e6,
                max / 1e6
            ));
        }
        parts.push(format!(
            "WAL {:.1} records and {:.2} full-page images per txn",
            o.wal_records / o.pg.txns as f64,
            o.wal_fpi / o.pg.txns as f64
        ));
        if let Some(n) = o.target_commits {
            parts.push(format!(
                "{n:.0} target commits ({:.1} source txns each)",
                o.pg.txns as f64 / n.max(1.0)
            ));
        }
        if let Some(f) = o.first_load_s {
            parts.push(format!("first load (before the run) {f:.1} s"));
        }
        parts.push(format!(
            "session states sampled during the load: {}",
            o.waits
        ));
        parts.push(o.check.clone());
        let _ = writeln!(
            md,
            "- {} / {}: {}",
            o.workload.label(),
            o.label(),
            parts.join("; ")
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "Goals (SPEC §7):");
    for w in [Workload::Update, Workload::Insert] {
        let none = tps_of(w, Variant::NoSync);
        let guide = tps_of(w, Variant::Guide);
        if let Some(o) = outcomes
            .iter()
            .find(|o| o.workload == w && o.variant == Variant::Leadsync)
        {
            if let Some(n) = none {
                let r = o.pg.tps / n;
                let _ = writeln!(
                    md,
                    "- {} (1) writers with leadsync running at {:.2}× no-sync TPS (goal ≥ 0.85×): {}",
                    w.label(),
                    r,
                    if r >= 0.85 { "met" } else { "missed" }
                );
            }
            if let (Some(a), Some(g)) = (o.applied_tps(), guide) {
                let r = a / g;
                let _ = writeln!(
                    md,
                    "- {} (2) leadsync applied {:.0} tx/s = {:.2}× the triggers' {:.0} TPS (goal ≥ 2×): {}",
                    w.label(),
                    a,
                    r,
                    g,
                    if r >= 2.0 { "met" } else { "missed" }
                );
            }
        }
        if let Some(o) = outcomes
            .iter()
            .find(|o| o.workload == w && o.variant == Variant::Rate)
            && let Some((_, p99, _, _)) = o.lag
        {
            let rate = o.rate.unwrap_or_default();
            let verdict = if o.pg.tps < 0.95 * rate {
                format!(
                    "not measured: the writers reached only {:.0} of the {rate:.0} TPS asked",
                    o.pg.tps
                )
            } else if p99 < 1.0 {
                "met".into()
            } else {
                "missed".into()
            };
            let _ = writeln!(
                md,
                "- {} (3) p99 lag at {rate:.0} TPS (fixed rate) {p99:.3} s (goal < 1 s): {verdict}",
                w.label(),
            );
        }
    }
    if let Some(max) = outcomes.iter().filter_map(|o| o.rss_kib).max() {
        let mib = max as f64 / 1024.0;
        let _ = writeln!(
            md,
            "- (4) highest daemon peak RSS {mib:.1} MiB (goal < 64 MiB): {}",
            if mib < 64.0 { "met" } else { "missed" }
        );
    }
    md
}

async fn run() {
    let contacts: u64 = knob_num("BENCH_CONTACTS", 100_000);
    let durable = knob("BENCH_DURABLE", "0") != "0";
    let plan = parse_plan(&knob(
        "BENCH_PLAN",
        "U:none,U:guide,U:leadsync,U:rate,U:none,I:none,I:guide,I:leadsync,I:none",
    ));
    let fraction: f64 = knob_num("BENCH_RATE_FRACTION", 0.5);
    eprintln!("binary: {BIN}");

    let options = ClusterOptions {
        durable: true,
        settings: if durable {
            Vec::new()
        } else {
            vec![("fsync".into(), "off".into())]
        },
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || TempCluster::start(&options))
        .await
        .unwrap()
        .expect("throwaway cluster");
    let admin = connect(&cluster.url("postgres")).await;
    let mut server = Vec::new();
    for name in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "wal_level",
        "shared_buffers",
        "max_wal_size",
        "checkpoint_timeout",
        "logical_decoding_work_mem",
        "autovacuum",
    ] {
        let v: String = admin
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap()
            .get(0);
        server.push(format!("{name}={v}"));
    }
    let mut bench = Bench {
        dbs: Databases {
            port: cluster.port(),
            admin,
        },
        bindir: cluster.bindir().to_owned(),
        contacts,
        workspaces: 0,
        seconds: knob_num("BENCH_SECONDS", 20),
        clients: knob_num("BENCH_CLIENTS", 4),
        threads: knob_num("BENCH_THREADS", 2),
        probe_every: Duration::from_millis(knob_num("BENCH_PROBE_MS", 100)),
        poll_every: Duration::from_millis(knob_num("BENCH_POLL_MS", 10)),
    };
    let whole = Instant::now();
    let data = bench.base_template().await;
    eprintln!("{data}");
    let commands: Vec<String> = [Workload::Update, Workload::Insert]
        .map(|w| {
            let args = bench
                .pgbench_args(w, None)
                .join(" ")
                .replace(concat!(env!("CARGO_MANIFEST_DIR"), "/"), "");
            format!(
                "{}: pgbench -h 127.0.0.1 -p <port> -U postgres {args} <clone>",
                w.label()
            )
        })
        .to_vec();
    let guide = if plan.iter().any(|(_, v)| *v == Variant::Guide) {
        let g = bench.guide_template().await;
        eprintln!("{g}");
        g
    } else {
        String::new()
    };

    let mut outcomes: Vec<Outcome> = Vec::new();
    for (i, (workload, variant)) in plan.iter().copied().enumerate() {
        let rate = (variant == Variant::Rate).then(|| {
            let nones: Vec<f64> = outcomes
                .iter()
                .filter(|o| o.workload == workload && o.variant == Variant::NoSync)
                .map(|o| o.pg.tps)
                .collect();
            assert!(
                !nones.is_empty(),
                "{}:rate needs a {}:none run before it",
                workload.key(),
                workload.key()
            );
            (nones.iter().sum::<f64>() / nones.len() as f64 * fraction).max(1.0)
        });
        eprintln!(
            "-- run {i}: {} / {}{}",
            workload.label(),
            variant.key(),
            rate.map_or(String::new(), |r| format!(" at {r:.0} TPS"))
        );
        let o = bench.run(i, workload, variant, rate).await;
        eprintln!(
            "   {} txns, {:.0} TPS, latency {:.3} ms, WAL {:.0} B/tx, lag {:?}, catch-up {:?}, applied {:?}",
            o.pg.txns,
            o.pg.tps,
            o.pg.latency_ms,
            o.wal_bytes / o.pg.txns as f64,
            o.lag,
            o.catch_up_s,
            o.applied_tps()
        );
        outcomes.push(o);
    }
    let total = whole.elapsed().as_secs_f64();
    drop(bench);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();

    println!();
    println!("Server: {}", server.join(", "));
    println!("Data: {data}");
    if !guide.is_empty() {
        println!("{guide}");
    }
    for c in &commands {
        println!("{c}");
    }
    println!("Whole bench: {total:.0} s");
    println!();
    print!("{}", report(&outcomes));
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
