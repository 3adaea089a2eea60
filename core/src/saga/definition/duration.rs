//! Durations in definitions: how they are written (milliseconds or
//! humantime text), checked, displayed and stored (integer milliseconds).

use serde::Deserialize;
use serde::Deserializer;
use serde::de::{self, Visitor};
use std::fmt;
use std::time::Duration;

use super::error::{DefinitionError, Place};

/// Longest duration a definition may contain (365 days), so that timer
/// arithmetic (`now + timeout`) elsewhere can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Serde helpers storing durations as integer milliseconds.
pub(crate) mod humantime_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    fn millis(d: &Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(millis(d))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&super::millis(d)),
                None => s.serialize_none(),
            }
        }
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }
}

/// A duration as written: integer milliseconds or a humantime string.
/// Problems a parser would report without naming the field are kept as
/// `Invalid` so that validation can name it.
#[derive(Debug, Clone)]
pub(super) enum RawDuration {
    Millis(u64),
    Text(String),
    Invalid(String),
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"2m\", \"500ms\" or integer milliseconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(RawDuration::Millis(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(match u64::try_from(v) {
                    Ok(v) => RawDuration::Millis(v),
                    Err(_) => RawDuration::Invalid(format!("{v} is negative")),
                })
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Self::Value, E> {
                Ok(RawDuration::Invalid(format!(
                    "{v} milliseconds is too long"
                )))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Self::Value, E> {
                Ok(RawDuration::Invalid(format!("{v} is out of range")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(RawDuration::Invalid(format!(
                    "{v} is not a whole number of milliseconds; write a unit, as in \"1500ms\" or \"2s\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawDuration::Text(v.to_owned()))
            }
        }
        d.deserialize_any(DurationVisitor)
    }
}

/// Turns a raw duration into a checked [`Duration`]; `None` after pushing an error.
pub(super) fn resolve_duration(
    place: &Place,
    raw: RawDuration,
    allow_zero: bool,
    errs: &mut Vec<DefinitionError>,
) -> Option<Duration> {
    let invalid = |reason: String| DefinitionError::InvalidDuration {
        place: Box::new(place.clone()),
        reason,
    };
    let duration = match raw {
        RawDuration::Millis(ms) => Duration::from_millis(ms),
        RawDuration::Text(text) => match humantime::parse_duration(text.trim()) {
            Ok(d) => d,
            Err(e) => {
                errs.push(invalid(format!(
                    "invalid duration \"{}\": {e}; write e.g. \"30s\", \"2m\", \"500ms\" or integer milliseconds",
                    text.escape_debug()
                )));
                return None;
            }
        },
        RawDuration::Invalid(reason) => {
            errs.push(invalid(format!("invalid duration: {reason}")));
            return None;
        }
    };
    check_duration(place, duration, allow_zero, errs).then_some(duration)
}

/// Displays a duration in the units definition files use (`1d 2h 30m`,
/// `500ms`): exact to the millisecond, and parseable back.
pub(super) struct Human(pub(super) Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total_ms = self.0.as_millis();
        if total_ms == 0 {
            return if self.0.is_zero() {
                f.write_str("0s")
            } else {
                write!(f, "{}ns", self.0.as_nanos())
            };
        }
        let mut rest = total_ms;
        let mut parts = Vec::new();
        for (unit, ms) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            let n = rest / ms;
            rest %= ms;
            if n > 0 {
                parts.push(format!("{n}{unit}"));
            }
        }
        let sub_ms = self.0.subsec_nanos() % 1_000_000;
        if sub_ms > 0 {
            parts.push(format!("{sub_ms}ns"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// Checks a duration is whole milliseconds, at most [`MAX_DURATION`] and
/// (unless `allow_zero`) positive.
pub(super) fn check_duration(
    place: &Place,
    d: Duration,
    allow_zero: bool,
    errs: &mut Vec<DefinitionError>,
) -> bool {
    let reason = if d > MAX_DURATION {
        format!(
            "duration {} is longer than the maximum of {}",
            Human(d),
            Human(MAX_DURATION)
        )
    } else if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!(
            "duration {} is not a whole number of milliseconds; durations are stored in milliseconds",
            Human(d)
        )
    } else if !allow_zero && d.is_zero() {
        "duration must be greater than zero".to_owned()
    } else {
        return true;
    };
    errs.push(DefinitionError::InvalidDuration {
        place: Box::new(place.clone()),
        reason,
    });
    false
}
