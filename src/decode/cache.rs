//! [`RelationCache`]: the latest layout of every table seen on a replication stream.
//!
//! Insert, Update and Delete only carry a relation id and positional datums; the column names
//! and types come from the most recent Relation message for that id. The server resends a
//! Relation whenever the layout may have changed (e.g. `ALTER TABLE ... ADD COLUMN`) before
//! the next change that uses it, so the cache simply replaces the entry each time.

use std::collections::HashMap;

use super::error::DecodeError;
use super::message::{LogicalMessage, Relation};
use super::tuple::Tuple;

/// Relation id → latest [`Relation`] received on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    /// An empty cache, for a new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record the layout carried by a Relation message; other messages are ignored.
    ///
    /// Feed every decoded message through this, in stream order, before looking up the
    /// relation of a change.
    pub fn observe(&mut self, message: &LogicalMessage) {
        if let LogicalMessage::Relation(relation) = message {
            self.insert(relation.clone());
        }
    }

    /// Store `relation`, replacing and returning the previous layout for its id.
    pub fn insert(&mut self, relation: Relation) -> Option<Relation> {
        self.relations.insert(relation.id, relation)
    }

    /// The latest layout of `relation_id`, or [`DecodeError::UnknownRelation`].
    pub fn get(&self, relation_id: u32) -> Result<&Relation, DecodeError> {
        self.relations
            .get(&relation_id)
            .ok_or(DecodeError::UnknownRelation { relation_id })
    }

    /// The layout of `relation_id`, checked against a tuple of a change to it: the tuple must
    /// have exactly one datum per column.
    pub fn get_for_tuple(&self, relation_id: u32, tuple: &Tuple) -> Result<&Relation, DecodeError> {
        let relation = self.get(relation_id)?;
        if relation.columns.len() == tuple.len() {
            Ok(relation)
        } else {
            Err(DecodeError::ColumnCountMismatch {
                relation_id,
                namespace: relation.namespace.clone(),
                name: relation.name.clone(),
                expected: relation.columns.len(),
                actual: tuple.len(),
            })
        }
    }

    /// Forget `relation_id`, returning its layout if it was known.
    pub fn remove(&mut self, relation_id: u32) -> Option<Relation> {
        self.relations.remove(&relation_id)
    }

    /// Number of known relations.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// True when no relation is known.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}
