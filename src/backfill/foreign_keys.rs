//! The target tables' foreign keys into legacy tables (`workspaces`, `custom_fields`,
//! `auth.users`), set aside while the first load copies.
//!
//! Checked row by row, these keys cost the load more than everything else together: every
//! row copied runs one lookup (and row lock) in the referenced table per key. Dropping them
//! inside the load's own transaction is no option: dropping a foreign key takes an ACCESS
//! EXCLUSIVE lock on the *referenced* table, held until commit, which would stop the
//! application's reads and writes of `workspaces` for the whole load.
//!
//! So they are dropped in a short transaction of their own before the load, their
//! definitions recorded in `leadsync.deferred_constraints` in that same transaction, and
//! added back — validated — by the load's transaction right before it commits, where
//! validation is one join per key instead of one lookup per row. Every lock on a legacy table
//! is asked for with `lock_timeout` (`target.lock_timeout_ms`): one not granted in time is
//! given up and asked for again after a pause, so the application's sessions never queue
//! behind leadsync for longer than that.
//!
//! Between the two transactions the load holds the target tables (it sets their keys aside),
//! so no row gets in unchecked. A parent row deleted while the load runs (a workspace, a
//! custom field) fails the validation: the load starts again on a fresh snapshot, which no
//! longer has its children. A crash in between leaves the definitions recorded: the next first
//! load adds them back, and so does `leadsync teardown` when it keeps the target tables.
//!
//! Only the tables' owner (the installer) may drop and add keys: both steps go through its
//! functions `leadsync.set_aside_foreign_keys()` and `leadsync.restore_foreign_keys()`
//! ([`crate::definer`]), which alone write the record.

use std::time::Duration;

use tokio_postgres::Client;

use crate::apply::{ApplyError, db_error};
use crate::config::Settings;
use crate::control::Shutdown;
use crate::db::quote_ident;
use crate::schema::TARGET_TABLES;

/// Longest pause between two attempts at a lock that was not granted.
const MAX_LOCK_PAUSE: Duration = Duration::from_secs(5);

/// SQLSTATE of a lock not granted within `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// SQLSTATE of a foreign key violation.
const FOREIGN_KEY_VIOLATION: &str = "23503";

/// Every lock mode, weakest first: all of them conflict with the ACCESS EXCLUSIVE lock of
/// dropping a key.
const ALL_MODES: &[&str] = &[
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

/// The modes that conflict with SHARE ROW EXCLUSIVE, the lock of adding a key back: those
/// from ROW EXCLUSIVE up (writes of the table, not reads).
const SHARE_ROW_EXCLUSIVE_CONFLICTS: &[&str] = ALL_MODES.split_at(2).1;

/// The legacy tables whose keys the load fills in, the ones worth setting aside, as
/// `(schema, table)`.
pub fn referenced(settings: &Settings) -> [(String, &'static str); 3] {
    let s = settings.source.schema.clone();
    [
        (s.clone(), "workspaces"),
        (s, "custom_fields"),
        ("auth".to_owned(), "users"),
    ]
}

/// [`referenced`] as `schema.table`, compared with the catalog's names (resolving
/// `auth.users` by name would need USAGE on `auth`, which a role may lack).
fn referenced_tables(settings: &Settings) -> Vec<String> {
    referenced(settings)
        .iter()
        .map(|(schema, table)| format!("{schema}.{table}"))
        .collect()
}

/// Drops the target tables' foreign keys into legacy tables in a transaction of its own,
/// recording their definitions, so the load copies without checking them row by row. Keys
/// into a table the session may not reference (no REFERENCES privilege, so it could not add
/// them back) stay and are checked as before. Returns `None` when shutdown came while
/// waiting for a lock (nothing changed), else how many keys are now set aside.
pub async fn set_aside(
    client: &Client,
    settings: &Settings,
    shutdown: &Shutdown,
) -> Result<Option<u64>, ApplyError> {
    let mut pauses = Pauses::new(LockWait::UntilShutdown(shutdown));
    loop {
        match try_set_aside(client, settings).await {
            Ok(n) => {
                report_kept(client, settings).await?;
                return Ok(Some(n));
            }
            Err(e) if is_lock_timeout(&e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                let holders = lock_holders(client, settings, ALL_MODES).await?;
                tracing::warn!(
                    retry_in = ?pauses.next,
                    holders = %describe(&holders),
                    "a legacy table (workspaces, custom_fields, auth.users) is busy: its lock \
                     was not granted within target.lock_timeout_ms; trying again"
                );
                if !pauses.wait().await {
                    return Ok(None);
                }
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
    }
}

/// Says which legacy tables the target tables still have keys into after setting aside:
/// those the installer could not add back (it lacks REFERENCES on them, or USAGE on their
/// schema), which the load checks row by row.
async fn report_kept(client: &Client, settings: &Settings) -> Result<(), ApplyError> {
    let target = quote_ident(&settings.target.schema);
    let tables: Vec<String> = TARGET_TABLES
        .iter()
        .map(|t| format!("{target}.{}", quote_ident(t)))
        .collect();
    let kept: Vec<String> = client
        .query(
            "SELECT DISTINCT fn.nspname || '.' || f.relname
             FROM pg_constraint c
             JOIN pg_class f ON f.oid = c.confrelid
             JOIN pg_namespace fn ON fn.oid = f.relnamespace
             WHERE c.contype = 'f' AND c.conrelid = ANY($1::text[]::regclass[])
               AND fn.nspname || '.' || f.relname = ANY($2::text[])
             ORDER BY 1",
            &[&tables, &referenced_tables(settings)],
        )
        .await
        .map_err(db_error("reading the target tables' foreign keys"))?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db_error("reading the target tables' foreign keys"))?;
    if !kept.is_empty() {
        tracing::info!(
            tables = %kept.join(", "),
            "the first load checks foreign keys into these tables row by row: the installer \
             could not add them back without REFERENCES on the tables and USAGE on their schema \
             (see `leadsync setup --print-grants`)"
        );
    }
    Ok(())
}

async fn try_set_aside(client: &Client, settings: &Settings) -> Result<u64, ApplyError> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = {}",
            settings.target.lock_timeout_ms
        ))
        .await
        .map_err(db_error("setting foreign keys aside"))?;
    // Recorded before they are dropped, in the same transaction: a crash never loses one.
    let total: i32 = client
        .query_one("SELECT leadsync.set_aside_foreign_keys()", &[])
        .await
        .map_err(db_error("setting foreign keys aside"))?
        .get(0);
    client
        .batch_execute("COMMIT")
        .await
        .map_err(db_error("setting foreign keys aside"))?;
    Ok(total.max(0) as u64)
}

/// How long to keep asking for locks that are not granted in time.
#[derive(Clone, Copy)]
pub enum LockWait<'a> {
    /// Until granted or shutdown.
    UntilShutdown(&'a Shutdown),
    /// Until granted (an operator's command, which they can interrupt).
    Forever,
    /// One attempt: a busy table leaves the keys recorded for later.
    Once,
}

/// The pauses between attempts at a lock: 250 ms, doubling up to [`MAX_LOCK_PAUSE`], for as
/// long as the [`LockWait`] says.
struct Pauses<'a> {
    /// The pause before the next attempt.
    next: Duration,
    until: LockWait<'a>,
}

impl<'a> Pauses<'a> {
    fn new(until: LockWait<'a>) -> Pauses<'a> {
        Pauses {
            next: Duration::from_millis(250),
            until,
        }
    }

    /// Whether a lock not granted is asked for again (unless shutdown comes first).
    fn tries_again(&self) -> bool {
        !matches!(self.until, LockWait::Once)
    }

    /// Sleeps before the next attempt; false when there is to be none.
    async fn wait(&mut self) -> bool {
        let pause = self.next;
        self.next = (pause * 2).min(MAX_LOCK_PAUSE);
        match self.until {
            LockWait::Once => false,
            LockWait::Forever => {
                tokio::time::sleep(pause).await;
                true
            }
            LockWait::UntilShutdown(shutdown) => {
                let mut shutdown = shutdown.clone();
                if *shutdown.borrow() {
                    return false;
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => true,
                    _ = shutdown.changed() => false,
                }
            }
        }
    }
}

/// Adds back, validated, every foreign key recorded as set aside, inside the caller's open
/// transaction, and forgets them. Returns how many. A lock not granted within
/// `target.lock_timeout_ms` is given up and asked for again after a pause, as `lock_wait`
/// says. [`ApplyError::LoadRestart`] when a key no longer holds (its parent row was deleted
/// meanwhile), or when a session holding a legacy table waits for this transaction (it
/// touched the new tables, which the first load holds): neither can end while the load waits.
pub async fn restore(
    client: &Client,
    settings: &Settings,
    lock_wait: LockWait<'_>,
) -> Result<u64, ApplyError> {
    let lock_timeout_ms = settings.target.lock_timeout_ms;
    let mut pauses = Pauses::new(lock_wait);
    loop {
        // The installer's function rebuilds each key from its recorded names, quoted, only
        // for a target table and only into a legacy table it may point at; it runs no text.
        let attempt = async {
            client
                .batch_execute(&format!(
                    "SAVEPOINT leadsync_foreign_keys; SET LOCAL lock_timeout = {lock_timeout_ms}"
                ))
                .await?;
            let restored: i32 = client
                .query_one("SELECT leadsync.restore_foreign_keys()", &[])
                .await?
                .get(0);
            client
                .batch_execute(
                    "SET LOCAL lock_timeout = 0; RELEASE SAVEPOINT leadsync_foreign_keys",
                )
                .await?;
            Ok::<_, tokio_postgres::Error>(restored)
        };
        let e = match attempt.await {
            Ok(restored) => return Ok(restored.max(0) as u64),
            Err(e) => e,
        };
        let code = e.code().map(|c| c.code().to_owned());
        if code.is_some() {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT leadsync_foreign_keys")
                .await
                .map_err(db_error("adding the foreign keys back"))?;
        }
        match code.as_deref() {
            Some(LOCK_NOT_AVAILABLE) => {
                let holders = lock_holders(client, settings, SHARE_ROW_EXCLUSIVE_CONFLICTS).await?;
                if let Some(stuck) = holders.iter().find(|h| h.waits_for_us) {
                    return Err(ApplyError::LoadRestart(format!(
                        "adding the foreign keys back: {stuck}, and waits for the new tables, \
                         which the first load holds"
                    )));
                }
                if pauses.tries_again() {
                    tracing::warn!(
                        retry_in = ?pauses.next,
                        holders = %describe(&holders),
                        "adding the foreign keys back: a legacy table (workspaces, custom_fields, \
                         auth.users) is busy and its lock was not granted within \
                         target.lock_timeout_ms; trying again"
                    );
                }
                if !pauses.wait().await {
                    return Err(ApplyError::Db {
                        context: "adding the foreign keys back",
                        message: "gave up waiting for a lock on a legacy table; the keys stay \
                                  recorded in leadsync.deferred_constraints, and the next first \
                                  load (or `leadsync teardown`) adds them back"
                            .into(),
                        sqlstate: None,
                    });
                }
            }
            Some(FOREIGN_KEY_VIOLATION) => {
                return Err(ApplyError::LoadRestart(format!(
                    "a row the first load refers to was deleted while it ran ({})",
                    crate::db::error_text(&e)
                )));
            }
            _ => return Err(db_error("adding the foreign keys back")(e)),
        }
    }
}

/// Adds back what a first load that never finished set aside, in a transaction of its own.
pub async fn restore_unfinished(
    client: &Client,
    settings: &Settings,
    lock_wait: LockWait<'_>,
) -> Result<u64, ApplyError> {
    let recorded: bool = client
        .query_one(
            "SELECT to_regclass('leadsync.deferred_constraints') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db_error("looking for foreign keys set aside"))?
        .get(0);
    if !recorded {
        return Ok(0);
    }
    client
        .batch_execute("BEGIN")
        .await
        .map_err(db_error("adding the foreign keys back"))?;
    match restore(client, settings, lock_wait).await {
        Ok(n) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(db_error("adding the foreign keys back"))?;
            Ok(n)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// A session holding a lock on a legacy table that leadsync waits for.
struct LockHolder {
    pid: i32,
    application: String,
    state: String,
    /// How long its transaction has been open.
    seconds: f64,
    table: String,
    /// It waits for a lock this session holds.
    waits_for_us: bool,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session {} ({}, {}, transaction open {:.0} s) holds a lock on {}",
            self.pid, self.application, self.state, self.seconds, self.table
        )
    }
}

/// The other sessions holding a lock in one of `modes` on the legacy tables whose keys the
/// load sets aside, longest-open transaction first, so the warning says whom to look at.
async fn lock_holders(
    client: &Client,
    settings: &Settings,
    modes: &[&str],
) -> Result<Vec<LockHolder>, ApplyError> {
    let modes: Vec<String> = modes.iter().map(|m| (*m).to_owned()).collect();
    // Inside a transaction the activity view is read once and kept: read it afresh.
    client
        .batch_execute("SELECT pg_stat_clear_snapshot()")
        .await
        .map_err(db_error("reading who holds the legacy tables"))?;
    let rows = client
        .query(
            "SELECT DISTINCT ON (a.pid, c.oid) a.pid,
                    COALESCE(NULLIF(a.application_name, ''), a.usename::text, 'unknown'),
                    COALESCE(a.state, 'unknown'),
                    COALESCE(extract(epoch FROM now() - a.xact_start), 0)::float8,
                    format('%I.%I', n.nspname, c.relname),
                    pg_backend_pid() = ANY(pg_blocking_pids(a.pid))
             FROM pg_locks l
             JOIN pg_class c ON c.oid = l.relation
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
               AND l.mode = ANY($2::text[])
               AND n.nspname || '.' || c.relname = ANY($1::text[])",
            &[&referenced_tables(settings), &modes],
        )
        .await
        .map_err(db_error("reading who holds the legacy tables"))?;
    let mut holders: Vec<LockHolder> = rows
        .iter()
        .map(|row| LockHolder {
            pid: row.get(0),
            application: row.get(1),
            state: row.get(2),
            seconds: row.get(3),
            table: row.get(4),
            waits_for_us: row.get(5),
        })
        .collect();
    holders.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    Ok(holders)
}

/// The holders for a log line.
fn describe(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        return "none left".into();
    }
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn is_lock_timeout(e: &ApplyError) -> bool {
    matches!(e, ApplyError::Db { sqlstate: Some(code), .. } if code == LOCK_NOT_AVAILABLE)
}
