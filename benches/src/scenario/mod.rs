//! Benchmark scenarios, one module each.
//!
//! `pair` (the default) measures one client/server sidecar pair against a direct call;
//! `control` measures the control plane with many simulated proxies; `chaos` breaks a backend
//! under load behind a real control plane (outlier detection, retries); `mesh` runs a 15-service
//! application under a real control plane and measures the latency added per hop; `pods` runs
//! the pair in two pods (network namespaces) over captured traffic beside the explicit mode;
//! `scale` measures what the size of the mesh costs one sidecar; `connections` measures what
//! idle connections, connection churn, new mTLS connections and large bodies cost a pair.
//! [`measure`] holds what `chaos` and `mesh` share.

pub mod chaos;
pub mod connections;
pub mod control;
pub mod measure;
pub mod mesh;
pub mod pair;
pub mod pods;
pub mod scale;

use clap::ValueEnum;

use crate::cli::BenchArgs;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// One mTLS sidecar pair vs a direct call: added latency, CPU and memory per sidecar.
    Pair,
    /// N simulated proxies on one control plane: config convergence, CSR rate, control RSS/CPU.
    Control,
    /// Three backends of one service, one failing then killed under load: client errors,
    /// upstream attempts, time to eject.
    Chaos,
    /// A 15-service application under a real control plane: latency added per hop, CPU per
    /// 1,000 requests and peak RSS per sidecar.
    Mesh,
    /// The pair in two pods (network namespaces, iptables capture, sidecars as uid 1337):
    /// captured beside explicit, the cost of capture, pod start to first served request.
    Pods,
    /// One sidecar in meshes of 1 to 5,000 services: peak RSS, time to apply the whole config
    /// and one changed service, first request to a service never called.
    Scale,
    /// Idle keep-alive connections (RSS per connection), closed-loop maximum RPS, connection
    /// churn, new mTLS connections and 1/100 MiB bodies each way, beside HAProxy.
    Connections,
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
    /// The chaos scenario failed.
    #[error(transparent)]
    Chaos(#[from] chaos::ChaosError),
    /// The mesh scenario failed.
    #[error(transparent)]
    Mesh(#[from] mesh::MeshScenarioError),
    /// The pods scenario failed.
    #[error(transparent)]
    Pods(#[from] pods::PodsError),
    /// The scale scenario failed.
    #[error(transparent)]
    Scale(#[from] Box<scale::ScaleError>),
    /// The connections scenario failed.
    #[error(transparent)]
    Connections(#[from] connections::ConnectionsError),
    /// An option was given to a scenario that does not take it.
    #[error("{0}")]
    Option(String),
}

/// Runs the chosen scenario; returns whether every leg ran (false: some leg failed; the report
/// says which).
pub fn run(args: &BenchArgs) -> Result<bool, ScenarioError> {
    if !args.tracing.is_empty() && args.scenario != ScenarioName::Pair {
        return Err(ScenarioError::Option(
            "--tracing applies to the pair scenario only".into(),
        ));
    }
    match args.scenario {
        ScenarioName::Pair => Ok(pair::run(args)?),
        ScenarioName::Control => Ok(control::run(args)?),
        ScenarioName::Chaos => Ok(chaos::run(args)?),
        ScenarioName::Mesh => Ok(mesh::run(args)?),
        ScenarioName::Pods => Ok(pods::run(args)?),
        ScenarioName::Scale => Ok(scale::run(args).map_err(Box::new)?),
        ScenarioName::Connections => Ok(connections::run(args)?),
    }
}
