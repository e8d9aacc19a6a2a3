//! `leadsync demo`: a throwaway PostgreSQL, generated legacy data, `setup`, `assess`, then
//! the daemon: the first load, and legacy writes arriving in the new tables — the product
//! end to end on a laptop, leaving nothing behind.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tokio_postgres::Client;

use crate::cluster::{ClusterOptions, TempCluster};
use crate::cmd::{assess, run, setup};
use crate::config::Settings;
use crate::{Lsn, db, fixtures, source};

/// The demo's workspace for hand-made contacts, and a contact written live.
const LIVE_CONTACT: &str = "d0000000-0000-4000-8000-000000000001";

/// Runs the demo with `contacts` generated contacts.
pub async fn run_demo(contacts: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("== starting a throwaway PostgreSQL (wal_level = logical)");
    let cluster =
        tokio::task::spawn_blocking(|| TempCluster::start(&ClusterOptions::default())).await??;
    println!(
        "   listening on 127.0.0.1:{} in {}",
        cluster.port(),
        cluster.dir().display()
    );
    let result = demo_on(&cluster, contacts).await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    result?;
    println!(
        "== demo finished in {:.1}s; the throwaway cluster is gone",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn demo_on(cluster: &TempCluster, contacts: u64) -> anyhow::Result<()> {
    let admin = db::connect(&SecretString::from(cluster.url("postgres"))).await?;
    admin.batch_execute("CREATE DATABASE crm").await?;
    let url = SecretString::from(cluster.url("crm"));
    let client = db::connect(&url).await?;

    println!("== loading the legacy schema and {contacts} generated contacts");
    let t = Instant::now();
    fixtures::load_legacy_schema(&client).await?;
    fixtures::generate_demo_data(&client, contacts).await?;
    println!("   done in {:.1}s", t.elapsed().as_secs_f64());

    let mut settings = Settings::default();
    settings.source.url = Some(url);
    settings.slot.status_interval_ms = 200;
    settings.validate()?;

    println!("== leadsync setup");
    print!("{}", setup::run_setup(&settings).await?);
    let moved = fixtures::assign_demo_field_contexts(&client).await?;
    println!("   {moved} field definitions now hold lead- or appointment-level values");
    println!("== leadsync setup, again (idempotent)");
    print!("{}", setup::run_setup(&settings).await?);

    println!("== leadsync assess");
    let assessment = assess::run_assess(&settings).await?;
    println!("{}", assessment.render());

    println!(
        "== leadsync run: first run creates the slot and loads every contact from its snapshot"
    );
    let (stop, _pause, controls) = crate::control::Controls::manual();
    let daemon_settings = settings.clone();
    let daemon = tokio::spawn(async move {
        run::run(
            &daemon_settings,
            controls,
            crate::status::SharedStatus::default(),
        )
        .await
    });
    let t = Instant::now();
    wait_caught_up(&client, &settings.slot.name).await?;
    println!(
        "   loaded and streaming after {:.1}s",
        t.elapsed().as_secs_f64()
    );
    print_counts(&client).await?;

    println!("== legacy writes while leadsync streams");
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
        println!("   {what}: applied within {} ms", t.elapsed().as_millis());
        print_contact_rows(&client).await?;
    }

    println!("== stopping the daemon (as SIGTERM would)");
    let _ = stop.send(true);
    daemon.await??;
    let dead: i64 = client
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'",
            &[],
        )
        .await?
        .get(0);
    println!(
        "   {dead} contacts wait in leadsync.dead_letters (values too long for the new columns, as assess predicted)"
    );
    Ok(())
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
        println!("   {table:<27} {n:>8}");
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
        println!(
            "     customer    {}{}",
            c.get::<_, String>(0),
            state(c.get(1))
        );
    }
    if let Some(l) = lead {
        println!(
            "     lead        product {}, disposition {}{}",
            l.get::<_, String>(0),
            l.get::<_, String>(1),
            state(l.get(2))
        );
    }
    if let Some(a) = appointment {
        println!(
            "     appointment {}, set {}{}",
            a.get::<_, String>(0),
            a.get::<_, bool>(1),
            state(a.get(2))
        );
    }
    Ok(())
}
