//! The committed baseline of instructions per iteration, and the check against it.
//!
//! The file is text, one case a line (`<case> <instructions per iteration>`, in the order the
//! cases run), after `#` comments and `@<key> <value>` lines that record what measured it
//! (valgrind, rustc, the emulated CPU, the iterations). A case more than
//! [`TOLERANCE_PERCENT`] above its line fails the check; one more than that below passes with
//! a hint to lock the gain in. A case missing from the file, or a line no case measured any
//! more, fails too: the baseline is updated on purpose, in the commit that changes the cases.

use super::CallgrindError;
use std::fmt::Write as _;
use std::path::Path;

/// How far above its baseline a case may go before the check fails (the 5 %); an
/// improvement by more than this prints a hint to update the baseline.
pub const TOLERANCE_PERCENT: f64 = 5.0;

/// The baseline file's contents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baseline {
    /// The leading comment lines, without their `# `.
    pub comments: Vec<String>,
    /// What measured it: `(key, value)` from `@key value` lines, in file order.
    pub meta: Vec<(String, String)>,
    /// Instructions per iteration by case id, in file order.
    pub cases: Vec<(String, f64)>,
}

impl Baseline {
    /// Parses the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CallgrindError> {
        let mut baseline = Baseline::default();
        for (index, line) in text.lines().enumerate() {
            let bad = |reason: String| CallgrindError::Format {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                baseline
                    .comments
                    .push(comment.strip_prefix(' ').unwrap_or(comment).to_string());
            } else if let Some(meta) = line.strip_prefix('@') {
                let (key, value) = meta.split_once(' ').unwrap_or((meta, ""));
                baseline
                    .meta
                    .push((key.to_string(), value.trim().to_string()));
            } else {
                let (name, value) = line
                    .rsplit_once(char::is_whitespace)
                    .ok_or_else(|| bad("expected `<case> <instructions per iteration>`".into()))?;
                let value: f64 = value
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(format!("`{value}` is not a count of instructions")))?;
                let name = name.trim_end();
                if baseline.get(name).is_some() {
                    return Err(bad(format!("{name} is listed twice")));
                }
                baseline.cases.push((name.to_string(), value));
            }
        }
        Ok(baseline)
    }

    /// The file's text: comments, `@` lines, then the cases with their names padded into a
    /// column and one decimal.
    pub fn render(&self) -> String {
        let mut text = String::new();
        for comment in &self.comments {
            let _ = writeln!(text, "# {comment}");
        }
        for (key, value) in &self.meta {
            let _ = writeln!(text, "@{key} {value}");
        }
        let width = self.cases.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, value) in &self.cases {
            let _ = writeln!(text, "{name:<width$} {value:.1}");
        }
        text
    }

    /// Reads the file at `path`; a missing file is an empty baseline.
    pub fn read(path: &Path) -> Result<Self, CallgrindError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(CallgrindError::Io {
                what: "read the baseline",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> Result<(), CallgrindError> {
        std::fs::write(path, self.render()).map_err(|source| CallgrindError::Io {
            what: "write the baseline",
            path: path.to_path_buf(),
            source,
        })
    }

    /// A case's instructions per iteration.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.cases.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// A `@key`'s value.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `@key` (in place, or appended).
    pub fn set_meta(&mut self, key: &str, value: &str) {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => self.meta.push((key.to_string(), value.to_string())),
        }
    }

    /// Takes the measured cases' figures: each replaces its line (or is appended, in measured
    /// order); when `complete`, lines no case measured are dropped.
    pub fn update(&mut self, measured: &[Measured], complete: bool) {
        if complete {
            self.cases
                .retain(|(name, _)| measured.iter().any(|m| &m.name == name));
        }
        for m in measured {
            match self.cases.iter_mut().find(|(name, _)| *name == m.name) {
                Some((_, value)) => *value = round(m.per_iteration),
                None => self.cases.push((m.name.clone(), round(m.per_iteration))),
            }
        }
    }
}

/// A case's figure from this measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The case's id.
    pub name: String,
    /// Instructions per iteration (the median of the runs).
    pub per_iteration: f64,
    /// Over several runs, how far the largest figure is above the smallest, in percent.
    pub spread_percent: Option<f64>,
}

/// How a case compares with its baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the tolerance either way.
    Within,
    /// More than the tolerance above the baseline: the check fails.
    Regressed,
    /// More than the tolerance below the baseline: passes, with a hint to update it.
    Improved,
    /// Measured, but not in the baseline: the check fails.
    New,
    /// In the baseline, but not measured: the check fails.
    Gone,
    /// Shown, never failing: a case the check leaves out (its count is not repeatable).
    Ungated,
}

/// One case's line of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// The case's id.
    pub name: String,
    /// Its baseline, when it has one.
    pub baseline: Option<f64>,
    /// Its figure now, when it was measured.
    pub now: Option<f64>,
    /// The spread over several runs, in percent.
    pub spread_percent: Option<f64>,
    /// The outcome.
    pub verdict: Verdict,
}

impl Line {
    /// The change from the baseline in percent, when both figures exist.
    pub fn change_percent(&self) -> Option<f64> {
        match (self.baseline, self.now) {
            (Some(base), Some(now)) if base > 0.0 => Some((now - base) / base * 100.0),
            (Some(_), Some(now)) if now > 0.0 => Some(f64::INFINITY),
            (Some(_), Some(_)) => Some(0.0),
            _ => None,
        }
    }
}

/// The whole check.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// One line per case: the measured ones in measured order, then the baseline's others.
    pub lines: Vec<Line>,
}

/// Compares the measured cases with the baseline; `complete` says every case was measured (no
/// filter), so that a baseline line without a case is reported; the cases named in `ungated`
/// are shown but never fail.
pub fn compare(
    baseline: &Baseline,
    measured: &[Measured],
    complete: bool,
    ungated: &[&str],
) -> Comparison {
    let mut lines: Vec<Line> = measured
        .iter()
        .map(|m| {
            let base = baseline.get(&m.name);
            let mut line = Line {
                name: m.name.clone(),
                baseline: base,
                now: Some(m.per_iteration),
                spread_percent: m.spread_percent,
                verdict: Verdict::New,
            };
            if ungated.contains(&m.name.as_str()) {
                line.verdict = Verdict::Ungated;
            } else if let Some(change) = line.change_percent() {
                line.verdict = if change > TOLERANCE_PERCENT {
                    Verdict::Regressed
                } else if change < -TOLERANCE_PERCENT {
                    Verdict::Improved
                } else {
                    Verdict::Within
                };
            }
            line
        })
        .collect();
    if complete {
        for (name, value) in &baseline.cases {
            if !measured.iter().any(|m| &m.name == name) {
                lines.push(Line {
                    name: name.clone(),
                    baseline: Some(*value),
                    now: None,
                    spread_percent: None,
                    verdict: Verdict::Gone,
                });
            }
        }
    }
    Comparison { lines }
}

impl Comparison {
    /// Whether any case regressed, is new or is gone.
    pub fn failed(&self) -> bool {
        self.lines
            .iter()
            .any(|l| matches!(l.verdict, Verdict::Regressed | Verdict::New | Verdict::Gone))
    }

    /// The table of every case, then one sentence per case that fails or improved;
    /// `update` is the command that updates the baseline.
    pub fn render(&self, update: &str) -> String {
        let width = self
            .lines
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(0)
            .max("case".len());
        let spreads = self.lines.iter().any(|l| l.spread_percent.is_some());
        let mut text = format!(
            "{:<width$} {:>12} {:>12} {:>9}{}\n",
            "case",
            "baseline",
            "now",
            "change",
            if spreads { "    spread" } else { "" }
        );
        let figure = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
        for line in &self.lines {
            let change = line
                .change_percent()
                .map_or_else(|| "-".to_string(), |c| format!("{c:+.1} %"));
            let mark = match line.verdict {
                Verdict::Within => "",
                Verdict::Regressed => "  FAIL",
                Verdict::Improved => "  better",
                Verdict::New => "  new",
                Verdict::Gone => "  gone",
                Verdict::Ungated => "  (not gated)",
            };
            let spread = match (spreads, line.spread_percent) {
                (false, _) => String::new(),
                (true, Some(s)) => format!(" {:>7.2} %", s),
                (true, None) => format!(" {:>9}", "-"),
            };
            let _ = writeln!(
                text,
                "{:<width$} {:>12} {:>12} {:>9}{spread}{mark}",
                line.name,
                figure(line.baseline),
                figure(line.now),
                change,
            );
        }
        for line in &self.lines {
            let (base, now) = (figure(line.baseline), figure(line.now));
            let change = line.change_percent().unwrap_or(0.0);
            let _ = match line.verdict {
                Verdict::Within | Verdict::Ungated => Ok(()),
                Verdict::Regressed => writeln!(
                    text,
                    "FAIL {}: {now} instructions per iteration, baseline {base}: {change:+.1} % \
                     (more than the {TOLERANCE_PERCENT} % allowed). If the cost is meant, \
                     update the baseline: {update}",
                    line.name
                ),
                Verdict::Improved => writeln!(
                    text,
                    "better {}: {now} instructions per iteration, baseline {base}: {change:+.1} %. \
                     Lock the gain in: {update}",
                    line.name
                ),
                Verdict::New => writeln!(
                    text,
                    "FAIL {}: {now} instructions per iteration, not in the baseline. Add it: {update}",
                    line.name
                ),
                Verdict::Gone => writeln!(
                    text,
                    "FAIL {}: in the baseline ({base}) but no longer measured. Drop it: {update}",
                    line.name
                ),
            };
        }
        text
    }
}

/// Figures are kept to one decimal (the file's precision), so a check right after an update
/// compares like with like.
fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, per_iteration: f64) -> Measured {
        Measured {
            name: name.into(),
            per_iteration,
            spread_percent: None,
        }
    }

    fn baseline() -> Baseline {
        Baseline::parse(
            "# counted by callgrind\n@valgrind valgrind-3.19.0\n\
             route/app                  100.0\nheaders/uuid-v4  2000.0\njwt/es256-valid 50000.0\n",
            Path::new("baseline.txt"),
        )
        .expect("parses")
    }

    #[test]
    fn the_file_reads_back_as_written() {
        let b = baseline();
        assert_eq!(b.comments, ["counted by callgrind"]);
        assert_eq!(b.meta("valgrind"), Some("valgrind-3.19.0"));
        assert_eq!(b.get("headers/uuid-v4"), Some(2000.0));
        assert_eq!(
            Baseline::parse(&b.render(), Path::new("b")).expect("parses"),
            b
        );
        assert!(b.render().contains("route/app       100.0\n"));
    }

    #[test]
    fn a_bad_line_is_named() {
        let err = Baseline::parse("route/app 100\nroute/x lots\n", Path::new("b.txt"))
            .expect_err("not a number");
        assert_eq!(
            err.to_string(),
            "b.txt:2: `lots` is not a count of instructions"
        );
        let err =
            Baseline::parse("route/app 1\nroute/app 2\n", Path::new("b.txt")).expect_err("twice");
        assert_eq!(err.to_string(), "b.txt:2: route/app is listed twice");
    }

    #[test]
    fn more_than_five_percent_above_fails_naming_the_case() {
        let c = compare(
            &baseline(),
            &[
                measured("route/app", 105.0),
                measured("headers/uuid-v4", 2101.0),
                measured("jwt/es256-valid", 50000.0),
            ],
            true,
            &[],
        );
        assert_eq!(c.lines[0].verdict, Verdict::Within);
        assert_eq!(c.lines[1].verdict, Verdict::Regressed);
        assert!(c.failed());
        let report = c.render("benches/callgrind/run --update");
        assert!(
            report.contains(
                "FAIL headers/uuid-v4: 2101.0 instructions per iteration, baseline 2000.0: +5.1 %"
            ),
            "{report}"
        );
        assert!(
            report.contains("benches/callgrind/run --update"),
            "{report}"
        );
    }

    #[test]
    fn an_improvement_passes_with_a_hint() {
        let c = compare(
            &baseline(),
            &[
                measured("route/app", 90.0),
                measured("headers/uuid-v4", 2000.0),
                measured("jwt/es256-valid", 50000.0),
            ],
            true,
            &[],
        );
        assert_eq!(c.lines[0].verdict, Verdict::Improved);
        assert!(!c.failed());
        assert!(c.render("update").contains("better route/app"));
    }

    #[test]
    fn new_and_gone_cases_fail_unless_filtered() {
        let now = [measured("route/app", 100.0), measured("route/new", 1.0)];
        let c = compare(&baseline(), &now, true, &[]);
        let verdicts: Vec<_> = c
            .lines
            .iter()
            .map(|l| (l.name.as_str(), l.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("route/app", Verdict::Within),
                ("route/new", Verdict::New),
                ("headers/uuid-v4", Verdict::Gone),
                ("jwt/es256-valid", Verdict::Gone),
            ]
        );
        assert!(c.failed());
        let filtered = compare(&baseline(), &now[..1], false, &[]);
        assert!(!filtered.failed());
        assert_eq!(filtered.lines.len(), 1);
    }

    #[test]
    fn an_ungated_case_never_fails() {
        let now = [
            measured("route/app", 200.0),
            measured("headers/uuid-v4", 2000.0),
            measured("jwt/es256-valid", 50000.0),
        ];
        let c = compare(&baseline(), &now, true, &["route/app"]);
        assert_eq!(c.lines[0].verdict, Verdict::Ungated);
        assert!(!c.failed());
        assert!(c.render("update").contains("(not gated)"));
    }

    #[test]
    fn an_update_replaces_appends_and_drops() {
        let mut b = baseline();
        b.update(
            &[measured("route/app", 101.26), measured("route/new", 7.0)],
            false,
        );
        assert_eq!(b.get("route/app"), Some(101.3));
        assert_eq!(b.get("headers/uuid-v4"), Some(2000.0));
        assert_eq!(b.cases.last().map(|(n, _)| n.as_str()), Some("route/new"));
        b.update(&[measured("route/app", 99.0)], true);
        assert_eq!(b.cases, [("route/app".to_string(), 99.0)]);
    }
}
