//! Resilience on the outbound path, as Envoy applies a DestinationRule and a VirtualService:
//! circuit breakers (`connectionPool`), outlier detection (`outlierDetection`) and retries
//! (`retries`, with budgets so an outage cannot become a retry storm: Istio's `retryBudget`
//! on retries in flight, meshlite's rate budget on retries per request).

pub mod breaker;
pub mod concurrency_budget;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
pub mod retry_loop;
