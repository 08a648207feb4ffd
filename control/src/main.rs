//! `meshlite-control`: the control plane binary.
//!
//! `serve` runs it; `validate DIR` checks a config directory like `istioctl analyze`;
//! `status` lists connected proxies like `istioctl proxy-status`; `graph` prints the live
//! service graph (as text, JSON or Graphviz DOT); `token create` makes a bootstrap token;
//! `cert revoke` revokes a workload certificate; `cert root` prints the trust bundle sidecars
//! must trust; `inject -f app.yaml` adds the sidecar to Kubernetes manifests like `istioctl
//! kube-inject`.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meshlite_control::ca::{Revocations, TokenSigner};
use meshlite_control::serve::{ServeOptions, duration, start};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// meshlite's control plane.
#[derive(Parser, Debug)]
#[command(name = "meshlite-control", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter, e.g. `info`, `meshlite_control=debug`.
    #[arg(long, env = "MESHLITE_LOG", default_value = "info", global = true)]
    log_level: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serves xDS and the CA.
    Serve(Box<ServeOptions>),
    /// Checks a config directory; exits 1 if any problem is an error.
    Validate {
        /// The directory.
        dir: PathBuf,
    },
    /// Lists connected proxies: identity, versions sent and ACKed, last NACK, cert expiry.
    Status {
        /// Monitoring address of the control plane.
        #[arg(long, default_value = "127.0.0.1:15014")]
        addr: SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints the live service graph: who calls whom, with request rate, error rate, p99 and
    /// mTLS per edge, from what the sidecars report.
    Graph {
        /// The control plane's monitoring address, `http://HOST:PORT` (or `HOST:PORT`).
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        monitoring: String,
        /// Output: a table, the JSON of `/graph`, or Graphviz DOT (`| dot -Tsvg`).
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
    },
    /// Bootstrap tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Workload certificates.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Adds the sidecar to the workloads of Kubernetes manifests (like `istioctl
    /// kube-inject`): Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs and
    /// Pods; other documents are copied unchanged.
    Inject {
        /// Manifest file (multi-document YAML); `-` for standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Where to write the result (default: standard output).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// The trust domain of the workloads' SPIFFE IDs.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        #[command(flatten)]
        options: meshlite_control::inject::InjectOptions,
    },
}

/// What `graph` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum GraphFormat {
    /// A table of edges.
    Text,
    /// The JSON the monitoring port serves at `/graph`.
    Json,
    /// Graphviz DOT.
    Dot,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Prints a token that lets one workload identity get its first certificate.
    Create {
        /// State directory of the control plane (holds the token key).
        #[arg(long, default_value = "/var/lib/meshlite-control")]
        state_dir: PathBuf,
        /// Trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Namespace.
        #[arg(long)]
        namespace: String,
        /// Service account.
        #[arg(long)]
        service_account: String,
        /// Lifetime.
        #[arg(long, default_value = "1h", value_parser = duration)]
        ttl: Duration,
        /// A label the workload may claim, `key=value` (repeat for several). A workload that
        /// serves ports must be granted its `app` label: the service it joins.
        #[arg(long = "label", value_parser = label)]
        labels: Vec<(String, String)>,
        /// Write the token to FILE (mode 0600, replaced atomically) instead of standard
        /// output: how a job without a shell hands it to a sidecar's volume.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `kubernetes`: the Secret `meshlite-token-<service account>` the injected sidecar
        /// mounts, as JSON for `kubectl apply -f -`.
        #[arg(long, value_enum, default_value = "plain")]
        format: CredentialFormat,
    },
}

/// How `token create` and `cert root` print what they make.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum CredentialFormat {
    /// The token, or the PEM bundle, as it is.
    Plain,
    /// The Kubernetes object an injected pod mounts it from.
    Kubernetes,
}

/// `key=value`.
fn label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not key=value"))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Revokes a certificate by serial, or every certificate of an identity issued until now.
    Revoke {
        /// State directory of the control plane.
        #[arg(long, default_value = "/var/lib/meshlite-control")]
        state_dir: PathBuf,
        /// Serial number (hex).
        #[arg(long, conflicts_with = "identity")]
        serial: Option<String>,
        /// SPIFFE ID.
        #[arg(long)]
        identity: Option<String>,
    },
    /// Prints the mesh's trust bundle (`root-cert.pem`), what every sidecar's `--root-cert`
    /// must hold (Istio's `istio-ca-root-cert`).
    Root {
        /// State directory of the control plane.
        #[arg(long, default_value = "/var/lib/meshlite-control")]
        state_dir: PathBuf,
        /// The plugged-in CA's directory, if `serve` runs with `--cacerts`.
        #[arg(long)]
        cacerts: Option<PathBuf>,
        /// Write it to FILE (mode 0644, replaced atomically) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// `kubernetes`: the ConfigMap `istio-ca-root-cert` injected sidecars mount, one per
        /// `--namespace`, as JSON for `kubectl apply -f -`.
        #[arg(long, value_enum, default_value = "plain")]
        format: CredentialFormat,
        /// With `--format kubernetes`: the namespaces to write the ConfigMap into (repeatable).
        #[arg(long = "namespace", required_if_eq("format", "kubernetes"))]
        namespaces: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshlite-control: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(opts) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async move {
                let (_plane, bound) = match start(*opts).await {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("meshlite-control: {e}");
                        return Ok(ExitCode::from(2));
                    }
                };
                let mut line = serde_json::to_value(&bound)?;
                line["msg"] = serde_json::Value::from("meshlite-control listening");
                println!("{line}");
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                tracing::info!("exiting");
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Validate { dir } => {
            let report = meshlite_control::validate::check_dir(&dir);
            for p in &report.problems {
                println!("{p}");
            }
            let errors = report.errors().count();
            let warnings = report.warnings().count();
            if report.has_errors() {
                println!(
                    "{}: {errors} error(s), {warnings} warning(s)",
                    dir.display()
                );
                Ok(ExitCode::from(1))
            } else {
                let n = report.set.as_ref().map_or(0, |s| s.len());
                println!(
                    "{}: valid ({n} resources, {warnings} warning(s))",
                    dir.display()
                );
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Status { addr, json } => status(addr, json),
        Command::Inject {
            file,
            output,
            trust_domain,
            mut options,
        } => {
            options.trust_domain = trust_domain;
            inject(&file, output.as_deref(), &options)
        }
        Command::Graph { monitoring, format } => graph(&monitoring, format),
        Command::Token {
            command:
                TokenCommand::Create {
                    state_dir,
                    trust_domain,
                    namespace,
                    service_account,
                    ttl,
                    labels,
                    out,
                    format,
                },
        } => {
            let signer = TokenSigner::load_or_create(&state_dir)?;
            let token = signer.create_granting(
                &trust_domain,
                &namespace,
                &service_account,
                &labels.into_iter().collect(),
                ttl,
                time::OffsetDateTime::now_utc(),
            )?;
            let text = match format {
                CredentialFormat::Plain => format!("{token}\n"),
                CredentialFormat::Kubernetes => {
                    json_text(&meshlite_control::inject::credentials::token_secret(
                        &namespace,
                        &service_account,
                        &token,
                    ))?
                }
            };
            emit(out.as_deref(), &text, 0o600)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            command:
                CertCommand::Root {
                    state_dir,
                    cacerts,
                    out,
                    format,
                    namespaces,
                },
        } => {
            let bundle = meshlite_control::ca::trust_bundle(&state_dir, cacerts.as_deref())?;
            let text = match format {
                CredentialFormat::Plain => bundle,
                CredentialFormat::Kubernetes => json_text(
                    &meshlite_control::inject::credentials::root_configmaps(&namespaces, &bundle),
                )?,
            };
            emit(out.as_deref(), &text, 0o644)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cert {
            command:
                CertCommand::Revoke {
                    state_dir,
                    serial,
                    identity,
                },
        } => {
            let mut list = Revocations::load(&state_dir)?;
            match (serial, identity) {
                (Some(s), _) => list.revoke_serial(&s)?,
                (None, Some(id)) => {
                    let id = meshlite_xds_proto::spiffe::SpiffeId::parse(&id)?;
                    list.revoke_identity(&id, time::OffsetDateTime::now_utc());
                }
                (None, None) => anyhow::bail!("give --serial or --identity"),
            }
            list.save()?;
            println!("revoked; renewals with it are refused from now on");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `inject`: reads the manifests, writes them injected, and says on stderr what happened to
/// each workload.
/// Writes a credential to `out` (with `mode`, replaced atomically) or to standard output.
fn emit(out: Option<&std::path::Path>, text: &str, mode: u32) -> anyhow::Result<()> {
    match out {
        Some(path) => {
            meshlite_control::ca::write_credential(path, text.as_bytes(), mode)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// A Kubernetes object as the JSON `kubectl apply -f -` reads, ending in a newline.
fn json_text(object: &serde_json::Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(object)? + "\n")
}

fn inject(
    file: &std::path::Path,
    output: Option<&std::path::Path>,
    options: &meshlite_control::inject::InjectOptions,
) -> anyhow::Result<ExitCode> {
    use std::io::Read as _;
    let text = if file == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let injected = meshlite_control::inject::inject_documents(&text, options)
        .with_context(|| format!("{}", file.display()))?;
    match output {
        Some(path) => std::fs::write(path, &injected.yaml)
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", injected.yaml),
    }
    for report in &injected.reports {
        for outcome in report
            .outcomes
            .iter()
            .filter(|o| !matches!(o, meshlite_control::inject::Outcome::NotAWorkload))
        {
            eprintln!("{}: {}", report.object, outcome.describe());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `GET path` from the monitoring port at `addr`: the body of a 200 answer.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the control plane at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("malformed response")?;
    let code = head.split_whitespace().nth(1).unwrap_or("?");
    if code != "200" {
        anyhow::bail!("{addr}{path} answered {code}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// `http://HOST:PORT[/]` or `HOST:PORT` -> the first address it resolves to.
fn monitoring_addr(url: &str) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let hostport = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => anyhow::bail!("--monitoring: `{scheme}` is not served; use http://"),
        None => url,
    }
    .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .with_context(|| format!("--monitoring: `{url}` is not http://HOST:PORT"))?
        .next()
        .with_context(|| format!("--monitoring: `{url}` resolves to no address"))
}

fn graph(monitoring: &str, format: GraphFormat) -> anyhow::Result<ExitCode> {
    let addr = monitoring_addr(monitoring)?;
    match format {
        GraphFormat::Json => println!("{}", get(addr, "/graph")?.trim_end()),
        GraphFormat::Dot => println!("{}", get(addr, "/graph.dot")?.trim_end()),
        GraphFormat::Text => {
            let g: meshlite_control::graph::Graph =
                serde_json::from_str(&get(addr, "/graph")?).context("unexpected graph body")?;
            print!("{}", meshlite_control::graph::render::text(&g));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(addr: SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    let body = get(addr, "/debug/status")?;
    let body = body.as_str();
    if json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let st: meshlite_control::admin::Status =
        serde_json::from_str(body).context("unexpected status body")?;
    println!(
        "trust domain {}  generation {}  services {}  config: {} resources{}",
        st.trust_domain,
        st.generation,
        st.services,
        st.config.resources,
        if st.config.last_refused {
            " (last edit REFUSED, serving the previous config)"
        } else {
            ""
        }
    );
    println!(
        "{:<32} {:<48} {:>6} {:>6}  {:<25} LAST NACK",
        "PROXY", "IDENTITY", "SENT", "ACKED", "CERT EXPIRY"
    );
    for p in &st.proxies {
        println!(
            "{:<32} {:<48} {:>6} {:>6}  {:<25} {}",
            p.id,
            p.identity,
            p.sent,
            p.acked,
            p.cert_expiry.as_deref().unwrap_or("-"),
            p.last_nack.as_deref().unwrap_or("-")
        );
    }
    for p in &st.config.problems {
        println!("config: {p}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr with the `--log-level` filter (an invalid filter falls back to `info`).
fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
