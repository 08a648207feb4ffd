//! Start-up with a control plane: where the first identity and config come from.
//!
//! In order: a certificate kept in the state directory that is still valid (a restart), else
//! a new one from the CA with the bootstrap token, retried with backoff for a while (the
//! control plane may be starting too). The last good config in the state directory, if any,
//! is restored so the proxy serves before the control plane answers.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

use super::ca_client::{self, Credential};
use super::channel::ControlEndpoint;
use super::state::{StateDir, XdsState, files};
use super::{Backoff, XdsError};
use crate::config::ControlConfig;
use crate::identity::spiffe::SpiffeId;
use crate::identity::tls::Identity;
use crate::telemetry::metrics::TlsFailureCounter;

/// How long start-up keeps asking an unreachable CA before giving up.
pub const BOOTSTRAP_DEADLINE: Duration = Duration::from_secs(60);

/// What start-up got from the control plane or the state directory.
pub struct Bootstrapped {
    /// The workload identity.
    pub identity: Arc<Identity>,
    /// Where to reach the control plane.
    pub endpoint: ControlEndpoint,
    /// The state directory, if configured.
    pub state_dir: Option<StateDir>,
    /// Config restored from the state directory (empty if none).
    pub state: XdsState,
}

/// PEM of one certificate (the roots are written back as they came).
pub fn pem_cert(c: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn read_certs(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, XdsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| XdsError::Certificate(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(XdsError::Certificate(format!("{what}: no certificate")));
    }
    Ok(certs)
}

/// Gets the identity and restores the config, as the module docs describe.
pub async fn bootstrap(
    control: &ControlConfig,
    id: &SpiffeId,
    failures: TlsFailureCounter,
) -> Result<Bootstrapped, XdsError> {
    let root_bytes = std::fs::read(&control.root_cert)
        .map_err(|e| XdsError::Config(format!("root_cert {}: {e}", control.root_cert.display())))?;
    let control_roots = read_certs(&root_bytes, "root_cert")?;
    let endpoint = ControlEndpoint::new(&control.address, &control_roots)?;
    let state_dir = control
        .state_dir
        .as_deref()
        .map(StateDir::open)
        .transpose()?;

    let mut identity = None;
    if let Some(dir) = &state_dir {
        match restore_identity(dir, id, &control_roots, failures.clone()) {
            Ok(Some(i)) => {
                tracing::info!("restored the workload certificate from the state directory");
                identity = Some(Arc::new(i));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("ignoring the persisted certificate: {e}"),
        }
    }
    let identity = match identity {
        Some(i) => i,
        None => {
            Arc::new(first_certificate(control, &endpoint, id, &control_roots, failures).await?)
        }
    };
    if let Some(dir) = &state_dir {
        persist_identity_roots(dir, &control_roots);
    }
    let state = match &state_dir {
        Some(dir) => match dir.read(files::CONFIG)? {
            Some(bytes) => XdsState::decode_persisted(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring the persisted config: {e}");
                XdsState::default()
            }),
            None => XdsState::default(),
        },
        None => XdsState::default(),
    };
    Ok(Bootstrapped {
        identity,
        endpoint,
        state_dir,
        state,
    })
}

/// Writes the roots file only if there is none (the xDS bundle replaces it later).
fn persist_identity_roots(dir: &StateDir, roots: &[CertificateDer<'static>]) {
    if matches!(dir.read(files::ROOTS), Ok(Some(_))) {
        return;
    }
    let pem: String = roots.iter().map(pem_cert).collect();
    if let Err(e) = dir.write(files::ROOTS, pem.as_bytes()) {
        tracing::warn!("cannot persist the trust bundle: {e}");
    }
}

fn restore_identity(
    dir: &StateDir,
    id: &SpiffeId,
    control_roots: &[CertificateDer<'static>],
    failures: TlsFailureCounter,
) -> Result<Option<Identity>, XdsError> {
    let (Some(chain), Some(key)) = (dir.read(files::CHAIN)?, dir.read(files::KEY)?) else {
        return Ok(None);
    };
    let chain = read_certs(&chain, "persisted chain")?;
    let key = PrivateKeyDer::from_pem_slice(&key)
        .map_err(|e| XdsError::Certificate(format!("persisted key: {e}")))?;
    let mut roots = match dir.read(files::ROOTS)? {
        Some(b) => read_certs(&b, "persisted roots")?,
        None => Vec::new(),
    };
    roots.extend(control_roots.iter().cloned());
    // Identity::from_parts verifies the chain now: an expired certificate fails here.
    let identity = Identity::from_parts(id, chain, key, &roots, failures)
        .map_err(|e| XdsError::Certificate(e.to_string()))?;
    Ok(Some(identity))
}

async fn first_certificate(
    control: &ControlConfig,
    endpoint: &ControlEndpoint,
    id: &SpiffeId,
    roots: &[CertificateDer<'static>],
    failures: TlsFailureCounter,
) -> Result<Identity, XdsError> {
    let token_file = control.token_file.as_ref().ok_or_else(|| {
        XdsError::Config(
            "no valid certificate in the state directory and no token_file to get one".into(),
        )
    })?;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| XdsError::Config(format!("token_file {}: {e}", token_file.display())))?;
    let deadline = tokio::time::Instant::now() + BOOTSTRAP_DEADLINE;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match ca_client::request(endpoint, id, Credential::Token(&token), control.cert_ttl).await {
            Ok(issued) => {
                let identity = Identity::from_parts(
                    id,
                    issued.chain.clone(),
                    issued.key.key_der(),
                    roots,
                    failures,
                )
                .map_err(|e| XdsError::Certificate(format!("issued certificate: {e}")))?;
                tracing::info!(identity = %id, "certificate issued by the control plane");
                if let Some(dir) = control.state_dir.as_deref() {
                    persist_key(&StateDir::open(dir)?, &issued);
                }
                return Ok(identity);
            }
            // A refusal will not change by retrying: say why and stop.
            Err(e @ XdsError::Refused(_)) => return Err(e),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                tracing::warn!("waiting for the CA: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Keeps the key and chain in the state directory (0600); failures are logged.
pub fn persist_key(dir: &StateDir, issued: &ca_client::Issued) {
    if let Err(e) = dir
        .write(files::KEY, issued.key.key_pem.as_bytes())
        .and_then(|_| dir.write(files::CHAIN, issued.chain_pem.as_bytes()))
    {
        tracing::warn!("cannot persist the certificate: {e}");
    }
}
