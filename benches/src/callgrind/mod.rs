//! The request path's cost as instruction counts, and the committed baseline CI holds it to.
//!
//! The `request_instructions` bench target runs the criterion cases (`benches/benches/cases`)
//! a fixed number of times under valgrind's callgrind. Callgrind counts the instructions the
//! process executes (`Ir`) on a CPU it emulates, so a count repeats whatever else the machine
//! does and however fast it is; time does not. Only each case's measured loop is counted: the
//! target runs it inside a function callgrind switches collection on for
//! ([`REGION_FUNCTION`], `--toggle-collect`), called from one after which callgrind writes a
//! profile ([`CASE_FUNCTION`], `--dump-after`): one dump per case, in the order the process
//! lists them in its [`manifest`].
//!
//! [`valgrind`] runs the process and reads the dumps; [`baseline`] is the committed file of
//! instructions per iteration and the comparison that fails when a case grows by more than
//! [`baseline::TOLERANCE_PERCENT`].

pub mod baseline;
pub mod manifest;
pub mod valgrind;

use std::path::PathBuf;

/// The function (last path segment) whose calls callgrind counts: the measured loop only.
pub const REGION_FUNCTION: &str = "measured_region";

/// The function (last path segment) after whose return callgrind dumps one case's counts; it
/// calls [`REGION_FUNCTION`] (callgrind will not both toggle and dump on one function).
pub const CASE_FUNCTION: &str = "measured_case";

/// What went wrong measuring, reading or comparing instruction counts.
#[derive(Debug, thiserror::Error)]
pub enum CallgrindError {
    /// valgrind could not be started.
    #[error(
        "cannot run valgrind ({source}); it is Debian's `valgrind` package: apt-get install valgrind"
    )]
    ValgrindMissing {
        /// The OS error.
        source: std::io::Error,
    },
    /// A file or directory could not be read, written or made.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The measured process failed under valgrind.
    #[error("the measured process failed under valgrind ({status}); valgrind's log {log}:\n{tail}")]
    MeasureFailed {
        /// Its exit status.
        status: String,
        /// valgrind's log.
        log: PathBuf,
        /// The end of that log.
        tail: String,
    },
    /// A file did not have the expected format.
    #[error("{path}:{line}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The line (1-based; 0 for the file as a whole).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The fixed-`getrandom` library did not compile.
    #[error("cc could not build benches/callgrind/fixed_random.c ({status}):\n{stderr}")]
    Compile {
        /// The compiler's exit status.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// Callgrind wrote a different number of dumps than the process measured cases.
    #[error(
        "callgrind wrote {dumps} dumps for {cases} measured cases: is `{}` or `{}` inlined or renamed?",
        REGION_FUNCTION,
        CASE_FUNCTION
    )]
    DumpCount {
        /// Dumps found.
        dumps: usize,
        /// Cases the manifest lists.
        cases: usize,
    },
}
