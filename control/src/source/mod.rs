//! Where configuration comes from, and how problems with it are reported.
//!
//! Today the one source is a directory of Istio YAML files (`files`), re-read when it changes
//! (`watch`); later sources (xDS, Kubernetes) produce the same `Resource`s, so validation and
//! everything downstream has one code path. Every `Problem` names the file, document,
//! resource and field it is about, so a user can fix the YAML without guessing.

use std::fmt;
use std::path::PathBuf;

use crate::model::{
    AuthorizationPolicy, DestinationRule, Kind, MeshConfig, ObjectMeta, Origin, PeerAuthentication,
    RequestAuthentication, ServiceEntry, Sidecar, Telemetry, VirtualService,
};

mod files;
mod watch;

pub use crate::model::{ConfigSet, Named};
pub use files::load_dir;

/// Parses one file's text as the directory source would (the fuzz targets and tools read
/// YAML that is not on disk).
pub fn load_text(file: &std::path::Path, text: &str) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    files::load_str(file, text, &mut out);
    out
}
pub use watch::watch;

/// How bad a problem is: errors block the configuration, warnings are only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// Reported; the configuration is still used.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about the configuration, located as precisely as known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// File (or directory, for problems reading it).
    pub file: PathBuf,
    /// 1-based YAML document in the file.
    pub document: Option<usize>,
    /// The resource, e.g. `VirtualService default/reviews`.
    pub resource: Option<String>,
    /// Dotted field path, e.g. `spec.http[0].route[1].weight`.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem about a whole file.
    pub fn file(severity: Severity, file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Problem {
            severity,
            file: file.into(),
            document: None,
            resource: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem about a field of a loaded resource.
    pub fn at(
        severity: Severity,
        resource: &Resource,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Problem {
            severity,
            file: resource.origin.file.clone(),
            document: Some(resource.origin.document),
            resource: Some(resource.label()),
            field: Some(field.into()).filter(|f: &String| !f.is_empty()),
            message: message.into(),
        }
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// `file:doc: severity: Kind ns/name: field: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.document {
            write!(f, ":{doc}")?;
        }
        write!(f, ": {}: ", self.severity)?;
        if let Some(resource) = &self.resource {
            write!(f, "{resource}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// The typed spec of a loaded resource (boxed: the specs differ a lot in size).
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceSpec {
    /// A VirtualService.
    VirtualService(Box<VirtualService>),
    /// A DestinationRule.
    DestinationRule(Box<DestinationRule>),
    /// A ServiceEntry.
    ServiceEntry(Box<ServiceEntry>),
    /// A Sidecar.
    Sidecar(Box<Sidecar>),
    /// A PeerAuthentication.
    PeerAuthentication(Box<PeerAuthentication>),
    /// An AuthorizationPolicy.
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    /// A RequestAuthentication.
    RequestAuthentication(Box<RequestAuthentication>),
    /// A Telemetry.
    Telemetry(Box<Telemetry>),
    /// The mesh's MeshConfig.
    MeshConfig(Box<MeshConfig>),
}

/// One parsed resource, as any source produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The kind (matches `spec`).
    pub kind: Kind,
    /// Metadata.
    pub meta: ObjectMeta,
    /// Typed spec.
    pub spec: ResourceSpec,
    /// File and document it came from.
    pub origin: Origin,
}

impl Resource {
    /// `Kind namespace/name`, as used in messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.meta.key())
    }
}

/// Everything read from a source: the resources that parsed, and the problems found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOutcome {
    /// Resources in file order.
    pub resources: Vec<Resource>,
    /// Parse errors and warnings.
    pub problems: Vec<Problem>,
}

/// Failures of a source itself (as opposed to problems in the configuration).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file watcher could not be set up.
    #[error("cannot watch {dir}: {source}")]
    Watch {
        /// Watched directory.
        dir: PathBuf,
        /// Cause.
        #[source]
        source: notify::Error,
    },
    /// `watch` was called outside a tokio runtime.
    #[error("watching {0} needs a tokio runtime")]
    NoRuntime(PathBuf),
}
