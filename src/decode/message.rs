//! The pgoutput protocol version 1 messages as Rust values.
//!
//! One struct per message kind, gathered in [`LogicalMessage`]. Field meanings follow the
//! PostgreSQL "Logical Replication Message Formats" reference; LSNs are [`Lsn`] and
//! timestamps are kept as the server's raw microseconds since 2000-01-01 so that decoding
//! never has to decide about time zones or out-of-range dates.

use bytes::Bytes;

use super::tuple::{OldTuple, Tuple};
use crate::Lsn;

/// One decoded pgoutput message (the payload of one XLogData frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `B`: a transaction starts.
    Begin(Begin),
    /// `C`: a transaction ends.
    Commit(Commit),
    /// `O`: the transaction was replayed from another node (replication origin).
    Origin(Origin),
    /// `R`: the layout of a table, sent before its first change and after any layout change.
    Relation(Relation),
    /// `Y`: a non-built-in type used by a column (e.g. an enum), sent before the Relation.
    Type(TypeMessage),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: tables were truncated.
    Truncate(Truncate),
    /// `M`: a message emitted with `pg_logical_emit_message`.
    Message(DecodingMessage),
}

impl LogicalMessage {
    /// The message kind's name, as used in error messages and logs (`"Insert"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            LogicalMessage::Begin(_) => "Begin",
            LogicalMessage::Commit(_) => "Commit",
            LogicalMessage::Origin(_) => "Origin",
            LogicalMessage::Relation(_) => "Relation",
            LogicalMessage::Type(_) => "Type",
            LogicalMessage::Insert(_) => "Insert",
            LogicalMessage::Update(_) => "Update",
            LogicalMessage::Delete(_) => "Delete",
            LogicalMessage::Truncate(_) => "Truncate",
            LogicalMessage::Message(_) => "Message",
        }
    }

    /// The relation a Relation, Insert, Update or Delete message is about.
    ///
    /// `None` for the other kinds; a Truncate can name several, see [`Truncate::relation_ids`].
    pub fn relation_id(&self) -> Option<u32> {
        match self {
            LogicalMessage::Relation(m) => Some(m.id),
            LogicalMessage::Insert(m) => Some(m.relation_id),
            LogicalMessage::Update(m) => Some(m.relation_id),
            LogicalMessage::Delete(m) => Some(m.relation_id),
            _ => None,
        }
    }
}

/// `B`: the start of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time, in microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C`: the end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; unused by the server so far (always 0), kept as sent.
    pub flags: u8,
    /// LSN of the commit record (equals the Begin's `final_lsn`).
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to acknowledge once the transaction is
    /// applied.
    pub end_lsn: Lsn,
    /// Commit time, in microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time_micros: i64,
}

/// `O`: the transaction carries a replication origin (it was replayed from elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// Name of the origin.
    pub name: String,
}

/// The replica identity of a table: what its old tuples (`K`/`O`) contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key, if any.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The identity for a `relreplident` byte, if it is one of `d`, `n`, `f`, `i`.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The `relreplident` byte.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// `R`: the current layout of a published table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Relation id (the table's OID); changes refer to the table by it.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// What old tuples of this table contain.
    pub replica_identity: ReplicaIdentity,
    /// The columns, in the order tuples list them (dropped and generated columns are left out
    /// by the server).
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// Index (0-based) of the column called `name`, if any.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Part of the replica identity key (flag bit 1).
    pub is_key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's type.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`); -1 when the type has none.
    pub type_modifier: i32,
}

/// `Y`: the name of a type that is not built in, so a consumer can map the OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// The type's OID.
    pub id: u32,
    /// Schema name.
    pub namespace: String,
    /// Type name.
    pub name: String,
}

/// `I`: a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The table.
    pub relation_id: u32,
    /// The inserted row.
    pub new: Tuple,
}

/// `U`: a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The table.
    pub relation_id: u32,
    /// The old key (`K`, sent when the key changed) or old row (`O`, REPLICA IDENTITY FULL);
    /// `None` when the key did not change.
    pub old: Option<OldTuple>,
    /// The row after the update; unchanged TOASTed columns are [`Datum::UnchangedToast`](super::Datum::UnchangedToast).
    pub new: Tuple,
}

/// `D`: a removed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The table.
    pub relation_id: u32,
    /// The old key (`K`) or the whole old row (`O`).
    pub old: OldTuple,
}

/// `T`: one TRUNCATE statement over one or more tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `CASCADE` was given (option bit 1).
    pub cascade: bool,
    /// `RESTART IDENTITY` was given (option bit 2).
    pub restart_identity: bool,
    /// The truncated tables.
    pub relation_ids: Vec<u32>,
}

/// `M`: a logical decoding message from `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodingMessage {
    /// Emitted inside a transaction and delivered between its Begin and Commit (flag 1);
    /// otherwise delivered on its own as soon as it is decoded.
    pub transactional: bool,
    /// LSN of the message: the server sends the *end* of the message's WAL record, so a
    /// transactional message emitted right before COMMIT carries the commit LSN.
    pub lsn: Lsn,
    /// The prefix the emitter chose, to tell message families apart.
    pub prefix: String,
    /// The content, as given (arbitrary bytes).
    pub content: Bytes,
}
