//! One-shot HTTP/1.1 GETs to the local endpoints a scenario reads or pokes during a run: the
//! apps' counters and failure switch, the sidecars' `/stats/prometheus`, a reachability request
//! through a sidecar. Blocking std sockets with timeouts and `Connection: close`, so a probe never
//! waits on the load generator's runtime; a chunked body is decoded. Also the little Prometheus
//! text parsing the scenarios need (a sum over the samples of one metric whose labels match).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Bound on connecting to, writing to and reading from a probed endpoint.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on the size of a probed response (a sidecar's metrics are tens of kilobytes).
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting, writing or reading failed (or timed out).
    #[error("GET {path} from {addr}: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The answer was not an HTTP/1.x response.
    #[error("GET {path} from {addr}: malformed response: {what}")]
    Malformed {
        /// The endpoint.
        addr: SocketAddr,
        /// The path.
        path: String,
        /// What was wrong.
        what: &'static str,
    },
    /// The status was not 200.
    #[error("GET {path} from {addr}: status {status}: {body}")]
    Status {
        /// The endpoint.
        addr: SocketAddr,
        /// The path.
        path: String,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// A probed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body, decoded from chunked if it was, as text (lossy).
    pub body: String,
}

/// `GET path` with `Host: host` from `addr`; any status.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Reply, ProbeError> {
    let io = |source| ProbeError::Io {
        addr,
        path: path.to_string(),
        source,
    };
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .map_err(io)?;
    parse_response(&raw).map_err(|what| ProbeError::Malformed {
        addr,
        path: path.to_string(),
        what,
    })
}

/// `GET path` from `addr` (Host `localhost`); the body of a 200, an error otherwise.
pub fn get_ok(addr: SocketAddr, path: &str) -> Result<String, ProbeError> {
    let reply = get(addr, "localhost", path)?;
    if reply.status == 200 {
        Ok(reply.body)
    } else {
        Err(ProbeError::Status {
            addr,
            path: path.to_string(),
            status: reply.status,
            body: reply.body.chars().take(200).collect(),
        })
    }
}

/// Splits a whole HTTP/1.x response (the connection closed after it) into status and body.
fn parse_response(raw: &[u8]) -> Result<Reply, &'static str> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    if !status_line.starts_with("HTTP/1.") {
        return Err("not an HTTP/1.x status line");
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status code")?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        decode_chunked(body).ok_or("bad chunked body")?
    } else {
        body.to_vec()
    };
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Decodes a chunked body (extensions and trailers ignored).
fn decode_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The sum of the samples of metric `name` (exact, with any `_total` suffix included) whose
/// labels include every `(key, value)` of `labels`; `None` when no sample matches.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((sample_name, sample_labels, value)) = parse_sample(line) else {
            continue;
        };
        if sample_name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| sample_labels.iter().any(|(sk, sv)| sk == k && sv == v));
        if matches {
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// A sample's labels, `(name, unescaped value)` in order.
type Labels = Vec<(String, String)>;

/// One sample line: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &body[end? + 1..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_responses_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(plain),
            Ok(Reply {
                status: 200,
                body: "hello".into()
            })
        );
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked),
            Ok(Reply {
                status: 503,
                body: "abcde".into()
            })
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn metric_sums_match_labels() {
        let text = "# TYPE envoy_cluster_outlier_detection_ejections_enforced_total counter\n\
            envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name=\"outbound|8080||echo.default.svc.cluster.local\"} 1\n\
            envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name=\"outbound|8080||other\"} 4\n\
            istio_requests_total{response_code=\"503\",response_flags=\"UO\",x=\"a\\\"b\"} 2\n\
            istio_requests_total{response_code=\"200\",response_flags=\"-\"} 7\n";
        let cluster = [(
            "cluster_name",
            "outbound|8080||echo.default.svc.cluster.local",
        )];
        assert_eq!(
            metric_sum(
                text,
                "envoy_cluster_outlier_detection_ejections_enforced_total",
                &cluster
            ),
            Some(1.0)
        );
        assert_eq!(metric_sum(text, "istio_requests_total", &[]), Some(9.0));
        assert_eq!(
            metric_sum(text, "istio_requests_total", &[("response_code", "503")]),
            Some(2.0)
        );
        assert_eq!(
            metric_sum(text, "istio_requests_total", &[("x", "a\"b")]),
            Some(2.0)
        );
        assert_eq!(metric_sum(text, "missing", &[]), None);
    }
}
