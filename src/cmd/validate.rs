//! `leadsync validate`: the migration guide's validation suite (completeness, data
//! integrity, business logic) plus the row-by-row reconciliation of the target against the
//! projection of the source ([`crate::reconcile`]). Read-only.
//!
//! Under live writes the target always trails the source by the changes in flight, so a
//! single comparison would report them as differences. Validation therefore reports only
//! *persistent* differences: when a comparison differs it notes the source's WAL insert
//! position, waits until the daemon's slot has been acknowledged past it (the daemon then
//! holds every change that was in flight), and compares again. A table counts as differing
//! only when the same key differs in [`PERSIST_ROUNDS`] consecutive comparisons; a table
//! whose differing keys changed in between is re-checked, up to [`MAX_ROUNDS`] comparisons
//! in all. The
//! reconciliation keeps [`crate::reconcile::SAMPLES`] keys per table, so persistence is
//! decided on those samples; a steady stream of writes touching the very same keys could
//! hide a real difference for one run, never invent one.
//!
//! This module also holds the slot-position helpers that `leadsync cutover` shares
//! ([`current_insert_lsn`], [`wait_for_slot`]).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Settings;
use crate::db::{self, ConnectError, quote_ident};
use crate::lsn::Lsn;
use crate::project::ProductRules;
use crate::reconcile::{self, DiffKind, ReconcileError, ReconcileOptions, Reconciliation};

/// Default of `--wait-seconds`: how long validation waits for the daemon to pass the
/// position where a difference was seen.
pub const DEFAULT_WAIT_SECONDS: u64 = 60;
/// Comparisons in a row in which one key of a table must differ for the difference to count
/// as persistent. Two are not enough under live writes: a key that a writer changes again
/// can be in flight at two comparisons by chance; at three that is vanishingly rare.
pub const PERSIST_ROUNDS: usize = 3;
/// Comparisons at most per run.
pub const MAX_ROUNDS: usize = 6;
/// Sample keys per data-quality check.
const CHECK_SAMPLES: i64 = 5;
/// How often the slot position is polled while waiting.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// How many samples a check shows in the text report.
const SAMPLES_SHOWN: usize = 3;

/// Validation could not run (a failed validation is an `Ok` [`Validation`] that did not
/// pass).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "the leadsync schema or the target tables do not exist ({0}): run `leadsync setup`, \
         then `leadsync run`, before validating"
    )]
    NotSetUp(String),
    #[error("validation query failed while {context}: {message}")]
    Query {
        context: &'static str,
        message: String,
    },
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Slot(#[from] SlotError),
}

/// Reading or waiting for the slot's position failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error(
        "replication slot `{slot}` does not exist in this database: start the daemon with \
         `leadsync run` (its first run creates the slot), or check slot.name"
    )]
    Missing { slot: String },
    #[error("reading the position of replication slot `{slot}` failed: {message}")]
    Query { slot: String, message: String },
}

/// Wraps a query error with what was being done; missing objects point at `setup`.
fn query_error(context: &'static str) -> impl Fn(tokio_postgres::Error) -> ValidateError {
    move |e| {
        let code = e.code().map(|c| c.code().to_owned());
        match code.as_deref() {
            Some("42P01") | Some("3F000") => ValidateError::NotSetUp(db::error_text(&e)),
            _ => ValidateError::Query {
                context,
                message: db::error_text(&e),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Slot position (shared with `leadsync cutover`).

/// The source's WAL *insert* position. Not `pg_current_wal_lsn()`: with asynchronous
/// commit the write position can trail a commit that has already returned.
pub async fn current_insert_lsn(client: &Client) -> Result<Lsn, SlotError> {
    let text: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(|e| SlotError::Query {
            slot: String::new(),
            message: db::error_text(&e),
        })?
        .get(0);
    Lsn::from_str(&text).map_err(|e| SlotError::Query {
        slot: String::new(),
        message: e.to_string(),
    })
}

/// The slot's `confirmed_flush_lsn`: everything before it is committed on the target (or
/// needed no write). `Lsn::ZERO` while the slot has none yet.
pub async fn slot_position(client: &Client, slot: &str) -> Result<Lsn, SlotError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots
             WHERE slot_name = $1 AND database = current_database()",
            &[&slot],
        )
        .await
        .map_err(|e| SlotError::Query {
            slot: slot.to_owned(),
            message: db::error_text(&e),
        })?
        .ok_or_else(|| SlotError::Missing {
            slot: slot.to_owned(),
        })?;
    let text: Option<String> = row.get(0);
    Ok(text.and_then(|t| t.parse().ok()).unwrap_or(Lsn::ZERO))
}

/// How a [`wait_for_slot`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlotWait {
    /// The position waited for.
    #[serde(serialize_with = "serialize_display")]
    pub target: Lsn,
    /// The slot's position when the wait ended.
    #[serde(serialize_with = "serialize_display")]
    pub reached: Lsn,
    /// Whether the slot passed `target` in time.
    pub caught_up: bool,
    /// Bytes of WAL still to go when the wait ended (0 when caught up).
    pub remaining_bytes: u64,
    /// How long the wait took, in seconds.
    pub seconds: f64,
}

fn serialize_display<S: serde::Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(lsn)
}

/// Waits until the slot `slot` has been acknowledged at or past `target`, at most
/// `timeout`. Every `progress_every` (if given) `progress` hears the remaining bytes.
pub async fn wait_for_slot(
    client: &Client,
    slot: &str,
    target: Lsn,
    timeout: Duration,
    progress_every: Option<Duration>,
    progress: &mut (dyn FnMut(&SlotWait) + Send),
) -> Result<SlotWait, SlotError> {
    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let reached = slot_position(client, slot).await?;
        let mut state = SlotWait {
            target,
            reached,
            caught_up: reached >= target,
            remaining_bytes: target.bytes_since(reached),
            seconds: started.elapsed().as_secs_f64(),
        };
        if state.caught_up || started.elapsed() >= timeout {
            state.remaining_bytes = target.bytes_since(reached);
            return Ok(state);
        }
        if let Some(every) = progress_every
            && last_progress.elapsed() >= every
        {
            progress(&state);
            last_progress = Instant::now();
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------
// The report.

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    /// A data-quality finding that does not fail validation.
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One check of the guide's validation suite.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `completeness`, `integrity` or `business_logic`.
    pub group: &'static str,
    /// The guide's check name.
    pub name: &'static str,
    pub status: Status,
    /// Completeness: the source count (contacts with pending dead letters left out).
    pub source: Option<i64>,
    /// Completeness: the target count; other checks: rows that fail the check.
    pub target: Option<i64>,
    /// What was counted, and why the status is what it is.
    pub details: String,
    /// Up to five offending keys or values.
    pub samples: Vec<String>,
}

/// The outcome of `leadsync validate`.
#[derive(Debug, Clone, Serialize)]
pub struct Validation {
    /// No check failed and no difference persisted.
    pub passed: bool,
    /// The guide's checks, in its order.
    pub checks: Vec<Check>,
    /// The reconciliation, reduced to the persistent differences: tables whose
    /// differences were only changes in flight show none.
    pub reconciliation: Reconciliation,
    /// Tables whose differences went away once the daemon had processed past them.
    pub in_flight_tables: Vec<String>,
    /// Comparisons made.
    pub rounds: usize,
    /// The waits for the daemon between comparisons.
    pub waits: Vec<SlotWait>,
    /// Pending dead letters (reported; they do not fail validation, their contacts are
    /// excepted from the comparison).
    pub pending_dead_letters: i64,
    /// Anything the operator should know about how far to trust the result.
    pub notes: Vec<String>,
}

impl Validation {
    /// Tables and checks that failed, for messages.
    pub fn failures(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| format!("check {}", c.name))
            .collect();
        out.extend(
            self.reconciliation
                .tables
                .iter()
                .filter(|t| !t.is_clean())
                .map(|t| format!("table {}", t.table)),
        );
        out
    }

    /// The human report (each check's group and every sample are in `--json`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut t = crate::text::table(&["check", "status", "source", "target", "details"]);
        for c in &self.checks {
            let mut details = c.details.clone();
            if !c.samples.is_empty() {
                // A few examples; every one is in --json.
                let shown: Vec<&str> = c
                    .samples
                    .iter()
                    .take(SAMPLES_SHOWN)
                    .map(|x| if x.is_empty() { "''" } else { x.as_str() })
                    .collect();
                details.push_str(&format!("\ne.g. {}", shown.join(", ")));
            }
            t.add_row(vec![
                c.name.to_owned(),
                c.status.to_string(),
                c.source.map_or(String::new(), |n| n.to_string()),
                c.target.map_or(String::new(), |n| n.to_string()),
                details,
            ]);
        }
        out.push_str(&format!(
            "{t}\n\nreconciliation (persistent differences only):\n"
        ));
        out.push_str(&self.reconciliation.to_string());
        if !self.in_flight_tables.is_empty() {
            out.push_str(&format!(
                "differences in {} were changes in flight and went away once the daemon had \
                 processed them\n",
                self.in_flight_tables.join(", ")
            ));
        }
        out.push_str(&format!(
            "pending dead letters: {} (their contacts are excepted; see `leadsync dlq list`)\n",
            self.pending_dead_letters
        ));
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        if self.passed {
            out.push_str("validation PASSED\n");
        } else {
            out.push_str(&format!(
                "validation FAILED: {}. Repair drift with `leadsync resync` (the daemon must be \
                 running) and validate again\n",
                self.failures().join(", ")
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Running it.

/// Runs `leadsync validate`: connects and validates, waiting at most `wait` for the daemon
/// whenever a comparison differs.
pub async fn run_validate(
    settings: &Settings,
    wait: Duration,
) -> Result<Validation, ValidateError> {
    let mut client = db::connect(settings.source_url()).await?;
    validate(&mut client, settings, wait).await
}

/// Validates on an open session (not inside a transaction). See the module documentation
/// for how persistent differences are told from changes in flight.
pub async fn validate(
    client: &mut Client,
    settings: &Settings,
    wait: Duration,
) -> Result<Validation, ValidateError> {
    let rules = ProductRules::new(
        &settings.transform.product_rules,
        settings.transform.case_insensitive,
    );
    let opts = ReconcileOptions {
        source_schema: &settings.source.schema,
        target_schema: &settings.target.schema,
        rules: &rules,
        except_dead_letters: true,
    };
    let slot = settings.slot.name.as_str();
    let deadline = Instant::now() + wait;
    let mut notes = Vec::new();
    let mut waits = Vec::new();

    let mut current = reconcile_checked(client, &opts).await?;
    let mut rounds = 1;
    let mut streaks = Streaks::default();
    streaks.update(&current);
    let mut daemon_behind = false;
    while streaks.undecided() && rounds < MAX_ROUNDS {
        let target = current_insert_lsn(client).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let waited = wait_for_slot(client, slot, target, remaining, None, &mut |_| {}).await?;
        waits.push(waited);
        if !waited.caught_up {
            daemon_behind = true;
            notes.push(format!(
                "the daemon did not process up to {target} within {} s (slot at {}, {} bytes \
                 behind): the differences below may include changes still in flight. Is \
                 `leadsync run` running? Raise --wait-seconds or validate again",
                wait.as_secs(),
                waited.reached,
                waited.remaining_bytes
            ));
            break;
        }
        current = reconcile_checked(client, &opts).await?;
        rounds += 1;
        streaks.update(&current);
    }
    let persistent: BTreeSet<&'static str> = if daemon_behind {
        // Cannot tell: everything that differs now counts.
        differing(&current)
    } else {
        streaks.persistent()
    };
    let in_flight: Vec<String> = streaks
        .ever
        .iter()
        .filter(|t| !persistent.contains(*t))
        .map(|t| t.to_string())
        .collect();
    let mut reconciliation = current.clone();
    for table in reconciliation.tables.iter_mut() {
        if !persistent.contains(table.table) {
            table.missing = 0;
            table.extra = 0;
            table.different = 0;
            table.samples.clear();
        } else if !daemon_behind && let Some(keys) = streaks.keys.get(table.table) {
            table
                .samples
                .retain(|d| keys.contains(&(d.kind, d.key.clone())));
        }
    }
    if rounds > 1 && !persistent.is_empty() && !daemon_behind {
        notes.push(format!(
            "tables were compared {rounds} times; the counts of a differing table are those of \
             the last comparison and may include changes in flight; its samples differed in \
             {PERSIST_ROUNDS} or more comparisons in a row"
        ));
    }

    let mut checks = completeness(client, settings, &persistent, daemon_behind).await?;
    checks.extend(integrity(client, settings).await?);
    let pending_dead_letters = pending_dead_letters(client).await?;
    let passed = checks.iter().all(|c| c.status != Status::Fail) && reconciliation.is_clean();
    Ok(Validation {
        passed,
        checks,
        reconciliation,
        in_flight_tables: in_flight,
        rounds,
        waits,
        pending_dead_letters,
        notes,
    })
}

async fn reconcile_checked(
    client: &mut Client,
    opts: &ReconcileOptions<'_>,
) -> Result<Reconciliation, ValidateError> {
    match reconcile::reconcile(client, opts).await {
        Err(ReconcileError::Database(e))
            if matches!(e.code().map(|c| c.code()), Some("42P01") | Some("3F000")) =>
        {
            Err(ValidateError::NotSetUp(db::error_text(&e)))
        }
        other => Ok(other?),
    }
}

fn differing(r: &Reconciliation) -> BTreeSet<&'static str> {
    r.tables
        .iter()
        .filter(|t| !t.is_clean())
        .map(|t| t.table)
        .collect()
}

/// A sample key: how it differs and which key.
type SampleKey = (DiffKind, String);

/// Per table, the sample keys that have differed in every comparison since the table began
/// to differ, and in how many comparisons in a row.
#[derive(Debug, Default)]
struct Streaks {
    keys: std::collections::BTreeMap<&'static str, BTreeSet<SampleKey>>,
    runs: std::collections::BTreeMap<&'static str, usize>,
    /// Tables that differed in any comparison.
    ever: BTreeSet<&'static str>,
}

impl Streaks {
    /// Folds in one comparison: a clean table forgets its streak; a table whose keys share
    /// none with its streak starts a new one.
    fn update(&mut self, r: &Reconciliation) {
        for t in &r.tables {
            if t.is_clean() {
                self.keys.remove(t.table);
                self.runs.remove(t.table);
                continue;
            }
            self.ever.insert(t.table);
            let now: BTreeSet<SampleKey> =
                t.samples.iter().map(|s| (s.kind, s.key.clone())).collect();
            match self.keys.get_mut(t.table) {
                Some(keys) => {
                    let common: BTreeSet<SampleKey> = keys.intersection(&now).cloned().collect();
                    let run = self.runs.entry(t.table).or_insert(0);
                    if common.is_empty() {
                        *keys = now;
                        *run = 1;
                    } else {
                        *keys = common;
                        *run += 1;
                    }
                }
                None => {
                    self.keys.insert(t.table, now);
                    self.runs.insert(t.table, 1);
                }
            }
        }
    }

    /// Some table differs but has not yet differed at one key [`PERSIST_ROUNDS`] times.
    fn undecided(&self) -> bool {
        self.runs.values().any(|n| *n < PERSIST_ROUNDS)
    }

    fn persistent(&self) -> BTreeSet<&'static str> {
        self.runs
            .iter()
            .filter(|(_, n)| **n >= PERSIST_ROUNDS)
            .map(|(t, _)| *t)
            .collect()
    }
}

/// Pending dead letters (0 when the table does not exist yet).
pub async fn pending_dead_letters(client: &Client) -> Result<i64, ValidateError> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM leadsync.dead_letters WHERE status = 'pending'",
            &[],
        )
        .await
        .map_err(query_error("counting pending dead letters"))?
        .get(0))
}

/// The guide's record-count validation, with contacts that have pending dead letters left
/// out on both sides and unroutable values (SPEC §3) not expected in the target. A count
/// that differs fails only when the reconciliation found a persistent difference in that
/// table; otherwise it was changes in flight and is reported as such.
async fn completeness(
    client: &Client,
    settings: &Settings,
    persistent: &BTreeSet<&'static str>,
    daemon_behind: bool,
) -> Result<Vec<Check>, ValidateError> {
    let s = quote_ident(&settings.source.schema);
    let t = quote_ident(&settings.target.schema);
    let parked = "(SELECT contact_id FROM leadsync.dead_letters
                   WHERE status = 'pending' AND contact_id IS NOT NULL)";
    let routable = "CASE COALESCE(f.context_type, 'contact')
                        WHEN 'contact' THEN true
                        WHEN 'lead' THEN c.lead_status IS NOT NULL
                        WHEN 'appointment' THEN c.lead_status IS NOT NULL
                                                AND c.appointment_date IS NOT NULL
                        ELSE false END";
    let sql = format!(
        "SELECT
           (SELECT count(*) FROM {s}.contacts c WHERE c.id NOT IN {parked}),
           (SELECT count(*) FROM {t}.customers
             WHERE migrated_from_contact_id IS NOT NULL AND deleted_at IS NULL
               AND migrated_from_contact_id NOT IN {parked}),
           (SELECT count(*) FROM {s}.contacts c
             WHERE c.lead_status IS NOT NULL AND c.id NOT IN {parked}),
           (SELECT count(*) FROM {t}.leads
             WHERE migrated_from_contact_id IS NOT NULL AND deleted_at IS NULL
               AND migrated_from_contact_id NOT IN {parked}),
           (SELECT count(*) FILTER (WHERE {routable}) FROM {s}.contact_custom_fields v
              JOIN {s}.contacts c ON c.id = v.contact_id
              LEFT JOIN {s}.custom_fields f ON f.id = v.field_id
             WHERE c.id NOT IN {parked}),
           (SELECT count(*) FILTER (WHERE NOT ({routable})) FROM {s}.contact_custom_fields v
              JOIN {s}.contacts c ON c.id = v.contact_id
              LEFT JOIN {s}.custom_fields f ON f.id = v.field_id
             WHERE c.id NOT IN {parked}),
           (SELECT count(*) FROM {t}.customer_custom_fields v
              JOIN {t}.customers p ON p.cst_id = v.customer_id
             WHERE p.migrated_from_contact_id IS NOT NULL AND p.deleted_at IS NULL
               AND p.migrated_from_contact_id NOT IN {parked})
         + (SELECT count(*) FROM {t}.lead_custom_fields v
              JOIN {t}.leads p ON p.id = v.lead_id
             WHERE p.migrated_from_contact_id IS NOT NULL AND p.deleted_at IS NULL
               AND p.migrated_from_contact_id NOT IN {parked})
         + (SELECT count(*) FROM {t}.appointment_custom_fields v
              JOIN {t}.appointments p ON p.id = v.appointment_id
             WHERE p.migrated_from_contact_id IS NOT NULL AND p.deleted_at IS NULL
               AND p.migrated_from_contact_id NOT IN {parked})"
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(query_error("counting records"))?;
    let n = |i: usize| -> i64 { row.get(i) };
    let verdict = |source: i64, target: i64, tables: &[&str]| -> (Status, String) {
        if source == target {
            (Status::Pass, String::new())
        } else if daemon_behind || tables.iter().any(|t| persistent.contains(t)) {
            (Status::Fail, format!("; {} apart", (source - target).abs()))
        } else {
            (
                Status::Pass,
                format!(
                    "; {} apart while changes were in flight (no persistent difference)",
                    (source - target).abs()
                ),
            )
        }
    };
    let mut checks = Vec::new();
    let (status, note) = verdict(n(0), n(1), &["customers"]);
    checks.push(Check {
        group: "completeness",
        name: "contacts_to_customers",
        status,
        source: Some(n(0)),
        target: Some(n(1)),
        details: format!("contacts vs live migrated customers{note}"),
        samples: Vec::new(),
    });
    let (status, note) = verdict(n(2), n(3), &["leads"]);
    checks.push(Check {
        group: "completeness",
        name: "leads_created",
        status,
        source: Some(n(2)),
        target: Some(n(3)),
        details: format!("contacts with a lead status vs live migrated leads{note}"),
        samples: Vec::new(),
    });
    let (status, note) = verdict(
        n(4),
        n(6),
        &[
            "customer_custom_fields",
            "lead_custom_fields",
            "appointment_custom_fields",
        ],
    );
    checks.push(Check {
        group: "completeness",
        name: "custom_field_values",
        status,
        source: Some(n(4)),
        target: Some(n(6)),
        details: format!(
            "routable contact_custom_fields vs values under live migrated parents \
             ({} unroutable: their parent does not exist){note}",
            n(5)
        ),
        samples: Vec::new(),
    });
    Ok(checks)
}

/// The guide's data-integrity and business-logic checks on the live target rows.
async fn integrity(client: &Client, settings: &Settings) -> Result<Vec<Check>, ValidateError> {
    let t = quote_ident(&settings.target.schema);
    let s = quote_ident(&settings.source.schema);
    // (group, name, status when rows are found, description, FROM … WHERE, sample expression)
    let checks: [(&str, &str, Status, &str, String, &str); 7] = [
        (
            "integrity",
            "email_format_validation",
            Status::Warn,
            "live customers whose email is not of the form a@b.c",
            format!(
                "{t}.customers x WHERE x.deleted_at IS NULL AND x.email IS NOT NULL
                   AND x.email !~ '^[^@]+@[^@]+\\.[^@]+$'"
            ),
            "x.email",
        ),
        (
            "integrity",
            "phone_format_validation",
            Status::Warn,
            "live customers whose phone1 has fewer than 10 characters",
            format!(
                "{t}.customers x WHERE x.deleted_at IS NULL AND x.phone1 IS NOT NULL
                   AND char_length(x.phone1) < 10"
            ),
            "x.phone1",
        ),
        (
            "integrity",
            "required_fields_validation",
            Status::Warn,
            "live customers with neither a first name, a last name nor an email",
            format!(
                "{t}.customers x WHERE x.deleted_at IS NULL
                   AND COALESCE(x.firstname, '') = '' AND COALESCE(x.lastname, '') = ''
                   AND COALESCE(x.email, '') = ''"
            ),
            "x.cst_id::text",
        ),
        (
            "integrity",
            "foreign_key_integrity",
            Status::Fail,
            "live leads whose customer is missing or deleted",
            format!(
                "{t}.leads x WHERE x.deleted_at IS NULL AND NOT EXISTS
                   (SELECT 1 FROM {t}.customers p WHERE p.cst_id = x.customer_id
                      AND p.deleted_at IS NULL)"
            ),
            "x.id::text",
        ),
        (
            "business_logic",
            "lead_source_consistency",
            Status::Warn,
            "live leads with a NULL or empty source",
            format!("{t}.leads x WHERE x.deleted_at IS NULL AND COALESCE(x.source, '') = ''"),
            "x.id::text",
        ),
        (
            "business_logic",
            "appointment_lead_relationship",
            Status::Fail,
            "live appointments whose lead is missing or deleted",
            format!(
                "{t}.appointments x WHERE x.deleted_at IS NULL AND NOT EXISTS
                   (SELECT 1 FROM {t}.leads p WHERE p.id = x.lead_id AND p.deleted_at IS NULL)"
            ),
            "x.id::text",
        ),
        (
            "integrity",
            "contacts_match_customers",
            // Under live writes a difference may be in flight; the reconciliation tells
            // a persistent one.
            Status::Warn,
            "live migrated customers whose name, email, phone, address or updated_at differ \
             from their contact's (either direction of the sync)",
            format!(
                "{t}.customers x JOIN {s}.contacts c ON c.id = x.cst_id
                 WHERE x.deleted_at IS NULL AND x.migrated_from_contact_id = c.id
                   AND NOT EXISTS (SELECT 1 FROM leadsync.dead_letters d
                                   WHERE d.contact_id = c.id AND d.status = 'pending')
                   AND (x.firstname, x.lastname, x.email, x.phone1, x.address1, x.city,
                        x.state, x.zip, x.updated_at)
                       IS DISTINCT FROM
                       (c.firstname, c.lastname, c.email, c.phone_number, c.st_address,
                        c.city, c.state, c.zip, c.updated_at)"
            ),
            "x.cst_id::text",
        ),
    ];
    let mut out = Vec::with_capacity(checks.len());
    for (group, name, failing, description, from, sample) in checks {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*),
                            ARRAY(SELECT COALESCE({sample}, 'NULL') FROM {from} LIMIT {CHECK_SAMPLES})
                     FROM {from}"
                ),
                &[],
            )
            .await
            .map_err(query_error("checking data integrity"))?;
        let rows: i64 = row.get(0);
        out.push(Check {
            group,
            name,
            status: if rows == 0 { Status::Pass } else { failing },
            source: None,
            target: Some(rows),
            details: description.to_owned(),
            samples: row.get(1),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{Difference, TableDiff};

    fn diff(table: &'static str, keys: &[&str]) -> TableDiff {
        TableDiff {
            table,
            expected: 0,
            actual: 0,
            missing: keys.len() as i64,
            extra: 0,
            different: 0,
            samples: keys
                .iter()
                .map(|k| Difference {
                    kind: DiffKind::Missing,
                    key: (*k).to_owned(),
                    expected: None,
                    actual: None,
                })
                .collect(),
        }
    }

    fn round(keys: &[&str]) -> Reconciliation {
        Reconciliation {
            tables: vec![diff("leads", keys)],
        }
    }

    #[test]
    fn persistence_needs_one_key_in_three_comparisons_in_a_row() {
        let mut s = Streaks::default();
        s.update(&round(&["a", "b"]));
        assert!(s.undecided());
        s.update(&round(&["b", "c"]));
        assert!(s.undecided(), "two comparisons can share a key by chance");
        s.update(&round(&["b", "d"]));
        assert!(!s.undecided());
        assert_eq!(s.persistent(), BTreeSet::from(["leads"]));
    }

    #[test]
    fn changing_keys_and_clean_comparisons_reset_the_streak() {
        let mut s = Streaks::default();
        s.update(&round(&["a"]));
        s.update(&round(&["a"]));
        s.update(&round(&["x"]));
        s.update(&round(&["x"]));
        assert!(s.persistent().is_empty());
        s.update(&round(&[]));
        assert!(!s.undecided());
        assert!(s.persistent().is_empty());
        assert_eq!(s.ever, BTreeSet::from(["leads"]));
        assert_eq!(differing(&round(&["x"])), BTreeSet::from(["leads"]));
    }
}
