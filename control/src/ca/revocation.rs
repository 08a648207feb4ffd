//! Revoked workload certificates, kept in `revoked.json` in the CA state directory.
//!
//! Short-lived SVIDs make CRLs unnecessary for peers (a stolen certificate dies within a day),
//! but the CA must not renew one: a renewal presents the current SVID as proof of identity. Two
//! kinds of entries exist: single serial numbers, and a per-identity cutoff ("every certificate
//! of this identity issued before T"), the tool for a compromised workload whose serials are
//! unknown. `meshlite-control cert revoke` edits the file from another process; the running CA
//! re-reads it when its modification time or size changes (one `stat` per renewal).

use meshlite_xds_proto::spiffe::SpiffeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use time::OffsetDateTime;

use super::CaError;
use super::files::{ensure_private_dir, read_public, write_atomic};

/// Name of the revocation list inside the state directory.
pub const REVOCATIONS_FILE: &str = "revoked.json";

/// The on-disk form; unknown fields are refused so a typo does not silently revoke nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationFile {
    /// Revoked serial numbers, lowercase hex without leading zero bytes.
    #[serde(default)]
    serials: BTreeSet<String>,
    /// SPIFFE ID -> Unix time (seconds): certificates of that identity issued strictly before
    /// are revoked.
    #[serde(default)]
    identities_revoked_before: BTreeMap<String, i64>,
}

/// The revocation list of one CA state directory.
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    file: RevocationFile,
}

/// Normalises a serial number to lowercase hex without colons or leading zero bytes, the form
/// stored and compared. `None` if it is not hex.
pub fn normalize_serial(serial: &str) -> Option<String> {
    let hex: String = serial
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Pad to whole bytes, then drop leading zero bytes (DER may add one to keep it positive).
    let padded = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    let mut s = padded.as_str();
    while s.len() > 2 && s.starts_with("00") {
        s = &s[2..];
    }
    Some(s.to_string())
}

/// Lowercase hex of serial-number bytes, in the stored form.
pub(crate) fn serial_hex(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    normalize_serial(&hex).unwrap_or(hex)
}

impl Revocations {
    /// Reads `<state_dir>/revoked.json`; a missing file is an empty list.
    pub fn load(state_dir: &Path) -> Result<Self, CaError> {
        Self::load_file(state_dir.join(REVOCATIONS_FILE))
    }

    fn load_file(path: PathBuf) -> Result<Self, CaError> {
        let file = match read_public(&path)? {
            None => RevocationFile::default(),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| CaError::RevocationList {
                path: path.clone(),
                message: e.to_string(),
            })?,
        };
        Ok(Self { path, file })
    }

    /// The file this list is read from and saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Revokes one certificate by serial number (hex, colons and case ignored).
    pub fn revoke_serial(&mut self, serial_hex: &str) -> Result<(), CaError> {
        let s = normalize_serial(serial_hex)
            .ok_or_else(|| CaError::BadSerial(serial_hex.to_string()))?;
        self.file.serials.insert(s);
        Ok(())
    }

    /// Revokes every certificate of `id` issued before `before`. A later cutoff replaces an
    /// earlier one; an earlier one never shortens an existing cutoff.
    pub fn revoke_identity(&mut self, id: &SpiffeId, before: OffsetDateTime) {
        let t = before.unix_timestamp();
        let entry = self
            .file
            .identities_revoked_before
            .entry(id.as_str().to_string())
            .or_insert(t);
        *entry = (*entry).max(t);
    }

    /// Writes the list back atomically (0644: it holds no secret).
    pub fn save(&self) -> Result<(), CaError> {
        if let Some(dir) = self.path.parent() {
            ensure_private_dir(dir)?;
        }
        let json = serde_json::to_vec_pretty(&self.file).map_err(|e| CaError::RevocationList {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &json, 0o644)?;
        Ok(())
    }

    /// Whether the certificate with `serial_hex`, identity `id`, issued at `issued_at` (its
    /// notBefore plus [`super::CLOCK_SKEW_ALLOWANCE`]) is revoked. Cutoffs compare whole seconds,
    /// the resolution of X.509 times.
    pub fn is_revoked(&self, serial_hex: &str, id: &SpiffeId, issued_at: OffsetDateTime) -> bool {
        if let Some(s) = normalize_serial(serial_hex)
            && self.file.serials.contains(&s)
        {
            return true;
        }
        self.file
            .identities_revoked_before
            .get(id.as_str())
            .is_some_and(|before| issued_at.unix_timestamp() < *before)
    }
}

/// A revocation list that follows its file: re-read when the file's mtime or size changes.
#[derive(Debug)]
pub(crate) struct RevocationWatch {
    path: PathBuf,
    stamp: Option<(SystemTime, u64)>,
    current: Revocations,
}

impl RevocationWatch {
    /// Watches `<state_dir>/revoked.json`.
    pub(crate) fn new(state_dir: &Path) -> Result<Self, CaError> {
        let path = state_dir.join(REVOCATIONS_FILE);
        let stamp = Self::stamp(&path)?;
        let current = Revocations::load_file(path.clone())?;
        Ok(Self {
            path,
            stamp,
            current,
        })
    }

    fn stamp(path: &Path) -> Result<Option<(SystemTime, u64)>, CaError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some((
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                m.len(),
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CaError::RevocationList {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// The current list, re-read first if the file changed. An unreadable file is an error
    /// (renewals fail closed), and is retried on the next call.
    pub(crate) fn current(&mut self) -> Result<&Revocations, CaError> {
        let stamp = Self::stamp(&self.path)?;
        if stamp != self.stamp {
            self.current = Revocations::load_file(self.path.clone())?;
            self.stamp = stamp;
            tracing::info!(path = %self.path.display(), "revocation list reloaded");
        }
        Ok(&self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(normalize_serial("00:AB:cd").as_deref(), Some("abcd"));
        assert_eq!(normalize_serial("abc").as_deref(), Some("0abc"));
        assert_eq!(normalize_serial("00").as_deref(), Some("00"));
        assert_eq!(normalize_serial("xyz"), None);
        assert_eq!(normalize_serial(""), None);
        assert_eq!(serial_hex(&[0, 0x7f, 1]), "7f01");
    }

    #[test]
    fn serial_and_identity_revocations_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let a = id("spiffe://td/ns/a/sa/a");
        let b = id("spiffe://td/ns/b/sa/b");
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut r = Revocations::load(dir.path()).unwrap();
        assert!(!r.is_revoked("0102", &a, t0));
        r.revoke_serial("01:02").unwrap();
        assert!(r.revoke_serial("not hex").is_err());
        r.revoke_identity(&b, t0);
        r.save().unwrap();

        let r = Revocations::load(dir.path()).unwrap();
        assert!(r.is_revoked("0102", &a, t0));
        assert!(r.is_revoked("00:01:02", &a, t0));
        assert!(!r.is_revoked("0103", &a, t0));
        assert!(r.is_revoked("0103", &b, t0 - time::Duration::seconds(1)));
        assert!(!r.is_revoked("0103", &b, t0));
    }

    #[test]
    fn watch_rereads_a_changed_file_and_fails_closed_on_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let a = id("spiffe://td/ns/a/sa/a");
        let now = OffsetDateTime::now_utc();
        let mut w = RevocationWatch::new(dir.path()).unwrap();
        assert!(!w.current().unwrap().is_revoked("aa", &a, now));

        let mut r = Revocations::load(dir.path()).unwrap();
        r.revoke_serial("aa").unwrap();
        r.save().unwrap();
        assert!(w.current().unwrap().is_revoked("aa", &a, now));

        std::fs::write(dir.path().join(REVOCATIONS_FILE), b"{not json").unwrap();
        assert!(matches!(w.current(), Err(CaError::RevocationList { .. })));
    }
}
