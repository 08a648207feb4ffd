//! The attributes of one exchange that CEL expressions read: access-log filters
//! (`filter.expression`) and `tagOverrides` values, as Envoy's CEL filters and Istio's stats
//! name them (`request.headers[...]`, `request.method`, `response.code`, ...).

use std::collections::HashMap;

/// A request's headers as CEL reads them (`request.headers[...]`): lowercase names, text
/// values; a value that is not text is left out. Kept from the request's arrival by what
/// evaluates expressions when its response ends (access-log filters, `tagOverrides`).
pub fn header_pairs(headers: &http::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// A CEL result as the text a tag or a log field takes (`None`: a list, a map, null or
/// anything else with no one text form).
pub fn cel_text(v: &cel::objects::Value) -> Option<String> {
    use cel::objects::Value;
    Some(match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    })
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// What a filter reads of one exchange.
#[derive(Debug, Default)]
pub struct LogAttributes<'a> {
    /// Request headers, names lowercase.
    pub headers: &'a [(String, String)],
    /// Method.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// `:authority`.
    pub host: &'a str,
    /// `x-request-id`.
    pub id: &'a str,
    /// `user-agent`.
    pub user_agent: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// Status sent (0: none).
    pub code: u16,
    /// Milliseconds from the request's start to the end of the response.
    pub duration_ms: u64,
    /// Response flags as printed.
    pub flags: String,
    /// Response body bytes.
    pub size: u64,
}

/// The CEL variables `request` and `response` of one exchange, as Envoy's CEL filters and
/// Istio's `tagOverrides` read them.
pub fn cel_context(a: &LogAttributes<'_>) -> cel::Context<'static, 'static> {
    use cel::objects::Value;
    let headers: HashMap<String, Value> = a
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let request: HashMap<&str, Value> = HashMap::from([
        ("headers", Value::from(headers)),
        ("method", Value::from(a.method)),
        ("path", Value::from(a.path)),
        ("host", Value::from(a.host)),
        ("id", Value::from(a.id)),
        ("useragent", Value::from(a.user_agent)),
        ("protocol", Value::from(a.protocol)),
    ]);
    let response: HashMap<&str, Value> = HashMap::from([
        ("code", Value::Int(i64::from(a.code))),
        (
            "duration",
            Value::Int(i64::try_from(a.duration_ms).unwrap_or(i64::MAX)),
        ),
        ("flags", Value::from(a.flags.as_str())),
        (
            "size",
            Value::Int(i64::try_from(a.size).unwrap_or(i64::MAX)),
        ),
    ]);
    let mut context = cel::Context::default();
    context.add_variable_from_value("request", request);
    context.add_variable_from_value("response", response);
    context
}
