//! A failure no retry fixes, as a sidecar lives with it.
//!
//! The daemon does not exit: an exit would restart the container, fail again, and end in
//! a crash loop that takes the application's pod out of its Service. It stays up in the
//! `failed` state instead, says why (log, `/status`, `ctl status`, `leadsync_failed`), and
//! records the failure in `leadsync.sync_state` while its session still holds the slot's
//! origin, so a standby that would take over reads the record and waits in the same state
//! instead of failing the same way.
//!
//! Every failed instance looks again every few seconds and starts over once nothing stands
//! in its way: the record was cleared (`leadsync ctl retry`, or any instance starting —
//! a restart is the other way to say "fixed"), or, for a failure of its own that could not
//! be recorded (a refused password), the database lets it in again.

use std::fmt;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::config::Settings;
use crate::db;

/// What the daemon logs as it enters the failed state.
pub const FAILED_STATE_LOG: &str = "leadsync stays up in the failed state";

/// A failure recorded for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub reason: String,
    pub at: DateTime<Utc>,
    /// The instance that failed: host name and pid.
    pub by: String,
}

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (recorded by {} at {})",
            self.reason,
            self.by,
            self.at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }
}

/// This instance, as records name it: `host name, pid N`.
pub fn this_instance() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    let host = if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown host".to_owned()
    };
    format!("{host}, pid {}", std::process::id())
}

/// The failure recorded for `slot`, if any.
pub async fn recorded(
    client: &Client,
    slot: &str,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT failure, failed_at, failed_by FROM leadsync.sync_state
             WHERE slot_name = $1 AND failure IS NOT NULL",
            &[&slot],
        )
        .await?;
    row.map(|r| from_row(&r)).transpose()
}

/// A record from a row of `failure, failed_at, failed_by`.
fn from_row(r: &tokio_postgres::Row) -> Result<Recorded, tokio_postgres::Error> {
    Ok(Recorded {
        reason: r.try_get(0)?,
        at: r
            .try_get::<_, Option<DateTime<Utc>>>(1)?
            .unwrap_or_default(),
        by: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
    })
}

/// Records `reason` as the slot's failure, by this instance.
pub async fn record(
    client: &Client,
    slot: &str,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE leadsync.sync_state
                SET failure = $2, failed_at = now(), failed_by = $3, updated_at = now()
              WHERE slot_name = $1",
            &[&slot, &reason, &this_instance()],
        )
        .await
        .map(drop)
}

/// Clears the slot's failure; the one that was recorded, if any.
pub async fn clear(client: &Client, slot: &str) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "UPDATE leadsync.sync_state s
                SET failure = NULL, failed_at = NULL, failed_by = NULL, updated_at = now()
               FROM (SELECT failure, failed_at, failed_by FROM leadsync.sync_state
                      WHERE slot_name = $1 FOR UPDATE) old
              WHERE s.slot_name = $1 AND old.failure IS NOT NULL
          RETURNING old.failure, old.failed_at, old.failed_by",
            &[&slot],
        )
        .await?;
    row.map(|r| from_row(&r)).transpose()
}

/// Whether a failed instance may start over: the database lets it in and no failure is
/// recorded for its slot.
pub async fn may_start_over(settings: &Settings) -> bool {
    let Ok(client) = db::connect(settings.source_url()).await else {
        return false;
    };
    matches!(recorded(&client, &settings.slot.name).await, Ok(None))
}
