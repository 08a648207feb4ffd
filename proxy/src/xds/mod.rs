//! The proxy's side of the control plane: its certificate from the CA (bootstrap, rotation)
//! and its configuration from the xDS stream (delta ADS: subscribe, apply as a new
//! snapshot, ACK, or NACK with the reason and keep the last good one), with the last good
//! state persisted so a restart can serve before the control plane is back.
//!
//! The CA request, the channel and the node metadata are crate-private; programs that act as
//! sidecars use them through [`crate::control_client`].

pub mod bootstrap;
pub(crate) mod ca_client;
pub(crate) mod channel;
pub mod client;
pub mod demand;
pub(crate) mod node;
pub mod rotation;
pub mod state;

/// Why talking to the control plane, or applying what it sent, failed.
#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    /// The control section of the config is unusable.
    #[error("control plane config: {0}")]
    Config(String),
    /// Connecting or the stream failed.
    #[error("control plane unreachable: {0}")]
    Connect(String),
    /// The stream broke.
    #[error("xDS stream: {0}")]
    Stream(String),
    /// The CA refused the request.
    #[error("CA refused: {0}")]
    Refused(String),
    /// A certificate or key could not be made or read.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A push was malformed or could not be applied.
    #[error("{0}")]
    Invalid(String),
    /// The state directory could not be used.
    #[error("state directory: {0}")]
    State(String),
}

/// Exponential backoff with full jitter, as gRPC and Envoy reconnect.
#[derive(Debug)]
pub struct Backoff {
    base: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never waits longer than `max`.
    pub fn new(base: std::time::Duration, max: std::time::Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next wait: uniform in [ceiling/2, ceiling], the ceiling doubling per attempt.
    pub fn next_delay(&mut self) -> std::time::Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// After a connection that worked for a while.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(2));
        }
        assert!(b.next_delay() >= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

/// Shared view of the control-plane connection, for readiness and the admin dump.
#[derive(Debug, Default)]
pub struct ControlStatus {
    /// The xDS stream is up.
    pub connected: std::sync::atomic::AtomicBool,
    /// The config serving now was restored from the state directory and no control plane
    /// has confirmed it yet.
    pub persisted: std::sync::atomic::AtomicBool,
    /// Pushes applied since start (a batch of responses applied together counts once).
    pub applies: std::sync::atomic::AtomicU64,
    /// How long the last applied push took, in microseconds: decoding the resources,
    /// building the snapshot and swapping it in (not persisting it).
    pub last_apply_micros: std::sync::atomic::AtomicU64,
}
