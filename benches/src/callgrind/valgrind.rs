//! Running the measuring process under callgrind and reading what it counted.
//!
//! Callgrind starts with collection off (`--collect-atstart=no`), switches it on and off
//! around each call of the measured region (`--toggle-collect`), and writes a profile after
//! each case (`--dump-after`), which also zeroes its counters: dump `n` holds the instructions
//! of the `n`-th case the manifest lists and nothing else. Collection is per thread, so only
//! the thread that runs the region is counted (a background thread, such as a span exporter,
//! is not). Each dump is kept under the case's name, ready for `callgrind_annotate`.
//!
//! The measured process gets `benches/callgrind/fixed_random.c` preloaded, built here with the
//! machine's C compiler (the one ring's build uses): glibc's `getrandom` from a fixed sequence,
//! so that std's HashMap keys, and so the probes of every lookup, repeat from run to run.

use super::manifest::{MANIFEST_FLAG, Manifest};
use super::{CASE_FUNCTION, CallgrindError, REGION_FUNCTION};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How much of valgrind's log a failure quotes.
const LOG_TAIL_LINES: usize = 30;

/// Where the measured process's program and files are staged (see [`measure`]).
const STAGE_PARENT: &str = "/tmp";

/// The preloaded `getrandom` of the measured process (see the file).
const FIXED_RANDOM_C: &str = include_str!("../../callgrind/fixed_random.c");

/// One case's count from one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Count {
    /// The case's id.
    pub name: String,
    /// Iterations counted.
    pub iterations: u64,
    /// Instructions executed in them.
    pub instructions: u64,
    /// The case's callgrind profile.
    pub profile: PathBuf,
}

impl Count {
    /// Instructions per iteration.
    pub fn per_iteration(&self) -> f64 {
        self.instructions as f64 / self.iterations.max(1) as f64
    }
}

/// One run of the measuring process.
#[derive(Clone, Debug)]
pub struct Run {
    /// The CPU features it detected under valgrind.
    pub cpu: String,
    /// Its cases, in the order measured.
    pub counts: Vec<Count>,
}

/// `valgrind --version`, e.g. `valgrind-3.19.0`.
pub fn version() -> Result<String, CallgrindError> {
    let out = Command::new("valgrind")
        .arg("--version")
        .output()
        .map_err(|source| CallgrindError::ValgrindMissing { source })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the fixed-`getrandom` library in `dir` with `cc` and returns its path.
pub fn build_fixed_random(dir: &Path) -> Result<PathBuf, CallgrindError> {
    let source = dir.join("fixed_random.c");
    let library = dir.join("libfixed_random.so");
    std::fs::write(&source, FIXED_RANDOM_C).map_err(|e| CallgrindError::Io {
        what: "write",
        path: source.clone(),
        source: e,
    })?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&library)
        .arg(&source)
        .output()
        .map_err(|e| CallgrindError::Io {
            what: "run the C compiler `cc` (it builds the measured process's fixed getrandom) on",
            path: source.clone(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(CallgrindError::Compile {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(library)
}

/// Runs `exe args.. --measure-into <dir>/manifest` under callgrind with `preload` preloaded
/// (see [`build_fixed_random`]), its files in `dir` (which must exist and be empty), and reads
/// one count per case it measured.
pub fn measure(
    exe: &Path,
    args: &[OsString],
    preload: &Path,
    dir: &Path,
) -> Result<Run, CallgrindError> {
    // The measured process's arguments and environment sit at the top of its stack, so their
    // length moves every stack address, and glibc's `memcmp` and Rust's `memrchr` take other
    // paths at other alignments (a case moved by 3 % between a run from cargo and one from a
    // shell). So: no environment but the preload, and every path it is given of one length.
    let stage = tempfile::Builder::new()
        .prefix("meshlite-callgrind-")
        .tempdir_in(STAGE_PARENT)
        .map_err(|source| CallgrindError::Io {
            what: "make a directory in",
            path: PathBuf::from(STAGE_PARENT),
            source,
        })?;
    let program = stage.path().join("bench");
    let staged_preload = stage.path().join("fixed_random.so");
    for (from, to) in [(exe, &program), (preload, &staged_preload)] {
        std::fs::copy(from, to).map_err(|source| CallgrindError::Io {
            what: "copy",
            path: from.to_path_buf(),
            source,
        })?;
    }
    let manifest_path = stage.path().join("manifest");
    let log = dir.join("valgrind.log");
    let out = dir.join("callgrind.out");
    let status = Command::new("valgrind")
        .env_clear()
        .env("LD_PRELOAD", &staged_preload)
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect=*::{REGION_FUNCTION}"))
        .arg(format!("--dump-after=*::{CASE_FUNCTION}"))
        .arg("--dump-instr=no")
        .arg(flag("--callgrind-out-file=", &out))
        .arg(flag("--log-file=", &log))
        .arg(&program)
        .args(args)
        .arg(MANIFEST_FLAG)
        .arg(&manifest_path)
        .status()
        .map_err(|source| CallgrindError::ValgrindMissing { source })?;
    if !status.success() {
        return Err(CallgrindError::MeasureFailed {
            status: status.to_string(),
            tail: log_tail(&log),
            log,
        });
    }
    let manifest = Manifest::read(&manifest_path)?;
    let _ = std::fs::copy(&manifest_path, dir.join("manifest"));
    let dumps = (1..)
        .map(|n| dir.join(format!("callgrind.out.{n}")))
        .take_while(|path| path.exists())
        .count();
    if dumps != manifest.cases.len() {
        return Err(CallgrindError::DumpCount {
            dumps,
            cases: manifest.cases.len(),
        });
    }
    let mut counts = Vec::with_capacity(dumps);
    for (n, case) in manifest.cases.into_iter().enumerate() {
        let dump = dir.join(format!("callgrind.out.{}", n + 1));
        let instructions = read_total(&dump)?;
        let profile = dir.join(format!("{}.callgrind", case.name.replace('/', "_")));
        std::fs::rename(&dump, &profile).map_err(|source| CallgrindError::Io {
            what: "rename",
            path: dump,
            source,
        })?;
        counts.push(Count {
            name: case.name,
            iterations: case.iterations,
            instructions,
            profile,
        });
    }
    Ok(Run {
        cpu: manifest.cpu,
        counts,
    })
}

/// The instructions a callgrind profile counts (its `totals:` line, or `summary:`).
pub fn read_total(path: &Path) -> Result<u64, CallgrindError> {
    let text = std::fs::read_to_string(path).map_err(|source| CallgrindError::Io {
        what: "read the callgrind profile",
        path: path.to_path_buf(),
        source,
    })?;
    parse_total(&text).ok_or_else(|| CallgrindError::Format {
        path: path.to_path_buf(),
        line: 0,
        reason: "no `totals:` or `summary:` line".into(),
    })
}

/// The `Ir` total of a callgrind profile's text.
fn parse_total(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    find("totals:").or_else(|| find("summary:"))
}

fn flag(name: &str, path: &Path) -> OsString {
    let mut flag = OsString::from(name);
    flag.push(path);
    flag
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_read_from_a_profile() {
        let profile = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\n\
                       events: Ir\nsummary: 904\n\nfn=(1) t::measured_region\n5 904\n\ntotals: 904\n";
        assert_eq!(parse_total(profile), Some(904));
        assert_eq!(parse_total("events: Ir\nsummary: 17\n"), Some(17));
        assert_eq!(parse_total("events: Ir\n"), None);
    }

    #[test]
    fn per_iteration_divides_by_the_iterations() {
        let count = Count {
            name: "route/app".into(),
            iterations: 1000,
            instructions: 123_456,
            profile: PathBuf::new(),
        };
        assert_eq!(count.per_iteration(), 123.456);
    }
}
