//! `meshlite-proxy`: the sidecar binary.
//!
//! `meshlite-proxy --config FILE` runs the proxy; `validate` checks a config file; `dev-pki`
//! writes a development root and SPIFFE certificates for the quick start; `wait` returns once
//! the proxy beside it is ready. With `--control` and no file, the proxy is configured by its
//! flags and environment alone (how the Kubernetes injector runs it); `init` installs the
//! transparent-capture rules in the current network namespace (the init container's job).
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meshlite_proxy::capture;
use meshlite_proxy::config::ProxyConfig;
use meshlite_proxy::identity::dev_pki::DevCa;
use meshlite_proxy::telemetry::access_log::AccessLogTarget;
use meshlite_proxy::{RunningProxy, StartError, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// meshlite's sidecar proxy.
#[derive(Parser, Debug)]
#[command(name = "meshlite-proxy", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Static configuration file (YAML). Optional with `--control`: every setting then has its
    /// default and the flags give the identity.
    #[arg(long, env = "MESHLITE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Runtime worker threads. The default, 1, runs a single-threaded runtime: a sidecar's
    /// load fits in one core (about 0.5 of one at 10,000 RPS), and a second worker costs more
    /// in cross-thread wake-ups than it gives (measured: 2,000 RPS added p50 0.21 -> 0.17 ms,
    /// CPU per 1k requests 106 -> 84 ms; 10,000 RPS p50 0.79 -> 0.37 ms). Raise it for pods
    /// whose sidecar needs more than a core.
    #[arg(long, env = "MESHLITE_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Write JSON access log lines to PATH (`-` for stdout). Off by default, unless
    /// Telemetry resources turn access logging on: their `envoy` provider (`/dev/stdout`)
    /// then writes here when this is set, else to standard output.
    #[arg(long, env = "MESHLITE_ACCESS_LOG")]
    access_log: Option<String>,
    /// Write the authorization audit log to PATH (`-`, the default, for stdout): requests
    /// AUDIT policies mark, or every decision with `--audit-log-all`.
    #[arg(long, env = "MESHLITE_AUDIT_LOG", default_value = "-")]
    audit_log: String,
    /// Write every authorization decision to the audit log, not only AUDIT-marked ones.
    #[arg(long, env = "MESHLITE_AUDIT_LOG_ALL")]
    audit_log_all: bool,
    /// Per-service TCP listeners in explicit mode (`on`, `off`): every `tcp` service port
    /// listened on at the outbound listener's IP. `off` where outbound TCP is captured
    /// transparently. Overrides the file's `listeners.tcp_services`.
    #[arg(long, env = "MESHLITE_TCP_LISTENERS", value_parser = on_off)]
    tcp_listeners: Option<bool>,
    /// Log filter for the proxy's own logs (stderr), e.g. `info`, `meshlite_proxy=debug`.
    #[arg(long, env = "MESHLITE_LOG", default_value = "info")]
    log_level: String,
    #[command(flatten)]
    control: ControlArgs,
    #[command(flatten)]
    dns: DnsArgs,
    /// The app's health probes, as Istio's injector hands them to the sidecar (JSON: probe
    /// path `/app-health/<container>/livez|readyz|startupz` -> the container's original
    /// `httpGet`/`tcpSocket`/`grpc` probe). The kubelet asks the metrics port (15020) for
    /// them, since inbound capture would send its probes to the mTLS listener.
    #[arg(long, env = "ISTIO_KUBE_APP_PROBERS", value_parser = app_probers)]
    app_probers: Option<Arc<meshlite_proxy::admin::app_probe::AppProbers>>,
}

fn app_probers(s: &str) -> Result<Arc<meshlite_proxy::admin::app_probe::AppProbers>, String> {
    meshlite_proxy::admin::app_probe::AppProbers::parse(s)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// The DNS proxy (Istio's DNS proxying): mesh names answered from the snapshot, other names
/// forwarded to the pod's resolvers.
#[derive(clap::Args, Debug, Default)]
struct DnsArgs {
    /// Where the DNS proxy listens (UDP and TCP), `IP:PORT`, or `off`. Default
    /// `127.0.0.1:15053` (Istio's), where capture redirects the pod's port 53; when that
    /// default is taken (several sidecars on one host) the proxy runs without DNS.
    #[arg(long, env = "MESHLITE_DNS_ADDR", value_parser = dns_addr)]
    dns_addr: Option<DnsAddr>,
    /// A resolver for names outside the mesh, `IP` or `IP:PORT` (repeatable, tried in
    /// order). Default: the nameservers of /etc/resolv.conf, read at start.
    #[arg(long = "dns-upstream", env = "MESHLITE_DNS_UPSTREAM", value_delimiter = ',',
          value_parser = meshlite_proxy::dns::upstream::parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// How long a forwarded query may take over every resolver before the app gets
    /// SERVFAIL, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = drain_duration)]
    dns_upstream_timeout: std::time::Duration,
}

/// `on` or `off`.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("`{s}` is neither `on` nor `off`")),
    }
}

/// `--dns-addr`.
#[derive(Clone, Copy, Debug)]
enum DnsAddr {
    Off,
    At(std::net::SocketAddr),
}

fn dns_addr(s: &str) -> Result<DnsAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(DnsAddr::Off);
    }
    s.parse()
        .map(DnsAddr::At)
        .map_err(|_| format!("`{s}` is not IP:PORT or `off`"))
}

impl DnsArgs {
    /// The DNS proxy's options; `None` when it is off.
    fn options(&self) -> Option<meshlite_proxy::dns::DnsOptions> {
        let (addr, optional) = match self.dns_addr {
            Some(DnsAddr::Off) => return None,
            Some(DnsAddr::At(a)) => (a, false),
            None => (meshlite_proxy::dns::DEFAULT_ADDR, true),
        };
        let upstreams = if self.dns_upstreams.is_empty() {
            meshlite_proxy::dns::upstream::system_resolvers()
        } else {
            self.dns_upstreams.clone()
        };
        Some(meshlite_proxy::dns::DnsOptions {
            addr,
            upstreams,
            timeout: self.dns_upstream_timeout,
            optional,
        })
    }
}

/// Flags that set or override the config file's `control` section and workload identity
/// (what an injector passes from the pod spec).
#[derive(clap::Args, Debug, Default)]
struct ControlArgs {
    /// The control plane, `https://HOST:15012`.
    #[arg(long = "control", env = "MESHLITE_CONTROL")]
    address: Option<String>,
    /// Bootstrap token file.
    #[arg(long, env = "MESHLITE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Root certificate(s) the control plane's certificate chains to.
    #[arg(long, env = "MESHLITE_ROOT_CERT")]
    root_cert: Option<PathBuf>,
    /// State directory (0600 files; a memory-backed volume).
    #[arg(long, env = "MESHLITE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Workload name.
    #[arg(long, env = "MESHLITE_WORKLOAD")]
    workload: Option<String>,
    /// Namespace (with --service-account, sets the SPIFFE ID).
    #[arg(long, env = "MESHLITE_NAMESPACE")]
    namespace: Option<String>,
    /// Service account.
    #[arg(long, env = "MESHLITE_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Trust domain for --namespace/--service-account.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Workload label `key=value` (repeatable). `app` and `version` also give the canonical
    /// service and revision when the file sets none.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// The pod's IP: other sidecars reach this one's inbound listener there (announced to the
    /// control plane). `auto`: the local address this host's routes pick to reach the control
    /// plane (where no downward API gives the IP, e.g. a Docker Compose pod), as pilot-agent
    /// finds the pod IP itself when `INSTANCE_IP` is unset.
    #[arg(long, env = "INSTANCE_IP", value_parser = instance_ip)]
    instance_ip: Option<InstanceIp>,
    /// A port the application serves, `PORT` or `PORT/PROTOCOL` (`http`, `http2`, `grpc`,
    /// `tcp`), on 127.0.0.1 (repeatable; added to the file's `inbound.ports`).
    #[arg(long = "app-port", value_parser = app_port)]
    app_ports: Vec<meshlite_proxy::config::InboundPortConfig>,
    /// How long a drain (SIGTERM, `/quitquitquit`) lets in-flight requests finish, e.g. `30s`
    /// (Istio's `terminationDrainDuration`; overrides `limits.drain_timeout`).
    #[arg(long, env = "MESHLITE_DRAIN_DURATION", value_parser = drain_duration)]
    drain_duration: Option<std::time::Duration>,
}

/// `9080` or `9080/grpc`: the app's port on loopback.
fn app_port(s: &str) -> Result<meshlite_proxy::config::InboundPortConfig, String> {
    use meshlite_proxy::config::Protocol;
    let (port, protocol) = s.split_once('/').unwrap_or((s, "http"));
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{s}`: the port must be 1-65535"))?;
    let protocol = match protocol {
        "http" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tcp" => Protocol::Tcp,
        other => return Err(format!("`{other}` is not http, http2, grpc or tcp")),
    };
    Ok(meshlite_proxy::config::InboundPortConfig {
        port,
        target: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        protocol,
    })
}

/// `--instance-ip`: an address, or `auto`.
#[derive(Clone, Copy, Debug)]
enum InstanceIp {
    /// Given.
    Fixed(std::net::IpAddr),
    /// Found at start-up from the route to the control plane.
    Auto,
}

fn instance_ip(s: &str) -> Result<InstanceIp, String> {
    if s == "auto" {
        return Ok(InstanceIp::Auto);
    }
    s.parse()
        .map(InstanceIp::Fixed)
        .map_err(|_| format!("`{s}` is neither an IP address nor `auto`"))
}

/// The local IP the routing table picks to reach `control` (`https://HOST:PORT`): a UDP socket
/// is connected (no packet is sent) and its local address read.
fn local_ip_towards(control: &str) -> Result<std::net::IpAddr, String> {
    use std::net::ToSocketAddrs as _;
    let authority = control
        .split_once("://")
        .map_or(control, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let why = |e: &dyn std::fmt::Display| format!("--instance-ip auto: {authority}: {e}");
    let target = authority
        .to_socket_addrs()
        .map_err(|e| why(&e))?
        .next()
        .ok_or_else(|| why(&"resolves to no address"))?;
    let unspecified: std::net::IpAddr = if target.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((unspecified, 0)).map_err(|e| why(&e))?;
    socket.connect(target).map_err(|e| why(&e))?;
    let ip = socket.local_addr().map_err(|e| why(&e))?.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        return Err(why(&format!(
            "the route to the control plane leaves from {ip}, not a pod address; give the IP"
        )));
    }
    Ok(ip)
}

/// An Istio duration (`5s`, `1m30s`).
fn drain_duration(s: &str) -> Result<std::time::Duration, String> {
    meshlite_xds_proto::duration::parse(s).map_err(|e| e.to_string())
}

impl ControlArgs {
    /// Applies the flags to a loaded config; the result is validated again by the caller.
    fn apply(&self, cfg: &mut ProxyConfig) -> Result<(), String> {
        if let Some(address) = &self.address {
            let root_cert = match (&self.root_cert, &cfg.control) {
                (Some(r), _) => r.clone(),
                (None, Some(c)) => c.root_cert.clone(),
                (None, None) => return Err("--control needs --root-cert".into()),
            };
            let mut c = cfg
                .control
                .clone()
                .unwrap_or(meshlite_proxy::config::ControlConfig {
                    address: address.clone(),
                    root_cert: root_cert.clone(),
                    token_file: None,
                    state_dir: None,
                    cert_ttl: std::time::Duration::from_secs(24 * 3600),
                    inbound_address: None,
                    on_demand: true,
                    on_demand_timeout: meshlite_proxy::xds::demand::DEFAULT_TIMEOUT,
                });
            c.address = address.clone();
            c.root_cert = root_cert;
            cfg.control = Some(c);
        }
        if let Some(c) = cfg.control.as_mut() {
            if let Some(t) = &self.token_file {
                c.token_file = Some(t.clone());
            }
            if let Some(d) = &self.state_dir {
                c.state_dir = Some(d.clone());
            }
            if let Some(r) = &self.root_cert {
                c.root_cert = r.clone();
            }
        }
        if let Some(w) = &self.workload {
            cfg.identity.workload = w.clone();
        }
        match (&self.namespace, &self.service_account) {
            (Some(ns), Some(sa)) => {
                cfg.identity.spiffe_id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
            }
            (None, None) => {}
            _ => return Err("--namespace and --service-account go together".into()),
        }
        for l in &self.labels {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| format!("--label `{l}` is not key=value"))?;
            cfg.identity.labels.insert(k.to_string(), v.to_string());
        }
        if cfg.identity.app.is_none() {
            cfg.identity.app = cfg.identity.labels.get("app").cloned();
        }
        if cfg.identity.version.is_none() {
            cfg.identity.version = cfg.identity.labels.get("version").cloned();
        }
        if let Some(wanted) = self.instance_ip
            && let Some(c) = cfg.control.as_mut()
        {
            let ip = match wanted {
                InstanceIp::Fixed(ip) => ip,
                InstanceIp::Auto => local_ip_towards(&c.address)?,
            };
            c.inbound_address = Some(std::net::SocketAddr::new(ip, cfg.listeners.inbound.port()));
        }
        cfg.inbound.ports.extend(self.app_ports.iter().cloned());
        if let Some(d) = self.drain_duration {
            cfg.limits.drain_timeout = d;
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a configuration file and exits 0 (valid) or 2 (with the field at fault).
    Validate,
    /// Writes a development root CA and SPIFFE certificates (not for production).
    DevPki {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Identities as `namespace/service-account`; files are named after the account.
        #[arg(long = "identity", required = true)]
        identities: Vec<String>,
    },
    /// Waits until the proxy beside it is ready (`/healthz/ready` answers 200); exits 1 if it
    /// is not within the timeout. The postStart hook of a sidecar that holds its app.
    Wait {
        /// The proxy's health listener.
        #[arg(long, default_value = "127.0.0.1:15021")]
        health: std::net::SocketAddr,
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = drain_duration)]
        timeout: std::time::Duration,
    },
    /// Installs the iptables rules of transparent capture in the current network namespace
    /// (what Istio's init container does); needs CAP_NET_ADMIN.
    Init(InitArgs),
}

/// `meshlite-proxy init`: the flags an injector writes into the init container, Istio's names
/// and defaults.
#[derive(clap::Args, Debug)]
struct InitArgs {
    /// The proxy's uid: its own traffic is never captured.
    #[arg(long, default_value_t = capture::rules::PROXY_ID)]
    proxy_uid: u32,
    /// The proxy's gid: its own traffic is never captured.
    #[arg(long, default_value_t = capture::rules::PROXY_ID)]
    proxy_gid: u32,
    /// Where inbound TCP is redirected.
    #[arg(long, default_value_t = capture::rules::INBOUND_PORT)]
    inbound_port: u16,
    /// Where outbound TCP is redirected.
    #[arg(long, default_value_t = capture::rules::OUTBOUND_PORT)]
    outbound_port: u16,
    /// CIDR ranges whose outbound TCP is captured, comma-separated; `*` for all.
    #[arg(long, default_value = "*")]
    include_outbound_ip_ranges: String,
    /// CIDR ranges never captured outbound, comma-separated.
    #[arg(long, default_value = "")]
    exclude_outbound_ip_ranges: String,
    /// Pod ports whose inbound TCP is captured, comma-separated; `*` for all.
    #[arg(long, default_value = "*")]
    include_inbound_ports: String,
    /// Pod ports never captured inbound, comma-separated (the proxy's own never are).
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
    /// Destination ports never captured outbound, comma-separated.
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// Send the app's DNS (UDP and TCP port 53) to the proxy's DNS port, 15053.
    #[arg(long)]
    redirect_dns: bool,
    /// Remove the rules a previous run installed, and nothing else.
    #[arg(long)]
    cleanup: bool,
    /// Print the iptables-restore input and change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl InitArgs {
    /// The capture settings the flags describe.
    fn spec(&self) -> Result<capture::rules::CaptureSpec, capture::rules::RulesError> {
        use capture::rules::{CaptureSpec, Selection, list};
        Ok(CaptureSpec {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            include_outbound: Selection::parse(&self.include_outbound_ip_ranges)?,
            exclude_outbound: list(&self.exclude_outbound_ip_ranges)?,
            exclude_outbound_ports: list(&self.exclude_outbound_ports)?,
            include_inbound_ports: Selection::parse(&self.include_inbound_ports)?,
            exclude_inbound_ports: list(&self.exclude_inbound_ports)?,
            redirect_dns: self.redirect_dns,
        })
    }
}

/// Runs `meshlite-proxy init`: 0 done, 2 bad flags, 1 not applied.
fn init(args: &InitArgs) -> ExitCode {
    let spec = match args.spec() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("meshlite-proxy init: {e}");
            return ExitCode::from(2);
        }
    };
    if args.dry_run {
        if args.cleanup {
            println!(
                "# --cleanup removes every MESHLITE_* chain of the nat table and the jumps to them"
            );
        } else {
            print!("{}", capture::init::dry_run(&spec));
        }
        return ExitCode::SUCCESS;
    }
    let (done, what) = if args.cleanup {
        (capture::init::remove(), "removed")
    } else {
        (capture::init::install(&spec), "installed")
    };
    match done {
        Ok(applied) => {
            println!(
                "meshlite-proxy init: capture rules {what} ({:?})",
                applied.families
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshlite-proxy init: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    meshlite_proxy::telemetry::init_logging(&cli.log_level);

    match &cli.command {
        Some(Command::Init(args)) => init(args),
        Some(Command::DevPki {
            out,
            trust_domain,
            identities,
        }) => match dev_pki(out, trust_domain, identities) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshlite-proxy dev-pki: {e:#}");
                ExitCode::from(1)
            }
        },
        Some(Command::Wait { health, timeout }) => wait(*health, *timeout),
        Some(Command::Validate) | None => {
            let (path, loaded) = match (&cli.config, &cli.control.address) {
                (Some(path), _) => (path.clone(), ProxyConfig::load(path)),
                (None, Some(_)) => (
                    PathBuf::from("(command line)"),
                    Ok(ProxyConfig::without_file()),
                ),
                (None, None) => {
                    eprintln!(
                        "meshlite-proxy: --config FILE (or --control with the identity flags) is required"
                    );
                    return ExitCode::from(2);
                }
            };
            let cfg = match loaded.and_then(|mut c| {
                cli.control.apply(&mut c).map_err(|message| {
                    meshlite_proxy::config::ConfigError::Invalid {
                        path: path.clone(),
                        field: "command line".into(),
                        message,
                    }
                })?;
                if let Some(on) = cli.tcp_listeners {
                    c.listeners.tcp_services = on;
                }
                c.validate(&path)?;
                Ok(c)
            }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("meshlite-proxy: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            if matches!(cli.command, Some(Command::Validate)) {
                println!(
                    "{}: valid ({} services, {} inbound ports)",
                    path.display(),
                    cfg.services.len(),
                    cfg.inbound.ports.len()
                );
                return ExitCode::SUCCESS;
            }
            match run(cfg, &cli) {
                Ok(()) => ExitCode::SUCCESS,
                // Unusable identity files or log target: a configuration problem, exit 2 like
                // a refused config. Its Display already carries the cause, so no `{:#}` chain.
                Err(e) => match e.downcast_ref::<StartError>() {
                    Some(start) => {
                        eprintln!("meshlite-proxy: {start}");
                        ExitCode::from(if start.is_configuration() { 2 } else { 1 })
                    }
                    None => {
                        eprintln!("meshlite-proxy: {e:#}");
                        ExitCode::from(1)
                    }
                },
            }
        }
    }
}

/// `wait`: exit 0 once the proxy is ready, 1 if it is not in time.
fn wait(health: std::net::SocketAddr, timeout: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshlite-proxy wait: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(meshlite_proxy::admin::wait::until_ready(
        health,
        timeout,
        meshlite_proxy::admin::wait::PERIOD,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshlite-proxy wait: {e}");
            ExitCode::from(1)
        }
    }
}

fn dev_pki(out: &std::path::Path, trust_domain: &str, identities: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca = DevCa::new(trust_domain)?;
    ca.write_root(out)?;
    for ident in identities {
        let (ns, sa) = ident
            .split_once('/')
            .context("identities are namespace/service-account")?;
        let cert = ca.issue(&format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"))?;
        let (c, k) = cert.write(out, sa)?;
        println!("wrote {} and {}", c.display(), k.display());
    }
    println!("wrote {}", out.join("root.crt").display());
    Ok(())
}

fn run(cfg: ProxyConfig, cli: &Cli) -> anyhow::Result<()> {
    let runtime = if cli.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.workers)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    let target = |t: &str| {
        if t == "-" {
            AccessLogTarget::Stdout
        } else {
            AccessLogTarget::File(PathBuf::from(t))
        }
    };
    let opts = StartOptions {
        access_log: cli.access_log.as_deref().map(target),
        audit_log: Some(target(&cli.audit_log)),
        audit_all: cli.audit_log_all,
        dns: cli.dns.options(),
        app_probers: cli.app_probers.clone().unwrap_or_default(),
    };
    runtime.block_on(async move {
        let proxy = RunningProxy::start(cfg, opts).await?;
        let mut line = serde_json::to_value(&proxy.addrs)?;
        line["msg"] = serde_json::Value::from("meshlite-proxy listening");
        println!("{line}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let why = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = proxy.quit_requested() => "quitquitquit",
        };
        tracing::info!("{why}: draining");
        let left = proxy.drain().await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain deadline passed with connections open; closing them"
            );
        } else {
            tracing::info!("drained; exiting");
        }
        anyhow::Ok(())
    })
}
