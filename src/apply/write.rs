//! Executing a plan: the planned rows become column arrays, one statement per table and
//! kind of write, in foreign-key order (parents before children on the way in, children
//! before parents on the way out).

use chrono::NaiveDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{ApplyError, Session, Sql, db_error};
use crate::Timestamp;
use crate::project::plan::{ContactWrites, Plan, RowWrite, ValueWrite};
use crate::project::{Appointment, Customer, Lead, ValueTable};

type Param<'a> = &'a (dyn ToSql + Sync);

async fn run(
    client: &Session,
    statement: &str,
    params: &[Param<'_>],
    context: &'static str,
) -> Result<(), ApplyError> {
    client
        .execute_prepared(statement, params)
        .await
        .map(drop)
        .map_err(db_error(context))
}

/// Writes the mirror side of a plan: leadsync's copy of the source state.
pub async fn mirror(client: &Session, sql: &Sql, plan: &Plan) -> Result<(), ApplyError> {
    if !plan.mirror_contacts_deleted.is_empty() {
        run(
            client,
            &sql.delete_mirror_contacts,
            &[&plan.mirror_contacts_deleted],
            "removing contacts from leadsync's state",
        )
        .await?;
    }
    if !plan.mirror_contacts.is_empty() {
        let c = &plan.mirror_contacts;
        let ids: Vec<Uuid> = c.iter().map(|c| c.id).collect();
        let ws: Vec<Uuid> = c.iter().map(|c| c.workspace_id).collect();
        let text = |f: fn(&crate::project::Contact) -> &Option<String>| -> Vec<Option<String>> {
            c.iter().map(|c| f(c).clone()).collect()
        };
        let firstname = text(|c| &c.firstname);
        let lastname = text(|c| &c.lastname);
        let email = text(|c| &c.email);
        let phone = text(|c| &c.phone_number);
        let address = text(|c| &c.st_address);
        let city = text(|c| &c.city);
        let state = text(|c| &c.state);
        let zip = text(|c| &c.zip);
        let status = text(|c| &c.lead_status);
        let source = text(|c| &c.lead_source);
        let tags = text(|c| &c.tags);
        let appt_status: Vec<Option<i64>> = c.iter().map(|c| c.appointment_status_id).collect();
        let appt_result: Vec<Option<i64>> = c.iter().map(|c| c.appointment_result_id).collect();
        let appt_date: Vec<Option<Timestamp>> = c.iter().map(|c| c.appointment_date).collect();
        let priority: Vec<Option<i64>> = c.iter().map(|c| c.priority).collect();
        let created_at: Vec<Timestamp> = c.iter().map(|c| c.created_at).collect();
        let updated_at: Vec<Timestamp> = c.iter().map(|c| c.updated_at).collect();
        let created_by: Vec<Option<Uuid>> = c.iter().map(|c| c.created_by).collect();
        run(
            client,
            &sql.upsert_mirror_contacts,
            &[
                &ids,
                &ws,
                &firstname,
                &lastname,
                &email,
                &phone,
                &address,
                &city,
                &state,
                &zip,
                &status,
                &source,
                &tags,
                &appt_status,
                &appt_result,
                &appt_date,
                &priority,
                &created_at,
                &updated_at,
                &created_by,
            ],
            "recording contacts in leadsync's state",
        )
        .await?;
    }
    if !plan.mirror_values_deleted.is_empty() {
        let contacts: Vec<Uuid> = plan.mirror_values_deleted.iter().map(|k| k.0).collect();
        let fields: Vec<Uuid> = plan.mirror_values_deleted.iter().map(|k| k.1).collect();
        run(
            client,
            &sql.delete_mirror_values,
            &[&contacts, &fields],
            "removing values from leadsync's state",
        )
        .await?;
    }
    if !plan.mirror_values.is_empty() {
        let v = &plan.mirror_values;
        let contacts: Vec<Uuid> = v.iter().map(|v| v.contact_id).collect();
        let fields: Vec<Uuid> = v.iter().map(|v| v.field_id).collect();
        let values: Vec<Option<String>> = v.iter().map(|v| v.value.clone()).collect();
        let created_at: Vec<Timestamp> = v.iter().map(|v| v.created_at).collect();
        let updated_at: Vec<Timestamp> = v.iter().map(|v| v.updated_at).collect();
        let created_by: Vec<Option<Uuid>> = v.iter().map(|v| v.created_by).collect();
        run(
            client,
            &sql.upsert_mirror_values,
            &[
                &contacts,
                &fields,
                &values,
                &created_at,
                &updated_at,
                &created_by,
            ],
            "recording values in leadsync's state",
        )
        .await?;
    }
    Ok(())
}

/// The rows of one kind to write: live or soft-deleted images, marks, hard deletes.
struct Sorted<'a, T> {
    images: Vec<(&'a T, Option<NaiveDateTime>)>,
    marks: Vec<(Uuid, NaiveDateTime)>,
    deletes: Vec<Uuid>,
}

impl<'a, T> Sorted<'a, T> {
    fn new() -> Self {
        Sorted {
            images: Vec::new(),
            marks: Vec::new(),
            deletes: Vec::new(),
        }
    }

    fn add(&mut self, write: &'a Option<RowWrite<T>>) {
        match write {
            None => {}
            Some(RowWrite::Upsert(row)) => self.images.push((row, None)),
            Some(RowWrite::SoftDelete {
                row: Some(row),
                deleted_at,
                ..
            }) => self.images.push((row, Some(*deleted_at))),
            Some(RowWrite::SoftDelete {
                id,
                row: None,
                deleted_at,
            }) => self.marks.push((*id, *deleted_at)),
            Some(RowWrite::HardDelete(id)) => self.deletes.push(*id),
        }
    }
}

/// Writes the target side of the given contacts.
pub async fn contacts(
    client: &Session,
    sql: &Sql,
    writes: &[ContactWrites],
) -> Result<(), ApplyError> {
    let mut customers = Sorted::new();
    let mut leads = Sorted::new();
    let mut appointments = Sorted::new();
    let mut value_upserts: [Vec<&crate::project::RoutedValue>; 3] = Default::default();
    let mut value_deletes: [Vec<(Uuid, Uuid)>; 3] = Default::default();
    for w in writes {
        customers.add(&w.customer);
        leads.add(&w.lead);
        appointments.add(&w.appointment);
        for v in &w.values {
            match v {
                ValueWrite::Upsert(routed) => value_upserts[slot(routed.table)].push(routed),
                ValueWrite::Delete {
                    table,
                    parent_id,
                    field_id,
                } => value_deletes[slot(*table)].push((*parent_id, *field_id)),
            }
        }
    }

    upsert_customers(client, sql, &customers.images).await?;
    upsert_leads(client, sql, &leads.images).await?;
    upsert_appointments(client, sql, &appointments.images).await?;
    for table in ValueTable::ALL {
        let deletes = &value_deletes[slot(table)];
        if !deletes.is_empty() {
            let parents: Vec<Uuid> = deletes.iter().map(|d| d.0).collect();
            let fields: Vec<Uuid> = deletes.iter().map(|d| d.1).collect();
            run(
                client,
                &sql.delete_values[slot(table)],
                &[&parents, &fields],
                "deleting custom-field values",
            )
            .await?;
        }
    }
    for table in ValueTable::ALL {
        let upserts = &value_upserts[slot(table)];
        if !upserts.is_empty() {
            let parents: Vec<Uuid> = upserts.iter().map(|v| v.parent_id).collect();
            let fields: Vec<Uuid> = upserts.iter().map(|v| v.field_id).collect();
            let values: Vec<Option<String>> = upserts.iter().map(|v| v.value.clone()).collect();
            let created_at: Vec<Timestamp> = upserts.iter().map(|v| v.created_at).collect();
            let updated_at: Vec<Timestamp> = upserts.iter().map(|v| v.updated_at).collect();
            let created_by: Vec<Option<Uuid>> = upserts.iter().map(|v| v.created_by).collect();
            run(
                client,
                &sql.upsert_values[slot(table)],
                &[
                    &parents,
                    &fields,
                    &values,
                    &created_at,
                    &updated_at,
                    &created_by,
                ],
                "writing custom-field values",
            )
            .await?;
        }
    }
    for (marks, statement) in [
        (&appointments.marks, &sql.mark_appointments),
        (&leads.marks, &sql.mark_leads),
        (&customers.marks, &sql.mark_customers),
    ] {
        if !marks.is_empty() {
            let ids: Vec<Uuid> = marks.iter().map(|m| m.0).collect();
            let at: Vec<NaiveDateTime> = marks.iter().map(|m| m.1).collect();
            run(client, statement, &[&ids, &at], "marking rows deleted").await?;
        }
    }
    for (ids, statement) in [
        (&appointments.deletes, &sql.delete_appointments),
        (&leads.deletes, &sql.delete_leads),
        (&customers.deletes, &sql.delete_customers),
    ] {
        if !ids.is_empty() {
            run(client, statement, &[ids], "deleting rows").await?;
        }
    }
    Ok(())
}

fn slot(table: ValueTable) -> usize {
    match table {
        ValueTable::CustomerCustomFields => 0,
        ValueTable::LeadCustomFields => 1,
        ValueTable::AppointmentCustomFields => 2,
    }
}

async fn upsert_customers(
    client: &Session,
    sql: &Sql,
    rows: &[(&Customer, Option<NaiveDateTime>)],
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let uuid = |f: fn(&Customer) -> Uuid| -> Vec<Uuid> { rows.iter().map(|(c, _)| f(c)).collect() };
    let text = |f: fn(&Customer) -> Option<String>| -> Vec<Option<String>> {
        rows.iter().map(|(c, _)| f(c)).collect()
    };
    let time = |f: fn(&Customer) -> Timestamp| -> Vec<Timestamp> {
        rows.iter().map(|(c, _)| f(c)).collect()
    };
    let cst_id = uuid(|c| c.cst_id);
    let workspace_id = uuid(|c| c.workspace_id);
    let firstname = text(|c| c.firstname.clone());
    let lastname = text(|c| c.lastname.clone());
    let email = text(|c| c.email.clone());
    let phone1 = text(|c| c.phone1.clone());
    let phone2 = text(|c| c.phone2.clone());
    let address1 = text(|c| c.address1.clone());
    let address2 = text(|c| c.address2.clone());
    let city = text(|c| c.city.clone());
    let state = text(|c| c.state.clone());
    let zip = text(|c| c.zip.clone());
    let country = text(|c| Some(c.country.clone()));
    let dateadded = time(|c| c.dateadded);
    let lastchanged = time(|c| c.lastchanged);
    let created_at = time(|c| c.created_at);
    let updated_at = time(|c| c.updated_at);
    let created_by: Vec<Option<Uuid>> = rows.iter().map(|(c, _)| c.created_by).collect();
    let migrated = uuid(|c| c.migrated_from_contact_id);
    let deleted_at: Vec<Option<NaiveDateTime>> = rows.iter().map(|(_, d)| *d).collect();
    run(
        client,
        &sql.upsert_customers,
        &[
            &cst_id,
            &workspace_id,
            &firstname,
            &lastname,
            &email,
            &phone1,
            &phone2,
            &address1,
            &address2,
            &city,
            &state,
            &zip,
            &country,
            &dateadded,
            &lastchanged,
            &created_at,
            &updated_at,
            &created_by,
            &migrated,
            &deleted_at,
        ],
        "writing customers",
    )
    .await
}

async fn upsert_leads(
    client: &Session,
    sql: &Sql,
    rows: &[(&Lead, Option<NaiveDateTime>)],
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let uuid = |f: fn(&Lead) -> Uuid| -> Vec<Uuid> { rows.iter().map(|(l, _)| f(l)).collect() };
    let text = |f: fn(&Lead) -> Option<String>| -> Vec<Option<String>> {
        rows.iter().map(|(l, _)| f(l)).collect()
    };
    let time =
        |f: fn(&Lead) -> Timestamp| -> Vec<Timestamp> { rows.iter().map(|(l, _)| f(l)).collect() };
    let id = uuid(|l| l.id);
    let customer_id = uuid(|l| l.customer_id);
    let workspace_id = uuid(|l| l.workspace_id);
    let productid = text(|l| Some(l.productid.clone()));
    let source = text(|l| Some(l.source.clone()));
    let sourcesubdescr = text(|l| l.sourcesubdescr.clone());
    let disposition = text(|l| Some(l.disposition.clone()));
    let stg_id: Vec<i32> = rows.iter().map(|(l, _)| l.stg_id).collect();
    // As wide as the contact's; the server refuses one INTEGER cannot hold (a bad row).
    let priority: Vec<i64> = rows.iter().map(|(l, _)| l.priority).collect();
    let entrydate = time(|l| l.entrydate);
    let lastchangedon = time(|l| l.lastchangedon);
    let created_at = time(|l| l.created_at);
    let updated_at = time(|l| l.updated_at);
    let created_by: Vec<Option<Uuid>> = rows.iter().map(|(l, _)| l.created_by).collect();
    let migrated = uuid(|l| l.migrated_from_contact_id);
    let deleted_at: Vec<Option<NaiveDateTime>> = rows.iter().map(|(_, d)| *d).collect();
    run(
        client,
        &sql.upsert_leads,
        &[
            &id,
            &customer_id,
            &workspace_id,
            &productid,
            &source,
            &sourcesubdescr,
            &disposition,
            &stg_id,
            &priority,
            &entrydate,
            &lastchangedon,
            &created_at,
            &updated_at,
            &created_by,
            &migrated,
            &deleted_at,
        ],
        "writing leads",
    )
    .await
}

async fn upsert_appointments(
    client: &Session,
    sql: &Sql,
    rows: &[(&Appointment, Option<NaiveDateTime>)],
) -> Result<(), ApplyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let uuid =
        |f: fn(&Appointment) -> Uuid| -> Vec<Uuid> { rows.iter().map(|(a, _)| f(a)).collect() };
    let time = |f: fn(&Appointment) -> Timestamp| -> Vec<Timestamp> {
        rows.iter().map(|(a, _)| f(a)).collect()
    };
    let flag =
        |f: fn(&Appointment) -> bool| -> Vec<bool> { rows.iter().map(|(a, _)| f(a)).collect() };
    let id = uuid(|a| a.id);
    let lead_id = uuid(|a| a.lead_id);
    let workspace_id = uuid(|a| a.workspace_id);
    let apptdate = time(|a| a.apptdate);
    let disposition: Vec<Option<String>> = rows
        .iter()
        .map(|(a, _)| Some(a.disposition.clone()))
        .collect();
    let apptset = flag(|a| a.apptset);
    let verified = flag(|a| a.verified);
    let confirmed = flag(|a| a.confirmed);
    let setdate = time(|a| a.setdate);
    let verifieddate = time(|a| a.verifieddate);
    let confirmeddate = time(|a| a.confirmeddate);
    let lastchangeddate = time(|a| a.lastchangeddate);
    let created_at = time(|a| a.created_at);
    let updated_at = time(|a| a.updated_at);
    let created_by: Vec<Option<Uuid>> = rows.iter().map(|(a, _)| a.created_by).collect();
    let migrated = uuid(|a| a.migrated_from_contact_id);
    let deleted_at: Vec<Option<NaiveDateTime>> = rows.iter().map(|(_, d)| *d).collect();
    run(
        client,
        &sql.upsert_appointments,
        &[
            &id,
            &lead_id,
            &workspace_id,
            &apptdate,
            &disposition,
            &apptset,
            &verified,
            &confirmed,
            &setdate,
            &verifieddate,
            &confirmeddate,
            &lastchangeddate,
            &created_at,
            &updated_at,
            &created_by,
            &migrated,
            &deleted_at,
        ],
        "writing appointments",
    )
    .await
}
