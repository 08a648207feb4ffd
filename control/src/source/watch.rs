//! Change notification for the file source.
//!
//! Watches the config directory (non-recursively) and signals "something changed" whenever a
//! YAML file is created, written, removed or renamed, or a Kubernetes ConfigMap mount swaps
//! its `..data` symlink. Other files (logs, editor swap files) are ignored so a process writing
//! into the folder cannot cause a reload loop. Signals coalesce in a channel of capacity 1;
//! the caller debounces and re-reads the whole directory.

use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::SourceError;
use super::files::is_config_file_name;

/// The file name Kubernetes atomically re-points when a ConfigMap volume is updated.
const CONFIGMAP_DATA_LINK: &str = "..data";

/// Starts watching `dir`; the receiver gets `()` after relevant changes (coalesced). The
/// watcher lives until the receiver is dropped. Must be called within a tokio runtime.
pub fn watch(dir: PathBuf) -> Result<mpsc::Receiver<()>, SourceError> {
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| SourceError::NoRuntime(dir.clone()))?;
    let (tx, rx) = mpsc::channel(1);
    let notify_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
        Ok(event) => {
            if is_relevant(&event) {
                // Full means a signal is already pending: coalesced. Closed means nobody listens.
                let _ = notify_tx.try_send(());
            }
        }
        Err(e) => tracing::warn!(error = %e, "config directory watch error"),
    })
    .map_err(|source| SourceError::Watch {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| SourceError::Watch {
            dir: dir.clone(),
            source,
        })?;
    runtime.spawn(async move {
        // Keep the watcher alive until the receiver goes away.
        tx.closed().await;
        drop(watcher);
        tracing::debug!(dir = %dir.display(), "stopped watching config directory");
    });
    Ok(rx)
}

/// Whether an event can change what `load_dir` reads.
fn is_relevant(event: &Event) -> bool {
    let kind_matters = matches!(
        event.kind,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
    );
    kind_matters && event.paths.iter().any(|p| is_relevant_path(p))
}

fn is_relevant_path(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|name| name == CONFIGMAP_DATA_LINK || is_config_file_name(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_yaml_files_and_the_configmap_link_are_relevant() {
        assert!(is_relevant_path(Path::new("/cfg/reviews.yaml")));
        assert!(is_relevant_path(Path::new("/cfg/reviews.YML")));
        assert!(is_relevant_path(Path::new("/cfg/..data")));
        assert!(!is_relevant_path(Path::new("/cfg/control.log")));
        assert!(!is_relevant_path(Path::new("/cfg/.reviews.yaml.swp")));
        assert!(!is_relevant_path(Path::new("/cfg/.#reviews.yaml")));
        assert!(!is_relevant_path(Path::new("/cfg/reviews.yaml~")));
        assert!(!is_relevant_path(Path::new(
            "/cfg/..2024_01_01_00_00_00.123"
        )));
    }

    #[tokio::test]
    async fn rewriting_a_yaml_file_signals_within_two_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reviews.yaml");
        std::fs::write(&file, "kind: VirtualService\n").unwrap();
        let mut rx = watch(dir.path().to_path_buf()).unwrap();
        std::fs::write(&file, "kind: DestinationRule\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert_eq!(got, Ok(Some(())));
    }

    #[tokio::test]
    async fn writing_a_log_file_does_not_signal() {
        let dir = tempfile::tempdir().unwrap();
        let mut rx = watch(dir.path().to_path_buf()).unwrap();
        let log = dir.path().join("control.log");
        for i in 0..5 {
            std::fs::write(&log, format!("line {i}\n")).unwrap();
        }
        std::fs::remove_file(&log).unwrap();
        let got = tokio::time::timeout(Duration::from_millis(700), rx.recv()).await;
        assert!(got.is_err(), "unexpected signal: {got:?}");
    }

    #[test]
    fn watching_outside_a_runtime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            watch(dir.path().to_path_buf()),
            Err(SourceError::NoRuntime(_))
        ));
    }
}
