//! `leadsync cutover`: the go/no-go before switching the application to the new tables.
//!
//! It reads the source's WAL insert position, waits (printing the bytes still to go every
//! second) until the daemon's slot has been acknowledged past it — the daemon acknowledges
//! only what it has committed on the target, so everything written before the cutover began
//! is then in the new tables — and runs the validation of [`super::validate`]. GO needs all
//! three: the daemon caught up in time, validation passed, and no dead letter is pending.
//!
//! Cutover does not pause the daemon; the report names the next step.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::validate::{self, SlotWait, ValidateError, Validation};
use crate::config::Settings;
use crate::db;

/// Default of `--timeout`: how long the daemon may take to catch up, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// How often progress is reported while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the operator does after a GO.
pub const NEXT_STEP: &str = "pause the daemon with `leadsync ctl pause` (SIGUSR1) before \
                             switching the application";

/// Options of `leadsync cutover`.
#[derive(Debug, Clone, Copy)]
pub struct CutoverOptions {
    /// How long the daemon may take to pass the cutover position.
    pub timeout: Duration,
    /// How long validation may wait for the daemon when a comparison differs.
    pub validate_wait: Duration,
}

impl Default for CutoverOptions {
    fn default() -> Self {
        CutoverOptions {
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            validate_wait: Duration::from_secs(validate::DEFAULT_WAIT_SECONDS),
        }
    }
}

/// The go/no-go report.
#[derive(Debug, Clone, Serialize)]
pub struct CutoverReport {
    /// Whether the application may be switched.
    pub go: bool,
    /// The wait for the daemon to pass the position read at the start.
    pub catch_up: SlotWait,
    /// The validation (absent when the daemon did not catch up: it would compare a target
    /// known to be behind).
    pub validation: Option<Validation>,
    pub pending_dead_letters: i64,
    /// Why it is NO-GO (empty for GO).
    pub reasons: Vec<String>,
    /// What to do next.
    pub next_step: String,
    /// Wall time of the whole cutover check, in seconds.
    pub seconds: f64,
}

impl fmt::Display for CutoverReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.catch_up;
        if w.caught_up {
            writeln!(
                f,
                "daemon caught up: slot at {} passed {} in {:.1}s",
                w.reached, w.target, w.seconds
            )?;
        } else {
            writeln!(
                f,
                "daemon NOT caught up: slot at {} is {} bytes short of {} after {:.1}s",
                w.reached, w.remaining_bytes, w.target, w.seconds
            )?;
        }
        if let Some(v) = &self.validation {
            write!(f, "{}", v.render())?;
        }
        writeln!(f, "pending dead letters: {}", self.pending_dead_letters)?;
        if self.go {
            writeln!(f, "GO. Next: {}", self.next_step)
        } else {
            writeln!(f, "NO-GO:")?;
            for r in &self.reasons {
                writeln!(f, "  - {r}")?;
            }
            writeln!(f, "Next: {}", self.next_step)
        }
    }
}

/// Runs `leadsync cutover`. `progress` hears a line every second while the daemon catches
/// up (the binary prints it; with `--json` on stderr).
pub async fn run_cutover(
    settings: &Settings,
    opts: CutoverOptions,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<CutoverReport, ValidateError> {
    let started = Instant::now();
    let mut client = db::connect(settings.source_url()).await?;
    let target = validate::current_insert_lsn(&client).await?;
    progress(format!(
        "cutover position {target}: waiting for the daemon (slot `{}`) to pass it",
        settings.slot.name
    ));
    let catch_up = validate::wait_for_slot(
        &client,
        &settings.slot.name,
        target,
        opts.timeout,
        Some(PROGRESS_EVERY),
        &mut |w: &SlotWait| {
            progress(format!(
                "{} bytes to go (slot at {}, {:.0}s)",
                w.remaining_bytes, w.reached, w.seconds
            ))
        },
    )
    .await?;
    let mut reasons = Vec::new();
    let validation = if catch_up.caught_up {
        progress("caught up; validating".to_owned());
        let v = validate::validate(&mut client, settings, opts.validate_wait).await?;
        if !v.passed {
            reasons.push(format!(
                "validation failed: {}; repair with `leadsync resync` and run cutover again",
                v.failures().join(", ")
            ));
        }
        Some(v)
    } else {
        reasons.push(format!(
            "the daemon did not catch up within {} s ({} bytes to go): check that `leadsync \
             run` is running and not paused, look at leadsync_lag_bytes, and run cutover again \
             (or raise --timeout)",
            opts.timeout.as_secs(),
            catch_up.remaining_bytes
        ));
        None
    };
    let pending_dead_letters = match &validation {
        Some(v) => v.pending_dead_letters,
        None => validate::pending_dead_letters(&client).await?,
    };
    if pending_dead_letters > 0 {
        reasons.push(format!(
            "{pending_dead_letters} pending dead letter(s): see `leadsync dlq list`, fix the \
             source data and `leadsync dlq retry`"
        ));
    }
    let go = reasons.is_empty();
    Ok(CutoverReport {
        go,
        catch_up,
        validation,
        pending_dead_letters,
        reasons,
        next_step: if go {
            NEXT_STEP.to_owned()
        } else {
            "resolve the reasons above and run `leadsync cutover` again; do not switch the \
             application yet"
                .to_owned()
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}
