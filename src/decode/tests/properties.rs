//! Property tests: arbitrary bytes never panic, and structured values survive
//! encode → `decode_message` unchanged.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::encoder::encode;
use crate::Lsn;
use crate::decode::{
    Begin, Commit, Datum, DecodingMessage, Delete, Insert, LogicalMessage, OldTuple, Origin,
    Relation, RelationColumn, ReplicaIdentity, Truncate, Tuple, TypeMessage, Update,
    decode_message,
};

/// Every tag protocol version 1 defines.
const TAGS: &[u8] = b"BCORYIUDTM";

/// A string without NUL (the protocol's strings are NUL-terminated), any other char allowed.
fn name() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(|chars| chars.into_iter().filter(|&c| c != '\0').collect())
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn value() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn datum() -> impl Strategy<Value = Datum> {
    prop_oneof![
        Just(Datum::Null),
        Just(Datum::UnchangedToast),
        value().prop_map(Datum::Text),
        value().prop_map(Datum::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    vec(datum(), 0..8).prop_map(Tuple)
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple().prop_map(OldTuple::Key),
        tuple().prop_map(OldTuple::Full)
    ]
}

fn replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn relation_column() -> impl Strategy<Value = RelationColumn> {
    (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| RelationColumn {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    )
}

fn message() -> impl Strategy<Value = LogicalMessage> {
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time_micros, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time_micros,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time_micros)| {
                LogicalMessage::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time_micros,
                })
            }
        ),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| LogicalMessage::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            name(),
            name(),
            replica_identity(),
            vec(relation_column(), 0..6)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| {
            LogicalMessage::Type(TypeMessage {
                id,
                namespace,
                name,
            })
        }),
        (any::<u32>(), tuple())
            .prop_map(|(relation_id, new)| LogicalMessage::Insert(Insert { relation_id, new })),
        (any::<u32>(), proptest::option::of(old_tuple()), tuple()).prop_map(
            |(relation_id, old, new)| {
                LogicalMessage::Update(Update {
                    relation_id,
                    old,
                    new,
                })
            }
        ),
        (any::<u32>(), old_tuple())
            .prop_map(|(relation_id, old)| LogicalMessage::Delete(Delete { relation_id, old })),
        (any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..6)).prop_map(
            |(cascade, restart_identity, relation_ids)| {
                LogicalMessage::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relation_ids,
                })
            }
        ),
        (any::<bool>(), lsn(), name(), value()).prop_map(
            |(transactional, lsn, prefix, content)| {
                LogicalMessage::Message(DecodingMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        let _ = decode_message(&Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_bodies_after_a_valid_tag_never_panic(
        tag in proptest::sample::select(TAGS),
        body in vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&body);
        let _ = decode_message(&Bytes::from(bytes));
    }

    #[test]
    fn round_trip(message in message()) {
        let bytes = Bytes::from(encode(&message));
        prop_assert_eq!(decode_message(&bytes), Ok(message));
    }

    #[test]
    fn truncated_or_extended_encodings_are_errors(message in message(), extra in 1usize..4) {
        let bytes = Bytes::from(encode(&message));
        for len in 0..bytes.len() {
            prop_assert!(decode_message(&bytes.slice(..len)).is_err());
        }
        let mut longer = bytes.to_vec();
        longer.extend(std::iter::repeat_n(0u8, extra));
        let is_trailing = matches!(
            decode_message(&Bytes::from(longer)),
            Err(crate::decode::DecodeError::TrailingBytes { count, .. }) if count == extra
        );
        prop_assert!(is_trailing);
    }

    #[test]
    fn corrupted_encodings_never_panic(
        message in message(),
        position in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = encode(&message);
        let at = position.index(bytes.len());
        bytes[at] = byte;
        let _ = decode_message(&Bytes::from(bytes));
    }
}
