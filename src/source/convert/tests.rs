//! Row changes → domain changes, by hand-built relations and tuples.

use bytes::Bytes;

use super::*;
use crate::decode::{Delete, Insert, RelationColumn, ReplicaIdentity, Truncate, Update};

const ID: &str = "00000000-0000-0000-0000-0000000000c1";
const WS: &str = "00000000-0000-0000-0000-0000000000a1";

fn relation(id: u32, ns: &str, name: &str, columns: &[&str]) -> Relation {
    Relation {
        id,
        namespace: ns.into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|c| RelationColumn {
                is_key: *c == "id",
                name: (*c).into(),
                type_oid: type_of(c),
                type_modifier: -1,
            })
            .collect(),
    }
}

/// The type OID a column of the legacy or target tables has.
fn type_of(column: &str) -> u32 {
    match column {
        "id"
        | "workspace_id"
        | "created_by"
        | "contact_id"
        | "field_id"
        | "cst_id"
        | "migrated_from_contact_id" => 2950,
        "appointment_status_id" | "appointment_result_id" | "priority" => 23,
        "appointment_date" | "created_at" | "updated_at" | "deleted_at" => 1114,
        "value" => 3802,
        _ => 25,
    }
}

/// contacts with an extra legacy column `notes` in the middle, which must be ignored.
fn contacts_relation() -> Relation {
    let mut columns: Vec<&str> = names(&CONTACT_COLUMNS).to_vec();
    columns.insert(5, "notes");
    relation(16400, "public", "contacts", &columns)
}

fn t(text: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(text.as_bytes()))
}

fn contact_tuple(lead_status: Datum, tags: Datum) -> Tuple {
    Tuple(vec![
        t(ID),
        t(WS),
        t("Ana"),
        Datum::Null,
        t(""),
        t("a note"),
        t("555-0100"),
        Datum::Null,
        Datum::Null,
        Datum::Null,
        Datum::Null,
        lead_status,
        Datum::Null,
        tags,
        t("4"),
        Datum::Null,
        t("2024-05-01 10:00:00"),
        t("2"),
        t("2023-01-01 00:00:00.123456"),
        t("2023-01-02 00:00:00"),
        Datum::Null,
    ])
}

fn converter() -> Converter {
    let mut c = Converter::new("public", "public");
    c.observe_relation(&contacts_relation()).unwrap();
    c
}

fn ts(text: &str) -> crate::Timestamp {
    parse_timestamp(text).unwrap()
}

#[test]
fn insert_of_a_contact_reads_every_projected_column() {
    let event = converter()
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: contact_tuple(t("new"), t("solar")),
        }))
        .unwrap();
    assert_eq!(
        event,
        vec![SourceEvent::Change(Change::UpsertContact(ContactImage {
            contact: Contact {
                id: ID.parse().unwrap(),
                workspace_id: WS.parse().unwrap(),
                firstname: Some("Ana".into()),
                lastname: None,
                email: Some(String::new()),
                phone_number: Some("555-0100".into()),
                st_address: None,
                city: None,
                state: None,
                zip: None,
                lead_status: Some("new".into()),
                lead_source: None,
                tags: Some("solar".into()),
                appointment_status_id: Some(4),
                appointment_result_id: None,
                appointment_date: Some(ts("2024-05-01 10:00:00")),
                priority: Some(2),
                created_at: ts("2023-01-01 00:00:00.123456"),
                updated_at: ts("2023-01-02 00:00:00"),
                created_by: None,
            },
            unchanged: Unchanged::NONE,
            previous_id: None,
        }))]
    );
}

#[test]
fn unchanged_toast_is_recorded_not_nulled() {
    let events = converter()
        .convert(&LogicalMessage::Update(Update {
            relation_id: 16400,
            old: None,
            new: contact_tuple(t("qualified"), Datum::UnchangedToast),
        }))
        .unwrap();
    let [SourceEvent::Change(Change::UpsertContact(image))] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert!(image.unchanged.contains(ToastableColumn::Tags));
    assert_eq!(image.unchanged.iter().count(), 1);
    assert_eq!(image.contact.lead_status.as_deref(), Some("qualified"));
}

#[test]
fn a_key_change_reads_the_new_row_then_deletes_the_old() {
    let mut old = vec![Datum::Null; 21];
    old[0] = t("00000000-0000-0000-0000-0000000000c0");
    let events = converter()
        .convert(&LogicalMessage::Update(Update {
            relation_id: 16400,
            old: Some(OldTuple::Key(Tuple(old))),
            new: contact_tuple(t("new"), t("solar")),
        }))
        .unwrap();
    let previous: Uuid = "00000000-0000-0000-0000-0000000000c0".parse().unwrap();
    assert_eq!(events.len(), 2);
    assert!(matches!(
        &events[0],
        SourceEvent::Change(Change::UpsertContact(image)) if image.previous_id == Some(previous)
    ));
    assert_eq!(
        events[1],
        SourceEvent::Change(Change::DeleteContact(previous))
    );
}

#[test]
fn a_full_old_row_with_the_same_key_is_an_ordinary_update() {
    let events = converter()
        .convert(&LogicalMessage::Update(Update {
            relation_id: 16400,
            old: Some(OldTuple::Full(contact_tuple(t("old"), t("x")))),
            new: contact_tuple(t("new"), t("solar")),
        }))
        .unwrap();
    assert_eq!(events.len(), 1);
}

#[test]
fn delete_by_key_tuple() {
    let mut old = vec![Datum::Null; 21];
    old[0] = t(ID);
    let events = converter()
        .convert(&LogicalMessage::Delete(Delete {
            relation_id: 16400,
            old: OldTuple::Key(Tuple(old)),
        }))
        .unwrap();
    assert_eq!(
        events,
        vec![SourceEvent::Change(Change::DeleteContact(
            ID.parse().unwrap()
        ))]
    );
}

#[test]
fn values_fields_and_truncates() {
    let mut c = converter();
    c.observe_relation(&relation(
        16401,
        "public",
        "contact_custom_fields",
        &names(&VALUE_COLUMNS),
    ))
    .unwrap();
    c.observe_relation(&relation(
        16402,
        "public",
        "custom_fields",
        &["id", "workspace_id", "name", "context_type"],
    ))
    .unwrap();
    let value = c
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16401,
            new: Tuple(vec![
                t(ID),
                t(WS),
                t("{\"a\": 1}"),
                t("2023-01-01 00:00:00"),
                t("2023-01-01 00:00:00"),
                Datum::Null,
            ]),
        }))
        .unwrap();
    assert_eq!(
        value,
        vec![SourceEvent::Change(Change::UpsertValue(FieldValue {
            contact_id: ID.parse().unwrap(),
            field_id: WS.parse().unwrap(),
            value: Some("{\"a\": 1}".into()),
            created_at: ts("2023-01-01 00:00:00"),
            updated_at: ts("2023-01-01 00:00:00"),
            created_by: None,
        }))]
    );
    let field = c
        .convert(&LogicalMessage::Update(Update {
            relation_id: 16402,
            old: None,
            new: Tuple(vec![t(ID), t(WS), t("budget"), t("lead")]),
        }))
        .unwrap();
    assert_eq!(
        field,
        vec![SourceEvent::FieldUpsert {
            id: ID.parse().unwrap(),
            context: Some("lead".into())
        }]
    );
    let truncate = c
        .convert(&LogicalMessage::Truncate(Truncate {
            cascade: true,
            restart_identity: false,
            relation_ids: vec![16400, 16401, 99999],
        }))
        .unwrap();
    assert_eq!(
        truncate,
        vec![SourceEvent::Truncate(vec![
            SourceTable::Contacts,
            SourceTable::ContactCustomFields
        ])]
    );
}

#[test]
fn custom_fields_without_context_column_have_no_context() {
    let mut c = converter();
    c.observe_relation(&relation(16402, "public", "custom_fields", &["id", "name"]))
        .unwrap();
    let field = c
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16402,
            new: Tuple(vec![t(ID), t("budget")]),
        }))
        .unwrap();
    assert_eq!(
        field,
        vec![SourceEvent::FieldUpsert {
            id: ID.parse().unwrap(),
            context: None
        }]
    );
}

#[test]
fn other_schemas_and_tables_are_ignored() {
    let mut c = Converter::new("crm", "crm_new");
    c.observe_relation(&contacts_relation()).unwrap();
    assert_eq!(
        c.table_of(16400),
        None,
        "public.contacts is not crm.contacts"
    );
    let none = c
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: contact_tuple(t("new"), t("solar")),
        }))
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn dropping_a_projected_column_is_an_error_but_an_unread_one_is_not() {
    let mut c = converter();
    let mut columns: Vec<&str> = names(&CONTACT_COLUMNS).to_vec();
    columns.retain(|c| *c != "tags");
    let err = c
        .observe_relation(&relation(16400, "public", "contacts", &columns))
        .unwrap_err();
    assert_eq!(
        err,
        ConvertError::MissingColumn {
            table: "public.contacts".into(),
            column: "tags",
            sql_type: "text",
        }
    );
    assert!(!err.is_bad_row());
    assert!(
        err.to_string()
            .contains("ALTER TABLE public.contacts ADD COLUMN tags text"),
        "{err}"
    );
    // Without `notes` (not projected), and with a new column at the end: fine.
    let mut columns: Vec<&str> = names(&CONTACT_COLUMNS).to_vec();
    columns.push("loyalty_tier");
    c.observe_relation(&relation(16400, "public", "contacts", &columns))
        .unwrap();
}

#[test]
fn a_table_version_without_a_projected_column_is_read_as_rows_to_reread() {
    let mut c = converter();
    let mut columns: Vec<&str> = names(&CONTACT_COLUMNS).to_vec();
    columns.retain(|c| *c != "tags");
    let degraded = c
        .observe_relation_degraded(&relation(16400, "public", "contacts", &columns))
        .unwrap();
    assert_eq!(degraded, vec!["tags"]);
    let mut tuple = contact_tuple(t("new"), t("solar"));
    tuple.0.remove(13);
    let events = c
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: tuple,
        }))
        .unwrap();
    assert_eq!(
        events,
        vec![SourceEvent::Reread {
            contact_id: Uuid::parse_str(ID).unwrap(),
            columns: vec!["tags"],
        }]
    );
    // Deletes need only the key.
    let mut old = vec![Datum::Null; 20];
    old[0] = t(ID);
    let events = c
        .convert(&LogicalMessage::Delete(Delete {
            relation_id: 16400,
            old: OldTuple::Key(Tuple(old)),
        }))
        .unwrap();
    assert_eq!(
        events,
        vec![SourceEvent::Change(Change::DeleteContact(
            Uuid::parse_str(ID).unwrap()
        ))]
    );
    // Without its key, a version is never accepted.
    let mut columns: Vec<&str> = names(&CONTACT_COLUMNS).to_vec();
    columns.retain(|c| *c != "id");
    assert!(
        c.observe_relation_degraded(&relation(16400, "public", "contacts", &columns))
            .is_err()
    );
}

#[test]
fn bad_values_name_table_column_and_contact() {
    let mut tuple = contact_tuple(t("new"), t("solar"));
    tuple.0[16] = t("01/05/2024 10:00");
    let err = converter()
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: tuple,
        }))
        .unwrap_err();
    assert!(err.is_bad_row());
    assert_eq!(err.contact_id(), Some(Uuid::parse_str(ID).unwrap()));
    assert!(
        err.to_string().starts_with("contacts.appointment_date"),
        "{err}"
    );
    // Without a readable key there is no contact to name.
    let mut tuple = contact_tuple(t("new"), t("solar"));
    tuple.0[0] = t("not-a-uuid");
    let err = converter()
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: tuple,
        }))
        .unwrap_err();
    assert_eq!(err.contact_id(), None);
}

fn insert_contact(c: &Converter, tuple: Tuple) -> Contact {
    match c
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: tuple,
        }))
        .unwrap()
        .pop()
    {
        Some(SourceEvent::Change(Change::UpsertContact(image))) => image.contact,
        other => panic!("{other:?}"),
    }
}

#[test]
fn infinite_and_far_timestamps_are_read_as_they_are() {
    let mut tuple = contact_tuple(t("new"), t("solar"));
    tuple.0[16] = t("infinity");
    tuple.0[18] = t("-infinity");
    tuple.0[19] = t("200000-01-01 00:00:00");
    let contact = insert_contact(&converter(), tuple);
    assert_eq!(contact.appointment_date, Some(crate::Timestamp::INFINITY));
    assert_eq!(contact.created_at, crate::Timestamp::NEG_INFINITY);
    assert_eq!(contact.updated_at, ts("200000-01-01 00:00:00"));
}

#[test]
fn compatible_type_changes_read_the_same_values() {
    // timestamptz (printed in UTC), bigint and varchar instead of timestamp, int and text.
    let mut relation = contacts_relation();
    for column in &mut relation.columns {
        column.type_oid = match column.type_oid {
            1114 => 1184,
            23 => 20,
            25 => 1043,
            other => other,
        };
    }
    let mut c = Converter::new("public", "public");
    c.observe_relation(&relation).unwrap();
    let mut tuple = contact_tuple(t("new"), t("solar"));
    tuple.0[16] = t("2024-05-01 10:00:00+00");
    tuple.0[17] = t("5000000000");
    tuple.0[18] = t("2023-01-01 05:30:00.123456+05:30");
    tuple.0[19] = t("2023-01-02 00:00:00+00");
    let contact = insert_contact(&c, tuple);
    let plain = insert_contact(&converter(), contact_tuple(t("new"), t("solar")));
    assert_eq!(contact.appointment_date, plain.appointment_date);
    assert_eq!(contact.created_at, plain.created_at);
    assert_eq!(contact.updated_at, plain.updated_at);
    assert_eq!(contact.priority, Some(5_000_000_000));
}

#[test]
fn an_incompatible_type_change_stops_with_the_column_named() {
    for (column, oid) in [("appointment_date", 25u32), ("priority", 1700), ("id", 25)] {
        let mut relation = contacts_relation();
        let at = relation.column_index(column).unwrap();
        relation.columns[at].type_oid = oid;
        let err = Converter::new("public", "public")
            .observe_relation(&relation)
            .unwrap_err();
        assert!(
            matches!(&err, ConvertError::IncompatibleType { column: c, oid: o, .. } if *c == column && *o == oid),
            "{err:?}"
        );
        assert!(!err.is_bad_row());
        assert!(err.to_string().contains("Change it back"), "{err}");
    }
}

fn customers_relation() -> Relation {
    relation(
        16500,
        "public",
        "customers",
        &[
            "id",
            "cst_id",
            "workspace_id",
            "firstname",
            "lastname",
            "email",
            "phone1",
            "phone2",
            "address1",
            "city",
            "state",
            "zip",
            "deleted_at",
            "migrated_from_contact_id",
        ],
    )
}

fn customer_tuple(address1: Datum, deleted_at: Datum, migrated_from: Datum) -> Tuple {
    Tuple(vec![
        t(ID),
        t(ID),
        t(WS),
        t("Ana"),
        Datum::Null,
        t("ana@example.com"),
        t("555-0100"),
        t("ignored"),
        address1,
        t("Tampa"),
        t("FL"),
        t(""),
        deleted_at,
        migrated_from,
    ])
}

#[test]
fn a_full_old_customer_row_tells_which_columns_the_update_changed() {
    let mut c = converter();
    c.observe_relation(&customers_relation()).unwrap();
    let old = customer_tuple(t("1 Main St"), Datum::Null, t(ID));
    let mut new = old.clone();
    new.0[3] = t("Anabel"); // firstname
    new.0[7] = t("changed"); // phone2: not carried
    new.0[11] = Datum::Null; // zip: '' -> NULL
    let events = c
        .convert(&LogicalMessage::Update(Update {
            relation_id: 16500,
            old: Some(OldTuple::Full(old)),
            new,
        }))
        .unwrap();
    let [SourceEvent::CustomerUpdate(edit)] = events.as_slice() else {
        panic!("{events:?}");
    };
    assert_eq!(
        edit.changed(),
        vec![("firstname", Some("Anabel".into())), ("zip", None)]
    );
    // Without the old row, every carried column that was sent counts.
    let without = CustomerEdit {
        before: None,
        ..edit.clone()
    };
    assert_eq!(without.changed().len(), 8);
}

#[test]
fn customer_updates_carry_the_reverse_columns_and_nothing_else_is_read() {
    let mut c = converter();
    c.observe_relation(&customers_relation()).unwrap();
    let update = |tuple: Tuple| {
        c.convert(&LogicalMessage::Update(Update {
            relation_id: 16500,
            old: None,
            new: tuple,
        }))
        .unwrap()
    };
    assert_eq!(
        update(customer_tuple(Datum::UnchangedToast, Datum::Null, t(ID))),
        vec![SourceEvent::CustomerUpdate(CustomerEdit {
            cst_id: Uuid::parse_str(ID).unwrap(),
            migrated_from: Some(Uuid::parse_str(ID).unwrap()),
            deleted: false,
            values: [
                Some(Some("Ana".into())),
                Some(None),
                Some(Some("ana@example.com".into())),
                Some(Some("555-0100".into())),
                None,
                Some(Some("Tampa".into())),
                Some(Some("FL".into())),
                Some(Some(String::new())),
            ],
            before: None,
        })]
    );
    let native = update(customer_tuple(
        t("1 Main St"),
        t("2024-01-01 00:00:00"),
        Datum::Null,
    ));
    let [SourceEvent::CustomerUpdate(edit)] = native.as_slice() else {
        panic!("{native:?}");
    };
    assert_eq!((edit.migrated_from, edit.deleted), (None, true));
    assert_eq!(edit.values[4], Some(Some("1 Main St".into())));

    // Inserts and deletes of customers are not carried back.
    let row = customer_tuple(t("x"), Datum::Null, t(ID));
    assert!(
        c.convert(&LogicalMessage::Insert(Insert {
            relation_id: 16500,
            new: row.clone(),
        }))
        .unwrap()
        .is_empty()
    );
    assert!(
        c.convert(&LogicalMessage::Delete(Delete {
            relation_id: 16500,
            old: OldTuple::Key(row),
        }))
        .unwrap()
        .is_empty()
    );
}
