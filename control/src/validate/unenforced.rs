//! What the sidecars would not do as written: fields meshlite reads (so a user's Istio YAML
//! loads) but does not apply. Each gets a warning naming it, as unknown fields do, so
//! `validate` never calls valid what would be silently ignored.

use crate::model::{
    DestinationRule, MeshConfig, ServiceEntry, ServiceLocation, SimpleLb, TrafficPolicy,
    VirtualService,
};
use crate::source::Resource;

use super::Checker;

const NOT_APPLIED: &str = "read but not applied by meshlite's sidecars";

impl Checker<'_> {
    pub(super) fn unapplied(&mut self, r: &Resource, field: String, what: &str) {
        self.warning(r, field, format!("{NOT_APPLIED}: {what}"));
    }

    pub(super) fn virtual_service_unapplied(&mut self, r: &Resource, vs: &VirtualService) {
        if !vs.export_to.is_empty() {
            self.unapplied(
                r,
                "spec.exportTo".into(),
                "every sidecar sees every VirtualService",
            );
        }
        for (i, h) in vs.http.iter().enumerate() {
            let p = format!("spec.http[{i}]");
            if !h.mirrors.is_empty() {
                self.unapplied(
                    r,
                    format!("{p}.mirrors"),
                    "only `mirror` (one destination) is applied",
                );
            }
            for (j, m) in h.matches.iter().enumerate() {
                if !m.gateways.is_empty() {
                    self.unapplied(
                        r,
                        format!("{p}.match[{j}].gateways"),
                        "the match applies to sidecars whatever it names",
                    );
                }
                if m.stat_prefix.is_some() {
                    self.unapplied(
                        r,
                        format!("{p}.match[{j}].statPrefix"),
                        "no per-route statistics",
                    );
                }
            }
            if let Some(rd) = &h.redirect {
                if rd.prefix_rewrite.is_some() {
                    self.unapplied(r, format!("{p}.redirect.prefixRewrite"), "use `uri`");
                }
                if rd.derive_port.is_some() {
                    self.unapplied(r, format!("{p}.redirect.derivePort"), "use `port`");
                }
            }
            if let Some(rw) = &h.rewrite
                && rw.uri_regex_rewrite.is_some()
            {
                self.unapplied(
                    r,
                    format!("{p}.rewrite.uriRegexRewrite"),
                    "only `uri` (prefix) and `authority` rewrites are applied",
                );
            }
            if let Some(dr) = &h.direct_response
                && dr.body.as_ref().is_some_and(|b| b.bytes.is_some())
            {
                self.unapplied(
                    r,
                    format!("{p}.directResponse.body.bytes"),
                    "the body would be sent empty; use `body.string`",
                );
            }
        }
    }

    fn pool_unapplied(&mut self, r: &Resource, tp: &TrafficPolicy, p: &str) {
        let blocks = std::iter::once((
            tp.connection_pool.as_ref(),
            tp.load_balancer.as_ref(),
            p.to_string(),
        ))
        .chain(tp.port_level_settings.iter().enumerate().map(|(k, pl)| {
            (
                pl.connection_pool.as_ref(),
                pl.load_balancer.as_ref(),
                format!("{p}.portLevelSettings[{k}]"),
            )
        }));
        let mut found = Vec::new();
        for (pool, lb, bp) in blocks {
            if let Some(lb) = lb
                && lb.simple == Some(SimpleLb::Passthrough)
            {
                found.push((
                    format!("{bp}.loadBalancer.simple"),
                    "PASSTHROUGH needs the original destination (transparent capture); LEAST_REQUEST is used",
                ));
            }
            let Some(pool) = pool else { continue };
            let cp = format!("{bp}.connectionPool");
            if let Some(tcp) = &pool.tcp {
                if tcp.tcp_keepalive.is_some() {
                    found.push((
                        format!("{cp}.tcp.tcpKeepalive"),
                        "no TCP keepalive is set on upstream connections",
                    ));
                }
                if tcp.max_connection_duration.is_some() {
                    found.push((
                        format!("{cp}.tcp.maxConnectionDuration"),
                        "upstream connections are not aged out",
                    ));
                }
            }
            if let Some(http) = &pool.http {
                if http.h2_upgrade_policy.is_some() {
                    found.push((
                        format!("{cp}.http.h2UpgradePolicy"),
                        "the protocol between sidecars is the proxy's `upstream.protocol`",
                    ));
                }
                if http.use_client_protocol.is_some() {
                    found.push((
                        format!("{cp}.http.useClientProtocol"),
                        "HTTP/2 requests already stay HTTP/2",
                    ));
                }
                if http.max_concurrent_streams.is_some() {
                    found.push((
                        format!("{cp}.http.maxConcurrentStreams"),
                        "use http2MaxRequests",
                    ));
                }
            }
        }
        for (field, what) in found {
            self.unapplied(r, field, what);
        }
    }

    pub(super) fn destination_rule_unapplied(&mut self, r: &Resource, dr: &DestinationRule) {
        if !dr.export_to.is_empty() {
            self.unapplied(
                r,
                "spec.exportTo".into(),
                "every sidecar sees every DestinationRule",
            );
        }
        if dr.workload_selector.is_some() {
            self.unapplied(
                r,
                "spec.workloadSelector".into(),
                "the rule applies to every client, not only the selected workloads",
            );
        }
        if let Some(tp) = &dr.traffic_policy {
            self.pool_unapplied(r, tp, "spec.trafficPolicy");
        }
        for (i, s) in dr.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                self.pool_unapplied(r, tp, &format!("spec.subsets[{i}].trafficPolicy"));
            }
        }
    }

    pub(super) fn service_entry_unapplied(&mut self, r: &Resource, se: &ServiceEntry) {
        // Single addresses are virtual IPs captured connections match; ranges match nothing.
        if se.addresses.iter().any(|a| {
            a.split_once('/')
                .is_some_and(|(ip, prefix)| prefix != if ip.contains(':') { "128" } else { "32" })
        }) {
            self.unapplied(
                r,
                "spec.addresses".into(),
                "an address range matches no captured connection; list single addresses",
            );
        }
        if !se.export_to.is_empty() {
            self.unapplied(
                r,
                "spec.exportTo".into(),
                "every sidecar sees every ServiceEntry",
            );
        }
        if se.workload_selector.is_some() {
            self.unapplied(
                r,
                "spec.workloadSelector".into(),
                "endpoints come from `endpoints` only, not from selected workloads",
            );
        }
        for (i, e) in se.endpoints.iter().enumerate() {
            if e.network.is_some() {
                self.unapplied(
                    r,
                    format!("spec.endpoints[{i}].network"),
                    "meshlite is one network",
                );
            }
        }
        if !se.subject_alt_names.is_empty() && se.location != Some(ServiceLocation::MeshInternal) {
            self.unapplied(
                r,
                "spec.subjectAltNames".into(),
                "for a service outside the mesh, the names to verify go in the DestinationRule's tls.subjectAltNames",
            );
        }
    }

    pub(super) fn mesh_config_unapplied(&mut self, r: &Resource, m: &MeshConfig) {
        if m.trust_domain.is_some() {
            self.unapplied(
                r,
                "trustDomain".into(),
                "the trust domain is meshlite-control's --trust-domain",
            );
        }
        let metadata = m.default_config.iter().flat_map(|d| &d.proxy_metadata);
        for (key, value) in metadata {
            let field = format!("defaultConfig.proxyMetadata.{key}");
            if key != crate::model::DNS_CAPTURE && key != crate::model::DNS_AUTO_ALLOCATE {
                self.unapplied(
                    r,
                    field,
                    "meshlite reads ISTIO_META_DNS_CAPTURE and ISTIO_META_DNS_AUTO_ALLOCATE only",
                );
            } else if crate::model::metadata_switch(m, key).is_none() {
                self.warning(
                    r,
                    field,
                    format!("`{value}` is not true or false; the default (true) applies"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::source::Severity;
    use crate::validate::check_dir;

    #[test]
    fn fields_read_but_not_applied_are_warned_about_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mesh.yaml"),
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\n\
             spec:\n  hosts: [r]\n  exportTo: ['.']\n  http:\n  - mirrors: [{destination: {host: r}}]\n    \
             route: [{destination: {host: r}}]\n---\n\
             apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\n\
             spec:\n  host: r\n  workloadSelector: {matchLabels: {app: a}}\n  trafficPolicy:\n    \
             loadBalancer: {simple: PASSTHROUGH}\n    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\n\
             spec:\n  hosts: [e.example.com]\n  addresses: [10.9.9.9, 10.9.0.0/16]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  \
             resolution: DNS\n",
        )
        .unwrap();
        let report = check_dir(dir.path());
        let warned = |field: &str| {
            report.problems.iter().any(|p| {
                p.severity == Severity::Warning
                    && p.field.as_deref() == Some(field)
                    && p.message.contains("not applied")
            })
        };
        for field in [
            "spec.exportTo",
            "spec.http[0].mirrors",
            "spec.workloadSelector",
            "spec.trafficPolicy.loadBalancer.simple",
            "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
        ] {
            assert!(
                warned(field),
                "no warning at {field}: {:#?}",
                report.problems
            );
        }
        // Single addresses are applied (the DNS proxy answers with them, capture maps them to
        // the entry); the range is what the warning is about.
        let addresses: Vec<&str> = report
            .problems
            .iter()
            .filter(|p| p.field.as_deref() == Some("spec.addresses"))
            .map(|p| p.message.as_str())
            .collect();
        assert_eq!(addresses.len(), 1, "{addresses:?}");
        assert!(addresses[0].contains("address range"), "{addresses:?}");
    }
}
