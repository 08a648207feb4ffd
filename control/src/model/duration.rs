//! Istio durations.
//!
//! Istio's CRDs carry `google.protobuf.Duration` fields as strings. Both the protobuf JSON form
//! (`"1.5s"`, `"-0.25s"`) and the Go form Kubernetes users write (`"100ms"`, `"2m"`, `"1h2m3.5s"`)
//! are accepted, as istiod does. A negative duration is kept (with its sign) so validation can
//! name the field instead of the parser failing with a less useful message.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Serialize, Serializer};

/// A signed duration as written in an Istio resource (`"1.5s"`, `"100ms"`, `"1h2m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct IstioDuration {
    negative: bool,
    magnitude: Duration,
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// A number was not followed by a unit.
    #[error("duration {0:?}: missing unit (use ns, us, ms, s, m or h, e.g. \"1.5s\")")]
    MissingUnit(String),
    /// The unit is not one of ns/us/µs/ms/s/m/h.
    #[error("duration {0:?}: unknown unit {1:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit(String, String),
    /// A unit came without a number, or the number is malformed.
    #[error("duration {0:?}: expected a number before each unit")]
    BadNumber(String),
    /// The value does not fit in a `Duration`.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

impl IstioDuration {
    /// A non-negative duration.
    pub const fn from_std(d: Duration) -> Self {
        Self {
            negative: false,
            magnitude: d,
        }
    }

    /// True for durations written with a leading `-` (and non-zero).
    pub fn is_negative(&self) -> bool {
        self.negative && !self.magnitude.is_zero()
    }

    /// True for `0s` (or `-0s`).
    pub fn is_zero(&self) -> bool {
        self.magnitude.is_zero()
    }

    /// The duration as `std::time::Duration`; a negative value (which validation rejects
    /// wherever Istio does) saturates to zero.
    pub fn as_std(&self) -> Duration {
        if self.is_negative() {
            Duration::ZERO
        } else {
            self.magnitude
        }
    }

    /// Parses `"1.5s"`, `"100ms"`, `"1h2m3.5s"`, `"-1s"` or a bare `"0"`.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let (negative, mut rest) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        if rest == "0" {
            return Ok(Self {
                negative,
                magnitude: Duration::ZERO,
            });
        }
        if rest.is_empty() {
            return Err(DurationError::BadNumber(input.to_owned()));
        }
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let number = &rest[..num_end];
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_end];
            rest = &rest[unit_end..];
            if number.is_empty() || number == "." || number.matches('.').count() > 1 {
                return Err(DurationError::BadNumber(input.to_owned()));
            }
            if unit.is_empty() {
                return Err(DurationError::MissingUnit(input.to_owned()));
            }
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                other => {
                    return Err(DurationError::UnknownUnit(
                        input.to_owned(),
                        other.to_owned(),
                    ));
                }
            };
            let nanos = scaled(number, unit_nanos)
                .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
            total_nanos = total_nanos
                .checked_add(nanos)
                .ok_or_else(|| DurationError::Overflow(input.to_owned()))?;
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000)
            .map_err(|_| DurationError::Overflow(input.to_owned()))?;
        // The remainder is below 1e9, so it fits in u32.
        let sub = u32::try_from(total_nanos % 1_000_000_000)
            .map_err(|_| DurationError::Overflow(input.to_owned()))?;
        Ok(Self {
            negative,
            magnitude: Duration::new(secs, sub),
        })
    }
}

/// `number` (digits with at most one '.') times `unit_nanos`, truncated to whole nanoseconds.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut nanos = int.checked_mul(unit_nanos)?;
    // Only the first 18 fractional digits can matter for a unit of at most an hour in ns.
    let frac_digits = &frac_part[..frac_part.len().min(18)];
    if !frac_digits.is_empty() {
        let frac: u128 = frac_digits.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(frac_digits.len()).ok()?)?;
        nanos = nanos.checked_add(frac.checked_mul(unit_nanos)? / scale)?;
    }
    Some(nanos)
}

impl From<Duration> for IstioDuration {
    fn from(d: Duration) -> Self {
        Self::from_std(d)
    }
}

impl fmt::Display for IstioDuration {
    /// Protobuf JSON form: seconds with up to nine fractional digits, e.g. `1.5s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_negative() {
            f.write_str("-")?;
        }
        let secs = self.magnitude.as_secs();
        let nanos = self.magnitude.subsec_nanos();
        if nanos == 0 {
            write!(f, "{secs}s")
        } else {
            let frac = format!("{nanos:09}");
            write!(f, "{secs}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for IstioDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IstioDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IstioDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"1.5s\", \"100ms\" or \"1h2m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IstioDuration, E> {
                IstioDuration::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        IstioDuration::parse(s).unwrap().as_std()
    }

    #[test]
    fn parses_protobuf_and_go_forms() {
        assert_eq!(d("1s"), Duration::from_secs(1));
        assert_eq!(d("0.5s"), Duration::from_millis(500));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("100ms"), Duration::from_millis(100));
        assert_eq!(d("1m"), Duration::from_secs(60));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d(".5s"), Duration::from_millis(500));
    }

    #[test]
    fn keeps_the_sign_of_negative_durations() {
        let n = IstioDuration::parse("-1s").unwrap();
        assert!(n.is_negative());
        assert_eq!(n.as_std(), Duration::ZERO);
        assert_eq!(n.to_string(), "-1s");
        assert!(!IstioDuration::parse("-0s").unwrap().is_negative());
    }

    #[test]
    fn rejects_malformed_strings_clearly() {
        assert_eq!(IstioDuration::parse(""), Err(DurationError::Empty));
        assert!(matches!(
            IstioDuration::parse("10"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            IstioDuration::parse("10d"),
            Err(DurationError::UnknownUnit(_, u)) if u == "d"
        ));
        assert!(matches!(
            IstioDuration::parse("s"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            IstioDuration::parse("1.2.3s"),
            Err(DurationError::BadNumber(_))
        ));
        assert!(matches!(
            IstioDuration::parse("99999999999999999999999h"),
            Err(DurationError::Overflow(_))
        ));
        let err = serde_json::from_str::<IstioDuration>("5").unwrap_err();
        assert!(err.to_string().contains("duration string"), "{err}");
    }

    #[test]
    fn displays_in_protobuf_form() {
        assert_eq!(
            IstioDuration::parse("1h2m3.5s").unwrap().to_string(),
            "3723.5s"
        );
        assert_eq!(IstioDuration::parse("100ms").unwrap().to_string(), "0.1s");
    }
}
