//! `leadsync teardown`: the roll-back. Drops what `leadsync setup` and `leadsync run`
//! created on the source — the replication slot, the replication origin named after it, the
//! publication and the `leadsync` state schema — and, only with two explicit flags, the six
//! target tables.
//!
//! Nothing in the legacy tables is touched: no row, and no column (the
//! `custom_fields.context_type` column that setup added stays, since the legacy
//! application may use it by now). Every step checks that its object exists first, so a
//! second run succeeds and reports that nothing was left.
//!
//! The slot is not dropped under a running daemon: when a leadsync process streams from it,
//! teardown refuses and says to stop the daemon. A walsender of anything else (a stale
//! session, a manual `pg_recvlogical`) is terminated first.

use std::fmt;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::config::Settings;
use crate::db::{self, ConnectError, quote_ident};
use crate::schema::{STATE_SCHEMA, TARGET_TABLES};

/// How long an active slot may take to be released by a daemon that was just stopped, or
/// by a terminated walsender.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// What to drop besides leadsync's own objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct TeardownOptions {
    /// `--drop-target-tables`: also drop the six target tables.
    pub drop_target_tables: bool,
    /// `--yes-drop-target-tables`: the confirmation the first flag needs.
    pub confirm_drop_target_tables: bool,
}

/// Teardown refused or failed. Whatever was dropped before the failure stays dropped;
/// running teardown again after fixing the cause finishes the job.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "--drop-target-tables deletes the six target tables and every row in them, including \
         rows the new application wrote; add --yes-drop-target-tables to confirm"
    )]
    NotConfirmed,
    #[error(
        "a leadsync daemon (pid {pid} on the server, client {client}) is still streaming from \
         replication slot `{slot}`: stop it (SIGTERM, or stop its container) and run teardown \
         again"
    )]
    DaemonRunning {
        slot: String,
        pid: i32,
        client: String,
    },
    #[error(
        "replication origin `{origin}` is in use by a session ({message}): stop every \
         `leadsync run` on this database and run teardown again"
    )]
    OriginInUse { origin: String, message: String },
    #[error(
        "replication slot `{slot}` belongs to database `{database}` (plugin {plugin}), not to \
         this one: it is not this migration's slot; check slot.name and source.url"
    )]
    SlotElsewhere {
        slot: String,
        database: String,
        plugin: String,
    },
    #[error(
        "replication slot `{slot}` is still in use {seconds} s after its walsender was \
         terminated: run teardown again"
    )]
    SlotBusy { slot: String, seconds: u64 },
    #[error(
        "cannot drop the target tables: {0}. Other objects depend on them; drop or alter those \
         first, or keep the tables (run teardown without --drop-target-tables)"
    )]
    TargetTablesInUse(String),
    #[error(
        "cannot drop the leadsync schema: {0}. Objects that are not leadsync's are in it or \
         depend on its tables; move or drop those first (teardown never drops them)"
    )]
    StateInUse(String),
    #[error("teardown failed while {context}: {message}")]
    Query {
        context: &'static str,
        message: String,
    },
}

fn query_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> TeardownError {
    move |e| TeardownError::Query {
        context,
        message: db::error_text(&e),
    }
}

/// What teardown did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TeardownReport {
    /// Objects dropped, as `kind name`, in the order they went.
    pub dropped: Vec<String>,
    /// Walsenders terminated to free the slot (pids).
    pub terminated: Vec<i32>,
    /// Objects deliberately kept, as `kind name`.
    pub kept: Vec<String>,
    /// What was put back as it was before leadsync (foreign keys an unfinished first load
    /// had set aside).
    pub restored: Vec<String>,
}

impl fmt::Display for TeardownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for pid in &self.terminated {
            writeln!(f, "terminated walsender {pid} that held the slot")?;
        }
        if self.dropped.is_empty() {
            writeln!(f, "nothing was left to tear down")?;
        } else {
            for object in &self.dropped {
                writeln!(f, "dropped {object}")?;
            }
        }
        for object in &self.kept {
            writeln!(f, "kept {object}")?;
        }
        for object in &self.restored {
            writeln!(f, "added back {object}")?;
        }
        writeln!(
            f,
            "legacy tables untouched (custom_fields.context_type, added by setup, stays)"
        )
    }
}

/// Objects that are not leadsync's own and depend on its tables or sit in its schema (an
/// application's view, a table created there), as the catalog describes them. Read without
/// taking any lock.
async fn foreign_dependents(client: &Client) -> Result<Vec<String>, TeardownError> {
    let tables: Vec<&str> = crate::schema::STATE_TABLES.to_vec();
    let rows = client
        .query(
            "WITH tables AS (
               SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = ANY($2::text[])),
             ours AS (
               SELECT oid FROM tables
               UNION SELECT d.objid FROM pg_depend d
               WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                 AND d.refobjid IN (SELECT oid FROM tables) AND d.deptype IN ('a', 'i'))
             SELECT DISTINCT pg_describe_object(d.classid, d.objid, 0)
             FROM pg_depend d
             WHERE d.deptype = 'n'
               AND ((d.refclassid = 'pg_class'::regclass AND d.refobjid IN (SELECT oid FROM ours))
                    OR (d.refclassid = 'pg_namespace'::regclass
                        AND d.refobjid = (SELECT oid FROM pg_namespace WHERE nspname = $1)))
               AND NOT (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT oid FROM ours))
               AND NOT (d.classid = 'pg_proc'::regclass AND d.objid IN (
                          SELECT to_regprocedure(f)::oid FROM unnest($3::text[]) AS f))
               AND NOT (d.classid = 'pg_constraint'::regclass AND d.objid IN (
                          SELECT oid FROM pg_constraint WHERE conrelid IN (SELECT oid FROM ours)))
             ORDER BY 1",
            &[
                &STATE_SCHEMA,
                &tables,
                &crate::definer::ALL_FUNCTIONS.to_vec(),
            ],
        )
        .await
        .map_err(query_error(
            "looking for objects that depend on leadsync's tables",
        ))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Drops leadsync's tables by name, then its schema, in one transaction and without
/// CASCADE: an object of anyone else that depends on them (or sits in the schema) stops the
/// drop, and is named.
async fn drop_state(client: &Client) -> Result<(), TeardownError> {
    let tables: Vec<String> = crate::schema::STATE_TABLES
        .iter()
        .map(|t| format!("{}.{}", quote_ident(STATE_SCHEMA), quote_ident(t)))
        .collect();
    let dropped = client
        .batch_execute(&format!(
            "BEGIN; DROP TABLE IF EXISTS {}; DROP FUNCTION IF EXISTS {}; DROP SCHEMA IF EXISTS {}; \
             COMMIT",
            tables.join(", "),
            crate::definer::ALL_FUNCTIONS.join(", "),
            quote_ident(STATE_SCHEMA),
        ))
        .await;
    if let Err(e) = dropped {
        // The transaction is aborted; leave the session usable.
        let _ = client.batch_execute("ROLLBACK").await;
        let text = db::error_text(&e);
        return Err(match e.code().map(|c| c.code()) {
            Some("2BP01") => TeardownError::StateInUse(text),
            _ => TeardownError::Query {
                context: "dropping the leadsync schema",
                message: text,
            },
        });
    }
    Ok(())
}

/// Runs `leadsync teardown`.
pub async fn run_teardown(
    settings: &Settings,
    opts: TeardownOptions,
) -> Result<TeardownReport, TeardownError> {
    if opts.drop_target_tables && !opts.confirm_drop_target_tables {
        return Err(TeardownError::NotConfirmed);
    }
    let client = db::connect(settings.source_url()).await?;
    let mut report = TeardownReport::default();
    // Before anything goes: refuse if leadsync's schema holds or feeds what is not its own.
    let foreign = foreign_dependents(&client).await?;
    if !foreign.is_empty() {
        return Err(TeardownError::StateInUse(format!(
            "{} depend on it or live in it",
            foreign.join(", ")
        )));
    }
    drop_slot(&client, &settings.slot.name, &mut report).await?;
    drop_origin(&client, settings.origin_name(), &mut report).await?;

    let publication = &settings.publication.name;
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[publication],
        )
        .await
        .map_err(query_error("looking for the publication"))?
        .get(0);
    if exists {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(publication)
            ))
            .await
            .map_err(query_error("dropping the publication"))?;
        report.dropped.push(format!("publication {publication}"));
    }

    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&STATE_SCHEMA],
        )
        .await
        .map_err(query_error("looking for the leadsync schema"))?
        .get(0);
    if exists && !opts.drop_target_tables {
        // A first load that never finished may have set foreign keys of the target tables
        // aside; the tables stay, so they get their keys back before the record goes.
        let restored = crate::backfill::foreign_keys::restore_unfinished(
            &client,
            settings,
            crate::backfill::foreign_keys::LockWait::Forever,
        )
        .await
        .map_err(|e| TeardownError::Query {
            context: "adding back the foreign keys an unfinished first load set aside",
            message: e.to_string(),
        })?;
        if restored > 0 {
            report.restored.push(format!(
                "{restored} foreign keys of the target tables that an unfinished first load \
                 had set aside"
            ));
        }
    }
    if exists {
        drop_state(&client).await?;
        report.dropped.push(format!(
            "schema {STATE_SCHEMA} (checkpoint state, dead letters, resync requests)"
        ));
    }

    let target = &settings.target.schema;
    let mut present = Vec::new();
    for table in TARGET_TABLES {
        let qualified = format!("{}.{}", quote_ident(target), quote_ident(table));
        let found: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
            .await
            .map_err(query_error("looking for the target tables"))?
            .get(0);
        if found {
            present.push((table, qualified));
        }
    }
    if opts.drop_target_tables {
        if !present.is_empty() {
            // Children first; one statement so that it is all or nothing. No CASCADE: an
            // object of the new application that depends on them must stop the drop.
            let list: Vec<String> = present.iter().rev().map(|(_, q)| q.clone()).collect();
            client
                .batch_execute(&format!("DROP TABLE IF EXISTS {}", list.join(", ")))
                .await
                .map_err(|e| match e.code().map(|c| c.code()) {
                    Some("2BP01") => TeardownError::TargetTablesInUse(db::error_text(&e)),
                    _ => TeardownError::Query {
                        context: "dropping the target tables",
                        message: db::error_text(&e),
                    },
                })?;
            for (table, _) in &present {
                report.dropped.push(format!("table {target}.{table}"));
            }
        }
    } else {
        revoke_runtime_access(&client, &present, &mut report).await?;
        for (table, _) in &present {
            report.kept.push(format!(
                "table {target}.{table} (drop it with --drop-target-tables)"
            ));
        }
    }
    Ok(report)
}

/// Takes from the runtime role what setup gave it on the target tables the application
/// keeps: the row-level-security policy that lets it see every row, and its privileges.
async fn revoke_runtime_access(
    client: &Client,
    present: &[(&str, String)],
    report: &mut TeardownReport,
) -> Result<(), TeardownError> {
    let tables: Vec<String> = present.iter().map(|(_, q)| q.clone()).collect();
    // Each table with the policy, and the roles it is for.
    let rows = client
        .query(
            "SELECT p.polrelid::regclass::text,
                    string_agg(quote_ident(r.rolname), ', ' ORDER BY r.rolname)
             FROM pg_policy p JOIN pg_roles r ON r.oid = ANY(p.polroles)
             WHERE p.polrelid = ANY($1::text[]::regclass[]) AND p.polname = $2
             GROUP BY 1 ORDER BY 1",
            &[&tables, &crate::grants::RUNTIME_POLICY],
        )
        .await
        .map_err(query_error("reading the runtime role's policies"))?;
    let mut sql = String::from("BEGIN;\n");
    let mut done = Vec::new();
    for row in &rows {
        let (table, roles): (String, String) = (
            row.try_get(0)
                .map_err(query_error("reading the runtime role's policies"))?,
            row.try_get(1)
                .map_err(query_error("reading the runtime role's policies"))?,
        );
        sql.push_str(&format!(
            "DROP POLICY {} ON {table}; REVOKE ALL ON {table} FROM {roles};\n",
            quote_ident(crate::grants::RUNTIME_POLICY),
        ));
        done.push(format!(
            "policy \"{}\" on {table} and the privileges of {roles} on it",
            crate::grants::RUNTIME_POLICY
        ));
    }
    if done.is_empty() {
        return Ok(());
    }
    sql.push_str("COMMIT;");
    if let Err(e) = client.batch_execute(&sql).await {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(TeardownError::Query {
            context: "taking the runtime role's access to the target tables back",
            message: db::error_text(&e),
        });
    }
    report.dropped.extend(done);
    Ok(())
}

/// Drops the slot, refusing while a leadsync daemon streams from it.
async fn drop_slot(
    client: &Client,
    slot: &str,
    report: &mut TeardownReport,
) -> Result<(), TeardownError> {
    let started = Instant::now();
    loop {
        let row = client
            .query_opt(
                "SELECT s.database IS NOT DISTINCT FROM current_database(), s.slot_type,
                        COALESCE(s.database, '(none)')::text, COALESCE(s.plugin, '(none)')::text,
                        s.active_pid, a.application_name,
                        COALESCE(host(a.client_addr), 'local socket')
                 FROM pg_replication_slots s
                 LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid
                 WHERE s.slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(query_error("looking for the replication slot"))?;
        let Some(row) = row else {
            return Ok(());
        };
        let (here, kind): (bool, String) = (row.get(0), row.get(1));
        if !here || kind != "logical" {
            return Err(TeardownError::SlotElsewhere {
                slot: slot.to_owned(),
                database: row.get(2),
                plugin: row.get(3),
            });
        }
        let active_pid: Option<i32> = row.get(4);
        let Some(pid) = active_pid else {
            // Another session may take it between the check and the drop: then the drop
            // fails with "is active", and the next loop sees who holds it.
            match client
                .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await
            {
                Ok(_) => {
                    report.dropped.push(format!("replication slot {slot}"));
                    return Ok(());
                }
                Err(e) if e.code().map(|c| c.code()) == Some("55006") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) if e.code().map(|c| c.code()) == Some("42704") => return Ok(()),
                Err(e) => return Err(query_error("dropping the replication slot")(e)),
            }
        };
        let application: Option<String> = row.get(5);
        let is_leadsync = application
            .as_deref()
            .is_some_and(|a| a.starts_with("leadsync"));
        if is_leadsync {
            // A daemon that was just stopped releases the slot within moments.
            if started.elapsed() < RELEASE_GRACE {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            return Err(TeardownError::DaemonRunning {
                slot: slot.to_owned(),
                pid,
                client: row.get(6),
            });
        }
        if !report.terminated.contains(&pid) {
            client
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(query_error("terminating the slot's walsender"))?;
            report.terminated.push(pid);
        }
        if started.elapsed() > RELEASE_GRACE * 2 {
            return Err(TeardownError::SlotBusy {
                slot: slot.to_owned(),
                seconds: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops the replication origin (the daemon's checkpoint).
async fn drop_origin(
    client: &Client,
    origin: &str,
    report: &mut TeardownReport,
) -> Result<(), TeardownError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
            &[&origin],
        )
        .await
        .map_err(query_error("looking for the replication origin"))?
        .get(0);
    if !exists {
        return Ok(());
    }
    match client
        .execute("SELECT pg_replication_origin_drop($1)", &[&origin])
        .await
    {
        Ok(_) => {
            report
                .dropped
                .push(format!("replication origin {origin} (the checkpoint)"));
            Ok(())
        }
        Err(e) if e.code().map(|c| c.code()) == Some("55006") => Err(TeardownError::OriginInUse {
            origin: origin.to_owned(),
            message: db::error_text(&e),
        }),
        Err(e) => Err(query_error("dropping the replication origin")(e)),
    }
}
