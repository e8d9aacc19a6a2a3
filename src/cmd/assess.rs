//! `leadsync assess`: the guide's pre-migration assessment from the live legacy tables —
//! volumes and sizes, per-workspace completeness, custom-field usage — plus what the guide
//! misses: the rows whose values will not fit the target columns (they would be dead
//! letters), the values leadsync cannot carry as they are (infinite timestamps, dates too
//! early for the derived appointment dates, integers wider than 32 bits), the data-quality
//! warnings SPEC §3 names, and what the projection will produce. Read-only.

use crate::text::table;
use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::{self, ConnectError, quote_ident};
use crate::project::LENGTH_LIMITS;

/// How many workspaces the human report lists (the JSON has all).
const WORKSPACES_SHOWN: usize = 10;
/// Sample contact ids per finding.
const SAMPLES: i64 = 3;

/// `assess` failed.
#[derive(Debug, thiserror::Error)]
pub enum AssessError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "legacy table `{0}` does not exist: point source.url at the legacy database, or set source.schema"
    )]
    MissingTable(String),
    #[error("assessment query failed: {0}")]
    Query(String),
}

impl From<tokio_postgres::Error> for AssessError {
    fn from(e: tokio_postgres::Error) -> Self {
        AssessError::Query(db::error_text(&e))
    }
}

/// The whole assessment.
#[derive(Debug, Serialize)]
pub struct Assessment {
    pub database: String,
    pub volumes: Vec<TableVolume>,
    pub summary: Summary,
    pub projected: Projected,
    pub misfits: Vec<MisfitCount>,
    pub edge_values: Vec<EdgeValueCount>,
    pub warnings: Vec<Warning>,
    pub workspaces: Vec<WorkspaceQuality>,
    pub custom_fields: Vec<FieldUsage>,
}

/// Size of one legacy table.
#[derive(Debug, Serialize)]
pub struct TableVolume {
    pub table: String,
    pub rows: i64,
    pub total_bytes: i64,
    pub total_size: String,
    pub avg_record_bytes: f64,
}

/// Headline counts.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub contacts: i64,
    pub workspaces: i64,
    pub workspaces_with_contacts: i64,
    pub field_definitions: i64,
    pub field_values: i64,
    pub contacts_with_lead_status: i64,
    pub contacts_with_appointment_date: i64,
}

/// The rows the projection will make.
#[derive(Debug, Serialize)]
pub struct Projected {
    pub customers: i64,
    pub leads: i64,
    pub appointments: i64,
    pub customer_custom_fields: i64,
    pub lead_custom_fields: i64,
    pub appointment_custom_fields: i64,
    /// Values whose parent will not exist (a lead-level value of a contact without lead
    /// status, …); they appear once their parent does.
    pub unroutable_values: i64,
}

/// Rows whose value is longer than its target column.
#[derive(Debug, Serialize)]
pub struct MisfitCount {
    pub target_column: String,
    pub source_column: String,
    pub limit: usize,
    pub rows: i64,
    pub max_length: i32,
    pub sample_contact_ids: Vec<Uuid>,
}

/// Rows holding a value leadsync cannot carry as it is, and what becomes of them.
#[derive(Debug, Serialize)]
pub struct EdgeValueCount {
    /// `infinite_timestamp`, `appointment_before_min_setdate` or `beyond_int4`.
    pub check: &'static str,
    /// The legacy column, as `table.column`.
    pub source_column: String,
    /// What leadsync does with such a row.
    pub outcome: &'static str,
    pub rows: i64,
    pub sample_contact_ids: Vec<Uuid>,
}

/// A data-quality finding that does not block the migration.
#[derive(Debug, Serialize)]
pub struct Warning {
    pub check: &'static str,
    pub description: &'static str,
    pub rows: i64,
    pub sample_contact_ids: Vec<Uuid>,
}

/// The guide's per-workspace completeness percentages.
#[derive(Debug, Serialize)]
pub struct WorkspaceQuality {
    pub workspace_id: Uuid,
    pub contacts: i64,
    pub email_pct: f64,
    pub phone_pct: f64,
    pub lead_status_pct: f64,
    pub name_pct: f64,
}

/// Custom-field usage per workspace and field type.
#[derive(Debug, Serialize)]
pub struct FieldUsage {
    pub workspace_id: Uuid,
    pub field_type: String,
    pub definitions: i64,
    pub values: i64,
    pub avg_values_per_field: f64,
}

/// Data-quality checks: (name, description, predicate over contacts `c`).
const WARNINGS: &[(&str, &str, &str)] = &[
    (
        "empty_lead_status",
        "lead_status is '' (becomes a lead with disposition '')",
        "c.lead_status = ''",
    ),
    (
        "empty_lead_source",
        "lead_source is '' on a contact with a lead status (stays '', not 'Unknown')",
        "c.lead_status IS NOT NULL AND c.lead_source = ''",
    ),
    ("empty_email", "email is ''", "c.email = ''"),
    (
        "invalid_email",
        "email is not of the form a@b.c",
        "c.email <> '' AND c.email !~ '^[^@]+@[^@]+\\.[^@]+$'",
    ),
    (
        "short_phone",
        "phone_number has fewer than 10 characters",
        "c.phone_number <> '' AND char_length(c.phone_number) < 10",
    ),
    (
        "no_name_or_email",
        "neither a first name, a last name nor an email",
        "COALESCE(c.firstname, '') = '' AND COALESCE(c.lastname, '') = '' \
         AND COALESCE(c.email, '') = ''",
    ),
    (
        "appointment_without_lead",
        "appointment_date set but no lead_status (no appointment until a lead exists)",
        "c.appointment_date IS NOT NULL AND c.lead_status IS NULL",
    ),
];

/// Runs `leadsync assess`.
pub async fn run_assess(settings: &Settings) -> Result<Assessment, AssessError> {
    let client = db::connect(settings.source_url()).await?;
    assess(&client, &settings.source.schema).await
}

/// Assesses the legacy tables in `schema`.
pub async fn assess(client: &Client, schema: &str) -> Result<Assessment, AssessError> {
    let s = quote_ident(schema);
    for table in [
        "contacts",
        "contact_custom_fields",
        "custom_fields",
        "workspaces",
    ] {
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL",
                &[&schema, &table],
            )
            .await?
            .get(0);
        if !exists {
            return Err(AssessError::MissingTable(format!("{schema}.{table}")));
        }
    }
    // Repeatable read: every figure comes from one snapshot.
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let result = assess_in_snapshot(client, &s, schema).await;
    let _ = client.batch_execute("COMMIT").await;
    result
}

async fn assess_in_snapshot(
    client: &Client,
    s: &str,
    schema: &str,
) -> Result<Assessment, AssessError> {
    let database: String = client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);

    let mut volumes = Vec::new();
    for table in ["contacts", "contact_custom_fields", "custom_fields"] {
        let row = client
            .query_one(
                &format!(
                    "SELECT count(*), pg_total_relation_size('{s}.{table}'),
                            pg_size_pretty(pg_total_relation_size('{s}.{table}')),
                            COALESCE(avg(length(to_json(t)::text)), 0)::float8
                     FROM {s}.{table} t"
                ),
                &[],
            )
            .await?;
        volumes.push(TableVolume {
            table: table.to_owned(),
            rows: row.get(0),
            total_bytes: row.get(1),
            total_size: row.get(2),
            avg_record_bytes: row.get(3),
        });
    }

    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {s}.contacts),
                        (SELECT count(*) FROM {s}.workspaces),
                        (SELECT count(DISTINCT workspace_id) FROM {s}.contacts),
                        (SELECT count(*) FROM {s}.custom_fields),
                        (SELECT count(*) FROM {s}.contact_custom_fields),
                        (SELECT count(*) FROM {s}.contacts WHERE lead_status IS NOT NULL),
                        (SELECT count(*) FROM {s}.contacts WHERE appointment_date IS NOT NULL),
                        (SELECT count(*) FROM {s}.contacts
                          WHERE lead_status IS NOT NULL AND appointment_date IS NOT NULL)"
            ),
            &[],
        )
        .await?;
    let summary = Summary {
        contacts: row.get(0),
        workspaces: row.get(1),
        workspaces_with_contacts: row.get(2),
        field_definitions: row.get(3),
        field_values: row.get(4),
        contacts_with_lead_status: row.get(5),
        contacts_with_appointment_date: row.get(6),
    };
    let appointments: i64 = row.get(7);

    let has_context: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                            WHERE table_schema = $1 AND table_name = 'custom_fields'
                              AND column_name = 'context_type')",
            &[&schema],
        )
        .await?
        .get(0);
    let context = if has_context {
        "COALESCE(f.context_type, 'contact')"
    } else {
        "'contact'"
    };
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE ctx = 'contact'),
                        count(*) FILTER (WHERE ctx = 'lead' AND c.lead_status IS NOT NULL),
                        count(*) FILTER (WHERE ctx = 'appointment' AND c.lead_status IS NOT NULL
                                           AND c.appointment_date IS NOT NULL),
                        count(*)
                 FROM {s}.contact_custom_fields v
                 JOIN {s}.contacts c ON c.id = v.contact_id
                 JOIN {s}.custom_fields f ON f.id = v.field_id,
                 LATERAL (SELECT {context} AS ctx) x"
            ),
            &[],
        )
        .await?;
    let (customer_values, lead_values, appointment_values, all_values): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let projected = Projected {
        customers: summary.contacts,
        leads: summary.contacts_with_lead_status,
        appointments,
        customer_custom_fields: customer_values,
        lead_custom_fields: lead_values,
        appointment_custom_fields: appointment_values,
        unroutable_values: all_values - customer_values - lead_values - appointment_values,
    };

    let misfits = misfit_counts(client, s).await?;
    let edge_values = edge_value_counts(client, s).await?;

    let mut warnings = Vec::new();
    for (check, description, predicate) in WARNINGS {
        let rows: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {s}.contacts c WHERE {predicate}"),
                &[],
            )
            .await?
            .get(0);
        let sample_contact_ids = if rows > 0 {
            samples(client, s, "contacts", "id", predicate).await?
        } else {
            Vec::new()
        };
        warnings.push(Warning {
            check,
            description,
            rows,
            sample_contact_ids,
        });
    }

    let workspaces = client
        .query(
            &format!(
                "SELECT workspace_id, count(*),
                        round(100.0 * count(*) FILTER (WHERE email <> '') / count(*), 2)::float8,
                        round(100.0 * count(*) FILTER (WHERE phone_number <> '') / count(*), 2)::float8,
                        round(100.0 * count(*) FILTER (WHERE lead_status IS NOT NULL) / count(*), 2)::float8,
                        round(100.0 * (count(*) FILTER (WHERE firstname <> '')
                                     + count(*) FILTER (WHERE lastname <> '')) / (2 * count(*)), 2)::float8
                 FROM {s}.contacts GROUP BY workspace_id ORDER BY count(*) DESC, workspace_id"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| WorkspaceQuality {
            workspace_id: r.get(0),
            contacts: r.get(1),
            email_pct: r.get(2),
            phone_pct: r.get(3),
            lead_status_pct: r.get(4),
            name_pct: r.get(5),
        })
        .collect();

    // The guide counted definitions after a LEFT JOIN to values, so every value counted as a
    // definition; count each separately.
    let custom_fields = client
        .query(
            &format!(
                "SELECT f.workspace_id, f.field_type, count(*),
                        COALESCE(sum(v.n), 0)::bigint,
                        round(COALESCE(sum(v.n), 0)::numeric / count(*), 2)::float8
                 FROM {s}.custom_fields f
                 LEFT JOIN (SELECT field_id, count(*) AS n FROM {s}.contact_custom_fields
                            GROUP BY field_id) v ON v.field_id = f.id
                 GROUP BY f.workspace_id, f.field_type
                 ORDER BY f.workspace_id, f.field_type"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| FieldUsage {
            workspace_id: r.get(0),
            field_type: r.get(1),
            definitions: r.get(2),
            values: r.get(3),
            avg_values_per_field: r.get(4),
        })
        .collect();

    Ok(Assessment {
        database,
        volumes,
        summary,
        projected,
        misfits,
        edge_values,
        warnings,
        workspaces,
        custom_fields,
    })
}

/// One scan of `contacts` counts every column that will not fit its target.
async fn misfit_counts(client: &Client, s: &str) -> Result<Vec<MisfitCount>, AssessError> {
    // productid comes from the configured rules, not from a legacy value.
    let limits: Vec<_> = LENGTH_LIMITS
        .iter()
        .filter(|(target, _, _)| *target != "leads.productid")
        .collect();
    let predicate = |target: &str, source: &str, limit: usize| {
        let lead_only = if target.starts_with("leads.") {
            "c.lead_status IS NOT NULL AND "
        } else {
            ""
        };
        format!("{lead_only}char_length(c.{source}) > {limit}")
    };
    let columns: Vec<String> = limits
        .iter()
        .map(|(target, source, limit)| {
            format!(
                "count(*) FILTER (WHERE {}), COALESCE(max(char_length(c.{source})), 0)",
                predicate(target, source, *limit)
            )
        })
        .collect();
    let row = client
        .query_one(
            &format!("SELECT {} FROM {s}.contacts c", columns.join(", ")),
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for (i, (target, source, limit)) in limits.iter().enumerate() {
        let rows: i64 = row.get(2 * i);
        if rows == 0 {
            continue;
        }
        out.push(MisfitCount {
            target_column: (*target).to_owned(),
            source_column: format!("contacts.{source}"),
            limit: *limit,
            rows,
            max_length: row.get(2 * i + 1),
            sample_contact_ids: samples(
                client,
                s,
                "contacts",
                "id",
                &predicate(target, source, *limit),
            )
            .await?,
        });
    }
    Ok(out)
}

/// The lowest `appointment_date` whose derived `setdate` (one day earlier) a timestamp
/// column holds: PostgreSQL's lowest timestamp is 4714-11-24 00:00:00 BC. The `+00` makes
/// the bound UTC on a `timestamptz` column (leadsync reads those as UTC) and is ignored on a
/// `timestamp` one.
const LOWEST_APPOINTMENT_DATE: &str = "4714-11-25 00:00:00+00 BC";

/// One edge-value check: a predicate over the rows of `table` (as `c`).
struct EdgeCheck {
    check: &'static str,
    table: &'static str,
    column: &'static str,
    predicate: String,
    outcome: &'static str,
}

fn edge_checks() -> Vec<EdgeCheck> {
    let mut checks = Vec::new();
    // `isfinite` takes a timestamp or a timestamptz alike.
    for (table, column) in [
        ("contacts", "appointment_date"),
        ("contacts", "created_at"),
        ("contacts", "updated_at"),
        ("contact_custom_fields", "created_at"),
        ("contact_custom_fields", "updated_at"),
    ] {
        checks.push(EdgeCheck {
            check: "infinite_timestamp",
            table,
            column,
            predicate: format!("NOT isfinite(c.{column})"),
            outcome: "carried as infinity (a data-quality warning)",
        });
    }
    // Only a lead's appointment date makes an appointment; -infinity stays -infinity.
    checks.push(EdgeCheck {
        check: "appointment_before_min_setdate",
        table: "contacts",
        column: "appointment_date",
        predicate: format!(
            "c.lead_status IS NOT NULL AND isfinite(c.appointment_date) \
             AND c.appointment_date < '{LOWEST_APPOINTMENT_DATE}'"
        ),
        outcome: "dead letter: its setdate (a day earlier) is below PostgreSQL's lowest timestamp",
    });
    // A lead's priority lands in leads.priority (INTEGER); the other integer columns are
    // only compared. `::numeric` compares an integer, a bigint or a numeric column alike.
    checks.push(EdgeCheck {
        check: "beyond_int4",
        table: "contacts",
        column: "priority",
        predicate: "c.lead_status IS NOT NULL \
                    AND c.priority::numeric NOT BETWEEN -2147483648 AND 2147483647"
            .into(),
        outcome: "dead letter: leads.priority is an INTEGER",
    });
    checks
}

/// One scan per legacy table counts every edge-value check on it.
async fn edge_value_counts(client: &Client, s: &str) -> Result<Vec<EdgeValueCount>, AssessError> {
    let checks = edge_checks();
    let mut out = Vec::new();
    for (table, contact_id) in [("contacts", "id"), ("contact_custom_fields", "contact_id")] {
        let on_table: Vec<&EdgeCheck> = checks.iter().filter(|c| c.table == table).collect();
        let columns: Vec<String> = on_table
            .iter()
            .map(|c| format!("count(*) FILTER (WHERE {})", c.predicate))
            .collect();
        let row = client
            .query_one(
                &format!("SELECT {} FROM {s}.{table} c", columns.join(", ")),
                &[],
            )
            .await?;
        for (i, check) in on_table.iter().enumerate() {
            let rows: i64 = row.get(i);
            if rows == 0 {
                continue;
            }
            let sample_contact_ids =
                samples(client, s, table, contact_id, &check.predicate).await?;
            out.push(EdgeValueCount {
                check: check.check,
                source_column: format!("{table}.{}", check.column),
                outcome: check.outcome,
                rows,
                sample_contact_ids,
            });
        }
    }
    Ok(out)
}

/// The first few contact ids (by id) of the rows of `table` (as `c`) that match `predicate`;
/// `contact_id` is the column holding them.
async fn samples(
    client: &Client,
    s: &str,
    table: &str,
    contact_id: &str,
    predicate: &str,
) -> Result<Vec<Uuid>, AssessError> {
    Ok(client
        .query(
            &format!(
                "SELECT DISTINCT c.{contact_id} FROM {s}.{table} c WHERE {predicate}
                 ORDER BY 1 LIMIT {SAMPLES}"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

fn ids(ids: &[Uuid]) -> String {
    ids.iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Assessment {
    /// The human report.
    pub fn render(&self) -> String {
        let mut out = format!("Migration assessment of database `{}`\n\n", self.database);

        let mut t = table(&["legacy table", "rows", "size", "avg record (bytes)"]);
        for v in &self.volumes {
            t.add_row(vec![
                v.table.clone(),
                v.rows.to_string(),
                v.total_size.clone(),
                format!("{:.0}", v.avg_record_bytes),
            ]);
        }
        out.push_str(&format!("Volumes\n{t}\n\n"));

        let s = &self.summary;
        let p = &self.projected;
        let mut t = table(&["", "count"]);
        for (label, n) in [
            ("contacts", s.contacts),
            ("workspaces (with contacts)", s.workspaces_with_contacts),
            ("workspaces (all)", s.workspaces),
            ("custom field definitions", s.field_definitions),
            ("custom field values", s.field_values),
            ("→ customers", p.customers),
            ("→ leads (lead_status set)", p.leads),
            ("→ appointments (lead + appointment_date)", p.appointments),
            ("→ customer_custom_fields", p.customer_custom_fields),
            ("→ lead_custom_fields", p.lead_custom_fields),
            ("→ appointment_custom_fields", p.appointment_custom_fields),
            ("values without a parent (unroutable)", p.unroutable_values),
        ] {
            t.add_row(vec![label.to_owned(), n.to_string()]);
        }
        out.push_str(&format!("Summary and projected rows\n{t}\n\n"));

        if self.misfits.is_empty() {
            out.push_str("Values that will not fit the target: none\n\n");
        } else {
            let mut t = table(&[
                "target column",
                "from",
                "limit",
                "rows",
                "longest",
                "sample contacts",
            ]);
            for m in &self.misfits {
                t.add_row(vec![
                    m.target_column.clone(),
                    m.source_column.clone(),
                    m.limit.to_string(),
                    m.rows.to_string(),
                    m.max_length.to_string(),
                    ids(&m.sample_contact_ids),
                ]);
            }
            out.push_str(&format!(
                "Values that will not fit the target (these rows become dead letters until the \
                 column is widened or the data fixed)\n{t}\n\n"
            ));
        }

        if self.edge_values.is_empty() {
            out.push_str("Values leadsync cannot carry as they are: none\n\n");
        } else {
            let mut t = table(&["check", "column", "rows", "what happens", "sample contacts"]);
            for e in &self.edge_values {
                t.add_row(vec![
                    e.check.to_owned(),
                    e.source_column.clone(),
                    e.rows.to_string(),
                    e.outcome.to_owned(),
                    ids(&e.sample_contact_ids),
                ]);
            }
            out.push_str(&format!(
                "Values leadsync cannot carry as they are\n{t}\n\n"
            ));
        }

        let mut t = table(&["data-quality check", "rows", "meaning"]);
        for w in &self.warnings {
            t.add_row(vec![
                w.check.to_owned(),
                w.rows.to_string(),
                w.description.to_owned(),
            ]);
        }
        out.push_str(&format!("Data-quality warnings\n{t}\n\n"));

        let mut t = table(&[
            "workspace",
            "contacts",
            "email %",
            "phone %",
            "lead status %",
            "name %",
        ]);
        for w in self.workspaces.iter().take(WORKSPACES_SHOWN) {
            t.add_row(vec![
                w.workspace_id.to_string(),
                w.contacts.to_string(),
                format!("{:.2}", w.email_pct),
                format!("{:.2}", w.phone_pct),
                format!("{:.2}", w.lead_status_pct),
                format!("{:.2}", w.name_pct),
            ]);
        }
        let more = self.workspaces.len().saturating_sub(WORKSPACES_SHOWN);
        out.push_str(&format!("Completeness of the largest workspaces\n{t}\n"));
        if more > 0 {
            out.push_str(&format!(
                "… and {more} more workspaces (all of them in --json)\n"
            ));
        }
        out.push('\n');

        let mut by_type: std::collections::BTreeMap<&str, (i64, i64)> = Default::default();
        for f in &self.custom_fields {
            let e = by_type.entry(f.field_type.as_str()).or_default();
            e.0 += f.definitions;
            e.1 += f.values;
        }
        let mut t = table(&["field type", "definitions", "values", "values per field"]);
        for (field_type, (definitions, values)) in by_type {
            t.add_row(vec![
                field_type.to_owned(),
                definitions.to_string(),
                values.to_string(),
                format!("{:.2}", values as f64 / definitions.max(1) as f64),
            ]);
        }
        out.push_str(&format!(
            "Custom-field usage (per workspace in --json)\n{t}\n"
        ));
        out
    }
}
