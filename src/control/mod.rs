//! Process control: signals become values on `watch` channels that the engine checks at
//! safe points (between source transactions), never in the middle of an apply.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Set to `true` once the process should stop.
pub type Shutdown = watch::Receiver<bool>;

/// Turns SIGTERM and SIGINT into a shutdown request. A second signal while stopping is
/// ignored: the engine finishes or rolls back its transaction either way.
pub fn shutdown_on_signals() -> std::io::Result<Shutdown> {
    let (tx, rx) = watch::channel(false);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping after the transaction in flight"),
            _ = int.recv() => tracing::info!("SIGINT: stopping after the transaction in flight"),
        }
        let _ = tx.send(true);
        // Keep the handlers installed so further signals do not kill the process.
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    });
    Ok(rx)
}
