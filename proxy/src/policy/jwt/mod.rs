//! RequestAuthentication: end-user JWTs verified by the destination sidecar, as Envoy's
//! `jwt_authn` filter does it under Istio (SEMANTICS 5).
//!
//! The control plane pushes every `jwtRules` entry that targets this workload with its JWK
//! set inline; [`JwtAuthn::compile`] parses the keys once per push. Per request: no token
//! at any configured location means the request goes on unauthenticated (an
//! AuthorizationPolicy with `requestPrincipals: ["*"]` is what requires one); a token that
//! is malformed, names an issuer no rule has, is expired (`exp`, with Envoy's 60 s clock
//! skew), not yet valid (`nbf`), for another audience, or not signed by a key of its
//! issuer's set is refused with 401 and Envoy's message. Checks run in Envoy's order:
//! format, issuer, time, audience, signature. A verified token becomes the
//! [`RequestAuth`] authorization reads (`requestPrincipals`, `request.auth.*`); the token
//! is removed unless `forwardOriginalToken`, and `outputPayloadToHeader` /
//! `outputClaimToHeaders` are set (and stripped from requests that carry no verified
//! token, so a caller cannot forge them). A workload without rules skips all of this.

mod keys;
#[cfg(test)]
mod tests;
pub mod token;

use crate::telemetry::prom::Counter;
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use meshlite_xds_proto::v1;
use serde_json::{Map, Value};
use std::sync::Arc;

use super::authz::RequestAuth;
pub use keys::{KeySet, KeySetError};
use token::Location;

/// Envoy jwt_authn's default `clock_skew_seconds`, applied to `exp` and `nbf`.
pub const CLOCK_SKEW_SECS: u64 = 60;

/// Claims always split on spaces for `request.auth.claims` (Istio adds the rule's
/// `spaceDelimitedClaims`).
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// base64url, with or without padding (Envoy accepts both).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a presented token was refused; the text is Envoy's (jwt_verify_lib's status
/// strings), sent as the 401 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url sections.
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    /// The header is not base64url.
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBase64,
    /// The header is not a JSON object.
    #[error("Jwt header is an invalid JSON")]
    HeaderJson,
    /// No `alg`, or not a string.
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderAlg,
    /// An `alg` this proxy does not verify (`none` among them).
    #[error("Jwt header [alg] is not supported")]
    AlgNotImplemented,
    /// The payload is not base64url.
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBase64,
    /// The payload is not a JSON object.
    #[error("Jwt payload is an invalid JSON")]
    PayloadJson,
    /// `iss` is not a string.
    #[error("Jwt payload [iss] field is not a string")]
    IssNotString,
    /// `sub` is not a string.
    #[error("Jwt payload [sub] field is not a string")]
    SubNotString,
    /// `aud` is neither a string nor a list of strings.
    #[error("Jwt payload [aud] field is not a string or string list")]
    AudNotString,
    /// `exp` is not a number of seconds.
    #[error("Jwt payload [exp] field is not an integer")]
    ExpNotInteger,
    /// `nbf` is not a number of seconds.
    #[error("Jwt payload [nbf] field is not an integer")]
    NbfNotInteger,
    /// The signature is not base64url.
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBase64,
    /// No rule of this workload has the token's issuer (or reads it where it was found).
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `exp` (plus the clock skew) is in the past.
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` (minus the clock skew) is in the future.
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// The rule lists audiences and `aud` names none of them.
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    /// No key of the issuer's set has the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey,
    /// No matching key verifies the signature.
    #[error("Jwt verification fails")]
    VerificationFails,
}

impl JwtError {
    /// Envoy's `response_code_details`: `jwt_authn_access_denied{<message with underscores>}`.
    pub fn details(&self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.to_string().replace(' ', "_")
        )
    }
}

/// Why a pushed rule could not be compiled (the push is refused, naming the rule).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The key set does not parse.
    #[error("RequestAuthentication {origin} jwtRules[{index}]: {source}")]
    Jwks {
        /// `namespace/name`.
        origin: String,
        /// Index of the rule.
        index: u32,
        /// Why.
        source: KeySetError,
    },
    /// A header name (`fromHeaders`, `outputPayloadToHeader`, `outputClaimToHeaders`) is
    /// not a valid header name.
    #[error("RequestAuthentication {origin} jwtRules[{index}]: `{header}` is not a header name")]
    Header {
        /// `namespace/name`.
        origin: String,
        /// Index of the rule.
        index: u32,
        /// The name.
        header: String,
    },
    /// No issuer.
    #[error("RequestAuthentication {origin} jwtRules[{index}]: issuer is required")]
    NoIssuer {
        /// `namespace/name`.
        origin: String,
        /// Index of the rule.
        index: u32,
    },
}

/// Envoy's jwt_authn statistics (`envoy_http_jwt_authn_allowed_total`, `..._denied_total`).
#[derive(Debug, Clone, Default)]
pub struct JwtStats {
    /// Requests that passed: a verified token, or none at all.
    pub allowed: Counter,
    /// Requests refused with 401.
    pub denied: Counter,
}

/// One compiled `jwtRules` entry.
#[derive(Debug)]
struct Rule {
    issuer: Box<str>,
    /// Normalised as Envoy compares them (no scheme, no trailing `/`).
    audiences: Box<[Box<str>]>,
    keys: KeySet,
    locations: Box<[Location]>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Box<[(HeaderName, Box<str>)]>,
    space_delimited: Arc<[String]>,
}

/// Every RequestAuthentication rule of this workload, compiled.
#[derive(Debug, Default)]
pub struct JwtAuthn {
    rules: Box<[Rule]>,
    /// Every output header of every rule: removed when no verified token sets them.
    outputs: Box<[HeaderName]>,
    stats: JwtStats,
}

/// A token split into its sections, with its parsed header and payload.
struct Parsed<'t> {
    /// `header.payload`, what the signature covers.
    signed: &'t str,
    /// The payload section as sent (`outputPayloadToHeader`).
    payload_b64: &'t str,
    signature: &'t str,
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
}

/// The JOSE header fields read.
#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: Option<Value>,
    kid: Option<Value>,
}

fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    let mut sections = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (
        sections.next(),
        sections.next(),
        sections.next(),
        sections.next(),
    ) else {
        return Err(JwtError::BadFormat);
    };
    let header = BASE64URL.decode(h).map_err(|_| JwtError::HeaderBase64)?;
    let header: JoseHeader = serde_json::from_slice(&header).map_err(|_| JwtError::HeaderJson)?;
    let alg = match header.alg {
        Some(Value::String(a)) => a
            .parse::<Algorithm>()
            .map_err(|_| JwtError::AlgNotImplemented)?,
        _ => return Err(JwtError::HeaderAlg),
    };
    let kid = match header.kid {
        Some(Value::String(k)) => Some(k),
        _ => None,
    };
    let payload = BASE64URL.decode(p).map_err(|_| JwtError::PayloadBase64)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadJson)?;
    Ok(Parsed {
        signed: &token[..h.len() + 1 + p.len()],
        payload_b64: p,
        signature: s,
        alg,
        kid,
        claims,
    })
}

/// A time claim in seconds; absent (or 0) means unconstrained, as in Envoy.
fn seconds(claims: &Map<String, Value>, name: &str, bad: JwtError) -> Result<u64, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or(bad),
        Some(_) => Err(bad),
    }
}

/// `aud` as a list.
fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(a)) => Ok(vec![a.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or(JwtError::AudNotString))
            .collect(),
        Some(_) => Err(JwtError::AudNotString),
    }
}

/// Envoy compares audiences without `http://`/`https://` and without a trailing `/`.
fn normalise_audience(a: &str) -> &str {
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    a.strip_suffix('/').unwrap_or(a)
}

/// A claim as a header value: strings, numbers and booleans only; `a.b` reaches into
/// objects when there is no top-level claim of that name.
fn claim_value(claims: &Map<String, Value>, name: &str) -> Option<HeaderValue> {
    let value = claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, k| v.get(k))
    })?;
    match value {
        Value::String(s) => HeaderValue::from_str(s).ok(),
        Value::Number(n) => HeaderValue::from_str(&n.to_string()).ok(),
        Value::Bool(b) => Some(HeaderValue::from_static(if *b { "true" } else { "false" })),
        _ => None,
    }
}

fn header_name(origin: &str, index: u32, name: &str) -> Result<HeaderName, RuleError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| RuleError::Header {
        origin: origin.to_string(),
        index,
        header: name.to_string(),
    })
}

impl Rule {
    fn compile(r: &v1::JwtRule) -> Result<Self, RuleError> {
        let (origin, index) = (r.origin.as_str(), r.index);
        if r.issuer.is_empty() {
            return Err(RuleError::NoIssuer {
                origin: origin.to_string(),
                index,
            });
        }
        let keys = KeySet::parse(&r.jwks).map_err(|source| RuleError::Jwks {
            origin: origin.to_string(),
            index,
            source,
        })?;
        if keys.is_empty() {
            tracing::warn!(
                rule = %format_args!("{origin} jwtRules[{index}]"),
                issuer = %r.issuer,
                "JWK set has no usable key: every token of this issuer is rejected"
            );
        }
        let mut locations = Vec::new();
        for h in &r.from_headers {
            locations.push(Location::Header {
                name: header_name(origin, index, &h.name)?,
                prefix: h.prefix.as_str().into(),
            });
        }
        locations.extend(
            r.from_params
                .iter()
                .map(|p| Location::Param(p.as_str().into())),
        );
        locations.extend(
            r.from_cookies
                .iter()
                .map(|c| Location::Cookie(c.as_str().into())),
        );
        if locations.is_empty() {
            locations = Location::defaults();
        }
        let payload_header = match r.output_payload_to_header.as_str() {
            "" => None,
            h => Some(header_name(origin, index, h)?),
        };
        let claim_headers = r
            .output_claim_to_headers
            .iter()
            .map(|c| {
                Ok((
                    header_name(origin, index, &c.header)?,
                    c.claim.as_str().into(),
                ))
            })
            .collect::<Result<Vec<_>, RuleError>>()?;
        let mut space_delimited: Vec<String> =
            SPACE_DELIMITED.iter().map(|s| s.to_string()).collect();
        for c in &r.space_delimited_claims {
            if !space_delimited.contains(c) {
                space_delimited.push(c.clone());
            }
        }
        Ok(Self {
            issuer: r.issuer.as_str().into(),
            audiences: r
                .audiences
                .iter()
                .map(|a| normalise_audience(a).into())
                .collect(),
            keys,
            locations: locations.into_boxed_slice(),
            forward: r.forward_original_token,
            payload_header,
            claim_headers: claim_headers.into_boxed_slice(),
            space_delimited: space_delimited.into(),
        })
    }

    /// Time, audience and signature checks of a token whose issuer is this rule's.
    fn check(&self, t: &Parsed<'_>, now: u64) -> Result<Vec<String>, JwtError> {
        let exp = seconds(&t.claims, "exp", JwtError::ExpNotInteger)?;
        let nbf = seconds(&t.claims, "nbf", JwtError::NbfNotInteger)?;
        if exp != 0 && now > exp.saturating_add(CLOCK_SKEW_SECS) {
            return Err(JwtError::Expired);
        }
        if nbf != 0 && now.saturating_add(CLOCK_SKEW_SECS) < nbf {
            return Err(JwtError::NotYetValid);
        }
        let aud = audiences(&t.claims)?;
        if !self.audiences.is_empty()
            && !aud
                .iter()
                .any(|a| self.audiences.iter().any(|w| **w == *normalise_audience(a)))
        {
            return Err(JwtError::AudienceNotAllowed);
        }
        let signature = BASE64URL
            .decode(t.signature)
            .map_err(|_| JwtError::SignatureBase64)?;
        self.keys
            .verify(t.alg, t.kid.as_deref(), t.signed.as_bytes(), &signature)?;
        Ok(aud)
    }
}

impl JwtAuthn {
    /// Compiles the pushed rules; any bad rule fails the whole push.
    pub fn compile(rules: &[v1::JwtRule], stats: JwtStats) -> Result<Self, RuleError> {
        let rules = rules
            .iter()
            .map(Rule::compile)
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs: Vec<HeaderName> = Vec::new();
        for r in &rules {
            let names = r
                .payload_header
                .iter()
                .chain(r.claim_headers.iter().map(|(h, _)| h));
            for h in names {
                if !outputs.contains(h) {
                    outputs.push(h.clone());
                }
            }
        }
        Ok(Self {
            rules: rules.into_boxed_slice(),
            outputs: outputs.into_boxed_slice(),
            stats,
        })
    }

    /// No RequestAuthentication applies: requests skip authentication entirely.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules are in force.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Authenticates `req` at `now` (seconds since the epoch): `Ok(None)` when it carries
    /// no token, `Ok(Some(..))` for a verified one (the request is then rewritten as the
    /// rule says), `Err` for a token that must be refused with 401. Counted.
    pub fn authenticate<B>(
        &self,
        req: &mut http::Request<B>,
        now: u64,
    ) -> Result<Option<RequestAuth>, JwtError> {
        let result = self.verify(req, now);
        match &result {
            Ok(_) => self.stats.allowed.inc(),
            Err(_) => self.stats.denied.inc(),
        };
        result
    }

    fn verify<B>(
        &self,
        req: &mut http::Request<B>,
        now: u64,
    ) -> Result<Option<RequestAuth>, JwtError> {
        let found = self
            .rules
            .iter()
            .find_map(|r| r.locations.iter().find_map(|l| l.find(req).map(|t| (l, t))));
        let Some((location, token)) = found else {
            // Nobody may claim what only a verified token sets.
            for h in self.outputs.iter() {
                req.headers_mut().remove(h);
            }
            return Ok(None);
        };
        let parsed = parse(token)?;
        let iss = match parsed.claims.get("iss") {
            Some(Value::String(i)) => i.clone(),
            None => return Err(JwtError::UnknownIssuer),
            Some(_) => return Err(JwtError::IssNotString),
        };
        let sub = match parsed.claims.get("sub") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(JwtError::SubNotString),
        };
        let rule = self
            .rules
            .iter()
            .find(|r| *r.issuer == *iss && r.locations.contains(location))
            .ok_or(JwtError::UnknownIssuer)?;
        let aud = rule.check(&parsed, now)?;
        let payload_header = rule
            .payload_header
            .as_ref()
            .and_then(|h| Some((h.clone(), HeaderValue::from_str(parsed.payload_b64).ok()?)));
        let claim_headers: Vec<(HeaderName, Option<HeaderValue>)> = rule
            .claim_headers
            .iter()
            .map(|(h, c)| (h.clone(), claim_value(&parsed.claims, c)))
            .collect();
        let presenter = parsed
            .claims
            .get("azp")
            .and_then(Value::as_str)
            .map(str::to_string);
        let auth = RequestAuth {
            principal: format!("{iss}/{sub}"),
            audiences: aud,
            presenter,
            claims: parsed.claims,
            space_delimited: rule.space_delimited.clone(),
        };
        if !rule.forward {
            location.remove(req);
        }
        let h = req.headers_mut();
        for name in self.outputs.iter() {
            h.remove(name);
        }
        if let Some((name, value)) = payload_header {
            h.insert(name, value);
        }
        for (name, value) in claim_headers {
            if let Some(v) = value {
                h.insert(name, v);
            }
        }
        Ok(Some(auth))
    }
}
