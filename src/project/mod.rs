//! The projection (SPEC §3): what a legacy contact and its custom-field values become in the
//! lead-centric schema. Pure: no I/O, no clock; the backfill and the stream both use it, so
//! a row comes out the same whichever path carried it.
//!
//! A contact always becomes one customer (`cst_id = contact id`); a lead exactly when its
//! `lead_status` is not NULL; an appointment exactly when it also has an `appointment_date`.
//! Lead and appointment ids are UUIDv5 of the contact id, so replaying a change can never
//! create a second row. Each custom-field value goes to the customer, lead or appointment
//! that its field's `context_type` names, and only while that parent exists.

pub mod change;
pub mod plan;
mod rules;

pub use rules::ProductRules;

use uuid::Uuid;

use crate::Timestamp;

/// The legacy `contacts` columns the projection reads, in [`Contact`]'s field order, each
/// with the SQL type leadsync reads it as. Every reader of contacts (stream, first load,
/// resync, leadsync's state) uses this one list.
pub const CONTACT_COLUMNS: [(&str, &str); 20] = [
    ("id", "uuid"),
    ("workspace_id", "uuid"),
    ("firstname", "text"),
    ("lastname", "text"),
    ("email", "text"),
    ("phone_number", "text"),
    ("st_address", "text"),
    ("city", "text"),
    ("state", "text"),
    ("zip", "text"),
    ("lead_status", "text"),
    ("lead_source", "text"),
    ("tags", "text"),
    ("appointment_status_id", "int8"),
    ("appointment_result_id", "int8"),
    ("appointment_date", "timestamp"),
    ("priority", "int8"),
    ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
    ("created_by", "uuid"),
];

/// The legacy `contact_custom_fields` columns, in [`FieldValue`]'s field order.
pub const VALUE_COLUMNS: [(&str, &str); 6] = [
    ("contact_id", "uuid"),
    ("field_id", "uuid"),
    ("value", "text"),
    ("created_at", "timestamp"),
    ("updated_at", "timestamp"),
    ("created_by", "uuid"),
];

/// `alias.column::type, …` for a SELECT that yields rows in [`CONTACT_COLUMNS`] order.
pub fn contact_select(alias: &str) -> String {
    CONTACT_COLUMNS
        .iter()
        .map(|(name, ty)| format!("{alias}.{name}::{ty}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Something rows can be read from by position (a query row, a binary COPY row).
pub trait Columns {
    /// The value at `index`, converted; an error names what could not be read.
    fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
        &'a self,
        index: usize,
    ) -> Result<T, String>;
}

impl Columns for tokio_postgres::Row {
    fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
        &'a self,
        index: usize,
    ) -> Result<T, String> {
        self.try_get(index).map_err(|e| e.to_string())
    }
}

impl Columns for tokio_postgres::binary_copy::BinaryCopyOutRow {
    fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
        &'a self,
        index: usize,
    ) -> Result<T, String> {
        self.try_get(index).map_err(|e| e.to_string())
    }
}

/// A row that could not be read (a value of a type leadsync does not expect), with the
/// contact it belongs to when at least that could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table}.{column}: {reason}")]
pub struct UnreadableRow {
    pub contact_id: Option<Uuid>,
    pub table: &'static str,
    pub column: &'static str,
    pub reason: String,
}

impl Contact {
    /// A contact from a row in [`CONTACT_COLUMNS`] order.
    pub fn from_columns(row: &impl Columns) -> Result<Contact, UnreadableRow> {
        let id: Option<Uuid> = row.column(0).ok();
        let read = |index: usize| {
            move |reason: String| UnreadableRow {
                contact_id: id,
                table: "contacts",
                column: CONTACT_COLUMNS[index].0,
                reason,
            }
        };
        macro_rules! col {
            ($i:expr) => {
                row.column($i).map_err(read($i))?
            };
        }
        Ok(Contact {
            id: col!(0),
            workspace_id: col!(1),
            firstname: col!(2),
            lastname: col!(3),
            email: col!(4),
            phone_number: col!(5),
            st_address: col!(6),
            city: col!(7),
            state: col!(8),
            zip: col!(9),
            lead_status: col!(10),
            lead_source: col!(11),
            tags: col!(12),
            appointment_status_id: col!(13),
            appointment_result_id: col!(14),
            appointment_date: col!(15),
            priority: col!(16),
            created_at: col!(17),
            updated_at: col!(18),
            created_by: col!(19),
        })
    }
}

impl FieldValue {
    /// A value from a row in [`VALUE_COLUMNS`] order, starting at `offset`.
    pub fn from_columns(row: &impl Columns, offset: usize) -> Result<FieldValue, UnreadableRow> {
        let id: Option<Uuid> = row.column(offset).ok();
        let read = |index: usize| {
            move |reason: String| UnreadableRow {
                contact_id: id,
                table: "contact_custom_fields",
                column: VALUE_COLUMNS[index].0,
                reason,
            }
        };
        macro_rules! col {
            ($i:expr) => {
                row.column(offset + $i).map_err(read($i))?
            };
        }
        Ok(FieldValue {
            contact_id: col!(0),
            field_id: col!(1),
            value: col!(2),
            created_at: col!(3),
            updated_at: col!(4),
            created_by: col!(5),
        })
    }
}

/// A legacy `contacts` row: the columns the projection reads.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Contact {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub st_address: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    pub lead_status: Option<String>,
    pub lead_source: Option<String>,
    pub tags: Option<String>,
    pub appointment_status_id: Option<i64>,
    pub appointment_result_id: Option<i64>,
    pub appointment_date: Option<Timestamp>,
    pub priority: Option<i64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<Uuid>,
}

/// The `customers` columns leadsync owns for a migrated customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub cst_id: Uuid,
    pub workspace_id: Uuid,
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    pub email: Option<String>,
    pub phone1: Option<String>,
    pub phone2: Option<String>,
    pub address1: Option<String>,
    pub address2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
    pub country: String,
    pub dateadded: Timestamp,
    pub lastchanged: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<Uuid>,
    pub migrated_from_contact_id: Uuid,
}

/// The `leads` columns leadsync owns for a contact's migrated lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub workspace_id: Uuid,
    pub productid: String,
    pub source: String,
    pub sourcesubdescr: Option<String>,
    pub disposition: String,
    pub stg_id: i32,
    /// The contact's priority, as wide as the legacy column; [`misfits`] reports one that
    /// `leads.priority` (INTEGER) cannot hold.
    pub priority: i64,
    pub entrydate: Timestamp,
    pub lastchangedon: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<Uuid>,
    pub migrated_from_contact_id: Uuid,
}

/// The `appointments` columns leadsync owns for a contact's migrated appointment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appointment {
    pub id: Uuid,
    pub lead_id: Uuid,
    pub workspace_id: Uuid,
    pub apptdate: Timestamp,
    pub disposition: String,
    pub apptset: bool,
    pub verified: bool,
    pub confirmed: bool,
    pub setdate: Timestamp,
    pub verifieddate: Timestamp,
    pub confirmeddate: Timestamp,
    pub lastchangeddate: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<Uuid>,
    pub migrated_from_contact_id: Uuid,
}

/// Everything one contact becomes, custom-field values aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactProjection {
    pub customer: Customer,
    pub lead: Option<Lead>,
    pub appointment: Option<Appointment>,
}

/// A legacy `contact_custom_fields` row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldValue {
    pub contact_id: Uuid,
    pub field_id: Uuid,
    /// The JSONB value as text; `None` for SQL NULL.
    pub value: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<Uuid>,
}

/// Where a custom field's values belong (`custom_fields.context_type`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FieldContext {
    Contact,
    Lead,
    Appointment,
    /// A value the projection does not know; its values are unroutable.
    Other(String),
}

impl FieldContext {
    /// Reads `custom_fields.context_type`; NULL counts as `contact`.
    pub fn from_column(value: Option<&str>) -> FieldContext {
        match value {
            None | Some("contact") => FieldContext::Contact,
            Some("lead") => FieldContext::Lead,
            Some("appointment") => FieldContext::Appointment,
            Some(other) => FieldContext::Other(other.to_owned()),
        }
    }
}

/// The three target tables for custom-field values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueTable {
    CustomerCustomFields,
    LeadCustomFields,
    AppointmentCustomFields,
}

impl ValueTable {
    /// Every value table, in parent order.
    pub const ALL: [ValueTable; 3] = [
        ValueTable::CustomerCustomFields,
        ValueTable::LeadCustomFields,
        ValueTable::AppointmentCustomFields,
    ];

    /// The table's name.
    pub fn table(self) -> &'static str {
        match self {
            ValueTable::CustomerCustomFields => "customer_custom_fields",
            ValueTable::LeadCustomFields => "lead_custom_fields",
            ValueTable::AppointmentCustomFields => "appointment_custom_fields",
        }
    }

    /// The column that points at the parent row.
    pub fn parent_column(self) -> &'static str {
        match self {
            ValueTable::CustomerCustomFields => "customer_id",
            ValueTable::LeadCustomFields => "lead_id",
            ValueTable::AppointmentCustomFields => "appointment_id",
        }
    }
}

/// A custom-field value as it lands in its target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedValue {
    pub table: ValueTable,
    pub parent_id: Uuid,
    pub field_id: Uuid,
    pub value: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub created_by: Option<Uuid>,
}

/// Why a custom-field value has no place in the target right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// The contact does not exist (any more, or yet).
    NoContact,
    /// The field is lead-level and the contact has no lead status.
    NoLead,
    /// The field is appointment-level and the contact has no appointment.
    NoAppointment,
    /// The field's context is not one the projection knows.
    UnknownContext(String),
}

/// `uuid_generate_v5(uuid_ns_url(), 'leadsync:lead:' || contact_id)`.
pub fn lead_id_for(contact_id: Uuid) -> Uuid {
    derived_id("lead", contact_id)
}

/// `uuid_generate_v5(uuid_ns_url(), 'leadsync:appointment:' || contact_id)`.
pub fn appointment_id_for(contact_id: Uuid) -> Uuid {
    derived_id("appointment", contact_id)
}

fn derived_id(kind: &str, contact_id: Uuid) -> Uuid {
    let name = format!("leadsync:{kind}:{}", contact_id.hyphenated());
    Uuid::new_v5(&Uuid::NAMESPACE_URL, name.as_bytes())
}

/// The lead stage: `appointment_status_id` when it is 1-4, else 1 ("New Lead").
pub fn stage_for(appointment_status_id: Option<i64>) -> i32 {
    match appointment_status_id {
        Some(id @ 1..=4) => id as i32,
        _ => 1,
    }
}

/// The appointment disposition for an `appointment_result_id`.
pub fn appointment_disposition(appointment_result_id: Option<i64>) -> &'static str {
    match appointment_result_id {
        Some(1) => "Show",
        Some(2) => "No Show",
        Some(3) => "Cancelled",
        Some(4) => "Reschedule",
        _ => "Pending",
    }
}

/// Default `leads.priority` when the contact has none.
pub const DEFAULT_PRIORITY: i64 = 3;
/// `leads.source` when the contact's `lead_source` is NULL.
pub const UNKNOWN_SOURCE: &str = "Unknown";
/// `customers.country` of every migrated customer.
pub const COUNTRY: &str = "US";

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

/// Projects one contact.
pub fn project_contact(c: &Contact, rules: &ProductRules) -> ContactProjection {
    let customer = Customer {
        cst_id: c.id,
        workspace_id: c.workspace_id,
        firstname: c.firstname.clone(),
        lastname: c.lastname.clone(),
        email: c.email.clone(),
        phone1: c.phone_number.clone(),
        phone2: None,
        address1: c.st_address.clone(),
        address2: None,
        city: c.city.clone(),
        state: c.state.clone(),
        zip: c.zip.clone(),
        country: COUNTRY.to_owned(),
        dateadded: c.created_at,
        lastchanged: c.updated_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        created_by: c.created_by,
        migrated_from_contact_id: c.id,
    };
    let lead = c.lead_status.as_ref().map(|status| Lead {
        id: lead_id_for(c.id),
        customer_id: c.id,
        workspace_id: c.workspace_id,
        productid: rules.product_for(c.tags.as_deref()).to_owned(),
        source: c
            .lead_source
            .clone()
            .unwrap_or_else(|| UNKNOWN_SOURCE.to_owned()),
        sourcesubdescr: None,
        disposition: status.clone(),
        stg_id: stage_for(c.appointment_status_id),
        priority: c.priority.unwrap_or(DEFAULT_PRIORITY),
        entrydate: c.created_at,
        lastchangedon: c.updated_at,
        created_at: c.created_at,
        updated_at: c.updated_at,
        created_by: c.created_by,
        migrated_from_contact_id: c.id,
    });
    let appointment = match (&lead, c.appointment_date) {
        (Some(lead), Some(date)) => {
            let status = c.appointment_status_id;
            let at_least = |n: i64| status.is_some_and(|s| s >= n);
            Some(Appointment {
                id: appointment_id_for(c.id),
                lead_id: lead.id,
                workspace_id: c.workspace_id,
                apptdate: date,
                disposition: appointment_disposition(c.appointment_result_id).to_owned(),
                apptset: at_least(4),
                verified: at_least(5),
                confirmed: at_least(6),
                setdate: date.minus_micros(DAY_MICROS),
                verifieddate: date.minus_micros(4 * HOUR_MICROS),
                confirmeddate: date.minus_micros(HOUR_MICROS),
                lastchangeddate: c.updated_at,
                created_at: c.created_at,
                updated_at: c.updated_at,
                created_by: c.created_by,
                migrated_from_contact_id: c.id,
            })
        }
        _ => None,
    };
    ContactProjection {
        customer,
        lead,
        appointment,
    }
}

/// Routes one custom-field value to its parent in `parent` (the projection of its contact,
/// `None` when the contact does not exist).
pub fn route_field_value(
    value: &FieldValue,
    context: &FieldContext,
    parent: Option<&ContactProjection>,
) -> Result<RoutedValue, Unroutable> {
    let parent = parent.ok_or(Unroutable::NoContact)?;
    let (table, parent_id) = match context {
        FieldContext::Contact => (ValueTable::CustomerCustomFields, parent.customer.cst_id),
        FieldContext::Lead => (
            ValueTable::LeadCustomFields,
            parent.lead.as_ref().ok_or(Unroutable::NoLead)?.id,
        ),
        FieldContext::Appointment => (
            ValueTable::AppointmentCustomFields,
            parent
                .appointment
                .as_ref()
                .ok_or(Unroutable::NoAppointment)?
                .id,
        ),
        FieldContext::Other(name) => return Err(Unroutable::UnknownContext(name.clone())),
    };
    Ok(RoutedValue {
        table,
        parent_id,
        field_id: value.field_id,
        value: value.value.clone(),
        created_at: value.created_at,
        updated_at: value.updated_at,
        created_by: value.created_by,
    })
}

/// A projected value longer than its target column allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    /// `customers.phone1`, …
    pub column: &'static str,
    /// The legacy column it comes from.
    pub source_column: &'static str,
    /// The column's `VARCHAR(n)` limit, in characters.
    pub limit: usize,
    /// The value's length in characters.
    pub length: usize,
}

/// Every length-limited projected column: (target column, legacy column, limit), as the
/// target DDL declares them. `assess` checks against these; the stream and the first load
/// check against [`ColumnLimits`], which starts from them and follows the live catalog.
pub const LENGTH_LIMITS: &[(&str, &str, usize)] = &[
    ("customers.firstname", "firstname", 255),
    ("customers.lastname", "lastname", 255),
    ("customers.email", "email", 255),
    ("customers.phone1", "phone_number", 20),
    ("customers.city", "city", 100),
    ("customers.state", "state", 50),
    ("customers.zip", "zip", 20),
    ("leads.productid", "tags", 100),
    ("leads.source", "lead_source", 255),
    ("leads.disposition", "lead_status", 100),
];

/// The widths of the length-limited target columns as the target has them: the DDL's by
/// default, the catalog's once read, so a column an operator widened takes longer values
/// (and a dead letter parked for it can be retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnLimits {
    /// `None`: the column takes any length (e.g. altered to `text`).
    limits: Vec<(&'static str, &'static str, Option<usize>)>,
}

impl Default for ColumnLimits {
    fn default() -> ColumnLimits {
        ColumnLimits {
            limits: LENGTH_LIMITS
                .iter()
                .map(|&(column, source, limit)| (column, source, Some(limit)))
                .collect(),
        }
    }
}

impl ColumnLimits {
    /// The limits with `column` (`table.column`) set to `limit`. Unknown columns are ignored.
    pub fn with(mut self, column: &str, limit: Option<usize>) -> ColumnLimits {
        if let Some(entry) = self.limits.iter_mut().find(|(c, _, _)| *c == column) {
            entry.2 = limit;
        }
        self
    }

    /// The limit of `column` (`table.column`), if it has one.
    pub fn limit(&self, column: &str) -> Option<usize> {
        self.limits
            .iter()
            .find(|(c, _, _)| *c == column)
            .and_then(|(_, _, limit)| *limit)
    }

    fn check(&self, values: &[(&'static str, Option<&str>)]) -> Vec<Misfit> {
        values
            .iter()
            .filter_map(|&(column, value)| {
                let &(_, source_column, limit) =
                    self.limits.iter().find(|(c, _, _)| *c == column)?;
                let limit = limit?;
                let length = value?.chars().count();
                (length > limit).then_some(Misfit {
                    column,
                    source_column,
                    limit,
                    length,
                })
            })
            .collect()
    }
}

/// Projected values no target column can hold whatever its width: a priority beyond
/// `leads.priority` (INTEGER), or a derived date outside PostgreSQL's timestamps (an
/// appointment in 4714 BC, whose set date would be a day earlier still). Each is described
/// as `column: reason`.
pub fn unholdable(p: &ContactProjection) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(lead) = &p.lead {
        found.extend(lead_unholdable(lead));
    }
    if let Some(a) = &p.appointment {
        for (column, value) in [
            ("appointments.setdate", a.setdate),
            ("appointments.verifieddate", a.verifieddate),
            ("appointments.confirmeddate", a.confirmeddate),
        ] {
            if !value.is_valid() {
                found.push(format!(
                    "{column} would be before PostgreSQL's first timestamp (from \
                     contacts.appointment_date {})",
                    a.apptdate
                ));
            }
        }
    }
    found
}

/// The lead's values no column can hold (see [`unholdable`]).
pub fn lead_unholdable(lead: &Lead) -> Vec<String> {
    if i32::try_from(lead.priority).is_err() {
        vec![format!(
            "leads.priority is INTEGER and cannot hold {} (from contacts.priority)",
            lead.priority
        )]
    } else {
        Vec::new()
    }
}

/// The projected values that will not fit their columns.
pub fn misfits(p: &ContactProjection, limits: &ColumnLimits) -> Vec<Misfit> {
    let mut found = customer_misfits(&p.customer, limits);
    if let Some(lead) = &p.lead {
        found.extend(lead_misfits(lead, limits));
    }
    found
}

/// The customer's values that will not fit their columns.
pub fn customer_misfits(c: &Customer, limits: &ColumnLimits) -> Vec<Misfit> {
    limits.check(&[
        ("customers.firstname", c.firstname.as_deref()),
        ("customers.lastname", c.lastname.as_deref()),
        ("customers.email", c.email.as_deref()),
        ("customers.phone1", c.phone1.as_deref()),
        ("customers.city", c.city.as_deref()),
        ("customers.state", c.state.as_deref()),
        ("customers.zip", c.zip.as_deref()),
    ])
}

/// The lead's values that will not fit their columns.
pub fn lead_misfits(lead: &Lead, limits: &ColumnLimits) -> Vec<Misfit> {
    limits.check(&[
        ("leads.productid", Some(&lead.productid)),
        ("leads.source", Some(&lead.source)),
        ("leads.disposition", Some(&lead.disposition)),
    ])
}

#[cfg(test)]
mod tests;
