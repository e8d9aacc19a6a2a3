//! `leadsync demo`: a throwaway PostgreSQL, generated legacy data, `setup`, `assess`, then
//! the daemon: the first load, legacy writes arriving in the new tables, an edit in the new
//! application flowing back, a live write load with the lag shown as it goes, a pause and a
//! resume, `validate` and `report` — the product end to end on a laptop, leaving nothing
//! behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio_postgres::Client;

use crate::cluster::{ClusterOptions, TempCluster};
use crate::cmd::{assess, report, run, setup, validate};
use crate::config::Settings;
use crate::{Lsn, db, fixtures, source};

/// `println!` fitted to the terminal's width (see [`crate::text::fit`]).
macro_rules! say {
    ($($arg:tt)*) => {
        print!("{}", crate::text::fit(&format!("{}\n", format_args!($($arg)*))))
    };
}

/// The demo's workspace for hand-made contacts, and a contact written live.
const LIVE_CONTACT: &str = "d0000000-0000-4000-8000-000000000001";

/// Runs the demo with `contacts` generated contacts. With `keep`, the cluster keeps running
/// afterwards (a playground, with the commands to use and remove it); otherwise it is gone
/// at the end, also after Ctrl-C or SIGTERM.
pub async fn run_demo(contacts: u64, keep: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    say!("== starting a throwaway PostgreSQL (wal_level = logical)");
    let cluster =
        tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default())).await??;
    say!(
        "   listening on 127.0.0.1:{} in {}",
        cluster.port(),
        cluster.dir().display()
    );
    let result = tokio::select! {
        result = demo_on(&cluster, contacts) => result,
        signal = interrupted() => Err(anyhow::anyhow!(
            "{signal}: the demo stopped; its throwaway cluster is removed"
        )),
    };
    if keep && result.is_ok() {
        let kept = cluster.keep();
        say!(
            "== demo finished in {:.1}s; the cluster keeps running as a playground",
            started.elapsed().as_secs_f64()
        );
        print!("{}", playground(&kept));
        return Ok(());
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    result?;
    say!(
        "== demo finished in {:.1}s; the throwaway cluster is gone",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}

/// How to use and then remove a kept cluster.
fn playground(kept: &crate::cluster::KeptCluster) -> String {
    let url = kept.url("crm");
    format!(
        "   database:  psql {url}\n\
         \x20  leadsync:  LEADSYNC_SOURCE__URL={url} leadsync run\n\
         \x20             (it resumes from the demo's slot; then validate, cutover, teardown)\n\
         \x20  remove it: {}\n",
        kept.removal_command()
    )
}

async fn demo_on(cluster: &TempCluster, contacts: u64) -> anyhow::Result<()> {
    let admin = db::connect(&SecretString::from(cluster.url("postgres"))).await?;
    admin.batch_execute("CREATE DATABASE crm").await?;
    let url = SecretString::from(cluster.url("crm"));
    let client = db::connect(&url).await?;

    say!("== loading the legacy schema and {contacts} generated contacts");
    let t = Instant::now();
    fixtures::load_legacy_schema(&client).await?;
    fixtures::generate_demo_data(&client, contacts).await?;
    say!("   done in {:.1}s", t.elapsed().as_secs_f64());

    let mut settings = Settings::default();
    settings.source.url = Some(url);
    settings.slot.status_interval_ms = 200;
    settings.validate()?;

    say!("== leadsync setup");
    say!(
        "{}",
        setup::run_setup(&settings).await?.to_string().trim_end()
    );
    let moved = fixtures::assign_demo_field_contexts(&client).await?;
    say!("   {moved} field definitions now hold lead- or appointment-level values");
    say!("== leadsync setup, again (idempotent)");
    say!(
        "{}",
        setup::run_setup(&settings).await?.to_string().trim_end()
    );

    say!("== leadsync assess");
    let assessment = assess::run_assess(&settings).await?;
    say!("{}", assessment.render());

    say!("== leadsync run: first run creates the slot and loads every contact from its snapshot");
    let (stop, pause, controls) = crate::control::Controls::manual();
    let daemon_settings = settings.clone();
    let status = crate::status::SharedStatus::default();
    let daemon_status = status.clone();
    let daemon =
        tokio::spawn(async move { run::run(&daemon_settings, controls, daemon_status).await });
    let t = Instant::now();
    wait_caught_up(&client, &settings.slot.name).await?;
    say!(
        "   loaded and streaming after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    print_counts(&client).await?;

    say!("== legacy writes while leadsync streams");
    let workspace: uuid::Uuid = client
        .query_one("SELECT id FROM workspaces ORDER BY name LIMIT 1", &[])
        .await?
        .get(0);
    let steps: [(&str, String); 4] = [
        (
            "a new contact with a lead status and an appointment",
            format!(
                "INSERT INTO contacts (id, workspace_id, firstname, lastname, email, lead_status,
                                       tags, appointment_date, appointment_status_id)
                 VALUES ('{LIVE_CONTACT}', '{workspace}', 'Dana', 'Reyes', 'dana@example.com',
                         'new', 'residential solar', now() + interval '3 days', 4)"
            ),
        ),
        (
            "its lead status changes and its tags name another product",
            format!(
                "UPDATE contacts SET lead_status = 'qualified', tags = 'hvac', updated_at = now()
                 WHERE id = '{LIVE_CONTACT}'"
            ),
        ),
        (
            "its lead status is cleared (the lead and appointment are marked deleted)",
            format!(
                "UPDATE contacts SET lead_status = NULL, updated_at = now()
                 WHERE id = '{LIVE_CONTACT}'"
            ),
        ),
        (
            "the contact is deleted (its customer is marked deleted)",
            format!("DELETE FROM contacts WHERE id = '{LIVE_CONTACT}'"),
        ),
    ];
    for (what, sql) in steps {
        let t = Instant::now();
        client.batch_execute(&sql).await?;
        wait_caught_up(&client, &settings.slot.name).await?;
        say!("   {what}: applied within {} ms", t.elapsed().as_millis());
        print_contact_rows(&client).await?;
    }

    say!("== the new application edits a migrated customer: reverse sync");
    let person: uuid::Uuid = client
        .query_one(
            "SELECT cst_id FROM customers WHERE deleted_at IS NULL ORDER BY cst_id LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let t = Instant::now();
    client
        .execute(
            "UPDATE customers SET email = 'new.address@example.com' WHERE cst_id = $1",
            &[&person],
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let email = loop {
        let email: Option<String> = client
            .query_one("SELECT email FROM contacts WHERE id = $1", &[&person])
            .await?
            .get(0);
        if email.as_deref() == Some("new.address@example.com") || Instant::now() > deadline {
            break email;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    say!(
        "   contacts.email of {person} is now {} ({} ms later); the contact's change flows \
         forward once, and leadsync does not carry its own write back",
        email.as_deref().unwrap_or("NULL"),
        t.elapsed().as_millis()
    );

    live_load(&client, &settings, &status, &pause).await?;

    say!("== leadsync validate");
    let mut validate_client = db::connect(settings.source_url()).await?;
    let validation =
        validate::validate(&mut validate_client, &settings, Duration::from_secs(60)).await?;
    say!("{}", validation.render().trim_end());
    wait_caught_up(&client, &settings.slot.name).await?;
    say!("== leadsync report");
    let report = report::run_report(&settings, Duration::from_secs(10)).await?;
    say!("{}", report.render().trim_end());

    say!("== stopping the daemon (as SIGTERM would)");
    let _ = stop.send(true);
    daemon.await??;
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'",
            &[],
        )
        .await?
        .get(0);
    say!(
        "   {dead} contacts wait in leadsync.dead_letters (values too long for the new columns, as assess predicted)"
    );
    Ok(())
}

/// Legacy writers at full speed with the lag shown every second; a pause while they go on,
/// then a resume and the catch-up.
async fn live_load(
    client: &Client,
    settings: &Settings,
    status: &crate::status::SharedStatus,
    pause: &tokio::sync::watch::Sender<Option<bool>>,
) -> anyhow::Result<()> {
    say!("== a live legacy write load: 2 writers, ~1,000 single-row updates and inserts a second");
    let ids: Vec<uuid::Uuid> = client
        .query("SELECT id FROM contacts", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ids = Arc::new(ids);
    let running = Arc::new(AtomicBool::new(true));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for seed in 1..=2u64 {
        let (ids, running, written) = (ids.clone(), running.clone(), written.clone());
        let writer = db::connect(settings.source_url()).await?;
        writers.push(tokio::spawn(async move {
            write_load(writer, &ids, seed, &running, &written).await
        }));
    }
    let mut meter = Meter::new(written.clone(), status.clone());
    meter.show(client, settings, 4).await?;
    say!(
        "   -- pause (what SIGUSR1 or `leadsync ctl pause` does): writes go on, nothing is applied"
    );
    let _ = pause.send(Some(true));
    meter.show(client, settings, 3).await?;
    say!("   -- resume (SIGUSR2 or `leadsync ctl resume`): catching up while the writes go on");
    let _ = pause.send(Some(false));
    meter.show(client, settings, 3).await?;
    running.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await??;
    }
    let t = Instant::now();
    wait_caught_up(client, &settings.slot.name).await?;
    say!(
        "   writers stopped after {} transactions; caught up {} ms later",
        written.load(Ordering::Relaxed),
        t.elapsed().as_millis()
    );
    Ok(())
}

/// Single-row legacy transactions until `running` is cleared: lead status and email
/// updates of random contacts, and now and then a new contact.
async fn write_load(
    client: Client,
    ids: &[uuid::Uuid],
    seed: u64,
    running: &AtomicBool,
    written: &AtomicU64,
) -> anyhow::Result<()> {
    let statuses = ["new", "contacted", "qualified", "won", "lost"];
    let update_status = client
        .prepare("UPDATE contacts SET lead_status = $2, updated_at = now() WHERE id = $1")
        .await?;
    let update_email = client
        .prepare("UPDATE contacts SET email = $2, updated_at = now() WHERE id = $1")
        .await?;
    let insert = client
        .prepare(
            "INSERT INTO contacts (workspace_id, firstname, lead_status, tags)
             SELECT workspace_id, 'Live', 'new', 'solar' FROM contacts WHERE id = $1",
        )
        .await?;
    // xorshift: deterministic and good enough to spread the writes.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    // A busy application, not a benchmark: about 500 transactions a second per writer.
    let mut pace = tokio::time::interval(Duration::from_millis(2));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while running.load(Ordering::Relaxed) {
        pace.tick().await;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let id = ids[(x % ids.len() as u64) as usize];
        match x % 10 {
            0 => client.execute(&insert, &[&id]).await?,
            1..=5 => {
                let status = statuses[(x / 10 % statuses.len() as u64) as usize];
                client.execute(&update_status, &[&id, &status]).await?
            }
            _ => {
                let email = format!("user{}@example.com", x % 100_000);
                client.execute(&update_email, &[&id, &email]).await?
            }
        };
        written.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Prints, once a second, what the writers wrote, what leadsync applied and how far behind
/// it is.
struct Meter {
    written: Arc<AtomicU64>,
    status: crate::status::SharedStatus,
    last_written: u64,
    last_applied: u64,
    started: Instant,
}

impl Meter {
    fn new(written: Arc<AtomicU64>, status: crate::status::SharedStatus) -> Meter {
        let last_applied = status.get().counters.changes;
        Meter {
            last_written: written.load(Ordering::Relaxed),
            written,
            status,
            last_applied,
            started: Instant::now(),
        }
    }

    async fn show(
        &mut self,
        client: &Client,
        settings: &Settings,
        seconds: u32,
    ) -> anyhow::Result<()> {
        for _ in 0..seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let written = self.written.load(Ordering::Relaxed);
            let now = self.status.get();
            let behind: Option<i64> = client
                .query_one(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint
                     FROM pg_replication_slots WHERE slot_name = $1",
                    &[&settings.slot.name],
                )
                .await?
                .get(0);
            say!(
                "   {:>3}s  written {:>6}/s  applied {:>6}/s  lag {:>6.2} s {:>9}  {}",
                self.started.elapsed().as_secs(),
                written - self.last_written,
                now.counters.changes - self.last_applied,
                now.lag_seconds,
                format!("{} kB", behind.unwrap_or(0).max(0) / 1024),
                if now.paused { "paused" } else { "streaming" }
            );
            self.last_written = written;
            self.last_applied = now.counters.changes;
        }
        Ok(())
    }
}

/// Waits until the daemon has processed everything written so far. The insert position,
/// not `pg_current_wal_lsn()`: with asynchronous commit the write position can still be
/// short of a transaction that has already committed.
async fn wait_caught_up(client: &Client, slot: &str) -> anyhow::Result<()> {
    let target: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    let target: Lsn = target.parse()?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let streaming: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM leadsync.sync_state
                                WHERE slot_name = $1 AND phase = 'streaming')",
                &[&slot],
            )
            .await?
            .get(0);
        let status = source::slot_status(client, slot).await?;
        if streaming && status.confirmed_flush.is_some_and(|l| l >= target) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn print_counts(client: &Client) -> anyhow::Result<()> {
    for table in [
        "customers",
        "leads",
        "appointments",
        "customer_custom_fields",
        "lead_custom_fields",
        "appointment_custom_fields",
    ] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        say!("   {table:<27} {n:>8}");
    }
    Ok(())
}

async fn print_contact_rows(client: &Client) -> anyhow::Result<()> {
    let customer = client
        .query_opt(
            "SELECT firstname || ' ' || lastname, deleted_at IS NOT NULL FROM customers
             WHERE cst_id = $1::text::uuid",
            &[&LIVE_CONTACT],
        )
        .await?;
    let lead = client
        .query_opt(
            "SELECT productid, disposition, deleted_at IS NOT NULL FROM leads
             WHERE migrated_from_contact_id = $1::text::uuid",
            &[&LIVE_CONTACT],
        )
        .await?;
    let appointment = client
        .query_opt(
            "SELECT disposition, apptset, deleted_at IS NOT NULL FROM appointments
             WHERE migrated_from_contact_id = $1::text::uuid",
            &[&LIVE_CONTACT],
        )
        .await?;
    let state = |deleted: bool| if deleted { " (deleted)" } else { "" };
    if let Some(c) = customer {
        say!(
            "     customer    {}{}",
            c.get::<_, String>(0),
            state(c.get(1))
        );
    }
    if let Some(l) = lead {
        say!(
            "     lead        product {}, disposition {}{}",
            l.get::<_, String>(0),
            l.get::<_, String>(1),
            state(l.get(2))
        );
    }
    if let Some(a) = appointment {
        say!(
            "     appointment {}, set {}{}",
            a.get::<_, String>(0),
            a.get::<_, bool>(1),
            state(a.get(2))
        );
    }
    Ok(())
}
