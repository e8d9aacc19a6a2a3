//! The planner, case by case: prior state + changes → exact writes.

use super::*;
use crate::project::change::{ContactImage, ToastableColumn};

fn ts(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
}

fn pg(text: &str) -> crate::Timestamp {
    crate::Timestamp::parse(text).unwrap()
}

const C: Uuid = Uuid::from_u128(0xC1);
const F_CONTACT: Uuid = Uuid::from_u128(0xF1);
const F_LEAD: Uuid = Uuid::from_u128(0xF2);
const F_APPT: Uuid = Uuid::from_u128(0xF3);

fn contact() -> Contact {
    Contact {
        id: C,
        workspace_id: Uuid::from_u128(0xA1),
        firstname: Some("Ana".into()),
        lastname: Some("Lopez".into()),
        email: Some("ana@example.com".into()),
        phone_number: Some("555-0100".into()),
        st_address: None,
        city: None,
        state: None,
        zip: None,
        lead_status: None,
        lead_source: None,
        tags: None,
        appointment_status_id: None,
        appointment_result_id: None,
        appointment_date: None,
        priority: None,
        created_at: pg("2023-01-01 00:00:00"),
        updated_at: pg("2023-01-02 00:00:00"),
        created_by: None,
    }
}

fn with_lead(status: &str) -> Contact {
    Contact {
        lead_status: Some(status.into()),
        tags: Some("solar".into()),
        ..contact()
    }
}

fn with_appointment(status: &str) -> Contact {
    Contact {
        appointment_date: Some(pg("2024-05-01 10:00:00")),
        appointment_status_id: Some(4),
        ..with_lead(status)
    }
}

fn value(field: Uuid, json: &str) -> FieldValue {
    FieldValue {
        contact_id: C,
        field_id: field,
        value: Some(json.into()),
        created_at: pg("2023-02-01 00:00:00"),
        updated_at: pg("2023-02-01 00:00:00"),
        created_by: None,
    }
}

fn at(change: Change, time: &str, lsn: u64) -> Stamped {
    Stamped {
        change,
        commit_time: ts(time),
        lsn: Lsn(lsn),
    }
}

fn upsert(c: Contact) -> Change {
    Change::UpsertContact(ContactImage::complete(c))
}

fn rules() -> ProductRules {
    ProductRules::guide_default()
}

fn prior_with(c: Option<Contact>, values: &[FieldValue]) -> Prior {
    let mut prior = Prior::default();
    if let Some(c) = c {
        prior.contacts.insert(c.id, c);
    }
    if !values.is_empty() {
        prior
            .values
            .insert(C, values.iter().map(|v| (v.field_id, v.clone())).collect());
    }
    prior.contexts.insert(F_CONTACT, FieldContext::Contact);
    prior.contexts.insert(F_LEAD, FieldContext::Lead);
    prior.contexts.insert(F_APPT, FieldContext::Appointment);
    prior
}

fn plan(prior: &Prior, changes: &[Stamped]) -> Plan {
    plan_chunk(
        prior,
        changes,
        &rules(),
        &ColumnLimits::default(),
        DeleteMode::Soft,
    )
}

fn only_writes(plan: &Plan) -> &ContactWrites {
    assert_eq!(plan.writes.len(), 1, "{plan:#?}");
    &plan.writes[0]
}

#[test]
fn new_contact_becomes_a_customer_and_is_mirrored() {
    let p = plan(
        &prior_with(None, &[]),
        &[at(upsert(contact()), "2024-01-01 00:00:00", 10)],
    );
    assert_eq!(p.mirror_contacts, vec![contact()]);
    let w = only_writes(&p);
    let projected = project_contact(&contact(), &rules());
    assert_eq!(w.customer, Some(RowWrite::Upsert(projected.customer)));
    assert_eq!(w.lead, None);
    assert_eq!(w.appointment, None);
    assert!(w.values.is_empty());
    assert!(p.dead_letters.is_empty());
}

#[test]
fn contact_with_status_and_date_gets_all_three_rows() {
    let c = with_appointment("appointment_set");
    let p = plan(
        &prior_with(None, &[]),
        &[at(upsert(c.clone()), "2024-01-01 00:00:00", 10)],
    );
    let projected = project_contact(&c, &rules());
    let w = only_writes(&p);
    assert_eq!(w.customer, Some(RowWrite::Upsert(projected.customer)));
    assert_eq!(w.lead, Some(RowWrite::Upsert(projected.lead.unwrap())));
    assert_eq!(
        w.appointment,
        Some(RowWrite::Upsert(projected.appointment.unwrap()))
    );
}

#[test]
fn an_update_that_changes_no_projected_column_writes_nothing_to_the_target() {
    let before = with_lead("new");
    let p = plan(
        &prior_with(Some(before.clone()), &[]),
        &[at(upsert(before.clone()), "2024-01-01 00:00:00", 10)],
    );
    assert!(p.writes.is_empty(), "{p:#?}");
    assert!(p.mirror_contacts.is_empty());
}

#[test]
fn only_the_changed_rows_are_written() {
    let before = with_lead("new");
    let after = Contact {
        email: Some("new@example.com".into()),
        ..before.clone()
    };
    let p = plan(
        &prior_with(Some(before), &[]),
        &[at(upsert(after.clone()), "2024-01-01 00:00:00", 10)],
    );
    let w = only_writes(&p);
    assert!(
        matches!(w.customer, Some(RowWrite::Upsert(ref c)) if c.email.as_deref() == Some("new@example.com"))
    );
    assert_eq!(w.lead, None, "the lead does not carry the email");
    assert_eq!(p.mirror_contacts, vec![after]);
}

#[test]
fn clearing_the_status_soft_deletes_lead_and_appointment_at_commit_time() {
    let before = with_appointment("won");
    let after = Contact {
        lead_status: None,
        ..before.clone()
    };
    let p = plan(
        &prior_with(Some(before.clone()), &[]),
        &[at(upsert(after), "2024-03-03 12:00:00", 10)],
    );
    let old = project_contact(&before, &rules());
    let w = only_writes(&p);
    assert_eq!(w.customer, None);
    assert_eq!(
        w.lead,
        Some(RowWrite::SoftDelete {
            id: lead_id_for(C),
            row: old.lead,
            deleted_at: ts("2024-03-03 12:00:00"),
        })
    );
    assert_eq!(
        w.appointment,
        Some(RowWrite::SoftDelete {
            id: appointment_id_for(C),
            row: old.appointment,
            deleted_at: ts("2024-03-03 12:00:00"),
        })
    );

    let hard = plan_chunk(
        &prior_with(Some(before), &[]),
        &[at(
            upsert(Contact {
                lead_status: None,
                ..with_appointment("won")
            }),
            "2024-03-03 12:00:00",
            10,
        )],
        &rules(),
        &ColumnLimits::default(),
        DeleteMode::Hard,
    );
    let w = only_writes(&hard);
    assert_eq!(w.lead, Some(RowWrite::HardDelete(lead_id_for(C))));
    assert_eq!(
        w.appointment,
        Some(RowWrite::HardDelete(appointment_id_for(C)))
    );
}

#[test]
fn grouped_transactions_keep_the_last_live_image_and_the_leaving_time() {
    // Before: status "new". t1: status "won". t2: status cleared. t3: email changed.
    let before = with_lead("new");
    let won = with_lead("won");
    let cleared = Contact {
        lead_status: None,
        ..won.clone()
    };
    let emailed = Contact {
        email: Some("x@y.z".into()),
        ..cleared.clone()
    };
    let p = plan(
        &prior_with(Some(before), &[]),
        &[
            at(upsert(won.clone()), "2024-01-01 00:00:01", 10),
            at(upsert(cleared), "2024-01-01 00:00:02", 20),
            at(upsert(emailed.clone()), "2024-01-01 00:00:03", 30),
        ],
    );
    let w = only_writes(&p);
    assert_eq!(
        w.lead,
        Some(RowWrite::SoftDelete {
            id: lead_id_for(C),
            row: project_contact(&won, &rules()).lead,
            deleted_at: ts("2024-01-01 00:00:02"),
        })
    );
    assert_eq!(
        w.customer,
        Some(RowWrite::Upsert(
            project_contact(&emailed, &rules()).customer
        ))
    );
    assert_eq!(w.lsn, Lsn(30));
}

#[test]
fn insert_and_delete_in_one_chunk_leaves_a_deleted_row() {
    let c = with_lead("new");
    let changes = [
        at(upsert(c.clone()), "2024-01-01 00:00:01", 10),
        at(Change::DeleteContact(C), "2024-01-01 00:00:02", 20),
    ];
    let p = plan(&prior_with(None, &[]), &changes);
    assert!(p.mirror_contacts.is_empty() && p.mirror_contacts_deleted.is_empty());
    let w = only_writes(&p);
    let projected = project_contact(&c, &rules());
    assert_eq!(
        w.customer,
        Some(RowWrite::SoftDelete {
            id: C,
            row: Some(projected.customer),
            deleted_at: ts("2024-01-01 00:00:02"),
        })
    );
    let hard = plan_chunk(
        &prior_with(None, &[]),
        &changes,
        &rules(),
        &ColumnLimits::default(),
        DeleteMode::Hard,
    );
    assert_eq!(only_writes(&hard).customer, Some(RowWrite::HardDelete(C)));
}

#[test]
fn delete_then_reinsert_revives_the_same_rows() {
    let c = with_lead("new");
    let p = plan(
        &prior_with(Some(c.clone()), &[]),
        &[
            at(Change::DeleteContact(C), "2024-01-01 00:00:01", 10),
            at(upsert(c.clone()), "2024-01-01 00:00:02", 20),
        ],
    );
    // Same state as before: the rows stay live and untouched.
    assert!(p.writes.is_empty(), "{p:#?}");

    // Re-inserted after a delete that already committed: revived by an upsert.
    let p = plan(
        &prior_with(None, &[]),
        &[at(upsert(c.clone()), "2024-01-01 00:00:03", 30)],
    );
    let projected = project_contact(&c, &rules());
    assert_eq!(
        only_writes(&p).lead,
        Some(RowWrite::Upsert(projected.lead.unwrap()))
    );
}

#[test]
fn unchanged_toast_tags_come_from_the_mirror_and_decide_the_product() {
    // An update that only sets lead_status; tags (TOASTed) arrives as unchanged.
    let before = Contact {
        tags: Some(format!("{} roofing", "x".repeat(20_000))),
        ..contact()
    };
    let mut image = ContactImage::complete(Contact {
        lead_status: Some("qualified".into()),
        tags: None,
        ..contact()
    });
    image.unchanged.insert(ToastableColumn::Tags);
    let p = plan(
        &prior_with(Some(before.clone()), &[]),
        &[at(Change::UpsertContact(image), "2024-01-01 00:00:00", 10)],
    );
    let w = only_writes(&p);
    let Some(RowWrite::Upsert(lead)) = &w.lead else {
        panic!("no lead: {w:#?}");
    };
    assert_eq!(lead.productid, "ROOFING");
    assert_eq!(
        p.mirror_contacts[0].tags, before.tags,
        "tags kept in the mirror"
    );
}

#[test]
fn unchanged_column_without_prior_is_recorded_and_waits_for_a_reread() {
    let mut image = ContactImage::complete(contact());
    image.unchanged.insert(ToastableColumn::Tags);
    let p = plan(
        &prior_with(None, &[]),
        &[
            at(Change::UpsertContact(image), "2024-01-01 00:00:00", 10),
            at(upsert(with_lead("new")), "2024-01-01 00:00:01", 20),
        ],
    );
    assert!(p.writes.is_empty(), "incomplete state is not projected");
    assert_eq!(
        p.mirror_contacts,
        vec![with_lead("new")],
        "the state moves on"
    );
    assert_eq!(p.dead_letters.len(), 1);
    let dead = &p.dead_letters[0];
    assert!(dead.error.contains("tags"), "{dead:?}");
    assert_eq!((dead.contact_id, dead.lsn), (Some(C), Lsn(20)));
    assert!(dead.state_incomplete);
}

#[test]
fn a_contact_with_incomplete_state_waits_until_a_reread() {
    let mut prior = prior_with(Some(with_lead("new")), &[value(F_LEAD, "1")]);
    prior.dirty.insert(C);
    prior.incomplete.insert(C);
    // An unrelated later change: recorded, but no rows are written and nothing resolves.
    let p = plan(
        &prior,
        &[at(upsert(with_lead("won")), "2024-01-01 00:00:00", 10)],
    );
    assert!(p.writes.is_empty(), "{p:#?}");
    assert!(p.dead_letters.is_empty());
    assert_eq!(p.mirror_contacts, vec![with_lead("won")]);
    // A refresh from that state does not resolve it either; a re-read does.
    let p = plan(&prior, &[at(Change::Refresh(C), "2024-01-01 00:00:00", 10)]);
    assert!(p.writes.is_empty());
    let p = plan(
        &prior,
        &[at(
            Change::Reset {
                id: C,
                contact: Some(with_lead("lost")),
                values: vec![value(F_LEAD, "2")],
            },
            "2024-01-01 00:00:00",
            10,
        )],
    );
    let w = only_writes(&p);
    assert!(w.resolves_dead_letters);
    assert!(matches!(&w.lead, Some(RowWrite::Upsert(l)) if l.disposition == "lost"));
}

#[test]
fn a_key_change_takes_unchanged_columns_from_the_old_row() {
    const NEW: Uuid = Uuid::from_u128(0xC2);
    let old = Contact {
        tags: Some(format!("{} roofing", "x".repeat(20_000))),
        ..with_lead("new")
    };
    let mut image = ContactImage::complete(Contact {
        id: NEW,
        tags: None,
        ..with_lead("new")
    });
    image.unchanged.insert(ToastableColumn::Tags);
    image.previous_id = Some(C);
    let p = plan(
        &prior_with(Some(old.clone()), &[]),
        &[
            at(Change::UpsertContact(image), "2024-01-01 00:00:00", 10),
            at(Change::DeleteContact(C), "2024-01-01 00:00:00", 10),
        ],
    );
    assert!(p.dead_letters.is_empty(), "{:?}", p.dead_letters);
    let moved = Contact { id: NEW, ..old };
    assert_eq!(p.mirror_contacts, vec![moved]);
    assert_eq!(p.mirror_contacts_deleted, vec![C]);
    let new_writes = p.writes.iter().find(|w| w.contact_id == NEW).unwrap();
    let Some(RowWrite::Upsert(lead)) = &new_writes.lead else {
        panic!("{new_writes:#?}")
    };
    assert_eq!(lead.productid, "ROOFING");
}

#[test]
fn a_value_moved_to_another_field_keeps_its_unchanged_value() {
    let big = format!("\"{}\"", "v".repeat(10_000));
    let held = value(F_CONTACT, &big);
    let mut moved = value(F_LEAD, "ignored");
    moved.value = None;
    let p = plan(
        &prior_with(Some(with_lead("new")), std::slice::from_ref(&held)),
        &[
            at(
                Change::UpsertValueKeepingValue(moved.clone(), Some((C, F_CONTACT))),
                "2024-06-01 00:00:00",
                10,
            ),
            at(
                Change::DeleteValue {
                    contact_id: C,
                    field_id: F_CONTACT,
                },
                "2024-06-01 00:00:00",
                10,
            ),
        ],
    );
    assert!(p.dead_letters.is_empty(), "{:?}", p.dead_letters);
    let kept = FieldValue {
        value: Some(big.clone()),
        ..moved
    };
    assert_eq!(p.mirror_values, vec![kept]);
    assert_eq!(p.mirror_values_deleted, vec![(C, F_CONTACT)]);
    let w = only_writes(&p);
    assert!(w.values.contains(&ValueWrite::Delete {
        table: ValueTable::CustomerCustomFields,
        parent_id: C,
        field_id: F_CONTACT,
    }));
    assert!(w.values.iter().any(|v| matches!(v,
        ValueWrite::Upsert(r) if r.table == ValueTable::LeadCustomFields && r.value.as_deref() == Some(big.as_str()))));
}

#[test]
fn too_long_values_are_dead_letters_but_the_mirror_moves_on() {
    let long = Contact {
        phone_number: Some("(555) 123-4567 ext. 1234".into()),
        ..contact()
    };
    let p = plan(
        &prior_with(None, &[]),
        &[at(upsert(long.clone()), "2024-01-01 00:00:00", 10)],
    );
    assert!(p.writes.is_empty());
    assert_eq!(p.mirror_contacts, vec![long]);
    let dl = &p.dead_letters[0];
    assert_eq!(dl.contact_id, Some(C));
    assert_eq!(dl.lsn, Lsn(10));
    assert!(
        dl.error.contains("customers.phone1 is 24 characters"),
        "{}",
        dl.error
    );
    assert_eq!(
        dl.payload["contact"]["phone_number"],
        "(555) 123-4567 ext. 1234"
    );
}

#[test]
fn contacts_with_dead_letters_are_written_in_full_and_resolve_them() {
    let c = with_lead("new");
    let mut prior = prior_with(Some(c.clone()), &[value(F_CONTACT, "1")]);
    prior.dirty.insert(C);
    let p = plan(&prior, &[at(upsert(c.clone()), "2024-01-01 00:00:00", 10)]);
    let projected = project_contact(&c, &rules());
    let w = only_writes(&p);
    assert!(w.resolves_dead_letters);
    assert_eq!(
        w.customer,
        Some(RowWrite::Upsert(projected.customer.clone()))
    );
    assert_eq!(
        w.lead,
        Some(RowWrite::Upsert(projected.lead.clone().unwrap()))
    );
    assert!(
        w.values.contains(&ValueWrite::Upsert(
            route_field_value(
                &value(F_CONTACT, "1"),
                &FieldContext::Contact,
                Some(&projected)
            )
            .unwrap()
        ))
    );
}

#[test]
fn a_value_waits_for_its_parent_and_appears_with_it() {
    let c = contact();
    let lead_value = value(F_LEAD, "42");
    // The value arrives first: no lead yet, so only the mirror holds it.
    let p = plan(
        &prior_with(Some(c.clone()), &[]),
        &[at(
            Change::UpsertValue(lead_value.clone()),
            "2024-01-01 00:00:00",
            10,
        )],
    );
    assert!(p.writes.is_empty(), "{p:#?}");
    assert_eq!(p.mirror_values, vec![lead_value.clone()]);

    // Later the status is set: the lead and its value appear together.
    let p = plan(
        &prior_with(Some(c.clone()), std::slice::from_ref(&lead_value)),
        &[at(upsert(with_lead("new")), "2024-01-01 00:00:01", 20)],
    );
    let w = only_writes(&p);
    assert!(matches!(w.lead, Some(RowWrite::Upsert(_))));
    let projected = project_contact(&with_lead("new"), &rules());
    assert_eq!(
        w.values,
        vec![ValueWrite::Upsert(
            route_field_value(&lead_value, &FieldContext::Lead, Some(&projected)).unwrap()
        )]
    );
}

#[test]
fn values_leave_with_their_parent() {
    let c = with_appointment("won");
    let values = [
        value(F_CONTACT, "1"),
        value(F_LEAD, "2"),
        value(F_APPT, "3"),
    ];
    let p = plan(
        &prior_with(Some(c.clone()), &values),
        &[at(
            upsert(Contact {
                appointment_date: None,
                ..c.clone()
            }),
            "2024-01-01 00:00:00",
            10,
        )],
    );
    let w = only_writes(&p);
    assert_eq!(
        w.values,
        vec![ValueWrite::Delete {
            table: ValueTable::AppointmentCustomFields,
            parent_id: appointment_id_for(C),
            field_id: F_APPT,
        }]
    );

    let p = plan(
        &prior_with(Some(c), &values),
        &[at(Change::DeleteContact(C), "2024-01-01 00:00:00", 10)],
    );
    let w = only_writes(&p);
    let deleted: Vec<ValueTable> = w
        .values
        .iter()
        .map(|v| match v {
            ValueWrite::Delete { table, .. } => *table,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        deleted,
        vec![
            ValueTable::CustomerCustomFields,
            ValueTable::LeadCustomFields,
            ValueTable::AppointmentCustomFields
        ]
    );
    assert_eq!(p.mirror_contacts_deleted, vec![C]);
}

#[test]
fn value_changes_and_deletes() {
    let c = contact();
    let p = plan(
        &prior_with(Some(c.clone()), &[value(F_CONTACT, "1")]),
        &[
            at(
                Change::UpsertValue(value(F_CONTACT, "2")),
                "2024-01-01 00:00:00",
                10,
            ),
            at(
                Change::DeleteValue {
                    contact_id: C,
                    field_id: F_CONTACT,
                },
                "2024-01-01 00:00:01",
                20,
            ),
        ],
    );
    let w = only_writes(&p);
    assert_eq!(
        w.values,
        vec![ValueWrite::Delete {
            table: ValueTable::CustomerCustomFields,
            parent_id: C,
            field_id: F_CONTACT,
        }]
    );
    assert_eq!(p.mirror_values_deleted, vec![(C, F_CONTACT)]);
    assert!(p.mirror_values.is_empty());
}

#[test]
fn a_workspace_move_rewrites_every_row_of_the_contact() {
    let c = with_appointment("won");
    let moved = Contact {
        workspace_id: Uuid::from_u128(0xA2),
        ..c.clone()
    };
    let p = plan(
        &prior_with(Some(c), &[]),
        &[at(upsert(moved.clone()), "2024-01-01 00:00:00", 10)],
    );
    let projected = project_contact(&moved, &rules());
    let w = only_writes(&p);
    assert_eq!(w.customer, Some(RowWrite::Upsert(projected.customer)));
    assert_eq!(w.lead, Some(RowWrite::Upsert(projected.lead.unwrap())));
    assert_eq!(
        w.appointment,
        Some(RowWrite::Upsert(projected.appointment.unwrap()))
    );
}

#[test]
fn a_tag_change_changes_the_product_of_the_same_lead() {
    let c = with_lead("new");
    let hvac = Contact {
        tags: Some("hvac".into()),
        ..c.clone()
    };
    let p = plan(
        &prior_with(Some(c), &[]),
        &[at(upsert(hvac), "2024-01-01 00:00:00", 10)],
    );
    let Some(RowWrite::Upsert(lead)) = &only_writes(&p).lead else {
        panic!()
    };
    assert_eq!(lead.id, lead_id_for(C));
    assert_eq!(lead.productid, "HVAC");
}

#[test]
fn soft_deleted_rows_that_do_not_fit_only_get_deleted_at() {
    let long = Contact {
        phone_number: Some("x".repeat(30)),
        ..contact()
    };
    let p = plan(
        &prior_with(Some(long), &[]),
        &[at(Change::DeleteContact(C), "2024-01-01 00:00:00", 10)],
    );
    assert_eq!(
        only_writes(&p).customer,
        Some(RowWrite::SoftDelete {
            id: C,
            row: None,
            deleted_at: ts("2024-01-01 00:00:00"),
        })
    );
}

#[test]
fn an_unchanged_toasted_value_keeps_the_value_leadsync_holds() {
    let big = format!("\"{}\"", "v".repeat(10_000));
    let held = value(F_CONTACT, &big);
    let mut touched = value(F_CONTACT, "ignored");
    touched.value = None;
    touched.updated_at = pg("2024-06-01 00:00:00");
    let p = plan(
        &prior_with(Some(contact()), std::slice::from_ref(&held)),
        &[at(
            Change::UpsertValueKeepingValue(touched.clone(), None),
            "2024-06-01 00:00:00",
            10,
        )],
    );
    let kept = FieldValue {
        value: Some(big),
        ..touched
    };
    assert_eq!(p.mirror_values, vec![kept.clone()]);
    let ValueWrite::Upsert(routed) = &only_writes(&p).values[0] else {
        panic!("{p:#?}")
    };
    assert_eq!(routed.value, kept.value);
    assert_eq!(routed.updated_at, pg("2024-06-01 00:00:00"));

    let p = plan(
        &prior_with(Some(contact()), &[]),
        &[at(
            Change::UpsertValueKeepingValue(value(F_LEAD, "x"), None),
            "2024-06-01 00:00:00",
            10,
        )],
    );
    assert_eq!(p.dead_letters.len(), 1);
    assert!(p.dead_letters[0].state_incomplete);
    assert!(p.writes.is_empty());
}

#[test]
fn a_reset_rewrites_every_row_from_the_fresh_state() {
    // leadsync believed the contact had no lead; the source says it has one.
    let stale = contact();
    let fresh = with_appointment("won");
    let p = plan(
        &prior_with(Some(stale), &[value(F_CONTACT, "1"), value(F_LEAD, "2")]),
        &[at(
            Change::Reset {
                id: C,
                contact: Some(fresh.clone()),
                values: vec![value(F_LEAD, "3")],
            },
            "2024-01-01 00:00:00",
            10,
        )],
    );
    let projected = project_contact(&fresh, &rules());
    let w = only_writes(&p);
    assert!(w.resolves_dead_letters, "a reset is a forced, full write");
    assert_eq!(
        w.customer,
        Some(RowWrite::Upsert(projected.customer.clone()))
    );
    assert_eq!(
        w.lead,
        Some(RowWrite::Upsert(projected.lead.clone().unwrap()))
    );
    assert_eq!(
        w.appointment,
        Some(RowWrite::Upsert(projected.appointment.clone().unwrap()))
    );
    assert!(w.values.contains(&ValueWrite::Delete {
        table: ValueTable::CustomerCustomFields,
        parent_id: C,
        field_id: F_CONTACT,
    }));
    assert!(w.values.contains(&ValueWrite::Upsert(
        route_field_value(&value(F_LEAD, "3"), &FieldContext::Lead, Some(&projected)).unwrap()
    )));
    assert_eq!(p.mirror_contacts, vec![fresh]);
    assert_eq!(p.mirror_values, vec![value(F_LEAD, "3")]);
    assert_eq!(p.mirror_values_deleted, vec![(C, F_CONTACT)]);

    // A contact the source no longer has leaves the projection.
    let p = plan(
        &prior_with(Some(with_lead("new")), &[]),
        &[at(
            Change::Reset {
                id: C,
                contact: None,
                values: vec![],
            },
            "2024-01-01 00:00:00",
            10,
        )],
    );
    let w = only_writes(&p);
    assert!(matches!(w.customer, Some(RowWrite::SoftDelete { .. })));
    assert!(matches!(w.lead, Some(RowWrite::SoftDelete { .. })));
    assert_eq!(p.mirror_contacts_deleted, vec![C]);
}

#[test]
fn a_refresh_rewrites_the_rows_leadsync_holds_in_full() {
    let c = with_lead("new");
    let p = plan(
        &prior_with(Some(c.clone()), &[value(F_CONTACT, "1")]),
        &[at(Change::Refresh(C), "2024-01-01 00:00:00", 10)],
    );
    let projected = project_contact(&c, &rules());
    let w = only_writes(&p);
    assert_eq!(
        w.customer,
        Some(RowWrite::Upsert(projected.customer.clone()))
    );
    assert_eq!(
        w.lead,
        Some(RowWrite::Upsert(projected.lead.clone().unwrap()))
    );
    assert_eq!(w.values.len(), 1);
    assert!(p.mirror_contacts.is_empty() && p.mirror_values.is_empty());
}
