//! Tests of the CA: root lifecycle, `cacerts` chains, CSR signing and refusals, renewals.

use super::*;
use crate::ca::{Revocations, StateFileError};
use rcgen::{BasicConstraints, DnType};
use rustls_pki_types::pem::PemObject;
use std::os::unix::fs::PermissionsExt;

const TD: &str = "cluster.local";
/// No granted labels.
static NO_LABELS: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn reviews() -> SpiffeId {
    id("spiffe://cluster.local/ns/default/sa/reviews")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().replace_nanosecond(0).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn ders(chain: &IssuedChain) -> Vec<CertificateDer<'static>> {
    chain.chain_pem.iter().map(|p| der(p)).collect()
}

/// A CSR from a fresh P-256 key with the given SANs.
fn csr_with(sans: Vec<SanType>, tweak: impl FnOnce(&mut CertificateParams)) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    tweak(&mut params);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

fn csr_for(spiffe: &str) -> String {
    csr_with(vec![uri(spiffe)], |_| {})
}

fn new_ca() -> (tempfile::TempDir, CertificateAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::load_or_create(&dir.path().join("state"), TD).unwrap();
    (dir, ca)
}

fn issue(
    ca: &CertificateAuthority,
    who: &SpiffeId,
    ttl: Duration,
    at: OffsetDateTime,
) -> IssuedChain {
    ca.sign_csr(&csr_for(who.as_str()), who, &NO_LABELS, ttl, at)
        .unwrap()
}

#[test]
fn first_start_creates_a_private_root_and_the_next_start_reuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = CertificateAuthority::load_or_create(&state, "Cluster.Local").unwrap();
    assert_eq!(a.trust_domain(), "cluster.local");
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("root-key.pem")), 0o600);
    assert_eq!(mode(&state.join("root-cert.pem")), 0o644);
    let b = CertificateAuthority::load_or_create(&state, TD).unwrap();
    assert_eq!(a.roots_pem(), b.roots_pem());
    assert_eq!(a.roots_pem().len(), 1);

    // The root is a CA named after the trust domain, with a path-less SPIFFE URI SAN.
    let root = a.roots_der()[0].clone();
    let (_, c) = X509Certificate::from_der(root.as_ref()).unwrap();
    assert!(c.basic_constraints().unwrap().unwrap().value.ca);
    let ku = c.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(c.subject().to_string().contains("meshlite root CA"));
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI("spiffe://cluster.local")]
    );

    // A certificate issued after a restart chains to the same root.
    let leaf = issue(&b, &reviews(), HOUR, now());
    assert_eq!(
        a.verify_client_chain(&ders(&leaf), now()).unwrap(),
        reviews()
    );
}

#[test]
fn a_root_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    CertificateAuthority::load_or_create(&state, TD).unwrap();
    let key = state.join("root-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = CertificateAuthority::load_or_create(&state, TD).unwrap_err();
    assert!(
        matches!(
            err,
            CaError::File(StateFileError::TooOpen { mode: 0o644, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn a_lone_root_certificate_is_not_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    CertificateAuthority::load_or_create(&state, TD).unwrap();
    std::fs::remove_file(state.join("root-key.pem")).unwrap();
    assert!(matches!(
        CertificateAuthority::load_or_create(&state, TD),
        Err(CaError::CaFiles { .. })
    ));
}

#[test]
fn a_csr_for_the_callers_identity_gets_an_svid() {
    let (_d, ca) = new_ca();
    let t = now();
    let issued = issue(&ca, &reviews(), 2 * HOUR, t);
    assert_eq!(issued.chain_pem.len(), 2);
    assert_eq!(issued.chain_pem[1], ca.roots_pem()[0]);
    assert_eq!(issued.not_after, t + 2 * HOUR);

    let leaf = der(&issued.chain_pem[0]);
    let (_, c) = X509Certificate::from_der(leaf.as_ref()).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "empty subject needs a critical SAN");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/default/sa/reviews"
        )]
    );
    assert!(c.subject().iter().next().is_none());
    let bc = c.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = c.key_usage().unwrap().unwrap();
    assert!(ku.critical);
    assert!(ku.value.digital_signature() && ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(c.validity().not_after.to_datetime(), t + 2 * HOUR);
    assert_eq!(
        c.validity().not_before.to_datetime(),
        t - time::Duration::minutes(1)
    );
    assert_eq!(serial_hex(c.raw_serial()), issued.serial_hex);
    assert_eq!(issued.serial_hex.len(), 32);

    // A second certificate gets another serial.
    assert_ne!(
        issue(&ca, &reviews(), HOUR, t).serial_hex,
        issued.serial_hex
    );
}

#[test]
fn p384_keys_are_accepted() {
    let (_d, ca) = new_ca();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(reviews().as_str())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca
        .sign_csr(&csr, &reviews(), &NO_LABELS, HOUR, now())
        .unwrap();
    assert!(ca.verify_client_chain(&ders(&issued), now()).is_ok());
}

/// `openssl req -new -newkey rsa:1024 -subj / -addext subjectAltName=URI:<reviews>`.
const RSA_1024_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\n\
MIIBiTCB8wIBADAAMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCxIT6C+2Wl\n\
0BZzHguHm6uwMX4ip9i9Ba2RDDqf9Dvyr8nXF0hVufNzTZPs+2Q0qrljlfoq7MVB\n\
S8nEfzIFH1ZRISeMBMkccHzFJduff3lSR+lA2ceII5GkxsxKQyPc0CbEbnqHj5xw\n\
yEgdtrCFy3WV65kFGEbG9ZZagH9nJUKcjQIDAQABoEowSAYJKoZIhvcNAQkOMTsw\n\
OTA3BgNVHREEMDAuhixzcGlmZmU6Ly9jbHVzdGVyLmxvY2FsL25zL2RlZmF1bHQv\n\
c2EvcmV2aWV3czANBgkqhkiG9w0BAQsFAAOBgQA6bgNEeYh8SyexBcJ7oBviUOtL\n\
9BGXRaxbEVkBorsSaMbr2GLo18e+m0cX5oi2pL27nZsZj8xG01ZpKi7FQjfDqVLv\n\
Wal4QWq0TMWRAi7kh9egLcFfV8BNDDFh+hjGF+K68IzLmqBv0awQKvTFEy6JLtmt\n\
usovS4UhvDm7FclAvg==\n\
-----END CERTIFICATE REQUEST-----\n\
";

/// The same with a 2048-bit key.
const RSA_2048_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\n\
MIICjzCCAXcCAQAwADCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAN6O\n\
xY+0dPvdgAHp6FX0ZMn21I0tQCR58F8qbE79UGzAVnWmmXCfaBHVj0xFPSKta4FX\n\
AmjWLba4ZgTh0XYl+r3rVhBMC5TUxgGpns/wcohMZ7nzP3Ndj2LFXjNG8GlKOVyD\n\
/EOPrl08wrsJXv/Bs+Z1jgQQJr5UYJ2VabBx+oT4XgTd7ZJbhYwIzef22Skx+E14\n\
gJ4sYrEBVG2/rpP1boTVclaKsWC3wAj53LWDQbYJC7lBFI1iMuvG0TK9KpyaxynW\n\
ZmVn0gmk1ori5EK89wKQcMwrGXZBi4vr2xWu50gUTnV15bKLTBbPKyVpLEs1Cpw6\n\
/ANJ2pnk27PAtNmkRIECAwEAAaBKMEgGCSqGSIb3DQEJDjE7MDkwNwYDVR0RBDAw\n\
LoYsc3BpZmZlOi8vY2x1c3Rlci5sb2NhbC9ucy9kZWZhdWx0L3NhL3Jldmlld3Mw\n\
DQYJKoZIhvcNAQELBQADggEBAILY6J8liPxlo0mgPk962AVVGRXlQcSBYBw9mwyf\n\
BBGpTNMGzddAtqIUzd/Zeuls0spHY8O2caQabthvWsaPf74PT+HSWgWHtpEvUwDl\n\
DrZdfIJaFhLCXke0FZItNLHaoamhlS+A/U6t85ajZeRdixP5ivqn2UvZxFmEIzfV\n\
0Sx+rCtTCce5q8Bey2q6pEJQg5IQcqEyEDUF9IzQ5IhQBLG/9cQSRGTBQgKCZ94A\n\
ugG/wRRQHHZ10aJ4898BGd82d4EN/ohhdN/NeYDrKQBHmRErM6T6Uv7BVITMTI7o\n\
8bwLd7c7gKfwKl85arMlSc8lnKo70SMrdLlF5RNIY1FveEI=\n\
-----END CERTIFICATE REQUEST-----\n\
";

#[test]
fn weak_or_unsupported_keys_are_refused_and_rsa_2048_is_accepted() {
    let (_d, ca) = new_ca();
    let err = ca
        .sign_csr(RSA_1024_CSR, &reviews(), &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert!(matches!(err, CaError::CsrWeakKey { .. }), "{err}");
    assert!(err.to_string().contains("RSA 1024 bits"), "{err}");

    let issued = ca
        .sign_csr(RSA_2048_CSR, &reviews(), &NO_LABELS, HOUR, now())
        .unwrap();
    assert_eq!(
        ca.verify_client_chain(&ders(&issued), now()).unwrap(),
        reviews()
    );

    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![uri(reviews().as_str())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = ca
        .sign_csr(&csr, &reviews(), &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert!(matches!(err, CaError::CsrWeakKey { .. }), "{err}");
}

#[test]
fn lifetimes_are_clamped() {
    let (_d, ca) = new_ca();
    let t = now();
    assert_eq!(
        issue(&ca, &reviews(), Duration::from_secs(1), t).not_after,
        t + MIN_CERT_TTL
    );
    assert_eq!(
        issue(&ca, &reviews(), 365 * 24 * HOUR, t).not_after,
        t + MAX_CERT_TTL
    );
}

#[test]
fn a_csr_for_another_identity_is_refused() {
    let (_d, ca) = new_ca();
    let err = ca
        .sign_csr(
            &csr_for("spiffe://cluster.local/ns/default/sa/admin"),
            &reviews(),
            &NO_LABELS,
            HOUR,
            now(),
        )
        .unwrap_err();
    assert!(matches!(err, CaError::CsrWrongIdentity { .. }), "{err}");
    assert!(err.to_string().contains("sa/admin"), "{err}");
    // A single DNS SAN is not the caller's identity either.
    let csr = csr_with(
        vec![SanType::DnsName("reviews".try_into().unwrap())],
        |_| {},
    );
    let err = ca
        .sign_csr(&csr, &reviews(), &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert!(matches!(err, CaError::CsrWrongIdentity { .. }), "{err}");
    // No SAN at all.
    let csr = csr_with(vec![], |_| {});
    let err = ca
        .sign_csr(&csr, &reviews(), &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert!(matches!(err, CaError::CsrNoIdentity { .. }), "{err}");
}

#[test]
fn a_csr_with_a_second_san_is_refused() {
    let (_d, ca) = new_ca();
    let me = reviews();
    let two_uris = csr_with(
        vec![
            uri(me.as_str()),
            uri("spiffe://cluster.local/ns/default/sa/admin"),
        ],
        |_| {},
    );
    let err = ca
        .sign_csr(&two_uris, &me, &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert!(
        matches!(err, CaError::CsrExtraSans { count: 2, .. }),
        "{err}"
    );

    let with_dns = csr_with(
        vec![
            uri(me.as_str()),
            SanType::DnsName("evil".try_into().unwrap()),
        ],
        |_| {},
    );
    let err = ca
        .sign_csr(&with_dns, &me, &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "CSR asks for 2 SANs (spiffe://cluster.local/ns/default/sa/reviews, dns:evil); only the \
         caller's identity spiffe://cluster.local/ns/default/sa/reviews may be requested"
    );
}

#[test]
fn a_csr_asking_for_a_ca_certificate_is_refused() {
    let (_d, ca) = new_ca();
    let me = reviews();
    let csr = csr_with(vec![uri(me.as_str())], |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    });
    let err = ca.sign_csr(&csr, &me, &NO_LABELS, HOUR, now()).unwrap_err();
    assert!(matches!(err, CaError::CsrRequestsCa { .. }), "{err}");
    assert!(err.to_string().contains("cA=true"), "{err}");

    let csr = csr_with(vec![uri(me.as_str())], |p| {
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
    });
    let err = ca.sign_csr(&csr, &me, &NO_LABELS, HOUR, now()).unwrap_err();
    assert!(err.to_string().contains("keyCertSign"), "{err}");
}

#[test]
fn garbage_and_forged_csrs_are_refused() {
    let (_d, ca) = new_ca();
    let me = reviews();
    for garbage in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        let err = ca
            .sign_csr(garbage, &me, &NO_LABELS, HOUR, now())
            .unwrap_err();
        assert!(
            matches!(err, CaError::CsrUnparseable(_)),
            "{garbage:?}: {err}"
        );
    }
    // Flip a bit of the signature: the requester does not hold the key.
    let pem = csr_for(me.as_str());
    let mut raw = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let forged = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw)
    );
    let err = ca
        .sign_csr(&forged, &me, &NO_LABELS, HOUR, now())
        .unwrap_err();
    assert!(matches!(err, CaError::CsrBadSignature(_)), "{err}");
}

#[test]
fn an_identity_in_another_trust_domain_is_refused() {
    let (_d, ca) = new_ca();
    let foreign = id("spiffe://evil.example/ns/default/sa/reviews");
    let err = ca
        .sign_csr(
            &csr_for(foreign.as_str()),
            &foreign,
            &NO_LABELS,
            HOUR,
            now(),
        )
        .unwrap_err();
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
}

#[test]
fn the_serving_certificate_has_dns_and_ip_sans() {
    let (_d, ca) = new_ca();
    let me = id("spiffe://cluster.local/ns/meshlite-system/sa/control");
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let (issued, key_pem) = ca
        .issue_serving_cert(&me, &["control.mesh".to_string()], &[ip], HOUR, now())
        .unwrap();
    assert!(key_pem.contains("PRIVATE KEY"));
    let chain = ders(&issued);
    let anchors: Vec<_> = ca
        .roots_der()
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap().to_owned())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    ee.verify_for_usage(
        algs,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .unwrap();
    let dns = rustls_pki_types::ServerName::try_from("control.mesh").unwrap();
    ee.verify_is_valid_for_subject_name(&dns).unwrap();
    ee.verify_is_valid_for_subject_name(&rustls_pki_types::ServerName::IpAddress(ip.into()))
        .unwrap();
    assert_eq!(ca.verify_client_chain(&chain, now()).unwrap(), me);
}

#[test]
fn renewals_accept_a_valid_svid_and_refuse_expired_ones() {
    let (_d, ca) = new_ca();
    let t = now();
    let issued = issue(&ca, &reviews(), Duration::from_secs(120), t);
    let chain = ders(&issued);
    assert_eq!(ca.verify_client_chain(&chain, t).unwrap(), reviews());
    let later = t + Duration::from_secs(121);
    assert!(matches!(
        ca.verify_client_chain(&chain, later),
        Err(CaError::ClientCertExpired)
    ));
    assert!(matches!(
        ca.verify_client_chain(&[], t),
        Err(CaError::NoClientCertificate)
    ));
}

#[test]
fn renewals_refuse_a_certificate_from_a_foreign_ca() {
    let (_d, ours) = new_ca();
    let (_d2, theirs) = new_ca();
    let chain = ders(&issue(&theirs, &reviews(), HOUR, now()));
    let err = ours.verify_client_chain(&chain, now()).unwrap_err();
    assert!(matches!(err, CaError::UntrustedChain(_)), "{err}");
}

#[test]
fn renewals_refuse_the_root_itself() {
    let (_d, ca) = new_ca();
    let err = ca
        .verify_client_chain(&[ca.roots_der()[0].clone()], now())
        .unwrap_err();
    assert!(
        matches!(err, CaError::ClientIsCa | CaError::UntrustedChain(_)),
        "{err}"
    );
}

#[test]
fn revoked_serials_and_identities_take_effect_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ca = CertificateAuthority::load_or_create(&state, TD).unwrap();
    let t = now();
    let a = issue(&ca, &reviews(), HOUR, t);
    let b = issue(&ca, &reviews(), HOUR, t);
    assert!(ca.verify_client_chain(&ders(&a), t).is_ok());

    // `cert revoke <serial>` from another process edits the file.
    let mut r = Revocations::load(&state).unwrap();
    r.revoke_serial(&a.serial_hex).unwrap();
    r.save().unwrap();
    let err = ca.verify_client_chain(&ders(&a), t).unwrap_err();
    assert!(matches!(err, CaError::Revoked { .. }), "{err}");
    assert!(ca.verify_client_chain(&ders(&b), t).is_ok());

    // Revoking the identity before t+1s kills b, but not a certificate issued afterwards.
    let mut r = Revocations::load(&state).unwrap();
    r.revoke_identity(&reviews(), t + Duration::from_secs(1));
    r.save().unwrap();
    assert!(matches!(
        ca.verify_client_chain(&ders(&b), t),
        Err(CaError::Revoked { .. })
    ));
    let c = issue(&ca, &reviews(), HOUR, t + Duration::from_secs(2));
    assert!(
        ca.verify_client_chain(&ders(&c), t + Duration::from_secs(2))
            .is_ok()
    );
}

/// An offline root and an intermediate in Istio's `cacerts` layout; returns the root DER.
pub(crate) fn write_cacerts(
    dir: &Path,
    intermediate_validity: time::Duration,
) -> CertificateDer<'static> {
    let t = OffsetDateTime::now_utc();
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut rp = CertificateParams::default();
    rp.distinguished_name = DistinguishedName::new();
    rp.distinguished_name
        .push(DnType::CommonName, "offline root");
    rp.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    rp.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    rp.not_before = t - time::Duration::hours(1);
    rp.not_after = t + time::Duration::days(3650);
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(rp, root_key);

    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ip = CertificateParams::default();
    ip.distinguished_name = DistinguishedName::new();
    ip.distinguished_name
        .push(DnType::CommonName, "cluster intermediate");
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ip.not_before = t - time::Duration::hours(1);
    ip.not_after = t + intermediate_validity;
    let int = ip.signed_by(&int_key, &root_issuer).unwrap();

    let w = |name: &str, s: String| std::fs::write(dir.join(name), s).unwrap();
    w("ca-cert.pem", int.pem());
    w("ca-key.pem", int_key.serialize_pem());
    std::fs::set_permissions(
        dir.join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    w("root-cert.pem", root.pem());
    w("cert-chain.pem", format!("{}{}", int.pem(), root.pem()));
    root.der().clone()
}

#[test]
fn cacerts_chain_is_leaf_intermediate_root_and_verifies_against_the_root_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = write_cacerts(dir.path(), time::Duration::days(365));
    let ca = CertificateAuthority::from_cacerts(dir.path(), TD).unwrap();
    assert_eq!(ca.roots_der(), std::slice::from_ref(&root));
    let issued = issue(&ca, &reviews(), HOUR, now());
    let chain = ders(&issued);
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[2], root);
    let (_, int) = X509Certificate::from_der(chain[1].as_ref()).unwrap();
    assert!(int.subject().to_string().contains("cluster intermediate"));

    let anchors = vec![webpki::anchor_from_trusted_cert(&root).unwrap().to_owned()];
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    let algs = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            algs,
            &anchors,
            &chain[1..2],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .unwrap();
    }
    assert_eq!(
        ca.verify_client_chain(&chain[..2], now()).unwrap(),
        reviews()
    );
}

#[test]
fn the_root_and_the_signing_chain_expire_when_their_certificates_say() {
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), time::Duration::days(2));
    let ca = CertificateAuthority::from_cacerts(dir.path(), TD).unwrap();
    let in_days = |t: OffsetDateTime| (t - now()).whole_hours() as f64 / 24.0;
    assert!((in_days(ca.root_not_after()) - 3650.0).abs() < 0.1);
    assert!((in_days(ca.signing_not_after()) - 2.0).abs() < 0.1);

    let (_dir, own) = new_ca();
    assert_eq!(
        own.root_not_after().unix_timestamp(),
        own.signing_not_after().unix_timestamp(),
        "a self-made root signs directly"
    );
}

#[test]
fn cacerts_leaves_never_outlive_the_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), time::Duration::days(2));
    let ca = CertificateAuthority::from_cacerts(dir.path(), TD).unwrap();
    let issued = issue(&ca, &reviews(), 30 * 24 * HOUR, now());
    assert_eq!(issued.not_after, ca.signing_not_after());
    assert!(issued.not_after < now() + time::Duration::days(3));
}

#[test]
fn cacerts_with_a_foreign_key_or_broken_chain_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_cacerts(dir.path(), time::Duration::days(365));
    // Chain without the root and without the signing cert is completed from root-cert.pem.
    std::fs::remove_file(dir.path().join("cert-chain.pem")).unwrap();
    let ca = CertificateAuthority::from_cacerts(dir.path(), TD).unwrap();
    assert_eq!(issue(&ca, &reviews(), HOUR, now()).chain_pem.len(), 3);

    // A root-cert.pem that did not sign the intermediate.
    let other = tempfile::tempdir().unwrap();
    write_cacerts(other.path(), time::Duration::days(365));
    std::fs::copy(
        other.path().join("root-cert.pem"),
        dir.path().join("root-cert.pem"),
    )
    .unwrap();
    let err = CertificateAuthority::from_cacerts(dir.path(), TD).unwrap_err();
    assert!(err.to_string().contains("does not chain"), "{err}");

    // A key that is not the intermediate's.
    write_cacerts(dir.path(), time::Duration::days(365));
    std::fs::copy(
        other.path().join("ca-key.pem"),
        dir.path().join("ca-key.pem"),
    )
    .unwrap();
    let err = CertificateAuthority::from_cacerts(dir.path(), TD).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn granted_labels_travel_in_the_certificate() {
    let (_d, ca) = new_ca();
    let labels = std::collections::BTreeMap::from([
        ("app".to_string(), "reviews".to_string()),
        ("version".to_string(), "v1".to_string()),
    ]);
    let issued = ca
        .sign_csr(
            &csr_for(reviews().as_str()),
            &reviews(),
            &labels,
            HOUR,
            now(),
        )
        .unwrap();
    let leaf = CertificateDer::from_pem_slice(issued.chain_pem[0].as_bytes()).unwrap();
    assert_eq!(crate::ca::binding::decode(&leaf), Some(labels));
    // The proxy's own SVID checks still accept it (the extension is not critical).
    ca.verify_client_chain(&[leaf], now())
        .expect("a valid SVID");
    let plain = issue(&ca, &reviews(), HOUR, now());
    let leaf = CertificateDer::from_pem_slice(plain.chain_pem[0].as_bytes()).unwrap();
    assert_eq!(
        crate::ca::binding::decode(&leaf),
        None,
        "nothing granted, nothing carried"
    );
}
