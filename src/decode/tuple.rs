//! Row images carried by Insert, Update and Delete: [`Tuple`], [`Datum`] and [`OldTuple`].
//!
//! A tuple on the wire is a u16 column count followed by one datum per column: `n` (NULL),
//! `u` (an unchanged TOASTed value the server did not resend), `t` + u32 length + text, or
//! `b` + u32 length + binary. Values stay [`Bytes`] slices of the message payload; text is
//! only checked for UTF-8 when a caller asks for it with [`Datum::as_str`].

use bytes::Bytes;

use super::error::{DecodeError, Field, TupleRole};
use super::reader::Reader;

/// One column value of a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL (`n`). In an old key tuple (`K`) this also stands for every non-key column,
    /// which the server does not send; use the Relation's key flags to tell them apart.
    Null,
    /// A TOASTed value that the change did not modify and the server did not resend (`u`).
    /// The value is whatever the column held before the change.
    UnchangedToast,
    /// The value in the type's text output format (`t`).
    Text(Bytes),
    /// The value in the type's binary send format (`b`); only sent when the `binary`
    /// pgoutput option is on.
    Binary(Bytes),
}

impl Datum {
    /// The value as text: `Ok(None)` for NULL, `Ok(Some(..))` for a UTF-8 text datum.
    ///
    /// An unchanged TOAST value and a binary datum are errors rather than `None`, so that a
    /// caller can never mistake them for NULL; an unchanged TOAST value has to be taken from
    /// the old row, a binary one decoded by type.
    pub fn as_str(&self) -> Result<Option<&str>, DecodeError> {
        match self {
            Datum::Null => Ok(None),
            Datum::Text(bytes) => {
                std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|e| DecodeError::DatumNotUtf8 {
                        valid_up_to: e.valid_up_to(),
                    })
            }
            Datum::UnchangedToast => Err(DecodeError::DatumNotText {
                kind: "an unchanged TOAST value",
            }),
            Datum::Binary(_) => Err(DecodeError::DatumNotText { kind: "binary" }),
        }
    }

    /// True for [`Datum::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Datum::Null)
    }

    /// The raw value bytes of a text or binary datum; `None` for NULL and unchanged TOAST.
    pub fn raw(&self) -> Option<&Bytes> {
        match self {
            Datum::Text(bytes) | Datum::Binary(bytes) => Some(bytes),
            Datum::Null | Datum::UnchangedToast => None,
        }
    }
}

/// A row image: one [`Datum`] per column, in the column order of the relation's latest
/// Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Datum>);

impl Tuple {
    /// Number of columns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The datum of column `index` (0-based), if there is one.
    pub fn get(&self, index: usize) -> Option<&Datum> {
        self.0.get(index)
    }

    /// The datums in column order.
    pub fn iter(&self) -> std::slice::Iter<'_, Datum> {
        self.0.iter()
    }
}

/// The old row image of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica-identity key columns are set; the others are [`Datum::Null`].
    Key(Tuple),
    /// `O`: the whole old row (REPLICA IDENTITY FULL), TOASTed values included.
    Full(Tuple),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &Tuple {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// Read a tuple (column count and datums) at the reader's position.
pub(crate) fn read_tuple(r: &mut Reader<'_>, role: TupleRole) -> Result<Tuple, DecodeError> {
    let count = r.u16(Field::TupleColumnCount(role))?;
    // Each datum takes at least its kind byte, so a count above the bytes left is a lie that
    // must not be allowed to reserve memory before the bytes run out.
    let mut datums = Vec::with_capacity(usize::from(count).min(r.remaining()));
    for column in 0..count {
        let kind_offset = r.offset();
        let kind = r.u8(Field::DatumKind(role, column))?;
        let datum = match kind {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => {
                let len = r.u32(Field::DatumLength(role, column))?;
                Datum::Text(r.datum_value(len, role, column)?)
            }
            b'b' => {
                let len = r.u32(Field::DatumLength(role, column))?;
                Datum::Binary(r.datum_value(len, role, column)?)
            }
            other => {
                return Err(r.unexpected(
                    Field::DatumKind(role, column),
                    other,
                    "'n', 'u', 't' or 'b'",
                    kind_offset,
                ));
            }
        };
        datums.push(datum);
    }
    Ok(Tuple(datums))
}
