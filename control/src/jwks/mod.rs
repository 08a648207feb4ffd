//! The key sets of `jwksUri` rules, fetched by the control plane and inlined in what the
//! sidecars receive, as istiod does by default (`PILOT_JWT_ENABLE_REMOTE_JWKS=false`).
//!
//! A URI a new config names is fetched before that config is pushed (each with its rule's
//! `timeout`, 5 s by default); every cached URI is fetched again every
//! [`REFRESH_INTERVAL`] (istiod's `PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`), and a changed set
//! triggers a push, so a rotated key reaches the sidecars. A first fetch that fails leaves
//! the URI with [`FAIL_CLOSED_JWKS`], a set that verifies nothing (istiod inlines a key
//! nobody holds): every token of that issuer is refused with 401 until a fetch succeeds,
//! retried every [`RETRY_INTERVAL`]. A refresh that fails keeps the last good set, as
//! istiod does. Every fetch is counted, under istiod's names:
//! `pilot_jwks_resolver_network_fetch_success_total` and `..._fail_total`.

mod fetch;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::JwksFetches;
pub use fetch::{Fetch, FetchError, HttpFetcher, MAX_JWKS_BYTES};

/// How often every cached key set is fetched again (istiod's default, 20 minutes).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// How soon a URI whose set could never be fetched is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(60);

/// The key set pushed for a URI that could not be fetched: no key, so every token of that
/// issuer fails verification (fail closed).
pub const FAIL_CLOSED_JWKS: &str = r#"{"keys":[]}"#;

/// URI -> the key set to inline for it, as one translation reads it.
pub type ResolvedJwks = BTreeMap<String, Arc<str>>;

/// What is known of one URI.
#[derive(Debug, Clone)]
struct Entry {
    /// The last set fetched; `None` while no fetch has succeeded.
    jwks: Option<Arc<str>>,
    /// The rule's fetch timeout.
    timeout: Duration,
}

/// Cached key sets by URI, and how to fetch them.
pub struct JwksCache {
    fetcher: Arc<dyn Fetch>,
    entries: Mutex<BTreeMap<String, Entry>>,
    fetches: JwksFetches,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("entries", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// An empty cache fetching with `fetcher`, counting into `fetches`.
    pub fn new(fetcher: Arc<dyn Fetch>, fetches: JwksFetches) -> Self {
        Self {
            fetcher,
            entries: Mutex::new(BTreeMap::new()),
            fetches,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // Each update is one insert: a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The set to inline for every URI known, [`FAIL_CLOSED_JWKS`] for those never fetched.
    pub fn resolved(&self) -> ResolvedJwks {
        self.lock()
            .iter()
            .map(|(uri, e)| {
                let jwks = e
                    .jwks
                    .clone()
                    .unwrap_or_else(|| Arc::from(FAIL_CLOSED_JWKS));
                (uri.clone(), jwks)
            })
            .collect()
    }

    /// One fetch, bounded by `timeout`, checked to be a JWK set, counted and logged.
    async fn fetch(&self, uri: &str, timeout: Duration) -> Result<Arc<str>, FetchError> {
        let result = match tokio::time::timeout(timeout, self.fetcher.fetch(uri)).await {
            Err(_) => Err(FetchError::Timeout(timeout)),
            Ok(Err(e)) => Err(e),
            Ok(Ok(body)) => match serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&body) {
                Ok(_) => Ok(Arc::from(body)),
                Err(e) => Err(FetchError::NotJwks(e.to_string())),
            },
        };
        match &result {
            Ok(_) => self.fetches.success.inc(),
            Err(e) => {
                tracing::warn!(uri, "cannot fetch the JWK set: {e}");
                self.fetches.failure.inc()
            }
        };
        result
    }

    /// Makes the cache hold exactly the URIs of `wanted` (URI -> fetch timeout): fetches the
    /// new ones (all at once), forgets those no longer named. Whether anything a
    /// translation reads changed.
    pub async fn sync(&self, wanted: &BTreeMap<String, Duration>) -> bool {
        let missing: Vec<(String, Duration)> = {
            let mut entries = self.lock();
            let before = entries.len();
            entries.retain(|uri, _| wanted.contains_key(uri));
            let changed = entries.len() != before;
            for (uri, timeout) in wanted {
                if let Some(e) = entries.get_mut(uri) {
                    e.timeout = *timeout;
                }
            }
            let missing: Vec<(String, Duration)> = wanted
                .iter()
                .filter(|(uri, _)| !entries.contains_key(*uri))
                .map(|(u, t)| (u.clone(), *t))
                .collect();
            if missing.is_empty() {
                return changed;
            }
            missing
        };
        let fetched =
            futures_util::future::join_all(missing.iter().map(|(uri, timeout)| async move {
                (uri, *timeout, self.fetch(uri, *timeout).await)
            }))
            .await;
        let mut entries = self.lock();
        for (uri, timeout, result) in fetched {
            entries.insert(
                uri.clone(),
                Entry {
                    jwks: result.ok(),
                    timeout,
                },
            );
        }
        true
    }

    /// Fetches again every URI (`failed_only`: those never fetched); a failure keeps what
    /// was there. Whether any set changed.
    pub async fn refresh(&self, failed_only: bool) -> bool {
        let due: Vec<(String, Duration)> = self
            .lock()
            .iter()
            .filter(|(_, e)| !failed_only || e.jwks.is_none())
            .map(|(u, e)| (u.clone(), e.timeout))
            .collect();
        let fetched = futures_util::future::join_all(
            due.iter()
                .map(|(uri, timeout)| async move { (uri, self.fetch(uri, *timeout).await) }),
        )
        .await;
        let mut changed = false;
        let mut entries = self.lock();
        for (uri, result) in fetched {
            let (Ok(jwks), Some(e)) = (result, entries.get_mut(uri)) else {
                continue;
            };
            if e.jwks.as_deref() != Some(&*jwks) {
                tracing::info!(uri, "JWK set changed");
                e.jwks = Some(jwks);
                changed = true;
            }
        }
        changed
    }

    /// Refreshes forever: every [`REFRESH_INTERVAL`] all URIs, every [`RETRY_INTERVAL`]
    /// those that never succeeded; calls `changed` when a set changed (the caller pushes).
    pub async fn run(self: Arc<Self>, changed: impl Fn() + Send + 'static) {
        let mut next_full = tokio::time::Instant::now() + REFRESH_INTERVAL;
        loop {
            let wake = (tokio::time::Instant::now() + RETRY_INTERVAL).min(next_full);
            tokio::time::sleep_until(wake).await;
            let full = tokio::time::Instant::now() >= next_full;
            if full {
                next_full = tokio::time::Instant::now() + REFRESH_INTERVAL;
            }
            if self.refresh(!full).await {
                changed();
            }
        }
    }
}
