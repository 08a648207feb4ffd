//! The sidecar's DNS proxy: any packet gets a verdict without panicking, every reply it
//! makes parses back and carries the query's id, and a forwarded query can always be
//! answered SERVFAIL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshlite_proxy::dns::answer::{Transport, Verdict, answer, servfail};
use meshlite_proxy::dns::table::NameTable;
use meshlite_proxy::source::ServiceSpec;
use std::sync::{Arc, OnceLock};

fn service(host: &str, namespace: &str, addresses: &[&str]) -> ServiceSpec {
    ServiceSpec {
        hostname: host.into(),
        name: host.split('.').next().unwrap_or(host).into(),
        namespace: namespace.into(),
        port: 80,
        protocol: meshlite_proxy::protocol::Protocol::Http,
        aliases: vec!["alias.example".into()],
        identities: vec![],
        endpoints: vec![],
        listen: None,
        external: None,
        addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        detect_protocol: false,
        awaiting: false,
        endpoint_ips: Vec::new(),
    }
}

fn table() -> &'static NameTable {
    static TABLE: OnceLock<NameTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        NameTable::build(
            None,
            vec![
                Arc::new(service(
                    "reviews.default.svc.cluster.local",
                    "default",
                    &["240.240.0.1"],
                )),
                Arc::new(service(
                    "api.example.com",
                    "default",
                    &["10.0.0.1", "2001:db8::1"],
                )),
            ],
            "default",
            true,
            None,
        )
    })
}

fuzz_target!(|data: &[u8]| {
    for transport in [Transport::Udp, Transport::Tcp] {
        match answer(data, table(), transport) {
            Verdict::Reply(bytes) | Verdict::Malformed(Some(bytes)) => {
                let reply = hickory_proto::op::Message::from_vec(&bytes).expect("a reply parses");
                assert_eq!(&bytes[..2], &data[..2], "the reply carries the query's id");
                if transport == Transport::Udp {
                    assert!(bytes.len() <= 1232 || reply.metadata.truncation);
                }
            }
            Verdict::Forward(query) => {
                assert!(servfail(&query).is_some());
            }
            Verdict::Malformed(None) | Verdict::Drop => {}
        }
    }
});
