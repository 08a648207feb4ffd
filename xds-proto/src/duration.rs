//! The duration text both sides read: `250ms`, `10s`, `1.5s`, `5m`, `1h` (the forms of Istio's
//! YAML and of meshlite's own files and flags). Kept here, in the contract, so the proxy's
//! config file and the control plane's flags can never disagree on what `30s` means.
#![warn(clippy::all)]

use std::time::Duration;

/// Parses a duration; the error says which forms are accepted.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => return Err(format!("`{s}` has no unit (use ms, s, m or h, e.g. `10s`)")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. `250ms`, `10s`)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "`{s}` has unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_forms() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse("24h"), Ok(Duration::from_secs(86400)));
    }

    #[test]
    fn refusals_name_the_problem() {
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10d").unwrap_err().contains("unknown unit"));
        assert!(parse("1.2.3s").unwrap_err().contains("not a duration"));
        assert!(parse("9999999999h").unwrap_err().contains("out of range"));
    }
}
