//! Criterion micro-benchmarks of the per-request path: the cases of [`cases`], timed.
//!
//! CI runs them once in test mode (`cargo bench -p meshlite-bench -- --test`) so they cannot rot;
//! `request_instructions` counts the same cases' instructions and gates CI on them.

// Benchmark set-up: a failure to build a fixture is a failed run, reported by expect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cases;

use cases::{Group, Harness};
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use std::future::Future;

impl Harness for Criterion {
    type Group<'h> = BenchmarkGroup<'h, WallTime>;

    fn group(&mut self, name: &str) -> Self::Group<'_> {
        self.benchmark_group(name)
    }

    fn runtime(&self) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    }
}

impl Group for BenchmarkGroup<'_, WallTime> {
    fn iter<O>(&mut self, name: &str, mut routine: impl FnMut() -> O) {
        self.bench_function(name, |b| b.iter(&mut routine));
    }

    fn iter_batched_ref<I, O>(
        &mut self,
        name: &str,
        mut setup: impl FnMut() -> I,
        mut routine: impl FnMut(&mut I) -> O,
    ) {
        self.bench_function(name, |b| {
            b.iter_batched_ref(&mut setup, &mut routine, BatchSize::SmallInput)
        });
    }

    fn iter_batched<I, O>(
        &mut self,
        name: &str,
        mut setup: impl FnMut() -> I,
        mut routine: impl FnMut(I) -> O,
    ) {
        self.bench_function(name, |b| {
            b.iter_batched(&mut setup, &mut routine, BatchSize::SmallInput)
        });
    }

    fn iter_async<O, F: Future<Output = O>>(
        &mut self,
        name: &str,
        runtime: &tokio::runtime::Runtime,
        mut routine: impl FnMut() -> F,
    ) {
        self.bench_function(name, |b| b.to_async(runtime).iter(&mut routine));
    }

    fn finish(self) {
        BenchmarkGroup::finish(self);
    }
}

fn benches(c: &mut Criterion) {
    cases::all(c);
}

criterion_group!(request_path, benches);
criterion_main!(request_path);
