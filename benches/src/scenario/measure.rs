//! What the scenarios share when they measure a window: the leg record of a load result,
//! judged "disturbed" by the same rules everywhere; CPU marks of single processes (one
//! killed mid-window gets a window of its own, where a [`procfs::Snapshot`] of all would fail);
//! peak memory in MB; and min/median/max over many sidecars.

use serde::Serialize;
use std::time::Instant;

use super::pair::{
    MAX_GENERATOR_CORES, MAX_OTHER_LOAD_CORES, MAX_PACER_LATE_MS, MIN_ACHIEVED_FRACTION,
};
use crate::load::LoadResult;
use crate::procfs::{self, ProcError};
use crate::report::{LegRecord, Percentiles};

/// CPU used during a leg's window by what is not a sidecar, in cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct LegCpu {
    /// The load generator (this process).
    pub generator_cores: f64,
    /// The apps, together.
    pub app_cores: f64,
    /// Everything not watched (other processes on the machine).
    pub other_cores: f64,
}

/// The leg record of a load run at `rate_rps`; `check_achieved` is false where failures are the
/// point of the run (a missing success then says nothing about the machine).
pub fn leg_record(
    result: &LoadResult,
    rate_rps: f64,
    cpu: LegCpu,
    check_achieved: bool,
) -> LegRecord {
    let mut reasons = Vec::new();
    if check_achieved && result.achieved_rps < MIN_ACHIEVED_FRACTION * rate_rps {
        reasons.push(format!(
            "achieved {:.0} RPS < {:.0}% of {rate_rps:.0}",
            result.achieved_rps,
            MIN_ACHIEVED_FRACTION * 100.0
        ));
    }
    if cpu.other_cores > MAX_OTHER_LOAD_CORES {
        reasons.push(format!("other processes used {:.2} cores", cpu.other_cores));
    }
    if cpu.generator_cores > MAX_GENERATOR_CORES {
        reasons.push(format!("generator used {:.2} cores", cpu.generator_cores));
    }
    let pacer_late_p99 = result.pacer_late_ms(0.99);
    if pacer_late_p99 > MAX_PACER_LATE_MS {
        reasons.push(format!(
            "the generator itself released requests late (p99 {pacer_late_p99:.1} ms, max {:.1} ms): \
             its thread was not run on time",
            result.pacer_late_us.max() as f64 / 1000.0
        ));
    }
    LegRecord {
        latency: Percentiles {
            p50_ms: result.quantile_ms(0.50),
            p90_ms: result.quantile_ms(0.90),
            p99_ms: result.quantile_ms(0.99),
            p999_ms: result.quantile_ms(0.999),
        },
        max_ms: result.max_ms(),
        achieved_rps: result.achieved_rps,
        requests: result.requests,
        errors: result.errors,
        warmup_errors: result.warmup_errors,
        generator_cpu_cores: cpu.generator_cores,
        app_cpu_cores: cpu.app_cores,
        other_load_cores: cpu.other_cores,
        disturbed: !reasons.is_empty(),
        disturbed_reasons: reasons,
        error_samples: result.error_samples.clone(),
        pacer_late_p50_ms: result.pacer_late_ms(0.50),
        pacer_late_p99_ms: pacer_late_p99,
    }
}

/// One process's CPU time at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    ticks: u64,
}

impl CpuMark {
    /// Reads the CPU time of `pid` now.
    pub fn take(pid: u32) -> Result<Self, ProcError> {
        Ok(Self {
            at: Instant::now(),
            ticks: procfs::process_cpu_ticks(Some(pid))?,
        })
    }

    /// CPU seconds used from this mark to `end`.
    pub fn cpu_seconds_until(&self, end: &CpuMark) -> f64 {
        end.ticks.saturating_sub(self.ticks) as f64 / procfs::ticks_per_second()
    }

    /// Wall seconds from this mark to `end`.
    pub fn seconds_until(&self, end: &CpuMark) -> f64 {
        end.at.saturating_duration_since(self.at).as_secs_f64()
    }
}

/// Peak resident set (VmHWM) of `pid`, MB (10^6 bytes), as the pair scenario reports it.
pub fn peak_rss_mb(pid: u32) -> Result<f64, ProcError> {
    Ok(procfs::peak_rss_kb(pid)? as f64 * 1024.0 / 1e6)
}

/// CPU milliseconds per 1,000 requests (0 when there were none).
pub fn per_1k(cpu_seconds: f64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        cpu_seconds * 1e3 / (requests as f64 / 1e3)
    }
}

/// Smallest, median and largest of some values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Spread {
    /// The smallest.
    pub min: f64,
    /// The median (mean of the middle two for an even count).
    pub median: f64,
    /// The largest.
    pub max: f64,
}

/// The [`Spread`] of `values` (all zero when empty).
pub fn spread(values: &[f64]) -> Spread {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return Spread::default();
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Spread {
        min: sorted[0],
        median,
        max: sorted[n - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_of_odd_even_and_empty_sets() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0]),
            Spread {
                min: 1.0,
                median: 2.0,
                max: 3.0
            }
        );
        assert_eq!(spread(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert_eq!(spread(&[]), Spread::default());
    }

    #[test]
    fn cpu_per_thousand_requests() {
        assert_eq!(per_1k(0.5, 10_000), 50.0);
        assert_eq!(per_1k(0.5, 0), 0.0);
    }

    #[test]
    fn a_cpu_mark_of_ourselves_reads_forward() {
        let start = CpuMark::take(std::process::id());
        let end = CpuMark::take(std::process::id());
        if let (Ok(start), Ok(end)) = (start, end) {
            assert!(start.cpu_seconds_until(&end) >= 0.0);
            assert!(start.seconds_until(&end) >= 0.0);
        } else {
            panic!("/proc/self is readable");
        }
    }
}
