//! Calendar days in a franchise's time zone: the dashboards count an event on the day of its
//! POS time where the franchise is, so a sale at 23:30 in Paris is on that day, not the next
//! UTC day. The IANA database is compiled in, so a day never depends on the host's files.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Day, DomainError, Timestamp};

/// An IANA time zone (`Europe/Paris`, `America/New_York`, `UTC`), validated.
#[derive(Clone)]
pub struct Zone {
    name: String,
    tz: jiff::tz::TimeZone,
}

impl Zone {
    /// The zone called `name`, if the IANA database knows it.
    pub fn parse(name: &str) -> Result<Zone, DomainError> {
        let name = name.trim();
        match jiff::tz::db().get(name) {
            Ok(tz) if !name.is_empty() => Ok(Zone {
                name: name.to_owned(),
                tz,
            }),
            _ => Err(DomainError::invalid_program(format!(
                "time_zone {name:?} is not an IANA time zone name (e.g. Europe/Paris, UTC)"
            ))),
        }
    }

    pub fn utc() -> Zone {
        Zone {
            name: "UTC".to_owned(),
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local calendar day of `at` in this zone, counted like [`Day`] from 1970-01-01.
    pub fn day(&self, at: Timestamp) -> Day {
        self.local(at).day()
    }

    /// The first instant of the local day `day` in this zone (its local midnight, or the
    /// first time after it on a day a clock change skips midnight).
    pub fn start_of(&self, day: Day) -> Timestamp {
        let (y, m, d) = day.ymd();
        let start = i16::try_from(y).ok().and_then(|y| {
            let midnight = jiff::civil::Date::new(y, m as i8, d as i8)
                .ok()?
                .at(0, 0, 0, 0);
            // A midnight a clock change skips is the first instant after it (`compatible`).
            self.tz.to_ambiguous_timestamp(midnight).compatible().ok()
        });
        start.map_or(Timestamp(i64::from(day.0) * 86_400_000), |t| {
            Timestamp(t.as_millisecond())
        })
    }

    /// The wall-clock time of `at` in this zone, as milliseconds since 1970-01-01 00:00 local:
    /// its [`Timestamp::day`] is the local day, its remainder in a day the local time of day.
    pub fn local(&self, at: Timestamp) -> Timestamp {
        let offset_ms = jiff::Timestamp::from_millisecond(at.0)
            .map(|t| i64::from(self.tz.to_offset(t).seconds()) * 1000)
            .unwrap_or(0);
        Timestamp(at.0.saturating_add(offset_ms))
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name == other.name
    }
}

impl Eq for Zone {}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name)
    }
}

impl Default for Zone {
    fn default() -> Zone {
        Zone::utc()
    }
}

impl Serialize for Zone {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Zone, D::Error> {
        let name = String::deserialize(d)?;
        Zone::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl Day {
    /// The day of a calendar date (proleptic Gregorian), if it is one on or after 1970-01-01.
    pub fn from_ymd(y: i32, m: u32, d: u32) -> Option<Day> {
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if m <= 2 { y - 1 } else { y } as i64;
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m as i64 + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        u32::try_from(era * 146_097 + doe - 719_468).ok().map(Day)
    }

    /// The calendar date of this day: (year, month, day of month).
    pub fn ymd(self) -> (i32, u32, u32) {
        let z = self.0 as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
        (y, m, d)
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse_iso(s: &str) -> Option<Day> {
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = s.get(r)?;
            if part.bytes().all(|c| c.is_ascii_digit()) {
                part.parse().ok()
            } else {
                None
            }
        };
        Day::from_ymd(num(0..4)? as i32, num(5..7)?, num(8..10)?)
    }

    /// `YYYY-MM-DD`.
    pub fn iso(self) -> String {
        let (y, m, d) = self.ymd();
        format!("{y:04}-{m:02}-{d:02}")
    }
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates_round_trip() {
        assert_eq!(Day::from_ymd(1970, 1, 1), Some(Day(0)));
        assert_eq!(
            Day::parse_iso("2000-03-01").map(Day::iso).as_deref(),
            Some("2000-03-01")
        );
        for d in (0..40_000).step_by(7) {
            let day = Day(d);
            assert_eq!(Day::parse_iso(&day.iso()), Some(day), "{}", day.iso());
        }
        for bad in [
            "2025-02-29",
            "2025-13-01",
            "2025-1-01",
            "20250101",
            "2025-00-10",
            "1969-12-31",
        ] {
            assert_eq!(Day::parse_iso(bad), None, "{bad}");
        }
        assert!(Day::parse_iso("2024-02-29").is_some());
    }

    #[test]
    fn local_days_follow_the_zone() {
        let paris = Zone::parse("Europe/Paris").expect("known zone");
        // 2026-07-01 22:30 UTC is 2026-07-02 00:30 in Paris (summer time, UTC+2).
        let day = Day::from_ymd(2026, 7, 1).expect("date");
        let at = Timestamp(day.0 as i64 * 86_400_000 + (22 * 60 + 30) * 60_000);
        assert_eq!(Zone::utc().day(at), day);
        assert_eq!(paris.day(at), Day(day.0 + 1));
        let ny = Zone::parse("America/New_York").expect("known zone");
        // 2026-07-02 02:00 UTC is 2026-07-01 22:00 in New York.
        let at = Timestamp((day.0 as i64 + 1) * 86_400_000 + 2 * 3_600_000);
        assert_eq!(ny.day(at), day);
        assert!(Zone::parse("Mars/Olympus").is_err());
        assert!(Zone::parse("").is_err());
    }
}
