//! Malformed input: truncations, unknown bytes, bad UTF-8, trailing bytes and lying lengths
//! must all give a precise error, never a panic or a huge allocation.

use bytes::Bytes;

use super::{all_fixtures, fixture};
use crate::decode::{Datum, DecodeError, Field, TupleRole, decode_message};

/// `fixture(label)` with the byte at `offset` replaced.
fn patched(label: &str, offset: usize, byte: u8) -> Bytes {
    let mut bytes = fixture(label).to_vec();
    bytes[offset] = byte;
    Bytes::from(bytes)
}

#[test]
fn every_truncation_of_every_fixture_is_an_error() {
    let mut prefixes = 0;
    for (label, bytes) in all_fixtures() {
        for len in 0..bytes.len() {
            let err = decode_message(&bytes.slice(..len))
                .expect_err(&format!("{label} cut to {len} bytes decoded"));
            assert!(
                matches!(
                    err,
                    DecodeError::Empty
                        | DecodeError::Truncated { .. }
                        | DecodeError::DatumTooLong { .. }
                        | DecodeError::UnterminatedString { .. }
                ),
                "{label} cut to {len}: unexpected {err:?}"
            );
            prefixes += 1;
        }
    }
    assert!(prefixes > 1000);
}

#[test]
fn a_trailing_byte_after_any_fixture_is_an_error() {
    for (label, bytes) in all_fixtures() {
        let mut longer = bytes.to_vec();
        longer.push(0);
        let err = decode_message(&Bytes::from(longer)).expect_err(label);
        assert!(
            matches!(err, DecodeError::TrailingBytes { count: 1, offset, .. } if offset == bytes.len()),
            "{label}: {err:?}"
        );
    }
}

#[test]
fn trailing_bytes_error_names_message_and_offset() {
    let mut bytes = fixture("tx1.begin").to_vec();
    bytes.extend_from_slice(b"xyz");
    assert_eq!(
        decode_message(&Bytes::from(bytes)).map_err(|e| e.to_string()),
        Err("Begin: 3 trailing bytes after a complete message (offset 21)".to_owned())
    );
}

#[test]
fn empty_payload() {
    assert_eq!(decode_message(&Bytes::new()), Err(DecodeError::Empty));
}

#[test]
fn unknown_tags_including_protocol_v2_stream_messages() {
    for tag in [b'Z', b'S', b'E', b'c', b'A', b'P', b'K', b'r', 0, 0xff] {
        let bytes = Bytes::from(vec![tag, 0, 0, 0, 0]);
        assert_eq!(decode_message(&bytes), Err(DecodeError::UnknownTag { tag }));
    }
    assert_eq!(
        DecodeError::UnknownTag { tag: b'S' }.to_string(),
        "unknown pgoutput message tag 'S' (0x53) at offset 0"
    );
}

#[test]
fn unknown_datum_kind() {
    // tx1.insert: 'I', relid(4), 'N', ncols(2), then column 0's kind at offset 8.
    let err = decode_message(&patched("tx1.insert", 8, b'x')).expect_err("bad kind");
    assert_eq!(
        err,
        DecodeError::UnexpectedByte {
            message: "Insert",
            field: Field::DatumKind(TupleRole::New, 0),
            value: b'x',
            expected: "'n', 'u', 't' or 'b'",
            offset: 8,
        }
    );
    assert_eq!(
        err.to_string(),
        "Insert: new tuple column 0 kind has unexpected value 'x' (0x78); expected 'n', 'u', 't' or 'b' (offset 8)"
    );
}

#[test]
fn unknown_datum_kind_in_old_key_tuple() {
    // tx3.update_key: 'U', relid(4), 'K', ncols(2), column 0 't' len(4) "1", column 1 at 14.
    let err = decode_message(&patched("tx3.update_key", 14, 0)).expect_err("bad kind");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                field: Field::DatumKind(TupleRole::OldKey, 1),
                offset: 14,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bad_utf8_in_relation_name() {
    // tx1.relation_contacts: 'R', relid(4), "public\0" at 5..12, "contacts\0" from 12.
    let err = decode_message(&patched("tx1.relation_contacts", 14, 0xff)).expect_err("bad utf-8");
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            message: "Relation",
            field: Field::Named("relation name"),
            offset: 12,
            valid_up_to: 2,
        }
    );
    assert_eq!(
        err.to_string(),
        "Relation: relation name is not valid UTF-8 (invalid byte at offset 14)"
    );
}

#[test]
fn bad_utf8_in_message_prefix_but_not_in_content() {
    // tx9.message: 'M', flags, lsn(8), "leadsync\0" from 10, len(4), "hello".
    let err = decode_message(&patched("tx9.message", 10, 0xc3)).expect_err("bad prefix");
    assert!(
        matches!(
            err,
            DecodeError::InvalidUtf8 {
                message: "Message",
                offset: 10,
                ..
            }
        ),
        "{err:?}"
    );
    // The content is arbitrary bytes by definition.
    assert!(decode_message(&patched("tx9.message", 23, 0xff)).is_ok());
}

#[test]
fn unterminated_string() {
    let bytes = Bytes::from_static(b"O\0\0\0\0\x12\x34\x56\x78o1");
    assert_eq!(
        decode_message(&bytes).map_err(|e| e.to_string()),
        Err("Origin: origin name has no terminating NUL byte (offset 9)".to_owned())
    );
}

#[test]
fn datum_longer_than_the_message() {
    let mut bytes = b"I\0\0\x40\x07N\0\x01t".to_vec();
    bytes.extend_from_slice(&4000u32.to_be_bytes());
    bytes.extend_from_slice(b"only 12 here");
    assert_eq!(
        decode_message(&Bytes::from(bytes)).map_err(|e| e.to_string()),
        Err("Insert: new tuple column 0 says 4000 bytes but 12 remain (offset 13)".to_owned())
    );
}

#[test]
fn huge_counts_do_not_allocate_before_the_bytes_run_out() {
    // Each of these declares far more elements than it carries; with capacities taken from
    // the declared counts they would reserve gigabytes (or abort) before failing.
    let cases: [&[u8]; 4] = [
        b"I\0\0\0\x01N\xff\xff",
        b"R\0\0\0\x01public\0t\0d\xff\xff",
        b"T\xff\xff\xff\xff\x00\0\0\0\x01",
        b"M\x01\0\0\0\0\0\0\0\x01p\0\xff\xff\xff\xffabc",
    ];
    for case in cases {
        let err = decode_message(&Bytes::from_static(case)).expect_err("must fail");
        assert!(
            matches!(err, DecodeError::Truncated { .. }),
            "{:?}: {err:?}",
            String::from_utf8_lossy(case)
        );
    }
    assert_eq!(
        decode_message(&Bytes::from_static(b"T\xff\xff\xff\xff\x00\0\0\0\x01"))
            .map_err(|e| e.to_string()),
        Err("Truncate: relation id 1 needs 4 bytes but 0 remain (offset 10)".to_owned())
    );
}

#[test]
fn unknown_replica_identity() {
    // tx1.relation_contacts: the identity byte follows "contacts\0", at offset 21.
    let err =
        decode_message(&patched("tx1.relation_contacts", 21, b'x')).expect_err("bad identity");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                field: Field::Named("replica identity"),
                value: b'x',
                offset: 21,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_relation_column_flag() {
    // Column 0's flags byte follows the identity byte and the u16 column count.
    let err = decode_message(&patched("tx1.relation_contacts", 24, 3)).expect_err("bad flags");
    assert_eq!(
        err.to_string(),
        "Relation: column 0 flags has unexpected value 3 (0x03); expected 0 or 1 (key) (offset 24)"
    );
}

#[test]
fn unknown_truncate_option_bits() {
    // tx8.truncate: 'T', nrels(4), options at offset 5.
    let err = decode_message(&patched("tx8.truncate", 5, 7)).expect_err("bad options");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                message: "Truncate",
                value: 7,
                offset: 5,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unknown_message_flags() {
    let err = decode_message(&patched("tx9.message", 1, 2)).expect_err("bad flags");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                message: "Message",
                value: 2,
                offset: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn wrong_tuple_markers() {
    // Insert must have 'N' at offset 5.
    let err = decode_message(&patched("tx1.insert", 5, b'K')).expect_err("Insert with K");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                value: b'K',
                offset: 5,
                ..
            }
        ),
        "{err:?}"
    );
    // Update accepts K, O or N.
    let err = decode_message(&patched("tx2.update", 5, b'X')).expect_err("Update with X");
    assert_eq!(
        err.to_string(),
        "Update: tuple marker has unexpected value 'X' (0x58); expected 'K', 'O' or 'N' (offset 5)"
    );
    // Delete has no new tuple, so 'N' is wrong there.
    let err = decode_message(&patched("tx6.delete_full", 5, b'N')).expect_err("Delete with N");
    assert!(
        matches!(err, DecodeError::UnexpectedByte { value: b'N', .. }),
        "{err:?}"
    );
    // After an old tuple the new one must follow: tx3.update_key's old tuple ends at 17.
    let err = decode_message(&patched("tx3.update_key", 17, b'O')).expect_err("two old tuples");
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedByte {
                expected: "'N' after the old tuple",
                offset: 17,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn datum_as_str() {
    assert_eq!(Datum::Null.as_str(), Ok(None));
    assert_eq!(
        Datum::Text(Bytes::from_static(b"caf\xc3\xa9")).as_str(),
        Ok(Some("café"))
    );
    assert_eq!(
        Datum::Text(Bytes::from_static(b"ab\xff")).as_str(),
        Err(DecodeError::DatumNotUtf8 { valid_up_to: 2 })
    );
    assert_eq!(
        Datum::UnchangedToast.as_str().map_err(|e| e.to_string()),
        Err("datum is an unchanged TOAST value, not text".to_owned())
    );
    assert_eq!(
        Datum::Binary(Bytes::from_static(b"x")).as_str(),
        Err(DecodeError::DatumNotText { kind: "binary" })
    );
}

#[test]
fn unknown_relation_error_is_clear() {
    let cache = crate::decode::RelationCache::new();
    assert_eq!(
        cache.get(42).map_err(|e| e.to_string()),
        Err(
            "relation id 42 is unknown: no Relation message for it has been received on this stream"
                .to_owned()
        )
    );
}
