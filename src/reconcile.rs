//! Row-by-row reconciliation of the target tables against the projection of the legacy
//! source (SPEC §2 "Invariant", §3), computed entirely in SQL inside PostgreSQL.
//!
//! The projection is written here a second time, as set-based SQL, on purpose: the tests use
//! this module to check the Rust projection in [`crate::project`] and everything built on it
//! (backfill, streaming), so it must not share code with them — a bug in one must show up as
//! a difference, not cancel out. `leadsync validate` uses it for the same comparison in
//! production.
//!
//! Every table is compared with one `FULL OUTER JOIN` of the projection (`expected`) and the
//! live owned target rows (`actual`) on the table's key, all inside one `REPEATABLE READ`
//! read-only transaction, so the six tables are compared at one snapshot. Samples of the
//! differences are fetched only for tables that have any, so a clean run reads every table
//! once.

use std::fmt;

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Transaction};
use uuid::Uuid;

use crate::db::{self, quote_ident};
use crate::project::ProductRules;

/// How many differences of one table are kept as samples.
pub const SAMPLES: usize = 5;

/// `NAMESPACE_URL` of RFC 4122 as hex, the namespace of the lead and appointment ids.
const NAMESPACE_URL_HEX: &str = "6ba7b8119dad11d180b400c04fd430c8";

/// What to compare.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileOptions<'a> {
    /// Schema of the legacy tables (`source.schema`).
    pub source_schema: &'a str,
    /// Schema of the target tables (`target.schema`).
    pub target_schema: &'a str,
    /// The product rules the projection uses (`transform.*`).
    pub rules: &'a ProductRules,
    /// Leave out contacts with pending dead letters: their rows are known to differ until
    /// the dead letters are replayed (SPEC §2, the invariant's exception).
    pub except_dead_letters: bool,
}

/// The reconciliation could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A query failed (missing table, no privilege, lost connection, …).
    #[error("reconciliation query failed: {}", db::error_text(.0))]
    Database(#[from] tokio_postgres::Error),
    /// Neither pgcrypto's `digest()` nor uuid-ossp's `uuid_generate_v5()` is installed, so
    /// the lead and appointment ids cannot be computed in SQL.
    #[error(
        "cannot compute UUIDv5 ids in SQL: neither the pgcrypto nor the uuid-ossp extension is \
         installed; install one of them (CREATE EXTENSION pgcrypto)"
    )]
    NoUuidV5,
}

/// The outcome: one entry per target table, parents before children.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// `customers`, `leads`, `appointments`, `customer_custom_fields`, `lead_custom_fields`,
    /// `appointment_custom_fields`, in this order.
    pub tables: Vec<TableDiff>,
}

/// The comparison of one target table.
#[derive(Debug, Clone, Serialize)]
pub struct TableDiff {
    /// The target table.
    pub table: &'static str,
    /// Rows the projection of the source gives.
    pub expected: i64,
    /// Live owned rows in the target.
    pub actual: i64,
    /// Keys in the projection but not among the live owned target rows.
    pub missing: i64,
    /// Keys among the live owned target rows but not in the projection.
    pub extra: i64,
    /// Keys on both sides whose projected columns differ.
    pub different: i64,
    /// Up to [`SAMPLES`] differences, mixing the kinds that occur, ordered by kind and key.
    pub samples: Vec<Difference>,
}

/// One differing key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    /// How it differs.
    pub kind: DiffKind,
    /// The key: `cst_id` for customers, `id` for leads and appointments,
    /// `parent_id/field_id` for custom-field values.
    pub key: String,
    /// The projected row (`None` for an extra row), as a JSON object of its columns.
    pub expected: Option<serde_json::Value>,
    /// The target row's projected columns (`None` for a missing row).
    pub actual: Option<serde_json::Value>,
}

/// The kind of a [`Difference`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// In the projection, not in the target.
    Missing,
    /// In the target, not in the projection.
    Extra,
    /// On both sides with different projected columns.
    Different,
}

impl DiffKind {
    const ALL: [DiffKind; 3] = [DiffKind::Missing, DiffKind::Extra, DiffKind::Different];

    fn label(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Different => "different",
        }
    }
}

impl Reconciliation {
    /// Whether every table matches the projection.
    pub fn is_clean(&self) -> bool {
        self.tables.iter().all(TableDiff::is_clean)
    }

    /// The comparison of `table`.
    pub fn table(&self, table: &str) -> Option<&TableDiff> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// Panics with the report of every table that differs, and its samples, unless the
    /// target matches the projection.
    #[track_caller]
    pub fn assert_clean(&self) {
        if !self.is_clean() {
            panic!("the target does not match the projection of the source:\n{self}");
        }
    }
}

impl TableDiff {
    /// Whether the table matches the projection.
    pub fn is_clean(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }

    /// The count of one kind of difference.
    pub fn count(&self, kind: DiffKind) -> i64 {
        match kind {
            DiffKind::Missing => self.missing,
            DiffKind::Extra => self.extra,
            DiffKind::Different => self.different,
        }
    }
}

impl fmt::Display for Reconciliation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut t = crate::text::table(&[
            "table",
            "expected",
            "actual",
            "missing",
            "extra",
            "different",
            "",
        ]);
        for d in &self.tables {
            t.add_row(vec![
                d.table.to_owned(),
                d.expected.to_string(),
                d.actual.to_string(),
                d.missing.to_string(),
                d.extra.to_string(),
                d.different.to_string(),
                if d.is_clean() { "ok" } else { "DIFFERS" }.to_owned(),
            ]);
        }
        writeln!(f, "{t}")?;
        for d in self.tables.iter().filter(|d| !d.is_clean()) {
            writeln!(f, "{} (samples):", d.table)?;
            for s in &d.samples {
                write!(f, "  {:<9} {}", s.kind.label(), s.key)?;
                match s.kind {
                    DiffKind::Missing => writeln!(f, "  expected {}", json_text(&s.expected))?,
                    DiffKind::Extra => writeln!(f, "  actual {}", json_text(&s.actual))?,
                    DiffKind::Different => {
                        writeln!(f)?;
                        for (column, expected, actual) in differing_columns(s) {
                            writeln!(f, "      {column}: expected {expected}, actual {actual}")?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn json_text(value: &Option<serde_json::Value>) -> String {
    value
        .as_ref()
        .map_or_else(|| "null".to_owned(), serde_json::Value::to_string)
}

/// The columns whose values differ between the two sides of a sample, so a report shows
/// the one changed column rather than two rows of twenty.
fn differing_columns(d: &Difference) -> Vec<(String, String, String)> {
    let empty = serde_json::Map::new();
    let expected = d
        .expected
        .as_ref()
        .and_then(|v| v.as_object())
        .unwrap_or(&empty);
    let actual = d
        .actual
        .as_ref()
        .and_then(|v| v.as_object())
        .unwrap_or(&empty);
    let null = serde_json::Value::Null;
    let mut columns: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    columns.sort();
    columns.dedup();
    columns
        .into_iter()
        .filter_map(|c| {
            let (e, a) = (
                expected.get(c).unwrap_or(&null),
                actual.get(c).unwrap_or(&null),
            );
            (e != a).then(|| (c.clone(), e.to_string(), a.to_string()))
        })
        .collect()
}

/// Compares the live owned target rows with the projection of the source, table by table,
/// at one snapshot. Read-only; needs the target tables (`leadsync setup`) and either
/// pgcrypto or uuid-ossp in the database.
///
/// Takes the client mutably because it runs its own transaction on it; the caller must
/// not be inside one.
pub async fn reconcile(
    client: &mut Client,
    opts: &ReconcileOptions<'_>,
) -> Result<Reconciliation, ReconcileError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let sql = ProjectionSql::detect(&tx, opts).await?;
    let mut tables = Vec::with_capacity(6);
    for spec in sql.tables() {
        tables.push(compare(&tx, &spec).await?);
    }
    // Read-only: committing and rolling back are the same; commit ends it cleanly.
    tx.commit().await?;
    Ok(Reconciliation { tables })
}

/// A derived id kind (SPEC §3): the lead or the appointment of a contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivedId {
    /// `uuid_v5(NAMESPACE_URL, 'leadsync:lead:' || contact_id)`.
    Lead,
    /// `uuid_v5(NAMESPACE_URL, 'leadsync:appointment:' || contact_id)`.
    Appointment,
}

impl DerivedId {
    fn name(self) -> &'static str {
        match self {
            DerivedId::Lead => "lead",
            DerivedId::Appointment => "appointment",
        }
    }
}

/// The lead or appointment ids of `contact_ids`, computed by the same SQL the reconciliation
/// uses (so tests can compare it with the Rust projection and with uuid-ossp).
pub async fn derived_ids_in_sql(
    client: &Client,
    kind: DerivedId,
    contact_ids: &[Uuid],
) -> Result<Vec<Uuid>, ReconcileError> {
    let v5 = UuidV5::detect(client).await?;
    let sql = format!(
        "SELECT d.id FROM unnest($1::uuid[]) WITH ORDINALITY AS c(id, n) {} ORDER BY c.n",
        v5.lateral(kind, "c.id", "d")
    );
    let rows = client.query(&sql, &[&contact_ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// How UUIDv5 is computed in SQL.
#[derive(Debug, Clone)]
enum UuidV5 {
    /// pgcrypto's `digest(…, 'sha1')` in the (quoted) schema: RFC 4122 §4.3 by hand. The
    /// preferred form: pgcrypto is the more common extension (the legacy schema loads it).
    Pgcrypto(String),
    /// uuid-ossp's `uuid_generate_v5` in the (quoted) schema.
    UuidOssp(String),
}

impl UuidV5 {
    /// Finds an installed extension that can do it. Functions are schema-qualified because
    /// hosted databases install extensions into a schema outside the search path.
    async fn detect(client: &impl tokio_postgres::GenericClient) -> Result<UuidV5, ReconcileError> {
        let rows = client
            .query(
                "SELECT e.extname, n.nspname FROM pg_extension e
                 JOIN pg_namespace n ON n.oid = e.extnamespace
                 WHERE e.extname IN ('pgcrypto', 'uuid-ossp')",
                &[],
            )
            .await?;
        let schema_of = |name: &str| {
            rows.iter()
                .find(|r| r.get::<_, &str>(0) == name)
                .map(|r| quote_ident(r.get(1)))
        };
        if let Some(schema) = schema_of("pgcrypto") {
            Ok(UuidV5::Pgcrypto(schema))
        } else if let Some(schema) = schema_of("uuid-ossp") {
            Ok(UuidV5::UuidOssp(schema))
        } else {
            Err(ReconcileError::NoUuidV5)
        }
    }

    /// `CROSS JOIN LATERAL (…) alias` giving `alias.id`, the derived id of the contact id
    /// `contact`. The `OFFSET 0` keeps the planner from inlining the subquery, which would
    /// evaluate the hash once per reference instead of once per row.
    fn lateral(&self, kind: DerivedId, contact: &str, alias: &str) -> String {
        let name = format!("'leadsync:{}:' || {contact}::text", kind.name());
        match self {
            UuidV5::Pgcrypto(schema) => format!(
                "CROSS JOIN LATERAL (
                    SELECT encode(
                        set_byte(set_byte(substring(h.h FROM 1 FOR 16),
                                          6, (get_byte(h.h, 6) & 15) | 80),   -- version 5
                                 8, (get_byte(h.h, 8) & 63) | 128),           -- RFC 4122 variant
                        'hex')::uuid AS id
                    FROM (SELECT {schema}.digest(decode('{NAMESPACE_URL_HEX}', 'hex')
                                                 || convert_to({name}, 'UTF8'), 'sha1') AS h
                          OFFSET 0) h
                    OFFSET 0) {alias}"
            ),
            UuidV5::UuidOssp(schema) => format!(
                "CROSS JOIN LATERAL (
                    SELECT {schema}.uuid_generate_v5({schema}.uuid_ns_url(), {name}) AS id
                    OFFSET 0) {alias}"
            ),
        }
    }
}

/// The SQL of one table's comparison.
struct TableSpec {
    table: &'static str,
    /// Key columns; the first one is never NULL on either side, so its NULL-ness in the
    /// outer join says which side a row came from.
    key: &'static [&'static str],
    /// The projected columns, named the same on both sides.
    columns: &'static [&'static str],
    /// The projection of the source.
    expected: String,
    /// The live owned target rows.
    actual: String,
    /// Parameters of `expected` (the product rules).
    params: Vec<String>,
}

const CUSTOMER_COLUMNS: &[&str] = &[
    "cst_id",
    "workspace_id",
    "firstname",
    "lastname",
    "email",
    "phone1",
    "phone2",
    "address1",
    "address2",
    "city",
    "state",
    "zip",
    "country",
    "dateadded",
    "lastchanged",
    "created_at",
    "updated_at",
    "created_by",
    "migrated_from_contact_id",
];

const LEAD_COLUMNS: &[&str] = &[
    "id",
    "customer_id",
    "workspace_id",
    "productid",
    "source",
    "sourcesubdescr",
    "disposition",
    "stg_id",
    "priority",
    "entrydate",
    "lastchangedon",
    "created_at",
    "updated_at",
    "created_by",
    "migrated_from_contact_id",
];

const APPOINTMENT_COLUMNS: &[&str] = &[
    "id",
    "lead_id",
    "workspace_id",
    "apptdate",
    "disposition",
    "apptset",
    "verified",
    "confirmed",
    "setdate",
    "verifieddate",
    "confirmeddate",
    "lastchangeddate",
    "created_at",
    "updated_at",
    "created_by",
    "migrated_from_contact_id",
];

/// The three value tables: (table, parent column, columns, parent table, parent key).
const VALUE_TABLES: [(&str, &[&str], &str, &str); 3] = [
    (
        "customer_custom_fields",
        &[
            "customer_id",
            "field_id",
            "value",
            "created_at",
            "updated_at",
            "created_by",
        ],
        "customers",
        "cst_id",
    ),
    (
        "lead_custom_fields",
        &[
            "lead_id",
            "field_id",
            "value",
            "created_at",
            "updated_at",
            "created_by",
        ],
        "leads",
        "id",
    ),
    (
        "appointment_custom_fields",
        &[
            "appointment_id",
            "field_id",
            "value",
            "created_at",
            "updated_at",
            "created_by",
        ],
        "appointments",
        "id",
    ),
];

/// The projection of SPEC §3 as SQL, for one database.
struct ProjectionSql<'a> {
    /// Quoted legacy schema.
    s: String,
    /// Quoted target schema.
    t: String,
    /// Whether `custom_fields.context_type` exists (`leadsync setup` adds it); without it
    /// every field is contact-level.
    has_context: bool,
    v5: UuidV5,
    rules: &'a ProductRules,
    /// Whether to leave out contacts with pending dead letters (and the table exists).
    except_dead_letters: bool,
}

impl<'a> ProjectionSql<'a> {
    async fn detect(
        tx: &Transaction<'_>,
        opts: &ReconcileOptions<'a>,
    ) -> Result<ProjectionSql<'a>, ReconcileError> {
        let has_context: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                                WHERE table_schema = $1 AND table_name = 'custom_fields'
                                  AND column_name = 'context_type')",
                &[&opts.source_schema],
            )
            .await?
            .get(0);
        let dead_letters_exist: bool = tx
            .query_one(
                "SELECT to_regclass('leadsync.dead_letters') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        Ok(ProjectionSql {
            except_dead_letters: opts.except_dead_letters && dead_letters_exist,
            s: quote_ident(opts.source_schema),
            t: quote_ident(opts.target_schema),
            has_context,
            v5: UuidV5::detect(tx).await?,
            rules: opts.rules,
        })
    }

    /// `productid`: the first rule whose needle occurs in `tags`, as a `CASE` over
    /// parameters (needles and products are user input, never spliced into SQL text).
    fn product(&self) -> (String, Vec<String>) {
        let rules = self.rules.rules();
        if rules.is_empty() {
            return ("'DEFAULT'::text".to_owned(), Vec::new());
        }
        let mut sql = String::from("CASE");
        let mut params = Vec::with_capacity(rules.len() * 2);
        for (i, rule) in rules.iter().enumerate() {
            let (needle, product) = (2 * i + 1, 2 * i + 2);
            // strpos(NULL, …) is NULL, so NULL tags fall through to DEFAULT.
            if self.rules.case_insensitive() {
                sql.push_str(&format!(
                    " WHEN strpos(lower(c.tags), lower(${needle}::text)) > 0 THEN ${product}::text"
                ));
            } else {
                sql.push_str(&format!(
                    " WHEN strpos(c.tags, ${needle}::text) > 0 THEN ${product}::text"
                ));
            }
            params.push(rule.needle.clone());
            params.push(rule.product.clone());
        }
        sql.push_str(" ELSE 'DEFAULT' END");
        (sql, params)
    }

    /// Whether field `f` routes to `context`. Spelled as plain comparisons rather than a
    /// `COALESCE`, which the planner cannot estimate (it would guess a handful of fields and
    /// plan nested loops over a million values).
    fn context_is(&self, context: &str) -> String {
        match (self.has_context, context) {
            (false, "contact") => "true".to_owned(),
            (false, _) => "false".to_owned(),
            (true, "contact") => {
                "(f.context_type IS NULL OR f.context_type = 'contact')".to_owned()
            }
            (true, other) => format!("f.context_type = '{other}'"),
        }
    }

    /// A condition that is false for contacts with pending dead letters (when excepted).
    fn not_parked(&self, contact_id: &str) -> String {
        if self.except_dead_letters {
            format!(
                "NOT EXISTS (SELECT 1 FROM leadsync.dead_letters d
                             WHERE d.status = 'pending' AND d.contact_id = {contact_id})"
            )
        } else {
            "true".to_owned()
        }
    }

    fn tables(&self) -> Vec<TableSpec> {
        let (s, t) = (&self.s, &self.t);
        let parked_c = self.not_parked("c.id");
        // The live owned rows (SPEC §2): the daemon's, not soft-deleted.
        let live = |alias: &str| {
            format!("{alias}.migrated_from_contact_id IS NOT NULL AND {alias}.deleted_at IS NULL")
        };
        let actual = |table: &str, columns: &[&str]| {
            format!(
                "SELECT {} FROM {t}.{table} x WHERE {} AND {}",
                prefixed("x", columns),
                live("x"),
                self.not_parked("x.migrated_from_contact_id")
            )
        };
        let lead_id = self.v5.lateral(DerivedId::Lead, "c.id", "l");
        let appointment_id = self.v5.lateral(DerivedId::Appointment, "c.id", "ap");
        let (product, product_params) = self.product();

        let mut specs = vec![
            TableSpec {
                table: "customers",
                key: &["cst_id"],
                columns: CUSTOMER_COLUMNS,
                expected: format!(
                    "SELECT c.id AS cst_id, c.workspace_id, c.firstname, c.lastname, c.email,
                            c.phone_number AS phone1, NULL::text AS phone2,
                            c.st_address AS address1, NULL::text AS address2,
                            c.city, c.state, c.zip, 'US'::text AS country,
                            c.created_at AS dateadded, c.updated_at AS lastchanged,
                            c.created_at, c.updated_at, c.created_by,
                            c.id AS migrated_from_contact_id
                     FROM {s}.contacts c
                     WHERE {parked_c}"
                ),
                actual: actual("customers", CUSTOMER_COLUMNS),
                params: Vec::new(),
            },
            TableSpec {
                table: "leads",
                key: &["id"],
                columns: LEAD_COLUMNS,
                expected: format!(
                    "SELECT l.id, c.id AS customer_id, c.workspace_id,
                            {product} AS productid,
                            COALESCE(c.lead_source, 'Unknown') AS source,
                            NULL::text AS sourcesubdescr,
                            c.lead_status AS disposition,
                            CASE WHEN c.appointment_status_id BETWEEN 1 AND 4
                                 THEN c.appointment_status_id ELSE 1 END AS stg_id,
                            COALESCE(c.priority, 3) AS priority,
                            c.created_at AS entrydate, c.updated_at AS lastchangedon,
                            c.created_at, c.updated_at, c.created_by,
                            c.id AS migrated_from_contact_id
                     FROM {s}.contacts c {lead_id}
                     WHERE c.lead_status IS NOT NULL AND {parked_c}"
                ),
                actual: actual("leads", LEAD_COLUMNS),
                params: product_params,
            },
            TableSpec {
                table: "appointments",
                key: &["id"],
                columns: APPOINTMENT_COLUMNS,
                expected: format!(
                    "SELECT ap.id, l.id AS lead_id, c.workspace_id,
                            c.appointment_date AS apptdate,
                            CASE c.appointment_result_id WHEN 1 THEN 'Show' WHEN 2 THEN 'No Show'
                                 WHEN 3 THEN 'Cancelled' WHEN 4 THEN 'Reschedule'
                                 ELSE 'Pending' END AS disposition,
                            COALESCE(c.appointment_status_id >= 4, false) AS apptset,
                            COALESCE(c.appointment_status_id >= 5, false) AS verified,
                            COALESCE(c.appointment_status_id >= 6, false) AS confirmed,
                            c.appointment_date - interval '1 day' AS setdate,
                            c.appointment_date - interval '4 hours' AS verifieddate,
                            c.appointment_date - interval '1 hour' AS confirmeddate,
                            c.updated_at AS lastchangeddate,
                            c.created_at, c.updated_at, c.created_by,
                            c.id AS migrated_from_contact_id
                     FROM {s}.contacts c {lead_id} {appointment_id}
                     WHERE c.lead_status IS NOT NULL AND c.appointment_date IS NOT NULL
                       AND {parked_c}"
                ),
                actual: actual("appointments", APPOINTMENT_COLUMNS),
                params: Vec::new(),
            },
        ];

        for (table, columns, parent_table, parent_key) in VALUE_TABLES {
            let parent_column = columns[0];
            // Which contacts have the parent, and what its id is.
            let (parent_id, parent_join, parent_exists) = match parent_table {
                "customers" => ("c.id", String::new(), "true"),
                "leads" => ("l.id", lead_id.clone(), "c.lead_status IS NOT NULL"),
                _ => (
                    "ap.id",
                    appointment_id.clone(),
                    "c.lead_status IS NOT NULL AND c.appointment_date IS NOT NULL",
                ),
            };
            let routed_here = self.context_is(match parent_table {
                "customers" => "contact",
                "leads" => "lead",
                _ => "appointment",
            });
            specs.push(TableSpec {
                table,
                key: &columns[..2],
                columns,
                expected: format!(
                    "SELECT {parent_id} AS {parent_column}, v.field_id, v.value,
                            v.created_at, v.updated_at, v.created_by
                     FROM {s}.contact_custom_fields v
                     JOIN {s}.custom_fields f ON f.id = v.field_id
                     JOIN {s}.contacts c ON c.id = v.contact_id
                     {parent_join}
                     WHERE {routed_here} AND {parent_exists} AND {parked_c}"
                ),
                // A value is live when its parent is a live owned row.
                actual: format!(
                    "SELECT {} FROM {t}.{table} x
                     JOIN {t}.{parent_table} p ON p.{parent_key} = x.{parent_column}
                     WHERE {} AND {}",
                    prefixed("x", columns),
                    live("p"),
                    self.not_parked("p.migrated_from_contact_id")
                ),
                params: Vec::new(),
            });
        }
        specs
    }
}

/// `x.a, x.b, …`.
fn prefixed(alias: &str, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `e.k1 = a.k1 AND …`.
fn key_match(key: &[&str]) -> String {
    key.iter()
        .map(|k| format!("e.{k} = a.{k}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The key as text: `k1` or `k1/k2`.
fn key_text(alias: &str, key: &[&str]) -> String {
    key.iter()
        .map(|k| format!("{alias}.{k}::text"))
        .collect::<Vec<_>>()
        .join(" || '/' || ")
}

async fn compare(tx: &Transaction<'_>, spec: &TableSpec) -> Result<TableDiff, ReconcileError> {
    let params: Vec<&(dyn ToSql + Sync)> = spec
        .params
        .iter()
        .map(|p| p as &(dyn ToSql + Sync))
        .collect();
    let with = format!("WITH e AS ({}), a AS ({})", spec.expected, spec.actual);
    let first = spec.key[0];
    let on = key_match(spec.key);
    let differs = format!(
        "({}) IS DISTINCT FROM ({})",
        prefixed("e", spec.columns),
        prefixed("a", spec.columns)
    );
    // Each CTE is referenced once, so PostgreSQL inlines it and plans one hash full join.
    let counts = tx
        .query_one(
            &format!(
                "{with}
                 SELECT count(e.{first}), count(a.{first}),
                        count(*) FILTER (WHERE a.{first} IS NULL),
                        count(*) FILTER (WHERE e.{first} IS NULL),
                        count(*) FILTER (WHERE e.{first} IS NOT NULL AND a.{first} IS NOT NULL
                                           AND {differs})
                 FROM e FULL JOIN a ON {on}"
            ),
            &params,
        )
        .await?;
    let mut diff = TableDiff {
        table: spec.table,
        expected: counts.get(0),
        actual: counts.get(1),
        missing: counts.get(2),
        extra: counts.get(3),
        different: counts.get(4),
        samples: Vec::new(),
    };

    // Samples: up to SAMPLES of each kind that occurs (lowest keys first, a bounded top-N
    // sort), then a round robin over the kinds so one kind cannot hide another.
    let order = prefixed("e", spec.key);
    let order_a = prefixed("a", spec.key);
    let mut per_kind: Vec<Vec<Difference>> = Vec::new();
    for kind in DiffKind::ALL {
        if diff.count(kind) == 0 {
            continue;
        }
        let select = match kind {
            DiffKind::Missing => format!(
                "SELECT {}, to_jsonb(e), NULL::jsonb FROM e
                 WHERE NOT EXISTS (SELECT 1 FROM a WHERE {on}) ORDER BY {order}",
                key_text("e", spec.key)
            ),
            DiffKind::Extra => format!(
                "SELECT {}, NULL::jsonb, to_jsonb(a) FROM a
                 WHERE NOT EXISTS (SELECT 1 FROM e WHERE {on}) ORDER BY {order_a}",
                key_text("a", spec.key)
            ),
            DiffKind::Different => format!(
                "SELECT {}, to_jsonb(e), to_jsonb(a) FROM e JOIN a ON {on}
                 WHERE {differs} ORDER BY {order}",
                key_text("e", spec.key)
            ),
        };
        let rows = tx
            .query(&format!("{with} {select} LIMIT {SAMPLES}"), &params)
            .await?;
        per_kind.push(
            rows.iter()
                .map(|r| Difference {
                    kind,
                    key: r.get(0),
                    expected: r.get(1),
                    actual: r.get(2),
                })
                .collect(),
        );
    }
    'pick: for i in 0..SAMPLES {
        for samples in &per_kind {
            if diff.samples.len() == SAMPLES {
                break 'pick;
            }
            if let Some(s) = samples.get(i) {
                diff.samples.push(s.clone());
            }
        }
    }
    diff.samples
        .sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
    Ok(diff)
}
