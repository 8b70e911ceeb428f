//! Durations in stout's text form, as Mesos writes them in flags (`--allocation_interval=1secs`)
//! and in an executor's environment (`MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD=5secs`).
//!
//! A duration is a non-negative decimal number immediately followed by one of the units `ns`,
//! `us`, `ms`, `secs`, `mins`, `hrs`, `days`, `weeks` (stout's `Duration::parse`). Nothing else
//! is accepted: no sign, no space, no bare number.

use std::time::Duration;

/// Why a text is not a stout duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// No unit follows the number.
    #[error("duration {0:?} has no unit (ns, us, ms, secs, mins, hrs, days or weeks)")]
    MissingUnit(String),
    /// The number part does not parse.
    #[error("duration {0:?} does not start with a decimal number")]
    BadNumber(String),
    /// The unit is not one of stout's.
    #[error("duration {text:?} has the unknown unit {unit:?}")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit given.
        unit: String,
    },
    /// The value does not fit a `Duration`.
    #[error("duration {0:?} is out of range")]
    OutOfRange(String),
}

/// Parses a stout duration (see the module docs).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::MissingUnit(text.to_owned()))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::BadNumber(text.to_owned()))?;
    let unit_secs = match unit {
        "ns" => 1e-9,
        "us" => 1e-6,
        "ms" => 1e-3,
        "secs" => 1.0,
        "mins" => 60.0,
        "hrs" => 3_600.0,
        "days" => 86_400.0,
        "weeks" => 604_800.0,
        _ => {
            return Err(DurationError::UnknownUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    Duration::try_from_secs_f64(value * unit_secs)
        .map_err(|_| DurationError::OutOfRange(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_stout_unit() {
        assert_eq!(parse_duration("5secs"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("15mins"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2hrs"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("1days"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1weeks"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
        assert_eq!(parse_duration("1.5secs"), Ok(Duration::from_millis(1_500)));
    }

    #[test]
    fn refuses_what_stout_refuses() {
        assert!(matches!(
            parse_duration("5"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("5s"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("secs"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("-1secs"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            parse_duration("5 secs"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(parse_duration("").is_err());
        assert!(matches!(
            parse_duration("1e3secs"),
            Err(DurationError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999weeks"),
            Err(DurationError::OutOfRange(_))
        ));
    }
}
