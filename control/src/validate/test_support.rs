//! What the validation tests share: a config directory checked as the server checks it, and
//! assertions on the problems found at a field.

use crate::source::{Problem, Severity};
use crate::validate::{Report, check_dir};

/// Checks `docs` written as one file of a config directory.
pub fn check(docs: &[String]) -> Report {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), docs.concat()).unwrap();
    check_dir(dir.path())
}

/// Asserts a problem of `severity` at `field` exists and returns it.
#[track_caller]
pub fn expect<'a>(report: &'a Report, severity: Severity, field: &str) -> &'a Problem {
    report
        .problems
        .iter()
        .find(|p| p.severity == severity && p.field.as_deref() == Some(field))
        .unwrap_or_else(|| panic!("no {severity} at {field}; got {:#?}", report.problems))
}

/// Asserts `docs` have an error at `field`, which withholds the config set.
#[track_caller]
pub fn expect_error(docs: &[String], field: &str) -> Problem {
    let report = check(docs);
    assert!(
        report.set.is_none(),
        "an error must withhold the config set"
    );
    expect(&report, Severity::Error, field).clone()
}

/// Asserts `docs` have no error.
#[track_caller]
pub fn expect_no_error(docs: &[String]) -> Report {
    let report = check(docs);
    assert!(!report.has_errors(), "{:#?}", report.problems);
    assert!(report.set.is_some());
    report
}
