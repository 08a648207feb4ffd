//! Inbound security policy: who may call this workload and what they may do
//! ([`authz`], Istio's AuthorizationPolicy).

pub mod authz;
