//! What a reload of the config directory admits, counted as istiod's validating webhook
//! counts (`galley_validation_passed` / `galley_validation_failed`).
//!
//! The webhook sees each resource once per write, so its counters move with edits, not with
//! the size of the configuration. A directory is re-read whole on every edit, so a reload
//! counts only what the edit brought: a resource passes when an accepted reload puts it in
//! force new or changed (same kind, namespace and name, different metadata or spec); each
//! resource with an error fails once per refused reload (every reload is a new refusal of it:
//! the whole edit is refused because of it), and so does each file or document with an error
//! that did not parse into a resource. Resources of a refused reload that are valid themselves
//! are not counted: they are not in force, and pass when a later reload puts them there.

use std::collections::HashMap;
use std::path::PathBuf;

use super::Report;
use crate::model::Kind;
use crate::source::Resource;

/// The resources of the configuration in force, by kind, namespace and name.
#[derive(Debug, Default)]
pub struct Baseline {
    in_force: HashMap<(Kind, String), Resource>,
}

/// What one reload counts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// One entry per resource put in force new or changed: its kind.
    pub passed: Vec<Kind>,
    /// One entry per resource, document or file with an error: its kind when it parsed into a
    /// resource.
    pub failed: Vec<Option<Kind>>,
}

impl Baseline {
    /// The configuration in force is `resources` (loaded and accepted at start).
    pub fn new(resources: &[Resource]) -> Self {
        Self {
            in_force: resources
                .iter()
                .map(|r| ((r.kind, r.meta.key()), r.clone()))
                .collect(),
        }
    }

    /// Counts a reload's `report`; an accepted one becomes the configuration in force.
    pub fn admit(&mut self, report: &Report) -> Admission {
        if report.has_errors() {
            return Admission {
                passed: Vec::new(),
                failed: failed(report),
            };
        }
        let passed = report
            .resources
            .iter()
            .filter(|r| {
                self.in_force
                    .get(&(r.kind, r.meta.key()))
                    .is_none_or(|old| old.meta != r.meta || old.spec != r.spec)
            })
            .map(|r| r.kind)
            .collect();
        *self = Self::new(&report.resources);
        Admission {
            passed,
            failed: Vec::new(),
        }
    }
}

/// One entry per distinct place (file and document) an error was found at.
fn failed(report: &Report) -> Vec<Option<Kind>> {
    let mut places: Vec<(&PathBuf, Option<usize>)> =
        report.errors().map(|p| (&p.file, p.document)).collect();
    places.sort();
    places.dedup();
    places
        .into_iter()
        .map(|(file, document)| {
            report
                .resources
                .iter()
                .find(|r| &r.origin.file == file && Some(r.origin.document) == document)
                .map(|r| r.kind)
        })
        .collect()
}

/// The API group and plural resource name of `kind`, as Kubernetes names them (istiod's
/// `group` and `resource` labels); empty for a document that did not parse into a resource.
pub fn resource_labels(kind: Option<Kind>) -> (&'static str, &'static str) {
    let Some(kind) = kind else {
        return ("", "");
    };
    let resource = match kind {
        Kind::VirtualService => "virtualservices",
        Kind::DestinationRule => "destinationrules",
        Kind::ServiceEntry => "serviceentries",
        Kind::Sidecar => "sidecars",
        Kind::PeerAuthentication => "peerauthentications",
        Kind::AuthorizationPolicy => "authorizationpolicies",
        Kind::RequestAuthentication => "requestauthentications",
        Kind::Telemetry => "telemetries",
        Kind::MeshConfig => "meshconfigs",
    };
    (kind.group(), resource)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::check_dir;

    const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: WEIGHT}
";
    const DR: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";
    const PA: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
";

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new(files: &[(&str, &str)]) -> Self {
            let d = Dir(tempfile::tempdir().unwrap());
            for (name, text) in files {
                d.write(name, text);
            }
            d
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.path().join(name), text).unwrap();
        }
        fn check(&self) -> Report {
            check_dir(self.0.path())
        }
    }

    fn vs(subset: &str) -> String {
        VS.replace("WEIGHT", subset)
    }

    #[test]
    fn an_accepted_edit_passes_only_what_it_changed() {
        let dir = Dir::new(&[("vs.yaml", &vs("v1")), ("dr.yaml", DR), ("pa.yaml", PA)]);
        let start = dir.check();
        assert!(!start.has_errors(), "{:#?}", start.problems);
        let mut baseline = Baseline::new(&start.resources);

        // Nothing changed (an editor touching a file): nothing counted.
        assert_eq!(baseline.admit(&dir.check()), Admission::default());

        dir.write("vs.yaml", &vs("v2"));
        assert_eq!(
            baseline.admit(&dir.check()),
            Admission {
                passed: vec![Kind::VirtualService],
                failed: vec![],
            }
        );
        // The same content again is not a new admission.
        assert_eq!(baseline.admit(&dir.check()), Admission::default());
    }

    #[test]
    fn a_refused_edit_fails_each_bad_resource_and_the_fix_passes_what_changed() {
        let dir = Dir::new(&[("vs.yaml", &vs("v1")), ("dr.yaml", DR)]);
        let mut baseline = Baseline::new(&dir.check().resources);

        // A route to an undefined subset: the VirtualService fails, every time it is read.
        dir.write("vs.yaml", &vs("v9"));
        let refused = Admission {
            passed: vec![],
            failed: vec![Some(Kind::VirtualService)],
        };
        assert_eq!(baseline.admit(&dir.check()), refused);
        dir.write("pa.yaml", PA);
        assert_eq!(
            baseline.admit(&dir.check()),
            refused,
            "the valid PeerAuthentication is not in force while the edit is refused"
        );

        // A document that does not parse fails without a kind.
        dir.write("broken.yaml", "kind: [unclosed\n");
        let report = dir.check();
        let admission = baseline.admit(&report);
        assert!(admission.passed.is_empty());
        assert!(
            admission.failed.contains(&None) && admission.failed.len() == 2,
            "{admission:?} from {:#?}",
            report.problems
        );

        // Fixed: both the changed VirtualService and the new PeerAuthentication go in force.
        std::fs::remove_file(dir.0.path().join("broken.yaml")).unwrap();
        dir.write("vs.yaml", &vs("v2"));
        let mut admission = baseline.admit(&dir.check());
        admission.passed.sort();
        assert_eq!(
            admission,
            Admission {
                passed: vec![Kind::VirtualService, Kind::PeerAuthentication],
                failed: vec![],
            }
        );
    }

    #[test]
    fn a_telemetry_with_an_expression_that_is_not_cel_fails_as_a_telemetry() {
        let telemetry = |filter: &str| {
            format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: mesh-default, namespace: istio-system}}\nspec:\n  accessLogging:\n  - filter: {{expression: \"{filter}\"}}\n"
            )
        };
        let dir = Dir::new(&[
            ("pa.yaml", PA),
            ("telemetry.yaml", &telemetry("response.code >= 400")),
        ]);
        let mut baseline = Baseline::new(&dir.check().resources);
        dir.write("telemetry.yaml", &telemetry("response.code >= "));
        assert_eq!(
            baseline.admit(&dir.check()),
            Admission {
                passed: vec![],
                failed: vec![Some(Kind::Telemetry)],
            }
        );
        dir.write("telemetry.yaml", &telemetry("response.code >= 500"));
        assert_eq!(
            baseline.admit(&dir.check()),
            Admission {
                passed: vec![Kind::Telemetry],
                failed: vec![],
            }
        );
    }

    #[test]
    fn labels_are_kubernetes_group_and_plural_resource_names() {
        assert_eq!(
            resource_labels(Some(Kind::ServiceEntry)),
            ("networking.istio.io", "serviceentries")
        );
        assert_eq!(
            resource_labels(Some(Kind::AuthorizationPolicy)),
            ("security.istio.io", "authorizationpolicies")
        );
        assert_eq!(
            resource_labels(Some(Kind::Telemetry)),
            ("telemetry.istio.io", "telemetries")
        );
        assert_eq!(resource_labels(None), ("", ""));
    }
}
