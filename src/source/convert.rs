//! From decoded pgoutput messages to domain changes. Pure.
//!
//! Each Relation message of a published table becomes a [`Layout`]: where each column the
//! projection reads sits in the row. Columns the projection does not read are ignored, so a
//! legacy column added or dropped mid-stream changes nothing; a projected column that
//! disappears is an error the daemon stops on ([`ConvertError::MissingColumn`]).

use std::collections::HashMap;

use uuid::Uuid;

use crate::Timestamp;
use crate::decode::{Datum, LogicalMessage, OldTuple, Relation, Tuple};
use crate::project::change::{Change, ContactImage, ToastableColumn, Unchanged};
use crate::project::{CONTACT_COLUMNS, Contact, FieldValue, VALUE_COLUMNS};

/// The tables leadsync reads from the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceTable {
    Contacts,
    ContactCustomFields,
    CustomFields,
    /// The target's `customers`, published for reverse sync.
    Customers,
}

impl SourceTable {
    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            SourceTable::Contacts => "contacts",
            SourceTable::ContactCustomFields => "contact_custom_fields",
            SourceTable::CustomFields => "custom_fields",
            SourceTable::Customers => "customers",
        }
    }
}

/// What one row change of a published table means.
#[allow(clippy::large_enum_variant)] // see `Change`
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A contact or custom-field value changed.
    Change(Change),
    /// A custom field was inserted or updated. `context` is the raw `context_type` (`None`
    /// for NULL, or when the column does not exist yet).
    FieldUpsert { id: Uuid, context: Option<String> },
    /// A custom field was deleted.
    FieldDelete { id: Uuid },
    /// Tables were truncated.
    Truncate(Vec<SourceTable>),
    /// An update of a `customers` row (for reverse sync). Inserts and deletes of
    /// customers give nothing.
    CustomerUpdate(CustomerEdit),
    /// A row of contact `contact_id` was written while the table lacked projected
    /// `columns` (see [`Converter::observe_relation_degraded`]): the contact is read again
    /// from the source.
    Reread {
        contact_id: Uuid,
        columns: Vec<&'static str>,
    },
}

/// The `customers` columns reverse sync carries back, with the `contacts` column each one
/// goes to.
pub const REVERSE_COLUMNS: [(&str, &str); 8] = [
    ("firstname", "firstname"),
    ("lastname", "lastname"),
    ("email", "email"),
    ("phone1", "phone_number"),
    ("address1", "st_address"),
    ("city", "city"),
    ("state", "state"),
    ("zip", "zip"),
];

/// A customer row as an update left it, as far as reverse sync reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerEdit {
    pub cst_id: Uuid,
    /// The contact it was migrated from; `None` for the new application's own customers.
    pub migrated_from: Option<Uuid>,
    pub deleted: bool,
    /// The values of [`REVERSE_COLUMNS`], in order: `None` for a large value the update
    /// did not touch (unchanged TOAST: not sent, so not carried back).
    pub values: [Option<Option<String>>; 8],
    /// The same columns before the update, when the stream carries the old row
    /// (`REPLICA IDENTITY FULL` on `customers`, which `leadsync setup` sets).
    pub before: Option<[Option<String>; 8]>,
}

impl CustomerEdit {
    /// The carried columns the update changed, as (contact column, new value). Without the
    /// old row every carried column counts, and the apply stage keeps those that differ
    /// from what leadsync holds for the contact.
    pub fn changed(&self) -> Vec<(&'static str, Option<String>)> {
        REVERSE_COLUMNS
            .iter()
            .enumerate()
            .filter_map(|(i, (_, to))| {
                let new = self.values[i].as_ref()?;
                match &self.before {
                    Some(before) if before[i] == *new => None,
                    _ => Some((*to, new.clone())),
                }
            })
            .collect()
    }
}

/// A change could not be turned into domain terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error(
        "column {table}.{column} is gone from the stream, but the projection reads it. Nothing \
         after this change has been applied. Restore the column with its values (ALTER TABLE \
         {table} ADD COLUMN {column} {sql_type}, then put the values back) and run `leadsync \
         ctl retry` (or restart leadsync): the rows changed while it was missing are re-read \
         from the source. Or stop the migration"
    )]
    MissingColumn {
        table: String,
        column: &'static str,
        /// The type to give it back.
        sql_type: &'static str,
    },
    #[error(
        "column {table}.{column} changed to a type leadsync cannot read as {expected} (type \
         oid {oid}). Nothing after this change has been applied. Change it back to a \
         compatible type (ALTER TABLE {table} ALTER COLUMN {column} TYPE …) and run `leadsync \
         ctl retry` (or restart leadsync): the rows changed meanwhile are re-read from the \
         source. Or stop the migration"
    )]
    IncompatibleType {
        table: String,
        column: &'static str,
        expected: &'static str,
        oid: u32,
    },
    #[error("{table}.{column}: {reason}")]
    BadValue {
        /// The contact the row belongs to, when its key could be read.
        contact_id: Option<Uuid>,
        table: &'static str,
        column: &'static str,
        reason: String,
    },
    #[error("change for relation {0} before its Relation message")]
    UnknownRelation(u32),
}

impl ConvertError {
    /// Whether the error concerns one row (a dead letter) rather than the stream.
    pub fn is_bad_row(&self) -> bool {
        matches!(self, ConvertError::BadValue { .. })
    }

    /// The contact a bad row belongs to, when its key could be read.
    pub fn contact_id(&self) -> Option<Uuid> {
        match self {
            ConvertError::BadValue { contact_id, .. } => *contact_id,
            _ => None,
        }
    }

    fn of_contact(self, id: Option<Uuid>) -> ConvertError {
        match self {
            ConvertError::BadValue {
                contact_id: None,
                table,
                column,
                reason,
            } => ConvertError::BadValue {
                contact_id: id,
                table,
                column,
                reason,
            },
            other => other,
        }
    }
}

/// Column positions of one published table.
#[derive(Debug, Clone)]
struct Layout {
    table: SourceTable,
    /// Column name → position, for the columns leadsync reads.
    positions: HashMap<&'static str, usize>,
    /// Projected columns this version of the table lacks (or has with a type leadsync
    /// cannot read), accepted only because the live table has them back: rows written
    /// meanwhile are re-read from the source rather than read from the stream.
    degraded: Vec<&'static str>,
}

/// Column names of a table the projection reads.
const fn names<const N: usize>(columns: &[(&'static str, &'static str); N]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut i = 0;
    while i < N {
        out[i] = columns[i].0;
        i += 1;
    }
    out
}

const CONTACT_NAMES: [&str; CONTACT_COLUMNS.len()] = names(&CONTACT_COLUMNS);
const VALUE_NAMES: [&str; VALUE_COLUMNS.len()] = names(&VALUE_COLUMNS);

/// The columns leadsync reads from a table: required, and read when present.
fn columns_read(table: SourceTable) -> (&'static [&'static str], &'static [&'static str]) {
    match table {
        SourceTable::Contacts => (&CONTACT_NAMES, &[]),
        SourceTable::ContactCustomFields => (&VALUE_NAMES, &[]),
        SourceTable::CustomFields => (&["id"], &["context_type"]),
        SourceTable::Customers => (
            &[
                "cst_id",
                "migrated_from_contact_id",
                "deleted_at",
                "firstname",
                "lastname",
                "email",
                "phone1",
                "address1",
                "city",
                "state",
                "zip",
            ],
            &[],
        ),
    }
}

/// Relation layouts and the conversion of row changes.
#[derive(Debug, Clone)]
pub struct Converter {
    source_schema: String,
    target_schema: String,
    layouts: HashMap<u32, Layout>,
}

impl Converter {
    /// A converter for legacy tables in `source_schema` and `customers` in `target_schema`.
    pub fn new(source_schema: &str, target_schema: &str) -> Converter {
        Converter {
            source_schema: source_schema.to_owned(),
            target_schema: target_schema.to_owned(),
            layouts: HashMap::new(),
        }
    }

    /// Learns (or re-learns) a table's layout. Fails when a projected column is missing or
    /// of a type leadsync cannot read.
    pub fn observe_relation(&mut self, relation: &Relation) -> Result<(), ConvertError> {
        self.learn(relation, false).map(drop)
    }

    /// As [`Converter::observe_relation`], for a table version older than the live table,
    /// which has its missing (or retyped) projected columns back: the layout is accepted,
    /// and the rows of `contacts` and `contact_custom_fields` changed under it are read
    /// again from the source ([`SourceEvent::Reread`]). Returns the columns concerned. The
    /// keys must still be there, and the other tables accept no such version.
    pub fn observe_relation_degraded(
        &mut self,
        relation: &Relation,
    ) -> Result<Vec<&'static str>, ConvertError> {
        self.learn(relation, true)
    }

    fn learn(
        &mut self,
        relation: &Relation,
        lenient: bool,
    ) -> Result<Vec<&'static str>, ConvertError> {
        let table = match (relation.namespace.as_str(), relation.name.as_str()) {
            (ns, "contacts") if ns == self.source_schema => SourceTable::Contacts,
            (ns, "contact_custom_fields") if ns == self.source_schema => {
                SourceTable::ContactCustomFields
            }
            (ns, "custom_fields") if ns == self.source_schema => SourceTable::CustomFields,
            (ns, "customers") if ns == self.target_schema => SourceTable::Customers,
            _ => {
                self.layouts.remove(&relation.id);
                return Ok(Vec::new());
            }
        };
        let (required, optional) = columns_read(table);
        let keys: &[&str] = match table {
            SourceTable::Contacts => &["id"],
            SourceTable::ContactCustomFields => &["contact_id", "field_id"],
            _ => &[],
        };
        let lenient = lenient && !keys.is_empty();
        let qualified = || format!("{}.{}", relation.namespace, relation.name);
        let mut positions = HashMap::new();
        let mut degraded = Vec::new();
        for &column in required.iter().chain(optional) {
            let Some(index) = relation.column_index(column) else {
                if optional.contains(&column) {
                    continue;
                }
                if lenient && !keys.contains(&column) {
                    degraded.push(column);
                    continue;
                }
                return Err(ConvertError::MissingColumn {
                    table: qualified(),
                    column,
                    sql_type: sql_type_of(read_as(table, column)),
                });
            };
            let oid = relation.columns[index].type_oid;
            let expected = read_as(table, column);
            if !compatible(expected, oid) {
                if lenient && !keys.contains(&column) {
                    degraded.push(column);
                    continue;
                }
                return Err(ConvertError::IncompatibleType {
                    table: qualified(),
                    column,
                    expected,
                    oid,
                });
            }
            positions.insert(column, index);
        }
        self.layouts.insert(
            relation.id,
            Layout {
                table,
                positions,
                degraded: degraded.clone(),
            },
        );
        Ok(degraded)
    }

    /// The table a relation id stands for, if leadsync reads it.
    pub fn table_of(&self, relation_id: u32) -> Option<SourceTable> {
        self.layouts.get(&relation_id).map(|l| l.table)
    }

    /// Converts one Insert, Update, Delete or Truncate. Other messages and unread tables
    /// give nothing.
    pub fn convert(&self, message: &LogicalMessage) -> Result<Vec<SourceEvent>, ConvertError> {
        match message {
            LogicalMessage::Insert(insert) => {
                let Some(layout) = self.layouts.get(&insert.relation_id) else {
                    return Ok(Vec::new());
                };
                if layout.table == SourceTable::Customers {
                    // Reverse sync carries back updates only.
                    return Ok(Vec::new());
                }
                Ok(vec![upsert_event(layout, &insert.new)?])
            }
            LogicalMessage::Update(update) => {
                let Some(layout) = self.layouts.get(&update.relation_id) else {
                    return Ok(Vec::new());
                };
                if layout.table == SourceTable::Customers {
                    let before = match &update.old {
                        Some(OldTuple::Full(old)) => Some(carried_values(layout, old)?),
                        _ => None,
                    };
                    return Ok(vec![customer_edit(layout, &update.new, before)?]);
                }
                let mut new = upsert_event(layout, &update.new)?;
                let old_key = match &update.old {
                    Some(OldTuple::Key(t) | OldTuple::Full(t)) => delete_event(layout, t)?,
                    None => None,
                };
                Ok(match old_key {
                    Some(old) if key_of(&old) != key_of(&new) => {
                        // The row moved to a new key. What the update did not resend is the
                        // old row's, so the new row is read first, then the old one leaves.
                        moved_from(&mut new, &old);
                        vec![new, old]
                    }
                    _ => vec![new],
                })
            }
            LogicalMessage::Delete(delete) => {
                let Some(layout) = self.layouts.get(&delete.relation_id) else {
                    return Ok(Vec::new());
                };
                let old = match &delete.old {
                    OldTuple::Key(t) | OldTuple::Full(t) => t,
                };
                Ok(delete_event(layout, old)?.into_iter().collect())
            }
            LogicalMessage::Truncate(truncate) => {
                let tables: Vec<SourceTable> = truncate
                    .relation_ids
                    .iter()
                    .filter_map(|id| self.table_of(*id))
                    .collect();
                Ok(if tables.is_empty() {
                    Vec::new()
                } else {
                    vec![SourceEvent::Truncate(tables)]
                })
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// Records in the new row of a key change which row it was before.
fn moved_from(new: &mut SourceEvent, old: &SourceEvent) {
    match (new, old) {
        (
            SourceEvent::Change(Change::UpsertContact(image)),
            SourceEvent::Change(Change::DeleteContact(previous)),
        ) => image.previous_id = Some(*previous),
        (
            SourceEvent::Change(Change::UpsertValueKeepingValue(_, previous)),
            SourceEvent::Change(Change::DeleteValue {
                contact_id,
                field_id,
            }),
        ) => *previous = Some((*contact_id, *field_id)),
        _ => {}
    }
}

/// The key of an event, to tell a key change from an ordinary update.
fn key_of(event: &SourceEvent) -> Option<(Uuid, Option<Uuid>)> {
    match event {
        SourceEvent::Change(change) => match change {
            Change::UpsertContact(image) => Some((image.contact.id, None)),
            Change::DeleteContact(id) => Some((*id, None)),
            Change::UpsertValue(v) | Change::UpsertValueKeepingValue(v, _) => {
                Some((v.contact_id, Some(v.field_id)))
            }
            Change::DeleteValue {
                contact_id,
                field_id,
            } => Some((*contact_id, Some(*field_id))),
            Change::Reset { id, .. } | Change::Refresh(id) => Some((*id, None)),
        },
        SourceEvent::FieldUpsert { id, .. } | SourceEvent::FieldDelete { id } => Some((*id, None)),
        SourceEvent::Reread { contact_id, .. } => Some((*contact_id, None)),
        SourceEvent::Truncate(_) | SourceEvent::CustomerUpdate(_) => None,
    }
}

struct Row<'a> {
    layout: &'a Layout,
    tuple: &'a Tuple,
}

impl<'a> Row<'a> {
    fn datum(&self, column: &'static str) -> Result<&'a Datum, ConvertError> {
        let index = self.layout.positions[column];
        self.tuple.0.get(index).ok_or(ConvertError::BadValue {
            contact_id: None,
            table: self.layout.table.name(),
            column,
            reason: format!("the row has {} columns, none at {index}", self.tuple.len()),
        })
    }

    fn bad(&self, column: &'static str, reason: impl Into<String>) -> ConvertError {
        ConvertError::BadValue {
            contact_id: None,
            table: self.layout.table.name(),
            column,
            reason: reason.into(),
        }
    }

    /// Text or NULL; an unchanged TOAST value is an error here.
    fn text(&self, column: &'static str) -> Result<Option<&'a str>, ConvertError> {
        self.datum(column)?
            .as_str()
            .map_err(|e| self.bad(column, e.to_string()))
    }

    fn required<T>(
        &self,
        column: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConvertError> {
        let text = self
            .text(column)?
            .ok_or_else(|| self.bad(column, "is NULL"))?;
        parse(text).map_err(|reason| self.bad(column, reason))
    }

    fn optional<T>(
        &self,
        column: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConvertError> {
        self.text(column)?
            .map(|text| parse(text).map_err(|reason| self.bad(column, reason)))
            .transpose()
    }
}

fn parse_uuid(text: &str) -> Result<Uuid, String> {
    Uuid::parse_str(text).map_err(|e| format!("`{text}` is not a UUID: {e}"))
}

fn parse_i64(text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not an integer of at most 64 bits"))
}

/// A `timestamp` or `timestamptz` in ISO output (`2024-01-02 03:04:05.123456`, `…+00`,
/// `infinity`, `… BC`).
pub fn parse_timestamp(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse(text)
}

/// The SQL type leadsync reads a column as (see [`CONTACT_COLUMNS`]).
fn read_as(table: SourceTable, column: &str) -> &'static str {
    let listed = |columns: &[(&'static str, &'static str)]| {
        columns
            .iter()
            .find(|(name, _)| *name == column)
            .map(|(_, ty)| *ty)
    };
    match table {
        SourceTable::Contacts => listed(&CONTACT_COLUMNS),
        SourceTable::ContactCustomFields => listed(&VALUE_COLUMNS).map(|ty| match ty {
            "text" => "jsonb",
            other => other,
        }),
        SourceTable::CustomFields => Some(if column == "id" { "uuid" } else { "text" }),
        SourceTable::Customers => Some(match column {
            "cst_id" | "migrated_from_contact_id" => "uuid",
            "deleted_at" => "timestamp",
            _ => "text",
        }),
    }
    .unwrap_or("text")
}

/// The SQL type to give back a column read as `read_as`.
fn sql_type_of(read_as: &str) -> &'static str {
    match read_as {
        "uuid" => "uuid",
        "int8" => "integer",
        "timestamp" => "timestamp",
        "jsonb" => "jsonb",
        _ => "text",
    }
}

/// Built-in type OIDs leadsync reads.
mod oid {
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    /// The first OID of objects made after `initdb` (extension types such as `citext`).
    pub const FIRST_USER: u32 = 16_384;
}

/// Whether a column of type `oid` can be read as `expected` without losing anything: the
/// compatible changes of SPEC §5 (`timestamp` ↔ `timestamptz`, `varchar(n)` ↔ `text`,
/// integer widths), and for text any type made after `initdb` (`citext`, a domain), which
/// prints as text.
fn compatible(expected: &str, type_oid: u32) -> bool {
    match expected {
        "uuid" => type_oid == oid::UUID,
        "int8" => matches!(type_oid, oid::INT2 | oid::INT4 | oid::INT8),
        "timestamp" => matches!(type_oid, oid::TIMESTAMP | oid::TIMESTAMPTZ),
        "jsonb" => matches!(type_oid, oid::JSONB | oid::JSON),
        _ => {
            matches!(type_oid, oid::TEXT | oid::VARCHAR | oid::BPCHAR)
                || type_oid >= oid::FIRST_USER
        }
    }
}

fn upsert_event(layout: &Layout, tuple: &Tuple) -> Result<SourceEvent, ConvertError> {
    let row = Row { layout, tuple };
    if !layout.degraded.is_empty() {
        let key = match layout.table {
            SourceTable::Contacts => "id",
            _ => "contact_id",
        };
        return Ok(SourceEvent::Reread {
            contact_id: row.required(key, parse_uuid)?,
            columns: layout.degraded.clone(),
        });
    }
    match layout.table {
        SourceTable::Contacts => {
            let mut unchanged = Unchanged::NONE;
            let mut text = |column: &'static str| -> Result<Option<String>, ConvertError> {
                if matches!(row.datum(column)?, Datum::UnchangedToast)
                    && let Some(toastable) = ToastableColumn::from_name(column)
                {
                    unchanged.insert(toastable);
                    return Ok(None);
                }
                Ok(row.text(column)?.map(str::to_owned))
            };
            let id = row.required("id", parse_uuid)?;
            let contact = (|| {
                Ok(Contact {
                    id,
                    workspace_id: row.required("workspace_id", parse_uuid)?,
                    firstname: text("firstname")?,
                    lastname: text("lastname")?,
                    email: text("email")?,
                    phone_number: text("phone_number")?,
                    st_address: text("st_address")?,
                    city: text("city")?,
                    state: text("state")?,
                    zip: text("zip")?,
                    lead_status: text("lead_status")?,
                    lead_source: text("lead_source")?,
                    tags: text("tags")?,
                    appointment_status_id: row.optional("appointment_status_id", parse_i64)?,
                    appointment_result_id: row.optional("appointment_result_id", parse_i64)?,
                    appointment_date: row.optional("appointment_date", parse_timestamp)?,
                    priority: row.optional("priority", parse_i64)?,
                    created_at: row.required("created_at", parse_timestamp)?,
                    updated_at: row.required("updated_at", parse_timestamp)?,
                    created_by: row.optional("created_by", parse_uuid)?,
                })
            })()
            .map_err(|e: ConvertError| e.of_contact(Some(id)))?;
            Ok(SourceEvent::Change(Change::UpsertContact(ContactImage {
                contact,
                unchanged,
                previous_id: None,
            })))
        }
        SourceTable::ContactCustomFields => {
            // A large jsonb value that the update did not touch arrives unchanged: the
            // planner keeps the value it holds.
            let contact_id = row.required("contact_id", parse_uuid)?;
            let read = || -> Result<_, ConvertError> {
                let unchanged = matches!(row.datum("value")?, Datum::UnchangedToast);
                let value = FieldValue {
                    contact_id,
                    field_id: row.required("field_id", parse_uuid)?,
                    value: if unchanged {
                        None
                    } else {
                        row.text("value")?.map(str::to_owned)
                    },
                    created_at: row.required("created_at", parse_timestamp)?,
                    updated_at: row.required("updated_at", parse_timestamp)?,
                    created_by: row.optional("created_by", parse_uuid)?,
                };
                Ok(SourceEvent::Change(if unchanged {
                    Change::UpsertValueKeepingValue(value, None)
                } else {
                    Change::UpsertValue(value)
                }))
            };
            read().map_err(|e| e.of_contact(Some(contact_id)))
        }
        SourceTable::CustomFields => Ok(SourceEvent::FieldUpsert {
            id: row.required("id", parse_uuid)?,
            context: if layout.positions.contains_key("context_type") {
                row.text("context_type")?.map(str::to_owned)
            } else {
                None
            },
        }),
        SourceTable::Customers => customer_edit(layout, tuple, None),
    }
}

/// The reverse-sync columns of a complete `customers` row (an old row sends every value).
fn carried_values(layout: &Layout, tuple: &Tuple) -> Result<[Option<String>; 8], ConvertError> {
    let row = Row { layout, tuple };
    let mut values: [Option<String>; 8] = Default::default();
    for (slot, (column, _)) in values.iter_mut().zip(REVERSE_COLUMNS) {
        *slot = row.text(column)?.map(str::to_owned);
    }
    Ok(values)
}

fn customer_edit(
    layout: &Layout,
    tuple: &Tuple,
    before: Option<[Option<String>; 8]>,
) -> Result<SourceEvent, ConvertError> {
    let row = Row { layout, tuple };
    let mut values: [Option<Option<String>>; 8] = Default::default();
    for (slot, (column, _)) in values.iter_mut().zip(REVERSE_COLUMNS) {
        *slot = match row.datum(column)? {
            Datum::UnchangedToast => None,
            _ => Some(row.text(column)?.map(str::to_owned)),
        };
    }
    Ok(SourceEvent::CustomerUpdate(CustomerEdit {
        cst_id: row.required("cst_id", parse_uuid)?,
        migrated_from: row.optional("migrated_from_contact_id", parse_uuid)?,
        deleted: row.text("deleted_at")?.is_some(),
        values,
        before,
    }))
}

fn delete_event(layout: &Layout, tuple: &Tuple) -> Result<Option<SourceEvent>, ConvertError> {
    let row = Row { layout, tuple };
    let event = match layout.table {
        SourceTable::Contacts => {
            SourceEvent::Change(Change::DeleteContact(row.required("id", parse_uuid)?))
        }
        SourceTable::ContactCustomFields => SourceEvent::Change(Change::DeleteValue {
            contact_id: row.required("contact_id", parse_uuid)?,
            field_id: row.required("field_id", parse_uuid)?,
        }),
        SourceTable::CustomFields => SourceEvent::FieldDelete {
            id: row.required("id", parse_uuid)?,
        },
        // Reverse sync carries back updates only.
        SourceTable::Customers => return Ok(None),
    };
    Ok(Some(event))
}

#[cfg(test)]
mod tests;
