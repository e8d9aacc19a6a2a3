//! Test and benchmark helpers (feature `test-utils`): one throwaway cluster per test binary
//! and a fresh, randomly named database per test.
//!
//! Every database starts as a copy of a template that already holds the legacy schema.
//! Dropping a [`TestDb`] ends its sessions and drops its replication slots, the origin named
//! after its slot and the database itself, so tests never see each other's leftovers.

use std::sync::{Mutex, OnceLock};

use secrecy::SecretString;
use tokio_postgres::Client;

use crate::cluster::{ClusterOptions, TempCluster};
use crate::config::Settings;
use crate::db;

/// The template database with the legacy schema loaded.
const TEMPLATE: &str = "leadsync_legacy_template";

static SHARED: OnceLock<Mutex<Option<TempCluster>>> = OnceLock::new();
static SHARED_INFO: OnceLock<SharedCluster> = OnceLock::new();

/// Connection facts of the shared cluster.
#[derive(Debug, Clone)]
pub struct SharedCluster {
    pub port: u16,
    pub bindir: std::path::PathBuf,
}

impl SharedCluster {
    /// URL of `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

extern "C" fn stop_shared_cluster() {
    if let Some(lock) = SHARED.get()
        && let Ok(mut cluster) = lock.lock()
    {
        drop(cluster.take());
    }
}

/// Options of the shared cluster: a short `wal_sender_timeout` so a consumer that stops
/// answering is noticed within seconds.
pub fn shared_cluster_options() -> ClusterOptions {
    ClusterOptions {
        wal_sender_timeout: std::time::Duration::from_secs(10),
        ..ClusterOptions::default()
    }
}

/// The cluster shared by every test of this binary, started on first use and stopped when
/// the process exits.
pub fn shared_cluster() -> &'static SharedCluster {
    SHARED_INFO.get_or_init(|| {
        let cluster = TempCluster::start(&shared_cluster_options())
            .unwrap_or_else(|e| panic!("cannot start the test cluster: {e}"));
        let info = SharedCluster {
            port: cluster.port(),
            bindir: cluster.bindir().to_owned(),
        };
        let created = SHARED.set(Mutex::new(Some(cluster))).is_ok();
        assert!(created, "shared cluster initialised twice");
        // SAFETY: registers a plain extern "C" function with no arguments; it runs at exit.
        unsafe { libc::atexit(stop_shared_cluster) };
        create_template(&info);
        info
    })
}

fn create_template(cluster: &SharedCluster) {
    let url = cluster.url("postgres");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let admin = connect(&url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {TEMPLATE}"))
            .await
            .expect("create template database");
        let template = connect(&cluster.url(TEMPLATE)).await;
        crate::fixtures::load_legacy_schema(&template)
            .await
            .expect("load legacy schema");
        template
            .batch_execute("CREATE EXTENSION IF NOT EXISTS \"uuid-ossp\"")
            .await
            .expect("uuid-ossp for independent projections");
    });
}

async fn connect(url: &str) -> Client {
    db::connect(&SecretString::from(url.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A database of its own for one test, with the legacy schema, on the shared cluster (or on
/// a cluster the test started itself).
pub struct TestDb {
    pub name: String,
    port: u16,
    /// Slot (and origin) name the test's daemon uses: unique per database, since slots and
    /// origins are per cluster.
    pub slot: String,
}

impl TestDb {
    /// A fresh database on the shared cluster.
    pub async fn spawn() -> TestDb {
        let port = tokio::task::spawn_blocking(|| shared_cluster().port)
            .await
            .expect("start shared cluster");
        Self::spawn_on(port, true).await
    }

    /// A fresh database on the cluster listening on `port`; with `legacy`, the legacy schema
    /// is loaded (from the template on the shared cluster).
    pub async fn spawn_on(port: u16, legacy: bool) -> TestDb {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("test_{}", &suffix[..16]);
        let admin = connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
        let is_shared = SHARED_INFO.get().is_some_and(|s| s.port == port);
        let sql = if legacy && is_shared {
            format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        } else {
            format!("CREATE DATABASE {name}")
        };
        admin
            .batch_execute(&sql)
            .await
            .expect("create test database");
        let db = TestDb {
            slot: format!("ls_{}", &suffix[..16]),
            name,
            port,
        };
        if legacy && !is_shared {
            crate::fixtures::load_legacy_schema(&db.client().await)
                .await
                .expect("load legacy schema");
        }
        db
    }

    /// URL of this database as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// URL of this database as `user`.
    pub fn url_as(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// A new superuser session on this database.
    pub async fn client(&self) -> Client {
        connect(&self.url()).await
    }

    /// Settings pointing at this database, with this database's slot and publication names.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings.source.url = Some(SecretString::from(self.url()));
        settings.slot.name = self.slot.clone();
        settings.publication.name = format!("pub_{}", self.slot);
        settings
    }

    /// The cluster's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    async fn cleanup(port: u16, name: String, slot: String) {
        let Ok(admin) = db::connect(&SecretString::from(format!(
            "postgres://postgres@127.0.0.1:{port}/postgres"
        )))
        .await
        else {
            return;
        };
        let _ = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await;
        // Walsenders are gone once terminated; their slots can then be dropped.
        for _ in 0..50 {
            let dropped = admin
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE database = $1 AND NOT active",
                    &[&name],
                )
                .await;
            let left: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                    &[&name],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0);
            if dropped.is_ok() && left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let _ = admin
            .execute(
                "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
                 WHERE roname = $1",
                &[&slot],
            )
            .await;
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (port, name, slot) = (self.port, self.name.clone(), self.slot.clone());
        // Drop may run inside an async test; clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(TestDb::cleanup(port, name, slot));
            }
        })
        .join();
    }
}

/// `pg_dump --schema-only` of a database, for comparing catalogs.
pub fn schema_dump(port: u16, database: &str) -> String {
    let bindir = crate::cluster::find_bindir().expect("PostgreSQL binaries");
    let out = std::process::Command::new(bindir.join("pg_dump"))
        .args([
            "--schema-only",
            "--no-owner",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &port.to_string(), database])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_dump brackets its output with \restrict lines carrying a random key.
    String::from_utf8(out.stdout)
        .expect("pg_dump output is UTF-8")
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}
