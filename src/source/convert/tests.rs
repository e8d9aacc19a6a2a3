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
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
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

fn ts(text: &str) -> NaiveDateTime {
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
fn a_key_change_is_a_delete_and_an_insert() {
    let mut old = vec![Datum::Null; 21];
    old[0] = t("00000000-0000-0000-0000-0000000000c0");
    let events = converter()
        .convert(&LogicalMessage::Update(Update {
            relation_id: 16400,
            old: Some(OldTuple::Key(Tuple(old))),
            new: contact_tuple(t("new"), t("solar")),
        }))
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0],
        SourceEvent::Change(Change::DeleteContact(
            "00000000-0000-0000-0000-0000000000c0".parse().unwrap()
        ))
    );
    assert!(matches!(
        events[1],
        SourceEvent::Change(Change::UpsertContact(_))
    ));
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
            column: "tags"
        }
    );
    assert!(!err.is_bad_row());
    // Without `notes` (not projected), and with a new column at the end: fine.
    let mut columns: Vec<&str> = names(&CONTACT_COLUMNS).to_vec();
    columns.push("loyalty_tier");
    c.observe_relation(&relation(16400, "public", "contacts", &columns))
        .unwrap();
}

#[test]
fn bad_values_name_table_and_column() {
    let mut tuple = contact_tuple(t("new"), t("solar"));
    tuple.0[16] = t("infinity");
    let err = converter()
        .convert(&LogicalMessage::Insert(Insert {
            relation_id: 16400,
            new: tuple,
        }))
        .unwrap_err();
    assert!(err.is_bad_row());
    assert!(
        err.to_string().starts_with("contacts.appointment_date"),
        "{err}"
    );
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
