//! The apply stage: one target transaction holds the projected writes of one or more whole
//! source transactions, the matching state in the `leadsync` schema, and the checkpoint —
//! the replication origin's LSN, set with `pg_replication_origin_xact_setup` (through
//! `leadsync.origin_xact_setup`, see [`crate::definer`]) right before
//! COMMIT. They commit together or not at all, so a crash at any moment loses nothing and a
//! replay from the checkpoint duplicates nothing.
//!
//! Changes are planned and written in chunks of [`CHUNK_CHANGES`], inside the open
//! transaction, so a source transaction of any size passes through in bounded memory.

pub mod sql;
mod write;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use chrono::NaiveDateTime;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::Lsn;
use crate::config::{DeleteMode, OnError, Settings};
use crate::db;
use crate::error::{ErrorKind, is_bad_row_sqlstate, is_transient_sqlstate};
use crate::project::change::{Change, Stamped};
use crate::project::plan::{DeadLetter, Plan, Prior, plan_chunk};
use crate::project::{ColumnLimits, Contact, FieldContext, FieldValue, ProductRules};
use crate::source::convert::{CustomerEdit, REVERSE_COLUMNS, SourceTable};

pub use sql::Sql;

/// Changes planned and written at a time. Bounds memory; large enough that the per-chunk
/// round trips vanish next to the rows.
pub const CHUNK_CHANGES: usize = 2_000;

/// Contacts read at a time when a whole table must be walked (truncate, field re-routing).
const PAGE: i64 = 2_000;

/// An apply failure.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{context}: {message}")]
    Db {
        context: &'static str,
        message: String,
        /// The server's error code; `None` when the error happened on this side.
        sqlstate: Option<String>,
    },
    /// The session to the target went away.
    #[error("{context}: the connection was lost: {message}")]
    ConnectionLost {
        context: &'static str,
        message: String,
    },
    #[error(
        "another leadsync is already active on slot `{slot}` ({detail}); only one instance \
         applies changes at a time"
    )]
    Locked { slot: String, detail: String },
    #[error(
        "the replication origin `{0}` does not exist: run `leadsync setup` (it creates the \
         origin, the publication and the leadsync schema)"
    )]
    NoOrigin(String),
    #[error(
        "leadsync's schema is not in this database: run `leadsync setup` first (as the \
         installer; `leadsync setup --print-grants` prints the roles it needs)"
    )]
    NotSetUp,
    #[error(
        "stopping as sync.on_error = \"stop\" says: {0}. Fix the data or the column, then \
         run `leadsync ctl retry` (or restart); nothing after this change has been applied"
    )]
    Stopped(String),
    /// A connection setting that no retry will fix (a bad URL, a TLS setting or a
    /// certificate the server or leadsync refuses).
    #[error("{0}; not retried until it is fixed")]
    Settings(String),
    /// The first load cannot finish as it is and starts again on a fresh snapshot: a parent
    /// row it refers to (a workspace, a custom field, a user) was deleted while it ran, so its
    /// foreign keys do not validate, or an application session holds a legacy table the load
    /// needs while it waits for the new tables the load holds.
    #[error("{0}; the first load starts again")]
    LoadRestart(String),
}

impl ApplyError {
    /// What the daemon does about it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApplyError::ConnectionLost { .. } => ErrorKind::Transient,
            ApplyError::Db { sqlstate, .. } => match sqlstate.as_deref() {
                None => ErrorKind::Fatal,
                Some(code) if is_transient_sqlstate(code) => ErrorKind::Transient,
                Some(code) if is_bad_row_sqlstate(code) => ErrorKind::BadRow,
                Some(_) => ErrorKind::Fatal,
            },
            ApplyError::Locked { .. } | ApplyError::LoadRestart(_) => ErrorKind::Transient,
            ApplyError::NoOrigin(_)
            | ApplyError::NotSetUp
            | ApplyError::Stopped(_)
            | ApplyError::Settings(_) => ErrorKind::Fatal,
        }
    }
}

/// Wraps a driver error with what was being done.
pub(crate) fn db_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> ApplyError {
    move |e| {
        if e.code().is_none() && connection_lost(&e) {
            return ApplyError::ConnectionLost {
                context,
                message: db::error_text(&e),
            };
        }
        let sqlstate = e.code().map(|c| c.code().to_owned());
        let mut message = db::error_text(&e);
        if let Some(setting) = sqlstate.as_deref().and_then(crate::error::guard_setting) {
            message.push_str(&format!(" (the database's {setting}; retried)"));
        }
        ApplyError::Db {
            context,
            message,
            sqlstate,
        }
    }
}

/// Whether a driver error means the session is gone (closed, or an I/O failure under it).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// Counters of what the apply stage did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyStats {
    pub changes: u64,
    pub transactions: u64,
    pub dead_letters: u64,
}

/// The target session and the transaction being built.
pub struct Applier {
    client: Session,
    sql: Sql,
    source_schema: String,
    slot: String,
    rules: ProductRules,
    limits: ColumnLimits,
    delete_mode: DeleteMode,
    on_error: OnError,
    chunk: Vec<Stamped>,
    /// A target transaction is open.
    open: bool,
    opened_at: Option<Instant>,
    /// Changes in the open transaction.
    txn_changes: usize,
    /// Dead letters written in the open transaction (only the first is logged in full).
    parked_in_txn: usize,
    /// Customer edits may wait in `leadsync.reverse_queue` for a locked contact.
    reverse_queued: bool,
    /// Contacts parked in the open transaction whose state lacks a change: the commit files
    /// their re-read from the source.
    reread: Vec<Uuid>,
    reverse_sql: ReverseSql,
    pub stats: ApplyStats,
}

impl Applier {
    /// Opens the target session and binds it to the replication origin named after the
    /// slot. The binding is exclusive: a second daemon on the same slot is refused here.
    pub async fn connect(settings: &Settings) -> Result<Applier, ApplyError> {
        let client = db::connect(settings.source_url())
            .await
            .map_err(|e| match e {
                db::ConnectError::Unreachable { .. } => ApplyError::ConnectionLost {
                    context: "connecting the apply session",
                    message: e.to_string(),
                },
                _ => ApplyError::Settings(e.to_string()),
            })?;
        let origin = settings.origin_name();
        match client
            .execute("SELECT leadsync.bind_origin($1)", &[&origin])
            .await
        {
            Ok(_) => {}
            Err(e) if e.code().map(|c| c.code()) == Some("55006") => {
                return Err(ApplyError::Locked {
                    slot: settings.slot.name.clone(),
                    detail: db::error_text(&e),
                });
            }
            Err(e) if e.code().map(|c| c.code()) == Some("42704") => {
                return Err(ApplyError::NoOrigin(origin.to_owned()));
            }
            Err(e) if e.code().map(|c| c.code()) == Some("3F000") => {
                return Err(ApplyError::NotSetUp);
            }
            Err(e) if e.code().map(|c| c.code()) == Some("42883") => {
                return Err(ApplyError::Db {
                    context: "binding the replication origin",
                    message: "leadsync's schema was made by an older `leadsync setup`: run \
                              `leadsync setup --runtime-role ROLE` again as the installer (it \
                              only adds what is missing)"
                        .into(),
                    sqlstate: None,
                });
            }
            Err(e) => return Err(db_error("binding the replication origin")(e)),
        }
        let limits = column_limits(&client, &settings.target.schema).await?;
        let reverse_queued = match client
            .query_one("SELECT EXISTS (SELECT 1 FROM leadsync.reverse_queue)", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(e) if e.code().map(|c| c.code()) == Some("42P01") => {
                return Err(ApplyError::Db {
                    context: "reading leadsync's state",
                    message: "leadsync's schema was made by an older `leadsync setup`: run \
                              `leadsync setup` again (it only adds what is missing)"
                        .into(),
                    sqlstate: None,
                });
            }
            Err(e) => return Err(db_error("reading the write-back queue")(e)),
        };
        Ok(Applier {
            client: Session::new(client),
            sql: Sql::new(&settings.target.schema),
            source_schema: settings.source.schema.clone(),
            slot: settings.slot.name.clone(),
            rules: ProductRules::new(
                &settings.transform.product_rules,
                settings.transform.case_insensitive,
            ),
            limits,
            delete_mode: settings.sync.delete_mode,
            on_error: settings.sync.on_error,
            chunk: Vec::with_capacity(CHUNK_CHANGES),
            open: false,
            opened_at: None,
            txn_changes: 0,
            parked_in_txn: 0,
            reverse_queued,
            reread: Vec::new(),
            reverse_sql: ReverseSql::new(&settings.source.schema),
            stats: ApplyStats::default(),
        })
    }

    /// The session, for reads that must see the open transaction.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Reads the target's column widths again (an operator may have widened a column to
    /// let parked values in).
    pub async fn refresh_limits(&mut self, target_schema: &str) -> Result<(), ApplyError> {
        self.limits = column_limits(&self.client, target_schema).await?;
        Ok(())
    }

    /// Whether a target transaction is open.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Changes in the open target transaction.
    pub fn txn_changes(&self) -> usize {
        self.txn_changes
    }

    /// How long the open target transaction has been open.
    pub fn txn_age(&self) -> std::time::Duration {
        self.opened_at.map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Opens the target transaction inside an exported snapshot (the first load reads the
    /// legacy tables through it).
    pub async fn begin_in_snapshot(&mut self, snapshot: &str) -> Result<(), ApplyError> {
        self.client
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT {}",
                db::quote_literal(snapshot)
            ))
            .await
            .map_err(db_error("importing the slot's snapshot"))?;
        self.open = true;
        self.opened_at = Some(Instant::now());
        self.txn_changes = 0;
        Ok(())
    }

    async fn ensure_open(&mut self) -> Result<(), ApplyError> {
        if !self.open {
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(db_error("opening the target transaction"))?;
            self.open = true;
            self.opened_at = Some(Instant::now());
            self.txn_changes = 0;
        }
        Ok(())
    }

    /// Adds a contact or value change; writes a chunk when it is full.
    pub async fn push(&mut self, change: Stamped) -> Result<(), ApplyError> {
        self.ensure_open().await?;
        self.chunk.push(change);
        self.txn_changes += 1;
        self.stats.changes += 1;
        if self.chunk.len() >= CHUNK_CHANGES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Plans and writes the pending chunk.
    pub async fn flush(&mut self) -> Result<(), ApplyError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        let ids: Vec<Uuid> = chunk
            .iter()
            .flat_map(|s| [Some(s.change.contact_id()), s.change.reads_contact()])
            .flatten()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let extra_fields: Vec<Uuid> = chunk
            .iter()
            .flat_map(|s| match &s.change {
                Change::UpsertValue(v) | Change::UpsertValueKeepingValue(v, _) => vec![v.field_id],
                Change::Reset { values, .. } => values.iter().map(|v| v.field_id).collect(),
                _ => Vec::new(),
            })
            .collect();
        let prior = self.load_prior(&ids, &extra_fields).await?;
        let plan = plan_chunk(&prior, &chunk, &self.rules, &self.limits, self.delete_mode);
        self.chunk = chunk;
        self.chunk.clear();
        self.execute(plan).await
    }

    /// Reads the state of `ids` as of the open transaction.
    async fn load_prior(&self, ids: &[Uuid], extra_fields: &[Uuid]) -> Result<Prior, ApplyError> {
        // Three reads pipelined on the one session.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
        let (contacts, values, dirty) = tokio::try_join!(
            self.client
                .query_prepared(&self.sql.select_mirror_contacts, &params),
            self.client
                .query_prepared(&self.sql.select_mirror_values, &params),
            self.client.query_prepared(
                "SELECT contact_id, bool_or(state_incomplete) FROM leadsync.dead_letters
                 WHERE status = 'pending' AND contact_id = ANY($1::uuid[])
                 GROUP BY contact_id",
                &params,
            ),
        )
        .map_err(db_error("reading leadsync's state"))?;
        let mut prior = Prior::default();
        let unreadable = |e: crate::project::UnreadableRow| ApplyError::Db {
            context: "reading leadsync's state",
            message: e.to_string(),
            sqlstate: None,
        };
        for row in &contacts {
            let c = Contact::from_columns(row).map_err(unreadable)?;
            prior.contacts.insert(c.id, c);
        }
        let mut fields: HashSet<Uuid> = extra_fields.iter().copied().collect();
        for row in &values {
            let v = FieldValue::from_columns(row, 0).map_err(unreadable)?;
            fields.insert(v.field_id);
            prior
                .values
                .entry(v.contact_id)
                .or_default()
                .insert(v.field_id, v);
        }
        for row in &dirty {
            let contact: Uuid = row.get(0);
            prior.dirty.insert(contact);
            if row.get::<_, Option<bool>>(1) == Some(true) {
                prior.incomplete.insert(contact);
            }
        }
        prior.contexts = self
            .contexts(&fields.into_iter().collect::<Vec<_>>())
            .await?;
        Ok(prior)
    }

    /// The contexts of `fields` from the mirror; a field the mirror does not know yet is
    /// read from `custom_fields` and remembered.
    async fn contexts(&self, fields: &[Uuid]) -> Result<HashMap<Uuid, FieldContext>, ApplyError> {
        if fields.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self
            .client
            .query(
                "SELECT id, context_type FROM leadsync.fields WHERE id = ANY($1::uuid[])",
                &[&fields],
            )
            .await
            .map_err(db_error("reading field contexts"))?;
        let mut out: HashMap<Uuid, FieldContext> = rows
            .iter()
            .map(|r| {
                let ctx: Option<String> = r.get(1);
                (r.get(0), FieldContext::from_column(ctx.as_deref()))
            })
            .collect();
        let missing: Vec<Uuid> = fields
            .iter()
            .filter(|f| !out.contains_key(f))
            .copied()
            .collect();
        if !missing.is_empty() {
            let rows = self
                .client
                .query(
                    &format!(
                        "INSERT INTO leadsync.fields (id, context_type)
                         SELECT id, context_type::text FROM {}.custom_fields
                          WHERE id = ANY($1::uuid[])
                         ON CONFLICT (id) DO NOTHING
                         RETURNING id, context_type",
                        db::quote_ident(&self.source_schema)
                    ),
                    &[&missing],
                )
                .await
                .map_err(db_error("reading field contexts from custom_fields"))?;
            for r in rows {
                let ctx: Option<String> = r.get(1);
                out.insert(r.get(0), FieldContext::from_column(ctx.as_deref()));
            }
        }
        Ok(out)
    }

    /// Writes a plan: state first, then the target, isolating rows the target rejects.
    async fn execute(&mut self, plan: Plan) -> Result<(), ApplyError> {
        write::mirror(&self.client, &self.sql, &plan).await?;
        for dead in &plan.dead_letters {
            self.dead_letter(dead, None).await?;
        }
        if plan.writes.is_empty() {
            return Ok(());
        }
        self.savepoint("SAVEPOINT leadsync_chunk").await?;
        let mut resolved: Vec<Uuid> = Vec::new();
        match write::contacts(&self.client, &self.sql, &plan.writes).await {
            Ok(()) => {
                self.savepoint("RELEASE SAVEPOINT leadsync_chunk").await?;
                resolved.extend(
                    plan.writes
                        .iter()
                        .filter(|w| w.resolves_dead_letters)
                        .map(|w| w.contact_id),
                );
            }
            Err(e) if e.kind() == ErrorKind::BadRow => {
                // Some row in the chunk does not fit: redo it contact by contact, parking
                // the ones the target rejects.
                self.savepoint("ROLLBACK TO SAVEPOINT leadsync_chunk")
                    .await?;
                for writes in &plan.writes {
                    self.savepoint("SAVEPOINT leadsync_contact").await?;
                    match write::contacts(&self.client, &self.sql, std::slice::from_ref(writes))
                        .await
                    {
                        Ok(()) => {
                            self.savepoint("RELEASE SAVEPOINT leadsync_contact").await?;
                            if writes.resolves_dead_letters {
                                resolved.push(writes.contact_id);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::BadRow => {
                            self.savepoint("ROLLBACK TO SAVEPOINT leadsync_contact")
                                .await?;
                            if writes.source.is_none() && is_foreign_key_violation(&e) {
                                // The contact is gone and so is what its rows pointed at (a
                                // workspace deleted with its contacts): the schema's own
                                // cascade already removed the target rows.
                                continue;
                            }
                            let (message, sqlstate) = match &e {
                                ApplyError::Db {
                                    message, sqlstate, ..
                                } => (message.clone(), sqlstate.clone()),
                                other => (other.to_string(), None),
                            };
                            let dead = DeadLetter {
                                contact_id: Some(writes.contact_id),
                                lsn: writes.lsn,
                                source_table: "contacts",
                                operation: "upsert",
                                key: serde_json::json!({ "id": writes.contact_id }),
                                payload: serde_json::json!({ "contact": writes.source }),
                                error: format!(
                                    "contact {} at {}: the target rejected it: {message}",
                                    writes.contact_id, writes.lsn
                                ),
                                state_incomplete: false,
                            };
                            self.dead_letter(&dead, sqlstate).await?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                self.savepoint("RELEASE SAVEPOINT leadsync_chunk").await?;
            }
            Err(e) => return Err(e),
        }
        if !resolved.is_empty() {
            // The key's current state is now in the target: its parked changes are done.
            self.client
                .execute(
                    "UPDATE leadsync.dead_letters SET status = 'replayed', resolved_at = now()
                     WHERE status = 'pending' AND contact_id = ANY($1::uuid[])",
                    &[&resolved],
                )
                .await
                .map_err(db_error("resolving dead letters"))?;
        }
        Ok(())
    }

    async fn savepoint(&self, statement: &str) -> Result<(), ApplyError> {
        self.client
            .batch_execute(statement)
            .await
            .map_err(db_error("managing a savepoint"))
    }

    /// Parks a change that could not even be read (a value leadsync cannot carry), in the
    /// open transaction, after every change received before it.
    pub async fn park(&mut self, dead: &DeadLetter) -> Result<(), ApplyError> {
        self.flush().await?;
        self.ensure_open().await?;
        self.txn_changes += 1;
        self.dead_letter(dead, None).await
    }

    /// Records a dead letter, or stops when the configuration says so. A contact keeps one
    /// pending dead letter, holding its latest rejected state: replaying it re-projects the
    /// contact's current state anyway, never an older payload.
    async fn dead_letter(
        &mut self,
        dead: &DeadLetter,
        sqlstate: Option<String>,
    ) -> Result<(), ApplyError> {
        if self.on_error == OnError::Stop {
            return Err(ApplyError::Stopped(dead.error.clone()));
        }
        if self.parked_in_txn == 0 {
            tracing::warn!(
                contact_id = %dead.contact_id.map_or("none".to_owned(), |c| c.to_string()),
                lsn = %dead.lsn,
                error = %dead.error,
                "change parked in leadsync.dead_letters (further ones in this transaction are counted, not logged)"
            );
        }
        self.parked_in_txn += 1;
        self.stats.dead_letters += 1;
        if dead.state_incomplete
            && let Some(contact) = dead.contact_id
        {
            self.reread.push(contact);
        }
        let lsn = dead.lsn.to_string();
        let updated = match dead.contact_id {
            Some(contact_id) => self
                .client
                .execute(
                    "UPDATE leadsync.dead_letters
                        SET lsn = $2::text::pg_lsn, operation = $3, payload = $4, error = $5,
                            sqlstate = $6, created_at = now(),
                            state_incomplete = state_incomplete OR $7
                      WHERE status = 'pending' AND contact_id = $1",
                    &[
                        &contact_id,
                        &lsn,
                        &dead.operation,
                        &dead.payload,
                        &dead.error,
                        &sqlstate,
                        &dead.state_incomplete,
                    ],
                )
                .await
                .map_err(db_error("recording a dead letter"))?,
            None => 0,
        };
        if updated == 0 {
            self.client
                .execute(
                    "INSERT INTO leadsync.dead_letters
                       (slot_name, lsn, source_table, operation, contact_id, key, payload, error,
                        sqlstate, state_incomplete)
                     VALUES ($1, $2::text::pg_lsn, $3, $4, $5, $6, $7, $8, $9, $10)",
                    &[
                        &self.slot,
                        &lsn,
                        &dead.source_table,
                        &dead.operation,
                        &dead.contact_id,
                        &dead.key,
                        &dead.payload,
                        &dead.error,
                        &sqlstate,
                        &dead.state_incomplete,
                    ],
                )
                .await
                .map_err(db_error("recording a dead letter"))?;
        }
        Ok(())
    }

    /// A custom field was inserted or updated: remember its context, and when the context
    /// changed move every value of the field to its new table.
    pub async fn field_upsert(
        &mut self,
        id: Uuid,
        context: Option<String>,
    ) -> Result<(), ApplyError> {
        self.flush().await?;
        self.ensure_open().await?;
        self.txn_changes += 1;
        let before: Option<Option<String>> = self
            .client
            .query_opt(
                "SELECT context_type FROM leadsync.fields WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db_error("reading a field context"))?
            .map(|r| r.get(0));
        self.client
            .execute(
                "INSERT INTO leadsync.fields (id, context_type) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET context_type = EXCLUDED.context_type",
                &[&id, &context],
            )
            .await
            .map_err(db_error("recording a field context"))?;
        let old = FieldContext::from_column(before.flatten().as_deref());
        let new = FieldContext::from_column(context.as_deref());
        if old != new {
            self.reroute_field(id, &old, &new).await?;
        }
        Ok(())
    }

    /// A custom field was deleted. Its values go with it (the legacy cascade deletes them
    /// and those deletes follow in the stream; the target's own foreign keys cascade too).
    pub async fn field_delete(&mut self, id: Uuid) -> Result<(), ApplyError> {
        self.flush().await?;
        self.ensure_open().await?;
        self.txn_changes += 1;
        self.client
            .execute("DELETE FROM leadsync.fields WHERE id = $1", &[&id])
            .await
            .map_err(db_error("forgetting a field"))?;
        Ok(())
    }

    /// Moves every value of `field` from where `old` put it to where `new` puts it.
    async fn reroute_field(
        &mut self,
        field: Uuid,
        old: &FieldContext,
        new: &FieldContext,
    ) -> Result<(), ApplyError> {
        let mut after = Uuid::nil();
        loop {
            let ids: Vec<Uuid> = self
                .client
                .query(
                    "SELECT contact_id FROM leadsync.field_values
                     WHERE field_id = $1 AND contact_id > $2 ORDER BY contact_id LIMIT $3",
                    &[&field, &after, &PAGE],
                )
                .await
                .map_err(db_error("listing a field's values"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let Some(last) = ids.last() else {
                return Ok(());
            };
            after = *last;
            let prior = self.load_prior(&ids, &[]).await?;
            let writes = crate::project::plan::plan_reroute(&prior, field, old, new, &self.rules);
            let plan = Plan {
                writes,
                ..Plan::default()
            };
            self.execute(plan).await?;
        }
    }

    /// `TRUNCATE` of legacy tables: every contact (or value) in leadsync's state leaves.
    pub async fn truncate(
        &mut self,
        tables: &[SourceTable],
        commit_time: NaiveDateTime,
        lsn: Lsn,
    ) -> Result<(), ApplyError> {
        self.flush().await?;
        self.ensure_open().await?;
        self.txn_changes += 1;
        let contacts = tables.contains(&SourceTable::Contacts);
        let values = contacts || tables.contains(&SourceTable::ContactCustomFields);
        if tables.contains(&SourceTable::CustomFields) {
            // TRUNCATE custom_fields had to cascade to the value tables, target ones too.
            self.client
                .batch_execute("DELETE FROM leadsync.fields")
                .await
                .map_err(db_error("forgetting truncated fields"))?;
        }
        if !values {
            return Ok(());
        }
        let (table, column) = if contacts {
            ("leadsync.contacts", "id")
        } else {
            ("leadsync.field_values", "contact_id")
        };
        let mut after = Uuid::nil();
        loop {
            let ids: Vec<Uuid> = self
                .client
                .query(
                    &format!(
                        "SELECT DISTINCT {column} FROM {table} WHERE {column} > $1
                         ORDER BY {column} LIMIT $2"
                    ),
                    &[&after, &PAGE],
                )
                .await
                .map_err(db_error("listing truncated rows"))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let Some(last) = ids.last() else {
                return Ok(());
            };
            after = *last;
            let prior = self.load_prior(&ids, &[]).await?;
            let mut changes = Vec::new();
            for id in &ids {
                for field in prior.values.get(id).into_iter().flat_map(|v| v.keys()) {
                    changes.push(Stamped {
                        change: Change::DeleteValue {
                            contact_id: *id,
                            field_id: *field,
                        },
                        commit_time,
                        lsn,
                    });
                }
                if contacts && prior.contacts.contains_key(id) {
                    changes.push(Stamped {
                        change: Change::DeleteContact(*id),
                        commit_time,
                        lsn,
                    });
                }
            }
            let plan = plan_chunk(
                &prior,
                &changes,
                &self.rules,
                &self.limits,
                self.delete_mode,
            );
            self.execute(plan).await?;
        }
    }

    /// Commits the open transaction with the checkpoint `lsn` (the end of the last source
    /// transaction in it). Without an open transaction there is nothing to do.
    pub async fn commit(&mut self, lsn: Lsn, commit_time: NaiveDateTime) -> Result<(), ApplyError> {
        self.flush().await?;
        if !self.open {
            return Ok(());
        }
        // Edits waiting for a contact that a legacy transaction held: that lock may be gone.
        self.retry_reverse_queue(lsn).await?;
        if !self.reread.is_empty() {
            // Filed with the dead letters, so a crash loses neither.
            let contacts = std::mem::take(&mut self.reread);
            let requests =
                crate::cmd::dlq::file_rereads(&self.client, &self.source_schema, &contacts)
                    .await
                    .map_err(db_error(
                        "filing the re-read of contacts whose state is incomplete",
                    ))?;
            tracing::info!(
                contacts = contacts.len(),
                requests = ?requests.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
                "contacts whose changes could not be read are re-read from the source"
            );
        }
        let at = commit_time.and_utc();
        self.client
            .execute(
                "SELECT leadsync.origin_xact_setup($1::text::pg_lsn, $2)",
                &[&lsn.to_string(), &at],
            )
            .await
            .map_err(db_error("setting the checkpoint"))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(db_error("committing"))?;
        if self.parked_in_txn > 1 {
            tracing::warn!(
                count = self.parked_in_txn,
                %lsn,
                "changes parked in leadsync.dead_letters in this transaction"
            );
        }
        self.parked_in_txn = 0;
        self.open = false;
        self.opened_at = None;
        self.stats.transactions += 1;
        Ok(())
    }

    /// Abandons the open transaction (a replay from the checkpoint redoes it). Clears the
    /// origin's transaction LSN so that it cannot attach itself to a later commit.
    pub async fn rollback(&mut self) -> Result<(), ApplyError> {
        self.chunk.clear();
        self.parked_in_txn = 0;
        self.reread.clear();
        if self.open {
            self.open = false;
            self.opened_at = None;
            self.client
                .batch_execute("ROLLBACK")
                .await
                .map_err(db_error("rolling back"))?;
        }
        self.client
            .batch_execute("SELECT leadsync.origin_xact_reset()")
            .await
            .map_err(db_error("resetting the origin"))?;
        Ok(())
    }

    /// The checkpoint: the origin's committed LSN (`0/0` before the first commit).
    pub async fn checkpoint(&self) -> Result<Lsn, ApplyError> {
        let lsn: Option<String> = self
            .client
            .query_one("SELECT leadsync.origin_session_progress(true)::text", &[])
            .await
            .map_err(db_error("reading the checkpoint"))?
            .get(0);
        Ok(lsn.and_then(|l| l.parse().ok()).unwrap_or(Lsn::ZERO))
    }

    /// Reverse sync: a customer's edit, in the open transaction. The carried columns it
    /// changed are queued for its contact with what the contact held then (as far as
    /// leadsync has processed), and written back at once unless a legacy transaction holds
    /// the contact's row; then they wait in the queue while the forward stream goes on (see
    /// [`Applier::retry_reverse_queue`]). Nothing is queued for a native or soft-deleted
    /// customer, a contact leadsync does not know, or an edit that changed no carried column.
    pub async fn reverse(
        &mut self,
        edit: &CustomerEdit,
        lsn: Lsn,
    ) -> Result<WriteBack, ApplyError> {
        let Some(contact) = edit.migrated_from.filter(|c| *c == edit.cst_id) else {
            return Ok(WriteBack::NotCarried);
        };
        let changed = edit.changed();
        if edit.deleted || changed.is_empty() {
            return Ok(WriteBack::NotCarried);
        }
        // leadsync's state must hold every change received before this edit.
        self.flush().await?;
        self.ensure_open().await?;
        self.txn_changes += 1;
        let columns: serde_json::Map<String, serde_json::Value> = changed
            .into_iter()
            .map(|(column, value)| (column.to_owned(), value.into()))
            .collect();
        let columns = serde_json::Value::Object(columns);
        let precise = edit.before.is_some();
        let queued = self
            .client
            .execute_prepared(
                QUEUE_WRITE_BACK,
                &[&contact, &lsn.to_string(), &columns, &precise],
            )
            .await
            .map_err(db_error("queueing a customer's edit for its contact"))?;
        if queued == 0 {
            return Ok(WriteBack::NotCarried);
        }
        self.reverse_queued = true;
        self.write_back(contact, lsn).await
    }

    /// Writes back what waits in the queue for contacts no longer locked, oldest first, in
    /// the open transaction. Cheap when the queue is empty: nothing is read.
    pub async fn retry_reverse_queue(&mut self, lsn: Lsn) -> Result<u64, ApplyError> {
        if !self.reverse_queued {
            return Ok(0);
        }
        self.ensure_open().await?;
        let waiting: Vec<Uuid> = self
            .client
            .query(
                "SELECT contact_id FROM leadsync.reverse_queue ORDER BY queued_at, contact_id
                 LIMIT 1000",
                &[],
            )
            .await
            .map_err(db_error("reading the write-back queue"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut written = 0;
        let mut still_locked = 0;
        for contact in &waiting {
            match self.write_back(*contact, lsn).await? {
                WriteBack::Written => written += 1,
                WriteBack::Locked => still_locked += 1,
                _ => {}
            }
        }
        self.reverse_queued = still_locked > 0 || waiting.len() == 1000;
        if written > 0 {
            tracing::info!(
                written,
                still_locked,
                "queued customer edits written back to their contacts"
            );
        }
        Ok(written)
    }

    /// Whether customer edits wait in the queue for a locked contact.
    pub fn reverse_waiting(&self) -> bool {
        self.reverse_queued
    }

    /// Writes contact `contact`'s queued columns back, unless a legacy transaction holds its
    /// row (`NOWAIT`: the forward transaction never waits on a legacy lock).
    async fn write_back(&mut self, contact: Uuid, lsn: Lsn) -> Result<WriteBack, ApplyError> {
        self.savepoint("SAVEPOINT leadsync_reverse").await?;
        let locked = self
            .client
            .query_prepared(&self.reverse_sql.lock, &[&contact])
            .await;
        match locked {
            Err(e) if e.code().map(|c| c.code()) == Some(LOCK_NOT_AVAILABLE) => {
                self.savepoint("ROLLBACK TO SAVEPOINT leadsync_reverse")
                    .await?;
                tracing::debug!(contact_id = %contact, %lsn, "contact locked by a legacy transaction; its customer's edit waits in the queue");
                return Ok(WriteBack::Locked);
            }
            Err(e) => return Err(db_error("locking a contact for a write-back")(e)),
            Ok(rows) if rows.is_empty() => {
                // The contact is gone: nothing is revived.
                self.client
                    .execute_prepared(DROP_QUEUED, &[&contact])
                    .await
                    .map_err(db_error("dropping a write-back"))?;
                self.savepoint("RELEASE SAVEPOINT leadsync_reverse").await?;
                return Ok(WriteBack::NotCarried);
            }
            Ok(_) => {}
        }
        match self
            .client
            .execute_prepared(&self.reverse_sql.write, &[&contact])
            .await
        {
            Ok(written) => {
                self.savepoint("RELEASE SAVEPOINT leadsync_reverse").await?;
                Ok(if written > 0 {
                    WriteBack::Written
                } else {
                    WriteBack::NotCarried
                })
            }
            Err(e) => {
                let e = db_error("writing a customer's edit back to its contact")(e);
                if e.kind() != ErrorKind::BadRow {
                    return Err(e);
                }
                self.savepoint("ROLLBACK TO SAVEPOINT leadsync_reverse")
                    .await?;
                let columns: Option<serde_json::Value> = self
                    .client
                    .query_opt(
                        "DELETE FROM leadsync.reverse_queue WHERE contact_id = $1 RETURNING columns",
                        &[&contact],
                    )
                    .await
                    .map_err(db_error("dropping a write-back"))?
                    .map(|r| r.get(0));
                let sqlstate = match &e {
                    ApplyError::Db { sqlstate, .. } => sqlstate.clone(),
                    _ => None,
                };
                let dead = DeadLetter {
                    contact_id: Some(contact),
                    lsn,
                    source_table: "customers",
                    operation: "reverse_update",
                    key: serde_json::json!({ "cst_id": contact }),
                    payload: serde_json::json!({ "columns": columns }),
                    error: format!(
                        "customer {contact} at {lsn}: its contact rejected the edit: {e}"
                    ),
                    state_incomplete: false,
                };
                self.dead_letter(&dead, sqlstate).await?;
                Ok(WriteBack::Rejected)
            }
        }
    }

    /// Records a resync chunk's progress in the open transaction.
    pub async fn record_resync(
        &mut self,
        request: i64,
        contacts: i64,
        done: bool,
    ) -> Result<(), ApplyError> {
        self.ensure_open().await?;
        self.client
            .execute(
                "UPDATE leadsync.resync_requests SET contacts = contacts + $2,
                        status = CASE WHEN $3 THEN 'done' ELSE status END,
                        finished_at = CASE WHEN $3 THEN now() END
                 WHERE id = $1",
                &[&request, &contacts, &done],
            )
            .await
            .map_err(db_error("recording resync progress"))?;
        Ok(())
    }

    /// Records the migration phase (`backfill`, `streaming`) in the open transaction.
    pub async fn set_phase(&mut self, phase: &str) -> Result<(), ApplyError> {
        self.ensure_open().await?;
        self.client
            .execute(
                "UPDATE leadsync.sync_state SET phase = $2, updated_at = now(),
                   backfill_finished_at = CASE WHEN $2 = 'streaming' THEN clock_timestamp()
                                               ELSE backfill_finished_at END
                 WHERE slot_name = $1",
                &[&self.slot, &phase],
            )
            .await
            .map_err(db_error("recording the phase"))?;
        Ok(())
    }
}

/// The apply session, with its statements prepared once: the same handful of statements
/// run for every chunk, and a prepared one is neither parsed nor (once PostgreSQL settles on
/// a generic plan) planned again, and costs one round trip instead of two.
pub struct Session {
    client: Client,
    prepared: std::sync::Mutex<HashMap<String, tokio_postgres::Statement>>,
}

impl Session {
    fn new(client: Client) -> Session {
        Session {
            client,
            prepared: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn statement(
        &self,
        sql: &str,
    ) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        let known = self
            .prepared
            .lock()
            .ok()
            .and_then(|cache| cache.get(sql).cloned());
        if let Some(statement) = known {
            return Ok(statement);
        }
        let statement = self.client.prepare(sql).await?;
        if let Ok(mut cache) = self.prepared.lock() {
            cache.insert(sql.to_owned(), statement.clone());
        }
        Ok(statement)
    }

    /// `execute` with the statement prepared once per session.
    pub async fn execute_prepared(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }

    /// `query` with the statement prepared once per session.
    pub async fn query_prepared(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await
    }
}

impl std::ops::Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// The widths of the length-limited target columns as the catalog has them.
pub async fn column_limits(
    client: &Client,
    target_schema: &str,
) -> Result<ColumnLimits, ApplyError> {
    let rows = client
        .query(
            "SELECT c.relname || '.' || a.attname,
                    CASE WHEN a.atttypid IN ('varchar'::regtype, 'bpchar'::regtype)
                              AND a.atttypmod > 4
                         THEN a.atttypmod - 4 END
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname IN ('customers', 'leads')
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[&target_schema],
        )
        .await
        .map_err(db_error("reading the target's column widths"))?;
    let mut limits = ColumnLimits::default();
    for row in rows {
        let column: String = row.get(0);
        let limit: Option<i32> = row.get(1);
        limits = limits.with(&column, limit.and_then(|l| usize::try_from(l).ok()));
    }
    Ok(limits)
}

/// `lock_timeout`'s and `NOWAIT`'s error: the row is locked.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// What became of a customer's edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteBack {
    /// Written to the contact.
    Written,
    /// The contact's row is locked: the edit waits in the queue.
    Locked,
    /// The legacy table rejected it: a dead letter.
    Rejected,
    /// Nothing to write (a native or deleted customer, a gone contact, no carried column
    /// changed, or the contact changed those columns later).
    NotCarried,
}

/// Queues the columns `$3` (`{"email": "…"}`) of a customer edit at `$2` for contact `$1`,
/// each with what leadsync's state holds for it (`base`). Without the customer's old row
/// (`$4` false) only the columns that differ from that state count as changed. A later edit
/// of a column already queued replaces it, base included.
const QUEUE_WRITE_BACK: &str = "WITH edit AS (
       SELECT e.key, e.value, to_jsonb(m) -> e.key AS base
       FROM leadsync.contacts m, jsonb_each($3::jsonb) AS e(key, value)
       WHERE m.id = $1 AND ($4 OR e.value IS DISTINCT FROM to_jsonb(m) -> e.key))
     INSERT INTO leadsync.reverse_queue AS q (contact_id, lsn, columns)
     SELECT $1, $2::text::pg_lsn,
            jsonb_object_agg(key, jsonb_build_object('value', value, 'base', base))
     FROM edit HAVING count(*) > 0
     ON CONFLICT (contact_id) DO UPDATE
       SET columns = q.columns || EXCLUDED.columns, lsn = EXCLUDED.lsn";

const DROP_QUEUED: &str = "DELETE FROM leadsync.reverse_queue WHERE contact_id = $1";

/// The write-back statements for legacy tables in one schema.
#[derive(Debug, Clone)]
struct ReverseSql {
    /// Locks contact `$1`'s row, or fails at once when a legacy transaction holds it.
    lock: String,
    /// Writes contact `$1`'s queued columns and empties its queue entry.
    write: String,
}

impl ReverseSql {
    /// Each queued column is written only where it differs from the contact and the
    /// contact still holds the column's `base` — or the value reverse sync itself wrote
    /// there last (an earlier customer edit not yet processed forward): otherwise the
    /// contact changed that column later, and the later commit wins. Columns not queued are
    /// never written. `updated_at` moves only when a column is written.
    fn new(source_schema: &str) -> ReverseSql {
        let contacts = format!("{}.contacts", db::quote_ident(source_schema));
        let set: Vec<String> = REVERSE_COLUMNS
            .iter()
            .map(|(_, column)| {
                format!(
                    "{column} = CASE WHEN w.cols ? '{column}' THEN w.cols ->> '{column}' \
                     ELSE c.{column} END"
                )
            })
            .collect();
        ReverseSql {
            lock: format!("SELECT 1 FROM {contacts} WHERE id = $1 FOR UPDATE NOWAIT"),
            write: format!(
                "WITH q AS (
                   DELETE FROM leadsync.reverse_queue WHERE contact_id = $1 RETURNING columns),
                 r AS (SELECT columns FROM leadsync.reverse_writes WHERE contact_id = $1),
                 cur AS (SELECT to_jsonb(c) AS row FROM {contacts} c WHERE c.id = $1),
                 w AS (
                   SELECT jsonb_object_agg(e.key, e.value -> 'value') AS cols
                   FROM q CROSS JOIN cur CROSS JOIN jsonb_each(q.columns) AS e(key, value)
                   LEFT JOIN r ON true
                   WHERE (cur.row -> e.key IS NOT DISTINCT FROM e.value -> 'base'
                          OR (r.columns ? e.key
                              AND cur.row -> e.key IS NOT DISTINCT FROM r.columns -> e.key))
                     AND cur.row -> e.key IS DISTINCT FROM e.value -> 'value'
                   HAVING count(*) > 0),
                 written AS (
                   UPDATE {contacts} c SET {set}, updated_at = now()
                   FROM w WHERE c.id = $1
                   RETURNING c.id, c.xmin, w.cols)
                 INSERT INTO leadsync.reverse_writes AS rw (contact_id, row_xmin, columns)
                 SELECT id, xmin, cols FROM written
                 ON CONFLICT (contact_id) DO UPDATE
                   SET row_xmin = EXCLUDED.row_xmin, columns = rw.columns || EXCLUDED.columns,
                       written_at = now()",
                set = set.join(",\n                       ")
            ),
        }
    }
}

fn is_foreign_key_violation(e: &ApplyError) -> bool {
    matches!(e, ApplyError::Db { sqlstate: Some(code), .. } if code == "23503")
}
