//! `leadsync report`: the guide's migration report from real figures — counts on both sides,
//! the validation result, table sizes, how far the daemon is behind, dead letters, and when
//! the first load started and finished — as text and JSON. Every figure is read from the
//! database at the moment of the report; nothing is assumed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use crate::cmd::validate::{ValidateError, Validation, validate};
use crate::config::Settings;
use crate::db::{self, quote_ident};

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub generated_at: DateTime<Utc>,
    pub database: String,
    pub slot: String,
    pub phase: String,
    pub paused: bool,
    pub first_load_started_at: Option<DateTime<Utc>>,
    pub first_load_finished_at: Option<DateTime<Utc>>,
    pub first_load_seconds: Option<f64>,
    /// Source WAL position minus the slot's acknowledged position.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps on the server.
    pub slot_retained_bytes: Option<i64>,
    pub counts: Vec<Count>,
    pub sizes: Vec<Size>,
    pub dead_letters: Vec<(String, i64)>,
    pub resyncs_done: i64,
    pub database_size: String,
    pub validation: Validation,
}

/// One figure on both sides.
#[derive(Debug, Serialize)]
pub struct Count {
    pub what: &'static str,
    pub source: i64,
    pub target: i64,
}

/// A table's size on disk.
#[derive(Debug, Serialize)]
pub struct Size {
    pub table: String,
    pub rows: i64,
    pub bytes: i64,
    pub size: String,
}

/// `report` failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Connect(#[from] db::ConnectError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error("report query failed: {0}; has `leadsync setup` run on this database?")]
    Query(String),
}

impl From<tokio_postgres::Error> for ReportError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReportError::Query(db::error_text(&e))
    }
}

/// Runs `leadsync report`; validation waits at most `wait` for changes in flight.
pub async fn run_report(settings: &Settings, wait: Duration) -> Result<Report, ReportError> {
    let mut client = db::connect(settings.source_url()).await?;
    let validation = validate(&mut client, settings, wait).await?;
    report(&client, settings, validation).await
}

async fn report(
    client: &Client,
    settings: &Settings,
    validation: Validation,
) -> Result<Report, ReportError> {
    let (s, t) = (
        quote_ident(&settings.source.schema),
        quote_ident(&settings.target.schema),
    );
    let state = client
        .query_one(
            "SELECT current_database()::text, now(), s.phase, s.paused,
                    s.backfill_started_at, s.backfill_finished_at,
                    pg_wal_lsn_diff(pg_current_wal_insert_lsn(), r.confirmed_flush_lsn)::bigint,
                    pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn)::bigint,
                    pg_size_pretty(pg_database_size(current_database())),
                    (SELECT count(*) FROM leadsync.resync_requests WHERE status = 'done')
             FROM leadsync.sync_state s
             LEFT JOIN pg_replication_slots r ON r.slot_name = s.slot_name
             WHERE s.slot_name = $1",
            &[&settings.slot.name],
        )
        .await?;
    let started: Option<DateTime<Utc>> = state.get(4);
    let finished: Option<DateTime<Utc>> = state.get(5);
    let live = "migrated_from_contact_id IS NOT NULL AND deleted_at IS NULL";
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {s}.contacts),
                        (SELECT count(*) FROM {t}.customers WHERE {live}),
                        (SELECT count(*) FROM {s}.contacts WHERE lead_status IS NOT NULL),
                        (SELECT count(*) FROM {t}.leads WHERE {live}),
                        (SELECT count(*) FROM {s}.contacts
                          WHERE lead_status IS NOT NULL AND appointment_date IS NOT NULL),
                        (SELECT count(*) FROM {t}.appointments WHERE {live}),
                        (SELECT count(*) FROM {s}.contact_custom_fields),
                        (SELECT (SELECT count(*) FROM {t}.customer_custom_fields)
                              + (SELECT count(*) FROM {t}.lead_custom_fields)
                              + (SELECT count(*) FROM {t}.appointment_custom_fields))"
            ),
            &[],
        )
        .await?;
    let counts = vec![
        Count {
            what: "contacts → live migrated customers",
            source: row.get(0),
            target: row.get(1),
        },
        Count {
            what: "contacts with a lead status → live migrated leads",
            source: row.get(2),
            target: row.get(3),
        },
        Count {
            what: "contacts with lead and appointment date → live appointments",
            source: row.get(4),
            target: row.get(5),
        },
        Count {
            what: "custom-field values → values in the three target tables",
            source: row.get(6),
            target: row.get(7),
        },
    ];
    let sizes = client
        .query(
            "SELECT n.nspname || '.' || c.relname, c.reltuples::bigint,
                    pg_total_relation_size(c.oid), pg_size_pretty(pg_total_relation_size(c.oid))
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r'
               AND ((n.nspname = $1 AND c.relname IN ('customers', 'leads', 'appointments',
                      'customer_custom_fields', 'lead_custom_fields', 'appointment_custom_fields'))
                    OR n.nspname = 'leadsync')
             ORDER BY pg_total_relation_size(c.oid) DESC",
            &[&settings.target.schema],
        )
        .await?
        .iter()
        .map(|r| Size {
            table: r.get(0),
            rows: r.get::<_, i64>(1).max(0),
            bytes: r.get(2),
            size: r.get(3),
        })
        .collect();
    let dead_letters = client
        .query(
            "SELECT status, count(*) FROM leadsync.dead_letters GROUP BY status ORDER BY status",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Report {
        generated_at: state.get(1),
        database: state.get(0),
        slot: settings.slot.name.clone(),
        phase: state.get(2),
        paused: state.get(3),
        first_load_started_at: started,
        first_load_finished_at: finished,
        first_load_seconds: started.zip(finished).map(|(a, b)| (b - a).as_seconds_f64()),
        lag_bytes: state.get(6),
        slot_retained_bytes: state.get(7),
        counts,
        sizes,
        dead_letters,
        resyncs_done: state.get(9),
        database_size: state.get(8),
        validation,
    })
}

impl Report {
    /// The human report.
    pub fn render(&self) -> String {
        let mut out = format!(
            "LEADSYNC MIGRATION REPORT\n\
             generated {} for database `{}`, slot `{}`\n\
             phase: {}{}\n",
            self.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.database,
            self.slot,
            self.phase,
            if self.paused { " (paused)" } else { "" }
        );
        match (self.first_load_started_at, self.first_load_finished_at) {
            (Some(a), Some(b)) => out.push_str(&format!(
                "first load: {} → {} ({:.1} s)\n",
                a.format("%Y-%m-%d %H:%M:%S"),
                b.format("%Y-%m-%d %H:%M:%S"),
                self.first_load_seconds.unwrap_or_default()
            )),
            (Some(a), None) => out.push_str(&format!(
                "first load: started {}, not finished\n",
                a.format("%Y-%m-%d %H:%M:%S")
            )),
            _ => out.push_str("first load: not started\n"),
        }
        out.push_str(&format!(
            "behind the source: {} bytes; WAL kept by the slot: {} bytes\n\n",
            self.lag_bytes.map_or("-".into(), |b| b.to_string()),
            self.slot_retained_bytes
                .map_or("-".into(), |b| b.to_string()),
        ));

        let mut t = crate::text::table(&["figure", "source", "target"]);
        for c in &self.counts {
            t.add_row(vec![
                c.what.to_owned(),
                c.source.to_string(),
                c.target.to_string(),
            ]);
        }
        out.push_str(&format!("1. COUNTS\n{t}\n\n"));

        out.push_str(&format!(
            "2. VALIDATION: {}\n",
            if self.validation.passed {
                "PASS"
            } else {
                "FAIL"
            }
        ));
        for failure in self.validation.failures() {
            out.push_str(&format!("   - {failure}\n"));
        }
        out.push('\n');

        let mut t = crate::text::table(&["table", "rows (estimate)", "size"]);
        for s in &self.sizes {
            t.add_row(vec![s.table.clone(), s.rows.to_string(), s.size.clone()]);
        }
        out.push_str(&format!(
            "3. SIZES (database: {})\n{t}\n\n",
            self.database_size
        ));

        out.push_str("4. DEAD LETTERS\n");
        if self.dead_letters.is_empty() {
            out.push_str("   none\n");
        }
        for (status, n) in &self.dead_letters {
            out.push_str(&format!("   {status}: {n}\n"));
        }
        out.push_str(&format!("\nresyncs completed: {}\n", self.resyncs_done));
        out
    }
}
