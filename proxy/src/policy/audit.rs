//! The audit log of authorization decisions (the decision record: "all policy decisions
//! logged").
//!
//! Requests an AUDIT policy marks are written, as Istio's AUDIT action asks of its logging
//! plugin; with `--audit-log-all`, every decision an AuthorizationPolicy took part in
//! (allowed, denied, dry-run) is. Each line is JSON: who called (principal, address), what
//! (workload, port, host, method, path), the policy and rule that decided, and the result.
//! Lines go through the access log's writer thread, never blocking a request; a writer that
//! falls behind drops lines and counts them (`meshlite_audit_log_dropped_total`).

use serde::Serialize;

use super::authz::{Attributes, Shadow, Verdict};
use crate::telemetry::access_log::{AccessLog, rfc3339};

/// Where audit lines go and which decisions are written.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    log: Option<AccessLog>,
    all: bool,
}

/// One line.
#[derive(Debug, Serialize)]
struct AuditEntry<'a> {
    /// Always `authorization`: tells audit lines from access log lines sharing a target.
    audit: &'static str,
    time: String,
    /// `allow` or `deny`.
    decision: &'static str,
    /// `matched` (a policy decided), `no_allow_match` (ALLOW policies exist and none
    /// matched) or `no_policy` (no ALLOW policy: allowed by default).
    reason: &'static str,
    policy: Option<&'a str>,
    rule: Option<u32>,
    /// The AUDIT policy that marked the request.
    audit_policy: Option<&'a str>,
    /// What the dry-run policies would have done.
    dry_run: Option<DryRun<'a>>,
    source_principal: Option<&'a str>,
    source_ip: String,
    remote_ip: String,
    destination_workload: &'a str,
    destination_namespace: &'a str,
    destination_port: u16,
    /// `http` or `tcp`.
    protocol: &'static str,
    host: Option<&'a str>,
    method: Option<&'a str>,
    path: Option<&'a str>,
    request_id: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct DryRun<'a> {
    deny_engine: Option<ShadowEntry<'a>>,
    allow_engine: Option<ShadowEntry<'a>>,
}

#[derive(Debug, Serialize)]
struct ShadowEntry<'a> {
    decision: &'static str,
    policy: Option<&'a str>,
    rule: Option<u32>,
}

fn shadow(s: Option<Shadow<'_>>) -> Option<ShadowEntry<'_>> {
    s.map(|s| ShadowEntry {
        decision: if s.allowed { "allow" } else { "deny" },
        policy: s.by.map(|m| &**m.policy),
        rule: s.by.map(|m| m.rule),
    })
}

/// The workload a decision was made for.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Workload name.
    pub workload: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
}

impl AuditLog {
    /// Writes to `log`; with `all`, every decision.
    pub fn new(log: Option<AccessLog>, all: bool) -> Self {
        Self { log, all }
    }

    /// Whether this decision is written: with the all-decisions switch, or when an AUDIT
    /// policy marked it.
    pub fn wants(&self, v: &Verdict<'_>) -> bool {
        self.log.is_some() && (self.all || v.audit.is_some())
    }

    /// Writes the decision `v` on the request or connection `a`, if [`AuditLog::wants`] it.
    pub fn record(
        &self,
        v: &Verdict<'_>,
        a: &Attributes<'_>,
        target: Target<'_>,
        request_id: Option<&str>,
    ) {
        let Some(log) = &self.log else { return };
        if !self.all && v.audit.is_none() {
            return;
        }
        let reason = match (v.by, v.allowed) {
            (Some(_), _) => "matched",
            (None, true) => "no_policy",
            (None, false) => "no_allow_match",
        };
        let req = a.request.as_ref();
        let dry_run = (v.shadow_deny.is_some() || v.shadow_allow.is_some()).then(|| DryRun {
            deny_engine: shadow(v.shadow_deny),
            allow_engine: shadow(v.shadow_allow),
        });
        log.write(&AuditEntry {
            audit: "authorization",
            time: rfc3339(std::time::SystemTime::now()),
            decision: if v.allowed { "allow" } else { "deny" },
            reason,
            policy: v.by.map(|m| &**m.policy),
            rule: v.by.map(|m| m.rule),
            audit_policy: v.audit.map(|m| &**m.policy),
            dry_run,
            source_principal: a.peer.map(|p| p.principal()),
            source_ip: a.source_ip.to_string(),
            remote_ip: a.remote_ip.to_string(),
            destination_workload: target.workload,
            destination_namespace: target.namespace,
            destination_port: a.destination_port,
            protocol: if req.is_some() { "http" } else { "tcp" },
            host: req.map(|r| r.host),
            method: req.map(|r| r.method),
            path: req.map(|r| r.path),
            request_id,
        });
    }
}
