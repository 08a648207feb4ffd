//! DestinationRules -> [`v1::DestinationPolicy`], and a workload's own inbound policy: its
//! PeerAuthentication resolved mesh -> namespace -> workload (each level applies only if
//! set, PERMISSIVE when nothing is), every RequestAuthentication and AuthorizationPolicy that
//! targets it (root namespace policies mesh-wide, namespace policies without selector, and
//! those whose selector matches its labels; none attached by `targetRefs`), with
//! `serviceAccounts` expanded to principals and `jwksUri` key sets inlined (fail closed when
//! the control plane could not fetch one), and its Telemetry (`super::telemetry`).

use meshlite_xds_proto::v1;

use super::duration;

use crate::jwks::{FAIL_CLOSED_JWKS, ResolvedJwks};
use crate::model::{
    AccessLogEncoding, AuthzAction, BUILT_IN_ACCESS_LOG_PROVIDER, BodyInCheck, ConfigSet,
    DestinationRule, LogFormat, MeshConfig, MtlsMode, Named, PathNormalization, PeerAuthentication,
    ProviderConfig, ROOT_NAMESPACE, SimpleLb, TrafficPolicy, WorkloadSelector,
};
use crate::registry::Workload;

fn positive(v: Option<i32>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

fn traffic_policy(
    lb: Option<&crate::model::LoadBalancerSettings>,
    pool: Option<&crate::model::ConnectionPoolSettings>,
    outlier: Option<&crate::model::OutlierDetection>,
) -> v1::TrafficPolicy {
    v1::TrafficPolicy {
        load_balancer: lb.map(|lb| v1::LoadBalancer {
            simple: match lb.simple {
                Some(SimpleLb::RoundRobin) => v1::load_balancer::Simple::RoundRobin,
                Some(SimpleLb::Random) => v1::load_balancer::Simple::Random,
                Some(SimpleLb::Passthrough) => v1::load_balancer::Simple::Passthrough,
                Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => {
                    v1::load_balancer::Simple::LeastRequest
                }
                Some(SimpleLb::Unspecified) | None => v1::load_balancer::Simple::Unspecified,
            } as i32,
            consistent_hash: lb.consistent_hash.as_ref().map(|ch| {
                use v1::load_balancer::consistent_hash::Key;
                v1::load_balancer::ConsistentHash {
                    key: if let Some(h) = &ch.http_header_name {
                        Some(Key::HttpHeaderName(h.clone()))
                    } else if let Some(c) = &ch.http_cookie {
                        Some(Key::HttpCookie(v1::load_balancer::HttpCookie {
                            name: c.name.clone(),
                            path: c.path.clone().unwrap_or_default(),
                            ttl: c.ttl.as_ref().map(duration),
                        }))
                    } else if ch.use_source_ip == Some(true) {
                        Some(Key::UseSourceIp(true))
                    } else {
                        ch.http_query_parameter_name
                            .clone()
                            .map(Key::HttpQueryParameterName)
                    },
                    minimum_ring_size: ch
                        .ring_hash
                        .as_ref()
                        .and_then(|r| r.minimum_ring_size)
                        .or(ch.minimum_ring_size)
                        .unwrap_or(0),
                    maglev_table_size: ch
                        .maglev
                        .as_ref()
                        .map_or(0, |m| m.table_size.unwrap_or(65537)),
                }
            }),
            locality_lb_setting: lb.locality_lb_setting.as_ref().map(|l| {
                use v1::load_balancer::locality_lb_setting::{Distribute, Failover};
                v1::load_balancer::LocalityLbSetting {
                    disabled: l.enabled == Some(false),
                    distribute: l
                        .distribute
                        .iter()
                        .map(|d| Distribute {
                            from: d.from.clone(),
                            to: d.to.clone().into_iter().collect(),
                        })
                        .collect(),
                    failover: l
                        .failover
                        .iter()
                        .map(|f| Failover {
                            from: f.from.clone(),
                            to: f.to.clone(),
                        })
                        .collect(),
                    failover_priority: l.failover_priority.clone(),
                }
            }),
            warmup: warmup(lb),
        }),
        connection_pool: pool.map(|p| {
            let tcp = p.tcp.as_ref();
            let http = p.http.as_ref();
            v1::ConnectionPool {
                max_connections: positive(tcp.and_then(|t| t.max_connections)),
                connect_timeout: tcp.and_then(|t| t.connect_timeout.as_ref()).map(duration),
                http1_max_pending_requests: positive(
                    http.and_then(|h| h.http1_max_pending_requests),
                ),
                http2_max_requests: positive(http.and_then(|h| h.http2_max_requests)),
                max_requests_per_connection: positive(
                    http.and_then(|h| h.max_requests_per_connection),
                ),
                max_retries: positive(http.and_then(|h| h.max_retries)),
                idle_timeout: http.and_then(|h| h.idle_timeout.as_ref()).map(duration),
                tcp_idle_timeout: tcp.and_then(|t| t.idle_timeout.as_ref()).map(duration),
            }
        }),
        outlier_detection: outlier.map(|o| v1::OutlierDetection {
            // Unset means Envoy's default of 5, enforced; an explicit 0 turns 5xx ejection off.
            consecutive_5xx_errors: o.consecutive_5xx_errors.unwrap_or(5),
            consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
            interval: o.interval.as_ref().map(duration),
            base_ejection_time: o.base_ejection_time.as_ref().map(duration),
            max_ejection_percent: positive(o.max_ejection_percent),
            min_health_percent: positive(o.min_health_percent),
            split_external_local_origin_errors: o
                .split_external_local_origin_errors
                .unwrap_or(false),
            consecutive_local_origin_failures: o.consecutive_local_origin_failures.unwrap_or(5),
            http_error_codes: o.outlier_detection_http_error_codes.clone(),
        }),
        port_level: Default::default(),
        retry_budget: None,
        tls: None,
    }
}

/// `warmup` (or the deprecated `warmupDurationSecs`) with Istio's defaults filled in.
fn warmup(lb: &crate::model::LoadBalancerSettings) -> Option<v1::load_balancer::Warmup> {
    let w = lb.warmup.as_ref();
    let window = w
        .and_then(|w| w.duration.as_ref())
        .or(lb.warmup_duration_secs.as_ref())
        .filter(|d| !d.is_zero())?;
    Some(v1::load_balancer::Warmup {
        duration: Some(duration(window)),
        minimum_percent: w.and_then(|w| w.minimum_percent).unwrap_or(10.0),
        aggression: w.and_then(|w| w.aggression).unwrap_or(1.0),
    })
}

/// `tls` (ClientTLSSettings) as sidecars apply it to services outside the mesh.
fn client_tls(t: &crate::model::ClientTlsSettings) -> v1::ClientTls {
    use crate::model::ClientTlsMode;
    use v1::client_tls::Mode;
    v1::ClientTls {
        mode: match t.mode {
            Some(ClientTlsMode::Simple) => Mode::Simple,
            Some(ClientTlsMode::Mutual) => Mode::Mutual,
            Some(ClientTlsMode::IstioMutual) => Mode::IstioMutual,
            Some(ClientTlsMode::Disable) | None => Mode::Disable,
        } as i32,
        ca_certificates: t.ca_certificates.clone().unwrap_or_default(),
        client_certificate: t.client_certificate.clone().unwrap_or_default(),
        private_key: t.private_key.clone().unwrap_or_default(),
        sni: t.sni.clone().unwrap_or_default(),
        subject_alt_names: t.subject_alt_names.clone(),
        insecure_skip_verify: t.insecure_skip_verify == Some(true),
    }
}

fn full_policy(tp: &TrafficPolicy) -> v1::TrafficPolicy {
    let mut p = traffic_policy(
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
    );
    p.tls = tp.tls.as_ref().map(client_tls);
    // Istio's defaults (Envoy's): 20 %, at least 3, requests in flight.
    p.retry_budget = tp
        .retry_budget
        .as_ref()
        .map(|b| v1::ConcurrencyRetryBudget {
            percent: b.percent.unwrap_or(20.0),
            min_retry_concurrency: b.min_retry_concurrency.unwrap_or(3),
            budget_interval: b
                .budget_interval
                .as_ref()
                .filter(|d| !d.is_zero())
                .map(duration),
        });
    // Port-level entries replace the blocks wholesale (not inherited), as Istio does.
    for pl in &tp.port_level_settings {
        if let Some(port) = pl.port {
            let mut block = traffic_policy(
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
            );
            block.tls = pl.tls.as_ref().map(client_tls);
            p.port_level.insert(port.number, block);
        }
    }
    p
}

/// The policy a DestinationRule sets for `host`.
pub fn destination(dr: &Named<DestinationRule>, host: &str) -> v1::DestinationPolicy {
    let mut traffic_policy = dr.spec.traffic_policy.as_ref().map(full_policy);
    if dr
        .meta
        .annotations
        .get(crate::model::annotations::ALGORITHM_ANNOTATION)
        .is_some_and(|a| a == "PEAK_EWMA")
    {
        let tp = traffic_policy.get_or_insert_with(Default::default);
        tp.load_balancer.get_or_insert_with(Default::default).simple =
            v1::load_balancer::Simple::PeakEwma as i32;
    }
    v1::DestinationPolicy {
        hostname: host.to_string(),
        traffic_policy,
        subsets: dr
            .spec
            .subsets
            .iter()
            .map(|s| v1::Subset {
                name: s.name.clone(),
                labels: s.labels.clone().into_iter().collect(),
                traffic_policy: s.traffic_policy.as_ref().map(full_policy),
            })
            .collect(),
        origin: dr.key(),
        local_rate_limit: super::local_rate_limit(
            dr.meta
                .annotations
                .get(crate::model::annotations::DESTINATION_ANNOTATION),
        ),
        rate_retry_budget: rate_retry_budget(
            dr.meta
                .annotations
                .get(crate::model::annotations::RETRY_BUDGET_ANNOTATION),
        ),
    }
}

/// The `retrybudget.meshlite.io/rate` annotation (validation refused a bad value).
fn rate_retry_budget(value: Option<&String>) -> Option<v1::RateRetryBudget> {
    use crate::model::annotations::RateRetryBudget;
    Some(match value?.parse().ok()? {
        RateRetryBudget::Off => v1::RateRetryBudget {
            disabled: true,
            ..Default::default()
        },
        RateRetryBudget::On {
            ratio,
            min_per_second,
            ttl,
        } => v1::RateRetryBudget {
            ratio,
            min_per_second,
            ttl: Some(duration(&ttl)),
            disabled: false,
        },
    })
}

pub(crate) fn selects(selector: Option<&WorkloadSelector>, w: &Workload) -> bool {
    selector.is_none_or(|s| {
        s.match_labels
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v))
    })
}

fn mode(m: MtlsMode) -> v1::MtlsMode {
    match m {
        MtlsMode::Unset => v1::MtlsMode::MtlsUnset,
        MtlsMode::Disable => v1::MtlsMode::Disable,
        MtlsMode::Permissive => v1::MtlsMode::Permissive,
        MtlsMode::Strict => v1::MtlsMode::Strict,
    }
}

/// The PeerAuthentication Istio applies in one scope: of the candidates, the oldest.
fn oldest<'c>(
    candidates: impl Iterator<Item = &'c Named<PeerAuthentication>>,
) -> Option<&'c Named<PeerAuthentication>> {
    candidates.min_by(|a, b| a.meta.age_key().cmp(&b.meta.age_key()))
}

/// Workload `w`'s PeerAuthentication, composed: its mode, and the modes of workload ports
/// set apart by `portLevelMtls`.
pub fn peer_authentication(
    config: &ConfigSet,
    w: &Workload,
) -> (v1::MtlsMode, std::collections::BTreeMap<u32, i32>) {
    let mut resolved = MtlsMode::Permissive;
    let mut ports = std::collections::BTreeMap::new();
    // Mesh (root namespace, no selector), namespace, workload: each applies if set. Root
    // namespace policies with a selector are ignored, as Istio ignores them.
    let scopes =
        [
            oldest(
                config
                    .peer_authentications_in(ROOT_NAMESPACE)
                    .filter(|p| p.spec.selector.is_none()),
            ),
            (w.namespace != ROOT_NAMESPACE)
                .then(|| {
                    oldest(
                        config
                            .peer_authentications_in(&w.namespace)
                            .filter(|p| p.spec.selector.is_none()),
                    )
                })
                .flatten(),
            (w.namespace != ROOT_NAMESPACE)
                .then(|| {
                    oldest(config.peer_authentications_in(&w.namespace).filter(|p| {
                        p.spec.selector.is_some() && selects(p.spec.selector.as_ref(), w)
                    }))
                })
                .flatten(),
        ];
    for pa in scopes.into_iter().flatten() {
        if let Some(m) = pa.spec.mtls.as_ref().map(|m| m.mode)
            && m != MtlsMode::Unset
        {
            resolved = m;
        }
        if pa.spec.selector.is_some() {
            for (port, m) in &pa.spec.port_level_mtls {
                if m.mode != MtlsMode::Unset {
                    ports.insert(*port, mode(m.mode) as i32);
                }
            }
        }
    }
    (mode(resolved), ports)
}

/// The `jwtRules` of every RequestAuthentication targeting `w`, root namespace first, key
/// sets inline.
fn jwt_rules(config: &ConfigSet, w: &Workload, jwks: &ResolvedJwks) -> Vec<v1::JwtRule> {
    let namespaces = if w.namespace == ROOT_NAMESPACE {
        vec![ROOT_NAMESPACE]
    } else {
        vec![ROOT_NAMESPACE, w.namespace.as_str()]
    };
    let mut out = Vec::new();
    for ns in namespaces {
        for ra in config.request_authentications_in(ns) {
            let targeted = !ra.spec.target_refs.is_empty() || ra.spec.target_ref.is_some();
            if targeted || !selects(ra.spec.selector.as_ref(), w) {
                continue;
            }
            for (index, r) in ra.spec.jwt_rules.iter().enumerate() {
                let keys = match (&r.jwks, &r.jwks_uri) {
                    (Some(inline), _) => inline.clone(),
                    (None, Some(uri)) => jwks
                        .get(uri)
                        .map_or_else(|| FAIL_CLOSED_JWKS.to_string(), |k| k.to_string()),
                    (None, None) => FAIL_CLOSED_JWKS.to_string(),
                };
                out.push(v1::JwtRule {
                    origin: ra.key(),
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    issuer: r.issuer.clone(),
                    audiences: r.audiences.clone(),
                    jwks: keys,
                    from_headers: r
                        .from_headers
                        .iter()
                        .map(|h| v1::JwtHeader {
                            name: h.name.clone(),
                            prefix: h.prefix.clone(),
                        })
                        .collect(),
                    from_params: r.from_params.clone(),
                    from_cookies: r.from_cookies.clone(),
                    forward_original_token: r.forward_original_token,
                    output_payload_to_header: r
                        .output_payload_to_header
                        .clone()
                        .unwrap_or_default(),
                    output_claim_to_headers: r
                        .output_claim_to_headers
                        .iter()
                        .map(|c| v1::ClaimToHeader {
                            header: c.header.clone(),
                            claim: c.claim.clone(),
                        })
                        .collect(),
                    space_delimited_claims: r.space_delimited_claims.clone(),
                });
            }
        }
    }
    out
}

/// The inbound policy of workload `w`.
pub fn inbound(
    config: &ConfigSet,
    w: &Workload,
    trust_domain: &str,
    jwks: &ResolvedJwks,
) -> v1::InboundPolicy {
    let (mtls_mode, ports) = peer_authentication(config, w);
    let mut authorization = Vec::new();
    let candidates = config.authorization_policies_in(ROOT_NAMESPACE).chain(
        if w.namespace == ROOT_NAMESPACE {
            None
        } else {
            Some(config.authorization_policies_in(&w.namespace))
        }
        .into_iter()
        .flatten(),
    );
    for ap in candidates {
        // Policies attached by targetRefs are for gateways and waypoints, not sidecars.
        let targeted = !ap.spec.target_refs.is_empty() || ap.spec.target_ref.is_some();
        if targeted || !selects(ap.spec.selector.as_ref(), w) {
            continue;
        }
        let ns = &ap.meta.namespace;
        let account = |sa: &String| match sa.split_once('/') {
            Some((n, s)) => format!("{trust_domain}/ns/{n}/sa/{s}"),
            None => format!("{trust_domain}/ns/{ns}/sa/{sa}"),
        };
        authorization.push(v1::AuthorizationPolicy {
            origin: ap.key(),
            action: match ap.spec.action {
                AuthzAction::Allow => v1::authorization_policy::Action::Allow,
                AuthzAction::Deny => v1::authorization_policy::Action::Deny,
                AuthzAction::Audit => v1::authorization_policy::Action::Audit,
                AuthzAction::Custom => v1::authorization_policy::Action::Custom,
            } as i32,
            rules: ap
                .spec
                .rules
                .iter()
                .map(|r| v1::Rule {
                    from: r
                        .from
                        .iter()
                        .map(|f| {
                            let s = &f.source;
                            let mut principals = s.principals.clone();
                            principals.extend(s.service_accounts.iter().map(account));
                            let mut not_principals = s.not_principals.clone();
                            not_principals.extend(s.not_service_accounts.iter().map(account));
                            v1::Source {
                                principals,
                                not_principals,
                                request_principals: s.request_principals.clone(),
                                not_request_principals: s.not_request_principals.clone(),
                                namespaces: s.namespaces.clone(),
                                not_namespaces: s.not_namespaces.clone(),
                                ip_blocks: s.ip_blocks.clone(),
                                not_ip_blocks: s.not_ip_blocks.clone(),
                                remote_ip_blocks: s.remote_ip_blocks.clone(),
                                not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
                                trust_domains: s.trust_domains.clone(),
                                not_trust_domains: s.not_trust_domains.clone(),
                            }
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| {
                            let o = &t.operation;
                            v1::Operation {
                                hosts: o.hosts.clone(),
                                not_hosts: o.not_hosts.clone(),
                                ports: o.ports.clone(),
                                not_ports: o.not_ports.clone(),
                                methods: o.methods.clone(),
                                not_methods: o.not_methods.clone(),
                                paths: o.paths.clone(),
                                not_paths: o.not_paths.clone(),
                            }
                        })
                        .collect(),
                    when: r
                        .when
                        .iter()
                        .map(|c| v1::Condition {
                            key: c.key.clone(),
                            values: c.values.clone(),
                            not_values: c.not_values.clone(),
                        })
                        .collect(),
                })
                .collect(),
            provider: ap
                .spec
                .provider
                .as_ref()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
            dry_run: ap
                .meta
                .annotations
                .get("istio.io/dry-run")
                .is_some_and(|v| v == "true"),
        });
    }
    v1::InboundPolicy {
        mtls_mode: mtls_mode as i32,
        port_mtls: ports,
        authorization,
        jwt_rules: jwt_rules(config, w, jwks),
        telemetry: super::telemetry::resolve(config, w),
    }
}

/// The mesh-wide settings sidecars apply, from the MeshConfig (Istio's defaults without one).
pub fn mesh(config: Option<&MeshConfig>) -> v1::MeshConfig {
    use v1::mesh_config::PathNormalization as W;
    let Some(m) = config else {
        return v1::MeshConfig::default();
    };
    v1::MeshConfig {
        path_normalization: match m.path_normalization.as_ref().map(|p| p.normalization) {
            Some(PathNormalization::None) => W::None,
            Some(PathNormalization::Base) => W::Base,
            Some(PathNormalization::MergeSlashes) => W::MergeSlashes,
            Some(PathNormalization::DecodeAndMergeSlashes) => W::DecodeAndMergeSlashes,
            Some(PathNormalization::Default) | None => W::Default,
        } as i32,
        trust_domain_aliases: m.trust_domain_aliases.clone(),
        num_trusted_proxies: m
            .default_config
            .as_ref()
            .and_then(|d| d.gateway_topology.as_ref())
            .and_then(|t| t.num_trusted_proxies)
            .unwrap_or(0),
        ext_authz_providers: m.extension_providers.iter().filter_map(ext_authz).collect(),
        proxy_stats_matcher: m
            .default_config
            .as_ref()
            .and_then(|d| d.proxy_stats_matcher.as_ref())
            .map(|s| v1::StatsMatcher {
                inclusion_prefixes: s.inclusion_prefixes.clone(),
                inclusion_suffixes: s.inclusion_suffixes.clone(),
                inclusion_regexps: s.inclusion_regexps.clone(),
            }),
        tracing_providers: m
            .extension_providers
            .iter()
            .filter_map(tracing_provider)
            .collect(),
        default_tracing_providers: m
            .default_providers
            .as_ref()
            .map(|d| d.tracing.clone())
            .unwrap_or_default(),
        tracing_sampling: m
            .default_config
            .as_ref()
            .and_then(|d| d.tracing.as_ref())
            .and_then(|t| t.sampling),
        access_log_providers: access_log_providers(m),
        default_access_log_providers: default_access_log_providers(m),
        outbound_registry_only: m
            .outbound_traffic_policy
            .as_ref()
            .is_some_and(|p| p.mode == crate::model::OutboundTrafficMode::RegistryOnly),
    }
}

/// `defaultProviders.accessLogging`; without it, `accessLogFile` turns on the built-in
/// provider for every sidecar, as in Istio.
fn default_access_log_providers(m: &MeshConfig) -> Vec<String> {
    let listed = m
        .default_providers
        .as_ref()
        .map(|d| d.access_logging.clone())
        .unwrap_or_default();
    if listed.is_empty() && m.access_log_file.as_deref().is_some_and(|f| !f.is_empty()) {
        vec![BUILT_IN_ACCESS_LOG_PROVIDER.0.to_string()]
    } else {
        listed
    }
}

/// A provider's `logFormat` as sidecars get it (label values that are not format strings
/// are left out: `validate` refuses them).
fn log_format(f: &LogFormat) -> v1::LogFormat {
    v1::LogFormat {
        text: f.text.clone().unwrap_or_default(),
        labels: f
            .label_formats()
            .filter_map(|(name, format)| Some((name.to_string(), format.ok()?)))
            .collect(),
    }
}

/// The built-in provider's format from `accessLogFormat` and `accessLogEncoding` (`None`:
/// the JSON line of Envoy's default fields). With JSON encoding the format is a JSON object
/// of field -> format string; one that is not is left out (`validate` refuses it).
fn built_in_log_format(m: &MeshConfig) -> Option<v1::LogFormat> {
    let format = m
        .access_log_format
        .as_deref()
        .filter(|f| !f.trim().is_empty());
    match (m.access_log_encoding, format) {
        (Some(AccessLogEncoding::Json), Some(f)) => {
            let labels: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(f).ok()?;
            Some(log_format(&LogFormat {
                text: None,
                labels: Some(labels),
            }))
        }
        (Some(AccessLogEncoding::Json), None) => None,
        (_, Some(f)) => Some(v1::LogFormat {
            text: f.to_string(),
            labels: Default::default(),
        }),
        (Some(AccessLogEncoding::Text), None) => Some(v1::LogFormat {
            text: meshlite_xds_proto::log_format::ISTIO_DEFAULT_TEXT.to_string(),
            labels: Default::default(),
        }),
        (None, None) => None,
    }
}

/// The `extensionProviders` sidecars can send access logs to (file and OpenTelemetry), then
/// Istio's built-in `envoy` provider (`accessLogFile`, else standard output, in
/// `accessLogFormat`) unless one of them is named so.
fn access_log_providers(m: &MeshConfig) -> Vec<v1::AccessLogProvider> {
    use v1::access_log_provider::{File, Kind, OpenTelemetry};
    let providers = &m.extension_providers;
    let mut out: Vec<v1::AccessLogProvider> = providers
        .iter()
        .filter_map(|p| {
            let kind = if let Some(f) = &p.envoy_file_access_log {
                Kind::File(File {
                    path: f.path.clone(),
                    format: f.log_format.as_ref().map(log_format),
                })
            } else {
                let o = p.envoy_otel_als.as_ref()?;
                Kind::Opentelemetry(OpenTelemetry {
                    service: host_of(&o.service).to_string(),
                    port: o.port,
                    log_name: o.log_name.clone().unwrap_or_default(),
                    format: o.log_format.as_ref().map(log_format),
                })
            };
            Some(v1::AccessLogProvider {
                name: p.name.clone(),
                kind: Some(kind),
            })
        })
        .collect();
    let (builtin, path) = BUILT_IN_ACCESS_LOG_PROVIDER;
    if !providers
        .iter()
        .any(|p| p.name.eq_ignore_ascii_case(builtin))
    {
        let file = m.access_log_file.as_deref().filter(|f| !f.is_empty());
        out.push(v1::AccessLogProvider {
            name: builtin.to_string(),
            kind: Some(Kind::File(File {
                path: file.unwrap_or(path).to_string(),
                format: built_in_log_format(m),
            })),
        });
    }
    out
}

/// The hostname of a provider's `[<namespace>/]<hostname>` service: the namespace only
/// disambiguates in Istio's registry, the hostname is what the proxy resolves.
fn host_of(service: &str) -> &str {
    service.rsplit_once('/').map_or(service, |(_, h)| h)
}

/// An `extensionProviders` entry as the trace collector sidecars report to, if it is one.
fn tracing_provider(p: &ProviderConfig) -> Option<v1::TracingProvider> {
    use v1::tracing_provider::{Kind, OpenTelemetry, Zipkin};
    let (c, kind) = match (&p.opentelemetry, &p.zipkin) {
        (Some(c), _) => (c, Kind::Opentelemetry(OpenTelemetry {})),
        (None, Some(c)) => (c, Kind::Zipkin(Zipkin {})),
        (None, None) => return None,
    };
    Some(v1::TracingProvider {
        name: p.name.clone(),
        service: host_of(&c.service).to_string(),
        port: c.port,
        max_tag_length: c.max_tag_length.unwrap_or(0),
        kind: Some(kind),
    })
}

/// An `extensionProviders` entry as the external authorizer sidecars ask, if it is one.
/// `service` is `[<namespace>/]<hostname>`: the namespace only disambiguates in Istio's
/// registry, the hostname is what the proxy resolves.
fn ext_authz(p: &ProviderConfig) -> Option<v1::ExtAuthzProvider> {
    use v1::ext_authz_provider::{Grpc, Http, Kind};
    let host = |service: &str| host_of(service).to_string();
    let status = |s: &Option<String>| s.as_deref().and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = |b: &Option<BodyInCheck>| {
        b.as_ref().map(|b| v1::ext_authz_provider::BodyInCheck {
            max_request_bytes: b.max_request_bytes,
            allow_partial_message: b.allow_partial_message,
            pack_as_bytes: b.pack_as_bytes,
        })
    };
    if let Some(g) = &p.envoy_ext_authz_grpc {
        return Some(v1::ExtAuthzProvider {
            name: p.name.clone(),
            service: host(&g.service),
            port: g.port,
            timeout: g.timeout.as_ref().map(duration),
            fail_open: g.fail_open,
            status_on_error: status(&g.status_on_error),
            include_request_body_in_check: body(&g.include_request_body_in_check),
            kind: Some(Kind::Grpc(Grpc {})),
        });
    }
    let h = p.envoy_ext_authz_http.as_ref()?;
    Some(v1::ExtAuthzProvider {
        name: p.name.clone(),
        service: host(&h.service),
        port: h.port,
        timeout: h.timeout.as_ref().map(duration),
        fail_open: h.fail_open,
        status_on_error: status(&h.status_on_error),
        include_request_body_in_check: body(&h.include_request_body_in_check),
        kind: Some(Kind::Http(Http {
            path_prefix: h.path_prefix.clone().unwrap_or_default(),
            include_request_headers_in_check: h.include_request_headers_in_check.clone(),
            include_additional_headers_in_check: h.include_additional_headers_in_check.clone(),
            headers_to_upstream_on_allow: h.headers_to_upstream_on_allow.clone(),
            headers_to_downstream_on_deny: h.headers_to_downstream_on_deny.clone(),
            headers_to_downstream_on_allow: h.headers_to_downstream_on_allow.clone(),
        })),
    })
}
