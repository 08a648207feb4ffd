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

/// What the rotation schedule acts on: the current certificate and the way to renew it.
/// The process renews through the CA ([`CaRenewal`]); tests pass a fake and drive the
/// schedule with paused time.
trait Renewal {
    /// The current certificate's `notBefore` and `notAfter` (Unix seconds).
    fn validity(&self) -> Option<(i64, i64)>;
    /// The wall clock, in Unix seconds (certificates are valid in wall-clock time).
    fn now_unix(&self) -> i64;
    /// Obtains and installs a new certificate.
    async fn renew(&mut self) -> Result<(), XdsError>;
}

/// Renewal from the control plane's CA, proving the identity with the current SVID.
struct CaRenewal {
    identity: Arc<Identity>,
    endpoint: ControlEndpoint,
    ttl: Duration,
    state_dir: Option<StateDir>,
}

impl Renewal for CaRenewal {
    fn validity(&self) -> Option<(i64, i64)> {
        Some((self.identity.not_before()?, self.identity.not_after()?))
    }

    fn now_unix(&self) -> i64 {
        now_unix()
    }

    async fn renew(&mut self) -> Result<(), XdsError> {
        renew(
            &self.identity,
            &self.endpoint,
            self.ttl,
            self.state_dir.as_ref(),
        )
        .await
    }
}

/// Renews the certificate for as long as the process runs.
pub async fn run(
    identity: Arc<Identity>,
    endpoint: ControlEndpoint,
    ttl: Duration,
    state_dir: Option<StateDir>,
    metrics: ControlMetrics,
) {
    let renewal = CaRenewal {
        identity,
        endpoint,
        ttl,
        state_dir,
    };
    schedule(renewal, metrics).await;
}

/// The rotation schedule: sleeps until about half the current certificate's lifetime,
/// renews, and on failure retries with backoff (500 ms doubling to 30 s) until it succeeds.
async fn schedule(mut renewal: impl Renewal, metrics: ControlMetrics) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut received = renewal.now_unix();
    loop {
        let Some((nb, na)) = renewal.validity() else {
            tracing::error!("cannot read the current certificate's validity; rotation stops");
            return;
        };
        metrics.cert_expiry.set(na);
        let wait = renew_in(
            nb.max(received),
            na,
            renewal.now_unix(),
            fastrand::f64() * 2.0 - 1.0,
        )
        .max(MIN_RENEW_INTERVAL);
        tracing::debug!(in_s = wait.as_secs(), "next certificate renewal");
        tokio::time::sleep(wait).await;
        loop {
            match renewal.renew().await {
                Ok(()) => {
                    received = renewal.now_unix();
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
                    let left = renewal.validity().map_or(0, |(_, na)| na) - renewal.now_unix();
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

    /// A CA down for its first `failures` renewals, over a wall clock that follows tokio's
    /// (paused) clock; it logs when each renewal was tried and whether it worked.
    struct FakeCa {
        start: tokio::time::Instant,
        start_unix: i64,
        lifetime: i64,
        validity: (i64, i64),
        failures: u32,
        log: Arc<std::sync::Mutex<Vec<(Duration, bool)>>>,
    }

    impl Renewal for FakeCa {
        fn validity(&self) -> Option<(i64, i64)> {
            Some(self.validity)
        }

        fn now_unix(&self) -> i64 {
            self.start_unix + self.start.elapsed().as_secs() as i64
        }

        async fn renew(&mut self) -> Result<(), XdsError> {
            let ok = self.failures == 0;
            self.log.lock().unwrap().push((self.start.elapsed(), ok));
            if !ok {
                self.failures -= 1;
                return Err(XdsError::Certificate("the CA is down".into()));
            }
            let now = self.now_unix();
            self.validity = (now, now + self.lifetime);
            Ok(())
        }
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_about_half_life_and_retries_failures_with_backoff() {
        let day = 86_400;
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let metrics = ControlMetrics::default();
        let ca = FakeCa {
            start: tokio::time::Instant::now(),
            start_unix: 1_700_000_000,
            lifetime: day,
            validity: (1_700_000_000, 1_700_000_000 + day),
            failures: 2,
            log: log.clone(),
        };
        let task = tokio::spawn(schedule(ca, metrics.clone()));
        let half = day as f64 / 2.0;
        // Before 49 % of the lifetime (half less 1 % jitter) nothing is renewed.
        tokio::time::sleep(secs(half * 0.98 - 1.0)).await;
        assert!(log.lock().unwrap().is_empty(), "renewed too early");
        // By 51 % it was tried, failed twice and was retried with growing backoff.
        tokio::time::sleep(secs(half * 0.04 + 10.0)).await;
        let tries = log.lock().unwrap().clone();
        assert_eq!(tries.len(), 3, "{tries:?}");
        let first = tries[0].0;
        assert!(
            first >= secs(half * 0.98) && first <= secs(half * 1.02),
            "{first:?}"
        );
        assert_eq!(
            tries.iter().map(|t| t.1).collect::<Vec<_>>(),
            [false, false, true]
        );
        let retry1 = tries[1].0 - tries[0].0;
        let retry2 = tries[2].0 - tries[1].0;
        assert!(retry1 >= secs(0.25) && retry1 <= secs(0.5), "{retry1:?}");
        assert!(retry2 >= secs(0.5) && retry2 <= secs(1.0), "{retry2:?}");
        // The new certificate is renewed at about half of its own lifetime.
        tokio::time::sleep(secs(half * 1.1)).await;
        let tries = log.lock().unwrap().clone();
        assert_eq!(tries.len(), 4, "{tries:?}");
        let next = tries[3].0 - tries[2].0;
        // Whole seconds on the wall clock: one more second of slack.
        assert!(
            next >= secs(half * 0.98 - 1.0) && next <= secs(half * 1.02 + 1.0),
            "{next:?}"
        );
        let count = |result| {
            metrics
                .rotations
                .get_or_create(&ResultLabels { result })
                .get()
        };
        assert_eq!((count("ok"), count("error")), (2, 2));
        task.abort();
    }
}
