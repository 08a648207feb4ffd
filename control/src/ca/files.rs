//! Private state files of the CA: the state directory, atomic writes and permission checks.
//!
//! The root key and the token key are the mesh's crown jewels. They live in a 0700 directory,
//! are written 0600 through a temporary file and a rename (a crash never leaves half a key), and
//! a key file that group or others can read is refused on load, the way ssh refuses a private key
//! with loose permissions: it may already have leaked, and silently using it hides that.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a CA state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// An I/O error on the file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A private file is readable or writable by group or others.
    #[error(
        "{path}: permissions {mode:04o} are too open: this private key must not be accessible by \
         group or others (run `chmod 600 {path}`); refusing to use it"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), StateFileError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

/// Reads a file that must be private (no group/other permission bits). `Ok(None)` if absent.
pub(crate) fn read_private(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(StateFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map(Some).map_err(io_err(path))
}

/// Reads a public file. `Ok(None)` if absent.
pub(crate) fn read_public(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Writes `contents` to `path` atomically with permission `mode`: a temporary file in the same
/// directory gets its permissions before any byte is written, is synced, then renamed over
/// `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // A stale temporary file from a crashed run is ours to replace.
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // The umask may have narrowed (or, for public files, kept) the bits: make them exact.
        f.set_permissions(Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename durable; failure here only weakens crash safety, so it is not fatal.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_sets_mode_and_private_read_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        ensure_private_dir(&state).unwrap();
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let key = state.join("k");
        write_atomic(&key, b"secret", 0o600).unwrap();
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read_private(&key).unwrap().unwrap(), b"secret");
        fs::set_permissions(&key, Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            read_private(&key),
            Err(StateFileError::TooOpen { mode: 0o640, .. })
        ));
        assert!(read_private(&state.join("missing")).unwrap().is_none());
    }
}
