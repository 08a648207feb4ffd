//! The duration text both sides read, as Istio writes it: the protobuf `Duration` JSON form
//! (`1.5s`, `0.000001s`) and Go's `time.ParseDuration` forms (`300ms`, `1h30m`, `2m3.5s`,
//! `100us`/`µs`, `10ns`, a bare `0`). Kept here, in the contract, so the proxy's config file,
//! its flags and the control plane's resources and flags can never disagree on what `30s`
//! means. Negative durations are refused (no meshlite setting has a use for one), as are
//! values beyond Go's limit (about 292 years of nanoseconds).

use std::time::Duration;

/// Nanoseconds in a second.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The longest duration accepted, in nanoseconds: Go's `time.Duration` is an `i64` of them.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Why a duration text was refused; every message names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing (or only spaces) was given.
    #[error("empty duration (e.g. `10s`, `1.5s`, `1h30m`)")]
    Empty,
    /// The text starts with `-`.
    #[error("`{0}` is negative: a duration must be zero or more")]
    Negative(String),
    /// A number is not followed by a unit.
    #[error("`{0}` has no unit (use ns, us, ms, s, m or h, e.g. `10s`)")]
    MissingUnit(String),
    /// A unit is not one of ns, us (µs), ms, s, m, h: the text and the unit.
    #[error("`{0}` has unknown unit `{1}` (use ns, us, ms, s, m or h)")]
    UnknownUnit(String, String),
    /// A unit without a number before it, or a malformed number.
    #[error("`{0}` is not a duration (e.g. `250ms`, `1.5s`, `1h30m`)")]
    BadNumber(String),
    /// The value is longer than about 292 years (Go's limit).
    #[error("`{0}` is out of range (at most about 292 years)")]
    Overflow(String),
}

/// Parses a duration in Istio's forms (see the module documentation). Surrounding spaces
/// are ignored; a leading `+` is allowed, as Go allows it.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    let body = match s.as_bytes().first() {
        None => return Err(DurationError::Empty),
        Some(b'-') => return Err(DurationError::Negative(s.to_owned())),
        Some(b'+') => &s[1..],
        Some(_) => s,
    };
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() {
        return Err(DurationError::BadNumber(s.to_owned()));
    }
    let mut rest = body;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        rest = after;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(DurationError::BadNumber(s.to_owned()));
        }
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(s.to_owned()));
        }
        let unit_nanos = unit_nanos(unit)
            .ok_or_else(|| DurationError::UnknownUnit(s.to_owned(), unit.to_owned()))?;
        total = scaled(whole, fraction, unit_nanos)
            .and_then(|n| total.checked_add(n))
            .filter(|&n| n <= MAX_NANOS)
            .ok_or_else(|| DurationError::Overflow(s.to_owned()))?;
    }
    let secs =
        u64::try_from(total / NANOS_PER_SEC).map_err(|_| DurationError::Overflow(s.to_owned()))?;
    let nanos =
        u32::try_from(total % NANOS_PER_SEC).map_err(|_| DurationError::Overflow(s.to_owned()))?;
    Ok(Duration::new(secs, nanos))
}

/// Nanoseconds in one `unit` (Go's units; `µs` in either of its two Unicode spellings).
fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        "us" | "µs" | "μs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// `whole.fraction` (ASCII digits, either part possibly empty) times `unit_nanos`, truncated
/// to whole nanoseconds; `None` on overflow.
fn scaled(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos = whole.checked_mul(unit_nanos)?;
    // A unit is at most 3.6e12 ns, so digits past the 18th cannot reach a nanosecond.
    let digits = &fraction[..fraction.len().min(18)];
    if !digits.is_empty() {
        let value: u128 = digits.parse().ok()?;
        let scale = 10u128.checked_pow(u32::try_from(digits.len()).ok()?)?;
        nanos = nanos.checked_add(value.checked_mul(unit_nanos)? / scale)?;
    }
    Some(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_protobuf_and_go_forms() {
        let ms = Duration::from_millis;
        let table: &[(&str, Duration)] = &[
            // Protobuf Duration JSON.
            ("1.5s", ms(1500)),
            ("0.000001s", Duration::from_micros(1)),
            ("1.000000001s", Duration::new(1, 1)),
            ("3723.5s", ms(3_723_500)),
            // Go's time.ParseDuration.
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+5s", Duration::from_secs(5)),
            ("300ms", ms(300)),
            ("250ms", ms(250)),
            ("1h30m", Duration::from_secs(5400)),
            ("2m3.5s", ms(123_500)),
            ("1h2m3.5s", ms(3_723_500)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("100μs", Duration::from_micros(100)),
            ("10ns", Duration::from_nanos(10)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("5m", Duration::from_secs(300)),
            ("24h", Duration::from_secs(86_400)),
            ("1s500ms", ms(1500)),
            (" 10s ", Duration::from_secs(10)),
            // Fraction digits past a nanosecond are truncated, as Go does.
            ("0.1234567899s", Duration::from_nanos(123_456_789)),
            // Go's limit: i64::MAX nanoseconds.
            (
                "2562047h47m16.854775807s",
                Duration::new(9_223_372_036, 854_775_807),
            ),
        ];
        for (text, want) in table {
            assert_eq!(parse(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        use DurationError::*;
        let unknown = |u: &str| UnknownUnit(String::new(), u.to_owned());
        let table: &[(&str, DurationError)] = &[
            ("", Empty),
            ("   ", Empty),
            ("-1s", Negative(String::new())),
            ("-0s", Negative(String::new())),
            ("10", MissingUnit(String::new())),
            ("1h30", MissingUnit(String::new())),
            ("10d", unknown("d")),
            ("10parsecs", unknown("parsecs")),
            ("1S", unknown("S")),
            ("1 s", unknown(" s")),
            ("s", BadNumber(String::new())),
            ("+", BadNumber(String::new())),
            (".s", BadNumber(String::new())),
            ("1.2.3s", BadNumber(String::new())),
            ("1e3s", unknown("e")),
            ("2562047h47m16.854775808s", Overflow(String::new())),
            ("9999999999h", Overflow(String::new())),
            (
                "99999999999999999999999999999999999999999999h",
                Overflow(String::new()),
            ),
        ];
        for (text, want) in table {
            let got = parse(text).expect_err(text);
            // Compare the kind (and the unit); every message names the text.
            let blank = |e: &DurationError| match e {
                UnknownUnit(_, u) => unknown(u),
                Negative(_) => Negative(String::new()),
                MissingUnit(_) => MissingUnit(String::new()),
                BadNumber(_) => BadNumber(String::new()),
                Overflow(_) => Overflow(String::new()),
                Empty => Empty,
            };
            assert_eq!(&blank(&got), want, "{text}");
            if !text.trim().is_empty() {
                assert!(got.to_string().contains(text.trim()), "{got}");
            }
        }
    }

    #[test]
    fn messages_say_what_is_accepted() {
        assert!(parse("10").unwrap_err().to_string().contains("no unit"));
        assert!(
            parse("10d")
                .unwrap_err()
                .to_string()
                .contains("unknown unit `d`")
        );
        assert!(parse("-1s").unwrap_err().to_string().contains("negative"));
        assert!(
            parse("9999999999h")
                .unwrap_err()
                .to_string()
                .contains("out of range")
        );
    }
}
