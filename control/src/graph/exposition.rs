//! Reading a sidecar's `/stats/prometheus`: the subset of Prometheus text format 0.0.4 that
//! the sidecars write and the graph needs.
//!
//! A sample line is `name`, optional `{label="value",...}` (values escape `\\`, `\"` and `\n`),
//! whitespace, the value (a float, `+Inf`, `-Inf`, `NaN`) and an optional timestamp, which is
//! ignored. `#` lines (HELP, TYPE) and blank lines are skipped. Only the families the caller
//! asks for are parsed at all: a line of any other family is skipped by its name, so a
//! sidecar's Envoy statistics cost one comparison each. A wanted line that is malformed fails
//! the whole scrape, as Prometheus fails it, rather than yield a graph built on half a reading.

use std::borrow::Cow;

/// One sample of a wanted family, borrowing from the scraped text.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The sample's name (with its `_bucket` / `_total` suffix).
    pub name: &'a str,
    /// The series as written: the name and the label block, the identity of the series from
    /// one scrape to the next (the exporter writes a series' labels in one order).
    pub series: &'a str,
    /// Label names and values, values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, or `""` when absent (Prometheus' reading of a missing label).
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_ref())
    }
}

/// Why a scrape's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A wanted sample line does not follow the format.
    #[error("line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// More wanted samples than the caller allows.
    #[error("more than {0} samples of the graph's families")]
    TooManySamples(usize),
}

/// The samples of `text` whose name `wanted` accepts, at most `max_samples` of them.
pub fn parse<'a>(
    text: &'a str,
    wanted: impl Fn(&str) -> bool,
    max_samples: usize,
) -> Result<Vec<Sample<'a>>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim_matches([' ', '\t', '\r']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !wanted(name) {
            continue;
        }
        let malformed = |reason| ParseError::Malformed {
            line: i + 1,
            reason,
        };
        if !valid_name(name) {
            return Err(malformed("invalid metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            let consumed = parse_labels(body, &mut labels).map_err(malformed)?;
            rest = &body[consumed..];
        }
        let series = &line[..line.len() - rest.len()];
        let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
        let value = fields
            .next()
            .ok_or_else(|| malformed("no value"))
            .and_then(|v| parse_value(v).ok_or_else(|| malformed("value is not a number")))?;
        if let Some(ts) = fields.next()
            && ts.parse::<i64>().is_err()
        {
            return Err(malformed("timestamp is not an integer"));
        }
        if fields.next().is_some() {
            return Err(malformed("text after the timestamp"));
        }
        if out.len() == max_samples {
            return Err(ParseError::TooManySamples(max_samples));
        }
        out.push(Sample {
            name,
            series,
            labels,
            value,
        });
    }
    Ok(out)
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `name="value",...}` (the text after `{`); returns the bytes consumed, `}` included.
fn parse_labels<'a>(
    body: &'a str,
    labels: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<usize, &'static str> {
    let bytes = body.as_bytes();
    let mut i = 0;
    let skip_blanks = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_blanks(&mut i);
        match bytes.get(i) {
            Some(b'}') => return Ok(i + 1),
            None => return Err("unterminated label set"),
            Some(_) => {}
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        let key = &body[start..i];
        if key.is_empty() || key.as_bytes()[0].is_ascii_digit() {
            return Err("invalid label name");
        }
        skip_blanks(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err("label without `=`");
        }
        i += 1;
        skip_blanks(&mut i);
        if bytes.get(i) != Some(&b'"') {
            return Err("label value is not quoted");
        }
        i += 1;
        let value_start = i;
        let mut escaped = false;
        loop {
            match bytes.get(i) {
                None => return Err("unterminated label value"),
                Some(b'\\') => {
                    escaped = true;
                    i += 2;
                }
                Some(b'"') => break,
                Some(_) => i += 1,
            }
        }
        let raw = body.get(value_start..i).ok_or("unterminated label value")?;
        let value = if escaped {
            Cow::Owned(unescape(raw)?)
        } else {
            Cow::Borrowed(raw)
        };
        labels.push((key, value));
        i += 1;
        skip_blanks(&mut i);
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            _ => return Err("expected `,` or `}` after a label"),
        }
    }
}

fn unescape(raw: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('n') => out.push('\n'),
            _ => return Err("invalid escape in a label value"),
        }
    }
    Ok(out)
}

/// A sample value: Go's float syntax as Prometheus writes it.
fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if v
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            v.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Result<Vec<Sample<'_>>, ParseError> {
        parse(text, |_| true, 1000)
    }

    #[test]
    fn reads_what_the_sidecar_writes() {
        let text = "# HELP istio_requests_total Requests\n\
            # TYPE istio_requests_total counter\n\
            istio_requests_total{reporter=\"destination\",source_workload=\"productpage-v1\",response_code=\"200\"} 42\n\
            istio_request_duration_milliseconds_bucket{reporter=\"destination\",le=\"+Inf\"} 7\n\
            istio_tcp_sent_bytes_total 1.5e3 1700000000000\n\
            \n";
        let s = all(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "istio_requests_total");
        assert_eq!(s[0].label("source_workload"), "productpage-v1");
        assert_eq!(s[0].label("response_code"), "200");
        assert_eq!(s[0].label("absent"), "");
        assert_eq!(s[0].value, 42.0);
        assert!(s[0].series.ends_with("response_code=\"200\"}"));
        assert_eq!(s[1].label("le"), "+Inf");
        assert_eq!(s[2].series, "istio_tcp_sent_bytes_total");
        assert_eq!(s[2].value, 1500.0);
    }

    #[test]
    fn label_values_are_unescaped_and_special_values_read() {
        let s = all("m{a=\"x\\\"y\\\\z\\nw\", b = \"\",} +Inf\nn NaN\no -Inf\n").unwrap();
        assert_eq!(s[0].label("a"), "x\"y\\z\nw");
        assert_eq!(s[0].label("b"), "");
        assert!(s[0].value.is_infinite() && s[0].value > 0.0);
        assert!(s[1].value.is_nan());
        assert_eq!(s[2].value, f64::NEG_INFINITY);
        // A `}` or `,` inside a quoted value is part of the value.
        let s = all("m{path=\"/a,b}c\"} 1").unwrap();
        assert_eq!(s[0].label("path"), "/a,b}c");
    }

    #[test]
    fn unwanted_families_are_skipped_unparsed_and_wanted_ones_checked() {
        let text = "envoy_cluster_x{this is not parsed 1\nistio_requests_total 3\n";
        let s = parse(text, |n| n.starts_with("istio_"), 10).unwrap();
        assert_eq!(s.len(), 1);
        for bad in [
            "m{a=\"1\" 2",
            "m{a=1} 2",
            "m{a=\"1\"}",
            "m{a=\"1\"} abc",
            "m{a=\"1\"} 1 2 3",
            "m{a=\"1\"} 1 x",
            "m{=\"1\"} 1",
            "m{a=\"\\q\"} 1",
            "m{a=\"unterminated} 1",
            "9m 1",
        ] {
            let e = all(bad).unwrap_err();
            assert!(
                matches!(e, ParseError::Malformed { line: 1, .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn the_number_of_samples_is_bounded() {
        let text = "a 1\na 2\na 3\n";
        assert_eq!(
            parse(text, |_| true, 2).unwrap_err(),
            ParseError::TooManySamples(2)
        );
        assert_eq!(parse(text, |_| true, 3).unwrap().len(), 3);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"m{}=\",\\ n1.e+-#\tIa_";
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let text: String = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize] as char
                })
                .collect();
            let _ = all(&text);
        }
    }
}
