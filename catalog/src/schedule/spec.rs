//! When a task runs: a cron expression in an IANA time zone (`croner` + `chrono-tz`), or a fixed
//! interval. Slots are instants in UTC; the next one is always found from the previous
//! **scheduled** slot, never from the wall clock, so a late tick or a restart cannot shift
//! the grid.
//!
//! DST follows croner's documented rules (the Open Cron Pattern Specification, as Vixie cron):
//! at spring-forward a fixed-time job (`0 2 * * *`) runs at the first valid time after the gap,
//! the same day, and a wildcard or step job skips what falls in the gap; at fall-back a
//! fixed-time job runs once (the first pass), a wildcard or step job runs in both passes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration as TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use crate::error::{Error, Result};

/// A parsed `SCHEDULE = '...'`.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// `USING CRON <5 or 6 fields> <time zone>`.
    Cron {
        /// The cron fields as written.
        expression: String,
        /// The zone the fields are read in.
        zone: Tz,
        cron: Box<Cron>,
    },
    /// `<n> SECONDS | MINUTES | HOURS`: every multiple of the interval since the Unix epoch.
    Every(TimeDelta),
}

const HELP: &str = "use 'USING CRON <minute> <hour> <day> <month> <weekday> <IANA zone>' \
                    (e.g. 'USING CRON 0 3 * * * Europe/Stockholm'; an optional leading seconds field) \
                    or '<n> SECONDS | MINUTES | HOURS'";

impl FromStr for Schedule {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let bad = |why: String| Error::invalid(format!("SCHEDULE '{text}': {why}; {HELP}"));
        match words.as_slice() {
            [using, cron, fields @ .., zone]
                if using.eq_ignore_ascii_case("USING") && cron.eq_ignore_ascii_case("CRON") =>
            {
                if fields.len() != 5 && fields.len() != 6 {
                    return Err(bad(format!("expected 5 or 6 cron fields and a time zone, found {}", words.len() - 2)));
                }
                let zone: Tz = zone.parse().map_err(|_| bad(format!("unknown time zone '{zone}'")))?;
                let expression = fields.join(" ");
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .build()
                    .parse(&expression)
                    .map_err(|e| bad(format!("cron '{expression}': {e}")))?;
                Ok(Schedule::Cron { expression, zone, cron: Box::new(cron) })
            }
            [n, unit] => {
                let n: i64 = n.parse().map_err(|_| bad(format!("'{n}' is not a whole number")))?;
                let seconds = match unit.to_ascii_uppercase().trim_end_matches('S') {
                    "SECOND" => 1,
                    "MINUTE" => 60,
                    "HOUR" => 3600,
                    other => return Err(bad(format!("unknown unit '{other}'"))),
                };
                if n <= 0 {
                    return Err(bad("the interval must be positive".into()));
                }
                Ok(Schedule::Every(TimeDelta::seconds(n * seconds)))
            }
            _ => Err(bad("not a schedule".into())),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Cron { expression, zone, .. } => write!(f, "USING CRON {expression} {zone}"),
            Schedule::Every(d) => write!(f, "{} SECONDS", d.num_seconds()),
        }
    }
}

impl Schedule {
    /// The first slot strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { zone, cron, .. } => {
                let local = after.with_timezone(zone);
                cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every(step) => {
                let step = step.num_seconds().max(1);
                let next = (after.timestamp().div_euclid(step) + 1) * step;
                Utc.timestamp_opt(next, 0).single()
            }
        }
    }

    /// The latest slot at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron { zone, cron, .. } => {
                let local = at.with_timezone(zone);
                cron.find_previous_occurrence(&local, true).ok().map(|t| t.with_timezone(&Utc))
            }
            Schedule::Every(step) => {
                let step = step.num_seconds().max(1);
                Utc.timestamp_opt(at.timestamp().div_euclid(step) * step, 0).single()
            }
        }
    }

    /// Every slot in `(after, until]`, oldest first, at most `limit` of them (the oldest).
    pub fn slots(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < limit {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    out.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        out
    }

    /// The zone dates are read in (a backfill's FROM/TO, the cron fields); UTC for intervals.
    pub fn zone(&self) -> Tz {
        match self {
            Schedule::Cron { zone, .. } => *zone,
            Schedule::Every(_) => Tz::UTC,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn walk(schedule: &str, from: &str, n: usize) -> Vec<String> {
        let s: Schedule = schedule.parse().unwrap();
        s.slots(utc(from), utc("2100-01-01T00:00:00Z"), n).iter().map(|t| t.to_rfc3339()).collect()
    }

    #[test]
    fn daily_fixed_time_across_stockholm_dst() {
        // Spring forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that day; the
        // job runs at the first valid time after the gap (03:00 CEST = 01:00 UTC), no day lost.
        assert_eq!(
            walk("USING CRON 30 2 * * * Europe/Stockholm", "2026-03-27T12:00:00Z", 4),
            [
                "2026-03-28T01:30:00+00:00", // 02:30 CET
                "2026-03-29T01:00:00+00:00", // gap: 03:00 CEST
                "2026-03-30T00:30:00+00:00", // 02:30 CEST
                "2026-03-31T00:30:00+00:00",
            ]
        );
        // Fall back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice; the job runs once,
        // at the first pass.
        assert_eq!(
            walk("USING CRON 30 2 * * * Europe/Stockholm", "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T00:30:00+00:00", // 02:30 CEST
                "2026-10-25T00:30:00+00:00", // first 02:30 (CEST) only
                "2026-10-26T01:30:00+00:00", // 02:30 CET
            ]
        );
        // 03:00 every day is unaffected on both days: 24 h apart except across the changes.
        assert_eq!(
            walk("USING CRON 0 3 * * * Europe/Stockholm", "2026-10-24T00:00:00Z", 2),
            ["2026-10-24T01:00:00+00:00", "2026-10-25T02:00:00+00:00"]
        );
    }

    #[test]
    fn new_york_dst_fixed_and_wildcard_jobs() {
        // Spring forward 2026-03-08 02:00 EST -> 03:00 EDT.
        assert_eq!(
            walk("USING CRON 15 2 * * * America/New_York", "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00+00:00", "2026-03-09T06:15:00+00:00"] // gap: 03:00 EDT; then 02:15 EDT
        );
        // A half-hourly job skips the missing hour: 01:30 EST is followed by 03:00 EDT.
        assert_eq!(
            walk("USING CRON */30 * * * * America/New_York", "2026-03-08T06:00:00Z", 3),
            ["2026-03-08T06:30:00+00:00", "2026-03-08T07:00:00+00:00", "2026-03-08T07:30:00+00:00"]
        );
        // Fall back 2026-11-01 02:00 EDT -> 01:00 EST: a fixed 01:30 job runs once ...
        assert_eq!(
            walk("USING CRON 30 1 * * * America/New_York", "2026-10-31T12:00:00Z", 3),
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00", "2026-11-03T06:30:00+00:00"]
        );
        // ... and a half-hourly job runs in both passes of the repeated hour.
        assert_eq!(
            walk("USING CRON */30 * * * * America/New_York", "2026-11-01T04:45:00Z", 5),
            [
                "2026-11-01T05:00:00+00:00", // 01:00 EDT
                "2026-11-01T05:30:00+00:00", // 01:30 EDT
                "2026-11-01T06:00:00+00:00", // 01:00 EST
                "2026-11-01T06:30:00+00:00", // 01:30 EST
                "2026-11-01T07:00:00+00:00", // 02:00 EST
            ]
        );
    }

    #[test]
    fn monthly_on_the_first_and_latest_slot() {
        let s: Schedule = "USING CRON 0 4 1 * * Europe/Stockholm".parse().unwrap();
        assert_eq!(s.next_after(utc("2026-10-15T00:00:00Z")), Some(utc("2026-11-01T03:00:00Z")));
        assert_eq!(s.latest_at_or_before(utc("2026-11-01T03:00:00Z")), Some(utc("2026-11-01T03:00:00Z")));
        assert_eq!(s.latest_at_or_before(utc("2026-11-01T02:59:59Z")), Some(utc("2026-10-01T02:00:00Z")));
    }

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        let s: Schedule = "5 seconds".parse().unwrap();
        assert_eq!(s.next_after(utc("2026-10-01T00:00:03Z")), Some(utc("2026-10-01T00:00:05Z")));
        assert_eq!(s.next_after(utc("2026-10-01T00:00:05Z")), Some(utc("2026-10-01T00:00:10Z")));
        assert_eq!(s.slots(utc("2026-10-01T00:00:00Z"), utc("2026-10-01T00:00:12Z"), 10).len(), 2);
        assert_eq!("2 MINUTES".parse::<Schedule>().unwrap().to_string(), "120 SECONDS");
        assert_eq!(
            "USING CRON */3 * * * * * UTC".parse::<Schedule>().unwrap().next_after(utc("2026-10-01T00:00:01Z")),
            Some(utc("2026-10-01T00:00:03Z"))
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (text, why) in [
            ("USING CRON 0 3 * * * Mars/Olympus", "unknown time zone"),
            ("USING CRON 0 3 * * Europe/Stockholm", "expected 5 or 6 cron fields"),
            ("USING CRON 0 25 * * * UTC", "cron '0 25 * * *'"),
            ("5 fortnights", "unknown unit"),
            ("0 MINUTES", "positive"),
            ("daily", "not a schedule"),
        ] {
            let e = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
