//! pgoutput (logical replication protocol version 1) decoding: bytes → messages. Pure.
//!
//! [`decode_message`] turns the payload of one XLogData frame into a [`LogicalMessage`];
//! [`RelationCache`] keeps the table layouts that the positional tuples of Insert, Update and
//! Delete refer to. Nothing here does I/O, awaits or reads the clock, and malformed input of
//! any shape yields a [`DecodeError`] that names the message, the field and the byte offset.

mod cache;
mod error;
mod message;
mod parse;
mod reader;
mod tuple;

#[cfg(test)]
mod tests;

pub use cache::RelationCache;
pub use error::{DecodeError, Field, TupleRole};
pub use message::{
    Begin, Commit, DecodingMessage, Delete, Insert, LogicalMessage, Origin, Relation,
    RelationColumn, ReplicaIdentity, Truncate, TypeMessage, Update,
};
pub use parse::decode_message;
pub use tuple::{Datum, OldTuple, Tuple};
