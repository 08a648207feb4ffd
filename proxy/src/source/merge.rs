//! The one place where sources meet: the view a snapshot is built from, when a proxy has both
//! a control plane and services of its own file.

use super::MeshView;

/// The control plane's view, completed by the static file's: the file's services where the
/// control plane has none of the same FQDN and port, and the file's inbound policy until the
/// control plane sends this workload's own (the file is the fallback, never the override).
/// One thing of the file's is kept even where the control plane describes the service: its
/// `listen:` address, a local setting no push carries.
pub fn merge(mut control: MeshView, file: MeshView) -> MeshView {
    if control.inbound.is_none() {
        control.inbound = file.inbound;
    }
    for s in file.services {
        let same = |v: &std::sync::Arc<crate::source::ServiceSpec>| {
            v.port == s.port && v.hostname == s.hostname
        };
        if let Some(pushed) = control.services.iter_mut().find(|v| same(v)) {
            if pushed.listen.is_none() && s.listen.is_some() {
                std::sync::Arc::make_mut(pushed).listen = s.listen;
            }
            continue;
        }
        // Known to the control plane, still to be fetched: its own description comes on the
        // first call. A `listen:` address is kept on it meanwhile (a new list, so a
        // snapshot's directory of such a mesh is made again on each push: a rare setup).
        if let Some(known) = &mut control.known
            && let Some(i) = known.iter().position(same)
        {
            if known[i].listen.is_none() && s.listen.is_some() {
                std::sync::Arc::make_mut(&mut std::sync::Arc::make_mut(known)[i]).listen = s.listen;
            }
            continue;
        }
        control.services.push(s);
    }
    control
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use crate::source::ServiceSpec;

    fn service(host: &str, port: u16, endpoints: usize) -> std::sync::Arc<ServiceSpec> {
        std::sync::Arc::new(ServiceSpec {
            hostname: host.into(),
            name: host.split('.').next().unwrap_or(host).into(),
            namespace: "default".into(),
            port,
            protocol: Protocol::Http,
            aliases: vec![],
            identities: vec![],
            endpoints: (0..endpoints)
                .map(|i| crate::source::EndpointSpec {
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    labels: Default::default(),
                    locality: Default::default(),
                    weight: 1,
                    plaintext: false,
                    workload: None,
                })
                .collect(),
            listen: None,
            external: None,
            addresses: vec![],
            detect_protocol: false,
            awaiting: false,
            endpoint_ips: Vec::new(),
        })
    }

    #[test]
    fn the_control_plane_wins_and_the_file_fills_in_what_it_lacks() {
        let control = MeshView {
            services: vec![service("reviews.default.svc.cluster.local", 9080, 3)],
            ..Default::default()
        };
        let file = MeshView {
            services: vec![
                service("reviews.default.svc.cluster.local", 9080, 1),
                service("reviews.default.svc.cluster.local", 9090, 1),
                service("ratings.default.svc.cluster.local", 9080, 1),
            ],
            inbound: Some(Default::default()),
            ..Default::default()
        };
        let merged = merge(control, file);
        assert_eq!(merged.services.len(), 3);
        let reviews = &merged.services[0];
        assert_eq!(
            reviews.endpoints.len(),
            3,
            "same name and port: the control plane's"
        );
        assert!(
            merged.inbound.is_some(),
            "the file's policy until the control plane sends one"
        );
    }

    #[test]
    fn a_static_listen_address_survives_the_control_planes_description() {
        let control = MeshView {
            services: vec![service("db.default.svc.cluster.local", 5432, 2)],
            ..Default::default()
        };
        let mut listed = service("db.default.svc.cluster.local", 5432, 1);
        std::sync::Arc::make_mut(&mut listed).listen =
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 7000)));
        let file = MeshView {
            services: vec![listed],
            ..Default::default()
        };
        let merged = merge(control, file);
        assert_eq!(merged.services.len(), 1);
        assert_eq!(merged.services[0].endpoints.len(), 2, "the control plane's");
        assert_eq!(
            merged.services[0].listen,
            Some(std::net::SocketAddr::from(([127, 0, 0, 1], 7000)))
        );
    }

    #[test]
    fn a_service_the_control_plane_knows_but_has_not_sent_is_not_the_files() {
        let mut known = service("db.default.svc.cluster.local", 5432, 0);
        std::sync::Arc::make_mut(&mut known).awaiting = true;
        let control = MeshView {
            known: Some(std::sync::Arc::new(vec![known])),
            ..Default::default()
        };
        let mut listed = service("db.default.svc.cluster.local", 5432, 1);
        let at = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 7000)));
        std::sync::Arc::make_mut(&mut listed).listen = at;
        let file = MeshView {
            services: vec![listed, service("cache.default.svc.cluster.local", 6379, 1)],
            ..Default::default()
        };
        let merged = merge(control, file);
        let names: Vec<&str> = merged.services.iter().map(|s| &*s.hostname).collect();
        assert_eq!(
            names,
            ["cache.default.svc.cluster.local"],
            "db is fetched from the control plane on its first call, not served from the file"
        );
        let known = merged
            .known
            .as_deref()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert_eq!(known.len(), 1);
        assert!(known[0].awaiting);
        assert_eq!(
            known[0].listen, at,
            "the file's listen address is kept on it"
        );
    }

    #[test]
    fn the_control_planes_inbound_policy_replaces_the_files() {
        let pushed = meshlite_xds_proto::v1::InboundPolicy {
            mtls_mode: meshlite_xds_proto::v1::MtlsMode::Permissive as i32,
            ..Default::default()
        };
        let control = MeshView {
            inbound: Some(pushed.clone()),
            ..Default::default()
        };
        let file = MeshView {
            inbound: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(merge(control, file).inbound, Some(pushed));
    }
}
