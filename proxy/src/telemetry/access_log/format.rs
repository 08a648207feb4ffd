//! A provider's `logFormat`, compiled once per push and rendered for each line it receives:
//! `text` is the whole line (a file) or the record's body (OpenTelemetry); `labels` are the
//! JSON line's fields (a file) or the record's attributes.
//!
//! The format strings are Envoy's command operators, parsed by
//! [`meshlite_xds_proto::log_format`] (the control plane refuses what does not parse). What an
//! operator reads comes from the finished [`AccessLogEntry`]; the request headers beyond the
//! ones every line carries, and the response headers, are kept only when a format reads them
//! ([`LineFormat::reads_request_headers`], [`LineFormat::reads_response_headers`]). An absent
//! value is `-` in text and `null` in a field made of that one operator, as Envoy writes them;
//! a field made of one numeric operator (`%RESPONSE_CODE%`) stays a number.

use std::fmt::Write as _;

use meshlite_xds_proto::log_format::{self, Command, Field, FormatError, HeaderPick, Piece};
use meshlite_xds_proto::v1;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};

use super::AccessLogEntry;
use crate::telemetry::attributes::{self, cel_context};

/// Why a pushed format could not be compiled (the control plane refuses these before a push).
#[derive(Debug, thiserror::Error)]
pub enum LineFormatError {
    /// The format string does not parse.
    #[error("{field}: {source}")]
    Syntax {
        /// `text` or `labels.<name>`.
        field: String,
        /// Why.
        source: FormatError,
    },
    /// A `%CEL(...)%` expression does not compile.
    #[error("{field}: CEL expression {expression:?}: {message}")]
    Cel {
        /// `text` or `labels.<name>`.
        field: String,
        /// The expression.
        expression: String,
        /// The compiler's message.
        message: String,
    },
}

/// A provider's compiled `logFormat`.
#[derive(Debug)]
pub struct LineFormat {
    text: Option<Template>,
    labels: Vec<(String, Template)>,
    reads_request_headers: bool,
    reads_response_headers: bool,
}

/// One compiled format string.
#[derive(Debug)]
struct Template {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Value {
        source: Source,
        max_len: Option<usize>,
    },
}

/// Where an operator's value comes from.
enum Source {
    Request {
        pick: HeaderPick,
        without_query: bool,
    },
    Response(HeaderPick),
    StartTime(Option<String>),
    /// Known when the format was compiled (`%ENVIRONMENT(X)%`, `%HOSTNAME%`).
    Fixed(Option<String>),
    Cel(Box<cel::Program>),
    Field(Field),
    Absent,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Request { pick, .. } => f.debug_tuple("Request").field(&pick.main).finish(),
            Source::Response(pick) => f.debug_tuple("Response").field(&pick.main).finish(),
            Source::StartTime(t) => f.debug_tuple("StartTime").field(t).finish(),
            Source::Fixed(v) => f.debug_tuple("Fixed").field(v).finish(),
            Source::Cel(_) => f.write_str("Cel"),
            Source::Field(field) => f.debug_tuple("Field").field(field).finish(),
            Source::Absent => f.write_str("Absent"),
        }
    }
}

/// One operator's value for one line.
enum Value<'a> {
    Text(std::borrow::Cow<'a, str>),
    Number(u64),
    Absent,
}

/// The request headers every line carries in its own fields: reading them keeps nothing more.
fn carried_request_header(name: &str) -> bool {
    matches!(
        name,
        ":method"
            | ":path"
            | ":authority"
            | "host"
            | "user-agent"
            | "x-forwarded-for"
            | "x-request-id"
            | "x-envoy-original-path"
    )
}

/// The response "headers" a line knows without keeping the response's headers.
fn carried_response_header(name: &str) -> bool {
    matches!(name, ":status" | "x-envoy-upstream-service-time")
}

impl LineFormat {
    /// Compiles a pushed `logFormat`; `None` when it sets neither `text` nor `labels`.
    pub fn compile(format: &v1::LogFormat) -> Result<Option<Self>, LineFormatError> {
        let text = (!format.text.is_empty())
            .then(|| Template::compile("text", &format.text))
            .transpose()?;
        let labels = format
            .labels
            .iter()
            .map(|(name, f)| {
                Ok((
                    name.clone(),
                    Template::compile(&format!("labels.{name}"), f)?,
                ))
            })
            .collect::<Result<Vec<_>, LineFormatError>>()?;
        if text.is_none() && labels.is_empty() {
            return Ok(None);
        }
        let sources = || {
            text.iter()
                .chain(labels.iter().map(|(_, t)| t))
                .flat_map(|t| &t.parts)
                .filter_map(|p| match p {
                    Part::Value { source, .. } => Some(source),
                    Part::Text(_) => None,
                })
        };
        let reads_request_headers = sources().any(|s| match s {
            Source::Request { pick, .. } => {
                !carried_request_header(&pick.main)
                    || pick
                        .alternative
                        .as_deref()
                        .is_some_and(|a| !carried_request_header(a))
            }
            Source::Cel(_) => true,
            _ => false,
        });
        let reads_response_headers = sources().any(|s| match s {
            Source::Response(pick) => {
                !carried_response_header(&pick.main)
                    || pick
                        .alternative
                        .as_deref()
                        .is_some_and(|a| !carried_response_header(a))
            }
            _ => false,
        });
        Ok(Some(Self {
            text,
            labels,
            reads_request_headers,
            reads_response_headers,
        }))
    }

    /// Istio's default text line, the body of OpenTelemetry records whose provider sets no
    /// `text`.
    pub fn istio_default_text() -> &'static LineFormat {
        static DEFAULT: std::sync::OnceLock<LineFormat> = std::sync::OnceLock::new();
        DEFAULT.get_or_init(|| {
            let text = Template::compile("text", log_format::ISTIO_DEFAULT_TEXT).ok();
            LineFormat {
                text,
                labels: Vec::new(),
                reads_request_headers: false,
                reads_response_headers: false,
            }
        })
    }

    /// Whether a line must keep the request's headers for this format.
    pub fn reads_request_headers(&self) -> bool {
        self.reads_request_headers
    }

    /// Whether a line must keep the response's headers for this format.
    pub fn reads_response_headers(&self) -> bool {
        self.reads_response_headers
    }

    /// The line a file gets: the text, or the fields as one JSON object (`labels`), without
    /// the newline the writer adds.
    pub fn line(&self, e: &AccessLogEntry) -> String {
        match &self.text {
            Some(t) if self.labels.is_empty() => t.text(e, &mut None),
            _ => self.json(e),
        }
    }

    /// The record's body for a collector (`None`: this format sets no `text`).
    pub fn body(&self, e: &AccessLogEntry) -> Option<String> {
        self.text.as_ref().map(|t| t.text(e, &mut None))
    }

    /// The record's attributes for a collector (`None`: this format sets no `labels`).
    /// Absent values are left out.
    pub fn attributes(&self, e: &AccessLogEntry) -> Option<Vec<KeyValue>> {
        if self.labels.is_empty() {
            return None;
        }
        let mut context = None;
        let attributes = self
            .labels
            .iter()
            .filter_map(|(name, t)| {
                let value = match t.typed(e, &mut context) {
                    Some(Value::Absent) => return None,
                    Some(Value::Number(n)) => {
                        any_value::Value::IntValue(i64::try_from(n).unwrap_or(i64::MAX))
                    }
                    Some(Value::Text(s)) => any_value::Value::StringValue(s.into_owned()),
                    None => any_value::Value::StringValue(t.text(e, &mut context)),
                };
                Some(KeyValue {
                    key: name.clone(),
                    value: Some(AnyValue { value: Some(value) }),
                    ..Default::default()
                })
            })
            .collect();
        Some(attributes)
    }

    fn json(&self, e: &AccessLogEntry) -> String {
        let mut out = String::with_capacity(64 * self.labels.len().max(1));
        let mut context = None;
        out.push('{');
        for (i, (name, t)) in self.labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_string(&mut out, name);
            out.push(':');
            match t.typed(e, &mut context) {
                Some(Value::Absent) => out.push_str("null"),
                Some(Value::Number(n)) => {
                    let _ = write!(out, "{n}");
                }
                Some(Value::Text(s)) => json_string(&mut out, &s),
                None => json_string(&mut out, &t.text(e, &mut context)),
            }
        }
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("null"),
    }
}

impl Template {
    fn compile(field: &str, format: &str) -> Result<Self, LineFormatError> {
        let pieces = log_format::parse(format).map_err(|source| LineFormatError::Syntax {
            field: field.to_string(),
            source,
        })?;
        let parts = pieces
            .into_iter()
            .map(|p| {
                Ok(match p {
                    Piece::Text(t) => Part::Text(t),
                    Piece::Operator { command, max_len } => Part::Value {
                        source: Source::compile(field, command)?,
                        max_len,
                    },
                })
            })
            .collect::<Result<_, LineFormatError>>()?;
        Ok(Self { parts })
    }

    /// The value of a template made of one operator, typed; `None` for any other template.
    fn typed<'a>(
        &'a self,
        e: &'a AccessLogEntry,
        context: &mut Option<cel::Context<'static, 'static>>,
    ) -> Option<Value<'a>> {
        match self.parts.as_slice() {
            [Part::Value { source, max_len }] => Some(match source.value(e, context) {
                Value::Text(s) => Value::Text(cut(s, *max_len)),
                v => v,
            }),
            _ => None,
        }
    }

    /// The template as text, `-` for what is absent.
    fn text(
        &self,
        e: &AccessLogEntry,
        context: &mut Option<cel::Context<'static, 'static>>,
    ) -> String {
        let mut out = String::with_capacity(128);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Value { source, max_len } => match source.value(e, context) {
                    Value::Absent => out.push('-'),
                    Value::Number(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Value::Text(s) => out.push_str(&cut(s, *max_len)),
                },
            }
        }
        if out.ends_with('\n') {
            out.pop();
        }
        out
    }
}

/// `s` cut to at most `max_len` bytes, on a character boundary.
fn cut(s: std::borrow::Cow<'_, str>, max_len: Option<usize>) -> std::borrow::Cow<'_, str> {
    match max_len {
        Some(n) if s.len() > n => {
            let mut s = s.into_owned();
            attributes::truncate(&mut s, n);
            s.into()
        }
        _ => s,
    }
}

impl Source {
    fn compile(field: &str, command: Command) -> Result<Self, LineFormatError> {
        Ok(match command {
            Command::RequestHeader(pick) => Source::Request {
                pick,
                without_query: false,
            },
            Command::RequestHeaderWithoutQuery(pick) => Source::Request {
                pick,
                without_query: true,
            },
            Command::ResponseHeader(pick) => Source::Response(pick),
            Command::StartTime(format) => Source::StartTime(format),
            Command::Environment(name) => Source::Fixed(std::env::var(name).ok()),
            Command::Field(Field::Hostname) => Source::Fixed(hostname()),
            Command::Cel(expression) => match cel::Program::compile(&expression) {
                Ok(program) => Source::Cel(Box::new(program)),
                Err(e) => {
                    return Err(LineFormatError::Cel {
                        field: field.to_string(),
                        expression,
                        message: e.to_string(),
                    });
                }
            },
            Command::Field(f) => Source::Field(f),
            Command::ResponseTrailer(_) | Command::Unavailable(_) => Source::Absent,
        })
    }

    fn value<'a>(
        &'a self,
        e: &'a AccessLogEntry,
        context: &mut Option<cel::Context<'static, 'static>>,
    ) -> Value<'a> {
        let text = present;
        match self {
            Source::Request {
                pick,
                without_query,
            } => {
                let v = request_header(e, &pick.main).or_else(|| {
                    pick.alternative
                        .as_deref()
                        .and_then(|a| request_header(e, a))
                });
                let v = if *without_query {
                    v.map(|v| v.split_once('?').map_or(v, |(p, _)| p))
                } else {
                    v
                };
                text(v)
            }
            Source::Response(pick) => {
                response_header(e, &pick.main, &pick.alternative).unwrap_or(Value::Absent)
            }
            Source::StartTime(None) => Value::Text(super::rfc3339(e.start_time.0).into()),
            Source::StartTime(Some(f)) => Value::Text(strftime(e.start_time.0, f).into()),
            Source::Fixed(v) => text(v.as_deref()),
            Source::Cel(program) => {
                let context = context.get_or_insert_with(|| cel_context(&e.attributes()));
                match program.execute(context) {
                    Ok(cel::objects::Value::Int(i)) if i >= 0 => Value::Number(i as u64),
                    Ok(cel::objects::Value::UInt(u)) => Value::Number(u),
                    Ok(v) => {
                        attributes::cel_text(&v).map_or(Value::Absent, |s| Value::Text(s.into()))
                    }
                    Err(_) => Value::Absent,
                }
            }
            Source::Field(f) => field(e, *f),
            Source::Absent => Value::Absent,
        }
    }
}

/// A request header or pseudo-header of the line, lowercase `name`.
fn request_header<'e>(e: &'e AccessLogEntry, name: &str) -> Option<&'e str> {
    let v = match name {
        ":method" => Some(e.method.as_str()),
        ":path" => Some(e.path.as_str()),
        ":authority" | "host" => e.authority.as_deref(),
        "user-agent" => e.user_agent.as_deref(),
        "x-forwarded-for" => e.x_forwarded_for.as_deref(),
        "x-request-id" => e.request_id.as_deref(),
        _ => e
            .request_headers
            .as_deref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
    };
    v.filter(|v| !v.is_empty())
}

fn response_header<'e>(
    e: &'e AccessLogEntry,
    name: &str,
    alternative: &Option<String>,
) -> Option<Value<'e>> {
    let one = |name: &str| -> Option<Value<'e>> {
        match name {
            ":status" => (e.response_code != 0).then_some(Value::Number(e.response_code.into())),
            _ => {
                let kept = e
                    .response_headers
                    .as_deref()
                    .and_then(|h| h.iter().find(|(k, _)| k == name))
                    .map(|(_, v)| Value::Text(v.as_str().into()));
                match (kept, name) {
                    (Some(v), _) => Some(v),
                    // The time the sidecar measured, as Envoy's router reports it.
                    (None, "x-envoy-upstream-service-time") => {
                        e.upstream_service_time.map(Value::Number)
                    }
                    (None, _) => None,
                }
            }
        }
    };
    one(name).or_else(|| alternative.as_deref().and_then(one))
}

/// A text value, absent when empty.
fn present(s: Option<&str>) -> Value<'_> {
    match s {
        Some(s) if !s.is_empty() => Value::Text(s.into()),
        _ => Value::Absent,
    }
}

fn field(e: &AccessLogEntry, f: Field) -> Value<'_> {
    match f {
        Field::Protocol => Value::Text(e.protocol.into()),
        Field::ResponseCode => Value::Number(e.response_code.into()),
        Field::ResponseCodeDetails => match (&e.response_code_details, e.upstream_service_time) {
            (Some(d), _) => Value::Text(d.as_str().into()),
            // A response that came from upstream, as Envoy's router says.
            (None, Some(_)) => Value::Text("via_upstream".into()),
            (None, None) => Value::Absent,
        },
        Field::ResponseFlags => Value::Text(e.response_flags.to_string().into()),
        Field::BytesReceived => Value::Number(e.bytes_received),
        Field::BytesSent => Value::Number(e.bytes_sent),
        Field::Duration => Value::Number(e.duration),
        Field::UpstreamHost => present(e.upstream_host.as_deref()),
        Field::UpstreamCluster => present(e.upstream_cluster.as_deref()),
        Field::UpstreamTransportFailureReason => present(e.upstream_transport_failure_reason),
        Field::UpstreamPeerUriSan => {
            present(e.upstream_peer_principal.as_deref().map(|id| id.as_str()))
        }
        Field::DownstreamRemoteAddress => present(Some(&e.downstream_remote_address)),
        Field::DownstreamRemoteAddressWithoutPort => {
            let a = e.downstream_remote_address.as_str();
            match a.parse::<std::net::SocketAddr>() {
                Ok(addr) => Value::Text(addr.ip().to_string().into()),
                Err(_) => present(Some(a)),
            }
        }
        Field::DownstreamPeerUriSan => present(e.downstream_peer_principal.as_deref()),
        Field::TraceId => match e.trace_id {
            Some(t) => Value::Text(t.to_hex_string().into()),
            None => Value::Absent,
        },
        // Resolved when the format is compiled.
        Field::Hostname => Value::Absent,
    }
}

/// The machine's host name (a pod's name in Kubernetes).
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

/// `t` (UTC) in a strftime-like `format`, as Envoy's `%START_TIME(...)%` takes it: `%Y %m %d
/// %H %M %S %y %j %e %F %T %s %z %Z %%`, and `%f` / `%1f`..`%9f` for fractions of a second;
/// anything else is written as it is.
pub fn strftime(t: std::time::SystemTime, format: &str) -> String {
    let dt = time::OffsetDateTime::from(t);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let digits = chars.peek().and_then(|d| d.to_digit(10));
        if let Some(n) = digits.filter(|n| (1..=9).contains(n)) {
            chars.next();
            if chars.peek() == Some(&'f') {
                chars.next();
                let nanos = format!("{:09}", dt.nanosecond());
                out.push_str(&nanos[..n as usize]);
            } else {
                let _ = write!(out, "%{n}");
            }
            continue;
        }
        let Some(spec) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match spec {
            'Y' => write!(out, "{:04}", dt.year()),
            'y' => write!(out, "{:02}", dt.year().rem_euclid(100)),
            'm' => write!(out, "{:02}", u8::from(dt.month())),
            'd' => write!(out, "{:02}", dt.day()),
            'e' => write!(out, "{:>2}", dt.day()),
            'j' => write!(out, "{:03}", dt.ordinal()),
            'H' => write!(out, "{:02}", dt.hour()),
            'M' => write!(out, "{:02}", dt.minute()),
            'S' => write!(out, "{:02}", dt.second()),
            'F' => write!(
                out,
                "{:04}-{:02}-{:02}",
                dt.year(),
                u8::from(dt.month()),
                dt.day()
            ),
            'T' => write!(
                out,
                "{:02}:{:02}:{:02}",
                dt.hour(),
                dt.minute(),
                dt.second()
            ),
            's' => write!(out, "{}", dt.unix_timestamp()),
            'f' => write!(out, "{:09}", dt.nanosecond()),
            'z' => write!(out, "+0000"),
            'Z' => write!(out, "UTC"),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

#[cfg(test)]
mod tests;
