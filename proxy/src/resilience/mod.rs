//! Resilience on the outbound path, as Envoy applies a DestinationRule and a VirtualService:
//! circuit breakers (`connectionPool`), outlier detection (`outlierDetection`) and retries
//! (`retries`, with a budget so an outage cannot become a retry storm).

pub mod breaker;
pub mod outlier;
pub mod rate_limit;
pub mod retry;
