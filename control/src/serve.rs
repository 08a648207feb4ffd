//! `meshlite-control serve`: loads and watches the config directory, runs the CA, the xDS
//! server, the monitoring port and the sidecar injection webhook.
//!
//! A config edit is validated whole: if anything in it is an error, it is refused (logged,
//! counted, visible in `status`) and the last good config keeps being served, so proxies
//! never receive config that failed validation.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::ca::{CertificateAuthority, TokenSigner};
use crate::metrics::{ResourceLabels, ResultLabel};
use crate::plane::ControlPlane;
use crate::registry::Registry;
use crate::validate::admission::Baseline;
use crate::validate::{self, admission};
use crate::xds::serving::{ServingCert, ServingIdentity};
use meshlite_xds_proto::spiffe::SpiffeId;

/// The registry's file in the state directory.
pub const REGISTRY_FILE: &str = "registry.json";

/// What `serve` needs (the `serve` subcommand's flags).
#[derive(Clone, Debug, clap::Args)]
pub struct ServeOptions {
    /// Directory of Istio YAML (watched).
    #[arg(long)]
    pub config_dir: PathBuf,
    /// State directory: CA root and key, token key, revocations (kept 0600).
    #[arg(long, default_value = "/var/lib/meshlite-control")]
    pub state_dir: PathBuf,
    /// Operator CA in Istio's cacerts layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem) instead of a self-made root.
    #[arg(long)]
    pub cacerts: Option<PathBuf>,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// xDS + CA listener (TLS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub xds_addr: SocketAddr,
    /// Monitoring listener.
    #[arg(long, default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    /// Sidecar injection webhook listener (HTTPS, `/inject`).
    #[arg(long, default_value = "0.0.0.0:15017")]
    pub webhook_addr: SocketAddr,
    /// The namespace the control plane runs in: its serving certificate names
    /// `meshlite-control.<namespace>.svc` (and `.svc.cluster.local`), the names the API server
    /// and the sidecars reach it by.
    #[arg(long, env = "POD_NAMESPACE", default_value = "istio-system")]
    pub namespace: String,
    /// What the webhook injects.
    #[command(flatten)]
    pub inject: crate::inject::InjectOptions,
    /// Debounce window for pushes, e.g. `100ms`.
    #[arg(long, default_value = "100ms", value_parser = duration)]
    pub debounce: Duration,
    /// Default workload certificate lifetime.
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub cert_ttl: Duration,
    /// How long a disconnected workload stays an endpoint.
    #[arg(long, default_value = "30s", value_parser = duration)]
    pub grace: Duration,
    /// Extra DNS names for the serving certificate.
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Lifetime of the serving certificate on the xDS port; it is renewed at half of it, and
    /// whenever the CA changes.
    #[arg(long, default_value = "90d", value_parser = duration_days)]
    pub serving_cert_ttl: Duration,
    /// How often the `--cacerts` directory is checked for a rotated plug-in CA.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub cacerts_poll: Duration,
    /// How often the service graph reads every connected sidecar's metrics (its rates are
    /// averaged over this window); `0s` turns it off.
    #[arg(long, default_value = "10s", value_parser = duration)]
    pub graph_interval: Duration,
}

/// Parses `100ms`, `30s`, `24h`, `1h30m` (Istio's duration forms, the parser the proxy shares).
pub fn duration(s: &str) -> Result<Duration, String> {
    meshlite_xds_proto::duration::parse(s).map_err(|e| e.to_string())
}

/// [`duration`], also taking days (`90d`).
pub fn duration_days(s: &str) -> Result<Duration, String> {
    match s.trim().strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Ok(Duration::from_secs(days.saturating_mul(24 * 3600))),
        Some(Err(_)) => Err(format!("`{s}` is not a number of days")),
        None => duration(s),
    }
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The CA could not be loaded or created.
    #[error("CA: {0}")]
    Ca(#[from] crate::ca::CaError),
    /// The token key could not be loaded or created.
    #[error("token key: {0}")]
    Token(#[from] crate::ca::TokenError),
    /// The config directory is invalid at start-up.
    #[error("config directory {dir} is invalid:\n{problems}")]
    Config {
        /// The directory.
        dir: PathBuf,
        /// One problem per line.
        problems: String,
    },
    /// A listener or the watcher failed.
    #[error("{0}")]
    Io(String),
}

/// The running control plane's bound addresses.
#[derive(Debug, serde::Serialize)]
pub struct Bound {
    /// xDS + CA.
    pub xds: SocketAddr,
    /// Monitoring.
    pub monitoring: SocketAddr,
    /// Injection webhook.
    pub webhook: SocketAddr,
}

/// Starts everything; returns once listening.
pub async fn start(opts: ServeOptions) -> Result<(Arc<ControlPlane>, Bound), ServeError> {
    let ca = match &opts.cacerts {
        Some(dir) => CertificateAuthority::from_cacerts(dir, &opts.trust_domain)?
            .with_revocations_in(&opts.state_dir)?,
        None => CertificateAuthority::load_or_create(&opts.state_dir, &opts.trust_domain)?
            .with_revocations_in(&opts.state_dir)?,
    };
    let tokens = TokenSigner::load_or_create(&opts.state_dir)?;
    let report = validate::check_dir(&opts.config_dir);
    for p in &report.problems {
        tracing::warn!("{p}");
    }
    let Some(config) = report.set.clone() else {
        return Err(ServeError::Config {
            dir: opts.config_dir.clone(),
            problems: report
                .errors()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        });
    };
    let resources = config.len();
    let registry_file = opts.state_dir.join(REGISTRY_FILE);
    let plane = ControlPlane::new(
        ca,
        tokens,
        config,
        Registry::restore(&registry_file, opts.grace),
        opts.debounce,
        opts.cert_ttl,
        Some(registry_file),
    );
    {
        let mut st = plane.config_status();
        st.resources = resources;
        st.problems = report.problems.iter().map(|p| p.to_string()).collect();
    }
    *plane.admitted() = Baseline::new(&report.resources);

    let who = serving_identity(&opts)?;
    let serving = ServingCert::new(&plane, &who).map_err(|e| ServeError::Io(e.to_string()))?;
    let tls = crate::xds::tls::server_config(serving.clone())
        .map_err(|e| ServeError::Io(format!("TLS configuration: {e}")))?;
    let webhook_tls = crate::inject::webhook::server_config(serving.clone())
        .map_err(|e| ServeError::Io(format!("webhook TLS configuration: {e}")))?;
    tokio::spawn(serving.keep_renewed(plane.clone(), who));
    if let Some(dir) = &opts.cacerts {
        tokio::spawn(watch_cacerts(plane.clone(), opts.clone(), dir.clone()));
    }
    let xds = tokio::net::TcpListener::bind(opts.xds_addr)
        .await
        .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", opts.xds_addr)))?;
    let monitoring = tokio::net::TcpListener::bind(opts.monitoring_addr)
        .await
        .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", opts.monitoring_addr)))?;
    let webhook = tokio::net::TcpListener::bind(opts.webhook_addr)
        .await
        .map_err(|e| ServeError::Io(format!("cannot listen on {}: {e}", opts.webhook_addr)))?;
    let bound = Bound {
        xds: xds.local_addr().unwrap_or(opts.xds_addr),
        monitoring: monitoring.local_addr().unwrap_or(opts.monitoring_addr),
        webhook: webhook.local_addr().unwrap_or(opts.webhook_addr),
    };
    let mut events = crate::source::watch(opts.config_dir.clone())
        .map_err(|e| ServeError::Io(format!("cannot watch {}: {e}", opts.config_dir.display())))?;

    // Key sets of jwksUri rules are fetched before the first proxy is served.
    if plane.sync_jwks().await {
        plane.publish(tokio::time::Instant::now());
    }
    tokio::spawn(plane.clone().run_jwks_refresher());
    tokio::spawn(plane.clone().run_debouncer());
    tokio::spawn(crate::admin::serve(plane.clone(), monitoring));
    tokio::spawn(crate::graph::Collector::run(
        plane.clone(),
        crate::graph::GraphSettings::every(opts.graph_interval),
    ));
    tokio::spawn(crate::xds::serve(plane.clone(), xds, tls));
    tokio::spawn(crate::inject::webhook::serve(
        webhook,
        webhook_tls,
        Arc::new(webhook_inject_options(&opts)),
    ));
    {
        let plane = plane.clone();
        let dir = opts.config_dir.clone();
        tokio::spawn(async move {
            while events.recv().await.is_some() {
                // Editors write in several steps: let them finish before reading.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while events.try_recv().is_ok() {}
                reload(&plane, &dir);
            }
        });
    }
    Ok((plane, bound))
}

/// What the webhook injects: the flags, with the sidecars' trust domain the CA's and, unless
/// a flag names another, the control plane address this control plane serves under in its
/// namespace.
fn webhook_inject_options(opts: &ServeOptions) -> crate::inject::InjectOptions {
    let mut inject = opts.inject.clone();
    inject.trust_domain = opts.trust_domain.clone();
    if inject.control_address == crate::inject::DEFAULT_CONTROL_ADDRESS {
        inject.control_address = format!(
            "https://meshlite-control.{}.svc:{}",
            opts.namespace,
            crate::inject::CONTROL_PORT
        );
    }
    inject
}

/// Re-reads the config directory; a valid config replaces the current one, an invalid one
/// is refused whole.
pub fn reload(plane: &ControlPlane, dir: &std::path::Path) {
    let known: HashSet<String> = plane
        .registry
        .workloads()
        .iter()
        .map(|w| crate::validate::fqdn(w.service_name(), &w.namespace))
        .collect();
    let report = validate::check_dir_with_hosts(dir, &known);
    let errors = report.errors().count();
    plane
        .metrics
        .config_errors
        .set(i64::try_from(errors).unwrap_or(i64::MAX));
    count_admission(plane, &report);
    let mut st = plane.config_status();
    st.problems = report.problems.iter().map(|p| p.to_string()).collect();
    match report.set {
        Some(set) => {
            if **plane.config.load() == set {
                st.last_refused = false;
                return;
            }
            st.resources = set.len();
            st.last_refused = false;
            drop(st);
            plane.config.store(Arc::new(set));
            tracing::info!(dir = %dir.display(), "config reloaded");
            plane.changed.notify_one();
        }
        None => {
            st.last_refused = true;
            drop(st);
            for p in report.errors() {
                tracing::error!("config refused, keeping the last good one: {p}");
            }
        }
    }
}

/// Counts what a reload admits in istiod's validation metrics ([`admission`]).
fn count_admission(plane: &ControlPlane, report: &validate::Report) {
    let admission = plane.admitted().admit(report);
    let labels = |kind| {
        let (group, resource) = admission::resource_labels(kind);
        ResourceLabels { group, resource }
    };
    for kind in admission.passed {
        plane
            .metrics
            .validation_passed
            .get_or_create(&labels(Some(kind)))
            .inc();
    }
    for kind in admission.failed {
        plane
            .metrics
            .validation_failed
            .get_or_create(&labels(kind))
            .inc();
    }
}

/// What the serving certificate names: the control plane's SPIFFE ID, its service names
/// (in its namespace, short and fully qualified: the webhook's and the sidecars' names for
/// it), loopback and the listening address.
fn serving_identity(opts: &ServeOptions) -> Result<ServingIdentity, ServeError> {
    let id = SpiffeId::parse(&format!(
        "spiffe://{}/ns/istio-system/sa/meshlite-control",
        opts.trust_domain
    ))
    .map_err(|e| ServeError::Io(format!("control identity: {e}")))?;
    let mut dns = vec![
        "localhost".to_string(),
        "meshlite-control".to_string(),
        format!("meshlite-control.{}", opts.namespace),
        format!("meshlite-control.{}.svc", opts.namespace),
        format!("meshlite-control.{}.svc.cluster.local", opts.namespace),
    ];

    dns.extend(opts.dns_names.iter().cloned());
    let mut ips: Vec<IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    if !opts.xds_addr.ip().is_unspecified() && !ips.contains(&opts.xds_addr.ip()) {
        ips.push(opts.xds_addr.ip());
    }
    Ok(ServingIdentity {
        id,
        dns,
        ips,
        ttl: opts.serving_cert_ttl,
    })
}

/// A hash of the plug-in CA files as they are now (a missing file counts as empty).
fn cacerts_fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for name in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        std::fs::read(dir.join(name))
            .unwrap_or_default()
            .hash(&mut h);
    }
    h.finish()
}

/// Watches the plug-in CA directory: when its files change and load as a consistent CA,
/// that CA replaces the current one (its roots become the trust bundle every proxy gets,
/// so a rotation goes old -> old and new -> new without a restart); a half-written or
/// inconsistent set is refused, logged, and the current CA kept.
async fn watch_cacerts(plane: Arc<ControlPlane>, opts: ServeOptions, dir: PathBuf) {
    let mut seen = cacerts_fingerprint(&dir);
    let mut tick = tokio::time::interval(opts.cacerts_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = cacerts_fingerprint(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        let loaded = CertificateAuthority::from_cacerts(&dir, &opts.trust_domain)
            .and_then(|ca| ca.with_revocations_in(&opts.state_dir));
        match loaded {
            Ok(ca) => {
                tracing::info!(dir = %dir.display(), roots = ca.roots_pem().len(),
                    "plug-in CA changed on disk: signing with it and pushing its trust bundle");
                plane
                    .metrics
                    .ca_reloads
                    .get_or_create(&ResultLabel { result: "accepted" })
                    .inc();
                plane.replace_ca(ca);
            }
            Err(e) => {
                plane
                    .metrics
                    .ca_reloads
                    .get_or_create(&ResultLabel { result: "refused" })
                    .inc();
                tracing::error!(dir = %dir.display(),
                    "plug-in CA files changed but do not load, keeping the current CA: {e}");
            }
        }
    }
}
