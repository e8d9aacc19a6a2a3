//! First load of the target tables, three ways, side by side on one throwaway PostgreSQL 15
//! cluster (`fsync`, `synchronous_commit` and `full_page_writes` off; see `BENCHMARKS.md`,
//! section "First load (backfill)"):
//!
//! - (a) the guide's Phase 1 and Phase 2 `DO` blocks as written (`benches/sql/guide_do_blocks.sql`);
//! - (b) the same mapping as set-based SQL, one `INSERT … SELECT` per table
//!   (`benches/sql/set_based.sql`);
//! - (c) `leadsync run`'s first load (the release binary), from the process start until
//!   `leadsync.sync_state.phase = 'streaming'`.
//!
//! The data set is generated once per size into a template database; every variant runs on
//! a fresh `CREATE DATABASE … TEMPLATE` clone followed by a `CHECKPOINT`, in the order
//! (b), (a), (c), (b).
//!
//! ```text
//! cargo build --release && BENCH_CONTACTS=100000,1000000 \
//!     cargo bench --features test-utils --bench backfill
//! ```
//!
//! Knobs (deliberately not `LEADSYNC_*`: those are read as leadsync settings):
//! - `BENCH_CONTACTS`: comma-separated sizes (default `100000`);
//! - `BENCH_VARIANTS`: the run order (default `b,a,c,b`); `BENCH_VARIANTS_LARGE` the order
//!   for sizes above 100,000 (default the same);
//! - `BENCH_LIMIT_S`: per-variant time limit in seconds for sizes above 100,000 (default
//!   600); a variant over it is cancelled (`pg_cancel_backend`, or SIGTERM for the daemon)
//!   and reported as "> limit".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use leadsync::cluster::{ClusterOptions, TempCluster};
use leadsync::cmd::setup::run_setup;
use leadsync::config::Settings;
use leadsync::testing::{Daemon, Databases};
use secrecy::SecretString;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const GUIDE_SQL: &str = include_str!("sql/guide_do_blocks.sql");
const SET_BASED_SQL: &str = include_str!("sql/set_based.sql");
const TARGET_TABLES: [&str; 6] = [
    "customers",
    "leads",
    "appointments",
    "customer_custom_fields",
    "lead_custom_fields",
    "appointment_custom_fields",
];
/// Publication shared by the template and its clones (it is copied with the database).
const PUBLICATION: &str = "bench_backfill_pub";

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

async fn connect(url: &str) -> Client {
    leadsync::db::connect(&SecretString::from(url.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn settings(url: &str, slot: &str) -> Settings {
    let mut s = Settings::default();
    s.source.url = Some(SecretString::from(url.to_owned()));
    s.slot.name = slot.to_owned();
    s.publication.name = PUBLICATION.to_owned();
    s
}

/// Splits a bench SQL file at its `-- step: name` markers.
fn steps(sql: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in sql.lines() {
        if let Some(name) = line.trim().strip_prefix("-- step:") {
            out.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// What one variant measured.
struct Run {
    label: String,
    seconds: f64,
    timed_out: bool,
    counts: BTreeMap<&'static str, i64>,
    /// Per step (SQL) or per phase (daemon) seconds.
    detail: Vec<(String, f64)>,
    /// The daemon's own `seconds=` of "first load committed", its peak RSS, dead letters.
    daemon_seconds: Option<f64>,
    peak_rss_kib: Option<u64>,
    dead_letters: Option<i64>,
}

impl Run {
    fn rows(&self) -> i64 {
        self.counts.values().sum()
    }
}

/// `VmHWM` of a process in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `key=value` fields of the first log line containing `message` (text log format).
fn log_fields(log: &str, message: &str) -> Vec<BTreeMap<String, String>> {
    log.lines()
        .filter(|l| l.contains(message))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|t| t.split_once('='))
                .map(|(k, v)| {
                    // Strip ANSI colour codes, should the daemon use them.
                    let clean = |s: &str| {
                        let mut out = String::new();
                        let mut skip = false;
                        for ch in s.chars() {
                            if ch == '\u{1b}' {
                                skip = true;
                            } else if skip {
                                if ch == 'm' {
                                    skip = false;
                                }
                            } else {
                                out.push(ch);
                            }
                        }
                        out
                    };
                    (clean(k), clean(v).trim_matches('"').to_owned())
                })
                .collect()
        })
        .collect()
}

async fn count_targets(client: &Client) -> BTreeMap<&'static str, i64> {
    let mut counts = BTreeMap::new();
    for t in TARGET_TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .expect("count")
            .get(0);
        counts.insert(t, n);
    }
    counts
}

/// The per-table counts of leadsync's projection (SPEC §3), from the source rows.
async fn projected_counts(client: &Client) -> BTreeMap<&'static str, i64> {
    let row = client
        .query_one(
            "WITH c AS (SELECT id, lead_status IS NOT NULL AS lead,
                               lead_status IS NOT NULL AND appointment_date IS NOT NULL AS appt
                        FROM contacts),
                  v AS (SELECT COALESCE(f.context_type, 'contact') AS ctx, c.lead, c.appt
                        FROM contact_custom_fields fv
                        JOIN c ON c.id = fv.contact_id
                        LEFT JOIN custom_fields f ON f.id = fv.field_id)
             SELECT (SELECT count(*) FROM c),
                    (SELECT count(*) FILTER (WHERE lead) FROM c),
                    (SELECT count(*) FILTER (WHERE appt) FROM c),
                    (SELECT count(*) FILTER (WHERE ctx = 'contact') FROM v),
                    (SELECT count(*) FILTER (WHERE ctx = 'lead' AND lead) FROM v),
                    (SELECT count(*) FILTER (WHERE ctx = 'appointment' AND appt) FROM v)",
            &[],
        )
        .await
        .expect("projected counts");
    TARGET_TABLES
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, row.get::<_, i64>(i)))
        .collect()
}

struct Bench {
    dbs: Databases,
}

impl Bench {
    /// Builds the template database for `n` contacts; returns its name and a description of
    /// the data.
    async fn template(&self, n: u64) -> (String, String) {
        let name = format!("bench_tpl_{n}");
        self.dbs
            .admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop old template");
        self.dbs
            .admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create template");
        let url = self.dbs.url(&name);
        let client = connect(&url).await;
        let started = Instant::now();
        leadsync::fixtures::load_legacy_schema(&client)
            .await
            .unwrap();
        leadsync::fixtures::generate_demo_data(&client, n)
            .await
            .expect("generate demo data");
        let generated = started.elapsed().as_secs_f64();
        let shortened = leadsync::fixtures::shorten_misfits(&client).await.unwrap();
        run_setup(&settings(&url, &format!("bench_tpl_{n}")))
            .await
            .expect("leadsync setup on the template");
        leadsync::fixtures::assign_demo_field_contexts(&client)
            .await
            .unwrap();
        client.batch_execute("VACUUM ANALYZE").await.unwrap();
        let shape = client
            .query_one(
                "SELECT (SELECT count(*) FROM contacts),
                        (SELECT count(*) FROM contacts WHERE lead_status IS NOT NULL),
                        (SELECT count(*) FROM contacts WHERE appointment_date IS NOT NULL),
                        (SELECT count(*) FROM contacts
                          WHERE appointment_date IS NOT NULL AND lead_status IS NOT NULL),
                        (SELECT count(*) FROM contact_custom_fields),
                        (SELECT count(*) FROM custom_fields),
                        (SELECT string_agg(ctx || ' ' || n, ', ' ORDER BY ctx) FROM
                           (SELECT context_type AS ctx, count(*) AS n FROM custom_fields
                            GROUP BY 1) x),
                        (SELECT count(*) FROM workspaces),
                        pg_size_pretty(pg_database_size(current_database()))",
                &[],
            )
            .await
            .unwrap();
        let desc = format!(
            "{} contacts ({} with lead_status, {} with appointment_date, {} with both), \
             {} field values over {} field definitions ({}), {} workspaces; {} contacts had \
             values shortened to fit; template database {}; generated in {:.1} s, template \
             ready after {:.1} s",
            shape.get::<_, i64>(0),
            shape.get::<_, i64>(1),
            shape.get::<_, i64>(2),
            shape.get::<_, i64>(3),
            shape.get::<_, i64>(4),
            shape.get::<_, i64>(5),
            shape.get::<_, String>(6),
            shape.get::<_, i64>(7),
            shortened,
            shape.get::<_, String>(8),
            generated,
            started.elapsed().as_secs_f64(),
        );
        drop(client);
        self.dbs.terminate(&name).await;
        (name, desc)
    }

    /// Runs a SQL variant step by step, cancelling it after `limit`.
    async fn sql_variant(&self, db: &str, label: &str, sql: &str, limit: Duration) -> Run {
        let client = connect(&self.dbs.url(db)).await;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let started = Instant::now();
        let mut detail = Vec::new();
        let mut timed_out = false;
        for (name, body) in steps(sql) {
            let step = Instant::now();
            let left = limit.saturating_sub(started.elapsed());
            let work = client.batch_execute(&body);
            tokio::pin!(work);
            tokio::select! {
                r = &mut work => r.unwrap_or_else(|e| panic!("{label} step {name}: {}",
                    leadsync::db::error_text(&e))),
                _ = tokio::time::sleep(left) => {
                    self.dbs.admin
                        .execute("SELECT pg_cancel_backend($1)", &[&pid])
                        .await
                        .unwrap();
                    let r = work.await;
                    eprintln!("  {label} step {name} cancelled after the limit: {r:?}");
                    timed_out = true;
                }
            }
            detail.push((name.clone(), step.elapsed().as_secs_f64()));
            eprintln!(
                "  {label} step {name}: {:.2} s",
                step.elapsed().as_secs_f64()
            );
            if timed_out {
                break;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let counts = count_targets(&client).await;
        Run {
            label: label.to_owned(),
            seconds,
            timed_out,
            counts,
            detail,
            daemon_seconds: None,
            peak_rss_kib: None,
            dead_letters: None,
        }
    }

    /// leadsync's first load: `leadsync run` from its start until the slot is streaming.
    async fn daemon_variant(&self, db: &str, slot: &str, limit: Duration) -> Run {
        let url = self.dbs.url(db);
        // The origin is per cluster: setup creates the one named after this slot.
        run_setup(&settings(&url, slot))
            .await
            .expect("leadsync setup on the clone");
        let client = connect(&url).await;
        let env: Vec<(String, String)> = vec![
            ("LEADSYNC_SOURCE__URL".into(), url.clone()),
            ("LEADSYNC_SLOT__NAME".into(), slot.into()),
            ("LEADSYNC_PUBLICATION__NAME".into(), PUBLICATION.into()),
            ("LEADSYNC_METRICS__LISTEN".into(), "127.0.0.1:0".into()),
            ("LEADSYNC_LOG".into(), "info".into()),
        ];
        let started = Instant::now();
        let mut daemon = Daemon::start(BIN, &env);
        let mut timed_out = false;
        loop {
            let streaming: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM leadsync.sync_state
                                    WHERE slot_name = $1 AND phase = 'streaming')",
                    &[&slot],
                )
                .await
                .unwrap()
                .get(0);
            if streaming {
                break;
            }
            if let Some(status) = daemon.try_wait() {
                panic!(
                    "leadsync exited with {status} during the first load:\n{}",
                    daemon.log()
                );
            }
            if started.elapsed() > limit {
                timed_out = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let peak = peak_rss_kib(daemon.pid());
        let status = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(60));
        let log = daemon.log();
        if !status.is_some_and(|s| s.success()) {
            eprintln!("!!! leadsync did not stop cleanly after SIGTERM ({status:?})");
        }
        let mut detail = Vec::new();
        let mut previous = 0.0;
        for f in log_fields(&log, "first load: table copied") {
            let at: f64 = f.get("seconds").and_then(|s| s.parse().ok()).unwrap_or(0.0);
            let table = f.get("table").cloned().unwrap_or_default();
            // The first pass's time also holds copying leadsync's state and setting the
            // indexes and constraints aside.
            let what = if previous == 0.0 {
                "state copy + set aside + copy"
            } else {
                "copy"
            };
            detail.push((format!("{what} {table}"), at - previous));
            previous = at;
        }
        for f in log_fields(&log, "indexes and constraints rebuilt") {
            if let Some(s) = f.get("seconds").and_then(|s| s.parse().ok()) {
                detail.push(("rebuild indexes+FKs, ANALYZE".into(), s));
            }
        }
        for f in log_fields(&log, "added back and validated") {
            if let Some(s) = f.get("seconds").and_then(|s| s.parse().ok()) {
                detail.push(("add back + validate FKs into legacy tables".into(), s));
            }
        }
        let committed = log_fields(&log, "first load committed");
        let daemon_seconds = committed
            .first()
            .and_then(|f| f.get("seconds"))
            .and_then(|s| s.parse().ok());
        if daemon_seconds.is_none() && !timed_out {
            eprintln!("!!! no \"first load committed\" line in the daemon's log:\n{log}");
        }
        if std::env::var("BENCH_SHOW_LOG").is_ok() {
            eprintln!("{log}");
        }
        let dead: i64 = client
            .query_one("SELECT count(*) FROM leadsync.dead_letters", &[])
            .await
            .unwrap()
            .get(0);
        let counts = count_targets(&client).await;
        Run {
            label: "(c) leadsync first load".into(),
            seconds,
            timed_out,
            counts,
            detail,
            daemon_seconds,
            peak_rss_kib: peak,
            dead_letters: Some(dead),
        }
    }
}

fn fmt_secs(r: &Run, limit: Duration) -> String {
    if r.timed_out {
        format!("> {} (cancelled)", limit.as_secs())
    } else {
        format!("{:.2}", r.seconds)
    }
}

async fn one_size(bench: &Bench, n: u64, order: &[&str], limit: Duration) -> String {
    let started = Instant::now();
    eprintln!("== N = {n}: building the template");
    let (template, shape) = bench.template(n).await;
    eprintln!("   {shape}");
    let mut runs: Vec<Run> = Vec::new();
    let mut projected = None;
    for (i, v) in order.iter().enumerate() {
        let db = format!("bench_{n}_{i}_{v}");
        bench.dbs.clone_from(&template, &db).await;
        eprintln!("-- N = {n}, variant ({v}) on {db}");
        let run = match *v {
            "a" => {
                bench
                    .sql_variant(&db, "(a) guide DO blocks", GUIDE_SQL, limit)
                    .await
            }
            "b" => {
                let k = runs.iter().filter(|r| r.label.starts_with("(b)")).count() + 1;
                bench
                    .sql_variant(
                        &db,
                        &format!("(b) set-based SQL #{k}"),
                        SET_BASED_SQL,
                        limit,
                    )
                    .await
            }
            "c" => {
                let slot = format!("bench_slot_{n}_{i}");
                let run = bench.daemon_variant(&db, &slot, limit).await;
                if projected.is_none() {
                    projected = Some(projected_counts(&connect(&bench.dbs.url(&db)).await).await);
                }
                bench.dbs.drop_clone(&db, Some(&slot)).await;
                eprintln!("   {:.2} s, {:?}", run.seconds, run.counts);
                runs.push(run);
                continue;
            }
            other => panic!("unknown variant {other}"),
        };
        eprintln!("   {:.2} s, {:?}", run.seconds, run.counts);
        bench.dbs.drop_clone(&db, None).await;
        runs.push(run);
    }
    let total = started.elapsed().as_secs_f64();

    let bs: Vec<&Run> = runs
        .iter()
        .filter(|r| r.label.starts_with("(b)") && !r.timed_out)
        .collect();
    let b_mean =
        (!bs.is_empty()).then(|| bs.iter().map(|r| r.seconds).sum::<f64>() / bs.len() as f64);

    let mut md = String::new();
    let _ = writeln!(md, "### N = {n} contacts\n");
    let _ = writeln!(md, "Data: {shape}.\n");
    let _ = writeln!(
        md,
        "| variant | wall s | rows written | rows/s | × (b) mean | customers | leads | appointments | customer_cf | lead_cf | appointment_cf |"
    );
    let _ = writeln!(
        md,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let row = |md: &mut String,
               label: &str,
               secs: String,
               rows: i64,
               rate: String,
               ratio: String,
               c: &BTreeMap<&str, i64>| {
        let _ = writeln!(
            md,
            "| {label} | {secs} | {rows} | {rate} | {ratio} | {} | {} | {} | {} | {} | {} |",
            c["customers"],
            c["leads"],
            c["appointments"],
            c["customer_custom_fields"],
            c["lead_custom_fields"],
            c["appointment_custom_fields"]
        );
    };
    for r in &runs {
        let ratio = match (b_mean, r.timed_out) {
            (Some(b), false) => format!("{:.2}×", r.seconds / b),
            (Some(b), true) => format!("> {:.1}×", r.seconds / b),
            _ => "-".into(),
        };
        let rate = if r.timed_out {
            "-".into()
        } else {
            format!("{:.0}", r.rows() as f64 / r.seconds)
        };
        row(
            &mut md,
            &r.label,
            fmt_secs(r, limit),
            r.rows(),
            rate,
            ratio,
            &r.counts,
        );
    }
    if let (Some(b), Some(first)) = (b_mean, bs.first()) {
        let _ = writeln!(
            md,
            "| **(b) mean of {} runs** | **{:.2}** | {} | {:.0} | 1.00× | | | | | | |",
            bs.len(),
            b,
            first.rows(),
            first.rows() as f64 / b
        );
    }
    let _ = writeln!(md);
    for r in &runs {
        let parts: Vec<String> = r
            .detail
            .iter()
            .map(|(k, s)| format!("{k} {s:.2}"))
            .collect();
        let mut extra = String::new();
        if let Some(s) = r.daemon_seconds {
            let _ = write!(
                extra,
                "; the daemon's own `first load committed seconds={s:.2}`"
            );
        }
        if let Some(k) = r.peak_rss_kib {
            let _ = write!(extra, "; peak RSS (VmHWM) {:.1} MiB", k as f64 / 1024.0);
        }
        if let Some(d) = r.dead_letters {
            let _ = write!(extra, "; dead letters {d}");
        }
        let _ = writeln!(md, "- {} steps (s): {}{extra}", r.label, parts.join(", "));
    }

    // Correctness of (c), cheaply: the same customers, leads and appointments as (b); the
    // custom-field values routed by context as SPEC §3 says (the guide's mapping puts every
    // value into customer_custom_fields, whatever its context).
    if let (Some(c), Some(b)) = (
        runs.iter()
            .find(|r| r.label.starts_with("(c)") && !r.timed_out),
        bs.first(),
    ) {
        let mut problems = Vec::new();
        for t in ["customers", "leads", "appointments"] {
            if c.counts[t] != b.counts[t] {
                problems.push(format!(
                    "{t}: leadsync {} vs set-based {}",
                    c.counts[t], b.counts[t]
                ));
            }
        }
        if let Some(p) = &projected {
            for t in TARGET_TABLES {
                if c.counts[t] != p[t] {
                    problems.push(format!(
                        "{t}: leadsync {} vs SPEC §3 projection of the source {}",
                        c.counts[t], p[t]
                    ));
                }
            }
            let routed = p["customer_custom_fields"]
                + p["lead_custom_fields"]
                + p["appointment_custom_fields"];
            let _ = writeln!(
                md,
                "- Custom-field values: the guide's mapping (a, b) copies all {} values into \
                 customer_custom_fields; leadsync routes them by `custom_fields.context_type` \
                 (SPEC §3): {} contact + {} lead + {} appointment = {} rows, and {} values of \
                 lead/appointment fields whose contact has no lead/appointment are not projected.",
                b.counts["customer_custom_fields"],
                p["customer_custom_fields"],
                p["lead_custom_fields"],
                p["appointment_custom_fields"],
                routed,
                b.counts["customer_custom_fields"] - routed
            );
        }
        if c.dead_letters.unwrap_or(0) != 0 {
            problems.push(format!("{} dead letters", c.dead_letters.unwrap_or(0)));
        }
        if problems.is_empty() {
            let _ = writeln!(
                md,
                "- Check of (c): customers, leads and appointments counts equal (b)'s; every \
                 target table's count equals the SPEC §3 projection of the source; 0 dead letters."
            );
        } else {
            eprintln!("\n!!!!!!!! MISMATCH in leadsync's first load (N = {n}):");
            for p in &problems {
                eprintln!("!!!!!!!!   {p}");
            }
            let _ = writeln!(md, "- **MISMATCH in (c)**: {}", problems.join("; "));
        }
    }
    let _ = writeln!(md, "- Whole size (template + all variants): {total:.0} s.");
    let _ = writeln!(md);
    let _ = bench
        .dbs
        .admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {template} WITH (FORCE)"))
        .await;
    md
}

async fn run(port: u16) {
    let sizes: Vec<u64> = knob("BENCH_CONTACTS", "100000")
        .split(',')
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .expect("BENCH_CONTACTS: numbers")
        })
        .collect();
    let order_small = knob("BENCH_VARIANTS", "b,a,c,b");
    let order_large = knob("BENCH_VARIANTS_LARGE", &order_small);
    let limit_large = Duration::from_secs(knob("BENCH_LIMIT_S", "600").parse().unwrap());
    let admin = connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
    let bench = Bench {
        dbs: Databases { port, admin },
    };

    let mut server = String::new();
    let version: String = bench
        .dbs
        .admin
        .query_one("SHOW server_version", &[])
        .await
        .unwrap()
        .get(0);
    let _ = write!(server, "PostgreSQL {version}");
    for name in [
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "work_mem",
        "maintenance_work_mem",
        "max_wal_size",
        "max_parallel_maintenance_workers",
    ] {
        let v: String = bench
            .dbs
            .admin
            .query_one(&format!("SHOW {name}"), &[])
            .await
            .unwrap()
            .get(0);
        let _ = write!(server, ", {name}={v}");
    }
    eprintln!("server: {server}\nbinary: {BIN}");

    let mut out = format!("Server: {server}.\n\n");
    for n in sizes {
        let (order, limit) = if n > 100_000 {
            (&order_large, limit_large)
        } else {
            (&order_small, Duration::from_secs(24 * 3600))
        };
        let order: Vec<&str> = order.split(',').map(str::trim).collect();
        let md = one_size(&bench, n, &order, limit).await;
        println!("\n{md}");
        out.push_str(&md);
        // Each size's figures are kept even if a later size fails.
        let _ = std::fs::write(
            std::env::temp_dir().join("leadsync-bench-backfill.md"),
            &out,
        );
    }
    eprintln!(
        "(markdown also written to {})",
        std::env::temp_dir()
            .join("leadsync-bench-backfill.md")
            .display()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a harness-less bench has no options of its own.
    let cluster = TempCluster::start(&ClusterOptions::default())
        .unwrap_or_else(|e| panic!("cannot start the bench cluster: {e}"));
    let port = cluster.port();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run(port));
    drop(cluster);
}
