//! Checks of Sidecar resources (`networking.istio.io`).
//!
//! What istiod's webhook refuses is an error: a Sidecar that configures nothing, a
//! `workloadSelector` without labels, an egress listener without hosts, a host that is not
//! `namespace/dnsName`, a bad port, `bind` without a port, two listeners on one port, more
//! than one listener without a port (or one that is not last), `egressProxy` with
//! `REGISTRY_ONLY`. What Istio leaves undefined (two Sidecars without selector in one
//! namespace, two selecting the same workloads) is a warning naming the one meshlite applies:
//! the oldest (creation time, then name), as istiod sorts them. Fields meshlite reads but does
//! not apply are warnings too.

use std::collections::BTreeMap;

use crate::model::{EgressHost, HostNamespace, OutboundTrafficMode, ROOT_NAMESPACE, Sidecar};
use crate::source::{Resource, ResourceSpec};

use super::{Checker, SERVICE_ENTRY_PROTOCOLS};

impl Checker<'_> {
    pub(super) fn sidecar(&mut self, r: &Resource, s: &Sidecar) {
        if s.egress.is_empty()
            && s.ingress.is_empty()
            && s.outbound_traffic_policy.is_none()
            && s.inbound_connection_pool.is_none()
        {
            self.error(
                r,
                "spec",
                "empty configuration: a Sidecar needs egress, ingress or outboundTrafficPolicy",
            );
        }
        if let Some(sel) = &s.workload_selector {
            if sel.labels.is_empty() {
                self.error(
                    r,
                    "spec.workloadSelector.labels",
                    "a workloadSelector needs labels (omit it to apply to the whole namespace)",
                );
            } else if r.meta.namespace == ROOT_NAMESPACE {
                self.warning(
                    r,
                    "spec.workloadSelector",
                    format!("in the root namespace ({ROOT_NAMESPACE}) a Sidecar with a selector is not the mesh-wide default: it applies only to the workloads of {ROOT_NAMESPACE} it selects, as in Istio"),
                );
            }
        }
        let mut ports: BTreeMap<u32, usize> = BTreeMap::new();
        let portless: Vec<usize> = (0..s.egress.len())
            .filter(|&i| s.egress[i].port.is_none())
            .collect();
        for (i, l) in s.egress.iter().enumerate() {
            let p = format!("spec.egress[{i}]");
            if l.hosts.is_empty() {
                self.error(
                    r,
                    format!("{p}.hosts"),
                    "an egress listener needs at least one host",
                );
            }
            for (j, h) in l.hosts.iter().enumerate() {
                match EgressHost::parse(h) {
                    Err(e) => self.error(r, format!("{p}.hosts[{j}]"), e.to_string()),
                    Ok(eh) => {
                        if eh.host != "*" && !eh.host.starts_with('*') && !eh.host.contains('.') {
                            self.warning(
                                r,
                                format!("{p}.hosts[{j}]"),
                                format!("`{}` matches no service: hosts are matched as written, write the FQDN (e.g. `{}.<namespace>.svc.cluster.local`)", eh.host, eh.host),
                            );
                        }
                        if eh.namespace == HostNamespace::Nothing && eh.host != "*" {
                            self.warning(
                                r,
                                format!("{p}.hosts[{j}]"),
                                "`~` imports nothing whatever the dnsName; write `~/*`",
                            );
                        }
                    }
                }
            }
            match &l.port {
                Some(port) => {
                    if !(1..=65535).contains(&port.number) {
                        self.error(
                            r,
                            format!("{p}.port.number"),
                            format!("port {} is outside 1..=65535", port.number),
                        );
                    }
                    if let Some(proto) = &port.protocol
                        && !SERVICE_ENTRY_PROTOCOLS
                            .iter()
                            .any(|k| k.eq_ignore_ascii_case(proto))
                    {
                        self.error(
                            r,
                            format!("{p}.port.protocol"),
                            format!(
                                "unknown protocol `{proto}` (one of {})",
                                SERVICE_ENTRY_PROTOCOLS.join(", ")
                            ),
                        );
                    }
                    if let Some(first) = ports.insert(port.number, i) {
                        self.error(
                            r,
                            format!("{p}.port.number"),
                            format!(
                                "spec.egress[{first}] already listens on port {}: ports of egress listeners must be unique",
                                port.number
                            ),
                        );
                    }
                }
                None => {
                    if l.bind.as_deref().is_some_and(|b| !b.is_empty()) {
                        self.error(r, format!("{p}.bind"), "`bind` needs a `port`");
                    }
                    if portless.first() != Some(&i) {
                        self.error(
                            r,
                            format!("{p}.port"),
                            "only one egress listener may be without a port",
                        );
                    } else if i + 1 != s.egress.len() {
                        self.error(
                            r,
                            format!("{p}.port"),
                            "the egress listener without a port must be the last one",
                        );
                    }
                }
            }
        }
        if let Some(otp) = &s.outbound_traffic_policy
            && otp.egress_proxy.is_some()
            && otp.mode == OutboundTrafficMode::RegistryOnly
        {
            self.error(
                r,
                "spec.outboundTrafficPolicy.egressProxy",
                "egressProxy is only allowed with mode ALLOW_ANY",
            );
        }
    }

    pub(super) fn sidecar_unapplied(&mut self, r: &Resource, s: &Sidecar) {
        if !s.ingress.is_empty() {
            self.unapplied(
                r,
                "spec.ingress".into(),
                "inbound ports come from the workload's announcement (the proxy's `inbound` ports)",
            );
        }
        if s.inbound_connection_pool.is_some() {
            self.unapplied(
                r,
                "spec.inboundConnectionPool".into(),
                "the server side uses its DestinationRule's connectionPool",
            );
        }
        if s.outbound_traffic_policy
            .as_ref()
            .is_some_and(|o| o.egress_proxy.is_some())
        {
            self.unapplied(
                r,
                "spec.outboundTrafficPolicy.egressProxy".into(),
                "unknown destinations go where they were going",
            );
        }
        for (i, l) in s.egress.iter().enumerate() {
            let p = format!("spec.egress[{i}]");
            if l.bind.as_deref().is_some_and(|b| !b.is_empty()) {
                self.unapplied(
                    r,
                    format!("{p}.bind"),
                    "the sidecar has one outbound listener (15001) for every service",
                );
            }
            if l.capture_mode.is_some() {
                self.unapplied(
                    r,
                    format!("{p}.captureMode"),
                    "capture is set up by `meshlite-proxy init`, explicit mode always works",
                );
            }
            if l.port.is_some() {
                self.unapplied(
                    r,
                    format!("{p}.port"),
                    "only services with this port are imported through this listener, but their other ports stay reachable (Istio exposes only this one)",
                );
            }
        }
    }

    /// Sidecars competing for the same workloads: Istio leaves the outcome undefined;
    /// meshlite applies the oldest and says so.
    pub(super) fn sidecar_scopes(&mut self, resources: &[Resource]) {
        let sidecars: Vec<(&Resource, &Sidecar)> = resources
            .iter()
            .filter_map(|r| match &r.spec {
                ResourceSpec::Sidecar(s) => Some((r, &**s)),
                _ => None,
            })
            .collect();
        let scope = |ns: &str| {
            if ns == ROOT_NAMESPACE {
                "the root namespace (the mesh-wide default)".to_string()
            } else {
                format!("namespace {ns}")
            }
        };
        for (j, &(r, s)) in sidecars.iter().enumerate() {
            for &(earlier, es) in &sidecars[..j] {
                if earlier.meta.namespace != r.meta.namespace {
                    continue;
                }
                let winner = super::security::oldest(earlier, r).label();
                match (&s.workload_selector, &es.workload_selector) {
                    (None, None) => self.warning(
                        r,
                        "spec.workloadSelector",
                        format!(
                            "{} already has a Sidecar without workloadSelector, {} ({}); Istio leaves the choice undefined, meshlite applies the oldest: {winner}",
                            scope(&r.meta.namespace),
                            earlier.label(),
                            earlier.origin
                        ),
                    ),
                    (Some(a), Some(b)) => {
                        let includes = |x: &BTreeMap<String, String>, y: &BTreeMap<String, String>| {
                            x.iter().all(|(k, v)| y.get(k) == Some(v))
                        };
                        if includes(&a.labels, &b.labels) || includes(&b.labels, &a.labels) {
                            self.warning(
                                r,
                                "spec.workloadSelector",
                                format!(
                                    "{} ({}) can select the same workloads; Istio leaves the choice undefined, meshlite applies the oldest: {winner}",
                                    earlier.label(),
                                    earlier.origin
                                ),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::source::Severity;
    use crate::validate::test_support::{check, expect, expect_error, expect_no_error};

    fn sidecar(ns_name: &str, spec: &str) -> String {
        let (ns, name) = ns_name.split_once('/').unwrap_or(("default", ns_name));
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\n\
             metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
        )
    }

    #[test]
    fn a_scoping_sidecar_is_valid_without_warnings() {
        let report = expect_no_error(&[sidecar(
            "shop/default",
            "{egress: [{hosts: ['./*', 'istio-system/*', '*/api.example.com']}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}",
        )]);
        assert_eq!(report.warnings().count(), 0, "{:#?}", report.problems);
        let set = report.set.expect("valid");
        assert_eq!(set.sidecars.len(), 1);
    }

    #[test]
    fn what_istio_refuses_is_an_error_naming_the_field() {
        expect_error(&[sidecar("shop/s", "{}")], "spec");
        expect_error(
            &[sidecar(
                "shop/s",
                "{workloadSelector: {labels: {}}, egress: [{hosts: ['./*']}]}",
            )],
            "spec.workloadSelector.labels",
        );
        expect_error(
            &[sidecar("shop/s", "{egress: [{hosts: []}]}")],
            "spec.egress[0].hosts",
        );
        let e = expect_error(
            &[sidecar(
                "shop/s",
                "{egress: [{hosts: ['reviews.shop.svc.cluster.local']}]}",
            )],
            "spec.egress[0].hosts[0]",
        );
        assert!(e.message.contains("namespace/dnsName"), "{e:?}");
        expect_error(
            &[sidecar(
                "shop/s",
                "{egress: [{port: {number: 70000}, hosts: ['./*']}]}",
            )],
            "spec.egress[0].port.number",
        );
        expect_error(
            &[sidecar(
                "shop/s",
                "{egress: [{port: {number: 80, protocol: SMTP}, hosts: ['./*']}]}",
            )],
            "spec.egress[0].port.protocol",
        );
        expect_error(
            &[sidecar(
                "shop/s",
                "{egress: [{bind: 127.0.0.2, hosts: ['./*']}]}",
            )],
            "spec.egress[0].bind",
        );
        expect_error(
            &[sidecar(
                "shop/s",
                "{egress: [{hosts: ['./*']}, {port: {number: 80}, hosts: ['./*']}]}",
            )],
            "spec.egress[0].port",
        );
        expect_error(
            &[sidecar(
                "shop/s",
                "{egress: [{port: {number: 80}, hosts: ['./*']}, {port: {number: 80}, hosts: ['*/*']}]}",
            )],
            "spec.egress[1].port.number",
        );
        expect_error(
            &[sidecar(
                "shop/s",
                "{outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: x}}}",
            )],
            "spec.outboundTrafficPolicy.egressProxy",
        );
        expect_error(
            &[sidecar(
                "shop/s",
                "{outboundTrafficPolicy: {mode: SOMETIMES}}",
            )],
            "spec.outboundTrafficPolicy.mode",
        );
    }

    #[test]
    fn unknown_fields_and_unapplied_ones_are_reported() {
        let report = check(&[sidecar(
            "shop/s",
            "{egres: [], ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: '127.0.0.1:8080'}], egress: [{port: {number: 9080}, captureMode: NONE, bind: 127.0.0.2, hosts: ['./*']}]}",
        )]);
        assert!(!report.has_errors(), "{:#?}", report.problems);
        expect(&report, Severity::Warning, "spec.egres");
        for field in [
            "spec.ingress",
            "spec.egress[0].port",
            "spec.egress[0].captureMode",
            "spec.egress[0].bind",
        ] {
            let w = expect(&report, Severity::Warning, field);
            assert!(w.message.contains("not applied"), "{w:?}");
        }
    }

    #[test]
    fn short_names_warn_that_they_match_nothing() {
        let report = check(&[sidecar("shop/s", "{egress: [{hosts: ['shop/reviews']}]}")]);
        let w = expect(&report, Severity::Warning, "spec.egress[0].hosts[0]");
        assert!(w.message.contains("FQDN"), "{w:?}");
    }

    #[test]
    fn competing_sidecars_warn_and_name_the_one_applied() {
        let report = check(&[
            sidecar("shop/b", "{egress: [{hosts: ['./*']}]}"),
            sidecar("shop/a", "{egress: [{hosts: ['*/*']}]}"),
            sidecar("web/x", "{egress: [{hosts: ['./*']}]}"),
        ]);
        assert!(!report.has_errors(), "{:#?}", report.problems);
        let w = expect(&report, Severity::Warning, "spec.workloadSelector");
        assert!(
            w.message.contains("applies the oldest: Sidecar shop/a"),
            "{w:?}"
        );
        assert_eq!(report.warnings().count(), 1, "{:#?}", report.problems);

        let report = check(&[
            sidecar(
                "shop/one",
                "{workloadSelector: {labels: {app: ratings}}, egress: [{hosts: ['./*']}]}",
            ),
            sidecar(
                "shop/two",
                "{workloadSelector: {labels: {app: ratings, version: v1}}, egress: [{hosts: ['*/*']}]}",
            ),
            sidecar(
                "shop/three",
                "{workloadSelector: {labels: {app: reviews}}, egress: [{hosts: ['*/*']}]}",
            ),
        ]);
        let w = expect(&report, Severity::Warning, "spec.workloadSelector");
        assert!(w.message.contains("Sidecar shop/one"), "{w:?}");
        assert_eq!(report.warnings().count(), 1, "{:#?}", report.problems);
    }

    #[test]
    fn a_selector_in_the_root_namespace_is_not_mesh_wide() {
        let report = check(&[sidecar(
            "istio-system/s",
            "{workloadSelector: {labels: {app: gw}}, egress: [{hosts: ['./*']}]}",
        )]);
        let w = expect(&report, Severity::Warning, "spec.workloadSelector");
        assert!(w.message.contains("not the mesh-wide default"), "{w:?}");
    }
}
