//! Throughput of `decode_message` over a realistic pgoutput stream.
//!
//! The stream is 1,000,000 messages: transactions of one Begin, eight changes and one Commit,
//! where the changes are Inserts and Updates of a 20-column `contacts` row in text format
//! (about a quarter of the Updates leave a TOASTed `notes` column unchanged). All payloads
//! live in one buffer and are handed to the decoder as `Bytes` slices of it, as frames cut
//! from a network read buffer would be. The best of five passes is reported.
//!
//! Run with `cargo bench --bench decode`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use leadsync::decode::{LogicalMessage, decode_message};

const MESSAGES: usize = 1_000_000;
const CHANGES_PER_TRANSACTION: usize = 8;
const RUNS: usize = 5;
const CONTACTS_RELATION_ID: u32 = 16391;

/// Deterministic pseudo-random numbers (xorshift64*), so every run decodes the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
        let len = u64::try_from(choices.len()).expect("small slice");
        let index = usize::try_from(self.next() % len).expect("small index");
        choices[index]
    }
}

const FIRST: &[&str] = &[
    "Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Donald", "Margaret",
];
const LAST: &[&str] = &[
    "Lovelace", "Hopper", "Turing", "Liskov", "Dijkstra", "Allen", "Knuth", "Hamilton",
];
const COMPANY: &[&str] = &[
    "Analytical Engines Ltd",
    "Harvard Mark I",
    "Bletchley Park",
    "CLU Systems",
];
const TITLE: &[&str] = &[
    "CTO",
    "VP Engineering",
    "Head of Procurement",
    "Software Architect",
];
const CITY: &[&str] = &[
    "London",
    "Arlington",
    "Cambridge",
    "Boston",
    "Eindhoven",
    "Palo Alto",
];
const STATUS: &[&str] = &["new", "contacted", "qualified", "customer", "churned"];
const SOURCE: &[&str] = &["web", "referral", "event", "cold-call", "partner"];

/// The 20 text columns of one `contacts` row; `None` is SQL NULL, `Some("")` never occurs.
fn contact_row(rng: &mut Rng, id: u64) -> Vec<Option<String>> {
    let first = rng.pick(FIRST);
    let last = rng.pick(LAST);
    let has_phone = rng.next() % 4 != 0;
    vec![
        Some(id.to_string()),
        Some(first.to_owned()),
        Some(last.to_owned()),
        Some(format!(
            "{}.{}{}@example.com",
            first.to_lowercase(),
            last.to_lowercase(),
            id % 97
        )),
        has_phone.then(|| format!("+1 555 {:04}", rng.next() % 10_000)),
        Some(rng.pick(COMPANY).to_owned()),
        Some(rng.pick(TITLE).to_owned()),
        Some(format!("{} Main Street", rng.next() % 2000)),
        Some(rng.pick(CITY).to_owned()),
        Some("MA".to_owned()),
        Some(format!("{:05}", rng.next() % 100_000)),
        Some("US".to_owned()),
        Some(rng.pick(SOURCE).to_owned()),
        Some(rng.pick(STATUS).to_owned()),
        Some((rng.next() % 500).to_string()),
        Some("2024-03-14 15:09:26.535897+00".to_owned()),
        Some("2025-11-02 08:41:10.000001+00".to_owned()),
        Some("Met at the spring conference; wants a demo of the reporting module.".to_owned()),
        (rng.next() % 3 == 0).then(|| "{vip,renewal}".to_owned()),
        Some((rng.next() % 100).to_string()),
    ]
}

fn put_tuple(out: &mut Vec<u8>, row: &[Option<String>], unchanged_toast_column: Option<usize>) {
    let count = u16::try_from(row.len()).expect("20 columns");
    out.extend_from_slice(&count.to_be_bytes());
    for (index, value) in row.iter().enumerate() {
        match value {
            _ if unchanged_toast_column == Some(index) => out.push(b'u'),
            None => out.push(b'n'),
            Some(text) => {
                out.push(b't');
                let len = u32::try_from(text.len()).expect("short text");
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// The whole stream in one buffer, plus the byte range of each message in it.
fn build_stream() -> (Bytes, Vec<(usize, usize)>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::with_capacity(MESSAGES * 330);
    let mut ranges = Vec::with_capacity(MESSAGES);
    let mut lsn: u64 = 0x16_B374_D848;
    let mut commit_time: i64 = 0x0003_0417_ddcd_6d92;
    let mut xid: u32 = 1000;
    let mut next_id: u64 = 1;
    while ranges.len() < MESSAGES {
        let final_lsn = lsn + 4096;
        let mut push = |buf: &mut Vec<u8>, write: &dyn Fn(&mut Vec<u8>)| {
            let start = buf.len();
            write(buf);
            ranges.push((start, buf.len()));
        };
        push(&mut buf, &|out| {
            out.push(b'B');
            out.extend_from_slice(&final_lsn.to_be_bytes());
            out.extend_from_slice(&commit_time.to_be_bytes());
            out.extend_from_slice(&xid.to_be_bytes());
        });
        for _ in 0..CHANGES_PER_TRANSACTION {
            let is_update = next_id > 100 && rng.next() % 2 == 0;
            let id = if is_update {
                1 + rng.next() % (next_id - 1)
            } else {
                next_id += 1;
                next_id - 1
            };
            let row = contact_row(&mut rng, id);
            let unchanged_notes = (is_update && rng.next() % 4 == 0).then_some(17);
            push(&mut buf, &|out| {
                out.push(if is_update { b'U' } else { b'I' });
                out.extend_from_slice(&CONTACTS_RELATION_ID.to_be_bytes());
                out.push(b'N');
                put_tuple(out, &row, unchanged_notes);
            });
        }
        push(&mut buf, &|out| {
            out.push(b'C');
            out.push(0);
            out.extend_from_slice(&final_lsn.to_be_bytes());
            out.extend_from_slice(&(final_lsn + 48).to_be_bytes());
            out.extend_from_slice(&commit_time.to_be_bytes());
        });
        lsn = final_lsn + 48;
        commit_time += 1_750;
        xid = xid.wrapping_add(1);
    }
    ranges.truncate(MESSAGES);
    (Bytes::from(buf), ranges)
}

/// Decode every message once; returns a value that depends on every result.
fn decode_all(frames: &[Bytes]) -> usize {
    let mut columns = 0;
    for frame in frames {
        match decode_message(black_box(frame)) {
            Ok(LogicalMessage::Insert(m)) => columns += m.new.len(),
            Ok(LogicalMessage::Update(m)) => columns += m.new.len(),
            Ok(_) => columns += 1,
            Err(e) => panic!("bench stream must decode: {e}"),
        }
    }
    columns
}

fn main() {
    let (buf, ranges) = build_stream();
    let frames: Vec<Bytes> = ranges.iter().map(|&(s, e)| buf.slice(s..e)).collect();
    let payload_bytes: usize = frames.iter().map(Bytes::len).sum();

    let mut best = Duration::MAX;
    let mut checksum = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        checksum = black_box(decode_all(&frames));
        best = best.min(start.elapsed());
    }

    let seconds = best.as_secs_f64();
    let count = frames.len();
    println!(
        "decoded {count} messages in {seconds:.3} s = {:.0} msgs/s, {:.1} MB/s \
         (best of {RUNS}; {:.1} MB of payload, {:.0} bytes/message; checksum {checksum})",
        count as f64 / seconds,
        payload_bytes as f64 / 1e6 / seconds,
        payload_bytes as f64 / 1e6,
        payload_bytes as f64 / count as f64,
    );
}
