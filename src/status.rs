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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackfillProgress {
    /// When the load took its snapshot: nothing written since is applied until it commits.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// What it does now: `copying <table>`, `rebuilding indexes`, `adding back keys`,
    /// `committing`.
    pub step: String,
    /// Source rows read and to read, per target table.
    pub tables: Vec<TableProgress>,
    pub rows_done: u64,
    pub rows_total: u64,
    pub percent: f64,
    /// At the rate so far; `None` until a rate is known.
    pub eta_seconds: Option<u64>,
}

/// Rows of one target table in the first load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TableProgress {
    pub table: String,
    pub done: u64,
    pub total: u64,
}

impl BackfillProgress {
    /// A load that starts now, with `totals` rows to read per table.
    pub fn new(totals: &[(&str, u64)]) -> BackfillProgress {
        let mut progress = BackfillProgress {
            started_at: chrono::Utc::now(),
            step: "counting rows".into(),
            tables: totals
                .iter()
                .map(|(table, total)| TableProgress {
                    table: (*table).to_owned(),
                    done: 0,
                    total: *total,
                })
                .collect(),
            ..BackfillProgress::default()
        };
        progress.recount(chrono::Utc::now());
        progress
    }

    /// Records `done` rows of `table` read, as of `now`.
    pub fn advance(&mut self, table: &str, done: u64, now: chrono::DateTime<chrono::Utc>) {
        if let Some(t) = self.tables.iter_mut().find(|t| t.table == table) {
            t.done = done.min(t.total.max(done));
        }
        self.step = format!("copying {table}");
        self.recount(now);
    }

    /// The totals, the percentage and the estimate from the tables' figures.
    fn recount(&mut self, now: chrono::DateTime<chrono::Utc>) {
        self.rows_done = self.tables.iter().map(|t| t.done).sum();
        self.rows_total = self.tables.iter().map(|t| t.total).sum();
        self.percent = if self.rows_total == 0 {
            100.0
        } else {
            (self.rows_done as f64 * 100.0 / self.rows_total as f64).min(100.0)
        };
        let seconds = (now - self.started_at).as_seconds_f64();
        self.eta_seconds = (self.rows_done > 0 && seconds > 0.0).then(|| {
            let rate = self.rows_done as f64 / seconds;
            (self.rows_total.saturating_sub(self.rows_done) as f64 / rate).round() as u64
        });
    }
}

/// Counters since the process started.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    pub changes: u64,
    pub transactions: u64,
    pub dead_letters: u64,
}

/// A snapshot of the daemon's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    fn load_progress_adds_up_the_tables_and_estimates_from_the_rate() {
        let mut p = BackfillProgress::new(&[("customers", 1000), ("leads", 600)]);
        assert_eq!((p.rows_done, p.rows_total, p.percent), (0, 1600, 0.0));
        assert_eq!(p.eta_seconds, None);
        let later = p.started_at + chrono::Duration::seconds(10);
        p.advance("customers", 400, later);
        assert_eq!((p.rows_done, p.rows_total), (400, 1600));
        assert_eq!(p.percent, 25.0);
        // 40 rows a second, 1200 to go.
        assert_eq!(p.eta_seconds, Some(30));
        assert_eq!(p.step, "copying customers");
        p.advance("customers", 1000, later);
        p.advance("leads", 600, later);
        assert_eq!((p.percent, p.eta_seconds), (100.0, Some(0)));
        assert_eq!(BackfillProgress::new(&[]).percent, 100.0);
    }

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
