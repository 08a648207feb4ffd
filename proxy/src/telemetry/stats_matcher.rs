//! Which of Envoy's statistics a sidecar exports, as Istio's `proxyStatsMatcher` decides
//! (MeshConfig `defaultConfig.proxyStatsMatcher`, or a workload's own setting, which replaces
//! it as the `proxy.istio.io/config` annotation does).
//!
//! Istio keeps Envoy's statistics to a small default set and lets users add to it: a
//! statistic is exported when its Envoy name (dotted, e.g.
//! `cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_retry`) starts with
//! one of the inclusion prefixes, ends with one of the suffixes, or fully matches one of the
//! regular expressions, the defaults' or the user's. Istio's standard metrics (`istio_*`)
//! are not Envoy statistics and are always exported.

use regex::RegexSet;

/// Envoy name prefixes Istio always includes.
const DEFAULT_PREFIXES: [&str; 7] = [
    "reporter=",
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
    "wasm",
    "component",
];

/// Envoy name suffixes Istio always includes (the RBAC filter's decisions).
const DEFAULT_SUFFIXES: [&str; 4] = [
    "rbac.allowed",
    "rbac.denied",
    "shadow_allowed",
    "shadow_denied",
];

/// Why a matcher was refused.
#[derive(Debug, thiserror::Error)]
pub enum StatsMatcherError {
    /// An inclusion regexp does not compile.
    #[error("proxyStatsMatcher.inclusionRegexps: {0}")]
    Regex(#[from] regex::Error),
}

/// The inclusion lists of a `proxyStatsMatcher`, as users write them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsInclusions {
    /// `inclusionPrefixes`.
    pub prefixes: Vec<String>,
    /// `inclusionSuffixes`.
    pub suffixes: Vec<String>,
    /// `inclusionRegexps` (RE2 syntax, matched against the whole name).
    pub regexps: Vec<String>,
}

/// A compiled matcher: Istio's defaults plus the user's inclusions.
#[derive(Debug)]
pub struct StatsMatcher {
    prefixes: Vec<String>,
    suffixes: Vec<String>,
    regexps: RegexSet,
}

impl Default for StatsMatcher {
    fn default() -> Self {
        Self {
            prefixes: DEFAULT_PREFIXES.iter().map(|p| p.to_string()).collect(),
            suffixes: DEFAULT_SUFFIXES.iter().map(|s| s.to_string()).collect(),
            regexps: RegexSet::empty(),
        }
    }
}

/// An inclusion regexp as it is matched: against the whole name.
fn anchored(re: &str) -> String {
    format!("^(?:{re})$")
}

/// Checks one inclusion regexp (a config file names the one that does not compile).
pub fn check_regexp(re: &str) -> Result<(), regex::Error> {
    regex::Regex::new(&anchored(re)).map(|_| ())
}

impl StatsMatcher {
    /// Istio's defaults with `inclusions` added.
    pub fn new(inclusions: &StatsInclusions) -> Result<Self, StatsMatcherError> {
        let mut m = Self::default();
        m.prefixes.extend(inclusions.prefixes.iter().cloned());
        m.suffixes.extend(inclusions.suffixes.iter().cloned());
        m.regexps = RegexSet::new(inclusions.regexps.iter().map(|r| anchored(r)))?;
        Ok(m)
    }

    /// Whether the statistic named `name` (Envoy's dotted name) is exported.
    pub fn matches(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
            || self.regexps.is_match(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: &str =
        "cluster.outbound|9080||reviews.default.svc.cluster.local.upstream_rq_retry";
    const OPEN: &str =
        "cluster.outbound|9080||reviews.default.svc.cluster.local.circuit_breakers.default.rq_open";

    #[test]
    fn istios_defaults_leave_cluster_statistics_out_and_rbac_in() {
        let m = StatsMatcher::default();
        assert!(!m.matches(RETRY));
        assert!(m.matches("http.inbound_0.0.0.0_9080.rbac.allowed"));
        assert!(m.matches("cluster_manager.cds.update_success"));
    }

    #[test]
    fn inclusions_add_prefixes_suffixes_and_whole_name_regexps() {
        let by_suffix = StatsMatcher::new(&StatsInclusions {
            suffixes: vec!["upstream_rq_retry".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(by_suffix.matches(RETRY) && !by_suffix.matches(OPEN));
        let by_regex = StatsMatcher::new(&StatsInclusions {
            regexps: vec![".*circuit_breakers.*".into(), "upstream_rq".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(by_regex.matches(OPEN));
        assert!(!by_regex.matches(RETRY), "a regexp matches the whole name");
        let by_prefix = StatsMatcher::new(&StatsInclusions {
            prefixes: vec!["cluster.outbound".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(by_prefix.matches(RETRY) && by_prefix.matches(OPEN));
    }

    #[test]
    fn a_bad_regexp_is_refused() {
        let bad = StatsInclusions {
            regexps: vec!["(".into()],
            ..Default::default()
        };
        assert!(StatsMatcher::new(&bad).is_err());
    }
}
