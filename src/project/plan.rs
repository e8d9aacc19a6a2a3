//! Planning a chunk of changes: from the state before the chunk and the changes in it, in
//! source order, to the writes that bring the target to the projection of the state after
//! it. Pure: the apply stage loads [`Prior`] and executes the [`Plan`].
//!
//! The changes are replayed one by one in memory, so grouping many source transactions into
//! one chunk is invisible: a row that leaves the projection keeps the values it had when it
//! was last live and gets `deleted_at` = the commit time of the change that removed it, just
//! as if every transaction had been applied on its own. Rows whose projection did not change
//! are not written at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::NaiveDateTime;
use serde_json::json;
use uuid::Uuid;

use super::change::{Change, Stamped, Unchanged};
use super::{
    Appointment, ColumnLimits, Contact, ContactProjection, Customer, FieldContext, FieldValue,
    Lead, ProductRules, RoutedValue, ValueTable, appointment_id_for, customer_misfits, lead_id_for,
    lead_misfits, lead_unholdable, misfits, project_contact, route_field_value, unholdable,
};
use crate::Lsn;
use crate::config::DeleteMode;

/// The state leadsync keeps, for the contacts a chunk touches.
#[derive(Debug, Clone, Default)]
pub struct Prior {
    /// Mirror rows of the touched contacts that exist; absent means no such contact.
    pub contacts: HashMap<Uuid, Contact>,
    /// Mirror values of the touched contacts, by contact and field.
    pub values: HashMap<Uuid, BTreeMap<Uuid, FieldValue>>,
    /// Context of every field those values (and the chunk's value changes) refer to; a field
    /// not listed counts as `contact`, like a NULL `context_type`.
    pub contexts: HashMap<Uuid, FieldContext>,
    /// Contacts with pending dead letters: written in full, whatever changed.
    pub dirty: HashSet<Uuid>,
    /// Contacts whose state lacks a change leadsync could not read (a dead letter with
    /// [`DeadLetter::state_incomplete`]): their target rows wait, untouched, for a re-read of
    /// the source (`Change::Reset`).
    pub incomplete: HashSet<Uuid>,
}

/// What to do with one customer, lead or appointment row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowWrite<T> {
    /// Insert or update to this image, live (`deleted_at = NULL`).
    Upsert(T),
    /// The row left the projection (soft delete mode): write its last live image (when it
    /// fits the columns) with `deleted_at`, or only set `deleted_at` when `row` is `None`.
    SoftDelete {
        id: Uuid,
        row: Option<T>,
        deleted_at: NaiveDateTime,
    },
    /// The row left the projection (hard delete mode).
    HardDelete(Uuid),
}

/// What to do with one custom-field value in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueWrite {
    Upsert(RoutedValue),
    Delete {
        table: ValueTable,
        parent_id: Uuid,
        field_id: Uuid,
    },
}

/// The target writes of one contact. Applied together, or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactWrites {
    pub contact_id: Uuid,
    pub customer: Option<RowWrite<Customer>>,
    pub lead: Option<RowWrite<Lead>>,
    pub appointment: Option<RowWrite<Appointment>>,
    pub values: Vec<ValueWrite>,
    /// The contact had pending dead letters; once these writes commit they are resolved.
    pub resolves_dead_letters: bool,
    /// Position of the contact's last change in the chunk, for error reports.
    pub lsn: Lsn,
    /// The contact's row after the chunk (`None`: deleted), for error reports.
    pub source: Option<Contact>,
}

impl ContactWrites {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.customer.is_none()
            && self.lead.is_none()
            && self.appointment.is_none()
            && self.values.is_empty()
            && !self.resolves_dead_letters
    }
}

/// A change the target cannot take, with everything needed to replay it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The contact the change concerns, when it could be read.
    pub contact_id: Option<Uuid>,
    pub lsn: Lsn,
    pub source_table: &'static str,
    pub operation: &'static str,
    pub key: serde_json::Value,
    pub payload: serde_json::Value,
    pub error: String,
    /// leadsync's state lacks this change (it could not be read, or a value it needs was
    /// not sent): only a re-read of the contact from the source resolves it, never a later
    /// change projected over the incomplete state.
    pub state_incomplete: bool,
}

/// Everything a chunk changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Mirror rows to insert or update.
    pub mirror_contacts: Vec<Contact>,
    /// Mirror rows to delete.
    pub mirror_contacts_deleted: Vec<Uuid>,
    /// Mirror values to insert or update.
    pub mirror_values: Vec<FieldValue>,
    /// Mirror values to delete, as (contact, field).
    pub mirror_values_deleted: Vec<(Uuid, Uuid)>,
    /// Target writes per contact, in contact-id order.
    pub writes: Vec<ContactWrites>,
    /// Contacts whose new state the target cannot take.
    pub dead_letters: Vec<DeadLetter>,
}

/// One projected row kind over a chunk: its last live image and since when it is gone.
#[derive(Debug, Clone)]
struct Life<T> {
    /// Live before the chunk or at some point in it.
    ever_live: bool,
    last_live: Option<T>,
    absent_since: Option<NaiveDateTime>,
}

impl<T: Clone> Life<T> {
    fn starting(prior: Option<&T>) -> Life<T> {
        Life {
            ever_live: prior.is_some(),
            last_live: prior.cloned(),
            absent_since: None,
        }
    }

    fn observe(&mut self, now: Option<&T>, at: NaiveDateTime) {
        match now {
            Some(row) => {
                self.ever_live = true;
                self.last_live = Some(row.clone());
                self.absent_since = None;
            }
            None => {
                self.absent_since.get_or_insert(at);
            }
        }
    }
}

/// A touched contact while its changes are replayed.
struct Track {
    state: Option<Contact>,
    values: BTreeMap<Uuid, FieldValue>,
    customer: Life<Customer>,
    lead: Life<Lead>,
    appointment: Life<Appointment>,
    lsn: Lsn,
    /// Commit time of the contact's last change in the chunk.
    time: NaiveDateTime,
    /// Columns that arrived unchanged, in this chunk, with no prior value to fill them in.
    unknown: Unchanged,
    /// Fields whose value arrived unchanged, in this chunk, with no prior value to keep.
    unknown_values: Vec<Uuid>,
    /// The state lacks something (from before the chunk, or from `unknown` above): the
    /// target rows are left alone until a re-read.
    incomplete: bool,
    /// The state was read again from the source: write every row in full.
    forced: bool,
}

/// The state of contact `id` as the chunk has it so far: its track's, else leadsync's.
fn state_of<'a>(
    tracks: &'a BTreeMap<Uuid, Track>,
    prior: &'a Prior,
    id: Uuid,
) -> Option<&'a Contact> {
    match tracks.get(&id) {
        Some(track) => track.state.as_ref(),
        None => prior.contacts.get(&id),
    }
}

/// The value of `(contact, field)` as the chunk has it so far.
fn value_of<'a>(
    tracks: &'a BTreeMap<Uuid, Track>,
    prior: &'a Prior,
    contact: Uuid,
    field: Uuid,
) -> Option<&'a FieldValue> {
    match tracks.get(&contact) {
        Some(track) => track.values.get(&field),
        None => prior.values.get(&contact).and_then(|v| v.get(&field)),
    }
}

/// Plans one chunk.
pub fn plan_chunk(
    prior: &Prior,
    changes: &[Stamped],
    rules: &ProductRules,
    limits: &ColumnLimits,
    delete_mode: DeleteMode,
) -> Plan {
    let mut tracks: BTreeMap<Uuid, Track> = BTreeMap::new();
    for stamped in changes {
        let id = stamped.change.contact_id();
        // What a key change did not resend comes from the row's previous key.
        let moved_state = match &stamped.change {
            Change::UpsertContact(image) => image
                .previous_id
                .filter(|previous| *previous != id)
                .map(|previous| state_of(&tracks, prior, previous).cloned()),
            _ => None,
        };
        let moved_value = match &stamped.change {
            Change::UpsertValueKeepingValue(_, Some((contact, field))) => {
                Some(value_of(&tracks, prior, *contact, *field).map(|v| v.value.clone()))
            }
            _ => None,
        };
        let track = tracks.entry(id).or_insert_with(|| {
            let state = prior.contacts.get(&id).cloned();
            let projection = state.as_ref().map(|c| project_contact(c, rules));
            Track {
                values: prior.values.get(&id).cloned().unwrap_or_default(),
                customer: Life::starting(projection.as_ref().map(|p| &p.customer)),
                lead: Life::starting(projection.as_ref().and_then(|p| p.lead.as_ref())),
                appointment: Life::starting(
                    projection.as_ref().and_then(|p| p.appointment.as_ref()),
                ),
                state,
                lsn: stamped.lsn,
                time: stamped.commit_time,
                unknown: Unchanged::NONE,
                unknown_values: Vec::new(),
                incomplete: prior.incomplete.contains(&id),
                forced: false,
            }
        });
        track.lsn = stamped.lsn;
        track.time = stamped.commit_time;
        let contact_changed = match &stamped.change {
            Change::UpsertContact(image) => {
                let before = match &moved_state {
                    Some(moved) => moved.as_ref(),
                    None => track.state.as_ref(),
                };
                // The state records the row as it is; a column nothing can fill in is
                // recorded NULL and the state marked incomplete.
                let (contact, unknown) = image.clone().resolve(before);
                for column in unknown.iter() {
                    track.unknown.insert(column);
                    track.incomplete = true;
                }
                track.state = Some(contact);
                true
            }
            Change::DeleteContact(_) => {
                track.state = None;
                true
            }
            Change::Reset {
                contact, values, ..
            } => {
                // A fresh read makes whatever was unknown known again.
                track.unknown = Unchanged::NONE;
                track.unknown_values.clear();
                track.incomplete = false;
                track.state = contact.clone();
                track.values = values.iter().map(|v| (v.field_id, v.clone())).collect();
                track.forced = true;
                true
            }
            Change::Refresh(_) => {
                track.forced = true;
                false
            }
            Change::UpsertValue(value) => {
                track.values.insert(value.field_id, value.clone());
                false
            }
            Change::UpsertValueKeepingValue(value, _) => {
                let kept = match moved_value {
                    Some(moved) => moved,
                    None => track.values.get(&value.field_id).map(|v| v.value.clone()),
                };
                let mut value = value.clone();
                match kept {
                    Some(kept) => value.value = kept,
                    None => {
                        track.unknown_values.push(value.field_id);
                        track.incomplete = true;
                    }
                }
                track.values.insert(value.field_id, value);
                false
            }
            Change::DeleteValue { field_id, .. } => {
                track.values.remove(field_id);
                false
            }
        };
        if contact_changed {
            let projection = track.state.as_ref().map(|c| project_contact(c, rules));
            let at = stamped.commit_time;
            track
                .customer
                .observe(projection.as_ref().map(|p| &p.customer), at);
            track
                .lead
                .observe(projection.as_ref().and_then(|p| p.lead.as_ref()), at);
            track
                .appointment
                .observe(projection.as_ref().and_then(|p| p.appointment.as_ref()), at);
        }
    }

    let mut plan = Plan::default();
    for (id, track) in tracks {
        finish_contact(&mut plan, prior, id, track, rules, limits, delete_mode);
    }
    plan
}

fn finish_contact(
    plan: &mut Plan,
    prior: &Prior,
    id: Uuid,
    track: Track,
    rules: &ProductRules,
    limits: &ColumnLimits,
    delete_mode: DeleteMode,
) {
    // Mirror: the source state after the chunk, whatever happens to the target.
    let before = prior.contacts.get(&id);
    match (&track.state, before) {
        (Some(now), Some(was)) if now == was => {}
        (Some(now), _) => plan.mirror_contacts.push(now.clone()),
        (None, Some(_)) => plan.mirror_contacts_deleted.push(id),
        (None, None) => {}
    }
    let empty = BTreeMap::new();
    let values_before = prior.values.get(&id).unwrap_or(&empty);
    for (field, value) in &track.values {
        if values_before.get(field) != Some(value) {
            plan.mirror_values.push(value.clone());
        }
    }
    for field in values_before.keys() {
        if !track.values.contains_key(field) {
            plan.mirror_values_deleted.push((id, *field));
        }
    }

    for field in &track.unknown_values {
        plan.dead_letters.push(DeadLetter {
            contact_id: Some(id),
            lsn: track.lsn,
            source_table: "contact_custom_fields",
            operation: "update",
            key: json!({ "contact_id": id, "field_id": field }),
            payload: json!({ "unchanged_columns": ["value"] }),
            error: format!(
                "value of contact {id}, field {field} at {}: arrived as unchanged TOAST but \
                 leadsync holds no earlier value; run `leadsync dlq retry` to re-read it",
                track.lsn
            ),
            state_incomplete: true,
        });
    }
    if !track.unknown.is_empty() {
        let names: Vec<&str> = track.unknown.iter().map(|c| c.name()).collect();
        plan.dead_letters.push(DeadLetter {
            contact_id: Some(id),
            lsn: track.lsn,
            source_table: "contacts",
            operation: "update",
            key: json!({ "id": id }),
            payload: json!({ "unchanged_columns": names }),
            error: format!(
                "contact {id} at {}: column(s) {} arrived as unchanged TOAST but leadsync holds \
                 no earlier value for them; run `leadsync dlq retry` to re-read the contact",
                track.lsn,
                names.join(", ")
            ),
            state_incomplete: true,
        });
    }
    if track.incomplete {
        // Projecting incomplete state would write wrong rows: they wait for the re-read.
        return;
    }

    let projection = track.state.as_ref().map(|c| project_contact(c, rules));
    let before_projection = before.map(|c| project_contact(c, rules));
    if let Some(dead) = projection.as_ref().and_then(|p| {
        misfit_dead_letter(p, limits, track.lsn, "upsert", || {
            contact_payload(track.state.as_ref(), &track.values)
        })
    }) {
        plan.dead_letters.push(dead);
        return;
    }

    // A contact whose state was incomplete before the chunk has target rows that may be
    // stale anywhere: a re-read writes them all.
    let dirty = prior.dirty.contains(&id) || track.forced;
    let mut writes = ContactWrites {
        contact_id: id,
        customer: row_write(
            &track.customer,
            projection.as_ref().map(|p| &p.customer),
            before_projection.as_ref().map(|p| &p.customer),
            dirty,
            delete_mode,
            id,
            track.time,
        ),
        lead: row_write(
            &track.lead,
            projection.as_ref().and_then(|p| p.lead.as_ref()),
            before_projection.as_ref().and_then(|p| p.lead.as_ref()),
            dirty,
            delete_mode,
            lead_id_for(id),
            track.time,
        ),
        appointment: row_write(
            &track.appointment,
            projection.as_ref().and_then(|p| p.appointment.as_ref()),
            before_projection
                .as_ref()
                .and_then(|p| p.appointment.as_ref()),
            dirty,
            delete_mode,
            appointment_id_for(id),
            track.time,
        ),
        values: value_writes(
            prior,
            values_before,
            &track.values,
            before_projection.as_ref(),
            projection.as_ref(),
            dirty,
        ),
        resolves_dead_letters: dirty,
        lsn: track.lsn,
        source: track.state.clone(),
    };
    // A soft-deleted row whose last image does not fit its columns only gets deleted_at.
    strip_misfit_images(&mut writes, limits);
    if !writes.is_empty() {
        plan.writes.push(writes);
    }
}

fn row_write<T: Clone + PartialEq>(
    life: &Life<T>,
    now: Option<&T>,
    before: Option<&T>,
    dirty: bool,
    delete_mode: DeleteMode,
    id: Uuid,
    time: NaiveDateTime,
) -> Option<RowWrite<T>> {
    match now {
        Some(row) => (dirty || before != Some(row)).then(|| RowWrite::Upsert(row.clone())),
        // A forced write also clears rows leadsync never knew about (target drift).
        None if life.ever_live || dirty => Some(match delete_mode {
            DeleteMode::Soft => RowWrite::SoftDelete {
                id,
                row: life.last_live.clone(),
                deleted_at: life.absent_since.unwrap_or(time),
            },
            DeleteMode::Hard => RowWrite::HardDelete(id),
        }),
        None => None,
    }
}

/// Where each value of a contact lands, by field.
fn routes(
    prior: &Prior,
    values: &BTreeMap<Uuid, FieldValue>,
    parent: Option<&ContactProjection>,
) -> BTreeMap<Uuid, RoutedValue> {
    values
        .iter()
        .filter_map(|(field, value)| {
            let context = prior
                .contexts
                .get(field)
                .cloned()
                .unwrap_or(FieldContext::Contact);
            route_field_value(value, &context, parent)
                .ok()
                .map(|routed| (*field, routed))
        })
        .collect()
}

fn value_writes(
    prior: &Prior,
    values_before: &BTreeMap<Uuid, FieldValue>,
    values_now: &BTreeMap<Uuid, FieldValue>,
    projection_before: Option<&ContactProjection>,
    projection_now: Option<&ContactProjection>,
    dirty: bool,
) -> Vec<ValueWrite> {
    let before = routes(prior, values_before, projection_before);
    let now = routes(prior, values_now, projection_now);
    let fields: BTreeSet<Uuid> = before.keys().chain(now.keys()).copied().collect();
    let mut out = Vec::new();
    for field in fields {
        let was = before.get(&field);
        let is = now.get(&field);
        if let Some(was) = was
            && is.is_none_or(|is| (is.table, is.parent_id) != (was.table, was.parent_id))
        {
            out.push(ValueWrite::Delete {
                table: was.table,
                parent_id: was.parent_id,
                field_id: field,
            });
        }
        match is {
            Some(is) if dirty || was != Some(is) => out.push(ValueWrite::Upsert(is.clone())),
            None if dirty => {
                // A contact with dead letters may have stale values anywhere: clear them.
                for table in ValueTable::ALL {
                    if let Some(parent_id) = parent_for(table, projection_now, projection_before)
                        && was.is_none_or(|w| (w.table, w.parent_id) != (table, parent_id))
                    {
                        out.push(ValueWrite::Delete {
                            table,
                            parent_id,
                            field_id: field,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The id a value's parent has in `table` (derived from the contact id, live or not).
fn parent_for(
    table: ValueTable,
    now: Option<&ContactProjection>,
    before: Option<&ContactProjection>,
) -> Option<Uuid> {
    let contact = now.or(before)?.customer.cst_id;
    Some(match table {
        ValueTable::CustomerCustomFields => contact,
        ValueTable::LeadCustomFields => lead_id_for(contact),
        ValueTable::AppointmentCustomFields => appointment_id_for(contact),
    })
}

fn strip_misfit_images(writes: &mut ContactWrites, limits: &ColumnLimits) {
    if let Some(RowWrite::SoftDelete { row, .. }) = &mut writes.customer
        && row
            .as_ref()
            .is_some_and(|c| !customer_misfits(c, limits).is_empty())
    {
        *row = None;
    }
    if let Some(RowWrite::SoftDelete { row, .. }) = &mut writes.lead
        && row
            .as_ref()
            .is_some_and(|l| !lead_misfits(l, limits).is_empty() || !lead_unholdable(l).is_empty())
    {
        *row = None;
    }
}

/// Moves the values of `field` of the contacts in `prior` from where context `old` routed
/// them to where `new` routes them.
pub fn plan_reroute(
    prior: &Prior,
    field: Uuid,
    old: &FieldContext,
    new: &FieldContext,
    rules: &ProductRules,
) -> Vec<ContactWrites> {
    let mut out = Vec::new();
    for (contact_id, values) in &prior.values {
        let Some(value) = values.get(&field) else {
            continue;
        };
        let projection = prior
            .contacts
            .get(contact_id)
            .map(|c| project_contact(c, rules));
        let was = route_field_value(value, old, projection.as_ref()).ok();
        let is = route_field_value(value, new, projection.as_ref()).ok();
        if was == is {
            continue;
        }
        let mut writes = Vec::new();
        if let Some(was) = was {
            writes.push(ValueWrite::Delete {
                table: was.table,
                parent_id: was.parent_id,
                field_id: field,
            });
        }
        if let Some(is) = is {
            writes.push(ValueWrite::Upsert(is));
        }
        out.push(ContactWrites {
            contact_id: *contact_id,
            customer: None,
            lead: None,
            appointment: None,
            values: writes,
            resolves_dead_letters: false,
            lsn: Lsn::ZERO,
            source: prior.contacts.get(contact_id).cloned(),
        });
    }
    out.sort_by_key(|w| w.contact_id);
    out
}

/// The dead letter for a projected contact whose values do not fit their columns, if any.
/// `payload` is only built when one is needed.
pub fn misfit_dead_letter(
    projection: &ContactProjection,
    limits: &ColumnLimits,
    lsn: Lsn,
    operation: &'static str,
    payload: impl FnOnce() -> serde_json::Value,
) -> Option<DeadLetter> {
    let found = misfits(projection, limits);
    let unholdable = unholdable(projection);
    if found.is_empty() && unholdable.is_empty() {
        return None;
    }
    let id = projection.customer.cst_id;
    let reasons: Vec<String> = found
        .iter()
        .map(|m| {
            format!(
                "{} is {} characters, longer than {} allows ({}), from contacts.{}",
                m.column, m.length, m.column, m.limit, m.source_column
            )
        })
        .chain(unholdable)
        .collect();
    Some(DeadLetter {
        contact_id: Some(id),
        lsn,
        source_table: "contacts",
        operation,
        key: json!({ "id": id }),
        payload: payload(),
        error: format!("contact {id} at {lsn}: {}", reasons.join("; ")),
        state_incomplete: false,
    })
}

/// The source state of a contact for a dead letter: its row and its values.
pub fn contact_payload(
    contact: Option<&Contact>,
    values: &BTreeMap<Uuid, FieldValue>,
) -> serde_json::Value {
    json!({
        "contact": contact,
        "values": values.values().collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests;
