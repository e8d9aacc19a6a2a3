//! Resilience of `leadsync run` under a live write workload: SIGKILL at random moments (some
//! of them provably inside an apply transaction), PostgreSQL crashing or stopping under the
//! daemon, and SIGTERM. After each, the target must equal the projection of the source, every
//! contact that ever committed must have exactly one customer row (live or marked deleted;
//! rows the target rejects wait in the dead letters instead), and nothing may be there twice.
//!
//! The random choices come from a seeded xorshift generator; the seed is printed, and
//! `LEADSYNC_TEST_SEED` replays the same sequence of choices (the timing still varies).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadsync::cluster::{ClusterOptions, TempCluster};
use leadsync::cmd::setup::run_setup;
use leadsync::testing::{Daemon, TestDb, daemon_env};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_leadsync");
/// Replaying a backlog after many kills takes a while in a debug build.
const CATCH_UP: Duration = Duration::from_secs(300);

/// xorshift64: deterministic for a seed, good enough to pick operations and delays.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn seed() -> u64 {
    let seed = std::env::var("LEADSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("LEADSYNC_TEST_SEED={seed}");
    seed
}

/// A session of the test itself. Its own `application_name` keeps it apart from the
/// daemon's sessions (which are all `leadsync`) in `pg_stat_activity`.
async fn connect(db: &TestDb, application: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(
        &format!("{}?application_name={application}", db.url()),
        NoTls,
    )
    .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A database with `contacts` generated contacts, set up, the demo field contexts assigned.
async fn prepare(db: &TestDb, contacts: u64) {
    let client = connect(db, "crash-test").await.unwrap();
    leadsync::fixtures::generate_demo_data(&client, contacts)
        .await
        .unwrap();
    run_setup(&db.settings()).await.unwrap();
    leadsync::fixtures::assign_demo_field_contexts(&client)
        .await
        .unwrap();
}

/// Contact ids the workload created: `attempted` before the commit, `committed` once the
/// commit returned. A commit whose answer was lost (the server went down) is only attempted.
#[derive(Default)]
struct Ledger {
    attempted: Mutex<HashSet<Uuid>>,
    committed: Mutex<HashSet<Uuid>>,
    /// Every id the workload may touch: the generated contacts and the created ones.
    known: Mutex<Vec<Uuid>>,
}

/// What the workload writes against: the workspaces and their field definitions.
struct Catalog {
    /// (workspace, its custom fields)
    workspaces: Vec<(Uuid, Vec<Uuid>)>,
}

async fn catalog(client: &Client) -> Catalog {
    let rows = client
        .query(
            "SELECT workspace_id, array_agg(id ORDER BY name) FROM custom_fields
             GROUP BY workspace_id ORDER BY workspace_id",
            &[],
        )
        .await
        .unwrap();
    Catalog {
        workspaces: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    }
}

/// The mixed write workload: a few connections committing small transactions as fast as a
/// short random pause allows, reconnecting whenever the server goes away.
struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    ledger: Arc<Ledger>,
    committed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Workload {
    async fn start(db: &TestDb, workers: usize, rng: &mut Rng) -> Workload {
        let client = connect(db, "crash-test").await.unwrap();
        let catalog = Arc::new(catalog(&client).await);
        let ids: Vec<Uuid> = client
            .query("SELECT id FROM contacts ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let ledger = Arc::new(Ledger::default());
        *ledger.known.lock().unwrap() = ids;
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let url = format!("{}?application_name=crash-workload", db.url());
        let tasks = (0..workers)
            .map(|_| {
                let worker = Worker {
                    url: url.clone(),
                    catalog: catalog.clone(),
                    ledger: ledger.clone(),
                    rng: Rng::new(rng.next()),
                };
                let (stop, committed, failed) = (stop.clone(), committed.clone(), failed.clone());
                tokio::spawn(worker.run(stop, committed, failed))
            })
            .collect();
        Workload {
            stop,
            tasks,
            ledger,
            committed,
            failed,
        }
    }

    async fn finish(self) -> Arc<Ledger> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        eprintln!(
            "workload: {} transactions committed, {} failed",
            self.committed.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst)
        );
        self.ledger
    }
}

struct Worker {
    url: String,
    catalog: Arc<Catalog>,
    ledger: Arc<Ledger>,
    rng: Rng,
}

const STATUSES: [Option<&str>; 7] = [
    None,
    Some("new"),
    Some("contacted"),
    Some("qualified"),
    Some("won"),
    Some("lost"),
    Some(""),
];
const TAGS: [Option<&str>; 6] = [
    None,
    Some("solar"),
    Some("hvac,roofing"),
    Some("roofing"),
    Some("vip"),
    Some("Solar"),
];

impl Worker {
    async fn run(
        mut self,
        stop: Arc<AtomicBool>,
        committed: Arc<AtomicU64>,
        failed: Arc<AtomicU64>,
    ) {
        let mut client: Option<Client> = None;
        while !stop.load(Ordering::SeqCst) {
            if client.as_ref().is_none_or(Client::is_closed) {
                match tokio_postgres::connect(&self.url, NoTls).await {
                    Ok((c, connection)) => {
                        tokio::spawn(connection);
                        client = Some(c);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let c = client.as_mut().expect("connected");
            // Errors (a deadlock with a bulk transaction, a lost connection) only mean the
            // source did not change; the daemon has to follow whatever did commit.
            match self.one(c).await {
                Ok(()) => committed.fetch_add(1, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
            let pause = self.rng.between(2, 15);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn some_contact(&mut self) -> Uuid {
        let known = self.ledger.known.lock().unwrap();
        *self.rng.pick(&known)
    }

    async fn one(&mut self, c: &mut Client) -> Result<(), tokio_postgres::Error> {
        let roll = self.rng.below(100);
        let id = self.some_contact();
        let minutes = self.rng.between(0, 500_000) as i32;
        match roll {
            0..=24 => self.insert_contact(c).await?,
            25..=34 => {
                let status = *self.rng.pick(&STATUSES);
                c.execute(
                    "UPDATE contacts SET lead_status = $2, updated_at = now() WHERE id = $1",
                    &[&id, &status],
                )
                .await?;
            }
            35..=42 => {
                let email = format!("w{}@example.com", self.rng.below(1_000_000));
                c.execute(
                    "UPDATE contacts SET email = $2, updated_at = now() WHERE id = $1",
                    &[&id, &email],
                )
                .await?;
            }
            43..=50 => {
                let tags = *self.rng.pick(&TAGS);
                c.execute(
                    "UPDATE contacts SET tags = $2, updated_at = now() WHERE id = $1",
                    &[&id, &tags],
                )
                .await?;
            }
            51..=58 => {
                // A negative offset clears the date: the appointment leaves the projection.
                let offset = if self.rng.below(4) == 0 { -1 } else { minutes };
                let status = self.rng.below(8) as i32;
                c.execute(
                    "UPDATE contacts SET appointment_status_id = $3,
                            appointment_date = CASE WHEN $2::int < 0 THEN NULL
                                ELSE TIMESTAMP '2024-06-01' + $2::int * INTERVAL '1 minute' END,
                            updated_at = now()
                     WHERE id = $1",
                    &[&id, &offset, &status],
                )
                .await?;
            }
            59..=70 => {
                let value = format!("v{}", self.rng.below(1_000_000));
                c.execute(
                    "UPDATE contact_custom_fields SET value = to_jsonb($2::text), updated_at = now()
                     WHERE contact_id = $1",
                    &[&id, &value],
                )
                .await?;
            }
            71..=76 => {
                c.execute("DELETE FROM contacts WHERE id = $1", &[&id])
                    .await?;
            }
            77..=79 => {
                c.execute(
                    "DELETE FROM contact_custom_fields WHERE ctid =
                       (SELECT ctid FROM contact_custom_fields WHERE contact_id = $1 LIMIT 1)",
                    &[&id],
                )
                .await?;
            }
            80..=83 => {
                // A deleted contact coming back under its old id revives its rows.
                let (workspace, _) = self.rng.pick(&self.catalog.workspaces).clone();
                c.execute(
                    "INSERT INTO contacts (id, workspace_id, firstname, lead_status, tags)
                     VALUES ($1, $2, 'Revived', 'new', 'solar') ON CONFLICT (id) DO NOTHING",
                    &[&id, &workspace],
                )
                .await?;
            }
            84..=89 => {
                // An update of a column the projection does not use.
                let note = format!("note {}", self.rng.below(1000));
                c.execute(
                    "UPDATE contacts SET notes = $2 WHERE id = $1",
                    &[&id, &note],
                )
                .await?;
            }
            _ => {
                // Several changes in one source transaction.
                let other = self.some_contact();
                let status = *self.rng.pick(&STATUSES);
                let (_, fields) = self.rng.pick(&self.catalog.workspaces).clone();
                let field = *self.rng.pick(&fields);
                let value = format!("t{}", self.rng.below(1_000_000));
                let tx = c.transaction().await?;
                tx.execute(
                    "UPDATE contacts SET lead_status = $2, updated_at = now() WHERE id = $1",
                    &[&id, &status],
                )
                .await?;
                tx.execute(
                    "UPDATE contacts SET tags = 'hvac', updated_at = now() WHERE id = $1",
                    &[&other],
                )
                .await?;
                tx.execute(
                    "INSERT INTO contact_custom_fields (contact_id, field_id, value)
                     SELECT $1, $2, to_jsonb($3::text) WHERE EXISTS (SELECT 1 FROM contacts WHERE id = $1)
                     ON CONFLICT (contact_id, field_id)
                     DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                    &[&other, &field, &value],
                )
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// A new contact with two custom-field values, in one transaction.
    async fn insert_contact(&mut self, c: &mut Client) -> Result<(), tokio_postgres::Error> {
        let id = Uuid::new_v4();
        let (workspace, fields) = self.rng.pick(&self.catalog.workspaces).clone();
        let first = self.rng.below(fields.len() as u64) as usize;
        let second = (first + 1 + self.rng.below(fields.len() as u64 - 1) as usize) % fields.len();
        let status = *self.rng.pick(&STATUSES);
        let tags = *self.rng.pick(&TAGS);
        let minutes = if self.rng.below(3) == 0 {
            self.rng.between(0, 500_000) as i32
        } else {
            -1
        };
        self.ledger.attempted.lock().unwrap().insert(id);
        let tx = c.transaction().await?;
        tx.execute(
            "INSERT INTO contacts (id, workspace_id, firstname, lastname, email, phone_number,
                                   city, state, zip, lead_status, lead_source, tags,
                                   appointment_status_id, appointment_result_id,
                                   appointment_date, priority)
             VALUES ($1, $2, 'Test', 'Writer', $3, '555-0100', 'Austin', 'TX', '78701', $4,
                     'web', $5, 4, 1,
                     CASE WHEN $6::int < 0 THEN NULL
                          ELSE TIMESTAMP '2024-06-01' + $6::int * INTERVAL '1 minute' END, 2)",
            &[
                &id,
                &workspace,
                &format!("{id}@example.com"),
                &status,
                &tags,
                &minutes,
            ],
        )
        .await?;
        for (n, field) in [fields[first], fields[second]].iter().enumerate() {
            tx.execute(
                "INSERT INTO contact_custom_fields (contact_id, field_id, value)
                 VALUES ($1, $2, to_jsonb($3::text))",
                &[&id, field, &format!("value {n}")],
            )
            .await?;
        }
        tx.commit().await?;
        self.ledger.committed.lock().unwrap().insert(id);
        self.ledger.known.lock().unwrap().push(id);
        Ok(())
    }
}

/// One large source transaction (tens of thousands of rows), so the daemon spends seconds
/// inside one apply transaction. The kinds rotate: a bulk insert of contacts with a value
/// each, an update of every contact, a bulk delete of an earlier bulk insert.
async fn big_transaction(client: &mut Client, round: usize, ledger: &Ledger) -> usize {
    // The workers' small transactions lock rows in other orders: PostgreSQL may end this one
    // as a deadlock victim, and an application would try again. The source did not change.
    loop {
        match try_big_transaction(client, round, ledger).await {
            Ok(rows) => return rows,
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {
                eprintln!("big transaction {round}: deadlock victim, trying again");
            }
            Err(e) => panic!("big transaction {round}: {e:?}"),
        }
    }
}

async fn try_big_transaction(
    client: &mut Client,
    round: usize,
    ledger: &Ledger,
) -> Result<usize, tokio_postgres::Error> {
    const BULK: i32 = 20_000;
    let batch = round / 3;
    match round % 3 {
        0 => {
            let tx = client.transaction().await?;
            let ids: Vec<Uuid> = tx
                .query(
                    "INSERT INTO contacts (id, workspace_id, firstname, lastname, email,
                                           lead_status, tags, appointment_date, notes)
                     SELECT gen_random_uuid(),
                            (SELECT workspace_id FROM custom_fields WHERE name = 'system_size'
                             ORDER BY workspace_id LIMIT 1),
                            'Bulk', 'Row ' || g, 'bulk' || g || '@example.com',
                            CASE WHEN g % 3 = 0 THEN NULL ELSE 'new' END,
                            CASE g % 4 WHEN 0 THEN 'solar' WHEN 1 THEN 'hvac' END,
                            CASE WHEN g % 5 = 0 THEN TIMESTAMP '2024-06-01' + g * INTERVAL '1 minute' END,
                            'bulk-' || $2::int
                     FROM generate_series(1, $1::int) AS g
                     RETURNING id",
                    &[&BULK, &(batch as i32)],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            ledger.attempted.lock().unwrap().extend(ids.iter().copied());
            tx.execute(
                "INSERT INTO contact_custom_fields (contact_id, field_id, value)
                 SELECT c.id, f.id, to_jsonb(length(c.lastname))
                 FROM contacts c
                 JOIN custom_fields f ON f.workspace_id = c.workspace_id AND f.name = 'system_size'
                 WHERE c.notes = 'bulk-' || $1::int",
                &[&(batch as i32)],
            )
            .await?;
            tx.commit().await?;
            ledger.committed.lock().unwrap().extend(ids.iter().copied());
            ledger.known.lock().unwrap().extend(ids.iter().copied());
            Ok(ids.len() * 2)
        }
        1 => client
            .execute(
                "UPDATE contacts SET updated_at = updated_at + INTERVAL '1 second'",
                &[],
            )
            .await
            .map(|n| n as usize),
        _ => {
            // Deletes cascade to the values: twice the rows in the stream.
            client
                .execute(
                    "DELETE FROM contacts WHERE notes = 'bulk-' || $1::int",
                    &[&(batch as i32)],
                )
                .await
                .map(|n| 2 * n as usize)
        }
    }
}

/// The daemon's apply session, when it is inside a transaction that has written something
/// (it holds a transaction id): its pid and xid.
async fn apply_session_in_transaction(monitor: &Client, db: &TestDb) -> Option<(i32, String)> {
    monitor
        .query_opt(
            "SELECT pid, backend_xid::text FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'leadsync'
               AND backend_type = 'client backend' AND backend_xid IS NOT NULL
               AND state IN ('active', 'idle in transaction') AND xact_start IS NOT NULL
             ORDER BY backend_start DESC LIMIT 1",
            &[&db.name],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Waits until transaction `xid` has ended and says whether it was rolled back. The test
/// cluster is young, so the 32-bit xid from `pg_stat_activity` equals its xid8.
async fn rolled_back(monitor: &Client, xid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: Option<String> = monitor
            .query_one("SELECT pg_xact_status($1::text::xid8)", &[&xid])
            .await
            .unwrap()
            .get(0);
        match status.as_deref() {
            Some("in progress") if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other == Some("aborted"),
        }
    }
}

/// The daemon's committed checkpoint: the LSN of its replication origin.
async fn checkpoint(monitor: &Client, db: &TestDb) -> leadsync::Lsn {
    let lsn: Option<String> = monitor
        .query_one(
            "SELECT pg_replication_origin_progress($1, true)::text",
            &[&db.slot],
        )
        .await
        .unwrap()
        .get(0);
    lsn.and_then(|l| l.parse().ok())
        .unwrap_or(leadsync::Lsn::ZERO)
}

/// Waits until the killed daemon's sessions are gone from the server.
async fn wait_sessions_gone(monitor: &Client, db: &TestDb) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let busy: bool = monitor
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE datname = $1 AND application_name = 'leadsync')
                     OR EXISTS (SELECT 1 FROM pg_replication_slots
                                WHERE slot_name = $2 AND active)",
                &[&db.name, &db.slot],
            )
            .await
            .unwrap()
            .get(0);
        if !busy {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the killed daemon's sessions are still there after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test with the daemon's log if it exited on its own.
fn assert_running(daemon: &mut Daemon, what: &str) {
    if let Some(status) = daemon.try_wait() {
        panic!(
            "the daemon exited by itself ({status}) {what}; log:\n{}",
            daemon.log()
        );
    }
}

/// Everything the crash tests check once the daemon has caught up: the whole projection,
/// one customer per contact that ever committed, no customer the workload never tried to
/// create, and no key twice.
async fn assert_complete(
    db: &TestDb,
    ledger: &Ledger,
    generated: &HashSet<Uuid>,
    log: &dyn Fn() -> String,
) {
    db.assert_projection(&db.settings()).await;
    let client = connect(db, "crash-test").await.unwrap();
    for (table, key) in [
        ("customers", "cst_id"),
        ("customers", "migrated_from_contact_id"),
        ("leads", "migrated_from_contact_id"),
        ("appointments", "migrated_from_contact_id"),
    ] {
        let twice: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT {key} FROM {table}
                     WHERE migrated_from_contact_id IS NOT NULL
                     GROUP BY {key} HAVING count(*) > 1) d"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            twice, 0,
            "{table}: {twice} {key} values occur more than once"
        );
    }
    let values_twice: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM customer_custom_fields
                     GROUP BY customer_id, field_id HAVING count(*) > 1) a)
                  + (SELECT count(*) FROM (SELECT 1 FROM lead_custom_fields
                     GROUP BY lead_id, field_id HAVING count(*) > 1) b)
                  + (SELECT count(*) FROM (SELECT 1 FROM appointment_custom_fields
                     GROUP BY appointment_id, field_id HAVING count(*) > 1) c)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(values_twice, 0, "custom-field values occur more than once");
    let pending_twice: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT contact_id FROM leadsync.dead_letters
             WHERE status = 'pending' AND contact_id IS NOT NULL
             GROUP BY contact_id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        pending_twice, 0,
        "a contact has several pending dead letters"
    );

    let owned: HashSet<Uuid> = client
        .query(
            "SELECT migrated_from_contact_id FROM customers WHERE migrated_from_contact_id IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Contacts the target rejects (the generator's over-long phones) wait in the dead
    // letters instead, as the invariant allows; one that was rejected and then deleted never
    // had a row to mark.
    let parked: HashSet<Uuid> = client
        .query(
            "SELECT contact_id FROM leadsync.dead_letters d
             WHERE contact_id IS NOT NULL
               AND (status = 'pending'
                    OR NOT EXISTS (SELECT 1 FROM contacts c WHERE c.id = d.contact_id))",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let committed = ledger.committed.lock().unwrap();
    let lost: Vec<&Uuid> = committed
        .iter()
        .chain(generated.iter())
        .filter(|id| !owned.contains(id) && !parked.contains(id))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "contacts that committed have no customer row (live or marked deleted), e.g. {lost:?}; log:\n{}",
        log()
    );
    let attempted = ledger.attempted.lock().unwrap();
    let phantom: Vec<&Uuid> = owned
        .iter()
        .filter(|id| !generated.contains(id) && !attempted.contains(id))
        .take(5)
        .collect();
    assert!(
        phantom.is_empty(),
        "customers for contacts nobody created: {phantom:?}"
    );
    eprintln!(
        "checked: {} owned customers ({} created by the workload)",
        owned.len(),
        committed.len()
    );
}

async fn generated_ids(db: &TestDb) -> HashSet<Uuid> {
    connect(db, "crash-test")
        .await
        .unwrap()
        .query("SELECT id FROM contacts", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_duplicates_nothing() {
    const KILLS: usize = 24;
    let mut rng = Rng::new(seed());
    let db = TestDb::spawn().await;
    prepare(&db, 2000).await;
    let generated = generated_ids(&db).await;
    let env = daemon_env(&db);
    let mut daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;

    let monitor = connect(&db, "crash-monitor").await.unwrap();
    let mut bulk = connect(&db, "crash-bulk").await.unwrap();
    let workload = Workload::start(&db, 3, &mut rng).await;
    let mut inside = 0;
    let mut targeted = 0;
    let mut big_rounds = 0;
    let mut advanced = 0;
    let mut last_checkpoint = checkpoint(&monitor, &db).await;
    let started = Instant::now();
    for kill in 0..KILLS {
        if kill % 4 == 1 {
            // Aimed: a large source transaction, then the kill as soon as the daemon's apply
            // transaction holds uncommitted writes. It counts as inside only if that
            // transaction is afterwards found rolled back, i.e. the kill really cut it.
            targeted += 1;
            let rows = big_transaction(&mut bulk, big_rounds, &workload.ledger).await;
            big_rounds += 1;
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut seen = None;
            while Instant::now() < deadline {
                assert_running(&mut daemon, "while a large transaction streamed");
                if let Some(s) = apply_session_in_transaction(&monitor, &db).await {
                    seen = Some(s);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            daemon.kill();
            match seen {
                Some((pid, xid)) => {
                    let cut = rolled_back(&monitor, &xid).await;
                    eprintln!(
                        "kill {kill}: aimed after a {rows}-row transaction; apply session {pid} xid {xid} {}",
                        if cut { "rolled back" } else { "had committed" }
                    );
                    inside += usize::from(cut);
                }
                None => eprintln!("kill {kill}: aimed, but the apply session never held an xid"),
            }
            wait_sessions_gone(&monitor, &db).await;
        } else {
            let pause = rng.between(50, 700);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            assert_running(&mut daemon, "between kills");
            let seen = apply_session_in_transaction(&monitor, &db).await;
            daemon.kill();
            eprintln!(
                "kill {kill}: after {pause} ms{}",
                if seen.is_some() {
                    ", apply session in a transaction"
                } else {
                    ""
                }
            );
            // Mostly restarted once the old sessions are gone, so the new daemon gets to
            // apply something before the next kill; sometimes at once, so it finds them
            // still holding the origin and the slot and must wait for them by itself.
            if rng.below(4) != 0 {
                wait_sessions_gone(&monitor, &db).await;
            }
        }
        let now = checkpoint(&monitor, &db).await;
        advanced += usize::from(now > last_checkpoint);
        last_checkpoint = now;
        daemon = Daemon::start(BIN, &env);
        if kill % 4 == 1 {
            // Let the large transaction through, so the next kills land among the small
            // ones rather than in the same replay again.
            db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
            last_checkpoint = checkpoint(&monitor, &db).await;
        }
    }
    let ledger = workload.finish().await;
    eprintln!(
        "{KILLS} kills in {:.1} s; {targeted} aimed, {inside} provably inside an apply \
         transaction; the checkpoint moved between {advanced} pairs of kills",
        started.elapsed().as_secs_f64()
    );
    let caught = Instant::now();
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    eprintln!(
        "caught up {:.1} s after the last restart",
        caught.elapsed().as_secs_f64()
    );
    assert_running(&mut daemon, "after the kills");
    assert_complete(&db, &ledger, &generated, &|| daemon.log()).await;
    assert!(
        inside >= 3,
        "only {inside} kills provably landed inside an apply transaction"
    );
    // Kills that all landed before the daemon committed anything would test only startup.
    assert!(
        advanced >= KILLS / 4,
        "the checkpoint moved between only {advanced} of {KILLS} kills"
    );
}

async fn postgres_goes_down_mid_stream(mode: &'static str) {
    // Durable commits: with synchronous_commit = off an immediate stop may drop commits the
    // workload already saw succeed, and the ledger would then expect customers for contacts
    // that never made it to the source.
    let options = ClusterOptions {
        durable: true,
        ..ClusterOptions::default()
    };
    let cluster = tokio::task::spawn_blocking(move || TempCluster::start(&options))
        .await
        .unwrap()
        .unwrap();
    let cluster = Arc::new(cluster);
    let db = TestDb::spawn_on(cluster.port(), true).await;
    prepare(&db, 2000).await;
    let generated = generated_ids(&db).await;
    let mut rng = Rng::new(seed());
    let mut daemon = Daemon::start(BIN, &daemon_env(&db));
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;

    let workload = Workload::start(&db, 3, &mut rng).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop(mode))
        .await
        .unwrap()
        .unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.restart())
        .await
        .unwrap()
        .unwrap();
    // More writes once the server is back; the workload reconnects by itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = workload.finish().await;

    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    eprintln!(
        "stop -m {mode}: caught up {:.1} s after the server went down",
        down.elapsed().as_secs_f64()
    );
    assert_running(&mut daemon, "when the server went away");
    for line in daemon
        .log()
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("parked"))
    {
        eprintln!("daemon: {line}");
    }
    assert_complete(&db, &ledger, &generated, &|| daemon.log()).await;
    drop(daemon);
    drop(db);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_mid_stream_reconnects_and_resumes() {
    postgres_goes_down_mid_stream("immediate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_fast_shutdown_mid_stream_reconnects_and_resumes() {
    postgres_goes_down_mid_stream("fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_restart_resumes() {
    let mut rng = Rng::new(seed());
    let db = TestDb::spawn().await;
    prepare(&db, 2000).await;
    let generated = generated_ids(&db).await;
    let env = daemon_env(&db);
    let mut daemon = Daemon::start(BIN, &env);
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    let monitor = connect(&db, "crash-monitor").await.unwrap();
    let mut bulk = connect(&db, "crash-bulk").await.unwrap();
    let workload = Workload::start(&db, 3, &mut rng).await;

    // Once under small transactions only, once in the middle of a large one.
    for round in 0..2 {
        if round == 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        } else {
            big_transaction(&mut bulk, 0, &workload.ledger).await;
            let deadline = Instant::now() + Duration::from_secs(120);
            while apply_session_in_transaction(&monitor, &db).await.is_none() {
                assert!(
                    Instant::now() < deadline,
                    "the apply session never held an xid"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let asked = Instant::now();
        let status = daemon.signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
        let Some(status) = status else {
            panic!(
                "round {round}: still running 10 s after SIGTERM; log:\n{}",
                daemon.log()
            );
        };
        assert!(
            status.success(),
            "round {round}: exit {status}; log:\n{}",
            daemon.log()
        );
        let log = daemon.log();
        assert!(
            log.contains("leadsync stopped"),
            "round {round}: log:\n{log}"
        );
        eprintln!(
            "round {round}: exited 0 {:.2} s after SIGTERM",
            asked.elapsed().as_secs_f64()
        );
        // A clean stop closes every session: nothing is left holding the slot or the origin.
        wait_sessions_gone(&monitor, &db).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        daemon = Daemon::start(BIN, &env);
    }
    let ledger = workload.finish().await;
    db.wait_caught_up(CATCH_UP, &|| daemon.log()).await;
    assert_running(&mut daemon, "after the restarts");
    assert_complete(&db, &ledger, &generated, &|| daemon.log()).await;
}
