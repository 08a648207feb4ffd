//! RequestAuthentication through [`JwtAuthn`]: tokens signed here with keys made here, checked
//! the way a request would be.

use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use meshlite_xds_proto::v1;
use serde_json::{Value, json};

use super::*;

/// A signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: Option<String>,
    jwk: Jwk,
}

impl Signer {
    fn es256(kid: Option<&str>) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        Self::new(key, Algorithm::ES256, kid)
    }

    fn rs256(kid: Option<&str>) -> Self {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        Self::new(key, Algorithm::RS256, kid)
    }

    fn new(key: EncodingKey, alg: Algorithm, kid: Option<&str>) -> Self {
        let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
        jwk.common.key_id = kid.map(str::to_string);
        Self {
            key,
            alg,
            kid: kid.map(str::to_string),
            jwk,
        }
    }

    fn sign(&self, claims: Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({ "keys": signers.iter().map(|s| &s.jwk).collect::<Vec<_>>() }).to_string()
}

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.example";

fn rule(issuer: &str, jwks: String) -> v1::JwtRule {
    v1::JwtRule {
        origin: "shop/jwt".into(),
        index: 0,
        issuer: issuer.into(),
        jwks,
        ..Default::default()
    }
}

fn authn(rules: Vec<v1::JwtRule>) -> (JwtAuthn, JwtStats) {
    let stats = JwtStats::default();
    (JwtAuthn::compile(&rules, stats.clone()).unwrap(), stats)
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "exp": NOW + 3600, "aud": "shop"})
}

fn bearer(token: &str) -> http::Request<()> {
    http::Request::builder()
        .uri("/orders?x=1")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

#[test]
fn no_token_passes_unauthenticated_and_a_workload_without_rules_is_empty() {
    let (none, _) = authn(vec![]);
    assert!(none.is_empty());
    let signer = Signer::es256(None);
    let (a, stats) = authn(vec![rule(ISS, jwks(&[&signer]))]);
    let mut req = http::Request::builder()
        .uri("/")
        .header("authorization", "Basic dXNlcjpwdw==")
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut req, NOW).unwrap().is_none());
    assert_eq!(
        req.headers()["authorization"],
        "Basic dXNlcjpwdw==",
        "untouched"
    );
    assert_eq!(
        stats.allowed.get(),
        1,
        "Envoy counts a missing token as allowed"
    );
}

#[test]
fn a_valid_token_becomes_the_request_principal_and_is_removed() {
    let signer = Signer::rs256(Some("k1"));
    let (a, stats) = authn(vec![rule(ISS, jwks(&[&signer]))]);
    let token = signer.sign(json!({
        "iss": ISS, "sub": "alice", "exp": NOW + 60, "aud": ["shop", "other"],
        "azp": "web", "scope": "read write", "groups": ["admin"],
    }));
    let mut req = bearer(&token);
    let auth = a.authenticate(&mut req, NOW).unwrap().unwrap();
    assert_eq!(auth.principal, format!("{ISS}/alice"));
    assert_eq!(auth.audiences, ["shop", "other"]);
    assert_eq!(auth.presenter.as_deref(), Some("web"));
    assert_eq!(auth.claims["groups"], json!(["admin"]));
    assert!(auth.space_delimited.iter().any(|c| c == "scope"));
    assert!(auth.space_delimited.iter().any(|c| c == "permission"));
    assert!(
        req.headers().get("authorization").is_none(),
        "forwardOriginalToken is false by default"
    );
    assert_eq!(stats.allowed.get(), 1);
}

#[test]
fn every_rejection_has_envoys_message() {
    let signer = Signer::es256(Some("k1"));
    let other = Signer::es256(Some("k1"));
    let mut r = rule(ISS, jwks(&[&signer]));
    r.audiences = vec!["https://shop/".into()];
    let (a, stats) = authn(vec![r]);
    let check = |token: &str| a.authenticate(&mut bearer(token), NOW).map(|_| ());
    let with = |patch: Value| {
        let mut c = claims();
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        signer.sign(c)
    };
    assert_eq!(check(&signer.sign(claims())), Ok(()));
    assert_eq!(
        check(&with(json!({"aud": "http://shop"}))),
        Ok(()),
        "audiences compare without scheme and trailing slash"
    );
    assert_eq!(
        check(&other.sign(claims())),
        Err(JwtError::VerificationFails)
    );
    assert_eq!(
        check(&with(json!({"exp": NOW - 61}))),
        Err(JwtError::Expired)
    );
    assert_eq!(
        check(&with(json!({"exp": NOW - 59}))),
        Ok(()),
        "60 s of clock skew"
    );
    assert_eq!(
        check(&with(json!({"nbf": NOW + 61}))),
        Err(JwtError::NotYetValid)
    );
    assert_eq!(check(&with(json!({"nbf": NOW + 59}))), Ok(()));
    assert_eq!(
        check(&with(json!({"iss": "https://evil.example"}))),
        Err(JwtError::UnknownIssuer)
    );
    assert_eq!(
        check(&with(json!({"aud": "elsewhere"}))),
        Err(JwtError::AudienceNotAllowed)
    );
    assert_eq!(
        check(&with(json!({"exp": "tomorrow"}))),
        Err(JwtError::ExpNotInteger)
    );
    assert_eq!(check("abc.def"), Err(JwtError::BadFormat));
    assert_eq!(check("e30.e30.e30"), Err(JwtError::HeaderAlg));
    let unsigned = format!(
        "{}.{}.",
        BASE64URL.encode(br#"{"alg":"none"}"#),
        BASE64URL.encode(claims().to_string())
    );
    assert_eq!(check(&unsigned), Err(JwtError::AlgNotImplemented));
    // A tampered payload keeps the old signature.
    let good = signer.sign(claims());
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged = BASE64URL
        .encode(json!({"iss": ISS, "sub": "root", "exp": NOW + 60, "aud": "shop"}).to_string());
    parts[1] = &forged;
    assert_eq!(check(&parts.join(".")), Err(JwtError::VerificationFails));
    // A kid the set does not have.
    let mut unknown_kid = Signer::es256(Some("k2"));
    unknown_kid.key = signer.key.clone();
    assert_eq!(
        check(&unknown_kid.sign(claims())),
        Err(JwtError::NoMatchingKey)
    );
    assert_eq!(stats.denied.get(), 11);
    assert_eq!(stats.allowed.get(), 4);
    assert_eq!(JwtError::Expired.to_string(), "Jwt is expired");
    assert_eq!(
        JwtError::Expired.details(),
        "jwt_authn_access_denied{Jwt_is_expired}"
    );
}

#[test]
fn keys_without_kid_are_all_tried_and_several_issuers_may_validate() {
    let a_key = Signer::es256(None);
    let b_key = Signer::rs256(None);
    let decoy = Signer::es256(None);
    let mut second = rule("https://b.example", jwks(&[&decoy, &b_key]));
    second.index = 1;
    let (a, _) = authn(vec![rule(ISS, jwks(&[&decoy, &a_key])), second]);
    let from_a = a_key.sign(claims());
    let auth = a.authenticate(&mut bearer(&from_a), NOW).unwrap().unwrap();
    assert_eq!(auth.principal, format!("{ISS}/alice"));
    let from_b = b_key.sign(json!({"iss": "https://b.example", "sub": "bob"}));
    let auth = a.authenticate(&mut bearer(&from_b), NOW).unwrap().unwrap();
    assert_eq!(
        auth.principal, "https://b.example/bob",
        "no exp: never expires"
    );
    // B's key does not vouch for A's issuer.
    let cross = b_key.sign(claims());
    assert_eq!(
        a.authenticate(&mut bearer(&cross), NOW).map(|_| ()),
        Err(JwtError::NoMatchingKey),
        "an RSA token finds no RSA key in A's set"
    );
}

#[test]
fn an_empty_key_set_rejects_every_token_of_its_issuer() {
    let signer = Signer::es256(None);
    let (a, _) = authn(vec![rule(ISS, r#"{"keys":[]}"#.into())]);
    assert_eq!(
        a.authenticate(&mut bearer(&signer.sign(claims())), NOW)
            .map(|_| ()),
        Err(JwtError::NoMatchingKey)
    );
    let mut bare = http::Request::new(());
    assert!(a.authenticate(&mut bare, NOW).unwrap().is_none());
}

#[test]
fn locations_outputs_and_forwarding() {
    let signer = Signer::es256(None);
    let mut r = rule(ISS, jwks(&[&signer]));
    r.from_headers = vec![v1::JwtHeader {
        name: "x-token".into(),
        prefix: "".into(),
    }];
    r.from_params = vec!["jwt".into()];
    r.from_cookies = vec!["session".into()];
    r.output_payload_to_header = "x-jwt-payload".into();
    r.output_claim_to_headers = vec![
        v1::ClaimToHeader {
            header: "x-tenant".into(),
            claim: "tenant".into(),
        },
        v1::ClaimToHeader {
            header: "x-level".into(),
            claim: "org.level".into(),
        },
        v1::ClaimToHeader {
            header: "x-groups".into(),
            claim: "groups".into(),
        },
    ];
    r.space_delimited_claims = vec!["roles".into()];
    let (a, _) = authn(vec![r.clone()]);
    let mut c = claims();
    c["tenant"] = json!("a");
    c["org"] = json!({"level": 3});
    c["groups"] = json!(["x"]);
    let token = signer.sign(c.clone());

    let mut req = http::Request::builder()
        .uri("/")
        .header("x-token", &token)
        .header("x-groups", "forged")
        .body(())
        .unwrap();
    let auth = a.authenticate(&mut req, NOW).unwrap().unwrap();
    assert!(auth.space_delimited.iter().any(|s| s == "roles"));
    let h = req.headers();
    assert!(h.get("x-token").is_none());
    assert_eq!(h["x-tenant"], "a");
    assert_eq!(h["x-level"], "3");
    assert!(h.get("x-groups").is_none(), "lists are not copied");
    let payload = BASE64URL.decode(h["x-jwt-payload"].as_bytes()).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), c);

    let mut req = http::Request::builder()
        .uri(format!("/p?a=1&jwt={token}"))
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut req, NOW).unwrap().is_some());
    assert_eq!(req.uri(), "/p?a=1");
    let mut req = http::Request::builder()
        .uri("/")
        .header("cookie", format!("session={token}; theme=dark"))
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut req, NOW).unwrap().is_some());
    assert_eq!(req.headers()["cookie"], "theme=dark");
    // Configured locations replace the defaults.
    assert!(a.authenticate(&mut bearer(&token), NOW).unwrap().is_none());
    // Without a token, the outputs cannot be forged.
    let mut forged = http::Request::builder()
        .uri("/")
        .header("x-tenant", "b")
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut forged, NOW).unwrap().is_none());
    assert!(forged.headers().get("x-tenant").is_none());

    r.forward_original_token = true;
    let (a, _) = authn(vec![r]);
    let mut req = http::Request::builder()
        .uri("/")
        .header("x-token", &token)
        .body(())
        .unwrap();
    assert!(a.authenticate(&mut req, NOW).unwrap().is_some());
    assert_eq!(req.headers()["x-token"], token.as_str(), "forwarded");
}

#[test]
fn bad_rules_fail_the_push_naming_the_rule() {
    let err = JwtAuthn::compile(&[rule(ISS, "{not json".into())], JwtStats::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("RequestAuthentication shop/jwt jwtRules[0]: jwks"),
        "{err}"
    );
    let mut r = rule(ISS, r#"{"keys":[]}"#.into());
    r.output_payload_to_header = "bad header".into();
    let err = JwtAuthn::compile(&[r], JwtStats::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`bad header` is not a header name"), "{err}");
    let err = JwtAuthn::compile(&[rule("", r#"{"keys":[]}"#.into())], JwtStats::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("issuer is required"), "{err}");
}

#[test]
fn unusable_keys_are_skipped() {
    let signer = Signer::es256(None);
    let set = json!({"keys": [
        {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
        {"kty": "XYZ"},
        signer.jwk,
    ]})
    .to_string();
    let keys = KeySet::parse(&set).unwrap();
    assert_eq!(keys.len(), 1);
}
