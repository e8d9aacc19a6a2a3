//! PostgreSQL timestamps as PostgreSQL holds them: microseconds since 2000-01-01 00:00:00,
//! with `infinity` and `-infinity`.
//!
//! A legacy row may hold any value its column allows: `'infinity'`, a date in 4713 BC or in
//! the year 200000. `chrono` holds none of the first two kinds and not all of the last, so
//! the legacy timestamps leadsync carries are [`Timestamp`]s: every value PostgreSQL can
//! store reads, compares, projects and writes back unchanged, in text (pgoutput), in binary
//! (queries, `COPY`) and whether the column is `timestamp` or `timestamptz` (a `timestamptz`
//! is the same count of microseconds, in UTC).

use std::fmt;

use bytes::BytesMut;
use chrono::NaiveDateTime;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, accepts, to_sql_checked};

/// Microseconds in a day.
const DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i64 = 10_957;
/// The lowest timestamp PostgreSQL stores: 4714-11-24 00:00:00 BC.
const MIN_MICROS: i64 = -211_813_488_000_000_000;
/// One past the highest timestamp PostgreSQL stores (294277-01-01 00:00:00).
const END_MICROS: i64 = 9_223_371_331_200_000_000;

/// A `timestamp` (or a `timestamptz`, in UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// `infinity`: later than every other value.
    pub const INFINITY: Timestamp = Timestamp(i64::MAX);
    /// `-infinity`: earlier than every other value.
    pub const NEG_INFINITY: Timestamp = Timestamp(i64::MIN);

    /// Whether it is `infinity` or `-infinity`.
    pub fn is_infinite(self) -> bool {
        self == Timestamp::INFINITY || self == Timestamp::NEG_INFINITY
    }

    /// Whether PostgreSQL can store it (an infinity, or a date from 4714 BC to 294276 AD).
    pub fn is_valid(self) -> bool {
        self.is_infinite() || (MIN_MICROS..END_MICROS).contains(&self.0)
    }

    /// The same instant `micros` earlier; an infinity stays what it is, as in SQL.
    pub fn minus_micros(self, micros: i64) -> Timestamp {
        if self.is_infinite() {
            self
        } else {
            Timestamp(self.0.saturating_sub(micros))
        }
    }

    /// Reads PostgreSQL's ISO text output of a `timestamp` or `timestamptz`
    /// (`2024-01-02 03:04:05.123456`, `…+05:30`, `… BC`, `infinity`), as pgoutput sends it
    /// under `DateStyle = ISO`. A time zone offset is applied, giving UTC.
    pub fn parse(text: &str) -> Result<Timestamp, String> {
        let bad = || {
            format!("`{text}` is not a timestamp in PostgreSQL's ISO format (is DateStyle ISO?)")
        };
        match text {
            "infinity" | "+infinity" => return Ok(Timestamp::INFINITY),
            "-infinity" => return Ok(Timestamp::NEG_INFINITY),
            _ => {}
        }
        let (text_core, bc) = match text.strip_suffix(" BC") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        let (date, time) = text_core.split_once([' ', 'T']).ok_or_else(bad)?;
        let mut date_parts = date.splitn(3, '-');
        let year: i64 = digits(date_parts.next()).ok_or_else(bad)?;
        let month: i64 = digits(date_parts.next()).ok_or_else(bad)?;
        let day: i64 = digits(date_parts.next()).ok_or_else(bad)?;
        // The time, then an optional offset starting with its sign.
        let (clock, offset) = match time.find(['+', '-']) {
            Some(at) => (&time[..at], Some(&time[at..])),
            None => (time, None),
        };
        let (hms, fraction) = match clock.split_once('.') {
            Some((hms, fraction)) => (hms, Some(fraction)),
            None => (clock, None),
        };
        let mut hms_parts = hms.splitn(3, ':');
        let hour: i64 = digits(hms_parts.next()).ok_or_else(bad)?;
        let minute: i64 = digits(hms_parts.next()).ok_or_else(bad)?;
        let second: i64 = digits(hms_parts.next()).ok_or_else(bad)?;
        let micros: i64 = match fraction {
            None => 0,
            Some(f) if !f.is_empty() && f.len() <= 6 => {
                let padded = format!("{f:0<6}");
                digits(Some(&padded)).ok_or_else(bad)?
            }
            Some(_) => return Err(bad()),
        };
        let offset_seconds = match offset {
            None => 0,
            Some(o) => parse_offset(o).ok_or_else(bad)?,
        };
        if year < 1
            || !(1..=12).contains(&month)
            || day < 1
            || day > days_in_month(if bc { 1 - year } else { year }, month)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return Err(bad());
        }
        let astronomical_year = if bc { 1 - year } else { year };
        let days = days_from_civil(astronomical_year, month, day) - PG_EPOCH_DAYS;
        let seconds = hour * 3_600 + minute * 60 + second - offset_seconds;
        let value = days
            .checked_mul(DAY)
            .and_then(|d| d.checked_add(seconds * 1_000_000 + micros))
            .map(Timestamp)
            .ok_or_else(bad)?;
        if !value.is_valid() || value.is_infinite() {
            return Err(format!(
                "`{text}` is outside the range of PostgreSQL timestamps"
            ));
        }
        Ok(value)
    }
}

impl From<NaiveDateTime> for Timestamp {
    fn from(t: NaiveDateTime) -> Timestamp {
        let unix = t.and_utc().timestamp_micros();
        Timestamp(unix - PG_EPOCH_DAYS * DAY)
    }
}

/// PostgreSQL's ISO output: `2024-01-02 03:04:05.5`, `0044-03-15 12:00:00 BC`, `infinity`.
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Timestamp::INFINITY {
            return f.write_str("infinity");
        }
        if *self == Timestamp::NEG_INFINITY {
            return f.write_str("-infinity");
        }
        let days = self.0.div_euclid(DAY) + PG_EPOCH_DAYS;
        let in_day = self.0.rem_euclid(DAY);
        let (year, month, day) = civil_from_days(days);
        let (shown_year, era) = if year <= 0 {
            (1 - year, " BC")
        } else {
            (year, "")
        };
        let seconds = in_day / 1_000_000;
        write!(
            f,
            "{shown_year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
            seconds / 3_600,
            seconds / 60 % 60,
            seconds % 60
        )?;
        let micros = in_day % 1_000_000;
        if micros != 0 {
            let fraction = format!("{micros:06}");
            write!(f, ".{}", fraction.trim_end_matches('0'))?;
        }
        f.write_str(era)
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'a> FromSql<'a> for Timestamp {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> Result<Timestamp, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Timestamp(postgres_protocol::types::timestamp_from_sql(
            raw,
        )?))
    }

    accepts!(TIMESTAMP, TIMESTAMPTZ);
}

impl ToSql for Timestamp {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        postgres_protocol::types::timestamp_to_sql(self.0, out);
        Ok(IsNull::No)
    }

    accepts!(TIMESTAMP, TIMESTAMPTZ);
    to_sql_checked!();
}

/// An unsigned decimal number of at most 18 digits.
fn digits(text: Option<&str>) -> Option<i64> {
    let text = text?;
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `+HH`, `+HH:MM` or `+HH:MM:SS` (or with `-`), in seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut parts = text[1..].split(':');
    let hours = digits(parts.next())?;
    let minutes = parts.next().map_or(Some(0), |m| digits(Some(m)))?;
    let seconds = parts.next().map_or(Some(0), |s| digits(Some(s)))?;
    if parts.next().is_some() || hours > 15 || minutes > 59 || seconds > 59 {
        return None;
    }
    Some(sign * (hours * 3_600 + minutes * 60 + seconds))
}

fn is_leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year 0 = 1 BC).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01, as (year, month, day); year 0 is 1 BC.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    #[test]
    fn reads_what_postgresql_prints() {
        assert_eq!(ts("2000-01-01 00:00:00"), Timestamp(0));
        assert_eq!(ts("2000-01-01 00:00:00.000001"), Timestamp(1));
        assert_eq!(ts("1999-12-31 23:59:59.5"), Timestamp(-500_000));
        assert_eq!(ts("infinity"), Timestamp::INFINITY);
        assert_eq!(ts("-infinity"), Timestamp::NEG_INFINITY);
        // timestamptz as a UTC session prints it, and with other offsets.
        assert_eq!(
            ts("2022-03-13 04:41:48.077686+00"),
            ts("2022-03-13 04:41:48.077686")
        );
        assert_eq!(ts("2022-03-13 10:11:48+05:30"), ts("2022-03-13 04:41:48"));
        assert_eq!(ts("2022-03-12 23:41:48-05"), ts("2022-03-13 04:41:48"));
        assert_eq!(ts("2022-03-13T04:41:48"), ts("2022-03-13 04:41:48"));
        // PostgreSQL's range ends.
        assert_eq!(ts("4714-11-24 00:00:00 BC"), Timestamp(MIN_MICROS));
        assert_eq!(
            ts("294276-12-31 23:59:59.999999"),
            Timestamp(END_MICROS - 1)
        );
        assert_eq!(ts("4714-11-24 00:00:00+00 BC"), Timestamp(MIN_MICROS));
    }

    #[test]
    fn refuses_what_is_not_a_timestamp() {
        for text in [
            "",
            "2024-01-02",
            "01/02/2024 03:04:05",
            "Tue Jan 02 03:04:05 2024",
            "2024-02-30 00:00:00",
            "2023-02-29 00:00:00",
            "2024-13-01 00:00:00",
            "2024-01-01 24:00:00",
            "2024-01-01 00:00:00.1234567",
            "2024-01-01 00:00:00.",
            "2024-01-01 00:00:00+",
            "0000-01-01 00:00:00",
            "4714-11-23 23:59:59 BC",
            "294277-01-01 00:00:00",
            "2024-01-01 00:00:00 AD",
        ] {
            assert!(Timestamp::parse(text).is_err(), "{text:?} was read");
        }
        assert!(ts("2024-02-29 00:00:00") > ts("2024-02-28 23:59:59.999999"));
    }

    #[test]
    fn prints_as_postgresql_does() {
        for text in [
            "2000-01-01 00:00:00",
            "1999-12-31 23:59:59.5",
            "2024-02-29 12:34:56.000001",
            "0001-01-01 00:00:00",
            "0001-12-31 23:59:59 BC",
            "4714-11-24 00:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "infinity",
            "-infinity",
        ] {
            assert_eq!(ts(text).to_string(), text);
        }
    }

    #[test]
    fn agrees_with_chrono_where_chrono_reaches() {
        let t = NaiveDateTime::parse_from_str("2024-01-02 03:04:05.123456", "%Y-%m-%d %H:%M:%S%.f")
            .unwrap();
        assert_eq!(Timestamp::from(t), ts("2024-01-02 03:04:05.123456"));
    }

    #[test]
    fn infinities_stay_infinite_in_arithmetic() {
        assert_eq!(Timestamp::INFINITY.minus_micros(DAY), Timestamp::INFINITY);
        assert_eq!(
            Timestamp::NEG_INFINITY.minus_micros(DAY),
            Timestamp::NEG_INFINITY
        );
        assert_eq!(
            ts("2024-01-02 00:00:00").minus_micros(DAY),
            ts("2024-01-01 00:00:00")
        );
        assert!(!ts("4714-11-24 00:00:00 BC").minus_micros(DAY).is_valid());
    }

    #[test]
    fn binary_form_is_postgresqls() {
        let mut out = BytesMut::new();
        Timestamp::INFINITY
            .to_sql(&Type::TIMESTAMP, &mut out)
            .unwrap();
        assert_eq!(&out[..], &i64::MAX.to_be_bytes());
        let back = Timestamp::from_sql(&Type::TIMESTAMPTZ, &(-5i64).to_be_bytes()).unwrap();
        assert_eq!(back, Timestamp(-5));
    }

    proptest! {
        #[test]
        fn every_valid_value_prints_and_reads_back(micros in MIN_MICROS..END_MICROS) {
            let t = Timestamp(micros);
            prop_assert_eq!(Timestamp::parse(&t.to_string()), Ok(t));
        }

        #[test]
        fn calendar_days_round_trip(days in -3_000_000i64..100_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
