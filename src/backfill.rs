//! The first load at COPY speed.
//!
//! Everything happens in the apply session's transaction, which imports the slot's exported
//! snapshot, so the load sees exactly the data before the slot's start and commits together
//! with the checkpoint at that start. Inside it:
//!
//! 1. leadsync's own state is copied server-side (`INSERT … SELECT` from the snapshot);
//! 2. the target tables' indexes, keys and foreign keys are set aside (their definitions
//!    read from the catalog), because building them once over loaded tables is far cheaper
//!    than maintaining them row by row, and so is their row-level security, which refuses
//!    COPY to a role that does not own them — through the installer's functions, which
//!    refuse to commit a transaction that did not put everything back ([`crate::definer`]);
//! 3. one pass per target table: a second session that imported the same snapshot streams
//!    the legacy rows out with binary `COPY TO`, the Rust projection turns them into target
//!    rows, and binary `COPY FROM` streams them in — memory stays flat whatever the size;
//! 4. the indexes, constraints and row-level security are put back under their own names,
//!    so the schema ends exactly as `leadsync setup` made it, and the tables are analysed;
//! 5. the foreign keys into legacy tables, which [`foreign_keys::set_aside`] dropped in a
//!    short transaction of its own before the snapshot (dropping them here would lock the
//!    legacy tables for the whole load), are added back and validated.
//!
//! Rows whose values do not fit the target (a phone over 20 characters) are caught before
//! the COPY — one bad row must not abort it — and parked as dead letters.

use std::collections::HashSet;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::Lsn;
use crate::apply::sql::{target_columns, value_columns};
use crate::apply::{ApplyError, db_error};
use crate::config::Settings;
use crate::control::Shutdown;
use crate::db::{self, quote_ident};
use crate::project::plan::{DeadLetter, contact_payload, misfit_dead_letter};
use crate::project::{
    CONTACT_COLUMNS, ColumnLimits, Contact, ContactProjection, FieldContext, FieldValue,
    ProductRules, ValueTable, contact_select, project_contact, route_field_value,
};
use crate::status::{BackfillProgress, SharedStatus};
use crate::statusline::human_seconds;

pub mod foreign_keys;

/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Rows each table received.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LoadStats {
    pub contacts: u64,
    pub values: u64,
    pub customers: u64,
    pub leads: u64,
    pub appointments: u64,
    pub customer_custom_fields: u64,
    pub lead_custom_fields: u64,
    pub appointment_custom_fields: u64,
    pub dead_letters: u64,
    pub seconds: f64,
    /// Each step and how long it took, in order (the copies of the six tables overlap the
    /// copy of leadsync's state, which runs beside them on a session of its own).
    pub steps: Vec<(String, f64)>,
}

impl LoadStats {
    /// The end-of-load summary: each step's duration, then what was written.
    pub fn summary(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(step, seconds)| format!("{step} {}", crate::statusline::human_seconds(*seconds)))
            .collect();
        let n = crate::statusline::thousands;
        format!(
            "first load in {}: {}. {} contacts and {} custom-field values read; written {} \
             customers, {} leads, {} appointments, {} custom-field values; {} dead letters",
            crate::statusline::human_seconds(self.seconds),
            steps.join(", "),
            n(self.contacts),
            n(self.values),
            n(self.customers),
            n(self.leads),
            n(self.appointments),
            n(self.customer_custom_fields
                + self.lead_custom_fields
                + self.appointment_custom_fields),
            n(self.dead_letters),
        )
    }
}

/// The binary COPY type of a column read as `ty` (see [`CONTACT_COLUMNS`]).
fn copy_type(ty: &str) -> Type {
    match ty {
        "uuid" => Type::UUID,
        "int4" => Type::INT4,
        "int8" => Type::INT8,
        "timestamp" => Type::TIMESTAMP,
        _ => Type::TEXT,
    }
}

/// One target table's pass: which legacy rows feed it and which rows come out.
#[derive(Clone, Copy)]
enum Pass {
    Customers,
    Leads,
    Appointments,
    Values(ValueTable),
}

impl Pass {
    fn table(self) -> &'static str {
        match self {
            Pass::Customers => "customers",
            Pass::Leads => "leads",
            Pass::Appointments => "appointments",
            Pass::Values(v) => v.table(),
        }
    }

    /// The columns the pass writes, in the order `write_row` gives them: the live image of
    /// each row (a first load writes no `deleted_at`).
    fn columns(self) -> Vec<&'static str> {
        match self {
            Pass::Customers => target_columns("customers"),
            Pass::Leads => target_columns("leads"),
            Pass::Appointments => target_columns("appointments"),
            Pass::Values(table) => value_columns(table).to_vec(),
        }
    }

    /// The legacy rows this pass reads: contacts, or values with their contact and context.
    fn source_query(self, s: &str, has_context: bool) -> String {
        let context = |wanted: &str| {
            if !has_context {
                return if wanted == "contact" { "true" } else { "false" }.to_owned();
            }
            match wanted {
                "contact" => "(f.context_type IS NULL OR f.context_type = 'contact')".into(),
                other => format!("f.context_type = '{other}'"),
            }
        };
        let contact = contact_select("c");
        match self {
            Pass::Customers => format!("SELECT {contact} FROM {s}.contacts c"),
            Pass::Leads => {
                format!("SELECT {contact} FROM {s}.contacts c WHERE c.lead_status IS NOT NULL")
            }
            Pass::Appointments => format!(
                "SELECT {contact} FROM {s}.contacts c
                 WHERE c.lead_status IS NOT NULL AND c.appointment_date IS NOT NULL"
            ),
            Pass::Values(table) => {
                let (wanted, parent) = match table {
                    ValueTable::CustomerCustomFields => ("contact", "true"),
                    ValueTable::LeadCustomFields => ("lead", "c.lead_status IS NOT NULL"),
                    ValueTable::AppointmentCustomFields => (
                        "appointment",
                        "c.lead_status IS NOT NULL AND c.appointment_date IS NOT NULL",
                    ),
                };
                format!(
                    "SELECT {contact}, v.field_id::uuid, v.value::text,
                            v.created_at::timestamp, v.updated_at::timestamp, v.created_by::uuid
                     FROM {s}.contact_custom_fields v
                     JOIN {s}.contacts c ON c.id = v.contact_id
                     JOIN {s}.custom_fields f ON f.id = v.field_id
                     WHERE {} AND {parent}",
                    context(wanted)
                )
            }
        }
    }

    fn source_types(self) -> Vec<Type> {
        let mut types: Vec<Type> = CONTACT_COLUMNS
            .iter()
            .map(|(_, ty)| copy_type(ty))
            .collect();
        if let Pass::Values(_) = self {
            types.extend([
                Type::UUID,
                Type::TEXT,
                Type::TIMESTAMP,
                Type::TIMESTAMP,
                Type::UUID,
            ]);
        }
        types
    }
}

/// Loads every legacy row into the target and leadsync's state, inside the open apply
/// transaction (which must already hold the snapshot), reading through `reader` (which
/// must hold the same snapshot). The foreign keys set aside before the snapshot are added
/// back last, so the transaction holds locks on the legacy tables only from there until it
/// commits.
pub async fn load(
    settings: &Settings,
    apply: &Client,
    reader: &Client,
    state: &Client,
    lsn: Lsn,
    shutdown: &Shutdown,
    status: &SharedStatus,
) -> Result<(LoadStats, Vec<DeadLetter>), ApplyError> {
    let started = Instant::now();
    let s = quote_ident(&settings.source.schema);
    let t = quote_ident(&settings.target.schema);
    let rules = ProductRules::new(
        &settings.transform.product_rules,
        settings.transform.case_insensitive,
    );
    let limits = crate::apply::column_limits(apply, &settings.target.schema).await?;
    let mut stats = LoadStats::default();

    // Free hands for the load: no statement timeout, enough memory to build indexes.
    apply
        .batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL maintenance_work_mem = '256MB'")
        .await
        .map_err(db_error("preparing the first load"))?;

    let has_context: bool = apply
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_schema = $1 AND table_name = 'custom_fields'
                              AND column_name = 'context_type')",
            &[&settings.source.schema],
        )
        .await
        .map_err(db_error("reading custom_fields"))?
        .get(0);
    let context = if has_context {
        "context_type::text"
    } else {
        "NULL::text"
    };

    set_aside(apply, LoadGroup::Target).await?;

    // leadsync's state is a plain copy of the legacy rows, made server-side on its own
    // session (in the same snapshot) while the target tables load. It commits first; if the
    // load then fails, the phase is still `backfill` and the next run starts over.
    let copy_state = async {
        state
            .batch_execute("TRUNCATE leadsync.contacts, leadsync.field_values, leadsync.fields")
            .await
            .map_err(db_error("clearing leadsync's state"))?;
        set_aside(state, LoadGroup::State).await?;
        let contact = contact_select("c");
        let state_sql = format!(
            "INSERT INTO leadsync.fields (id, context_type) SELECT id, {context} FROM {s}.custom_fields;
             INSERT INTO leadsync.contacts SELECT {contact} FROM {s}.contacts c;
             INSERT INTO leadsync.field_values (contact_id, field_id, value, created_at, updated_at, created_by)
               SELECT contact_id, field_id, value, created_at, updated_at, created_by
               FROM {s}.contact_custom_fields;"
        );
        state
            .batch_execute(&state_sql)
            .await
            .map_err(db_error("copying the legacy rows into leadsync's state"))?;
        restore(state, LoadGroup::State).await?;
        let contacts = count(state, "leadsync.contacts").await?;
        let values = count(state, "leadsync.field_values").await?;
        Ok::<_, ApplyError>((contacts, values))
    };
    let load_target = async {
        let totals = pass_totals(apply, &s, has_context).await?;
        let planned: Vec<(&str, u64)> = passes_in_order()
            .iter()
            .zip(totals)
            .map(|(pass, total)| (pass.table(), total))
            .collect();
        for (table, total) in &planned {
            metrics::gauge!(crate::metrics::FIRST_LOAD_ROWS_EXPECTED, "table" => *table)
                .set(*total as f64);
            metrics::gauge!(crate::metrics::FIRST_LOAD_ROWS, "table" => *table).set(0.0);
        }
        status.update(|st| st.backfill = Some(BackfillProgress::new(&planned)));
        let mut parked: HashSet<Uuid> = HashSet::new();
        let mut dead = Vec::new();
        let mut steps = Vec::new();
        for (pass, total) in passes_in_order().into_iter().zip(totals) {
            let pass_started = Instant::now();
            let rows = copy_pass(
                pass,
                total,
                apply,
                reader,
                &s,
                &t,
                has_context,
                &rules,
                &limits,
                lsn,
                &mut parked,
                &mut dead,
                status,
            )
            .await?;
            match pass {
                Pass::Customers => stats.customers = rows,
                Pass::Leads => stats.leads = rows,
                Pass::Appointments => stats.appointments = rows,
                Pass::Values(ValueTable::CustomerCustomFields) => {
                    stats.customer_custom_fields = rows
                }
                Pass::Values(ValueTable::LeadCustomFields) => stats.lead_custom_fields = rows,
                Pass::Values(ValueTable::AppointmentCustomFields) => {
                    stats.appointment_custom_fields = rows
                }
            }
            tracing::info!(
                table = pass.table(),
                rows,
                since_start = %human_seconds(started.elapsed().as_secs_f64()),
                "first load: table copied"
            );
            steps.push((
                format!("copy {}", pass.table()),
                pass_started.elapsed().as_secs_f64(),
            ));
        }
        Ok::<_, ApplyError>((steps, dead))
    };
    let ((contacts, values), (steps, dead)) = tokio::try_join!(copy_state, load_target)?;
    stats.steps = steps;
    stats.contacts = contacts;
    stats.values = values;
    state
        .batch_execute("COMMIT")
        .await
        .map_err(db_error("committing leadsync's state"))?;

    let rebuild = Instant::now();
    set_step(status, "rebuilding indexes");
    restore(apply, LoadGroup::Target).await?;
    tracing::info!(
        took = %human_seconds(rebuild.elapsed().as_secs_f64()),
        "first load: indexes and constraints rebuilt, tables analysed"
    );
    stats
        .steps
        .push(("indexes".into(), rebuild.elapsed().as_secs_f64()));
    let validate = Instant::now();
    set_step(status, "adding back and validating keys");
    let restored = foreign_keys::restore(
        apply,
        settings,
        foreign_keys::LockWait::UntilShutdown(shutdown),
    )
    .await?;
    if restored > 0 {
        tracing::info!(
            keys = restored,
            took = %human_seconds(validate.elapsed().as_secs_f64()),
            "first load: foreign keys into legacy tables added back and validated"
        );
        stats
            .steps
            .push(("keys".into(), validate.elapsed().as_secs_f64()));
    }
    stats.dead_letters = dead.len() as u64;
    stats.seconds = started.elapsed().as_secs_f64();
    Ok((stats, dead))
}

/// The passes of the first load, in their order.
fn passes_in_order() -> [Pass; 6] {
    [
        Pass::Customers,
        Pass::Leads,
        Pass::Appointments,
        Pass::Values(ValueTable::CustomerCustomFields),
        Pass::Values(ValueTable::LeadCustomFields),
        Pass::Values(ValueTable::AppointmentCustomFields),
    ]
}

/// Names what the first load does now, in `/status`.
pub fn set_step(status: &SharedStatus, step: &str) {
    status.update(|s| {
        if let Some(progress) = s.backfill.as_mut() {
            progress.step = step.to_owned();
        }
    });
}

/// How many source rows each pass reads, for the progress display.
async fn pass_totals(client: &Client, s: &str, has_context: bool) -> Result<[u64; 6], ApplyError> {
    let context = if has_context {
        "COALESCE(f.context_type::text, 'contact')"
    } else {
        "'contact'"
    };
    let row = client
        .query_one(
            &format!(
                "WITH c AS (SELECT id, lead_status IS NOT NULL AS lead,
                                   lead_status IS NOT NULL AND appointment_date IS NOT NULL AS appt
                            FROM {s}.contacts),
                      v AS (SELECT {context} AS ctx, c.lead, c.appt
                            FROM {s}.contact_custom_fields fv
                            JOIN c ON c.id = fv.contact_id
                            JOIN {s}.custom_fields f ON f.id = fv.field_id)
                 SELECT (SELECT count(*) FROM c),
                        (SELECT count(*) FILTER (WHERE lead) FROM c),
                        (SELECT count(*) FILTER (WHERE appt) FROM c),
                        (SELECT count(*) FILTER (WHERE ctx = 'contact') FROM v),
                        (SELECT count(*) FILTER (WHERE ctx = 'lead' AND lead) FROM v),
                        (SELECT count(*) FILTER (WHERE ctx = 'appointment' AND appt) FROM v)"
            ),
            &[],
        )
        .await
        .map_err(db_error("counting rows to load"))?;
    let n = |i: usize| row.get::<_, i64>(i) as u64;
    Ok([n(0), n(1), n(2), n(3), n(4), n(5)])
}

/// Progress of one pass: a bar on a terminal, a log line every few seconds otherwise.
struct Progress<'a> {
    table: &'static str,
    total: u64,
    status: &'a SharedStatus,
    started: Instant,
    last_log: std::cell::Cell<Instant>,
    bar: Option<indicatif::ProgressBar>,
}

impl<'a> Progress<'a> {
    fn new(table: &'static str, total: u64, status: &'a SharedStatus) -> Progress<'a> {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>26} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(table);
            bar
        });
        Progress {
            table,
            total,
            status,
            started: Instant::now(),
            last_log: std::cell::Cell::new(Instant::now()),
            bar,
        }
    }

    fn tick(&self, done: u64) {
        if done % 1024 == 0 {
            self.publish(done);
        }
        if let Some(bar) = &self.bar {
            if done % 1024 == 0 {
                bar.set_position(done);
            }
            return;
        }
        if self.last_log.get().elapsed() > PROGRESS_EVERY {
            let seconds = self.started.elapsed().as_secs_f64();
            let rate = done as f64 / seconds.max(0.001);
            let eta = self.total.saturating_sub(done) as f64 / rate.max(1.0);
            tracing::info!(
                table = self.table,
                done,
                total = self.total,
                rows_per_second = rate as u64,
                eta_seconds = eta as u64,
                "first load in progress"
            );
            self.last_log.set(Instant::now());
        }
    }

    /// Rows read so far, to `/status` and the metrics.
    fn publish(&self, done: u64) {
        let now = chrono::Utc::now();
        let mut eta = None;
        self.status.update(|s| {
            if let Some(progress) = s.backfill.as_mut() {
                progress.advance(self.table, done, now);
                eta = progress.eta_seconds;
            }
        });
        metrics::gauge!(crate::metrics::FIRST_LOAD_ROWS, "table" => self.table).set(done as f64);
        if let Some(eta) = eta {
            metrics::gauge!(crate::metrics::FIRST_LOAD_ETA_SECONDS).set(eta as f64);
        }
    }

    fn finish(&self, done: u64) {
        self.publish(done);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.finish();
        }
    }
}

async fn count(client: &Client, table: &str) -> Result<u64, ApplyError> {
    let n: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(db_error("counting loaded rows"))?
        .get(0);
    Ok(n as u64)
}

/// Streams one pass from the reader through the projection into the target table.
#[allow(clippy::too_many_arguments)]
async fn copy_pass(
    pass: Pass,
    total: u64,
    apply: &Client,
    reader: &Client,
    s: &str,
    t: &str,
    has_context: bool,
    rules: &ProductRules,
    limits: &ColumnLimits,
    lsn: Lsn,
    parked: &mut HashSet<Uuid>,
    dead: &mut Vec<DeadLetter>,
    status: &SharedStatus,
) -> Result<u64, ApplyError> {
    let columns = pass.columns();
    let target = format!("{t}.{}", pass.table());
    let types = column_types(apply, &target, &columns).await?;
    let sink = apply
        .copy_in(&format!(
            "COPY {target} ({}) FROM STDIN (FORMAT binary)",
            columns.join(", ")
        ))
        .await
        .map_err(db_error("starting COPY into the target"))?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let source = reader
        .copy_out(&format!(
            "COPY ({}) TO STDOUT (FORMAT binary)",
            pass.source_query(s, has_context)
        ))
        .await
        .map_err(db_error("starting COPY out of the snapshot"))?;
    let mut rows = pin!(BinaryCopyOutStream::new(source, &pass.source_types()));

    let mut written = 0u64;
    let mut read = 0u64;
    let progress = Progress::new(pass.table(), total, status);
    while let Some(row) = rows.next().await {
        let row = row.map_err(db_error("reading the snapshot"))?;
        read += 1;
        let contact = match Contact::from_columns(&row) {
            Ok(contact) => contact,
            Err(e) => {
                // Parked with its contact (every pass skips it); leadsync's state holds the
                // row as it is, copied server-side.
                if let (Pass::Customers, Some(id)) = (pass, e.contact_id) {
                    parked.insert(id);
                    dead.push(unreadable_dead_letter(&e, lsn));
                } else if e.contact_id.is_none() {
                    return Err(ApplyError::Db {
                        context: "reading the snapshot",
                        message: e.to_string(),
                        sqlstate: None,
                    });
                }
                continue;
            }
        };
        let projection = project_contact(&contact, rules);
        if let Pass::Customers = pass {
            if let Some(letter) = misfit_dead_letter(&projection, limits, lsn, "first_load", || {
                contact_payload(Some(&contact), &Default::default())
            }) {
                parked.insert(contact.id);
                dead.push(letter);
                continue;
            }
        } else if parked.contains(&contact.id) {
            continue;
        }
        if write_row(pass, &row, &projection, writer.as_mut()).await? {
            written += 1;
        }
        progress.tick(read);
    }
    progress.finish(read);
    writer
        .as_mut()
        .finish()
        .await
        .map_err(db_error("finishing COPY into the target"))?;
    metrics::counter!(crate::metrics::SNAPSHOT_ROWS_TOTAL, "table" => pass.table())
        .increment(written);
    Ok(written)
}

/// The dead letter of a legacy row that could not be read.
fn unreadable_dead_letter(e: &crate::project::UnreadableRow, lsn: Lsn) -> DeadLetter {
    DeadLetter {
        contact_id: e.contact_id,
        lsn,
        source_table: e.table,
        operation: "first_load",
        key: serde_json::json!({ "id": e.contact_id }),
        payload: serde_json::json!({ "column": e.column }),
        error: format!(
            "contact {} in the first load cannot be read: {e}",
            e.contact_id
                .map_or("(unknown)".to_owned(), |id| id.to_string())
        ),
        state_incomplete: true,
    }
}

/// Writes the pass's row for one source row; false when the row has no place here.
async fn write_row(
    pass: Pass,
    row: &BinaryCopyOutRow,
    p: &ContactProjection,
    writer: std::pin::Pin<&mut BinaryCopyInWriter>,
) -> Result<bool, ApplyError> {
    let result = match pass {
        Pass::Customers => {
            let c = &p.customer;
            writer
                .write(&[
                    &c.cst_id,
                    &c.workspace_id,
                    &c.firstname,
                    &c.lastname,
                    &c.email,
                    &c.phone1,
                    &c.phone2,
                    &c.address1,
                    &c.address2,
                    &c.city,
                    &c.state,
                    &c.zip,
                    &c.country,
                    &c.dateadded,
                    &c.lastchanged,
                    &c.created_at,
                    &c.updated_at,
                    &c.created_by,
                    &c.migrated_from_contact_id,
                ])
                .await
        }
        Pass::Leads => {
            let Some(l) = &p.lead else { return Ok(false) };
            writer
                .write(&[
                    &l.id,
                    &l.customer_id,
                    &l.workspace_id,
                    &l.productid,
                    &l.source,
                    &l.sourcesubdescr,
                    &l.disposition,
                    &l.stg_id,
                    // Fits: a priority INTEGER cannot hold parks the contact first.
                    &i32::try_from(l.priority).unwrap_or(crate::project::DEFAULT_PRIORITY as i32),
                    &l.entrydate,
                    &l.lastchangedon,
                    &l.created_at,
                    &l.updated_at,
                    &l.created_by,
                    &l.migrated_from_contact_id,
                ])
                .await
        }
        Pass::Appointments => {
            let Some(a) = &p.appointment else {
                return Ok(false);
            };
            writer
                .write(&[
                    &a.id,
                    &a.lead_id,
                    &a.workspace_id,
                    &a.apptdate,
                    &a.disposition,
                    &a.apptset,
                    &a.verified,
                    &a.confirmed,
                    &a.setdate,
                    &a.verifieddate,
                    &a.confirmeddate,
                    &a.lastchangeddate,
                    &a.created_at,
                    &a.updated_at,
                    &a.created_by,
                    &a.migrated_from_contact_id,
                ])
                .await
        }
        Pass::Values(table) => {
            // The row is the contact's columns, then the value's (without its contact id).
            let read = |e: tokio_postgres::Error| ApplyError::Db {
                context: "reading a custom-field value from the snapshot",
                message: format!("contact {}: {e}", p.customer.cst_id),
                sqlstate: None,
            };
            let at = CONTACT_COLUMNS.len();
            let value = FieldValue {
                contact_id: p.customer.cst_id,
                field_id: row.try_get(at).map_err(read)?,
                value: row.try_get(at + 1).map_err(read)?,
                created_at: row.try_get(at + 2).map_err(read)?,
                updated_at: row.try_get(at + 3).map_err(read)?,
                created_by: row.try_get(at + 4).map_err(read)?,
            };
            let context = match table {
                ValueTable::CustomerCustomFields => FieldContext::Contact,
                ValueTable::LeadCustomFields => FieldContext::Lead,
                ValueTable::AppointmentCustomFields => FieldContext::Appointment,
            };
            let Ok(routed) = route_field_value(&value, &context, Some(p)) else {
                return Ok(false);
            };
            debug_assert_eq!(routed.table, table);
            let json = JsonText(routed.value.as_deref());
            writer
                .write(&[
                    &routed.parent_id,
                    &routed.field_id,
                    &json,
                    &routed.created_at,
                    &routed.updated_at,
                    &routed.created_by,
                ])
                .await
        }
    };
    result.map_err(db_error("writing to COPY"))?;
    Ok(true)
}

/// JSONB text for binary COPY: the version byte 1, then the text.
#[derive(Debug)]
struct JsonText<'a>(Option<&'a str>);

impl ToSql for JsonText<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        match self.0 {
            None => Ok(tokio_postgres::types::IsNull::Yes),
            Some(text) => {
                out.put_u8(1);
                out.put_slice(text.as_bytes());
                Ok(tokio_postgres::types::IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    tokio_postgres::types::to_sql_checked!();
}

/// The types of `columns` of `table`, from the catalog.
async fn column_types(
    client: &Client,
    table: &str,
    columns: &[&str],
) -> Result<Vec<Type>, ApplyError> {
    let names: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
    let rows = client
        .query(
            "SELECT a.atttypid FROM unnest($2::text[]) WITH ORDINALITY AS n(name, i)
             JOIN pg_attribute a ON a.attrelid = $1::text::regclass AND a.attname = n.name
             ORDER BY n.i",
            &[&table, &names],
        )
        .await
        .map_err(db_error("reading target column types"))?;
    let types: Vec<Type> = rows
        .iter()
        .map(|r| Type::from_oid(r.get(0)).unwrap_or(Type::TEXT))
        .collect();
    if types.len() != columns.len() {
        return Err(ApplyError::Db {
            context: "reading target column types",
            message: format!("{table} lacks some of the columns {}", columns.join(", ")),
            sqlstate: None,
        });
    }
    Ok(types)
}

/// The tables whose keys, indexes and row-level security a first load sets aside.
#[derive(Debug, Clone, Copy)]
enum LoadGroup {
    /// The six target tables.
    Target,
    /// leadsync's copy of the legacy rows.
    State,
}

impl LoadGroup {
    fn name(self) -> &'static str {
        match self {
            LoadGroup::Target => "target",
            LoadGroup::State => "state",
        }
    }
}

/// Sets the group's keys, indexes and (target tables) row-level security aside in the open
/// transaction, through the installer's function (only a table's owner may; see
/// [`crate::definer`]): a load into empty tables need not pay per-row index maintenance.
async fn set_aside(client: &Client, group: LoadGroup) -> Result<(), ApplyError> {
    client
        .query_one("SELECT leadsync.set_aside_for_load($1)", &[&group.name()])
        .await
        .map_err(db_error("setting indexes aside for the load"))?;
    Ok(())
}

/// Builds what [`set_aside`] set aside again (and analyses the target tables); the
/// transaction cannot commit before this.
async fn restore(client: &Client, group: LoadGroup) -> Result<(), ApplyError> {
    client
        .query_one("SELECT leadsync.restore_after_load($1)", &[&group.name()])
        .await
        .map_err(db_error(
            "rebuilding indexes and constraints after the load",
        ))?;
    Ok(())
}

/// Opens a session for reading the snapshot.
pub async fn reader(settings: &Settings, snapshot: &str) -> Result<Client, ApplyError> {
    snapshot_session(settings, snapshot, "READ ONLY").await
}

/// Opens a session that writes leadsync's state from the snapshot.
pub async fn state_writer(settings: &Settings, snapshot: &str) -> Result<Client, ApplyError> {
    snapshot_session(settings, snapshot, "").await
}

async fn snapshot_session(
    settings: &Settings,
    snapshot: &str,
    mode: &str,
) -> Result<Client, ApplyError> {
    let client =
        db::connect(settings.source_url())
            .await
            .map_err(|e| ApplyError::ConnectionLost {
                context: "connecting the snapshot reader",
                message: e.to_string(),
            })?;
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ {mode}; SET TRANSACTION SNAPSHOT {}",
            db::quote_literal(snapshot)
        ))
        .await
        .map_err(db_error("importing the slot's snapshot"))?;
    Ok(client)
}
