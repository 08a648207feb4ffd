//! The sidecar's DNS proxy: an app resolves plain service names without any cluster DNS.
//! Mesh names (services, in the forms a pod's search list produces, and ServiceEntry hosts)
//! resolve to the VIPs the control plane allocated or the entry declared; other names go to
//! the pod's resolver (here a fake one on loopback); a resolver that is down gives SERVFAIL
//! at once; a service pushed later resolves without a restart.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use meshlite_tests::apps::HttpApp;
use meshlite_tests::control::{ControlPlane, ECHO_PORT, MeshProxy, NAMESPACE, Workload};
use meshlite_tests::deadline::{SOON, eventually};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// What the fake upstream resolver answers for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);

fn entries(extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: api, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [api.example.com]\n  resolution: DNS\n\
         \x20 ports: [{{number: 443, name: tls, protocol: TLS}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
         metadata: {{name: pay, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [pay.example.com]\n  addresses: [10.9.9.9]\n  resolution: DNS\n\
         \x20 ports: [{{number: 80, name: http, protocol: HTTP}}]\n{extra}"
    )
}

const LATER: &str = "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
     metadata: {name: later, namespace: default}\n\
     spec:\n  hosts: [later.example.com]\n  resolution: DNS\n\
     \x20 ports: [{number: 80, name: http, protocol: HTTP}]\n";

/// A resolver on loopback (UDP and TCP, one port) answering every A query with
/// [`UPSTREAM_ANSWER`], and remembering the names it was asked.
struct FakeResolver {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

fn fake_answer(packet: &[u8], asked: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    let q = Message::from_vec(packet).ok()?;
    let mut r = Message::response(q.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    for query in &q.queries {
        asked.lock().unwrap().push(query.name().to_ascii());
        if query.query_type() == RecordType::A {
            r.add_answer(hickory_proto::rr::Record::from_rdata(
                query.name().clone(),
                60,
                RData::A(hickory_proto::rr::rdata::A(UPSTREAM_ANSWER)),
            ));
        }
    }
    r.add_queries(q.queries.iter().cloned());
    r.to_vec().ok()
}

impl FakeResolver {
    async fn start() -> FakeResolver {
        // UDP and TCP on one port, as a resolver serves: the UDP port is free, the same TCP
        // port may be another test's, so a few ports are tried.
        let mut attempt = 0;
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(e) if attempt < 20 => {
                    attempt += 1;
                    eprintln!("fake resolver: TCP {addr} taken ({e}), trying another port");
                }
                Err(e) => panic!("no port free for both UDP and TCP: {e}"),
            }
        };
        let asked = Arc::new(Mutex::new(Vec::new()));
        let a = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                if let Some(reply) = fake_answer(&buf[..n], &a) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let a = asked.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = tcp.accept().await {
                let a = a.clone();
                tokio::spawn(async move {
                    let Ok(len) = s.read_u16().await else { return };
                    let mut q = vec![0u8; usize::from(len)];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    if let Some(reply) = fake_answer(&q, &a) {
                        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&reply);
                        let _ = s.write_all(&framed).await;
                    }
                });
            }
        });
        FakeResolver { addr, asked }
    }

    fn was_asked(&self, name: &str) -> bool {
        self.asked.lock().unwrap().iter().any(|n| n == name)
    }
}

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::new(0x5151, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

async fn ask_udp(dns: SocketAddr, name: &str, t: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(dns).await.unwrap();
    sock.send(&query(name, t).to_vec().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no UDP answer for {name} within 5 s"))
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

async fn ask_tcp(dns: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut s = TcpStream::connect(dns).await.unwrap();
    let q = query(name, t).to_vec().unwrap();
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed).await.unwrap();
    let answer = async {
        let len = s.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .unwrap_or_else(|_| panic!("no TCP answer for {name} within 5 s"));
    Message::from_vec(&buf).unwrap()
}

/// The A records of an answer.
fn v4(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

fn allocated(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == [240, 240]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_resolve_mesh_names_to_vips_and_other_names_through_their_resolver() {
    let upstream = FakeResolver::start().await;
    let control = ControlPlane::start(&[("entries.yaml", &entries(""))]).await;
    let app = HttpApp::start("echo").await;
    let _echo = MeshProxy::start(
        &control.access(NAMESPACE, "echo").await,
        &Workload::new("echo").serving(ECHO_PORT, app.addr),
    )
    .await;
    let client = MeshProxy::start(
        &control.access(NAMESPACE, "client").await,
        &Workload::new("client").with_dns(&[upstream.addr]),
    )
    .await;
    let dns = client.addrs.dns.expect("the DNS proxy runs");

    // The echo service, once registered, resolves to one allocated VIP under every form.
    let vip = eventually("echo to resolve to a VIP", SOON, || async {
        let r = ask_udp(dns, "echo.default.svc.cluster.local.", RecordType::A).await;
        v4(&r).first().copied().filter(|ip| allocated(*ip))
    })
    .await;
    for name in [
        "echo.default.svc.cluster.local.",
        "echo.default.svc.",
        "echo.default.",
        "echo.",
    ] {
        for r in [
            ask_udp(dns, name, RecordType::A).await,
            ask_tcp(dns, name, RecordType::A).await,
        ] {
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(r.metadata.authoritative, "{name}");
            assert_eq!(v4(&r), [vip], "{name}");
            assert_eq!(r.answers[0].ttl, 30, "{name}");
        }
    }
    // No IPv6 VIP: an empty NOERROR, not NXDOMAIN.
    let r = ask_udp(dns, "echo.default.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());

    // ServiceEntry hosts: an allocated VIP, or the entry's own address.
    let api = v4(&ask_udp(dns, "api.example.com.", RecordType::A).await);
    assert!(
        api.len() == 1 && allocated(api[0]) && api[0] != vip,
        "{api:?}"
    );
    let pay = v4(&ask_tcp(dns, "pay.example.com.", RecordType::A).await);
    assert_eq!(pay, [Ipv4Addr::new(10, 9, 9, 9)]);
    // Mesh names were answered by the sidecar (before echo registered, the name went
    // upstream like any other).
    assert!(!upstream.was_asked("echo.default.svc."));
    assert!(!upstream.was_asked("api.example.com."));

    // Other names go to the pod's resolver, over the transport the app used.
    for r in [
        ask_udp(dns, "www.example.net.", RecordType::A).await,
        ask_tcp(dns, "tcp.example.net.", RecordType::A).await,
    ] {
        assert_eq!(v4(&r), [UPSTREAM_ANSWER]);
        assert_eq!(r.metadata.id, 0x5151);
    }
    assert!(upstream.was_asked("www.example.net."));
    assert!(upstream.was_asked("tcp.example.net."));

    // A service pushed later resolves without a restart.
    let name = "later.example.com.";
    assert_eq!(
        v4(&ask_udp(dns, name, RecordType::A).await),
        [UPSTREAM_ANSWER]
    );
    control.write_config("entries.yaml", &entries(LATER));
    let later = eventually("later.example.com to resolve to a VIP", SOON, || async {
        v4(&ask_udp(dns, name, RecordType::A).await)
            .first()
            .copied()
            .filter(|ip| allocated(*ip))
    })
    .await;
    assert!(![vip, api[0]].contains(&later));
    // Existing services kept their addresses.
    assert_eq!(
        v4(&ask_udp(dns, "echo.", RecordType::A).await),
        [vip],
        "a new service moved echo"
    );

    let requests = client.metric("istio_agent_dns_requests_total", &[]).await;
    let forwarded = client
        .metric("istio_agent_dns_upstream_requests_total", &[])
        .await;
    assert!(requests >= 20.0, "requests {requests}");
    assert!(forwarded >= 3.0, "forwarded {forwarded}");
    assert_eq!(
        client
            .metric("istio_agent_dns_upstream_failures_total", &[])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_is_down_gives_servfail_at_once_and_mesh_names_still_resolve() {
    // A port nobody listens on.
    let down = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let control = ControlPlane::start(&[("entries.yaml", &entries(""))]).await;
    let client = MeshProxy::start(
        &control.access(NAMESPACE, "client").await,
        &Workload::new("client").with_dns(&[down]),
    )
    .await;
    let dns = client.addrs.dns.expect("the DNS proxy runs");
    let pay = eventually("pay.example.com to resolve", SOON, || async {
        let r = ask_udp(dns, "pay.example.com.", RecordType::A).await;
        (!r.answers.is_empty()).then(|| v4(&r))
    })
    .await;
    assert_eq!(pay, [Ipv4Addr::new(10, 9, 9, 9)]);
    let failures = client
        .metric("istio_agent_dns_upstream_failures_total", &[])
        .await;
    let started = std::time::Instant::now();
    for r in [
        ask_udp(dns, "www.example.net.", RecordType::A).await,
        ask_tcp(dns, "www.example.net.", RecordType::A).await,
    ] {
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(r.queries.len(), 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "SERVFAIL took {:?}",
        started.elapsed()
    );
    assert_eq!(
        client
            .metric("istio_agent_dns_upstream_failures_total", &[])
            .await,
        failures + 2.0
    );

    // Malformed packets: FORMERR, and the proxy keeps answering.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(dns).await.unwrap();
    sock.send(&[0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.metadata.id, 0xabcd);
    let pay = v4(&ask_udp(dns, "pay.example.com.", RecordType::A).await);
    assert_eq!(pay, [Ipv4Addr::new(10, 9, 9, 9)]);
}
