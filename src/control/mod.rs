//! Process control: signals become values on `watch` channels that the engine checks at
//! safe points (between source transactions), never in the middle of an apply.
//!
//! - SIGTERM / SIGINT: stop after the transaction in flight.
//! - SIGUSR1: pause (finish the transaction in flight, apply nothing more, keep the slot
//!   connection); SIGUSR2: resume. The pause is persisted, so a restart comes back paused.
//!
//! `leadsync ctl` sends these signals to the daemon that holds its pidfile ([`pidfile`]).

mod pidfile;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Set to `true` once the process should stop.
pub type Shutdown = watch::Receiver<bool>;

/// `Some(true)` after SIGUSR1, `Some(false)` after SIGUSR2; `None` until either arrives
/// (the persisted state applies).
pub type PauseRequests = watch::Receiver<Option<bool>>;

/// The receiving ends of the process's signals.
#[derive(Clone)]
pub struct Controls {
    pub shutdown: Shutdown,
    pub pause: PauseRequests,
}

impl Controls {
    /// Controls driven by nothing but the returned senders (tests, the demo).
    pub fn manual() -> (watch::Sender<bool>, watch::Sender<Option<bool>>, Controls) {
        let (stop, shutdown) = watch::channel(false);
        let (pause_tx, pause) = watch::channel(None);
        (stop, pause_tx, Controls { shutdown, pause })
    }
}

/// Installs the signal handlers.
pub fn from_signals() -> std::io::Result<Controls> {
    let (stop, shutdown) = watch::channel(false);
    let (pause_tx, pause) = watch::channel(None);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: stopping after the transaction in flight");
                    let _ = stop.send(true);
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping after the transaction in flight");
                    let _ = stop.send(true);
                }
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: pausing after the transaction in flight");
                    let _ = pause_tx.send(Some(true));
                }
                _ = usr2.recv() => {
                    tracing::info!("SIGUSR2: resuming");
                    let _ = pause_tx.send(Some(false));
                }
            }
        }
    });
    Ok(Controls { shutdown, pause })
}

pub use pidfile::{PidFile, PidFileError, Taken, pidfile, running_pid, signal_daemon};
