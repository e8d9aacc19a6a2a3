//! `leadsync ctl`: pause, resume, retry and inspect the daemon.
//!
//! `pause` and `resume` signal the daemon that holds the pidfile on this host. `retry`
//! clears the failure recorded for the slot in the database, which every failed instance
//! (this host's and the standbys elsewhere) looks at every few seconds. `status` puts
//! together the local daemon's own view (its `/status`) and the slot's state in the
//! database.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::Settings;
use crate::control;
use crate::db;
use crate::failure;
use crate::status::State;

/// `ctl status` exit codes, for scripts (LSB init scripts use 0 and 3 the same way).
pub mod exit {
    /// The daemon runs and applies changes (or waits as a standby).
    pub const RUNNING: u8 = 0;
    /// The state cannot be read.
    pub const UNKNOWN: u8 = 1;
    /// The daemon runs but is paused.
    pub const PAUSED: u8 = 2;
    /// No daemon runs on this host (for this pidfile).
    pub const NOT_RUNNING: u8 = 3;
    /// The daemon runs in the failed state: it waits for a fix.
    pub const FAILED: u8 = 4;
}

/// What `ctl status` found.
#[derive(Debug, Default)]
pub struct CtlStatus {
    pub pid: Option<i32>,
    /// The local daemon's state, from its `/status`, when reachable.
    pub state: Option<State>,
    pub last_error: Option<String>,
    /// The slot's row in the database, when readable.
    pub phase: Option<String>,
    pub paused: bool,
    pub failure: Option<failure::Recorded>,
    pub acknowledged: Option<String>,
    pub source_lsn: Option<String>,
    pub behind_bytes: Option<i64>,
    /// Why the database could not be read.
    pub database_error: Option<String>,
}

impl CtlStatus {
    /// The exit code for this status (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        if self.pid.is_none() {
            return exit::NOT_RUNNING;
        }
        match self.state {
            Some(State::Failed) => exit::FAILED,
            Some(State::Paused) => exit::PAUSED,
            Some(_) => exit::RUNNING,
            // The daemon's own view is out of reach: the database's.
            None if self.failure.is_some() => exit::FAILED,
            None if self.phase.is_none() => exit::UNKNOWN,
            None if self.paused => exit::PAUSED,
            None => exit::RUNNING,
        }
    }

    /// The human report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let daemon = match (self.pid, self.state) {
            (None, _) => "not running (no live pid in the pidfile)".to_owned(),
            (Some(pid), Some(state)) => format!("{}, pid {pid}", state_word(state)),
            (Some(pid), None) => format!("running, pid {pid}"),
        };
        let _ = writeln!(out, "daemon: {daemon}");
        if self.state == Some(State::Failed)
            && let Some(error) = &self.last_error
        {
            let _ = writeln!(out, "failed: {error}");
        }
        if let Some(phase) = &self.phase {
            let _ = writeln!(
                out,
                "phase: {phase}{}",
                if self.paused { " (paused)" } else { "" }
            );
            let _ = writeln!(
                out,
                "slot acknowledged up to: {} (source at {}, {} bytes behind)",
                self.acknowledged.as_deref().unwrap_or("-"),
                self.source_lsn.as_deref().unwrap_or("-"),
                self.behind_bytes.map_or("-".into(), |b| b.to_string())
            );
        }
        if let Some(failure) = &self.failure {
            let _ = writeln!(out, "recorded failure: {failure}");
        }
        if self.state == Some(State::Failed) || self.failure.is_some() {
            let _ = writeln!(
                out,
                "once the cause is fixed: `leadsync ctl retry` (or restart the daemon)"
            );
        }
        if let Some(error) = &self.database_error {
            let _ = writeln!(out, "database: {error}");
        }
        out
    }
}

fn state_word(state: State) -> &'static str {
    match state {
        State::Starting => "starting",
        State::Standby => "running as a standby",
        State::Backfill => "running the first load",
        State::Streaming => "running",
        State::Paused => "running, paused",
        State::Reconnecting => "running, reconnecting",
        State::Failed => "FAILED (up, applying nothing)",
        State::Stopped => "stopping",
    }
}

/// Reads the local daemon's `/status` and the slot's row.
pub async fn status(settings: &Settings) -> CtlStatus {
    let mut found = CtlStatus {
        pid: control::running_pid(&control::pidfile(settings)),
        ..CtlStatus::default()
    };
    if found.pid.is_some()
        && let Some(addr) = local_http(settings)
        && let Ok((head, body)) = crate::http::fetch(addr, "/status", Duration::from_secs(2)).await
        && head.starts_with("HTTP/1.1 200")
        && let Ok(json) = serde_json::from_str::<serde_json::Value>(&body)
    {
        found.state = serde_json::from_value(json["state"].clone()).ok();
        found.last_error = json["last_error"].as_str().map(str::to_owned);
    }
    match read_database(settings, &mut found).await {
        Ok(()) => {}
        Err(e) => found.database_error = Some(e),
    }
    found
}

/// Where this host's daemon answers HTTP, if `metrics.listen` names a fixed port.
pub fn local_http(settings: &Settings) -> Option<std::net::SocketAddr> {
    let mut addr = settings.metrics_addr().ok()?;
    if addr.port() == 0 {
        return None;
    }
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(addr)
}

async fn read_database(settings: &Settings, found: &mut CtlStatus) -> Result<(), String> {
    let client = db::connect(settings.source_url())
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_opt(
            "SELECT s.phase, s.paused, r.confirmed_flush_lsn::text,
                    pg_current_wal_insert_lsn()::text,
                    pg_wal_lsn_diff(pg_current_wal_insert_lsn(), r.confirmed_flush_lsn)::bigint
             FROM leadsync.sync_state s
             LEFT JOIN pg_replication_slots r ON r.slot_name = s.slot_name
             WHERE s.slot_name = $1",
            &[&settings.slot.name],
        )
        .await
        .map_err(|e| db::error_text(&e))?;
    let Some(row) = row else {
        return Err(format!(
            "no state for slot `{}`: run `leadsync setup`",
            settings.slot.name
        ));
    };
    let read = |e: tokio_postgres::Error| db::error_text(&e);
    found.phase = Some(row.try_get(0).map_err(read)?);
    found.paused = row.try_get(1).map_err(read)?;
    found.acknowledged = row.try_get(2).map_err(read)?;
    found.source_lsn = Some(row.try_get(3).map_err(read)?);
    found.behind_bytes = row.try_get(4).map_err(read)?;
    found.failure = failure::recorded(&client, &settings.slot.name)
        .await
        .map_err(|e| db::error_text(&e))?;
    Ok(())
}

/// Clears the slot's recorded failure: every failed instance starts over within seconds.
/// What it says.
pub async fn retry(settings: &Settings) -> anyhow::Result<String> {
    let client = db::connect(settings.source_url()).await?;
    let cleared = failure::clear(&client, &settings.slot.name)
        .await
        .map_err(|e| anyhow::anyhow!("clearing the recorded failure: {}", db::error_text(&e)))?;
    Ok(match cleared {
        Some(failure) => format!(
            "cleared the failure recorded for slot `{}`: {failure}\nfailed instances start \
             over within {} seconds",
            settings.slot.name,
            crate::cmd::run::FAILED_POLL.as_secs()
        ),
        None => format!(
            "no failure is recorded for slot `{}`; a failed instance that could not record \
             its failure (a refused connection) starts over once the database lets it in",
            settings.slot.name
        ),
    })
}
