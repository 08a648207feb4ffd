//! Certificate rotation: renew at about half the certificate's lifetime, as Istio's agent
//! does (`SECRET_GRACE_PERIOD_RATIO` 0.5 with ±1% jitter, so a fleet does not renew in
//! lockstep), proving the identity with the current SVID. The new key pair is swapped into
//! rustls atomically: open connections keep theirs, new handshakes use the new one.

use std::sync::Arc;
use std::time::Duration;

use super::ca_client::{self, Credential};
use super::channel::ControlEndpoint;
use super::state::StateDir;
use super::{Backoff, XdsError};
use crate::identity::tls::Identity;
use crate::telemetry::metrics::{ControlMetrics, ResultLabels};

/// Fraction of the lifetime after which the certificate is renewed (Istio's default).
pub const RENEW_RATIO: f64 = 0.5;
/// Jitter on the ratio (Istio: ±0.01).
pub const RENEW_JITTER: f64 = 0.01;

/// Never renew more often than this, whatever the certificate says.
pub const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// Seconds from `now` until renewal for a certificate valid from `not_before` to
/// `not_after`; `jitter` in [-1, 1]. Callers pass as `not_before` the later of the
/// certificate's and the time it was received: CAs backdate `notBefore` for clock skew, which
/// must not count as lifetime already spent.
pub fn renew_in(not_before: i64, not_after: i64, now: i64, jitter: f64) -> Duration {
    let lifetime = (not_after - not_before).max(0) as f64;
    let ratio = RENEW_RATIO + RENEW_JITTER * jitter.clamp(-1.0, 1.0);
    let at = not_before as f64 + lifetime * ratio;
    Duration::from_secs_f64((at - now as f64).max(0.0))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Renews the certificate for as long as the process runs.
pub async fn run(
    identity: Arc<Identity>,
    endpoint: ControlEndpoint,
    ttl: Duration,
    state_dir: Option<StateDir>,
    metrics: ControlMetrics,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut received = now_unix();
    loop {
        let (Some(nb), Some(na)) = (identity.not_before(), identity.not_after()) else {
            tracing::error!("cannot read the current certificate's validity; rotation stops");
            return;
        };
        metrics.cert_expiry.set(na);
        let wait = renew_in(
            nb.max(received),
            na,
            now_unix(),
            fastrand::f64() * 2.0 - 1.0,
        )
        .max(MIN_RENEW_INTERVAL);
        tracing::debug!(in_s = wait.as_secs(), "next certificate renewal");
        tokio::time::sleep(wait).await;
        loop {
            match renew(&identity, &endpoint, ttl, state_dir.as_ref()).await {
                Ok(()) => {
                    received = now_unix();
                    metrics
                        .rotations
                        .get_or_create(&ResultLabels { result: "ok" })
                        .inc();
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    metrics
                        .rotations
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    let left = identity.not_after().unwrap_or(0) - now_unix();
                    tracing::warn!(expires_in_s = left, "certificate renewal failed: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

async fn renew(
    identity: &Arc<Identity>,
    endpoint: &ControlEndpoint,
    ttl: Duration,
    state_dir: Option<&StateDir>,
) -> Result<(), XdsError> {
    let issued =
        ca_client::request(endpoint, identity.id(), Credential::Svid(identity), ttl).await?;
    identity
        .rotate(issued.chain.clone(), issued.key.key_der())
        .map_err(|e| XdsError::Certificate(format!("renewed certificate: {e}")))?;
    if let Some(dir) = state_dir {
        super::bootstrap::persist_key(dir, &issued);
    }
    tracing::info!(
        expires = identity.not_after().unwrap_or(0),
        "certificate renewed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_life_with_at_most_one_percent_jitter() {
        // 24 h certificate issued at t=0, asked at t=0.
        let day = 86_400;
        assert_eq!(renew_in(0, day, 0, 0.0), Duration::from_secs(43_200));
        assert_eq!(renew_in(0, day, 0, 1.0), Duration::from_secs_f64(44_064.0));
        assert_eq!(renew_in(0, day, 0, -1.0), Duration::from_secs_f64(42_336.0));
        // Past the renewal point: now.
        assert_eq!(renew_in(0, day, 50_000, 0.0), Duration::ZERO);
    }
}
