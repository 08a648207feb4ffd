//! Envoy's response flags as a typed set.
//!
//! A flag says why a request ended the way it did (`UF`: the upstream connection failed,
//! `URX`: retries ran out, ...). Istio's dashboards and log pipelines read them from the
//! `response_flags` metric label and the access log, so the text is Envoy's: the flags of a
//! request joined with `,` in Envoy's own order (`UF,URX`, `DI,FI`), `-` when there is none.
//! The request path carries them as bits (one `u32`, no allocation, cheap to hash as a metric
//! label) and text is produced only when a line or a scrape is written.

use std::fmt;

/// A set of Envoy response flags; empty prints as `-`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

/// The flags this proxy sets, in Envoy's printing order (`ResponseFlagUtils`), with their
/// short names.
const NAMES: [(ResponseFlags, &str); 19] = [
    (ResponseFlags::UH, "UH"),
    (ResponseFlags::UT, "UT"),
    (ResponseFlags::UR, "UR"),
    (ResponseFlags::UF, "UF"),
    (ResponseFlags::UC, "UC"),
    (ResponseFlags::UO, "UO"),
    (ResponseFlags::URX, "URX"),
    (ResponseFlags::NR, "NR"),
    (ResponseFlags::DI, "DI"),
    (ResponseFlags::FI, "FI"),
    (ResponseFlags::RL, "RL"),
    (ResponseFlags::UAEX, "UAEX"),
    (ResponseFlags::DC, "DC"),
    (ResponseFlags::SI, "SI"),
    (ResponseFlags::DPE, "DPE"),
    (ResponseFlags::NC, "NC"),
    (ResponseFlags::UPE, "UPE"),
    (ResponseFlags::LR, "LR"),
    (ResponseFlags::UMSDR, "UMSDR"),
];

impl ResponseFlags {
    /// No flag (`-`).
    pub const NONE: Self = Self(0);
    /// `UH`: no healthy upstream host.
    pub const UH: Self = Self(1);
    /// `UT`: upstream request timeout.
    pub const UT: Self = Self(1 << 1);
    /// `UR`: the upstream reset the stream.
    pub const UR: Self = Self(1 << 2);
    /// `UF`: upstream connection failure.
    pub const UF: Self = Self(1 << 3);
    /// `UC`: upstream connection terminated.
    pub const UC: Self = Self(1 << 4);
    /// `UO`: upstream overflow (a circuit breaker, `maxRetries` or a retry budget).
    pub const UO: Self = Self(1 << 5);
    /// `URX`: retry limit exceeded.
    pub const URX: Self = Self(1 << 6);
    /// `NR`: no route.
    pub const NR: Self = Self(1 << 7);
    /// `DI`: the request was delayed by fault injection.
    pub const DI: Self = Self(1 << 8);
    /// `FI`: the request was aborted by fault injection.
    pub const FI: Self = Self(1 << 9);
    /// `RL`: refused by a local rate limit.
    pub const RL: Self = Self(1 << 10);
    /// `UAEX`: refused by an external authorization service.
    pub const UAEX: Self = Self(1 << 11);
    /// `DC`: the downstream connection terminated.
    pub const DC: Self = Self(1 << 12);
    /// `SI`: stream idle timeout (a request body that stopped making progress).
    pub const SI: Self = Self(1 << 13);
    /// `DPE`: downstream protocol error.
    pub const DPE: Self = Self(1 << 14);
    /// `NC`: no cluster found.
    pub const NC: Self = Self(1 << 15);
    /// `UPE`: upstream protocol error.
    pub const UPE: Self = Self(1 << 16);
    /// `LR`: connection local reset.
    pub const LR: Self = Self(1 << 17);
    /// `UMSDR`: upstream max stream duration reached.
    pub const UMSDR: Self = Self(1 << 18);

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The set with the flags of `other` added.
    #[must_use]
    pub const fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether any flag of `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }
}

impl std::ops::BitOr for ResponseFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.with(rhs)
    }
}

impl std::ops::BitAnd for ResponseFlags {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl std::ops::BitOrAssign for ResponseFlags {
    fn bitor_assign(&mut self, rhs: Self) {
        *self = self.with(rhs);
    }
}

impl fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ResponseFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for ResponseFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl prometheus_client::encoding::EncodeLabelValue for ResponseFlags {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        use fmt::Write as _;
        write!(encoder, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flag_prints_a_dash() {
        assert_eq!(ResponseFlags::NONE.to_string(), "-");
        assert_eq!(ResponseFlags::default().to_string(), "-");
    }

    #[test]
    fn flags_print_joined_in_envoys_order_whatever_the_order_they_were_set() {
        assert_eq!(
            (ResponseFlags::URX | ResponseFlags::UF).to_string(),
            "UF,URX"
        );
        assert_eq!((ResponseFlags::FI | ResponseFlags::DI).to_string(), "DI,FI");
        assert_eq!((ResponseFlags::UO | ResponseFlags::UT).to_string(), "UT,UO");
        assert_eq!(
            (ResponseFlags::UR | ResponseFlags::URX).to_string(),
            "UR,URX"
        );
        assert_eq!((ResponseFlags::UC | ResponseFlags::UO).to_string(), "UC,UO");
        assert_eq!(ResponseFlags::UAEX.to_string(), "UAEX");
    }

    #[test]
    fn every_flag_has_one_distinct_name() {
        let mut all = ResponseFlags::NONE;
        for (flag, name) in NAMES {
            assert_eq!(flag.0.count_ones(), 1, "{name}");
            assert!(!all.intersects(flag), "{name} shares a bit");
            all |= flag;
            assert_eq!(flag.to_string(), name);
        }
    }

    #[test]
    fn the_access_log_gets_the_text() {
        let v = serde_json::to_string(&(ResponseFlags::UF | ResponseFlags::URX)).unwrap();
        assert_eq!(v, "\"UF,URX\"");
    }
}
