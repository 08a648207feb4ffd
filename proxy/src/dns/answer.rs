//! One DNS query in, one verdict out: an answer from the snapshot's [`NameTable`], a
//! query to forward upstream, or nothing (a packet not worth a reply). Pure and synchronous,
//! so the servers call it inline and the fuzzer can drive it with any bytes.
//!
//! As Istio's DNS proxy: a mesh name is answered authoritatively with its VIPs, TTL 30 s; a
//! mesh name without an address of the family asked (an AAAA query for an IPv4-only VIP, an
//! MX query) gets an empty NOERROR answer, never NXDOMAIN, so the caller's resolver does not
//! conclude the name is unknown. Anything else goes upstream untouched. Malformed queries
//! get FORMERR when a reply can be addressed (a 12-byte header), and packets that are
//! themselves responses are dropped, so two resolvers can never bounce errors at each other.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::table::NameTable;

/// TTL of answers for mesh names, Istio's.
pub const TTL: u32 = 30;

/// The UDP payload size advertised in replies to EDNS queries (the 2020 DNS flag day's
/// value, safe from fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// Largest reply over UDP to a query without EDNS (RFC 1035).
const CLASSIC_UDP_LIMIT: usize = 512;

/// DNS header length: a shorter packet cannot be answered at all.
const HEADER_LEN: usize = 12;

/// How the query arrived: UDP replies are bounded, TCP ones are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// Length-prefixed messages on a stream.
    Tcp,
}

/// What to do with one query.
#[derive(Debug)]
pub enum Verdict {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not a mesh name: send the query bytes upstream as they are. The parsed query is kept
    /// to answer SERVFAIL if upstream fails.
    Forward(Box<Message>),
    /// A packet that does not parse: FORMERR when it has a header to address the reply
    /// with, else nothing.
    Malformed(Option<Vec<u8>>),
    /// Reply nothing: the packet is itself a response.
    Drop,
}

/// Decides what to do with `packet`, a query received over `transport`.
pub fn answer(packet: &[u8], table: &NameTable, transport: Transport) -> Verdict {
    if packet.len() < HEADER_LEN {
        return Verdict::Malformed(None);
    }
    if packet[2] & 0x80 != 0 {
        return Verdict::Drop;
    }
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return formerr(packet),
    };
    if query.metadata.message_type != MessageType::Query {
        return Verdict::Drop;
    }
    let [q] = query.queries.as_slice() else {
        return Verdict::Forward(Box::new(query));
    };
    if query.metadata.op_code != OpCode::Query || q.query_class() != DNSClass::IN {
        return Verdict::Forward(Box::new(query));
    }
    let Some(addrs) = table.lookup(q.name()) else {
        return Verdict::Forward(Box::new(query));
    };
    let mut reply = reply_to(&query, ResponseCode::NoError);
    reply.metadata.authoritative = true;
    match q.query_type() {
        RecordType::A => {
            for ip in &addrs.v4 {
                reply.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
            }
        }
        RecordType::AAAA => {
            for ip in &addrs.v6 {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    TTL,
                    RData::AAAA(AAAA(*ip)),
                ));
            }
        }
        // The name exists; it has no record of this type here.
        _ => {}
    }
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => query
            .edns
            .as_ref()
            .map_or(CLASSIC_UDP_LIMIT, |e| {
                usize::from(e.max_payload().min(EDNS_PAYLOAD))
            })
            .max(CLASSIC_UDP_LIMIT),
    };
    match reply.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Verdict::Reply(bytes),
        Ok(_) => {
            // Too big for the datagram: the client retries over TCP.
            reply.answers.clear();
            reply.metadata.truncation = true;
            encoded(&reply)
        }
        Err(_) => servfail_verdict(&query),
    }
}

/// The reply skeleton for `query`: its id, opcode, question and recursion flag, and EDNS
/// when it used EDNS (RFC 6891 requires the OPT record back).
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.checking_disabled = query.metadata.checking_disabled;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}

fn encoded(reply: &Message) -> Verdict {
    match reply.to_vec() {
        Ok(bytes) => Verdict::Reply(bytes),
        Err(_) => Verdict::Drop,
    }
}

fn servfail_verdict(query: &Message) -> Verdict {
    encoded(&reply_to(query, ResponseCode::ServFail))
}

/// SERVFAIL for a forwarded query whose upstreams all failed; `None` if it cannot be
/// encoded (then the client times out, as it would have anyway).
pub fn servfail(query: &Message) -> Option<Vec<u8>> {
    match servfail_verdict(query) {
        Verdict::Reply(bytes) => Some(bytes),
        _ => None,
    }
}

/// FORMERR for a packet that has a header but does not parse: only the id and opcode are
/// echoed, since nothing after the header can be trusted.
fn formerr(packet: &[u8]) -> Verdict {
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let op_code = OpCode::from_u8((packet[2] >> 3) & 0x0f);
    Verdict::Malformed(
        Message::error_msg(id, op_code, ResponseCode::FormErr)
            .to_vec()
            .ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::table::tests::{service, table_of};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn table() -> NameTable {
        table_of(
            &[
                service("reviews.shop.svc.cluster.local", "shop", &["240.240.0.7"]),
                service("big.example.com", "shop", &[]),
            ],
            "shop",
            true,
        )
    }

    fn query(name: &str, t: RecordType) -> Message {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap_or_default(), t));
        m
    }

    fn reply(v: Verdict) -> Message {
        match v {
            Verdict::Reply(b) | Verdict::Malformed(Some(b)) => {
                Message::from_vec(&b).expect("a reply that parses")
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn ask(m: &Message, t: &NameTable) -> Verdict {
        answer(&m.to_vec().expect("encodes"), t, Transport::Udp)
    }

    #[test]
    fn a_mesh_name_gets_its_vip_with_istios_ttl() {
        let t = table();
        for name in [
            "reviews.",
            "reviews.shop.svc.cluster.local.",
            "Reviews.Shop.",
        ] {
            let r = reply(ask(&query(name, RecordType::A), &t));
            assert_eq!(r.metadata.id, 0x1234);
            assert_eq!(r.metadata.message_type, MessageType::Response);
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert!(r.metadata.authoritative && r.metadata.recursion_desired);
            assert_eq!(r.queries.len(), 1);
            assert_eq!(r.answers.len(), 1, "{name}");
            assert_eq!(r.answers[0].ttl, TTL);
            assert_eq!(
                r.answers[0].data,
                RData::A(A(std::net::Ipv4Addr::new(240, 240, 0, 7)))
            );
        }
    }

    #[test]
    fn a_mesh_name_without_the_family_asked_is_an_empty_noerror() {
        let t = table();
        for rt in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let r = reply(ask(&query("reviews.shop.", rt), &t));
            assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{rt}");
            assert!(r.answers.is_empty());
        }
    }

    #[test]
    fn other_names_classes_and_opcodes_are_forwarded() {
        let t = table();
        assert!(matches!(
            ask(&query("example.com.", RecordType::A), &t),
            Verdict::Forward(_)
        ));
        // A service without a VIP is not answered here.
        assert!(matches!(
            ask(&query("big.example.com.", RecordType::A), &t),
            Verdict::Forward(_)
        ));
        let mut chaos = query("reviews.shop.", RecordType::A);
        if let Some(q) = chaos.queries.first_mut() {
            q.set_query_class(DNSClass::CH);
        }
        assert!(matches!(ask(&chaos, &t), Verdict::Forward(_)));
        let mut two = query("reviews.shop.", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("reviews.").unwrap_or_default(),
            RecordType::A,
        ));
        assert!(matches!(ask(&two, &t), Verdict::Forward(_)));
    }

    #[test]
    fn edns_queries_get_an_opt_record_back() {
        let mut q = query("reviews.", RecordType::A);
        let mut e = Edns::new();
        e.set_max_payload(4096);
        q.set_edns(e);
        let r = reply(ask(&q, &table()));
        assert_eq!(r.edns.map(|e| e.max_payload()), Some(EDNS_PAYLOAD));
    }

    #[test]
    fn an_answer_too_big_for_udp_is_truncated() {
        let many: Vec<String> = (1..=60).map(|i| format!("10.0.0.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let t = table_of(&[service("many.example.com", "shop", &many)], "shop", true);
        let q = query("many.example.com.", RecordType::A);
        let r = reply(answer(&q.to_vec().expect("encodes"), &t, Transport::Udp));
        assert!(r.metadata.truncation && r.answers.is_empty());
        let r = reply(answer(&q.to_vec().expect("encodes"), &t, Transport::Tcp));
        assert!(!r.metadata.truncation);
        assert_eq!(r.answers.len(), 60);
    }

    #[test]
    fn malformed_packets_get_formerr_or_nothing() {
        let t = table();
        assert!(matches!(
            answer(&[], &t, Transport::Udp),
            Verdict::Malformed(None)
        ));
        assert!(matches!(
            answer(&[0; 11], &t, Transport::Udp),
            Verdict::Malformed(None)
        ));
        // A header claiming one question that is not there.
        let mut bad = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let r = reply(answer(&bad, &t, Transport::Udp));
        assert_eq!(r.metadata.id, 0xabcd);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // A label pointing at itself.
        bad.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        let r = reply(answer(&bad, &t, Transport::Udp));
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered.
        let mut resp = query("reviews.", RecordType::A);
        resp.metadata.message_type = MessageType::Response;
        assert!(matches!(ask(&resp, &t), Verdict::Drop));
        // Arbitrary bytes never panic.
        for seed in 0u32..2000 {
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i as u32) & 0xff) as u8)
                .collect();
            let _ = answer(&bytes, &t, Transport::Udp);
        }
    }

    #[test]
    fn servfail_echoes_the_question() {
        let q = query("example.com.", RecordType::A);
        let r = Message::from_vec(&servfail(&q).expect("encodes")).expect("parses");
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(r.metadata.id, 0x1234);
        assert_eq!(r.queries, q.queries);
    }
}
