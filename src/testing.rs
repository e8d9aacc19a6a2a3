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

/// Environment for a `leadsync` process pointed at `db`, with a short status interval so
/// tests see the acknowledged position quickly.
pub fn daemon_env(db: &TestDb) -> Vec<(String, String)> {
    let s = db.settings();
    vec![
        ("LEADSYNC_SOURCE__URL".into(), db.url()),
        ("LEADSYNC_SLOT__NAME".into(), s.slot.name.clone()),
        (
            "LEADSYNC_PUBLICATION__NAME".into(),
            s.publication.name.clone(),
        ),
        ("LEADSYNC_SLOT__STATUS_INTERVAL_MS".into(), "100".into()),
        ("LEADSYNC_METRICS__LISTEN".into(), "127.0.0.1:0".into()),
        ("LEADSYNC_LOG__LEVEL".into(), "info".into()),
    ]
}

/// Runs the `bin` command with `args` and only `env` of leadsync's variables; returns its
/// exit code, stdout and stderr.
pub async fn run_cli(
    bin: &str,
    env: Vec<(String, String)>,
    args: &[&str],
) -> (i32, String, String) {
    let bin = bin.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(bin);
        cmd.args(&args);
        for (k, _) in std::env::vars() {
            if k.starts_with("LEADSYNC_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run leadsync");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("the command's thread")
}

static SCRATCH: OnceLock<std::path::PathBuf> = OnceLock::new();

extern "C" fn remove_scratch_dir() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A directory of this test process for daemons' logs and pidfiles, removed when the
/// process exits: a test that fails or kills its daemon leaves nothing in the temporary
/// directory.
pub fn scratch_dir() -> &'static std::path::Path {
    SCRATCH.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("leadsync-tests-")
            .tempdir()
            .expect("a scratch directory")
            .keep();
        // SAFETY: registers a plain extern "C" function with no arguments; it runs at exit.
        unsafe { libc::atexit(remove_scratch_dir) };
        dir
    })
}

/// A fresh path in [`scratch_dir`] ending in `suffix`.
pub fn scratch_path(suffix: &str) -> std::path::PathBuf {
    scratch_dir().join(format!("{}{suffix}", uuid::Uuid::new_v4().simple()))
}

/// A `leadsync run` process. Dropping it kills it.
pub struct Daemon {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Starts `bin run` with `env` (see [`daemon_env`]); its output goes to a log file.
    /// Unless `env` names one, the daemon gets a pidfile of its own.
    pub fn start(bin: &str, env: &[(String, String)]) -> Daemon {
        let log = scratch_path(".log");
        let file = std::fs::File::create(&log).expect("daemon log file");
        let mut cmd = std::process::Command::new(bin);
        cmd.arg("run")
            .stdout(file.try_clone().expect("log file"))
            .stderr(file);
        for (k, _) in std::env::vars() {
            if k.starts_with("LEADSYNC_") {
                cmd.env_remove(k);
            }
        }
        if !env.iter().any(|(k, _)| k == "LEADSYNC_CONTROL__PIDFILE") {
            cmd.env("LEADSYNC_CONTROL__PIDFILE", scratch_path(".pid"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start leadsync");
        Daemon { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log after {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Waits until the daemon is in the failed state (it says so in its log) and checks
    /// that it stayed up; returns the log. Panics after `timeout`.
    pub async fn wait_failed(&mut self, timeout: std::time::Duration) -> String {
        self.wait_log(crate::failure::FAILED_STATE_LOG, timeout)
            .await;
        if let Some(status) = self.try_wait() {
            panic!("the failed daemon exited ({status}):\n{}", self.log());
        }
        self.log()
    }

    /// Whether the process has exited, and how.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for leadsync")
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` and waits (up to `timeout`) for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        timeout: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("leadsync log ({}):\n{}", self.log.display(), self.log());
        }
    }
}

impl TestDb {
    /// Waits until the slot has been acknowledged past everything written so far, i.e. the
    /// daemon processed it. Measured against the WAL insert position: with asynchronous
    /// commit (the throwaway clusters use it) the write position can lag a commit. Panics with `context` after `timeout`.
    pub async fn wait_caught_up(&self, timeout: std::time::Duration, context: &dyn Fn() -> String) {
        let client = self.client().await;
        let target: String = client
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .expect("current WAL position")
            .get(0);
        let target: crate::Lsn = target.parse().expect("an LSN");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let flushed: Option<String> = client
                .query_opt(
                    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await
                .expect("slot position")
                .and_then(|r| r.get(0));
            let streaming: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM leadsync.sync_state
                                    WHERE slot_name = $1 AND phase = 'streaming')",
                    &[&self.slot],
                )
                .await
                .expect("leadsync state")
                .get(0);
            if streaming
                && let Some(lsn) = flushed.and_then(|l| l.parse::<crate::Lsn>().ok())
                && lsn >= target
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not caught up with {target} after {timeout:?}; {}",
                context()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Caught up with everything written so far and with what the daemon's own writes lead
    /// to (a write-back to a contact, then the forward write it causes).
    pub async fn settle(&self, daemon: &Daemon) {
        for _ in 0..3 {
            self.wait_caught_up(std::time::Duration::from_secs(120), &|| daemon.log())
                .await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }

    /// Waits until the daemon has caught up, then until no dead letter waits for a re-read
    /// of its contact (the daemon files those re-reads itself), then until it has caught up
    /// again. Panics with the pending ones and `context`.
    pub async fn wait_rereads_done(
        &self,
        timeout: std::time::Duration,
        context: &dyn Fn() -> String,
    ) {
        self.wait_caught_up(timeout, context).await;
        let client = self.client().await;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let pending: Vec<String> = client
                .query(
                    "SELECT format('%s %s: %s', id, contact_id, error) FROM leadsync.dead_letters
                     WHERE status = 'pending' AND state_incomplete ORDER BY id",
                    &[],
                )
                .await
                .expect("dead letters")
                .iter()
                .map(|r| r.get(0))
                .collect();
            if pending.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dead letters still pending after {timeout:?}: {pending:#?}; {}",
                context()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.wait_caught_up(timeout, context).await;
    }

    /// Compares the owned target rows with the SQL projection of the source; panics with a
    /// report of every difference.
    pub async fn assert_projection(&self, settings: &Settings) {
        let mut client = self.client().await;
        let rules = crate::project::ProductRules::new(
            &settings.transform.product_rules,
            settings.transform.case_insensitive,
        );
        let report = crate::reconcile::reconcile(
            &mut client,
            &crate::reconcile::ReconcileOptions {
                source_schema: &settings.source.schema,
                target_schema: &settings.target.schema,
                rules: &rules,
                except_dead_letters: true,
            },
        )
        .await
        .expect("reconcile");
        report.assert_clean();
    }
}

impl TestDb {
    /// Waits until no session holds this database's slot: the walsender of a daemon that
    /// just exited can take a moment to go.
    pub async fn wait_slot_released(&self) {
        let client = self.client().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let active: bool = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await
                .expect("slot state")
                .is_some_and(|r| r.get(0));
            if !active {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "slot {} still active after 20 s",
                self.slot
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The target tables' foreign keys into legacy tables, one `table name definition
    /// validated` line each, in order.
    pub async fn legacy_foreign_keys(&self) -> Vec<String> {
        self.client()
            .await
            .query(
                "SELECT format('%s %s %s %s', conrelid::regclass, conname,
                               pg_get_constraintdef(oid), convalidated)
                 FROM pg_constraint
                 WHERE contype = 'f'
                   AND conrelid IN ('customers'::regclass, 'leads'::regclass,
                                    'appointments'::regclass,
                                    'customer_custom_fields'::regclass,
                                    'lead_custom_fields'::regclass,
                                    'appointment_custom_fields'::regclass)
                   AND confrelid IN ('workspaces'::regclass, 'custom_fields'::regclass,
                                     'auth.users'::regclass)
                 ORDER BY 1",
                &[],
            )
            .await
            .expect("read the target tables' foreign keys")
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// The workspace with the most contacts.
    pub async fn busiest_workspace(&self) -> uuid::Uuid {
        self.client()
            .await
            .query_one(
                "SELECT workspace_id FROM contacts GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
                &[],
            )
            .await
            .expect("read the busiest workspace")
            .get(0)
    }

    /// A fresh database with `contacts` generated contacts, `leadsync setup` done, and some
    /// fields given a lead or appointment context.
    pub async fn spawn_ready(contacts: u64) -> TestDb {
        let db = TestDb::spawn().await;
        db.make_ready(contacts).await;
        db
    }

    /// Generates `contacts` contacts here, runs `leadsync setup` and gives some fields a lead
    /// or appointment context.
    pub async fn make_ready(&self, contacts: u64) {
        let client = self.client().await;
        if contacts > 0 {
            crate::fixtures::generate_demo_data(&client, contacts)
                .await
                .expect("generate demo data");
        }
        crate::cmd::setup::run_setup(&self.settings())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        crate::fixtures::assign_demo_field_contexts(&client)
            .await
            .expect("assign field contexts");
    }
}

/// `daemon_env(db)` with the metrics served on a free loopback port, and that address.
pub fn daemon_env_with_metrics(db: &TestDb) -> (Vec<(String, String)>, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut env = daemon_env(db);
    env.retain(|(k, _)| k != "LEADSYNC_METRICS__LISTEN");
    env.push(("LEADSYNC_METRICS__LISTEN".into(), addr.to_string()));
    (env, addr)
}

/// Scrapes `/metrics` at `addr` (retrying while nothing listens yet, up to 30 s) and parses
/// it with [`parse_metrics`].
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse_metrics(&body)
}

/// `GET path` at `addr` (retrying while nothing listens yet, up to 30 s): the response's
/// head and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match crate::http::fetch(addr, path, std::time::Duration::from_secs(10)).await {
            Ok(response) => return response,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("GET {path} from {addr}: {e}"),
        }
    }
}

/// `name{labels}` (as written) → value, for every sample line of a Prometheus text scrape.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    let mut samples = std::collections::HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, rest) = match line.find('{') {
            // Label values are quoted and may hold spaces or braces: find the closing
            // brace outside quotes.
            Some(open) => {
                let (mut quoted, mut escaped, mut close) = (false, false, None);
                for (i, c) in line.char_indices().skip(open) {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => quoted = !quoted,
                        '}' if !quoted => {
                            close = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let close = close.unwrap_or_else(|| panic!("unclosed labels: {line}"));
                (&line[..=close], &line[close + 1..])
            }
            None => line
                .split_once(' ')
                .unwrap_or_else(|| panic!("no value: {line}")),
        };
        // An optional timestamp may follow the value.
        let value = rest.split_whitespace().next().unwrap_or_default();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        samples.insert(key.to_owned(), value);
    }
    samples
}

/// The databases of a benchmark: fresh clones of a template on one cluster, each dropped
/// with the slot and replication origin a daemon made in it.
pub struct Databases {
    pub port: u16,
    /// A superuser session on the cluster's `postgres` database.
    pub admin: Client,
}

impl Databases {
    /// URL of database `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Ends every session on `db` and waits (up to 10 s) until they are gone.
    pub async fn terminate(&self, db: &str) {
        self.admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .expect("terminate sessions");
        for _ in 0..200 {
            let n: i64 = self
                .admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
                    &[&db],
                )
                .await
                .expect("count sessions")
                .get(0);
            if n == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `name` as a fresh copy of `template`, then a checkpoint so that every run starts
    /// from the same state.
    pub async fn clone_from(&self, template: &str, name: &str) {
        self.terminate(template).await;
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name} TEMPLATE {template}"),
            "CHECKPOINT".to_owned(),
        ] {
            self.admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    /// Drops database `name`, and `slot` with its replication origin once no walsender
    /// holds it any more.
    pub async fn drop_clone(&self, name: &str, slot: Option<&str>) {
        self.terminate(name).await;
        if let Some(slot) = slot {
            for _ in 0..100 {
                let left: i64 = self
                    .admin
                    .query_one(
                        "SELECT count(pg_drop_replication_slot(slot_name))
                         FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                        &[&slot],
                    )
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                let exists: bool = self
                    .admin
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                        &[&slot],
                    )
                    .await
                    .expect("slot state")
                    .get(0);
                if left > 0 || !exists {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let _ = self
                .admin
                .execute(
                    "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin
                     WHERE roname = $1",
                    &[&slot],
                )
                .await;
        }
        self.admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop clone");
    }
}
