//! The background half of every exporter that sends telemetry records to a collector (spans,
//! access-log records): a bounded queue the request path hands records to without ever
//! waiting, and one task per collector that takes them off in batches, as OpenTelemetry's
//! batch processors do (up to [`MAX_BATCH`] records, sent once the first has waited
//! [`BATCH_DELAY`]), and exports each batch with a deadline ([`EXPORT_TIMEOUT`]). A batch
//! the collector does not take is dropped and counted, never retried into a growing
//! backlog; while an export is slow the queue fills and new records are dropped and counted
//! at the queue: the cost of a slow or dead collector is a counter, never a request's time.
//! The task ends when the last sender of its queue is gone (the snapshot that used the
//! collector was replaced by one that does not).

use prometheus_client::metrics::counter::Counter;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::mpsc;

/// Records waiting for export before new ones are dropped (OpenTelemetry's default
/// `OTEL_BSP_MAX_QUEUE_SIZE` and `OTEL_BLRP_MAX_QUEUE_SIZE`).
pub const QUEUE: usize = 2048;

/// Records per export at most (OpenTelemetry's default `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const MAX_BATCH: usize = 512;

/// How long the first record of a batch waits for others (Envoy's tracers flush every 5 s,
/// its gRPC access loggers every second; a shorter wait gets records to the collector sooner
/// at the cost of more, smaller exports when traffic is light).
pub const BATCH_DELAY: Duration = Duration::from_millis(500);

/// How often a filling batch's queue is looked at: a batch is sent as soon as a look finds
/// [`MAX_BATCH`] records waiting, so a busy sidecar exports every few tens of
/// milliseconds and its queue never fills (at 10,000 records a second, 500 a look).
pub const FILL_CHECK: Duration = Duration::from_millis(50);

/// One export's deadline, connection included (OpenTelemetry's default
/// `OTEL_EXPORTER_OTLP_TIMEOUT` is 10 s; a sidecar gives up sooner and drops the batch).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connecting to a collector gives up after this (a collector that does not answer SYNs).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A collector's client, as the export task drives it.
pub trait BatchExport<T>: Send + 'static {
    /// The collector, for log lines (`otlp http://collector:4317`).
    fn describe(&self) -> String;

    /// Sends one batch. `Ok` with how many records the collector refused (OTLP's partial
    /// success), `Err` when it took none.
    fn export(&mut self, batch: Vec<T>) -> impl Future<Output = Result<u64, String>> + Send;
}

/// What an export task counts: records the collector took, and records in batches it did
/// not take.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// Records the collector accepted.
    pub exported: Counter,
    /// Records in batches it refused or that failed or timed out.
    pub export_failed: Counter,
}

/// The runtime export tasks run on: a thread of its own with a single-threaded tokio
/// runtime, started on first use. Encoding a batch of hundreds of records and driving the
/// collector's connection are bursts of work that would otherwise run on a request worker
/// and hold up the requests queued behind them. `None` when the thread cannot be started.
fn export_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("telemetry-export".into())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Spawns the export task of the exporter `make` makes (inside the export runtime: clients
/// may spawn their own connection tasks) on the telemetry export thread, fed by a queue of
/// `capacity` records; `None` when that thread could not be started (the records would
/// have nowhere to go).
pub fn start<T, E>(
    make: impl FnOnce() -> E + Send + 'static,
    capacity: usize,
    delivery: Delivery,
) -> Option<mpsc::Sender<T>>
where
    T: Send + 'static,
    E: BatchExport<T>,
{
    Some(start_on(export_runtime()?, make, capacity, delivery))
}

/// [`start`] on the runtime of `handle` (tests drive it under paused time).
pub fn start_on<T, E>(
    handle: &tokio::runtime::Handle,
    make: impl FnOnce() -> E + Send + 'static,
    capacity: usize,
    delivery: Delivery,
) -> mpsc::Sender<T>
where
    T: Send + 'static,
    E: BatchExport<T>,
{
    let (tx, rx) = mpsc::channel(capacity);
    handle.spawn(async move { run(rx, make(), delivery).await });
    tx
}

/// The export loop, until every sender is gone: waits for a record, lets the batch fill
/// for up to [`BATCH_DELAY`], looking every [`FILL_CHECK`] whether a full batch is waiting
/// (a sleeping task is not woken by senders, so the request path pays no wake-up per
/// record), then takes what is queued in batches of at most [`MAX_BATCH`], one export at a
/// time.
pub async fn run<T, E: BatchExport<T>>(
    mut rx: mpsc::Receiver<T>,
    mut exporter: E,
    delivery: Delivery,
) {
    let mut failing = false;
    loop {
        let Some(first) = rx.recv().await else { return };
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        loop {
            let now = tokio::time::Instant::now();
            if rx.len() + 1 >= MAX_BATCH || now >= deadline {
                break;
            }
            tokio::time::sleep(FILL_CHECK.min(deadline - now)).await;
        }
        let mut first = Some(first);
        let mut closed = false;
        loop {
            // Sized to what waits: a light sidecar's batches are small.
            let mut batch = Vec::with_capacity((rx.len() + 1).min(MAX_BATCH));
            batch.extend(first.take());
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let full = batch.len() == MAX_BATCH;
            failing = export(&mut exporter, batch, &delivery, failing).await;
            if !full {
                break;
            }
        }
        if closed {
            return;
        }
    }
}

/// Exports one batch with its deadline and counts the outcome; returns whether the
/// collector is failing now (a change is logged once, not per batch).
async fn export<T, E: BatchExport<T>>(
    exporter: &mut E,
    records: Vec<T>,
    delivery: &Delivery,
    failing: bool,
) -> bool {
    let n = records.len() as u64;
    let outcome = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(records)).await {
        Ok(Ok(refused)) => Ok(refused.min(n)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("export timed out after {EXPORT_TIMEOUT:?}")),
    };
    match outcome {
        Ok(refused) => {
            delivery.exported.inc_by(n - refused);
            delivery.export_failed.inc_by(refused);
            if failing {
                tracing::info!(collector = %exporter.describe(), "collector reachable again");
            }
            false
        }
        Err(e) => {
            delivery.export_failed.inc_by(n);
            if !failing {
                tracing::warn!(collector = %exporter.describe(), "records dropped: {e}");
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes every batch, refusing the first record of each; records what it was sent.
    struct Picky(std::sync::Arc<std::sync::Mutex<Vec<Vec<u32>>>>);

    impl BatchExport<u32> for Picky {
        fn describe(&self) -> String {
            "picky".into()
        }

        async fn export(&mut self, batch: Vec<u32>) -> Result<u64, String> {
            self.0.lock().unwrap().push(batch);
            Ok(1)
        }
    }

    /// Never answers.
    struct Hung;

    impl BatchExport<u32> for Hung {
        fn describe(&self) -> String {
            "hung".into()
        }

        async fn export(&mut self, _batch: Vec<u32>) -> Result<u64, String> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn records_go_in_batches_and_refusals_are_counted() {
        let seen = std::sync::Arc::default();
        let delivery = Delivery::default();
        let picky = Picky(std::sync::Arc::clone(&seen));
        let tx = start_on(
            &tokio::runtime::Handle::current(),
            || picky,
            8,
            delivery.clone(),
        );
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        drop(tx);
        tokio::time::sleep(BATCH_DELAY * 2).await;
        assert_eq!(*seen.lock().unwrap(), vec![vec![0, 1, 2]]);
        assert_eq!(delivery.exported.get(), 2);
        assert_eq!(delivery.export_failed.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_the_next_look_without_waiting_out_the_delay() {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u32>>>> = std::sync::Arc::default();
        let delivery = Delivery::default();
        let picky = Picky(std::sync::Arc::clone(&seen));
        let tx = start_on(&tokio::runtime::Handle::current(), || picky, 2048, delivery);
        for i in 0..(MAX_BATCH as u32 + 10) {
            tx.try_send(i).unwrap();
        }
        tokio::time::sleep(FILL_CHECK * 2).await;
        let sizes: Vec<usize> = seen.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [MAX_BATCH, 10],
            "both sent well before {BATCH_DELAY:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_collector_that_never_answers_costs_a_timeout_and_a_count() {
        let delivery = Delivery::default();
        let tx = start_on(
            &tokio::runtime::Handle::current(),
            || Hung,
            8,
            delivery.clone(),
        );
        tx.try_send(7).unwrap();
        tokio::time::sleep(BATCH_DELAY + EXPORT_TIMEOUT + Duration::from_millis(10)).await;
        assert_eq!(delivery.export_failed.get(), 1);
        assert_eq!(delivery.exported.get(), 0);
        // The queue keeps taking records, never blocking the sender.
        tx.try_send(8).unwrap();
    }
}
