//! What the daemon is doing right now, shared between the engine (which writes it) and the
//! HTTP endpoints (which read it).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// The daemon's life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Connecting, reading the checkpoint.
    #[default]
    Starting,
    /// Waiting because another instance holds the slot.
    Standby,
    /// Loading existing rows (first run).
    Backfill,
    /// Applying changes from the slot.
    Streaming,
    /// Paused by the operator: the slot connection is kept, nothing is applied.
    Paused,
    /// The connection was lost; retrying with backoff.
    Reconnecting,
    /// Up but applying nothing after an error no retry fixes, until the operator's fix
    /// (`leadsync ctl retry` or a restart).
    Failed,
    /// Stopped on request.
    Stopped,
}

/// Progress of the first load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackfillProgress {
    pub table: String,
    pub done: u64,
    pub total: u64,
}

/// Counters since the process started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counters {
    pub changes: u64,
    pub transactions: u64,
    pub dead_letters: u64,
}

/// A snapshot of the daemon's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub state: State,
    pub slot: String,
    /// Every source change up to here is committed on the target or needed no write.
    pub processed_lsn: Option<String>,
    /// The source's WAL position when last sampled.
    pub source_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: f64,
    pub paused: bool,
    pub backfill: Option<BackfillProgress>,
    pub counters: Counters,
    /// Dead letters pending in the database (every source), when last sampled.
    pub dead_letters_pending: Option<u64>,
    /// The last error, as [`public_error`] shows it.
    pub last_error: Option<String>,
    /// Since when the daemon is failed (its reason is `last_error`).
    pub failed_since: Option<chrono::DateTime<chrono::Utc>>,
}

/// An error as `/status` shows it: `/status` is read over HTTP by whatever may reach the
/// metrics port, so the connection's identity (user, host, port, database) is replaced by
/// "the source database" and quoted names of the user and the database by `"…"`. Passwords
/// and row data never reach an error's text in the first place.
pub fn public_error(text: &str, url: Option<&str>) -> String {
    let Some(source) = url.and_then(|u| crate::db::parse_url(u).ok()) else {
        return text.to_owned();
    };
    let mut out = text.replace(
        &crate::db::describe_target(&source.config),
        "the source database",
    );
    let names = [source.config.get_user(), source.config.get_dbname()];
    for name in names.into_iter().flatten().filter(|n| !n.is_empty()) {
        out = out.replace(&format!("\"{name}\""), "\"…\"");
        out = out.replace(&format!("`{name}`"), "`…`");
    }
    out
}

/// The status, shared.
#[derive(Debug, Clone, Default)]
pub struct SharedStatus(Arc<RwLock<Status>>);

impl SharedStatus {
    /// A copy of the current status.
    pub fn get(&self) -> Status {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Changes the status in place.
    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        if let Ok(mut status) = self.0.write() {
            change(&mut status);
        }
    }

    /// Healthy: alive and not stopped on an error.
    pub fn healthy(&self) -> bool {
        self.get().state != State::Failed
    }

    /// Ready (for a sidecar's pod): in every state but stopping — a first load, a pause, a
    /// standby's wait and the failed state included. A sidecar never takes the
    /// application's pod out of its Service; a failure shows in `/healthz`, `/status` and
    /// `leadsync_failed`.
    pub fn ready(&self) -> bool {
        self.get().state != State::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_shown_over_http_do_not_name_the_connection() {
        let url = "postgres://leadsync_runtime:pw@db.internal:6432/crm";
        let text = "cannot connect to leadsync_runtime@db.internal:6432/crm: timed out; \
                    password authentication failed for user \"leadsync_runtime\"; \
                    database \"crm\" does not exist";
        let shown = public_error(text, Some(url));
        assert_eq!(
            shown,
            "cannot connect to the source database: timed out; password authentication failed \
             for user \"…\"; database \"…\" does not exist"
        );
        assert!(!shown.contains("db.internal") && !shown.contains("leadsync_runtime"));
        assert_eq!(public_error("x", None), "x");
    }
}
