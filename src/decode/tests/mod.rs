//! Tests of the pgoutput decoder: captured PostgreSQL 15 bytes, hand-built malformed input,
//! and property tests against a small test-only encoder.

mod encoder;
mod fixtures;
mod malformed;
mod properties;

use bytes::Bytes;

use super::{Datum, LogicalMessage, decode_message};

/// The messages captured from PostgreSQL 15; `fixtures/pg15.hex` says how.
const PG15: &str = include_str!("../fixtures/pg15.hex");

/// Hex to bytes; the fixtures are trusted test data, so bad hex is a test bug.
fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len() % 2 == 0, "odd-length hex: {hex}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("fixture hex"))
        .collect()
}

/// Every captured message, in stream order, with its label.
fn all_fixtures() -> Vec<(&'static str, Bytes)> {
    PG15.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (label, hex) = line.split_once(' ').expect("`label hex` line");
            (label, Bytes::from(unhex(hex.trim())))
        })
        .collect()
}

/// The captured bytes labelled `label`.
fn fixture(label: &str) -> Bytes {
    all_fixtures()
        .into_iter()
        .find(|(l, _)| *l == label)
        .unwrap_or_else(|| panic!("no fixture {label}"))
        .1
}

/// Decode the fixture `label`, failing the test on an error.
fn decode_fixture(label: &str) -> LogicalMessage {
    decode_message(&fixture(label)).unwrap_or_else(|e| panic!("{label}: {e}"))
}

/// A text datum.
fn t(text: &str) -> Datum {
    Datum::Text(Bytes::copy_from_slice(text.as_bytes()))
}

/// A binary datum.
fn b(bytes: &[u8]) -> Datum {
    Datum::Binary(Bytes::copy_from_slice(bytes))
}
