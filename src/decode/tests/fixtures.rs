//! Decoding of messages captured from a real PostgreSQL 15.18 (see `fixtures/pg15.hex` for the
//! SQL that produced them), compared whole against hand-written expected values.

use bytes::Bytes;

use super::{all_fixtures, b, decode_fixture, t};
use crate::Lsn;
use crate::decode::Datum::{Null, UnchangedToast};
use crate::decode::{
    Begin, Commit, DecodeError, DecodingMessage, Delete, Insert, LogicalMessage, OldTuple, Origin,
    Relation, RelationCache, RelationColumn, ReplicaIdentity, Truncate, Tuple, TypeMessage, Update,
};

const CONTACTS: u32 = 16391;
const AUDIT: u32 = 16405;
const DOCS: u32 = 16398;
const PARENT: u32 = 16410;
const CHILD: u32 = 16416;
const MOOD: u32 = 16385;
const INT4: u32 = 23;
const TEXT: u32 = 25;

fn column(is_key: bool, name: &str, type_oid: u32) -> RelationColumn {
    RelationColumn {
        is_key,
        name: name.to_owned(),
        type_oid,
        type_modifier: -1,
    }
}

fn contacts_v1() -> Relation {
    Relation {
        id: CONTACTS,
        namespace: "public".to_owned(),
        name: "contacts".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            column(true, "id", INT4),
            column(false, "name", TEXT),
            column(false, "email", TEXT),
            column(false, "mood", MOOD),
        ],
    }
}

fn mood_type() -> LogicalMessage {
    LogicalMessage::Type(TypeMessage {
        id: MOOD,
        namespace: "public".to_owned(),
        name: "mood".to_owned(),
    })
}

#[test]
fn begin_and_commit() {
    assert_eq!(
        decode_fixture("tx1.begin"),
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0x0154_7080),
            commit_time_micros: 0x0003_0417_ddcd_6d92,
            xid: 737,
        })
    );
    assert_eq!(
        decode_fixture("tx1.commit"),
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(0x0154_7080),
            end_lsn: Lsn(0x0154_70b0),
            commit_time_micros: 0x0003_0417_ddcd_6d92,
        })
    );
}

#[test]
fn commit_time_counts_from_2000() {
    let LogicalMessage::Begin(begin) = decode_fixture("tx1.begin") else {
        panic!("not a Begin");
    };
    let epoch_2000 = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("valid date");
    let when = epoch_2000 + chrono::TimeDelta::microseconds(begin.commit_time_micros);
    assert_eq!(when.to_string(), "2026-11-25 12:38:02.118546");
}

#[test]
fn every_transaction_pairs_begin_with_commit() {
    let mut open: Option<Begin> = None;
    let mut transactions = 0;
    for (label, bytes) in all_fixtures() {
        let message =
            crate::decode::decode_message(&bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
        match message {
            LogicalMessage::Begin(begin) => {
                assert!(open.is_none(), "{label}: Begin inside a transaction");
                open = Some(begin);
            }
            LogicalMessage::Commit(commit) => {
                let begin = open
                    .take()
                    .unwrap_or_else(|| panic!("{label}: Commit without Begin"));
                assert_eq!(commit.commit_lsn, begin.final_lsn, "{label}");
                assert_eq!(
                    commit.commit_time_micros, begin.commit_time_micros,
                    "{label}"
                );
                assert!(commit.end_lsn > commit.commit_lsn, "{label}");
                assert_eq!(commit.flags, 0, "{label}");
                transactions += 1;
            }
            LogicalMessage::Message(m) if !m.transactional => {
                assert!(
                    open.is_none(),
                    "{label}: non-transactional message inside a transaction"
                );
            }
            other => assert!(
                open.is_some() || label.starts_with("bin."),
                "{label}: {other:?} outside a transaction"
            ),
        }
    }
    assert_eq!(transactions, 11);
}

#[test]
fn type_message_for_enum_column() {
    assert_eq!(decode_fixture("tx1.type_mood"), mood_type());
}

#[test]
fn relation_with_key_column_and_enum_type() {
    assert_eq!(
        decode_fixture("tx1.relation_contacts"),
        LogicalMessage::Relation(contacts_v1())
    );
}

#[test]
fn insert_with_text_and_null() {
    assert_eq!(
        decode_fixture("tx1.insert"),
        LogicalMessage::Insert(Insert {
            relation_id: CONTACTS,
            new: Tuple(vec![t("1"), t("Ada"), Null, t("happy")]),
        })
    );
}

#[test]
fn insert_in_binary_mode() {
    assert_eq!(
        decode_fixture("bin.tx1.insert"),
        LogicalMessage::Insert(Insert {
            relation_id: CONTACTS,
            new: Tuple(vec![b(&[0, 0, 0, 1]), b(b"Ada"), Null, b(b"happy")]),
        })
    );
}

#[test]
fn update_without_old_tuple() {
    assert_eq!(
        decode_fixture("tx2.update"),
        LogicalMessage::Update(Update {
            relation_id: CONTACTS,
            old: None,
            new: Tuple(vec![t("1"), t("Ada L"), Null, t("happy")]),
        })
    );
}

#[test]
fn update_of_primary_key_sends_old_key() {
    assert_eq!(
        decode_fixture("tx3.update_key"),
        LogicalMessage::Update(Update {
            relation_id: CONTACTS,
            old: Some(OldTuple::Key(Tuple(vec![t("1"), Null, Null, Null]))),
            new: Tuple(vec![t("2"), t("Ada L"), Null, t("happy")]),
        })
    );
}

#[test]
fn replica_identity_full_relation_flags_every_column_as_key() {
    assert_eq!(
        decode_fixture("tx4.relation_audit"),
        LogicalMessage::Relation(Relation {
            id: AUDIT,
            namespace: "public".to_owned(),
            name: "audit".to_owned(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![column(true, "id", INT4), column(true, "note", TEXT)],
        })
    );
    assert_eq!(
        decode_fixture("tx4.insert"),
        LogicalMessage::Insert(Insert {
            relation_id: AUDIT,
            new: Tuple(vec![t("7"), t("first")]),
        })
    );
}

#[test]
fn update_under_replica_identity_full_sends_old_row() {
    assert_eq!(
        decode_fixture("tx5.update_full"),
        LogicalMessage::Update(Update {
            relation_id: AUDIT,
            old: Some(OldTuple::Full(Tuple(vec![t("7"), t("first")]))),
            new: Tuple(vec![t("7"), t("second")]),
        })
    );
}

#[test]
fn delete_under_replica_identity_full_sends_old_row() {
    assert_eq!(
        decode_fixture("tx6.delete_full"),
        LogicalMessage::Delete(Delete {
            relation_id: AUDIT,
            old: OldTuple::Full(Tuple(vec![t("7"), t("second")])),
        })
    );
}

#[test]
fn update_leaving_toasted_column_unchanged() {
    assert_eq!(
        decode_fixture("tx7.relation_docs"),
        LogicalMessage::Relation(Relation {
            id: DOCS,
            namespace: "public".to_owned(),
            name: "docs".to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column(true, "id", INT4),
                column(false, "title", TEXT),
                column(false, "body", TEXT),
            ],
        })
    );
    let update = decode_fixture("tx7.update_toast");
    assert_eq!(
        update,
        LogicalMessage::Update(Update {
            relation_id: DOCS,
            old: None,
            new: Tuple(vec![t("1"), t("final"), UnchangedToast]),
        })
    );
    let LogicalMessage::Update(update) = update else {
        unreachable!()
    };
    assert!(update.new.get(2).is_some_and(|d| d.as_str().is_err()));
}

#[test]
fn truncate_of_two_tables_with_options() {
    assert_eq!(
        decode_fixture("tx8.relation_parent"),
        LogicalMessage::Relation(Relation {
            id: PARENT,
            namespace: "public".to_owned(),
            name: "parent".to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column(true, "id", INT4)],
        })
    );
    assert_eq!(
        decode_fixture("tx8.relation_child"),
        LogicalMessage::Relation(Relation {
            id: CHILD,
            namespace: "public".to_owned(),
            name: "child".to_owned(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![column(true, "id", INT4), column(false, "parent_id", INT4)],
        })
    );
    assert_eq!(
        decode_fixture("tx8.truncate"),
        LogicalMessage::Truncate(Truncate {
            cascade: true,
            restart_identity: true,
            relation_ids: vec![PARENT, CHILD],
        })
    );
}

#[test]
fn transactional_logical_message() {
    // The message's LSN is the end of its WAL record; the COMMIT record follows it directly,
    // so here it equals the transaction's final LSN (0/1548510).
    assert_eq!(
        decode_fixture("tx9.message"),
        LogicalMessage::Message(DecodingMessage {
            transactional: true,
            lsn: Lsn(0x0154_8510),
            prefix: "leadsync".to_owned(),
            content: Bytes::from_static(b"hello"),
        })
    );
    assert_eq!(
        decode_fixture("tx9.insert"),
        LogicalMessage::Insert(Insert {
            relation_id: CONTACTS,
            new: Tuple(vec![t("3"), t("Bob"), t("bob@example.com"), t("ok")]),
        })
    );
}

#[test]
fn non_transactional_logical_message() {
    assert_eq!(
        decode_fixture("msg10.message"),
        LogicalMessage::Message(DecodingMessage {
            transactional: false,
            lsn: Lsn(0x0154_8580),
            prefix: "leadsync".to_owned(),
            content: Bytes::from_static(b"now"),
        })
    );
}

#[test]
fn origin_message() {
    assert_eq!(
        decode_fixture("tx11.origin"),
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(0x1234_5678),
            name: "o1".to_owned(),
        })
    );
    assert_eq!(
        decode_fixture("tx11.insert"),
        LogicalMessage::Insert(Insert {
            relation_id: CONTACTS,
            new: Tuple(vec![t("4"), t("Cy"), t("cy@example.com"), t("sad")]),
        })
    );
}

#[test]
fn add_column_resends_type_and_relation() {
    assert_eq!(decode_fixture("tx12.type_mood"), mood_type());
    let mut contacts_v2 = contacts_v1();
    contacts_v2.columns.push(column(false, "phone", TEXT));
    assert_eq!(
        decode_fixture("tx12.relation_contacts"),
        LogicalMessage::Relation(contacts_v2)
    );
    assert_eq!(
        decode_fixture("tx12.insert"),
        LogicalMessage::Insert(Insert {
            relation_id: CONTACTS,
            new: Tuple(vec![t("5"), t("Di"), Null, t("ok"), t("+1 555 0100")]),
        })
    );
}

#[test]
fn relation_cache_follows_the_stream() {
    let mut cache = RelationCache::new();
    assert_eq!(
        cache.get(CONTACTS),
        Err(DecodeError::UnknownRelation {
            relation_id: CONTACTS
        })
    );
    let mut checked = 0;
    let mut before_alter = None;
    for (label, bytes) in all_fixtures() {
        if label.starts_with("bin.") {
            continue;
        }
        let message =
            crate::decode::decode_message(&bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
        if label == "tx12.relation_contacts" {
            before_alter = Some(cache.clone());
        }
        cache.observe(&message);
        let tuples: Vec<&Tuple> = match &message {
            LogicalMessage::Insert(m) => vec![&m.new],
            LogicalMessage::Update(m) => {
                m.old.iter().map(OldTuple::tuple).chain([&m.new]).collect()
            }
            LogicalMessage::Delete(m) => vec![m.old.tuple()],
            _ => vec![],
        };
        for tuple in tuples {
            let relation_id = message.relation_id().expect("a change names its relation");
            let relation = cache
                .get_for_tuple(relation_id, tuple)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(relation.id, relation_id);
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
    assert_eq!(cache.len(), 5);

    let contacts = cache.get(CONTACTS).expect("contacts is known");
    assert_eq!(contacts.columns.len(), 5);
    assert_eq!(contacts.column_index("phone"), Some(4));

    // The tx12 insert does not fit the layout from before the ALTER TABLE.
    let before_alter = before_alter.expect("tx12 relation seen");
    let LogicalMessage::Insert(insert) = decode_fixture("tx12.insert") else {
        panic!("not an Insert");
    };
    let err = before_alter
        .get_for_tuple(CONTACTS, &insert.new)
        .expect_err("stale layout must not match");
    assert_eq!(
        err.to_string(),
        "relation public.contacts (id 16391) has 4 columns but the tuple has 5"
    );
}

#[test]
fn text_values_are_slices_of_the_payload() {
    let payload = super::fixture("tx9.insert");
    let LogicalMessage::Insert(insert) = crate::decode::decode_message(&payload).expect("decodes")
    else {
        panic!("not an Insert");
    };
    let email = insert
        .new
        .get(2)
        .and_then(|d| d.raw())
        .expect("email is text");
    let range = payload.as_ptr_range();
    assert!(range.contains(&email.as_ptr()), "value was copied");
    assert_eq!(
        insert.new.get(2).map(|d| d.as_str()),
        Some(Ok(Some("bob@example.com")))
    );
}
