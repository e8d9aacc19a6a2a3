//! Errors from decoding pgoutput bytes.
//!
//! Every error that comes from the bytes of a message names the message kind, the field that
//! could not be read and the byte offset of that field from the start of the message (the tag
//! byte is offset 0), so a log line is enough to find the bad byte in a hex dump of the payload.

use std::fmt;

/// The field of a message that was being read when decoding failed.
///
/// Tuple and relation column indexes are 0-based, like the `Vec` they end up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A fixed field such as `"final LSN"` or `"relation id"`.
    Named(&'static str),
    /// The column count of a tuple.
    TupleColumnCount(TupleRole),
    /// The datum kind byte (`n`, `u`, `t`, `b`) of a tuple column.
    DatumKind(TupleRole, u16),
    /// The 4-byte length of a text or binary tuple column.
    DatumLength(TupleRole, u16),
    /// The value bytes of a text or binary tuple column.
    DatumValue(TupleRole, u16),
    /// A field of one column of a Relation message.
    RelationColumn(u16, &'static str),
    /// One relation id of a Truncate message.
    TruncatedRelation(u32),
}

/// Which tuple of a change message a column belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleRole {
    /// The `N` tuple: the row after the change.
    New,
    /// The `K` tuple: the old replica-identity key.
    OldKey,
    /// The `O` tuple: the whole old row (REPLICA IDENTITY FULL).
    OldFull,
}

impl fmt::Display for TupleRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TupleRole::New => "new tuple",
            TupleRole::OldKey => "old key tuple",
            TupleRole::OldFull => "old full tuple",
        })
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Named(name) => f.write_str(name),
            Field::TupleColumnCount(role) => write!(f, "{role} column count"),
            Field::DatumKind(role, column) => write!(f, "{role} column {column} kind"),
            Field::DatumLength(role, column) => write!(f, "{role} column {column} length"),
            Field::DatumValue(role, column) => write!(f, "{role} column {column}"),
            Field::RelationColumn(column, part) => write!(f, "column {column} {part}"),
            Field::TruncatedRelation(index) => write!(f, "relation id {index}"),
        }
    }
}

/// Why a pgoutput message, a datum or a relation lookup could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload had no bytes at all, so not even a tag.
    #[error("empty pgoutput message: no tag byte")]
    Empty,

    /// The first byte is not a protocol version 1 message tag.
    #[error("unknown pgoutput message tag {} (0x{tag:02x}) at offset 0", show_byte(*tag))]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },

    /// A fixed-size field runs past the end of the message.
    #[error("{message}: {field} needs {needed} bytes but {remaining} remain (offset {offset})")]
    Truncated {
        /// The message kind, e.g. `"Insert"`.
        message: &'static str,
        /// The field being read.
        field: Field,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the message at `offset`.
        remaining: usize,
        /// Offset of the field from the start of the message.
        offset: usize,
    },

    /// A text or binary column declares more bytes than the message has left.
    #[error(
        "{message}: {role} column {column} says {declared} bytes but {remaining} remain (offset {offset})"
    )]
    DatumTooLong {
        /// The message kind.
        message: &'static str,
        /// The tuple the column is in.
        role: TupleRole,
        /// 0-based column index.
        column: u16,
        /// The length the column declared.
        declared: u32,
        /// Bytes left after the length field.
        remaining: usize,
        /// Offset of the column's value (just after its length).
        offset: usize,
    },

    /// A NUL-terminated string has no NUL before the end of the message.
    #[error("{message}: {field} has no terminating NUL byte (offset {offset})")]
    UnterminatedString {
        /// The message kind.
        message: &'static str,
        /// The string field.
        field: Field,
        /// Offset where the string starts.
        offset: usize,
    },

    /// A string field (a name or a prefix) is not valid UTF-8.
    #[error(
        "{message}: {field} is not valid UTF-8 (invalid byte at offset {})",
        offset.saturating_add(*valid_up_to)
    )]
    InvalidUtf8 {
        /// The message kind.
        message: &'static str,
        /// The string field.
        field: Field,
        /// Offset where the string starts.
        offset: usize,
        /// Length of the valid UTF-8 prefix of the string.
        valid_up_to: usize,
    },

    /// A byte that selects one of a few fixed meanings has another value.
    #[error("{message}: {field} has unexpected value {} (0x{value:02x}); expected {expected} (offset {offset})", show_byte(*value))]
    UnexpectedByte {
        /// The message kind.
        message: &'static str,
        /// The field holding the byte.
        field: Field,
        /// The byte found.
        value: u8,
        /// What the protocol allows there, for the message.
        expected: &'static str,
        /// Offset of the byte.
        offset: usize,
    },

    /// Bytes are left over after a complete message.
    #[error("{message}: {count} trailing bytes after a complete message (offset {offset})")]
    TrailingBytes {
        /// The message kind.
        message: &'static str,
        /// How many bytes are left over.
        count: usize,
        /// Offset of the first left-over byte.
        offset: usize,
    },

    /// [`Datum::as_str`](super::Datum::as_str) on a text datum that is not valid UTF-8.
    #[error("text datum is not valid UTF-8 (invalid byte at index {valid_up_to} of the value)")]
    DatumNotUtf8 {
        /// Length of the valid UTF-8 prefix of the value.
        valid_up_to: usize,
    },

    /// [`Datum::as_str`](super::Datum::as_str) on a datum that has no text to give.
    #[error("datum is {kind}, not text")]
    DatumNotText {
        /// `"an unchanged TOAST value"` or `"binary"`.
        kind: &'static str,
    },

    /// A change names a relation id for which no Relation message has been seen.
    #[error(
        "relation id {relation_id} is unknown: no Relation message for it has been received on this stream"
    )]
    UnknownRelation {
        /// The relation id looked up.
        relation_id: u32,
    },

    /// A tuple has a different number of columns than its relation's latest Relation message.
    #[error(
        "relation {namespace}.{name} (id {relation_id}) has {expected} columns but the tuple has {actual}"
    )]
    ColumnCountMismatch {
        /// The relation id.
        relation_id: u32,
        /// The relation's schema.
        namespace: String,
        /// The relation's name.
        name: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Columns in the tuple.
        actual: usize,
    },
}

/// Render a byte as a character when it is printable ASCII, so tags read as `'X'`.
fn show_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("'{}'", char::from(byte))
    } else {
        format!("{byte}")
    }
}
