//! Pods as Linux network namespaces: the harness lives in the benchmark's crate
//! ([`meshlite_bench::netns`]), which runs pods too (`meshlite-bench --scenario pods`); the
//! tests use it from here.

pub use meshlite_bench::netns::*;
