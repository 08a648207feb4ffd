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

/// Why a duration string was rejected (the parser shared with the proxy).
pub use meshlite_xds_proto::duration::DurationError;

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

    /// Parses `"1.5s"`, `"100ms"`, `"1h2m3.5s"`, `"-1s"` or a bare `"0"`: the magnitude with
    /// the parser the proxy shares ([`meshlite_xds_proto::duration::parse`]), the sign here.
    pub fn parse(input: &str) -> Result<Self, DurationError> {
        let s = input.trim();
        let (negative, magnitude) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if negative && malformed_after_sign(magnitude) {
            return Err(DurationError::BadNumber(s.to_owned()));
        }
        Ok(Self {
            negative,
            magnitude: meshlite_xds_proto::duration::parse(magnitude)?,
        })
    }
}

/// After a `-`, nothing, another sign or a space is malformed.
fn malformed_after_sign(rest: &str) -> bool {
    rest.is_empty() || rest.starts_with(['-', '+']) || rest.starts_with(char::is_whitespace)
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
