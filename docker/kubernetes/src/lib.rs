//! meshlite's Kubernetes manifests (the YAML files beside this crate) and their tests: each
//! manifest, and the output of sidecar injection, must read as the Kubernetes API types with
//! nothing lost, so a misspelt or misplaced field fails CI instead of a cluster's `apply`.
#![forbid(unsafe_code)]
