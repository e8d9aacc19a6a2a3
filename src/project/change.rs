//! Legacy row changes in domain terms, as both the backfill and the replication stream
//! produce them.
//!
//! pgoutput leaves out a TOASTed column that an UPDATE did not change (it sends `u`, "unchanged",
//! instead of the value). A [`ContactImage`] records which columns came that way; the planner
//! fills them in from the state leadsync keeps, so a derived column such as `productid` comes
//! out right even when `tags` did not travel with the change.

use chrono::NaiveDateTime;
use uuid::Uuid;

use super::{Contact, FieldValue};
use crate::Lsn;

/// The `contacts` text columns PostgreSQL may store out of line, and so may report as
/// unchanged. Fixed-width columns (ids, integers, timestamps) are never TOASTed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToastableColumn {
    Firstname,
    Lastname,
    Email,
    PhoneNumber,
    StAddress,
    City,
    State,
    Zip,
    LeadStatus,
    LeadSource,
    Tags,
}

impl ToastableColumn {
    /// Every toastable column.
    pub const ALL: [ToastableColumn; 11] = [
        ToastableColumn::Firstname,
        ToastableColumn::Lastname,
        ToastableColumn::Email,
        ToastableColumn::PhoneNumber,
        ToastableColumn::StAddress,
        ToastableColumn::City,
        ToastableColumn::State,
        ToastableColumn::Zip,
        ToastableColumn::LeadStatus,
        ToastableColumn::LeadSource,
        ToastableColumn::Tags,
    ];

    /// The legacy column name.
    pub fn name(self) -> &'static str {
        match self {
            ToastableColumn::Firstname => "firstname",
            ToastableColumn::Lastname => "lastname",
            ToastableColumn::Email => "email",
            ToastableColumn::PhoneNumber => "phone_number",
            ToastableColumn::StAddress => "st_address",
            ToastableColumn::City => "city",
            ToastableColumn::State => "state",
            ToastableColumn::Zip => "zip",
            ToastableColumn::LeadStatus => "lead_status",
            ToastableColumn::LeadSource => "lead_source",
            ToastableColumn::Tags => "tags",
        }
    }

    /// The column by its legacy name.
    pub fn from_name(name: &str) -> Option<ToastableColumn> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    /// The column's value in a contact.
    pub fn value_mut(self, c: &mut Contact) -> &mut Option<String> {
        match self {
            ToastableColumn::Firstname => &mut c.firstname,
            ToastableColumn::Lastname => &mut c.lastname,
            ToastableColumn::Email => &mut c.email,
            ToastableColumn::PhoneNumber => &mut c.phone_number,
            ToastableColumn::StAddress => &mut c.st_address,
            ToastableColumn::City => &mut c.city,
            ToastableColumn::State => &mut c.state,
            ToastableColumn::Zip => &mut c.zip,
            ToastableColumn::LeadStatus => &mut c.lead_status,
            ToastableColumn::LeadSource => &mut c.lead_source,
            ToastableColumn::Tags => &mut c.tags,
        }
    }
}

/// A set of [`ToastableColumn`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unchanged(u16);

impl Unchanged {
    /// No column unchanged: a complete row.
    pub const NONE: Unchanged = Unchanged(0);

    /// Adds a column.
    pub fn insert(&mut self, column: ToastableColumn) {
        self.0 |= column.bit();
    }

    /// Whether `column` is in the set.
    pub fn contains(self, column: ToastableColumn) -> bool {
        self.0 & column.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The columns in the set.
    pub fn iter(self) -> impl Iterator<Item = ToastableColumn> {
        ToastableColumn::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

/// A contact row as a change carried it: columns in `unchanged` hold no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactImage {
    pub contact: Contact,
    pub unchanged: Unchanged,
    /// The id the row had before this change, when the change gave it a new one: the
    /// unchanged columns are the old row's.
    pub previous_id: Option<Uuid>,
}

impl ContactImage {
    /// A complete row.
    pub fn complete(contact: Contact) -> ContactImage {
        ContactImage {
            contact,
            unchanged: Unchanged::NONE,
            previous_id: None,
        }
    }

    /// The full row: unchanged columns taken from `prior` (the row before this change).
    /// Without a prior row those columns stay NULL and are returned beside the row (empty
    /// when the row is complete).
    pub fn resolve(self, prior: Option<&Contact>) -> (Contact, Unchanged) {
        if self.unchanged.is_empty() {
            return (self.contact, Unchanged::NONE);
        }
        let Some(prior) = prior else {
            return (self.contact, self.unchanged);
        };
        let mut contact = self.contact;
        let mut prior = prior.clone();
        for column in self.unchanged.iter() {
            *column.value_mut(&mut contact) = column.value_mut(&mut prior).take();
        }
        (contact, Unchanged::NONE)
    }
}

/// One change of a legacy contact or custom-field value.
// Most changes are contact upserts, so boxing the large variant would cost an allocation
// per change for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A contact inserted or updated (its new row).
    UpsertContact(ContactImage),
    /// A contact deleted.
    DeleteContact(Uuid),
    /// A `contact_custom_fields` row inserted or updated.
    UpsertValue(FieldValue),
    /// A `contact_custom_fields` row updated without changing its TOASTed `value`, which
    /// pgoutput did not resend: the `value` here is a placeholder for the one leadsync holds.
    /// When the update moved the row to another key, the value is the one held under the
    /// previous key `(contact_id, field_id)`.
    UpsertValueKeepingValue(FieldValue, Option<(Uuid, Uuid)>),
    /// A `contact_custom_fields` row deleted.
    DeleteValue { contact_id: Uuid, field_id: Uuid },
    /// A contact's whole state as read again from the source (resync, dead-letter replay):
    /// the row (`None`: it does not exist) and all its values. Its target rows are rewritten
    /// whatever leadsync believed they held.
    Reset {
        id: Uuid,
        contact: Option<Contact>,
        values: Vec<FieldValue>,
    },
    /// Rewrite the contact's target rows in full from the state leadsync holds (a resync
    /// whose read lost to a newer change in the stream).
    Refresh(Uuid),
}

impl Change {
    /// The contact the change concerns.
    pub fn contact_id(&self) -> Uuid {
        match self {
            Change::UpsertContact(image) => image.contact.id,
            Change::DeleteContact(id) => *id,
            Change::UpsertValue(v) | Change::UpsertValueKeepingValue(v, _) => v.contact_id,
            Change::DeleteValue { contact_id, .. } => *contact_id,
            Change::Reset { id, .. } | Change::Refresh(id) => *id,
        }
    }
}

impl Change {
    /// The other contact whose state this change reads: the previous id of a row whose key
    /// the change moved.
    pub fn reads_contact(&self) -> Option<Uuid> {
        match self {
            Change::UpsertContact(image) => image.previous_id,
            Change::UpsertValueKeepingValue(_, previous) => previous.map(|(contact, _)| contact),
            _ => None,
        }
    }
}

/// A change with where and when its source transaction committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub change: Change,
    /// Commit time of the source transaction, UTC: becomes `deleted_at` of rows it removes.
    pub commit_time: NaiveDateTime,
    /// Position of the change (or of its transaction's commit) in the source WAL.
    pub lsn: Lsn,
}
