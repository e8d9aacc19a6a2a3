//! `leadsync demo`: a throwaway PostgreSQL, generated legacy data, `setup` and `assess` —
//! the product end to end on a laptop, leaving nothing behind.

use std::time::Instant;

use secrecy::SecretString;

use crate::cluster::{ClusterOptions, TempCluster};
use crate::cmd::{assess, setup};
use crate::config::Settings;
use crate::{db, fixtures};

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

    drop(client);
    drop(admin);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    println!(
        "== demo finished in {:.1}s; the throwaway cluster is gone",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
