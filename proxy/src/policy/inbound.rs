//! What this workload's inbound side enforces, resolved once per push: the mutual TLS mode
//! of each port (PeerAuthentication, already composed mesh -> namespace -> workload by the
//! control plane, `portLevelMtls` keyed by the workload port), the compiled
//! RequestAuthentication rules and the compiled authorization policies.

use meshlite_xds_proto::v1;
use std::collections::HashMap;

use super::authz::{Authorizer, CompileError, StatsSource, TrustDomains};
use super::ext_authz::{ProviderError, Providers};
use super::jwt::{JwtAuthn, RuleError};

/// Why a pushed inbound policy could not be compiled (the push is refused).
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// An AuthorizationPolicy did not compile.
    #[error(transparent)]
    Authorization(#[from] CompileError),
    /// A RequestAuthentication rule did not compile.
    #[error(transparent)]
    Jwt(#[from] RuleError),
    /// An external authorizer of the MeshConfig did not compile.
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// How a port accepts callers (SEMANTICS 3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Mutual TLS only: a plaintext connection is closed with no answer.
    #[default]
    Strict,
    /// Mutual TLS and plaintext on the same port.
    Permissive,
    /// Plaintext only: no TLS termination.
    Disable,
}

impl MtlsMode {
    fn from_wire(m: i32) -> Option<Self> {
        match v1::MtlsMode::try_from(m).ok()? {
            v1::MtlsMode::Strict => Some(MtlsMode::Strict),
            v1::MtlsMode::Permissive => Some(MtlsMode::Permissive),
            v1::MtlsMode::Disable => Some(MtlsMode::Disable),
            v1::MtlsMode::MtlsUnset => None,
        }
    }

    /// Whether a caller over mutual TLS is served.
    pub fn accepts_mtls(self) -> bool {
        self != MtlsMode::Disable
    }

    /// Whether a plaintext caller is served.
    pub fn accepts_plaintext(self) -> bool {
        self != MtlsMode::Strict
    }

    /// Istio's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Disable => "DISABLE",
        }
    }
}

/// The inbound policy of a snapshot.
#[derive(Debug, Default)]
pub struct InboundSecurity {
    default: MtlsMode,
    ports: HashMap<u16, MtlsMode>,
    /// AuthorizationPolicies targeting this workload.
    pub authz: Authorizer,
    /// RequestAuthentication rules targeting this workload (empty: no JWT is looked at).
    pub jwt: JwtAuthn,
    /// `numTrustedProxies`: which `x-forwarded-for` entry is `remote.ip`.
    pub num_trusted_proxies: u32,
    /// The external authorizers CUSTOM policies name (MeshConfig `extensionProviders`).
    pub ext_authz: Providers,
}

impl InboundSecurity {
    /// Resolves the pushed policy; without one (a static config, or before the first push),
    /// every port takes `fallback` and no authorization policy applies.
    pub fn new(
        policy: Option<&v1::InboundPolicy>,
        mesh: Option<&v1::MeshConfig>,
        fallback: MtlsMode,
        trust_domain: &str,
        stats: &dyn StatsSource,
    ) -> Result<Self, InboundError> {
        let tds = TrustDomains {
            local: trust_domain.to_string(),
            aliases: mesh
                .map(|m| m.trust_domain_aliases.clone())
                .unwrap_or_default(),
        };
        let ext_authz = Providers::compile(mesh, stats)?;
        let Some(p) = policy else {
            return Ok(Self {
                default: fallback,
                num_trusted_proxies: mesh.map_or(0, |m| m.num_trusted_proxies),
                ext_authz,
                ..Default::default()
            });
        };
        // The control plane resolves UNSET to PERMISSIVE; a bare UNSET means the same.
        let default = MtlsMode::from_wire(p.mtls_mode).unwrap_or(MtlsMode::Permissive);
        let ports = p
            .port_mtls
            .iter()
            .filter_map(|(port, m)| {
                let port = u16::try_from(*port).ok()?;
                // UNSET per port inherits the workload's mode.
                Some((port, MtlsMode::from_wire(*m)?))
            })
            .collect();
        let authz = Authorizer::compile(&p.authorization, &tds, stats)?;
        // Said once per push, not per request: such a policy denies what it matches.
        for (policy, provider) in authz.custom_providers() {
            match provider {
                Some(name) if ext_authz.get(name).is_some() => {}
                _ => tracing::warn!(
                    %policy,
                    provider = provider.map_or("", |p| &**p),
                    "CUSTOM policy names no extension provider of the MeshConfig: the requests it matches are denied"
                ),
            }
        }
        Ok(Self {
            default,
            ports,
            authz,
            jwt: JwtAuthn::compile(&p.jwt_rules, stats.jwt_authn())?,
            num_trusted_proxies: mesh.map_or(0, |m| m.num_trusted_proxies),
            ext_authz,
        })
    }

    /// The mode of workload port `port` (where the app listens).
    pub fn mode(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.default)
    }

    /// The workload-wide mode (ports without a port-level setting).
    pub fn default_mode(&self) -> MtlsMode {
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoStats;
    impl StatsSource for NoStats {
        fn stats(&self, _: &str) -> super::super::authz::PolicyStats {
            Default::default()
        }
    }

    #[test]
    fn port_level_modes_override_and_unset_inherits() {
        let p = v1::InboundPolicy {
            mtls_mode: v1::MtlsMode::Strict as i32,
            port_mtls: [
                (8080, v1::MtlsMode::Disable as i32),
                (9090, v1::MtlsMode::MtlsUnset as i32),
            ]
            .into(),
            authorization: vec![],
            jwt_rules: vec![],
            telemetry: None,
        };
        let s = InboundSecurity::new(Some(&p), None, MtlsMode::Strict, "cluster.local", &NoStats)
            .unwrap();
        assert_eq!(s.mode(8080), MtlsMode::Disable, "SEMANTICS B.6");
        assert_eq!(s.mode(9090), MtlsMode::Strict);
        assert_eq!(s.mode(7070), MtlsMode::Strict);
    }

    #[test]
    fn no_push_means_the_fallback_and_no_policy() {
        let s =
            InboundSecurity::new(None, None, MtlsMode::Strict, "cluster.local", &NoStats).unwrap();
        assert_eq!(s.mode(1), MtlsMode::Strict);
        assert!(s.authz.is_empty());
        let unset = v1::InboundPolicy::default();
        let s = InboundSecurity::new(
            Some(&unset),
            None,
            MtlsMode::Strict,
            "cluster.local",
            &NoStats,
        )
        .unwrap();
        assert_eq!(
            s.mode(1),
            MtlsMode::Permissive,
            "UNSET everywhere is PERMISSIVE"
        );
    }
}
