//! An OpenTelemetry logs collector for access-log tests: it serves OpenTelemetry's own
//! `LogsService` (the `opentelemetry-proto` crate's tonic definitions), so the sidecars'
//! `envoyOtelAls` export is checked against the real protocol, and reduces what it receives
//! to [`ReceivedLog`]s.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::tracing::{any_text, hex};

/// One log record as the collector received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedLog {
    /// The record's body, as text.
    pub body: String,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// Its resource's attributes (`service.name`, `log_name`, ...), as text.
    pub resource: BTreeMap<String, String>,
    /// 32 lowercase hex digits; empty when the record carries no trace.
    pub trace_id: String,
    /// 16 lowercase hex digits; empty when the record carries no trace.
    pub span_id: String,
    /// Nanoseconds since the Unix epoch.
    pub time_unix_nano: u64,
}

impl ReceivedLog {
    /// Attribute `name`, or "" when absent.
    pub fn attribute(&self, name: &str) -> &str {
        self.attributes.get(name).map(String::as_str).unwrap_or("")
    }
}

type Received = Arc<Mutex<Vec<ReceivedLog>>>;

fn lock(r: &Received) -> std::sync::MutexGuard<'_, Vec<ReceivedLog>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

struct Logs {
    received: Received,
}

#[tonic::async_trait]
impl LogsService for Logs {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rl in request.into_inner().resource_logs {
            let resource: BTreeMap<String, String> = rl
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|a| (a.key.clone(), any_text(a.value.as_ref())))
                .collect();
            for sl in rl.scope_logs {
                for r in sl.log_records {
                    got.push(ReceivedLog {
                        body: any_text(r.body.as_ref()),
                        attributes: r
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), any_text(a.value.as_ref())))
                            .collect(),
                        resource: resource.clone(),
                        trace_id: hex(&r.trace_id),
                        span_id: hex(&r.span_id),
                        time_unix_nano: r.time_unix_nano,
                    });
                }
            }
        }
        lock(&self.received).extend(got);
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC logs collector.
pub struct OtlpLogCollector {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Received,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpLogCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpLogCollector {
    /// Starts a collector on an ephemeral loopback port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let received = Received::default();
        let service = LogsServiceServer::new(Logs {
            received: received.clone(),
        });
        let (addr, task) = crate::grpc::serve_on_loopback(
            tonic::transport::Server::builder().add_service(service),
            "OTLP logs collector",
        )
        .await;
        Self {
            addr,
            received,
            task,
        }
    }

    /// Every record received so far.
    pub fn records(&self) -> Vec<ReceivedLog> {
        lock(&self.received).clone()
    }
}
