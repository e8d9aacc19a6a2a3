//! One source transaction of a million rows streams through `leadsync run` in bounded
//! memory (SPEC §5 "Bounded memory"): the daemon's peak RSS stays far below what holding
//! the transaction would take, it does not grow with the size of the transaction (a
//! 100,000-row transaction first gives the reference), and the target ends up with every
//! row.
//!
//! Heavy: about 2 minutes in `cargo test --release`, about 3 in a debug build (the daemon
//! is then a debug build too).

use std::time::{Duration, Instant};

use leadsync::cmd::setup::run_setup;
use leadsync::testing::{Daemon, TestDb, daemon_env};

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
const ROWS: i64 = 1_000_000;
/// The reference transaction: large enough to reach the daemon's steady chunked peak.
const SMALL_ROWS: i64 = 100_000;
/// Peak RSS allowed: SPEC §7's 64 MiB. Measured: 26 MiB in a release build, 34 MiB in a
/// debug build. Holding the transaction would take several hundred MiB (a million decoded
/// contacts of ~300 bytes each before any overhead), so any per-transaction buffering
/// crosses the bound by far.
const PEAK_RSS_BOUND_KIB: u64 = 64 * 1024;
/// How much more the peak may be after the 1M-row transaction than after the 100k-row one.
/// A daemon that streams in chunks peaked within ~1 MiB of the same value for 50,000 and
/// 1,000,000 rows; keeping even 32 bytes per row of the transaction adds ~30 MiB.
const PEAK_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Inserts contacts `first..first + rows` in one transaction. Every projection rule gets
/// work: leads for 70%, products from tags, appointments for 30%, NULLs and empty strings.
async fn insert_contacts(client: &tokio_postgres::Client, first: i64, rows: i64) {
    client
        .execute(
            "INSERT INTO contacts (workspace_id, firstname, lastname, email, phone_number,
                                   st_address, city, state, zip, lead_status, lead_source, tags,
                                   appointment_status_id, appointment_result_id,
                                   appointment_date, priority, created_at, updated_at, created_by)
             SELECT ws[1 + g % array_length(ws, 1)],
                    'First' || g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'Last' || g END,
                    'bulk' || g || '@example.com', '555-' || lpad((g % 10000)::text, 4, '0'),
                    g || ' Main St', 'Austin', 'TX', lpad((g % 100000)::text, 5, '0'),
                    CASE WHEN g % 10 < 3 THEN NULL WHEN g % 100 = 3 THEN ''
                         ELSE (ARRAY['new','contacted','qualified','won'])[1 + g % 4] END,
                    CASE WHEN g % 7 = 0 THEN NULL ELSE 'web' END,
                    (ARRAY['solar','hvac,roofing','roofing',NULL,'vip','Solar'])[1 + g % 6],
                    g % 8, g % 6,
                    CASE WHEN g % 10 < 7 THEN NULL
                         ELSE TIMESTAMP '2024-01-01 09:00' + g * INTERVAL '1 minute' END,
                    CASE WHEN g % 5 = 0 THEN NULL ELSE 1 + g % 5 END,
                    TIMESTAMP '2024-01-01' + g * INTERVAL '1 second',
                    TIMESTAMP '2024-02-01' + g * INTERVAL '1 second',
                    NULL
             FROM generate_series($1::bigint, $1::bigint + $2::bigint - 1) AS g,
                  (SELECT array_agg(id ORDER BY id) AS ws FROM workspaces) AS w",
            &[&first, &rows],
        )
        .await
        .unwrap();
}

async fn owned_customers(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM customers WHERE migrated_from_contact_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_million_row_transaction_streams_in_bounded_memory() {
    let db = TestDb::spawn().await;
    let client = db.client().await;
    // A few generated contacts give the workspaces and users the bulk inserts refer to.
    leadsync::fixtures::generate_demo_data(&client, 100)
        .await
        .unwrap();
    run_setup(&db.settings()).await.unwrap();
    let daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(Duration::from_secs(60), &|| daemon.log())
        .await;
    let (rest_peak, _) = memory_kib(daemon.pid());

    insert_contacts(&client, 1, SMALL_ROWS).await;
    db.wait_caught_up(Duration::from_secs(300), &|| daemon.log())
        .await;
    let (small_peak, _) = memory_kib(daemon.pid());

    let before = owned_customers(&client).await;
    let started = Instant::now();
    insert_contacts(&client, SMALL_ROWS + 1, ROWS).await;
    let inserted = started.elapsed();
    let commit = Instant::now();
    db.wait_caught_up(Duration::from_secs(900), &|| daemon.log())
        .await;
    let applied = commit.elapsed();
    let (peak, rss) = memory_kib(daemon.pid());

    let after = owned_customers(&client).await;
    assert_eq!(after - before, ROWS, "customers added by the transaction");
    let checking = Instant::now();
    db.assert_projection(&db.settings()).await;
    let checked = checking.elapsed();

    eprintln!(
        "1M-row transaction: insert+commit {:.1} s; commit -> caught up {:.1} s ({:.0} rows/s); \
         daemon VmHWM {rest_peak} KiB at rest, {small_peak} KiB after {SMALL_ROWS} rows, \
         {peak} KiB after {ROWS} rows (VmRSS now {rss} KiB); full projection check {:.1} s",
        inserted.as_secs_f64(),
        applied.as_secs_f64(),
        ROWS as f64 / applied.as_secs_f64(),
        checked.as_secs_f64()
    );
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "the daemon's peak RSS was {peak} KiB, over the {PEAK_RSS_BOUND_KIB} KiB bound"
    );
    assert!(
        peak.saturating_sub(small_peak) < PEAK_GROWTH_BOUND_KIB,
        "the daemon's peak RSS grew with the transaction: {small_peak} KiB after {SMALL_ROWS} \
         rows, {peak} KiB after {ROWS}"
    );
}
