use crate::FieldError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Longest timeout a document may set: a request held longer is better failed.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Longest interval a document may set (flushes, rollout steps).
pub const MAX_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A duration written as a string: `"250ms"`, `"2s"`, `"1m30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub fn as_std(self) -> std::time::Duration {
        self.0
    }

    /// Pushes an error for `field` unless `0 < self <= max`: a zero would spin and a
    /// huge value overflows the clock arithmetic of whoever enforces it.
    pub(crate) fn check(self, field: impl Into<String>, max: std::time::Duration, errors: &mut Vec<FieldError>) {
        if self.0.is_zero() || self.0 > max {
            errors.push(FieldError::new(
                field,
                format!("must be greater than 0 and at most {}", humantime::format_duration(max)),
            ));
        }
    }
}

impl std::str::FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s.trim())
            .map(Duration)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write e.g. \"250ms\" or \"2s\""))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The short forms only when they are exact: a duration printed shorter than
        // it is would come back from the store as another value.
        let nanos = self.0.subsec_nanos();
        if nanos == 0 && self.0.as_secs() > 0 {
            write!(f, "{}s", self.0.as_secs())
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{}", humantime::format_duration(self.0))
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_common_forms() {
        for (s, ms) in [("250ms", 250), ("2s", 2000), ("1m30s", 90_000)] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms);
        }
        assert_eq!(Duration::from_millis(250).to_string(), "250ms");
        assert_eq!(Duration::from_millis(2000).to_string(), "2s");
        assert!("fast".parse::<Duration>().is_err());
    }

    #[test]
    fn printing_never_drops_a_fraction_of_a_millisecond() {
        for d in [
            std::time::Duration::new(15469, 1),
            std::time::Duration::new(2, 500_000),
            std::time::Duration::from_nanos(1),
        ] {
            let printed = Duration(d).to_string();
            assert_eq!(printed.parse::<Duration>().unwrap().0, d, "{printed}");
        }
        assert_eq!(
            Duration(std::time::Duration::new(15469, 1)).to_string(),
            "4h 17m 49s 1ns"
        );
    }

    #[test]
    fn check_refuses_zero_and_values_past_the_maximum() {
        let mut errors = Vec::new();
        Duration::from_millis(1).check("a", MAX_TIMEOUT, &mut errors);
        Duration(MAX_TIMEOUT).check("b", MAX_TIMEOUT, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        Duration::from_millis(0).check("c", MAX_TIMEOUT, &mut errors);
        "18446744073709551615s"
            .parse::<Duration>()
            .unwrap()
            .check("d", MAX_TIMEOUT, &mut errors);
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["c", "d"]);
        assert_eq!(errors[0].message, "must be greater than 0 and at most 1h");
    }
}
