//! When the nightly job runs, and which day it reads: calendar days in the configured time zone
//! (the team's, not the host's), so "the previous day" means the same thing as in their Kibana.

use std::time::Duration;

use jiff::{Timestamp, ZonedDateTime, civil, tz::TimeZone};
use serde::Deserialize;
use time::OffsetDateTime;

use sensor_model::error::ConfigError;

/// `[blocklist.schedule]`: when the daemon runs the job by itself.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Run the job every day at `at` (the daemon); `sensor blocklist run` works either way.
    pub enabled: bool,
    /// Local time of day, `HH:MM`. Night: changes to production happen at night.
    pub at: String,
    /// IANA time zone of `at` and of "the previous day".
    pub time_zone: String,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            enabled: false,
            at: "02:00".into(),
            time_zone: "Asia/Shanghai".into(),
        }
    }
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub at: civil::Time,
    pub zone: TimeZone,
}

impl ScheduleSection {
    pub fn parse(&self) -> Result<Schedule, ConfigError> {
        let zone = TimeZone::get(&self.time_zone).map_err(|e| ConfigError::Invalid {
            key: "blocklist.schedule.time_zone",
            message: format!("{:?}: {e}", self.time_zone),
        })?;
        let at: civil::Time = self
            .at
            .parse()
            .ok()
            .filter(|t: &civil::Time| self.at.len() == 5 && t.second() == 0)
            .ok_or_else(|| ConfigError::Invalid {
                key: "blocklist.schedule.at",
                message: format!("{:?} is not a time of day HH:MM", self.at),
            })?;
        Ok(Schedule { at, zone })
    }
}

fn to_time(ts: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ts.as_nanosecond())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn to_jiff(t: OffsetDateTime) -> Timestamp {
    Timestamp::from_nanosecond(t.unix_timestamp_nanos()).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Schedule {
    /// The calendar day before `now`'s day, in the zone.
    pub fn previous_day(&self, now: OffsetDateTime) -> time::Date {
        let today = to_jiff(now).to_zoned_datetime(self.zone.clone()).date();
        let y = today.yesterday().unwrap_or(today);
        civil_to_date(y)
    }

    /// `[start, end)` of `day` in the zone, as instants (23 or 25 hours long across a DST
    /// change).
    pub fn day_bounds(&self, day: time::Date) -> (OffsetDateTime, OffsetDateTime) {
        let d = date_to_civil(day);
        let start = d
            .to_zoned_datetime(self.zone.clone())
            .map(|z| z.timestamp());
        let end = d
            .tomorrow()
            .and_then(|t| t.to_zoned_datetime(self.zone.clone()))
            .map(|z| z.timestamp());
        match (start, end) {
            (Ok(s), Ok(e)) => (to_time(s), to_time(e)),
            _ => (OffsetDateTime::UNIX_EPOCH, OffsetDateTime::UNIX_EPOCH),
        }
    }

    /// How long from `now` until the next run.
    pub fn until_next(&self, now: OffsetDateTime) -> Duration {
        let now_z: ZonedDateTime = to_jiff(now).to_zoned_datetime(self.zone.clone());
        let today = now_z.date().to_datetime(self.at);
        let next = match today.to_zoned_datetime(self.zone.clone()) {
            Ok(z) if z.timestamp() > now_z.timestamp() => z,
            _ => today
                .date()
                .tomorrow()
                .map(|d| d.to_datetime(self.at))
                .and_then(|dt| dt.to_zoned_datetime(self.zone.clone()))
                .unwrap_or(now_z.clone()),
        };
        let secs = next.timestamp().as_second() - now_z.timestamp().as_second();
        Duration::from_secs(secs.max(1) as u64)
    }
}

fn civil_to_date(d: civil::Date) -> time::Date {
    time::Date::from_calendar_date(
        i32::from(d.year()),
        time::Month::try_from(d.month() as u8).unwrap_or(time::Month::January),
        d.day() as u8,
    )
    .unwrap_or(time::Date::MIN)
}

fn date_to_civil(d: time::Date) -> civil::Date {
    civil::date(d.year() as i16, u8::from(d.month()) as i8, d.day() as i8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(at: &str, tz: &str) -> Schedule {
        ScheduleSection {
            enabled: true,
            at: at.into(),
            time_zone: tz.into(),
        }
        .parse()
        .unwrap()
    }

    fn utc(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn previous_day_is_the_zones_calendar_day() {
        let s = sched("02:00", "Asia/Shanghai");
        // 2026-11-24 17:00 UTC is already 2026-11-25 01:00 in Shanghai.
        assert_eq!(
            s.previous_day(utc("2026-11-24T17:00:00Z")),
            time::macros::date!(2026 - 11 - 24)
        );
        let (a, b) = s.day_bounds(time::macros::date!(2026 - 11 - 24));
        assert_eq!(a, utc("2026-11-23T16:00:00Z"));
        assert_eq!(b, utc("2026-11-24T16:00:00Z"));
    }

    #[test]
    fn next_run_and_dst() {
        let s = sched("02:00", "Asia/Shanghai");
        // 01:00 local → one hour to go; 03:00 local → 23 hours.
        assert_eq!(
            s.until_next(utc("2026-11-24T17:00:00Z")),
            Duration::from_secs(3600)
        );
        assert_eq!(
            s.until_next(utc("2026-11-24T19:00:00Z")),
            Duration::from_secs(23 * 3600)
        );
        // A 23-hour day in Berlin (DST starts 2026-03-29).
        let b = sched("02:00", "Europe/Berlin");
        let (a, z) = b.day_bounds(time::macros::date!(2026 - 03 - 29));
        assert_eq!(z - a, time::Duration::hours(23));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = ScheduleSection {
            time_zone: "Mars/Olympus".into(),
            ..Default::default()
        }
        .parse()
        .unwrap_err();
        assert!(
            e.to_string().contains("blocklist.schedule.time_zone"),
            "{e}"
        );
        let e = ScheduleSection {
            at: "2am".into(),
            ..Default::default()
        }
        .parse()
        .unwrap_err();
        assert!(e.to_string().contains("blocklist.schedule.at"), "{e}");
    }
}
