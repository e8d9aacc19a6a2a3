//! Process control: signals become values on `watch` channels that the engine checks at
//! safe points (between source transactions), never in the middle of an apply.
//!
//! - SIGTERM / SIGINT: stop after the transaction in flight.
//! - SIGUSR1: pause (finish the transaction in flight, apply nothing more, keep the slot
//!   connection); SIGUSR2: resume. The pause is persisted, so a restart comes back paused.
//!
//! `leadsync ctl` sends these signals to the pid in the daemon's pidfile.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::Settings;

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

/// Where the daemon writes its pid: `control.pidfile`, else `<tmp>/leadsync-<slot>.pid`.
pub fn pidfile(settings: &Settings) -> PathBuf {
    settings
        .control
        .pidfile
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("leadsync-{}.pid", settings.slot.name))
        })
}

/// Writes the pidfile; removed again when the guard drops.
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes our pid to `path`.
    pub fn create(path: &Path) -> std::io::Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The pid in `path`, if the file exists and the process is alive.
pub fn running_pid(path: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// Sends `signal` to the daemon whose pid is in `path`.
pub fn signal_daemon(path: &Path, signal: i32) -> Result<i32, String> {
    let pid = running_pid(path).ok_or_else(|| {
        format!(
            "no running leadsync found through the pidfile {} (set control.pidfile if the \
             daemon uses another one)",
            path.display()
        )
    })?;
    // SAFETY: kill(2) with a pid read from our own pidfile and a valid signal number.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(format!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(pid)
}
