//! `leadsync run`: the daemon. The first run creates the slot with an exported snapshot,
//! loads every existing legacy row from that snapshot and commits it with the checkpoint at
//! the slot's start; every run then streams from the checkpoint.
//!
//! The stream loop keeps one rule: the processed LSN (what the slot is acknowledged up to)
//! only moves past a source transaction once its writes have committed, or when nothing is
//! in flight and the server's keepalive says the WAL ends further on. Connection losses
//! reconnect with backoff and resume from the checkpoint.

use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDateTime, Utc};
use futures_util::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio_postgres::Client;

use crate::Lsn;
use crate::apply::{Applier, ApplyError, WriteBack};
use crate::backfill;
use crate::config::Settings;
use crate::control::{Controls, Shutdown};
use crate::db;
use crate::decode::{DecodeError, LogicalMessage, decode_message};
use crate::error::ErrorKind;
use crate::metrics as m;
use crate::project::change::Stamped;
use crate::project::plan::DeadLetter;
use crate::resync::Resync;
use crate::source::convert::{ConvertError, Converter, CustomerEdit, SourceEvent};
use crate::source::{self, SourceError, query_error};
use crate::status::{SharedStatus, State, public_error};
use crate::triggers;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the stream may sit idle before a heartbeat moves the slot forward.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// How often resolved dead letters past `dlq.retention_days` are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often a standby tries to take over.
const STANDBY_RETRY: Duration = Duration::from_secs(2);
/// A session that ran this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("malformed replication message: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Convert(ConvertError),
    #[error("{0}")]
    NotSetUp(String),
    #[error("the replication stream ended unexpectedly")]
    StreamEnded,
    /// Asked to stop in the middle of the first load: rolled back, started again by the next
    /// run.
    #[error("stopped during the first load; the next run starts it again")]
    Interrupted,
    /// Another instance failed on this slot and recorded why: this one does not take over
    /// to fail the same way.
    #[error("another leadsync failed on this slot and waits for a fix: {0}")]
    PeerFailed(crate::failure::Recorded),
}

impl RunError {
    /// What the daemon does about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Apply(e) => match e.kind() {
                // A bad row that escaped the per-row isolation is not retryable as is.
                ErrorKind::BadRow => ErrorKind::Fatal,
                kind => kind,
            },
            RunError::Source(e) => e.kind(),
            RunError::StreamEnded | RunError::Interrupted => ErrorKind::Transient,
            RunError::Decode(_)
            | RunError::Convert(_)
            | RunError::NotSetUp(_)
            | RunError::PeerFailed(_) => ErrorKind::Fatal,
        }
    }
}

/// How often a failed daemon looks whether it may start over.
pub(crate) const FAILED_POLL: Duration = Duration::from_secs(5);

/// The daemon as `leadsync run` runs it: [`run`] until shutdown, and on a failure no retry
/// fixes, the failed state instead of an exit (see [`crate::failure`]): up, ready, saying
/// why, and starting over once the failure is cleared. Returns the failure only when asked
/// to stop while failed.
pub async fn run_until_stopped(
    settings: &Settings,
    mut controls: Controls,
    status: SharedStatus,
) -> Result<(), RunError> {
    clear_failure_at_start(settings).await;
    let url = Some(secrecy::ExposeSecret::expose_secret(settings.source_url()));
    loop {
        let failure = match run(settings, controls.clone(), status.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let reason = public_error(&failure.to_string(), url);
        metrics::gauge!(m::FAILED).set(1.0);
        status.update(|s| {
            s.state = State::Failed;
            s.last_error = Some(reason.clone());
            s.failed_since = Some(Utc::now());
        });
        tracing::error!(
            "{failure}. {} (the application is not held back) until `leadsync ctl retry` or \
             a restart",
            crate::failure::FAILED_STATE_LOG
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FAILED_POLL) => {}
                _ = controls.shutdown.changed() => {
                    status.update(|s| s.state = State::Stopped);
                    return Err(failure);
                }
            }
            if crate::failure::may_start_over(settings).await {
                break;
            }
        }
        tracing::info!("the failure is cleared: starting over");
        metrics::gauge!(m::FAILED).set(0.0);
        status.update(|s| s.failed_since = None);
    }
}

/// A process that starts is the operator's other way to say "fixed": a failure recorded
/// for the slot (by this instance's predecessor or another one) is cleared and logged.
async fn clear_failure_at_start(settings: &Settings) {
    let Ok(client) = db::connect(settings.source_url()).await else {
        return;
    };
    if let Ok(Some(cleared)) = crate::failure::clear(&client, &settings.slot.name).await {
        tracing::warn!("starting over after the failure recorded for this slot: {cleared}");
    }
}

/// Runs the daemon until shutdown or a fatal error.
pub async fn run(
    settings: &Settings,
    mut controls: Controls,
    status: SharedStatus,
) -> Result<(), RunError> {
    status.update(|s| s.slot = settings.slot.name.clone());
    let url = Some(secrecy::ExposeSecret::expose_secret(settings.source_url()));
    let mut backoff = Duration::from_secs(1);
    let mut standby_logged = false;
    loop {
        let started = Instant::now();
        match session(settings, &mut controls, &status).await {
            Ok(()) => {
                status.update(|s| s.state = State::Stopped);
                return Ok(());
            }
            Err(RunError::Interrupted) => {
                tracing::info!("{}", RunError::Interrupted);
                status.update(|s| s.state = State::Stopped);
                return Ok(());
            }
            Err(RunError::Apply(ApplyError::Locked { detail, .. })) => {
                // Another instance is active: wait as a standby and take over as soon as
                // its origin binding goes away (with its session).
                if !standby_logged {
                    tracing::info!(%detail, "another leadsync is active on this slot; waiting as a standby");
                    standby_logged = true;
                }
                status.update(|s| s.state = State::Standby);
                metrics::gauge!(m::STANDBY).set(1.0);
                tokio::select! {
                    _ = tokio::time::sleep(STANDBY_RETRY) => {}
                    _ = controls.shutdown.changed() => {
                        status.update(|s| s.state = State::Stopped);
                        return Ok(());
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Transient => {
                metrics::counter!(m::ERRORS_TOTAL, m::KIND => e.kind().label()).increment(1);
                if started.elapsed() > HEALTHY_SESSION {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %e, retry_in = ?backoff, "retrying from the checkpoint (or the first load, if none)");
                status.update(|s| {
                    s.state = State::Reconnecting;
                    s.last_error = Some(public_error(&e.to_string(), url));
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = controls.shutdown.changed() => {
                        status.update(|s| s.state = State::Stopped);
                        return Ok(());
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                metrics::counter!(m::ERRORS_TOTAL, m::KIND => e.kind().label()).increment(1);
                status.update(|s| {
                    s.state = State::Failed;
                    s.last_error = Some(public_error(&e.to_string(), url));
                });
                return Err(e);
            }
        }
    }
}

/// One connected session: (first load,) then stream until shutdown or error.
async fn session(
    settings: &Settings,
    controls: &mut Controls,
    status: &SharedStatus,
) -> Result<(), RunError> {
    status.update(|s| s.state = State::Starting);
    let mut applier = Applier::connect(settings).await?;
    // The origin is bound: an instance that failed recorded it before it let go.
    match crate::failure::recorded(applier.client(), &settings.slot.name).await {
        Ok(Some(failed)) => return Err(RunError::PeerFailed(failed)),
        Ok(None) => {}
        Err(e) if e.code().map(|c| c.code()) == Some("42703") => {
            return Err(RunError::NotSetUp(
                "leadsync's schema was made by an older `leadsync setup`: run `leadsync \
                 setup` again (it only adds what is missing)"
                    .into(),
            ));
        }
        Err(e) => return Err(query_error("reading leadsync's state")(e).into()),
    }
    let result = session_bound(settings, controls, status, &mut applier).await;
    if let Err(e) = &result
        && e.kind() == ErrorKind::Fatal
    {
        // Recorded while this session still holds the origin: a standby taking over next
        // finds the record.
        let _ = applier.rollback().await;
        let reason = public_error(
            &e.to_string(),
            Some(secrecy::ExposeSecret::expose_secret(settings.source_url())),
        );
        if let Err(why) =
            crate::failure::record(applier.client(), &settings.slot.name, &reason).await
        {
            tracing::warn!(error = %db::error_text(&why), "the failure could not be recorded for the standbys");
        }
    }
    result
}

/// A session with the origin bound: (first load,) then stream until shutdown or error.
async fn session_bound(
    settings: &Settings,
    controls: &mut Controls,
    status: &SharedStatus,
    applier: &mut Applier,
) -> Result<(), RunError> {
    warn_sync_triggers(applier.client(), settings).await;
    warn_replica_identity(applier.client(), settings).await;
    metrics::gauge!(m::STANDBY).set(0.0);
    let (phase, paused_since) = read_phase(applier.client(), &settings.slot.name).await?;
    let paused = paused_since.is_some();
    let slot = source::slot_status(applier.client(), &settings.slot.name).await?;
    if slot.wal_status.as_deref() == Some("lost") {
        return Err(SourceError::SlotInvalidated {
            slot: settings.slot.name.clone(),
        }
        .into());
    }
    let client = match (phase.as_str(), slot.exists) {
        ("streaming", true) => {
            let start = applier.checkpoint().await?;
            tracing::info!(slot = %settings.slot.name, checkpoint = %start, "resuming the stream");
            let mut client = source::open_stream(settings, start).await?;
            client.wait_started().await.map_err(SourceError::from)?;
            client
        }
        ("streaming", false) => {
            return Err(SourceError::SlotLost {
                slot: settings.slot.name.clone(),
            }
            .into());
        }
        (_, exists) => {
            if exists {
                // A first load that did not finish: its snapshot died with it.
                tracing::warn!(slot = %settings.slot.name, "an unfinished first load left its slot behind; starting the load again");
                source::drop_slot(applier.client(), &settings.slot.name).await?;
            }
            status.update(|s| s.state = State::Backfill);
            first_load(settings, applier, &controls.shutdown, status).await?
        }
    };
    // After a first load the target is current as of its snapshot until the stream has
    // caught up with what was written meanwhile.
    let mut current_as_of = None;
    status.update(|s| {
        current_as_of = s.backfill.take().map(|b| b.started_at.naive_utc());
    });
    let resync = Resync::connect(settings).await?;
    // What the first load parked is counted already (when it committed).
    let dead_letters_seen = applier.stats.dead_letters;
    let mut stream = Stream {
        settings,
        applier,
        resync,
        client,
        converter: Converter::new(&settings.source.schema, &settings.target.schema),
        processed: Lsn::ZERO,
        txn: None,
        pending: None,
        peeked: None,
        status: status.clone(),
        paused,
        paused_since,
        changes: Vec::new(),
        dead_letters_seen,
        oldest_unapplied: None,
        current_as_of,
        last_heartbeat: Instant::now(),
        last_purge: None,
    };
    metrics::gauge!(m::PAUSED).set(if paused { 1.0 } else { 0.0 });
    status.update(|s| {
        s.paused = paused;
        s.state = if paused {
            State::Paused
        } else {
            State::Streaming
        }
    });
    stream.report_lag();
    let result = stream.run(controls).await;
    if result.is_err() {
        let _ = stream.applier.rollback().await;
    }
    stream.client.stop();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.client.shutdown()).await;
    result
}

/// Sync triggers left on the legacy or target tables loop with leadsync; `setup` refuses
/// them, but they can be installed after it. Warn and go on: a catalog that cannot be read
/// here is no reason to stop.
async fn warn_sync_triggers(client: &Client, settings: &Settings) {
    match triggers::sync_triggers(client, settings).await {
        Ok(found) if !found.is_empty() => tracing::warn!(
            triggers = %found.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", "),
            drop = %found.iter().map(|t| t.drop_sql.as_str()).collect::<Vec<_>>().join(" "),
            "triggers that write customers or contacts are installed and will loop with \
             leadsync; drop them"
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!(
            error = %db::error_text(&e),
            "could not read the triggers on the legacy and target tables"
        ),
    }
}

/// Reverse sync tells which columns a customer edit changed from the old row the stream
/// carries with `REPLICA IDENTITY FULL` (which `setup` sets); without it every column that
/// differs from leadsync's state counts as changed.
async fn warn_replica_identity(client: &Client, settings: &Settings) {
    if !settings.sync.reverse {
        return;
    }
    let customers = format!("{}.customers", db::quote_ident(&settings.target.schema));
    let full = client
        .query_one(
            "SELECT relreplident = 'f' FROM pg_class WHERE oid = $1::text::regclass",
            &[&customers],
        )
        .await
        .map(|r| r.get::<_, bool>(0));
    if let Ok(false) = full {
        tracing::warn!(
            table = %customers,
            "customers is not REPLICA IDENTITY FULL: reverse sync cannot tell which columns a customer edit changed and writes back every one that differs from leadsync's state; run `leadsync setup` to set it"
        );
    }
}

/// The phase, and since when the daemon is paused if it is.
async fn read_phase(
    client: &Client,
    slot: &str,
) -> Result<(String, Option<NaiveDateTime>), RunError> {
    let not_set_up = || {
        RunError::NotSetUp(format!(
            "leadsync's state for slot `{slot}` is missing: run `leadsync setup` first"
        ))
    };
    let row = client
        .query_opt(
            "SELECT phase, CASE WHEN paused THEN (updated_at AT TIME ZONE 'UTC') END
             FROM leadsync.sync_state WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| match e.code().map(|c| c.code()) {
            Some("42P01") | Some("3F000") => not_set_up(),
            _ => query_error("reading leadsync's state")(e).into(),
        })?;
    row.map(|r| (r.get(0), r.get(1))).ok_or_else(not_set_up)
}

/// First run: slot + snapshot, every legacy row projected, committed with the checkpoint at
/// the slot's consistent point. Returns the gated session, started.
async fn first_load(
    settings: &Settings,
    applier: &mut Applier,
    shutdown: &Shutdown,
    status: &SharedStatus,
) -> Result<ReplicationClient, RunError> {
    applier
        .client()
        .execute(
            "UPDATE leadsync.sync_state SET phase = 'backfill', backfill_started_at = now(),
                    updated_at = now() WHERE slot_name = $1",
            &[&settings.slot.name],
        )
        .await
        .map_err(query_error("recording the phase"))?;
    if settings.target.defer_legacy_foreign_keys {
        let set_aside =
            backfill::foreign_keys::set_aside(applier.client(), settings, shutdown).await?;
        match set_aside {
            None => return Err(RunError::Interrupted),
            Some(keys) => tracing::info!(
                keys,
                "foreign keys into legacy tables set aside for the first load; it adds them back, validated, when it commits"
            ),
        }
    }
    let loaded = load_from_new_slot(settings, applier, shutdown, status).await;
    if loaded.is_err() {
        status.update(|s| s.backfill = None);
        // Until the next load, the target tables get their keys back if the session still
        // works and the legacy tables are free; otherwise the keys stay recorded for it.
        let _ = applier.rollback().await;
        let restored = backfill::foreign_keys::restore_unfinished(
            applier.client(),
            settings,
            backfill::foreign_keys::LockWait::Once,
        )
        .await;
        if let Err(e) = restored {
            tracing::warn!(error = %e, "the foreign keys set aside for the failed first load stay recorded; the next first load adds them back");
        }
    }
    loaded
}

/// The first load proper: slot, snapshot, load, commit with the checkpoint.
async fn load_from_new_slot(
    settings: &Settings,
    applier: &mut Applier,
    shutdown: &Shutdown,
    status: &SharedStatus,
) -> Result<ReplicationClient, RunError> {
    let created = source::create_slot(settings).await?;
    tracing::info!(
        slot = %settings.slot.name,
        consistent_point = %created.consistent_point,
        "slot created; loading existing rows from its snapshot"
    );
    // Both sessions import the snapshot before the replication session does anything else
    // (any command there would end the export).
    applier.begin_in_snapshot(&created.snapshot).await?;
    let reader = backfill::reader(settings, &created.snapshot).await?;
    let state = backfill::state_writer(settings, &created.snapshot).await?;
    if *shutdown.borrow() {
        return Err(RunError::Interrupted);
    }
    // SIGTERM stops the load within seconds, whatever its size: the sessions' statements
    // are cancelled and everything rolls back.
    let tokens = [
        applier.client().cancel_token(),
        reader.cancel_token(),
        state.cancel_token(),
    ];
    let load = backfill::load(
        settings,
        applier.client(),
        &reader,
        &state,
        created.consistent_point,
        shutdown,
        status,
    );
    let (stats, dead) = tokio::select! {
        loaded = load => loaded?,
        _ = stop_requested(shutdown.clone()) => {
            for token in &tokens {
                db::cancel(settings.source_url(), token).await;
            }
            return Err(RunError::Interrupted);
        }
    };
    backfill::set_step(status, "committing");
    let committing = Instant::now();
    for letter in &dead {
        applier.park(letter).await?;
    }
    applier.set_phase("streaming").await?;
    applier
        .commit(created.consistent_point, Utc::now().naive_utc())
        .await?;
    metrics::counter!(m::DEAD_LETTERS_TOTAL).increment(dead.len() as u64);
    let _ = reader.batch_execute("COMMIT").await;
    let mut stats = stats;
    stats
        .steps
        .push(("commit".into(), committing.elapsed().as_secs_f64()));
    stats.seconds += committing.elapsed().as_secs_f64();
    tracing::info!(
        contacts = stats.contacts,
        values = stats.values,
        customers = stats.customers,
        leads = stats.leads,
        appointments = stats.appointments,
        dead_letters = stats.dead_letters,
        took = %crate::statusline::human_seconds(stats.seconds),
        "first load committed; streaming"
    );
    tracing::info!("{}", stats.summary());
    if let Err(e) = record_load_steps(applier.client(), &settings.slot.name, &stats.steps).await {
        tracing::warn!(error = %db::error_text(&e), "the first load's steps were not kept for the report");
    }
    let mut client = created.client;
    client.start().await.map_err(SourceError::from)?;
    client.wait_started().await.map_err(SourceError::from)?;
    Ok(client)
}

/// Keeps the first load's steps and their durations in `leadsync.load_steps` (the report's
/// timeline), replacing an earlier load's.
async fn record_load_steps(
    client: &Client,
    slot: &str,
    steps: &[(String, f64)],
) -> Result<(), tokio_postgres::Error> {
    let names: Vec<&str> = steps.iter().map(|(step, _)| step.as_str()).collect();
    let seconds: Vec<f64> = steps.iter().map(|(_, s)| *s).collect();
    client
        .execute(
            "DELETE FROM leadsync.load_steps WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    client
        .execute(
            "INSERT INTO leadsync.load_steps (slot_name, position, step, seconds)
             SELECT $1, position, step, seconds
             FROM unnest($2::text[], $3::float8[]) WITH ORDINALITY AS s(step, seconds, position)",
            &[&slot, &names, &seconds],
        )
        .await
        .map(drop)
}

/// Resolves once a stop is requested (at once if it already was).
async fn stop_requested(mut shutdown: Shutdown) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(drop);
}

/// The source transaction being received.
struct SourceTxn {
    commit_time: NaiveDateTime,
    /// Written by leadsync itself (its replication origin): not carried back.
    ours: bool,
}

/// The stream loop's state.
struct Stream<'a> {
    settings: &'a Settings,
    applier: &'a mut Applier,
    resync: Resync,
    client: ReplicationClient,
    converter: Converter,
    /// Every change up to here is committed on the target or needed no write.
    processed: Lsn,
    /// The source transaction between its Begin and Commit.
    txn: Option<SourceTxn>,
    /// The last whole source transaction inside the open target transaction: the
    /// checkpoint its commit will carry.
    pending: Option<(Lsn, NaiveDateTime)>,
    peeked: Option<pgwire_replication::Result<Option<ReplicationEvent>>>,
    status: SharedStatus,
    /// Paused: apply nothing, leave the stream unread (the reader keeps the connection
    /// alive with status updates).
    paused: bool,
    /// When the pause began: the target is current as of then.
    paused_since: Option<NaiveDateTime>,
    /// Changes in the open target transaction by (table, op), for the metrics at commit: a
    /// handful of counters, whatever the transaction's size.
    changes: Vec<((&'static str, &'static str), u64)>,
    dead_letters_seen: u64,
    /// Commit time of the oldest source transaction received but not yet committed.
    oldest_unapplied: Option<NaiveDateTime>,
    /// While catching up after a first load: the target is current as of this time (the
    /// load's snapshot, then the last applied commit), until the stream reaches the WAL's end.
    current_as_of: Option<NaiveDateTime>,
    last_heartbeat: Instant,
    /// When resolved dead letters were last purged (never, at first: soon after starting).
    last_purge: Option<Instant>,
}

/// The `table` and `op` labels of a change.
fn change_label(change: &crate::project::change::Change) -> (&'static str, &'static str) {
    use crate::project::change::Change;
    match change {
        Change::UpsertContact(_) => ("contacts", "upsert"),
        Change::DeleteContact(_) => ("contacts", "delete"),
        Change::UpsertValue(_) | Change::UpsertValueKeepingValue(..) => {
            ("contact_custom_fields", "upsert")
        }
        Change::DeleteValue { .. } => ("contact_custom_fields", "delete"),
        Change::Reset { .. } | Change::Refresh(_) => ("contacts", "resync"),
    }
}

/// PostgreSQL timestamps count microseconds from 2000-01-01.
fn pg_time(micros: i64) -> NaiveDateTime {
    const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;
    DateTime::from_timestamp_micros(micros + PG_EPOCH_OFFSET_SECS * 1_000_000)
        .unwrap_or_default()
        .naive_utc()
}

impl Stream<'_> {
    async fn run(&mut self, controls: &mut Controls) -> Result<(), RunError> {
        loop {
            if *controls.shutdown.borrow() && self.txn.is_none() {
                self.commit_pending().await?;
                return Ok(());
            }
            if self.txn.is_none() {
                let wanted = controls.pause.borrow().unwrap_or(self.paused);
                if wanted != self.paused || (wanted && self.applier.is_open()) {
                    self.set_paused(wanted).await?;
                }
                if self.paused {
                    // Nothing is read while paused; the replication reader answers the
                    // server on its own, so the connection survives any pause.
                    tokio::select! {
                        _ = controls.pause.changed() => {}
                        _ = controls.shutdown.changed() => {}
                        // The lag keeps growing while nothing is applied.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => self.report_lag(),
                    }
                    continue;
                }
            }
            // Only with nothing open: a finished request's status commits with the target
            // transaction, and the side session must not wait on that transaction's locks.
            if self.txn.is_none() && self.peeked.is_none() && !self.applier.is_open() {
                self.resync.poll().await?;
            }
            let event = match self.peeked.take() {
                Some(event) => event,
                None if self.pending.is_some() && self.txn.is_none() => {
                    // Group only what has already arrived: commit rather than wait.
                    match self.client.recv().now_or_never() {
                        Some(event) => event,
                        None => {
                            self.commit_pending().await?;
                            continue;
                        }
                    }
                }
                None => tokio::select! {
                    event = self.client.recv() => event,
                    _ = controls.shutdown.changed() => continue,
                    _ = controls.pause.changed() => continue,
                    // Wake up now and then to look for resync requests and to beat.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        let idle = self.txn.is_none() && !self.applier.is_open();
                        if idle && self.applier.reverse_waiting() {
                            // Customer edits waiting for a locked contact, with nothing
                            // else to commit them with.
                            self.applier.retry_reverse_queue(self.processed).await?;
                            let now = Utc::now().naive_utc();
                            self.applier.commit(self.processed, now).await?;
                        }
                        if self.last_heartbeat.elapsed() >= HEARTBEAT_EVERY && idle {
                            self.resync.heartbeat().await?;
                            self.last_heartbeat = Instant::now();
                        }
                        let days = self.settings.dlq.retention_days;
                        if idle && days > 0 && self.last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
                            self.last_purge = Some(Instant::now());
                            match self.resync.purge_dead_letters(days).await {
                                Ok(0) => {}
                                Ok(purged) => tracing::info!(purged, retention_days = days, "resolved dead letters past their retention deleted"),
                                Err(e) => tracing::warn!(error = %e, "resolved dead letters could not be purged; trying again in an hour"),
                            }
                        }
                        continue;
                    }
                },
            };
            let Some(event) = event.map_err(SourceError::from)? else {
                return Err(RunError::StreamEnded);
            };
            if *controls.shutdown.borrow() && self.txn.is_some() {
                // Stopping in the middle of a source transaction: drop it, the next run
                // receives it again from the checkpoint.
                self.applier.rollback().await?;
                self.txn = None;
                self.pending = None;
                return Ok(());
            }
            self.handle(event).await?;
        }
    }

    /// Pauses or resumes at a transaction boundary, and remembers it across restarts.
    async fn set_paused(&mut self, paused: bool) -> Result<(), RunError> {
        self.commit_pending().await?;
        self.applier
            .client()
            .execute(
                "UPDATE leadsync.sync_state SET paused = $2, updated_at = now() WHERE slot_name = $1",
                &[&self.settings.slot.name, &paused],
            )
            .await
            .map_err(query_error("recording the pause"))?;
        self.paused = paused;
        self.paused_since = paused.then(|| Utc::now().naive_utc());
        self.report_lag();
        metrics::gauge!(m::PAUSED).set(if paused { 1.0 } else { 0.0 });
        self.status.update(|s| {
            s.paused = paused;
            s.state = if paused {
                State::Paused
            } else {
                State::Streaming
            };
        });
        if paused {
            tracing::info!(processed = %self.processed, "paused: applying nothing until resumed");
        } else {
            tracing::info!(processed = %self.processed, "resumed: catching up");
        }
        Ok(())
    }

    async fn handle(&mut self, event: ReplicationEvent) -> Result<(), RunError> {
        match event {
            ReplicationEvent::Begin {
                commit_time_micros, ..
            } => {
                let commit_time = pg_time(commit_time_micros);
                self.oldest_unapplied.get_or_insert(commit_time);
                self.txn = Some(SourceTxn {
                    commit_time,
                    ours: false,
                });
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let message = decode_message(&data)?;
                self.on_message(&message, Lsn::from(wal_start)).await?;
            }
            ReplicationEvent::Commit {
                end_lsn,
                commit_time_micros,
                ..
            } => {
                self.txn = None;
                let end = Lsn::from(end_lsn);
                if self.applier.is_open() {
                    self.pending = Some((end, pg_time(commit_time_micros)));
                    let sync = &self.settings.sync;
                    if self.applier.txn_changes() >= sync.max_batch_changes
                        || self.applier.txn_age() >= Duration::from_millis(sync.max_batch_delay_ms)
                    {
                        self.commit_pending().await?;
                    } else if let Some(next) = self.client.recv().now_or_never() {
                        self.peeked = Some(next);
                    } else {
                        self.commit_pending().await?;
                    }
                } else {
                    // Nothing to write for this transaction.
                    self.oldest_unapplied = None;
                    self.advance(end);
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                if self.txn.is_none() && !self.applier.is_open() {
                    self.advance(Lsn::from(wal_end));
                    if self.current_as_of.take().is_some() {
                        self.report_lag();
                    }
                }
            }
            ReplicationEvent::Message {
                lsn,
                prefix,
                content,
                transactional,
            } => {
                if !transactional
                    && prefix == crate::resync::HEARTBEAT_PREFIX
                    && self.txn.is_none()
                    && !self.applier.is_open()
                {
                    self.advance(Lsn::from(lsn));
                }
                if let Some(released) = self.resync.on_message(&prefix, &content) {
                    let commit_time = self
                        .txn
                        .as_ref()
                        .map(|t| t.commit_time)
                        .unwrap_or_else(|| Utc::now().naive_utc());
                    let count = released.changes.len() as i64;
                    // A re-read is also the moment to see columns widened since.
                    self.applier
                        .refresh_limits(&self.settings.target.schema)
                        .await?;
                    for change in released.changes {
                        self.applier
                            .push(Stamped {
                                change,
                                commit_time,
                                lsn: Lsn::from(lsn),
                            })
                            .await?;
                    }
                    self.applier
                        .record_resync(released.request, count, released.done)
                        .await?;
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    async fn on_message(&mut self, message: &LogicalMessage, lsn: Lsn) -> Result<(), RunError> {
        match message {
            LogicalMessage::Relation(relation) => return self.observe_relation(relation).await,
            LogicalMessage::Origin(origin) => {
                if let Some(txn) = &mut self.txn {
                    txn.ours = origin.name == self.settings.origin_name();
                }
                return Ok(());
            }
            _ => {}
        }
        let commit_time = self
            .txn
            .as_ref()
            .map(|t| t.commit_time)
            .unwrap_or_else(|| Utc::now().naive_utc());
        let events = match self.converter.convert(message) {
            Ok(events) => events,
            Err(e) if e.is_bad_row() => {
                let contact_id = e.contact_id();
                let error = format!(
                    "change at {lsn}{} cannot be read: {e}",
                    contact_id.map_or(String::new(), |id| format!(" of contact {id}"))
                );
                let payload = serde_json::json!({ "message": format!("{message:?}") });
                self.park_unread(message, lsn, contact_id, payload, error)
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(RunError::Convert(e)),
        };
        for event in events {
            match event {
                SourceEvent::Change(change) => {
                    self.resync.on_change(change.contact_id());
                    self.count(change_label(&change));
                    self.applier
                        .push(Stamped {
                            change,
                            commit_time,
                            lsn,
                        })
                        .await?;
                }
                SourceEvent::FieldUpsert { id, context } => {
                    self.applier.field_upsert(id, context).await?;
                }
                SourceEvent::FieldDelete { id } => self.applier.field_delete(id).await?,
                SourceEvent::Truncate(tables) => {
                    self.resync.on_truncate();
                    self.applier.truncate(&tables, commit_time, lsn).await?;
                }
                SourceEvent::CustomerUpdate(edit) => self.reverse(&edit, lsn).await?,
                SourceEvent::Reread {
                    contact_id,
                    columns,
                } => {
                    let error = format!(
                        "contact {contact_id} changed at {lsn} while column(s) {} were missing \
                         from the stream or of another type; it is re-read from the source",
                        columns.join(", ")
                    );
                    let payload = serde_json::json!({ "columns_missing": columns });
                    self.park_unread(message, lsn, Some(contact_id), payload, error)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Parks a change leadsync's state cannot take as it is: the contact's target rows wait
    /// for a re-read of the source, which the commit files.
    async fn park_unread(
        &mut self,
        message: &LogicalMessage,
        lsn: Lsn,
        contact_id: Option<uuid::Uuid>,
        payload: serde_json::Value,
        error: String,
    ) -> Result<(), RunError> {
        if let Some(id) = contact_id {
            self.resync.on_change(id);
        }
        self.applier
            .park(&DeadLetter {
                contact_id,
                lsn,
                source_table: self
                    .converter
                    .table_of(message.relation_id().unwrap_or_default())
                    .map_or("unknown", |t| t.name()),
                operation: message.kind(),
                key: contact_id.map_or(
                    serde_json::Value::Null,
                    |id| serde_json::json!({ "id": id }),
                ),
                payload,
                error,
                state_incomplete: true,
            })
            .await?;
        Ok(())
    }

    /// Learns a table's layout. A version that lacks a projected column (or has it with a
    /// type leadsync cannot read) stops the daemon, unless the live table has the column
    /// back: then the operator restored it, and the rows written under that version are
    /// re-read from the source instead.
    async fn observe_relation(
        &mut self,
        relation: &crate::decode::Relation,
    ) -> Result<(), RunError> {
        let error = match self.converter.observe_relation(relation) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !self.live_table_readable(relation).await? {
            return Err(RunError::Convert(error));
        }
        let columns = self
            .converter
            .observe_relation_degraded(relation)
            .map_err(|_| RunError::Convert(error.clone()))?;
        tracing::warn!(
            table = %format!("{}.{}", relation.namespace, relation.name),
            columns = %columns.join(", "),
            "the stream has rows written while projected columns were missing or of another type; the table has them back now, so those rows are re-read from the source"
        );
        Ok(())
    }

    /// Whether the table as it is now has every column the projection reads, each of a
    /// type leadsync reads.
    async fn live_table_readable(
        &self,
        relation: &crate::decode::Relation,
    ) -> Result<bool, RunError> {
        let rows = self
            .applier
            .client()
            .query(
                "SELECT attname::text, atttypid FROM pg_attribute
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&relation.id],
            )
            .await
            .map_err(query_error("reading the table's columns"))?;
        let live = crate::decode::Relation {
            columns: rows
                .iter()
                .map(|r| crate::decode::RelationColumn {
                    is_key: false,
                    name: r.get(0),
                    type_oid: r.get(1),
                    type_modifier: -1,
                })
                .collect(),
            ..relation.clone()
        };
        let mut scratch =
            Converter::new(&self.settings.source.schema, &self.settings.target.schema);
        Ok(!rows.is_empty() && scratch.observe_relation(&live).is_ok())
    }

    /// Reverse sync: an edit of a customer by anyone but leadsync goes back to its contact.
    async fn reverse(&mut self, edit: &CustomerEdit, lsn: Lsn) -> Result<(), RunError> {
        let ours = self.txn.as_ref().is_some_and(|t| t.ours);
        if !self.settings.sync.reverse || ours {
            return Ok(());
        }
        self.count(("customers", "update"));
        match self.applier.reverse(edit, lsn).await? {
            WriteBack::Written => {
                self.count(("contacts", "reverse_update"));
                tracing::debug!(contact_id = %edit.cst_id, %lsn, "customer edit written back to its contact");
            }
            WriteBack::Locked => {
                tracing::info!(contact_id = %edit.cst_id, %lsn, "contact locked by a legacy transaction: the customer's edit waits and is written once the lock is gone");
            }
            WriteBack::Rejected | WriteBack::NotCarried => {
                tracing::debug!(customer = %edit.cst_id, %lsn, "customer edit not written back (native, deleted, unchanged, rejected, or its contact changed those columns later)");
            }
        }
        Ok(())
    }

    /// Counts one change for the metrics at commit.
    fn count(&mut self, label: (&'static str, &'static str)) {
        match self.changes.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => self.changes.push((label, 1)),
        }
    }

    /// Commits the open target transaction with the checkpoint of its last source
    /// transaction, then acknowledges it.
    async fn commit_pending(&mut self) -> Result<(), RunError> {
        if let Some((lsn, time)) = self.pending.take() {
            // From the first write to the commit, the last chunk and the COMMIT included.
            let open_for = self.applier.txn_age();
            let committing = Instant::now();
            self.applier.commit(lsn, time).await?;
            if self.current_as_of.is_some() {
                self.current_as_of = Some(time);
            }
            metrics::histogram!(m::APPLY_SECONDS)
                .record((open_for + committing.elapsed()).as_secs_f64());
            metrics::counter!(m::TRANSACTIONS_TOTAL).increment(1);
            for ((table, op), n) in self.changes.drain(..) {
                if op == "reverse_update" {
                    tracing::info!(contacts = n, %lsn, "customer edits written back to their contacts");
                }
                metrics::counter!(m::CHANGES_TOTAL, m::TABLE => table, m::OP => op).increment(n);
            }
            let parked = self.applier.stats.dead_letters - self.dead_letters_seen;
            if parked > 0 {
                metrics::counter!(m::DEAD_LETTERS_TOTAL).increment(parked);
                self.dead_letters_seen = self.applier.stats.dead_letters;
            }
            // Behind or caught up? What the stream holds already says: the next source
            // transaction's commit time is the age of the oldest one not applied.
            if self.peeked.is_none() {
                self.peeked = self.client.recv().now_or_never();
            }
            self.oldest_unapplied = match &self.peeked {
                Some(Ok(Some(ReplicationEvent::Begin {
                    commit_time_micros, ..
                }))) => Some(pg_time(*commit_time_micros)),
                _ => None,
            };
            self.advance(lsn);
        }
        Ok(())
    }

    /// Lag in seconds: the age of the oldest source transaction received but not applied;
    /// while paused, at least the time since the pause (the target is current as of then);
    /// while catching up after a first load, at least the age of what is applied; 0 when
    /// caught up.
    fn report_lag(&self) {
        let now = Utc::now().naive_utc();
        let age = |t: NaiveDateTime| (now - t).as_seconds_f64().max(0.0);
        let lag = [self.oldest_unapplied, self.paused_since, self.current_as_of]
            .into_iter()
            .flatten()
            .map(age)
            .fold(0.0, f64::max);
        metrics::gauge!(m::LAG_SECONDS).set(lag);
        self.status.update(|s| s.lag_seconds = lag);
    }

    fn advance(&mut self, lsn: Lsn) {
        if lsn > self.processed {
            self.processed = lsn;
            self.client.update_applied_lsn(lsn.into());
            metrics::gauge!(m::APPLIED_LSN).set(lsn.0 as f64);
        }
        self.report_lag();
        let stats = self.applier.stats;
        let processed = self.processed;
        self.status.update(|s| {
            s.processed_lsn = Some(processed.to_string());
            s.counters.changes = stats.changes;
            s.counters.transactions = stats.transactions;
            s.counters.dead_letters = stats.dead_letters;
        });
    }
}
