//! Waiting for something to become true, with a deadline.
//!
//! End-to-end tests never sleep and hope: they poll a probe at a short interval until it yields a
//! value, and fail with a message naming what they waited for when the deadline passes. Deadlines
//! are generous (processes share two cores with other work); they bound the wait, they are not
//! timing assertions.

use std::future::Future;
use std::time::Duration;

/// How often a probe is retried.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The default bound for a condition that should hold "soon" (a metric appears, a log line is
/// written, a process exits).
pub const SOON: Duration = Duration::from_secs(15);

/// Polls `probe` until it returns `Some`, and returns that value.
///
/// # Panics
/// When `within` passes first; the message names `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `fut`, failing the test with a message naming `what` if it takes longer than `within`.
///
/// # Panics
/// When the deadline passes.
pub async fn within<T>(what: &str, within: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}
