//! What the measured process tells the process that ran it under valgrind: the CPU features it
//! detected and the cases it measured, in order (callgrind wrote one dump after each).
//!
//! The features matter because code picks its instructions at run time by them (ring's AES-GCM
//! and SHA-256, glibc's `memcpy`): under valgrind they are those of the CPU valgrind emulates,
//! a fixed model on any host with AVX2 (valgrind 3.19: AVX2, BMI2, AES-NI, PCLMULQDQ; no SHA
//! extensions, ADX or AVX-512 even where the host has them), so counts from different CI
//! machines agree. The baseline records them, and a check on a CPU that differs says so.

use super::CallgrindError;
use std::fmt::Write as _;
use std::path::Path;

/// The bench target's flag that makes it measure (under valgrind) and write its manifest to
/// the path that follows.
pub const MANIFEST_FLAG: &str = "--measure-into";

/// One case as measured: its id (`group/name`) and how many iterations the dump counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasuredCase {
    /// The case's id, as criterion prints it.
    pub name: String,
    /// Iterations inside the counted region.
    pub iterations: u64,
}

/// The measured process's report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The CPU features the process detected ([`cpu_features`]).
    pub cpu: String,
    /// The cases, in the order their dumps were written.
    pub cases: Vec<MeasuredCase>,
}

impl Manifest {
    /// The manifest as text: `cpu <features>`, then `case <iterations> <name>` per case.
    pub fn render(&self) -> String {
        let mut text = format!("cpu {}\n", self.cpu);
        for case in &self.cases {
            let _ = writeln!(text, "case {} {}", case.iterations, case.name);
        }
        text
    }

    /// Reads a manifest written by [`Manifest::render`]; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CallgrindError> {
        let mut manifest = Manifest::default();
        for (index, line) in text.lines().enumerate() {
            let bad = |reason: &str| CallgrindError::Format {
                path: path.to_path_buf(),
                line: index + 1,
                reason: reason.to_string(),
            };
            match line.split_once(' ') {
                Some(("cpu", features)) => manifest.cpu = features.to_string(),
                Some(("case", rest)) => {
                    let (iterations, name) = rest
                        .split_once(' ')
                        .ok_or_else(|| bad("expected `case <iterations> <name>`"))?;
                    let iterations = iterations
                        .parse()
                        .map_err(|_| bad("the iteration count is not a number"))?;
                    manifest.cases.push(MeasuredCase {
                        name: name.to_string(),
                        iterations,
                    });
                }
                _ => return Err(bad("expected a `cpu` or `case` line")),
            }
        }
        Ok(manifest)
    }

    /// Writes the manifest to `path`.
    pub fn write(&self, path: &Path) -> Result<(), CallgrindError> {
        std::fs::write(path, self.render()).map_err(|source| CallgrindError::Io {
            what: "write the manifest",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads the manifest at `path`.
    pub fn read(path: &Path) -> Result<Self, CallgrindError> {
        let text = std::fs::read_to_string(path).map_err(|source| CallgrindError::Io {
            what: "read the manifest",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// The architecture and the instruction-set extensions this process detects at run time,
/// among those that crypto and string code choose by, e.g.
/// `x86_64 sse2 ssse3 sse4.1 sse4.2 popcnt avx avx2 fma bmi1 bmi2 lzcnt movbe aes pclmulqdq`.
pub fn cpu_features() -> String {
    let mut text = std::env::consts::ARCH.to_string();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! detected {
            ($($feature:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($feature) {
                    text.push(' ');
                    text.push_str($feature);
                })*
            };
        }
        detected!(
            "sse2",
            "ssse3",
            "sse4.1",
            "sse4.2",
            "popcnt",
            "avx",
            "avx2",
            "fma",
            "bmi1",
            "bmi2",
            "lzcnt",
            "movbe",
            "adx",
            "aes",
            "pclmulqdq",
            "sha",
            "vaes",
            "vpclmulqdq",
            "avx512f",
            "avx512bw",
            "rdrand",
            "rdseed"
        );
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! detected {
            ($($feature:tt),*) => {
                $(if std::arch::is_aarch64_feature_detected!($feature) {
                    text.push(' ');
                    text.push_str($feature);
                })*
            };
        }
        detected!("neon", "aes", "pmull", "sha2", "sha3", "lse", "sve");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_as_written() {
        let manifest = Manifest {
            cpu: "x86_64 sse2 avx2".into(),
            cases: vec![
                MeasuredCase {
                    name: "route/app".into(),
                    iterations: 1000,
                },
                MeasuredCase {
                    name: "headers/strip-hop-by-hop+request-id".into(),
                    iterations: 10,
                },
            ],
        };
        let text = manifest.render();
        assert_eq!(
            Manifest::parse(&text, Path::new("m")).expect("parses"),
            manifest
        );
    }

    #[test]
    fn a_garbled_manifest_names_the_line() {
        let err = Manifest::parse("cpu x86_64\ncase many route/app\n", Path::new("m"))
            .expect_err("not a number");
        assert_eq!(err.to_string(), "m:2: the iteration count is not a number");
    }

    #[test]
    fn the_features_start_with_the_architecture() {
        assert!(cpu_features().starts_with(std::env::consts::ARCH));
    }
}
