//! Transparent capture: the app's traffic reaches the proxy without the app knowing.
//!
//! An init step ([`init`], `meshlite-proxy init`) installs iptables REDIRECT rules
//! ([`rules`]) in the pod's network namespace, as Istio's istio-init does; the listeners then
//! read where each redirected connection was going ([`original_dst`]) and, when the service
//! port declares no protocol, what it speaks from its first bytes ([`sniff`]).

pub mod init;
pub mod original_dst;
pub mod rules;
pub mod sniff;
