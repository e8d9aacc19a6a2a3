//! A throwaway PostgreSQL cluster: `initdb` in a temporary directory, `wal_level = logical`,
//! a free loopback port, removed again on drop.
//!
//! The demo, the integration tests and the benchmarks all run against one of these, so
//! nobody needs a database server of their own. PostgreSQL refuses to run as root; when
//! leadsync runs as root (as CI does), the cluster's processes run as the `postgres` user.
//! A cluster whose owning process died without cleaning up (a `kill -9` of a test run) is
//! stopped and removed by the next [`TempCluster::start`].

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Prefix of the temporary directories, used to find stale clusters.
const DIR_PREFIX: &str = "leadsync-pg-";
/// File in the cluster directory holding the pid of the process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// How often a start is retried when the chosen port was taken in the meantime.
const PORT_ATTEMPTS: usize = 5;

/// Something went wrong while creating, starting or stopping a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found in {searched}; \
         install them (Debian: `apt-get install postgresql-15`) or set PG_BINDIR"
    )]
    NoBinaries { searched: String },
    #[error(
        "running as root, but there is no `postgres` user to run PostgreSQL as; install \
         Debian's postgresql package or run as an ordinary user"
    )]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Command { step: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How to configure a new cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `wal_level`: `logical` unless a test wants to see leadsync refuse something else.
    pub wal_level: String,
    /// `wal_sender_timeout`; short in tests so a stalled consumer is noticed quickly.
    pub wal_sender_timeout: Duration,
    /// `max_replication_slots` (and `max_wal_senders`).
    pub max_replication_slots: u32,
    /// Durability off (`fsync`, `synchronous_commit`, `full_page_writes`): fine for data
    /// that only lives as long as a test, and several times faster on a shared disk.
    pub durable: bool,
    /// Further `name = value` settings for `postgresql.conf`.
    pub settings: Vec<(String, String)>,
    /// `ssl = on` with these certificates; `None` for plain connections only.
    pub tls: Option<ClusterTls>,
}

/// The certificates of a cluster that accepts TLS connections.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// The server's certificate (PEM), followed by any intermediate ones.
    pub cert_pem: String,
    /// The server's private key (PEM).
    pub key_pem: String,
    /// CA certificates (PEM) whose client certificates the server accepts (`ssl_ca_file`).
    pub client_ca_pem: Option<String>,
    /// TCP connections must use TLS (`hostssl` in `pg_hba.conf`): plain ones are refused.
    pub required: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: "logical".into(),
            wal_sender_timeout: Duration::from_secs(60),
            max_replication_slots: 32,
            durable: false,
            settings: Vec::new(),
            tls: None,
        }
    }
}

/// A running throwaway cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct TempCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

impl TempCluster {
    /// Creates and starts a cluster. Blocks until it accepts connections.
    pub fn start(options: &ClusterOptions) -> Result<TempCluster, ClusterError> {
        let bindir = find_bindir()?;
        let run_as = postgres_identity()?;
        reap_stale_clusters(&bindir, run_as);

        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()?
            .keep();
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;

        let mut cluster = TempCluster {
            dir,
            bindir,
            port: 0,
            run_as,
        };
        cluster.init(options)?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            cluster.port = free_port()?;
            cluster.write_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| ClusterError::Command {
            step: "pg_ctl start".into(),
            detail: "no attempt made".into(),
        }))
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data in `data/`, server log in `server.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of the server's binaries (`pg_dump`, `psql`, …).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// A URL for `database` as the superuser `postgres` (trust authentication on loopback).
    pub fn url(&self, database: &str) -> String {
        self.url_as("postgres", database)
    }

    /// A URL for `database` as `user` (trust authentication on loopback).
    pub fn url_as(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Leaves the server running and its files in place after this value is gone (no later
    /// cluster reaps it): what to tell a user who keeps it.
    pub fn keep(self) -> KeptCluster {
        let _ = fs::remove_file(self.dir.join(OWNER_FILE));
        let this = std::mem::ManuallyDrop::new(self);
        let script = removal_script(&this.dir, &this.bindir, this.run_as.is_some());
        let _ = fs::write(this.dir.join(REMOVE_SCRIPT), script);
        KeptCluster {
            dir: this.dir.clone(),
            port: this.port,
        }
    }

    /// Stops the server: `mode` is `fast` (clean) or `immediate` (like a crash).
    pub fn stop(&self, mode: &str) -> Result<(), ClusterError> {
        self.pg_ctl(&["stop", "-w", "-t", "60", "-m", mode])
            .map(drop)
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        self.pg_ctl_start()
    }

    /// The server log so far, for test failure messages.
    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn init(&self, options: &ClusterOptions) -> Result<(), ClusterError> {
        let data = self.data_dir();
        let out = self.command("initdb", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]);
        })?;
        check(out, "initdb")?;
        let slots = options.max_replication_slots;
        let mut conf = format!(
            "\n# leadsync throwaway cluster\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             wal_level = {}\n\
             max_wal_senders = {}\n\
             max_replication_slots = {slots}\n\
             wal_sender_timeout = '{}ms'\n\
             max_connections = 200\n\
             timezone = 'UTC'\n\
             log_timezone = 'UTC'\n\
             logging_collector = off\n",
            self.dir.display(),
            options.wal_level,
            slots + 4,
            options.wal_sender_timeout.as_millis(),
        );
        if !options.durable {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        if let Some(tls) = &options.tls {
            conf.push_str(&self.write_tls(tls)?);
        }
        for (name, value) in &options.settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        let path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path)?;
        text.push_str(&conf);
        fs::write(&path, text)?;
        Ok(())
    }

    /// Writes the certificate files into the data directory (the key readable by the
    /// server's user only, as PostgreSQL insists) and, for `required`, turns every `host`
    /// line of `pg_hba.conf` into `hostssl`. Returns the `postgresql.conf` lines.
    fn write_tls(&self, tls: &ClusterTls) -> Result<String, ClusterError> {
        let data = self.data_dir();
        self.write_server_file(&data.join("server.crt"), &tls.cert_pem, 0o644)?;
        self.write_server_file(&data.join("server.key"), &tls.key_pem, 0o600)?;
        let mut conf =
            String::from("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        if let Some(ca) = &tls.client_ca_pem {
            self.write_server_file(&data.join("root.crt"), ca, 0o644)?;
            conf.push_str("ssl_ca_file = 'root.crt'\n");
        }
        if tls.required {
            let hba = data.join("pg_hba.conf");
            let text: String = fs::read_to_string(&hba)?
                .lines()
                .map(|line| match line.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{line}\n"),
                })
                .collect();
            fs::write(&hba, text)?;
        }
        Ok(conf)
    }

    fn write_server_file(
        &self,
        path: &Path,
        contents: &str,
        mode: u32,
    ) -> Result<(), ClusterError> {
        fs::write(path, contents)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    /// The port lives in its own include file so a retry can change it.
    fn write_port(&self) -> Result<(), ClusterError> {
        let conf = self.data_dir().join("postgresql.auto.conf");
        fs::write(&conf, format!("port = {}\n", self.port))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&conf, Some(uid), Some(gid))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log = self.dir.join("server.log");
        let log = log.to_string_lossy().into_owned();
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log])
            .map(drop)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, ClusterError> {
        let data = self.data_dir();
        let out = self.command("pg_ctl", |c| {
            c.arg("-D").arg(&data).args(args);
        })?;
        let step = format!("pg_ctl {}", args.first().copied().unwrap_or_default());
        let out = check(out, &step);
        out.map_err(|e| match e {
            ClusterError::Command { step, detail } => ClusterError::Command {
                step,
                detail: format!("{detail}\nserver log:\n{}", tail(&self.server_log(), 30)),
            },
            other => other,
        })
    }

    fn command(
        &self,
        program: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Output, ClusterError> {
        let mut cmd = Command::new(self.bindir.join(program));
        configure(&mut cmd);
        cmd.current_dir(&self.dir).env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        Ok(cmd.output()?)
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A cluster left running on purpose (see [`TempCluster::keep`]).
#[derive(Debug)]
pub struct KeptCluster {
    dir: PathBuf,
    port: u16,
}

impl KeptCluster {
    /// A URL for `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A short shell command that stops the server and deletes its files (through a script
    /// [`TempCluster::keep`] wrote into the cluster's directory).
    pub fn removal_command(&self) -> String {
        format!("sh {}", self.dir.join(REMOVE_SCRIPT).display())
    }
}

/// The script of a kept cluster that stops it and deletes its files.
const REMOVE_SCRIPT: &str = "remove.sh";

fn removal_script(dir: &Path, bindir: &Path, as_postgres: bool) -> String {
    let stop = format!(
        "'{}' -D '{}' stop -m fast",
        bindir.join("pg_ctl").display(),
        dir.join("data").display()
    );
    let stop = if as_postgres {
        format!("runuser -u postgres -- {stop}")
    } else {
        stop
    };
    format!(
        "#!/bin/sh\n# Stops this leadsync demo cluster and deletes its files.\n{stop} && rm -rf '{}'\n",
        dir.display()
    )
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn check(out: Output, step: &str) -> Result<Output, ClusterError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(ClusterError::Command {
            step: step.to_owned(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }
}

/// `PG_BINDIR`, else the newest `/usr/lib/postgresql/<major>/bin`, else `pg_config --bindir`.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if has_server(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::NoBinaries {
                searched: dir.display().to_string(),
            })
        };
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_server(dir))
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.pop() {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Ok(dir);
        }
    }
    Err(ClusterError::NoBinaries {
        searched: "PG_BINDIR, /usr/lib/postgresql/*/bin and pg_config --bindir".into(),
    })
}

/// When running as root, the uid and gid of `postgres`; otherwise `None` (run as ourselves).
fn postgres_identity() -> Result<Option<(u32, u32)>, ClusterError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer to static storage
    // or null; the fields are copied out before any other call could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(ClusterError::NoPostgresUser);
    }
    // SAFETY: non-null pointer returned by getpwnam just above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

fn free_port() -> Result<u16, ClusterError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Stops and removes clusters left behind by processes that no longer exist.
fn reap_stale_clusters(bindir: &Path, run_as: Option<(u32, u32)>) {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let Some(owner) = fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let stale = TempCluster {
            dir,
            bindir: bindir.to_owned(),
            port: 0,
            run_as,
        };
        drop(stale);
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission; it sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
