//! What a consistent-hash balancer hashes (DestinationRule `consistentHash`): a header, a
//! cookie (issued to clients that lack it when it has a TTL), a query parameter or the source
//! address, each fed to [`crate::balance::hash_key`].

use http::HeaderValue;
use std::time::Duration;

/// The request property a consistent-hash load balancer hashes (DestinationRule
/// `consistentHash`). A request without it gets a random endpoint, as in Envoy.
#[derive(Clone, Debug)]
pub enum HashOn {
    /// `httpHeaderName`.
    Header(http::HeaderName),
    /// `httpCookie`.
    Cookie(CookieHash),
    /// `useSourceIp`: the downstream (app) address.
    SourceIp,
    /// `httpQueryParameterName`.
    Query(String),
}

impl HashOn {
    /// The request's hash, if it carries the property.
    pub fn hash<B>(&self, req: &http::Request<B>, source: std::net::IpAddr) -> Option<u64> {
        use crate::balance::hash_key;
        match self {
            HashOn::Header(name) => req.headers().get(name).map(|v| hash_key(v.as_bytes())),
            HashOn::Cookie(CookieHash { name, .. }) => req
                .headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then(|| hash_key(v.as_bytes()))
                }),
            HashOn::SourceIp => Some(hash_key(source.to_string().as_bytes())),
            HashOn::Query(name) => req.uri().query().and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| hash_key(v.as_bytes()))
                })
            }),
        }
    }
}

/// `consistentHash.httpCookie`: the cookie hashed, and how to issue it to a client that has
/// none (Envoy: only when a TTL is given; a zero TTL issues a session cookie).
#[derive(Clone, Debug)]
pub struct CookieHash {
    /// Cookie name.
    pub name: String,
    /// Its `Path` attribute when issued (empty: none).
    pub path: String,
    /// Its lifetime when issued; `None`: never issued (the request is balanced at random).
    pub ttl: Option<Duration>,
}

impl HashOn {
    /// For a hashing cookie the request lacks: a new random value's hash and the
    /// `Set-Cookie` that gives it to the client, so its next requests land on the same
    /// endpoint; `None` when nothing is to be issued.
    pub fn issue_cookie(&self) -> Option<(u64, HeaderValue)> {
        let HashOn::Cookie(c) = self else { return None };
        let ttl = c.ttl?;
        let value = format!("{:016x}", fastrand::u64(..));
        let mut set = format!("{}=\"{value}\"", c.name);
        if !ttl.is_zero() {
            set.push_str(&format!("; Max-Age={}", ttl.as_secs().max(1)));
        }
        if !c.path.is_empty() {
            set.push_str(&format!("; Path={}", c.path));
        }
        set.push_str("; HttpOnly");
        let header = HeaderValue::try_from(set).ok()?;
        // The client will send the value back quoted as issued; hash what it will send.
        Some((
            crate::balance::hash_key(format!("\"{value}\"").as_bytes()),
            header,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_cookie_hashes_like_the_cookie_the_client_sends_back() {
        let on = |ttl: Option<Duration>| {
            HashOn::Cookie(CookieHash {
                name: "lb".into(),
                path: "/".into(),
                ttl,
            })
        };
        assert!(on(None).issue_cookie().is_none(), "no TTL: never issued");
        let (hash, set) = on(Some(Duration::from_secs(3600))).issue_cookie().unwrap();
        let set = set.to_str().unwrap();
        assert!(set.contains("; Max-Age=3600; Path=/; HttpOnly"), "{set}");
        let pair = set.split(';').next().unwrap();
        let back = http::Request::get("/")
            .header("cookie", format!("other=1; {pair}"))
            .body(())
            .unwrap();
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(on(None).hash(&back, ip), Some(hash));
        let (_, session) = on(Some(Duration::ZERO)).issue_cookie().unwrap();
        assert!(
            !session.to_str().unwrap().contains("Max-Age"),
            "a session cookie"
        );
    }

    #[test]
    fn hash_inputs_come_from_the_named_header_cookie_query_or_source() {
        let req = http::Request::get("/p?a=1&user=alice&b")
            .header("x-user", "bob")
            .header("cookie", "theme=dark; session=s-42")
            .body(())
            .unwrap();
        let ip: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let h = crate::balance::hash_key;
        let on = |k: HashOn| k.hash(&req, ip);
        assert_eq!(
            on(HashOn::Header(http::HeaderName::from_static("x-user"))),
            Some(h(b"bob"))
        );
        let cookie = |name: &str| {
            HashOn::Cookie(CookieHash {
                name: name.into(),
                path: String::new(),
                ttl: None,
            })
        };
        assert_eq!(on(cookie("session")), Some(h(b"s-42")));
        assert_eq!(on(HashOn::Query("user".into())), Some(h(b"alice")));
        assert_eq!(on(HashOn::SourceIp), Some(h(b"10.1.2.3")));
        assert_eq!(on(cookie("missing")), None);
        assert_eq!(on(HashOn::Query("missing".into())), None);
    }
}
