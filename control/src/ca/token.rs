//! Bootstrap tokens: how a workload proves its identity the first time it asks for a certificate.
//!
//! In Istio that proof is a Kubernetes service-account token; outside Kubernetes meshlite's
//! control plane mints its own: `mlt1.<payload>.<mac>`, where the payload is base64url (no
//! padding) JSON `{sub, iat, exp, jti}` and the MAC is HMAC-SHA256 under a 32-byte key kept in
//! the CA state directory (`token-key`, 0600), over `"mlt1." + payload`. A token is bound to one
//! SPIFFE ID and expires; once the workload holds an SVID it renews with that instead. It may
//! also grant labels (`labels`, e.g. `app: reviews`): the only labels, and so the only
//! services, the workload may claim ([`super::binding`]).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use meshlite_xds_proto::spiffe::{SpiffeId, SpiffeIdError};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

use super::files::{StateFileError, ensure_private_dir, read_private, write_atomic};

/// Name of the token signing key inside the state directory.
pub const TOKEN_KEY_FILE: &str = "token-key";

/// Longest token lifetime accepted by [`TokenSigner::create`] (one year).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far in the future `iat` may be before a token is refused (clock skew between hosts).
pub const TOKEN_CLOCK_SKEW: Duration = Duration::from_secs(60);

const PREFIX: &str = "mlt1";
const KEY_LEN: usize = 32;
/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why a token could not be created or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The key file could not be read or written, or has loose permissions.
    #[error(transparent)]
    File(#[from] StateFileError),
    /// The key file exists but does not hold a 32-byte base64 key.
    #[error("{path}: not a meshlite token key (32 bytes, base64)")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
    },
    /// The system random generator failed.
    #[error("system random number generator failed")]
    Random,
    /// Namespace or service account do not form a valid Istio workload ID.
    #[error(
        "cannot make a token for namespace `{namespace}`, service account `{service_account}`: {source}"
    )]
    BadIdentity {
        /// The namespace given.
        namespace: String,
        /// The service account given.
        service_account: String,
        /// Why the composed ID is invalid.
        source: SpiffeIdError,
    },
    /// The requested lifetime is zero or longer than [`MAX_TOKEN_TTL`].
    #[error("token lifetime must be between 1 second and 1 year")]
    BadTtl,
    /// The token is not of the form `mlt1.<payload>.<signature>` or its payload is not valid.
    #[error("malformed bootstrap token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify: forged, altered, or made by another control plane.
    #[error("bootstrap token signature is invalid (altered, or issued by another control plane)")]
    BadSignature,
    /// The token has expired.
    #[error("bootstrap token expired at {0}")]
    Expired(OffsetDateTime),
    /// A label to grant is malformed.
    #[error(transparent)]
    BadLabel(#[from] super::binding::LabelError),
    /// The token's issue time is in the future beyond the allowed clock skew.
    #[error("bootstrap token is not valid yet (issued at {0}); check the clocks")]
    NotYetValid(OffsetDateTime),
}

/// The claims of a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// The identity the bearer may request a certificate for.
    pub identity: SpiffeId,
    /// When the token stops being accepted.
    pub expires: OffsetDateTime,
    /// The labels the workload may claim.
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireClaims {
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    labels: std::collections::BTreeMap<String, String>,
}

/// Creates and verifies bootstrap tokens with the control plane's HMAC key.
pub struct TokenSigner {
    key: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// Loads `<state_dir>/token-key`, creating the directory (0700) and a fresh random key
    /// (0600) on first start. A key file readable by group or others is refused.
    pub fn load_or_create(state_dir: &Path) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        ensure_private_dir(state_dir)?;
        let path = state_dir.join(TOKEN_KEY_FILE);
        let raw = match read_private(&path)? {
            Some(text) => {
                let text = std::str::from_utf8(&text).unwrap_or_default().trim();
                let raw = STANDARD
                    .decode(text)
                    .map_err(|_| TokenError::BadKeyFile { path: path.clone() })?;
                if raw.len() != KEY_LEN {
                    return Err(TokenError::BadKeyFile { path });
                }
                raw
            }
            None => {
                let mut raw = vec![0u8; KEY_LEN];
                rng.fill(&mut raw).map_err(|_| TokenError::Random)?;
                let text = format!("{}\n", STANDARD.encode(&raw));
                write_atomic(&path, text.as_bytes(), 0o600)?;
                tracing::info!(path = %path.display(), "created bootstrap token key");
                raw
            }
        };
        Ok(Self::from_key(&raw, rng))
    }

    fn from_key(raw: &[u8], rng: SystemRandom) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, raw),
            rng,
        }
    }

    /// Mints a token for `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`, valid
    /// from `now` for `ttl` (1 s to 1 year).
    pub fn create(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<String, TokenError> {
        let none = std::collections::BTreeMap::new();
        self.create_granting(trust_domain, namespace, service_account, &none, ttl, now)
    }

    /// Like [`TokenSigner::create`], granting `labels`.
    pub fn create_granting(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        labels: &std::collections::BTreeMap<String, String>,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<String, TokenError> {
        for (k, v) in labels {
            super::binding::check_label(k, v)?;
        }
        let bad_identity = |source| TokenError::BadIdentity {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            source,
        };
        let composed = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        let id = SpiffeId::parse(&composed).map_err(bad_identity)?;
        // A `/` inside the namespace or account would parse as extra path segments.
        if id.namespace_and_account() != Some((namespace, service_account)) {
            return Err(bad_identity(SpiffeIdError::Path(composed)));
        }
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(TokenError::BadTtl);
        }
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| TokenError::Random)?;
        let claims = WireClaims {
            sub: id.as_str().to_string(),
            iat: now.unix_timestamp(),
            exp: now.unix_timestamp().saturating_add(ttl.as_secs() as i64),
            jti: URL_SAFE_NO_PAD.encode(jti),
            labels: labels.clone(),
        };
        let json = serde_json::to_vec(&claims).map_err(|_| TokenError::Malformed("claims"))?;
        let payload = URL_SAFE_NO_PAD.encode(json);
        let signed = format!("{PREFIX}.{payload}");
        let tag = hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    /// Verifies a token's signature (constant time) and validity at `now`; returns its claims.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let (signed, sig_b64) = token
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("expected mlt1.<payload>.<signature>"))?;
        let (prefix, payload) = signed
            .split_once('.')
            .ok_or(TokenError::Malformed("expected mlt1.<payload>.<signature>"))?;
        if prefix != PREFIX {
            return Err(TokenError::Malformed("not a meshlite token (mlt1 prefix)"));
        }
        let sig = URL_SAFE_NO_PAD
            .decode(sig_b64)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        hmac::verify(&self.key, signed.as_bytes(), &sig).map_err(|_| TokenError::BadSignature)?;

        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        let claims: WireClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("payload claims"))?;
        let identity = SpiffeId::parse(&claims.sub)
            .map_err(|_| TokenError::Malformed("sub is not a SPIFFE ID"))?;
        let expires = OffsetDateTime::from_unix_timestamp(claims.exp)
            .map_err(|_| TokenError::Malformed("exp out of range"))?;
        let issued = OffsetDateTime::from_unix_timestamp(claims.iat)
            .map_err(|_| TokenError::Malformed("iat out of range"))?;
        if expires <= now {
            return Err(TokenError::Expired(expires));
        }
        if issued > now + TOKEN_CLOCK_SKEW {
            return Err(TokenError::NotYetValid(issued));
        }
        for (k, v) in &claims.labels {
            super::binding::check_label(k, v)
                .map_err(|_| TokenError::Malformed("labels are not valid label syntax"))?;
        }
        Ok(TokenClaims {
            identity,
            expires,
            labels: claims.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HOUR: Duration = Duration::from_secs(3600);

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn signer() -> (tempfile::TempDir, TokenSigner) {
        let dir = tempfile::tempdir().unwrap();
        let s = TokenSigner::load_or_create(&dir.path().join("state")).unwrap();
        (dir, s)
    }

    #[test]
    fn roundtrip_binds_the_identity() {
        let (_d, s) = signer();
        let t = s
            .create("cluster.local", "default", "reviews", HOUR, now())
            .unwrap();
        assert!(t.starts_with("mlt1."));
        let c = s.verify(&t, now() + Duration::from_secs(10)).unwrap();
        assert_eq!(
            c.identity.as_str(),
            "spiffe://cluster.local/ns/default/sa/reviews"
        );
        assert_eq!(c.expires, now() + HOUR);
    }

    #[test]
    fn granted_labels_are_signed_with_the_identity() {
        let (_d, s) = signer();
        let labels = std::collections::BTreeMap::from([("app".to_string(), "ratings".to_string())]);
        let t = s
            .create_granting("cluster.local", "default", "ratings", &labels, HOUR, now())
            .unwrap();
        assert_eq!(s.verify(&t, now()).unwrap().labels, labels);
        // Editing the granted labels breaks the signature.
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let (_, payload) = signed.split_once('.').unwrap();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json.replace("ratings\"}", "reviews\"}"));
        let forged = format!("mlt1.{forged}.{sig}");
        assert!(matches!(
            s.verify(&forged, now()),
            Err(TokenError::BadSignature)
        ));
        let bad = std::collections::BTreeMap::from([("app".to_string(), "a b".to_string())]);
        assert!(matches!(
            s.create_granting("cluster.local", "default", "x", &bad, HOUR, now()),
            Err(TokenError::BadLabel(_))
        ));
    }

    #[test]
    fn key_persists_and_loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = TokenSigner::load_or_create(dir.path()).unwrap();
        let t = a.create("td", "ns1", "sa1", HOUR, now()).unwrap();
        let key = dir.path().join(TOKEN_KEY_FILE);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = TokenSigner::load_or_create(dir.path()).unwrap();
        assert!(b.verify(&t, now()).is_ok());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TokenSigner::load_or_create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("too open"), "{err}");
    }

    #[test]
    fn tampered_payload_is_refused() {
        let (_d, s) = signer();
        let t = s.create("td", "default", "reviews", HOUR, now()).unwrap();
        let other = s.create("td", "default", "admin", HOUR, now()).unwrap();
        // Graft the admin payload onto the reviews signature.
        let parts: Vec<&str> = t.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        let forged = format!("mlt1.{}.{}", other_parts[1], parts[2]);
        assert!(matches!(
            s.verify(&forged, now()),
            Err(TokenError::BadSignature)
        ));
        let mut flipped = t.clone().into_bytes();
        flipped[7] = if flipped[7] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(s.verify(&flipped, now()).is_err());
    }

    #[test]
    fn tampered_signature_is_refused() {
        let (_d, s) = signer();
        let t = s.create("td", "default", "reviews", HOUR, now()).unwrap();
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        sig[0] ^= 1;
        let bad = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert!(matches!(
            s.verify(&bad, now()),
            Err(TokenError::BadSignature)
        ));
    }

    #[test]
    fn expired_and_future_tokens_are_refused() {
        let (_d, s) = signer();
        let t = s.create("td", "default", "reviews", HOUR, now()).unwrap();
        assert!(matches!(
            s.verify(&t, now() + HOUR),
            Err(TokenError::Expired(_))
        ));
        let future = s
            .create(
                "td",
                "default",
                "reviews",
                HOUR,
                now() + Duration::from_secs(300),
            )
            .unwrap();
        assert!(matches!(
            s.verify(&future, now()),
            Err(TokenError::NotYetValid(_))
        ));
        let slightly = s
            .create(
                "td",
                "default",
                "reviews",
                HOUR,
                now() + Duration::from_secs(30),
            )
            .unwrap();
        assert!(s.verify(&slightly, now()).is_ok());
    }

    #[test]
    fn token_from_another_control_plane_is_refused() {
        let (_d1, a) = signer();
        let (_d2, b) = signer();
        let t = a.create("td", "default", "reviews", HOUR, now()).unwrap();
        assert!(matches!(b.verify(&t, now()), Err(TokenError::BadSignature)));
    }

    #[test]
    fn malformed_tokens_and_bad_names_are_refused() {
        let (_d, s) = signer();
        for bad in [
            "",
            "mlt1",
            "mlt1..",
            "mlt2.e30.AAAA",
            "a.b.c.d",
            "mlt1.!!.??",
        ] {
            assert!(s.verify(bad, now()).is_err(), "accepted {bad:?}");
        }
        assert!(matches!(
            s.create("td", "a/b", "c", HOUR, now()),
            Err(TokenError::BadIdentity { .. })
        ));
        assert!(s.create("td", "", "c", HOUR, now()).is_err());
        assert!(s.create("TD With Space", "a", "c", HOUR, now()).is_err());
        assert!(matches!(
            s.create("td", "a", "c", Duration::ZERO, now()),
            Err(TokenError::BadTtl)
        ));
        assert!(matches!(
            s.create("td", "a", "c", MAX_TOKEN_TTL + HOUR, now()),
            Err(TokenError::BadTtl)
        ));
    }
}
