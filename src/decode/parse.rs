//! [`decode_message`]: one pgoutput payload to one [`LogicalMessage`].
//!
//! Decoding is strict: a field outside the values protocol version 1 defines (an unknown
//! replica identity, flag bits nobody has defined yet, a missing tuple marker) is an error
//! rather than a guess, because a CDC pipeline that misreads a change silently corrupts the
//! target, while one that stops with an error can be fixed and resumed from the last
//! acknowledged LSN.

use bytes::Bytes;

use super::error::{DecodeError, Field, TupleRole};
use super::message::{
    Begin, Commit, DecodingMessage, Delete, Insert, LogicalMessage, Origin, Relation,
    RelationColumn, ReplicaIdentity, Truncate, TypeMessage, Update,
};
use super::reader::Reader;
use super::tuple::{OldTuple, read_tuple};

/// Truncate option bit for `CASCADE`.
const TRUNCATE_CASCADE: u8 = 1;
/// Truncate option bit for `RESTART IDENTITY`.
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
/// Relation column flag bit: the column is part of the replica identity key.
const COLUMN_FLAG_KEY: u8 = 1;
/// Smallest encoding of a Relation column: flags, empty name + NUL, type OID, modifier.
const MIN_RELATION_COLUMN_BYTES: usize = 1 + 1 + 4 + 4;

/// Decode one pgoutput (protocol version 1) message: the whole payload of one XLogData frame,
/// tag byte first.
///
/// Text and binary column values are slices of `buf` (no copy). The message must use every
/// byte of `buf`; anything malformed, truncated or left over is a [`DecodeError`], never a
/// panic.
pub fn decode_message(buf: &Bytes) -> Result<LogicalMessage, DecodeError> {
    let tag = *buf.first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => {
            let mut r = Reader::after_tag(buf, "Begin");
            let begin = Begin {
                final_lsn: r.lsn(Field::Named("final LSN"))?,
                commit_time_micros: r.i64(Field::Named("commit timestamp"))?,
                xid: r.u32(Field::Named("xid"))?,
            };
            r.finish()?;
            LogicalMessage::Begin(begin)
        }
        b'C' => {
            let mut r = Reader::after_tag(buf, "Commit");
            let commit = Commit {
                flags: r.u8(Field::Named("flags"))?,
                commit_lsn: r.lsn(Field::Named("commit LSN"))?,
                end_lsn: r.lsn(Field::Named("end LSN"))?,
                commit_time_micros: r.i64(Field::Named("commit timestamp"))?,
            };
            r.finish()?;
            LogicalMessage::Commit(commit)
        }
        b'O' => {
            let mut r = Reader::after_tag(buf, "Origin");
            let origin = Origin {
                commit_lsn: r.lsn(Field::Named("origin commit LSN"))?,
                name: r.cstr(Field::Named("origin name"))?,
            };
            r.finish()?;
            LogicalMessage::Origin(origin)
        }
        b'R' => {
            let mut r = Reader::after_tag(buf, "Relation");
            let relation = read_relation(&mut r)?;
            r.finish()?;
            LogicalMessage::Relation(relation)
        }
        b'Y' => {
            let mut r = Reader::after_tag(buf, "Type");
            let ty = TypeMessage {
                id: r.u32(Field::Named("type OID"))?,
                namespace: r.cstr(Field::Named("namespace"))?,
                name: r.cstr(Field::Named("type name"))?,
            };
            r.finish()?;
            LogicalMessage::Type(ty)
        }
        b'I' => {
            let mut r = Reader::after_tag(buf, "Insert");
            let relation_id = r.u32(Field::Named("relation id"))?;
            expect_marker(&mut r, b'N', "'N'")?;
            let new = read_tuple(&mut r, TupleRole::New)?;
            r.finish()?;
            LogicalMessage::Insert(Insert { relation_id, new })
        }
        b'U' => {
            let mut r = Reader::after_tag(buf, "Update");
            let relation_id = r.u32(Field::Named("relation id"))?;
            let offset = r.offset();
            let old = match r.u8(Field::Named("tuple marker"))? {
                b'K' => Some(OldTuple::Key(read_tuple(&mut r, TupleRole::OldKey)?)),
                b'O' => Some(OldTuple::Full(read_tuple(&mut r, TupleRole::OldFull)?)),
                b'N' => None,
                other => {
                    return Err(r.unexpected(
                        Field::Named("tuple marker"),
                        other,
                        "'K', 'O' or 'N'",
                        offset,
                    ));
                }
            };
            if old.is_some() {
                expect_marker(&mut r, b'N', "'N' after the old tuple")?;
            }
            let new = read_tuple(&mut r, TupleRole::New)?;
            r.finish()?;
            LogicalMessage::Update(Update {
                relation_id,
                old,
                new,
            })
        }
        b'D' => {
            let mut r = Reader::after_tag(buf, "Delete");
            let relation_id = r.u32(Field::Named("relation id"))?;
            let offset = r.offset();
            let old = match r.u8(Field::Named("tuple marker"))? {
                b'K' => OldTuple::Key(read_tuple(&mut r, TupleRole::OldKey)?),
                b'O' => OldTuple::Full(read_tuple(&mut r, TupleRole::OldFull)?),
                other => {
                    return Err(r.unexpected(
                        Field::Named("tuple marker"),
                        other,
                        "'K' or 'O'",
                        offset,
                    ));
                }
            };
            r.finish()?;
            LogicalMessage::Delete(Delete { relation_id, old })
        }
        b'T' => {
            let mut r = Reader::after_tag(buf, "Truncate");
            let truncate = read_truncate(&mut r)?;
            r.finish()?;
            LogicalMessage::Truncate(truncate)
        }
        b'M' => {
            let mut r = Reader::after_tag(buf, "Message");
            let offset = r.offset();
            let transactional = match r.u8(Field::Named("flags"))? {
                0 => false,
                1 => true,
                other => {
                    return Err(r.unexpected(Field::Named("flags"), other, "0 or 1", offset));
                }
            };
            let lsn = r.lsn(Field::Named("message LSN"))?;
            let prefix = r.cstr(Field::Named("prefix"))?;
            let len = r.u32(Field::Named("content length"))?;
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            let content = r.bytes(len, Field::Named("content"))?;
            r.finish()?;
            LogicalMessage::Message(DecodingMessage {
                transactional,
                lsn,
                prefix,
                content,
            })
        }
        other => return Err(DecodeError::UnknownTag { tag: other }),
    };
    Ok(message)
}

/// Read one marker byte and require it to be `marker`.
fn expect_marker(
    r: &mut Reader<'_>,
    marker: u8,
    expected: &'static str,
) -> Result<(), DecodeError> {
    let offset = r.offset();
    let found = r.u8(Field::Named("tuple marker"))?;
    if found == marker {
        Ok(())
    } else {
        Err(r.unexpected(Field::Named("tuple marker"), found, expected, offset))
    }
}

/// The body of an `R` message.
fn read_relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = r.u32(Field::Named("relation id"))?;
    let namespace = r.cstr(Field::Named("namespace"))?;
    let name = r.cstr(Field::Named("relation name"))?;
    let offset = r.offset();
    let identity_byte = r.u8(Field::Named("replica identity"))?;
    let replica_identity = ReplicaIdentity::from_byte(identity_byte).ok_or_else(|| {
        r.unexpected(
            Field::Named("replica identity"),
            identity_byte,
            "'d', 'n', 'f' or 'i'",
            offset,
        )
    })?;
    let count = r.u16(Field::Named("column count"))?;
    let cap = usize::from(count).min(r.remaining() / MIN_RELATION_COLUMN_BYTES);
    let mut columns = Vec::with_capacity(cap);
    for column in 0..count {
        let offset = r.offset();
        let flags = r.u8(Field::RelationColumn(column, "flags"))?;
        if flags & !COLUMN_FLAG_KEY != 0 {
            return Err(r.unexpected(
                Field::RelationColumn(column, "flags"),
                flags,
                "0 or 1 (key)",
                offset,
            ));
        }
        columns.push(RelationColumn {
            is_key: flags & COLUMN_FLAG_KEY != 0,
            name: r.cstr(Field::RelationColumn(column, "name"))?,
            type_oid: r.u32(Field::RelationColumn(column, "type OID"))?,
            type_modifier: r.i32(Field::RelationColumn(column, "type modifier"))?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// The body of a `T` message.
fn read_truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.u32(Field::Named("relation count"))?;
    let offset = r.offset();
    let options = r.u8(Field::Named("options"))?;
    if options & !(TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY) != 0 {
        return Err(r.unexpected(
            Field::Named("options"),
            options,
            "bits 1 (CASCADE) and 2 (RESTART IDENTITY) only",
            offset,
        ));
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
    for index in 0..count {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        relation_ids.push(r.u32(Field::TruncatedRelation(index))?);
    }
    Ok(Truncate {
        cascade: options & TRUNCATE_CASCADE != 0,
        restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
        relation_ids,
    })
}
