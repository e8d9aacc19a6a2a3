//! A bounds-checked big-endian cursor over one message.
//!
//! Every read checks the remaining length first and turns a shortfall into a
//! [`DecodeError`] that carries the message kind, the field and the offset, so no input can
//! make the decoder panic. Byte strings are returned as [`Bytes`] slices of the payload, which
//! share its allocation instead of copying the column values.

use bytes::Bytes;

use super::error::{DecodeError, Field, TupleRole};
use crate::Lsn;

/// Cursor over one pgoutput message; `pos` counts from the tag byte.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// A cursor positioned just after the tag byte.
    pub(crate) fn after_tag(buf: &'a Bytes, message: &'static str) -> Self {
        Reader {
            buf,
            pos: 1,
            message,
        }
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Offset of the next byte to read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Take the next `N` bytes as an array.
    fn array<const N: usize>(&mut self, field: Field) -> Result<[u8; N], DecodeError> {
        let slice = self
            .pos
            .checked_add(N)
            .and_then(|end| self.buf.get(self.pos..end));
        match slice.and_then(|s| <[u8; N]>::try_from(s).ok()) {
            Some(array) => {
                self.pos = self.pos.saturating_add(N);
                Ok(array)
            }
            None => Err(DecodeError::Truncated {
                message: self.message,
                field,
                needed: N,
                remaining: self.remaining(),
                offset: self.pos,
            }),
        }
    }

    pub(crate) fn u8(&mut self, field: Field) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, field: Field) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: Field) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: Field) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, field: Field) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    pub(crate) fn lsn(&mut self, field: Field) -> Result<Lsn, DecodeError> {
        self.array(field).map(u64::from_be_bytes).map(Lsn)
    }

    /// An error for a byte at `offset` that is not one of the allowed values.
    pub(crate) fn unexpected(
        &self,
        field: Field,
        value: u8,
        expected: &'static str,
        offset: usize,
    ) -> DecodeError {
        DecodeError::UnexpectedByte {
            message: self.message,
            field,
            value,
            expected,
            offset,
        }
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed but not returned.
    pub(crate) fn cstr(&mut self, field: Field) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                message: self.message,
                field,
                offset: start,
            });
        };
        let raw = rest.get(..len).unwrap_or_default();
        let text = std::str::from_utf8(raw).map_err(|e| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
            offset: start,
            valid_up_to: e.valid_up_to(),
        })?;
        // The NUL was found inside the buffer, so this stays within its length.
        self.pos = start.saturating_add(len).saturating_add(1);
        Ok(text.to_owned())
    }

    /// `len` bytes as a slice sharing the payload's allocation.
    pub(crate) fn bytes(&mut self, len: usize, field: Field) -> Result<Bytes, DecodeError> {
        match self.pos.checked_add(len) {
            Some(end) if end <= self.buf.len() => {
                let slice = self.buf.slice(self.pos..end);
                self.pos = end;
                Ok(slice)
            }
            _ => Err(DecodeError::Truncated {
                message: self.message,
                field,
                needed: len,
                remaining: self.remaining(),
                offset: self.pos,
            }),
        }
    }

    /// The value of a `t`/`b` column whose length field has just been read.
    pub(crate) fn datum_value(
        &mut self,
        declared: u32,
        role: TupleRole,
        column: u16,
    ) -> Result<Bytes, DecodeError> {
        // A u32 always fits in usize on the 32- and 64-bit targets leadsync builds for; the
        // fallback only makes an impossible conversion failure read as "too long".
        let len = usize::try_from(declared).unwrap_or(usize::MAX);
        if len > self.remaining() {
            return Err(DecodeError::DatumTooLong {
                message: self.message,
                role,
                column,
                declared,
                remaining: self.remaining(),
                offset: self.pos,
            });
        }
        self.bytes(len, Field::DatumValue(role, column))
    }

    /// Succeeds only when the whole message has been consumed.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
                offset: self.pos,
            }),
        }
    }
}
