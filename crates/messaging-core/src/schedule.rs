//! Cron-like schedules (R14): a five-field cron expression read in an IANA time zone.
//!
//! The API validates a schedule and computes its first run with this; the router's scheduler
//! computes each next run with the same code, so what the API shows is what will happen.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron expression with the time zone its fields are read in.
#[derive(Clone)]
pub struct CronSchedule {
    cron: Cron,
    zone: Tz,
}

/// Which part of a schedule is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression: {0}")]
    Cron(String),
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Berlin or UTC")]
    TimeZone(String),
    #[error("the cron expression never matches a future time")]
    NeverRuns,
}

impl ScheduleError {
    /// The request field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ScheduleError::TimeZone(_) => "timeZone",
            ScheduleError::Cron(_) | ScheduleError::NeverRuns => "cron",
        }
    }
}

impl CronSchedule {
    /// Five fields (minute hour day-of-month month day-of-week) or an `@daily`-style nickname.
    /// A seconds field is refused: a notification schedule that fires every second is a
    /// mistake that would flood people, and the scheduler polls at second granularity anyway.
    pub fn parse(expression: &str, time_zone: &str) -> Result<CronSchedule, ScheduleError> {
        let zone: Tz = time_zone
            .parse()
            .map_err(|_| ScheduleError::TimeZone(time_zone.to_owned()))?;
        let fields = expression.split_whitespace().count();
        if !expression.trim_start().starts_with('@') && fields != 5 {
            return Err(ScheduleError::Cron(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| ScheduleError::Cron(e.to_string()))?;
        Ok(CronSchedule { cron, zone })
    }

    /// The first due time strictly after `after`, in UTC. Daylight-saving gaps and repeats are
    /// resolved in the schedule's zone, so "09:00 Europe/Berlin" stays 09:00 local all year.
    pub fn next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, ScheduleError> {
        let local = after.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .map(|next| next.with_timezone(&Utc))
            .map_err(|_| ScheduleError::NeverRuns)
    }

    /// A plain-English reading of the expression, shown by the API so people can check it.
    pub fn describe(&self) -> String {
        self.cron.describe()
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CronSchedule")
            .field("cron", &self.cron.as_str())
            .field("zone", &self.zone.name())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn next_run_is_read_in_the_schedule_zone() {
        let s = CronSchedule::parse("0 9 * * *", "Europe/Berlin").unwrap();
        // Winter: Berlin is UTC+1.
        assert_eq!(
            s.next_after(utc(2026, 1, 10, 7, 0)).unwrap(),
            utc(2026, 1, 10, 8, 0)
        );
        // Summer: UTC+2, still 09:00 local.
        assert_eq!(
            s.next_after(utc(2026, 7, 10, 7, 30)).unwrap(),
            utc(2026, 7, 11, 7, 0)
        );
    }

    #[test]
    fn next_run_is_strictly_after() {
        let s = CronSchedule::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc(2026, 3, 1, 10, 15)).unwrap(),
            utc(2026, 3, 1, 10, 30)
        );
    }

    #[test]
    fn nicknames_and_names_are_accepted() {
        assert!(CronSchedule::parse("@daily", "UTC").is_ok());
        assert!(CronSchedule::parse("30 8 * * MON-FRI", "America/New_York").is_ok());
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = CronSchedule::parse("0 9 * *", "UTC").unwrap_err();
        assert_eq!(e.field(), "cron");
        let e = CronSchedule::parse("* * * * * *", "UTC").unwrap_err();
        assert_eq!(e.field(), "cron");
        let e = CronSchedule::parse("61 9 * * *", "UTC").unwrap_err();
        assert_eq!(e.field(), "cron");
        let e = CronSchedule::parse("0 9 * * *", "Mars/Olympus").unwrap_err();
        assert_eq!(e.field(), "timeZone");
    }
}
