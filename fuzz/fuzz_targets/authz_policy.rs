//! AuthorizationPolicy matching: any pushed inbound policy compiles or is refused, and a
//! compiled one evaluates requests and TCP connections without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_proxy::policy::authz::{
    Attributes, Authorizer, Peer, PolicyStats, Request, StatsSource, TrustDomains,
};
use prost::Message;

struct NoStats;
impl StatsSource for NoStats {
    fn stats(&self, _: &str) -> PolicyStats {
        PolicyStats::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = meshlite_xds_proto::v1::InboundPolicy::decode(data) else {
        return;
    };
    let tds = TrustDomains {
        local: "cluster.local".into(),
        aliases: vec!["old.local".into()],
    };
    let Ok(authz) = Authorizer::compile(&policy.authorization, &tds, &NoStats) else {
        return;
    };
    let id =
        meshlite_xds_proto::spiffe::SpiffeId::parse("spiffe://cluster.local/ns/default/sa/caller")
            .expect("valid id");
    let peer = Peer::new(&id);
    let mut headers = http::HeaderMap::new();
    headers.insert("x-debug", http::HeaderValue::from_static("1"));
    headers.append("x-debug", http::HeaderValue::from_static("2"));
    let path = String::from_utf8_lossy(data);
    for request in [
        None,
        Some(Request {
            host: "llm-processor:8080",
            method: "POST",
            path: &path,
            headers: &headers,
            auth: None,
        }),
    ] {
        let a = Attributes {
            peer: Some(&peer),
            source_ip: "10.0.0.5".parse().expect("ip"),
            remote_ip: "::ffff:203.0.113.9".parse().expect("ip"),
            destination_ip: "10.0.0.9".parse().expect("ip"),
            destination_port: 8080,
            sni: Some("llm-processor.default.svc.cluster.local"),
            request,
        };
        let _ = authz.custom(&a);
        let _ = authz.evaluate(&a);
    }
});
