//! Benchmark scenarios, one module each.
//!
//! `pair` (the default) measures one client/server sidecar pair against a direct call;
//! `control` measures the control plane with many simulated proxies. Later scenarios (`mesh`,
//! `chaos`) plug in here beside them and reuse the shared modules.

pub mod control;
pub mod pair;

use clap::ValueEnum;

use crate::cli::BenchArgs;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// One mTLS sidecar pair vs a direct call: added latency, CPU and memory per sidecar.
    Pair,
    /// N simulated proxies on one control plane: config convergence, CSR rate, control RSS/CPU.
    Control,
}

/// Why a scenario failed.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The pair scenario failed.
    #[error(transparent)]
    Pair(#[from] pair::PairError),
    /// The control scenario failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// Runs the chosen scenario; returns whether every leg ran (false: some leg failed; the report
/// says which).
pub fn run(args: &BenchArgs) -> Result<bool, ScenarioError> {
    match args.scenario {
        ScenarioName::Pair => Ok(pair::run(args)?),
        ScenarioName::Control => Ok(control::run(args)?),
    }
}
