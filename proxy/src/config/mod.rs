//! The proxy's static configuration file (`--config FILE`).
//!
//! A YAML file gives the proxy its own settings ([`bootstrap`]: identity, listeners, the
//! application's ports, upstream connection settings, the control plane to ask; plus limits
//! and header options), which become its [`crate::snapshot::build::LocalSettings`] and
//! [`crate::context::ProxyContext`], and optionally a static mesh ([`mesh`]: services, inbound
//! policy), one source of the mesh beside the control plane ([`crate::source::file`](mod@crate::source::file)). The file is parsed strictly: unknown fields,
//! missing fields and bad values are refused with the path of the offending field, and the
//! proxy never starts half-configured. Nothing here is read on the request path.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::identity::spiffe::SpiffeId;

pub mod bootstrap;
pub mod mesh;
pub mod tracing;

pub use crate::message::headers::HeaderOptions;
pub use crate::protocol::{Protocol, UpstreamProtocol};
pub use crate::server::limits::Limits;
pub use bootstrap::{
    ControlConfig, IdentityConfig, InboundPortConfig, ListenersConfig, UpstreamConfig,
};
pub use mesh::{InboundConfig, ServiceConfig};

/// Why a configuration file was refused. The message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not parse or did not match the schema (unknown or missing field, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("config file {path}: field `{field}`: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted path of the field, e.g. `services[1].endpoints[0]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// This workload's identity and its certificate files.
    pub identity: IdentityConfig,
    /// Listening addresses; each has Istio's default port.
    #[serde(default)]
    pub listeners: ListenersConfig,
    /// Where inbound traffic goes: the local application's ports.
    #[serde(default)]
    pub inbound: InboundConfig,
    /// The services this workload may call through the outbound listener.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// How HTTP travels between sidecars.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Timeouts and limits protecting the proxy from its clients.
    #[serde(default)]
    pub limits: Limits,
    /// Proxy hygiene options.
    #[serde(default)]
    pub headers: HeaderOptions,
    /// The control plane: identity from its CA and the mesh from its xDS stream. Without
    /// it, the identity files and `services` of this file are used as they are.
    #[serde(default)]
    pub control: Option<ControlConfig>,
    /// Distributed tracing: the collector, the sampling percentage, custom tags.
    #[serde(default)]
    pub tracing: Option<tracing::TracingConfig>,
    /// This workload's `proxyStatsMatcher` (as the `proxy.istio.io/config` annotation sets
    /// it): Envoy statistics exported besides Istio's default set. Replaces the MeshConfig's.
    #[serde(default)]
    pub proxy_stats_matcher: Option<StatsMatcherConfig>,
}

/// `proxyStatsMatcher`: inclusions by Envoy statistic name.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatsMatcherConfig {
    /// Names starting with one of these.
    #[serde(default)]
    pub inclusion_prefixes: Vec<String>,
    /// Names ending with one of these.
    #[serde(default)]
    pub inclusion_suffixes: Vec<String>,
    /// Names one of these regular expressions (RE2) matches whole.
    #[serde(default)]
    pub inclusion_regexps: Vec<String>,
}

impl StatsMatcherConfig {
    /// The inclusions the matcher compiles.
    pub fn inclusions(&self) -> crate::telemetry::stats_matcher::StatsInclusions {
        crate::telemetry::stats_matcher::StatsInclusions {
            prefixes: self.inclusion_prefixes.clone(),
            suffixes: self.inclusion_suffixes.clone(),
            regexps: self.inclusion_regexps.clone(),
        }
    }
}

/// Counters for a policy compiled only to check it.
struct NoStats;

impl crate::policy::authz::StatsSource for NoStats {
    fn stats(&self, _: &str) -> crate::policy::authz::PolicyStats {
        Default::default()
    }
}

/// Istio's duration strings: `250ms`, `1.5s`, `1h30m` ([`meshlite_xds_proto::duration`]).
pub mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Parses a duration string (the parser shared with the control plane).
    pub fn parse(s: &str) -> Result<Duration, meshlite_xds_proto::duration::DurationError> {
        meshlite_xds_proto::duration::parse(s)
    }

    /// Serde adapter.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

impl ProxyConfig {
    /// The configuration of a proxy started without a file: every section at its default and
    /// an empty identity, which the command line fills (a Kubernetes sidecar is configured by
    /// its flags and environment, as the injector writes them). It is validated like a file.
    pub fn without_file() -> Self {
        Self {
            identity: IdentityConfig {
                spiffe_id: String::new(),
                workload: String::new(),
                app: None,
                version: None,
                cert: None,
                key: None,
                roots: None,
                labels: Default::default(),
                locality: None,
            },
            listeners: ListenersConfig::default(),
            inbound: InboundConfig::default(),
            services: Vec::new(),
            upstream: UpstreamConfig::default(),
            limits: Limits::default(),
            headers: HeaderOptions::default(),
            control: None,
            tracing: None,
            proxy_stats_matcher: None,
        }
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is used in error messages and to resolve
    /// relative certificate paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut cfg: ProxyConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        cfg.validate(path)?;
        if let Some(dir) = path.parent() {
            let control = cfg.control.as_mut();
            let (root, token, state) = match control {
                Some(c) => (
                    Some(&mut c.root_cert),
                    c.token_file.as_mut(),
                    c.state_dir.as_mut(),
                ),
                None => (None, None, None),
            };
            for p in [
                cfg.identity.cert.as_mut(),
                cfg.identity.key.as_mut(),
                cfg.identity.roots.as_mut(),
                root,
                token,
                state,
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = dir.join(&*p);
                }
            }
        }
        Ok(cfg)
    }

    /// Checks the values serde cannot; the error names the field.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if let Some(m) = &self.proxy_stats_matcher {
            for (i, re) in m.inclusion_regexps.iter().enumerate() {
                if let Err(e) = crate::telemetry::stats_matcher::check_regexp(re) {
                    return Err(invalid(
                        format!("proxy_stats_matcher.inclusion_regexps[{i}]"),
                        format!("not a regular expression: {e}"),
                    ));
                }
            }
        }
        match &self.control {
            None => {
                for (name, v) in [
                    ("cert", &self.identity.cert),
                    ("key", &self.identity.key),
                    ("roots", &self.identity.roots),
                ] {
                    if v.is_none() {
                        return Err(invalid(
                            format!("identity.{name}"),
                            "required without a control plane (`control`)".into(),
                        ));
                    }
                }
            }
            Some(c) => {
                let uri: http::Uri = c
                    .address
                    .parse()
                    .map_err(|e| invalid("control.address".into(), format!("not a URL: {e}")))?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    return Err(invalid(
                        "control.address".into(),
                        "must be https://HOST:PORT".into(),
                    ));
                }
                if c.cert_ttl < Duration::from_secs(10) {
                    return Err(invalid(
                        "control.cert_ttl".into(),
                        "must be at least 10s".into(),
                    ));
                }
            }
        }
        if let Some(loc) = &self.identity.locality
            && loc.split('/').count() > 3
        {
            return Err(invalid(
                "identity.locality".into(),
                "is region[/zone[/subzone]]".into(),
            ));
        }
        SpiffeId::parse(&self.identity.spiffe_id)
            .map_err(|e| invalid("identity.spiffe_id".into(), e.to_string()))?;
        if self.identity.workload.is_empty() {
            return Err(invalid(
                "identity.workload".into(),
                "must not be empty".into(),
            ));
        }
        let id = SpiffeId::parse(&self.identity.spiffe_id)
            .map_err(|e| invalid("identity.spiffe_id".into(), e.to_string()))?;
        for (i, p) in self.inbound.authorization.iter().enumerate() {
            let tds = crate::policy::authz::TrustDomains {
                local: id.trust_domain().to_string(),
                aliases: vec![],
            };
            crate::policy::authz::Authorizer::compile(&[p.to_wire()], &tds, &NoStats)
                .map_err(|e| invalid(format!("inbound.authorization[{i}]"), e.to_string()))?;
        }
        let mut seen_ports = std::collections::HashSet::new();
        for (i, p) in self.inbound.ports.iter().enumerate() {
            if !seen_ports.insert(p.port) {
                return Err(invalid(
                    format!("inbound.ports[{i}].port"),
                    format!("port {} is declared twice", p.port),
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let f = |name: &str| format!("services[{i}].{name}");
            if !is_dns_label(&s.name) {
                return Err(invalid(
                    f("name"),
                    format!("`{}` is not a DNS label", s.name),
                ));
            }
            if !is_dns_label(&s.namespace) {
                return Err(invalid(
                    f("namespace"),
                    format!("`{}` is not a DNS label", s.namespace),
                ));
            }
            if s.port == 0 {
                return Err(invalid(f("port"), "must be 1-65535".into()));
            }
            if !seen.insert((s.name.clone(), s.namespace.clone(), s.port)) {
                return Err(invalid(
                    f("port"),
                    format!(
                        "service {}.{}:{} is declared twice",
                        s.name, s.namespace, s.port
                    ),
                ));
            }
            if s.endpoints.is_empty() {
                return Err(invalid(
                    f("endpoints"),
                    "at least one endpoint is required".into(),
                ));
            }
            if s.identities.is_empty() {
                return Err(invalid(
                    f("identities"),
                    "at least one SPIFFE ID is required (secure naming)".into(),
                ));
            }
            for (j, id) in s.identities.iter().enumerate() {
                SpiffeId::parse(id).map_err(|e| {
                    invalid(format!("services[{i}].identities[{j}]"), e.to_string())
                })?;
            }
            if s.listen.is_some() && s.protocol != Protocol::Tcp {
                return Err(invalid(
                    f("listen"),
                    "only services with protocol `tcp` take a listen address".into(),
                ));
            }
            for (j, alias) in s.aliases.iter().enumerate() {
                if alias.is_empty() || alias.contains(':') {
                    return Err(invalid(
                        format!("services[{i}].aliases[{j}]"),
                        "must be a host name without port".into(),
                    ));
                }
            }
        }
        if let Some(t) = &self.tracing {
            t.check()
                .map_err(|(field, message)| invalid(field, message))?;
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(invalid(
                "limits.max_header_bytes".into(),
                "must be at least 1024".into(),
            ));
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
identity:
  spiffe_id: spiffe://cluster.local/ns/default/sa/productpage
  workload: productpage-v1
  cert: certs/pp.crt
  key: certs/pp.key
  roots: certs/root.crt
inbound:
  ports:
    - port: 9080
      target: 127.0.0.1:9080
services:
  - name: reviews
    port: 9080
    identities: [spiffe://cluster.local/ns/default/sa/reviews]
    endpoints: [127.0.0.1:16006]
"#;

    fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        ProxyConfig::parse(text, Path::new("/etc/meshlite/proxy.yaml"))
    }

    #[test]
    fn good_file_parses_with_defaults_and_resolves_paths() {
        let cfg = parse(GOOD).expect("valid");
        assert_eq!(cfg.listeners.outbound.port(), 15001);
        assert_eq!(cfg.listeners.inbound.port(), 15006);
        assert_eq!(cfg.upstream.protocol, UpstreamProtocol::Http1);
        assert_eq!(cfg.services[0].namespace, "default");
        assert_eq!(
            cfg.identity.cert.as_deref(),
            Some(Path::new("/etc/meshlite/certs/pp.crt"))
        );
    }

    #[test]
    fn the_file_states_its_own_inbound_policy() {
        let text = GOOD.replace(
            "      target: 127.0.0.1:9080\n",
            "      target: 127.0.0.1:9080\n  mtls: PERMISSIVE\n  authorization:\n    - name: only-productpage\n      rules:\n        - from: [{source: {principals: [cluster.local/ns/default/sa/productpage]}}]\n          to: [{operation: {methods: [GET], notPaths: [/admin*]}}]\n",
        );
        let cfg = parse(&text).expect("valid");
        let p = cfg.inbound.policy();
        assert_eq!(
            p.mtls_mode,
            meshlite_xds_proto::v1::MtlsMode::Permissive as i32
        );
        assert_eq!(p.authorization[0].origin, "static/only-productpage");
        assert_eq!(p.authorization[0].rules[0].to[0].not_paths, ["/admin*"]);
        let bad = text.replace("notPaths: [/admin*]", "notPaths: [/a*min]");
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("inbound.authorization[0]") && err.contains("infix"),
            "{err}"
        );
        let typo = text.replace("notPaths", "notPath");
        assert!(parse(&typo).unwrap_err().to_string().contains("notPath"));
    }

    #[test]
    fn unknown_field_is_named() {
        let text = GOOD.replace(
            "    port: 9080\n    identities",
            "    port: 9080\n    wieght: 3\n    identities",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("wieght"), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let text = GOOD.replace("  workload: productpage-v1\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("workload"), "{err}");
    }

    #[test]
    fn bad_spiffe_id_names_the_field() {
        let text = GOOD.replace("sa/reviews]", "sa/reviews/../x]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("services[0].identities[0]"), "{err}");
    }

    #[test]
    fn bad_endpoint_address_is_refused() {
        let text = GOOD.replace("127.0.0.1:16006", "localhost-no-port");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn empty_endpoints_refused() {
        let text = GOOD.replace("[127.0.0.1:16006]", "[]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("services[0].endpoints"), "{err}");
    }

    #[test]
    fn duplicate_service_refused() {
        let dup = "  - name: reviews\n    port: 9080\n    identities: [spiffe://cluster.local/ns/default/sa/reviews]\n    endpoints: [127.0.0.1:16007]\n";
        let err = parse(&format!("{GOOD}{dup}")).unwrap_err().to_string();
        assert!(err.contains("services[1].port"), "{err}");
    }

    #[test]
    fn listen_only_for_tcp() {
        let text = GOOD.replace(
            "    endpoints: [127.0.0.1:16006]",
            "    endpoints: [127.0.0.1:16006]\n    listen: 127.0.0.1:7000",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("services[0].listen"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            duration_str::parse("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            duration_str::parse("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(duration_str::parse("2m").unwrap(), Duration::from_secs(120));
        assert!(duration_str::parse("10").is_err());
        assert!(duration_str::parse("10parsecs").is_err());
        let text = format!("{GOOD}limits:\n  idle_timeout: forever\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("forever"), "{err}");
    }

    #[test]
    fn static_identity_files_are_required_without_control() {
        let text = GOOD.replace("  key: certs/pp.key\n", "");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("identity.key"), "{err}");
    }

    #[test]
    fn control_section_replaces_identity_files() {
        let text = GOOD
            .replace("  cert: certs/pp.crt\n", "")
            .replace("  key: certs/pp.key\n", "")
            .replace("  roots: certs/root.crt\n", "");
        assert!(parse(&text).is_err());
        let with_control = format!(
            "{text}control:\n  address: https://127.0.0.1:15012\n  root_cert: root.pem\n  cert_ttl: 1h\n"
        );
        let cfg = parse(&with_control).expect("valid with control");
        let c = cfg.control.unwrap();
        assert_eq!(c.root_cert, Path::new("/etc/meshlite/root.pem"));
        assert_eq!(c.cert_ttl, Duration::from_secs(3600));
        let plain = with_control.replace("https://", "http://");
        let err = parse(&plain).unwrap_err().to_string();
        assert!(err.contains("control.address"), "{err}");
    }

    #[test]
    fn the_tracing_section_is_read_and_its_errors_name_the_field() {
        let text = format!(
            "{GOOD}tracing:\n  provider:\n    opentelemetry: {{service: otel.monitoring, port: 4317}}\n  randomSamplingPercentage: 10\n"
        );
        let cfg = parse(&text).expect("valid");
        let t = cfg.tracing.expect("tracing");
        assert_eq!(t.random_sampling_percentage, Some(10.0));
        let bad = text.replace(
            "randomSamplingPercentage: 10",
            "randomSamplingPercentage: 250",
        );
        let err = parse(&bad).unwrap_err().to_string();
        assert!(err.contains("tracing.randomSamplingPercentage"), "{err}");
        let typo = text.replace("randomSamplingPercentage", "samplingPercentage");
        let err = parse(&typo).unwrap_err().to_string();
        assert!(err.contains("samplingPercentage"), "{err}");
    }

    #[test]
    fn not_yaml_is_refused() {
        assert!(parse("identity: [unclosed").is_err());
        assert!(parse("").is_err());
    }
}
