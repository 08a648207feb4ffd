//! End users for RequestAuthentication tests: an identity provider with a key made in the
//! test (ES256, or RS256 where a test wants RSA), the JWK set that verifies its tokens, and
//! [`JwksServer`], a small HTTP server publishing a set at a `jwksUri` for the control plane
//! to fetch.

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An identity provider: an issuer name and its signing key.
pub struct Issuer {
    /// The `iss` its tokens carry.
    pub name: String,
    key: EncodingKey,
    alg: Algorithm,
    kid: String,
    jwk: Jwk,
}

impl Issuer {
    /// An issuer signing with a fresh P-256 key (ES256).
    ///
    /// # Panics
    /// If the key cannot be made.
    pub fn new(name: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC key");
        Self::with_key(name, key, Algorithm::ES256)
    }

    /// An issuer signing with a fresh 2048-bit RSA key (RS256).
    ///
    /// # Panics
    /// If the key cannot be made.
    pub fn rsa(name: &str) -> Self {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let der: Pkcs8V1Der<'_> = pair.as_der().expect("PKCS#8");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key");
        Self::with_key(name, key, Algorithm::RS256)
    }

    fn with_key(name: &str, key: EncodingKey, alg: Algorithm) -> Self {
        // Named after the issuer: an impostor's key claims the same `kid`.
        let kid = format!("key-of-{name}");
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("JWK");
        jwk.common.key_id = Some(kid.clone());
        Self {
            name: name.to_string(),
            key,
            alg,
            kid,
            jwk,
        }
    }

    /// The JWK set verifying this issuer's tokens, as JSON.
    pub fn jwks(&self) -> String {
        json!({ "keys": [&self.jwk] }).to_string()
    }

    /// A token with exactly `claims`.
    ///
    /// # Panics
    /// If signing fails.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign")
    }

    /// A token for `sub` and audience `aud`, valid for an hour from now, with `extra`
    /// claims.
    pub fn token(&self, sub: &str, aud: &str, extra: &[(&str, Value)]) -> String {
        let mut claims = json!({
            "iss": self.name, "sub": sub, "aud": aud,
            "iat": now(), "exp": now() + 3600,
        });
        for (k, v) in extra {
            claims[*k] = v.clone();
        }
        self.sign(&claims)
    }
}

/// An HTTP server answering every GET with the current key set (a `jwksUri`).
pub struct JwksServer {
    /// Where it listens.
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `jwks` on a loopback port.
    ///
    /// # Panics
    /// If it cannot listen.
    pub async fn start(jwks: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(jwks));
        let requests = Arc::new(AtomicU64::new(0));
        let (b, r) = (body.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: http::Request<Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let text = b.lock().map(|t| t.clone()).unwrap_or_default();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(text)))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            body,
            requests,
            task,
        }
    }

    /// The URI to put in `jwksUri`.
    pub fn uri(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Serves `jwks` from now on (a key rotation).
    pub fn serve(&self, jwks: String) {
        if let Ok(mut b) = self.body.lock() {
            *b = jwks;
        }
    }

    /// How many requests it answered.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
