//! The proxy's own log level, changeable while it runs, as Envoy's admin `POST /logging`:
//! `?level=debug` sets every component, `?paths=outbound:debug,xds:trace` or
//! `?outbound=debug` sets components (the proxy's top-level modules) one by one. The
//! filter in force is the start-up filter with the components' levels after it.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// The components a level can be set for: the proxy's modules.
pub const COMPONENTS: [&str; 16] = [
    "admin",
    "balance",
    "config",
    "identity",
    "inbound",
    "message",
    "outbound",
    "policy",
    "resilience",
    "route",
    "server",
    "snapshot",
    "source",
    "telemetry",
    "transport",
    "xds",
];

/// Why a level change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogLevelError {
    /// Not one of Envoy's level names.
    #[error("unknown level `{0}` (trace, debug, info, warning, error, critical, off)")]
    Level(String),
    /// Not one of [`COMPONENTS`].
    #[error("unknown component `{0}`")]
    Component(String),
    /// Nothing to change was given.
    #[error("give level=<level>, paths=<component>:<level>,... or <component>=<level>")]
    Empty,
    /// Logging was not set up by [`init`] (a library user's own subscriber).
    #[error("the log level cannot be changed in this process")]
    NotReloadable,
}

/// The levels asked for so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Levels {
    /// The filter everything starts from (`--log-level`, or the last `level=`).
    pub base: String,
    /// Components' own levels.
    pub components: BTreeMap<String, String>,
}

impl Levels {
    /// The `EnvFilter` directives these levels make.
    pub fn directives(&self) -> String {
        let mut d = self.base.clone();
        for (c, l) in &self.components {
            d.push_str(&format!(",meshlite_proxy::{c}={l}"));
        }
        d
    }

    /// Applies an admin query (`level=debug`, `paths=a:b,c:d`, `outbound=debug`).
    pub fn apply(&mut self, query: &str) -> Result<(), LogLevelError> {
        let mut changed = false;
        let mut next = self.clone();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "level" => {
                    next.base = level(value)?.to_string();
                    next.components.clear();
                }
                "paths" => {
                    for p in value.split(',').filter(|p| !p.is_empty()) {
                        let (c, l) = p.split_once(':').unwrap_or((p, ""));
                        next.components
                            .insert(component(c)?.into(), level(l)?.into());
                    }
                }
                c => {
                    next.components
                        .insert(component(c)?.into(), level(value)?.into());
                }
            }
            changed = true;
        }
        if !changed {
            return Err(LogLevelError::Empty);
        }
        *self = next;
        Ok(())
    }
}

/// Envoy's level names as tracing's.
fn level(name: &str) -> Result<&'static str, LogLevelError> {
    Ok(match name {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        other => return Err(LogLevelError::Level(other.to_string())),
    })
}

fn component(name: &str) -> Result<&'static str, LogLevelError> {
    COMPONENTS
        .iter()
        .find(|c| **c == name)
        .copied()
        .ok_or_else(|| LogLevelError::Component(name.to_string()))
}

type Handle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

static STATE: OnceLock<(Handle, Mutex<Levels>)> = OnceLock::new();

/// Installs the process's log output (stderr, human-readable) with `filter`, reloadable; an
/// unparsable filter falls back to `info`.
pub fn init(filter: &str) {
    let base = if EnvFilter::try_new(filter).is_ok() {
        filter
    } else {
        "info"
    };
    let (layer, handle) = reload::Layer::new(EnvFilter::new(base));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    if tracing_subscriber::registry()
        .with(layer)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let levels = Levels {
            base: base.to_string(),
            components: BTreeMap::new(),
        };
        let _ = STATE.set((handle, Mutex::new(levels)));
    }
}

/// Changes the levels as an admin `query` asks; returns the filter now in force.
pub fn change(query: &str) -> Result<String, LogLevelError> {
    let (handle, levels) = STATE.get().ok_or(LogLevelError::NotReloadable)?;
    let mut levels = levels.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = levels.clone();
    next.apply(query)?;
    let directives = next.directives();
    handle
        .reload(EnvFilter::new(&directives))
        .map_err(|_| LogLevelError::NotReloadable)?;
    *levels = next;
    Ok(directives)
}

/// The filter in force, when [`init`] set it up.
pub fn current() -> Option<String> {
    let (_, levels) = STATE.get()?;
    Some(
        levels
            .lock()
            .map_or_else(|p| p.into_inner().directives(), |l| l.directives()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Levels {
        Levels {
            base: "info".into(),
            components: BTreeMap::new(),
        }
    }

    #[test]
    fn envoys_query_forms_set_everything_or_components() {
        let mut l = levels();
        l.apply("paths=outbound:debug,xds:trace").unwrap();
        assert_eq!(
            l.directives(),
            "info,meshlite_proxy::outbound=debug,meshlite_proxy::xds=trace"
        );
        l.apply("inbound=warning").unwrap();
        assert_eq!(l.components["inbound"], "warn");
        l.apply("level=debug").unwrap();
        assert_eq!(
            l.directives(),
            "debug",
            "a global level replaces the components'"
        );
    }

    #[test]
    fn unknown_levels_and_components_change_nothing() {
        let mut l = levels();
        l.apply("outbound=debug").unwrap();
        let before = l.clone();
        assert_eq!(
            l.apply("paths=outbound:trace,nowhere:debug"),
            Err(LogLevelError::Component("nowhere".into()))
        );
        assert_eq!(
            l.apply("level=loud"),
            Err(LogLevelError::Level("loud".into()))
        );
        assert_eq!(l.apply(""), Err(LogLevelError::Empty));
        assert_eq!(l, before, "a refused query changes no level");
    }
}
