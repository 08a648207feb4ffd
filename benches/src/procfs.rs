//! Reading CPU time and memory from `/proc`.
//!
//! CPU of a process is `utime + stime` from `/proc/PID/stat` (all its threads, in clock ticks);
//! its peak resident set is `VmHWM` from `/proc/PID/status`; the machine's busy time is the first
//! line of `/proc/stat` (user, nice, system, steal; idle apart). Two [`Snapshot`]s taken at the edges of a measured
//! window give each process's cores used, and how much CPU *other* processes on the machine used
//! meanwhile (busy time not accounted for by the processes we watch), which is how a run that
//! shared the machine with a compiler is recognised.

use std::time::Instant;

/// Why a /proc file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Reading the file failed (the process may have exited).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The /proc path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// The /proc path.
        path: String,
        /// What was missing.
        what: &'static str,
    },
}

fn read(path: &str) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.into(),
        source,
    })
}

/// Clock ticks per second (`USER_HZ`), the unit of /proc CPU times.
pub fn ticks_per_second() -> f64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        // Linux has used 100 on every mainstream architecture since 2.6.
        _ => 100.0,
    }
}

/// `utime + stime` of a process (`self` for our own), in clock ticks.
pub fn process_cpu_ticks(pid: Option<u32>) -> Result<u64, ProcError> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let text = read(&path)?;
    parse_stat_cpu(&text).ok_or(ProcError::Parse {
        path,
        what: "utime/stime fields",
    })
}

/// `utime + stime` of one thread of this process (`/proc/self/task/TID/stat`), in clock ticks:
/// how the trace collector's CPU is told from the load generator's, in the same process.
pub fn thread_cpu_ticks(tid: i32) -> Result<u64, ProcError> {
    let path = format!("/proc/self/task/{tid}/stat");
    let text = read(&path)?;
    parse_stat_cpu(&text).ok_or(ProcError::Parse {
        path,
        what: "utime/stime fields",
    })
}

/// Parses `utime + stime` out of a `/proc/PID/stat` line.
fn parse_stat_cpu(text: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3; utime is field 14 and stime field 15 (1-based).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident set size (`VmHWM`) of a process, in kB.
pub fn peak_rss_kb(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    parse_status_kb(&text, "VmHWM:").ok_or(ProcError::Parse {
        path,
        what: "VmHWM",
    })
}

/// Current resident set size (`VmRSS`) of a process, in kB.
pub fn rss_kb(pid: u32) -> Result<u64, ProcError> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    parse_status_kb(&text, "VmRSS:").ok_or(ProcError::Parse {
        path,
        what: "VmRSS",
    })
}

fn parse_status_kb(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// The machine's CPU time: busy and total ticks over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemCpu {
    /// Ticks spent running tasks or stolen by the hypervisor (user, nice, system, steal).
    pub busy: u64,
    /// Ticks spent idle (idle, iowait). Unlike the busy fields, which are sampled at timer
    /// ticks and miss short bursts on a mostly idle CPU, the kernel keeps idle time exactly.
    pub idle: u64,
    /// All ticks.
    pub total: u64,
}

/// Reads the first line of `/proc/stat`.
pub fn system_cpu() -> Result<SystemCpu, ProcError> {
    let text = read("/proc/stat")?;
    parse_system_cpu(&text).ok_or(ProcError::Parse {
        path: "/proc/stat".into(),
        what: "cpu line",
    })
}

fn parse_system_cpu(text: &str) -> Option<SystemCpu> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice].
    // Busy = user + nice + system + steal: interrupt time is mostly our own loopback traffic,
    // which no process is charged for, so it would read as "other load".
    let at = |i: usize| values.get(i).copied().unwrap_or(0);
    let total: u64 = values.iter().take(8).sum();
    let busy = at(0) + at(1) + at(2) + at(7);
    Some(SystemCpu {
        busy,
        idle: at(3) + at(4),
        total,
    })
}

/// Number of online CPUs.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// CPU counters of the machine, of this process and of watched children, at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// When it was taken.
    pub at: Instant,
    /// Whole machine.
    pub system: SystemCpu,
    /// This process (the load generator).
    pub own_ticks: u64,
    /// Each watched process's ticks, in the order given.
    pub ticks: Vec<u64>,
}

impl Snapshot {
    /// Samples the machine, ourselves and `pids`.
    pub fn take(pids: &[u32]) -> Result<Self, ProcError> {
        let at = Instant::now();
        let system = system_cpu()?;
        let own_ticks = process_cpu_ticks(None)?;
        let ticks = pids
            .iter()
            .map(|&pid| process_cpu_ticks(Some(pid)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            at,
            system,
            own_ticks,
            ticks,
        })
    }
}

/// CPU use over a window, in cores (1.0 = one CPU busy all the time).
#[derive(Debug, Clone)]
pub struct CpuUsage {
    /// Window length in seconds.
    pub seconds: f64,
    /// Our own process (the generator).
    pub own_cores: f64,
    /// Each watched process.
    pub cores: Vec<f64>,
    /// Everything else on the machine.
    pub other_cores: f64,
    /// The whole machine, interrupts included (all CPUs minus their exact idle time): how close
    /// to saturation it was.
    pub machine_cores: f64,
}

/// CPU use between two snapshots of the same processes.
pub fn usage(start: &Snapshot, end: &Snapshot) -> CpuUsage {
    let hz = ticks_per_second();
    let seconds = end
        .at
        .saturating_duration_since(start.at)
        .as_secs_f64()
        .max(1e-6);
    let cores = |ticks: u64| ticks as f64 / hz / seconds;
    let own = end.own_ticks.saturating_sub(start.own_ticks);
    let watched: Vec<u64> = end
        .ticks
        .iter()
        .zip(&start.ticks)
        .map(|(e, s)| e.saturating_sub(*s))
        .collect();
    let ours = own + watched.iter().sum::<u64>();
    let busy = end.system.busy.saturating_sub(start.system.busy);
    let idle = end.system.idle.saturating_sub(start.system.idle);
    CpuUsage {
        machine_cores: (cpu_count() as f64 - cores(idle)).max(0.0),
        seconds,
        own_cores: cores(own),
        cores: watched.into_iter().map(cores).collect(),
        other_cores: cores(busy.saturating_sub(ours)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_spaces_in_name() {
        let line = "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 100 \
                    1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some(42));
    }

    #[test]
    fn status_hwm() {
        let text = "Name:\tx\nVmPeak:\t 1000 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_kb(text, "VmHWM:"), Some(2048));
    }

    #[test]
    fn system_line() {
        let text = "cpu  100 0 50 800 40 3 7 0 0 0\ncpu0 1 2 3 4 5\n";
        assert_eq!(
            parse_system_cpu(text),
            Some(SystemCpu {
                busy: 150,
                idle: 840,
                total: 1000
            })
        );
    }

    #[test]
    fn own_process_is_readable() {
        assert!(process_cpu_ticks(None).is_ok());
        assert!(thread_cpu_ticks(nix::unistd::gettid().as_raw()).is_ok());
        assert!(peak_rss_kb(std::process::id()).is_ok_and(|kb| kb > 0));
    }
}
