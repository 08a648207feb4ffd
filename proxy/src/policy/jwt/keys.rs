//! A rule's JWK set, decoded into public keys once per push (JSON, base64 and the choice of
//! algorithms done then), so a request costs its signature check and no key parsing.
//!
//! Key selection follows Envoy's jwt_verify_lib: a token naming a `kid` is checked against
//! the keys with that `kid` and the keys without one; a key stating its `alg` only verifies
//! that algorithm; otherwise every algorithm of the key's family is tried (RSA: RS256-512
//! and PS256-512; EC: ES256 on P-256, ES384 on P-384; OKP: EdDSA; oct: HS256-512). Keys
//! this proxy cannot use (an unknown `kty`, `use: enc`, a broken modulus) are skipped, as
//! Envoy skips them; a set that is not a JWK set at all fails the push.

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::JwtError;

/// Why a JWK set could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    /// The text is not a JWK set (`{"keys": [...]}`).
    #[error("jwks is not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
    /// The build has no JWT crypto backend (a packaging mistake, reported rather than
    /// panicking on the first request).
    #[error("no JWT crypto provider is available in this build")]
    NoProvider,
}

/// One usable key: its identifier, the decoded key, and the algorithms it may verify.
struct Key {
    kid: Option<Box<str>>,
    key: DecodingKey,
    algorithms: Box<[Algorithm]>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The compiled keys of one rule.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Box<[Key]>,
    /// The crypto backend (set whenever `keys` is not empty).
    provider: Option<&'static CryptoProvider>,
}

/// The algorithms a key of this shape may verify when it does not name one.
fn family_algorithms(params: &AlgorithmParameters) -> &'static [Algorithm] {
    match params {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        _ => &[],
    }
}

impl KeySet {
    /// Parses and compiles a JWK set (JSON). An empty `keys` list is valid and verifies
    /// nothing: that is what the control plane sends when it could not fetch `jwksUri`.
    pub fn parse(json: &str) -> Result<Self, KeySetError> {
        let set: JwkSet = serde_json::from_str(json)?;
        let provider = CryptoProvider::try_get_default().ok_or(KeySetError::NoProvider)?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                tracing::debug!(key = i, "JWK skipped: not a signature key");
                continue;
            }
            let decoding = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!(key = i, "JWK skipped: {e}");
                    continue;
                }
            };
            let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
                None => family_algorithms(&jwk.algorithm).to_vec(),
                Some(named) => match Algorithm::try_from(named) {
                    Ok(a) => vec![a],
                    Err(_) => {
                        tracing::debug!(key = i, "JWK skipped: not a signature algorithm");
                        continue;
                    }
                },
            };
            // Only algorithms the backend accepts this key for.
            let algorithms: Vec<Algorithm> = algorithms
                .into_iter()
                .filter(|alg| (provider.verifier_factory)(alg, &decoding).is_ok())
                .collect();
            if algorithms.is_empty() {
                tracing::debug!(key = i, "JWK skipped: no supported algorithm");
                continue;
            }
            keys.push(Key {
                kid: jwk.common.key_id.as_deref().map(Box::from),
                key: decoding,
                algorithms: algorithms.into_boxed_slice(),
            });
        }
        Ok(Self {
            keys: keys.into_boxed_slice(),
            provider: Some(provider),
        })
    }

    /// How many keys can verify something.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key can verify anything (every token of the rule is then rejected).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `signature` over `message` (`header.payload` as sent) with the keys that
    /// match the token's `alg` and `kid`.
    pub fn verify(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), JwtError> {
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| match (kid, k.kid.as_deref()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .filter(|k| k.algorithms.contains(&alg))
            .peekable();
        let Some(provider) = self.provider.filter(|_| candidates.peek().is_some()) else {
            return Err(JwtError::NoMatchingKey);
        };
        let verified = candidates.any(|k| {
            (provider.verifier_factory)(&alg, &k.key)
                .is_ok_and(|v: Box<dyn JwtVerifier>| v.verify(message, signature).is_ok())
        });
        if verified {
            Ok(())
        } else {
            Err(JwtError::VerificationFails)
        }
    }
}
