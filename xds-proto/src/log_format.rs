//! Envoy's access-log format strings (`%REQ(X-TENANT)% %RESPONSE_CODE%`), as an Istio
//! access-log provider's `logFormat` writes them: parsed the same way by the control plane,
//! which refuses a format Envoy would refuse, and by the sidecar, which renders it.
//!
//! A format is text with command operators: `%NAME%`, `%NAME(ARG)%`, optionally cut to a
//! length with `:N` (`%REQ(USER-AGENT):20%`). Header operators take `MAIN?ALTERNATIVE`
//! (`%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`). An argument may itself hold `%` and `)`
//! (`%START_TIME(%Y-%m-%d)%`, `%CEL(size(request.path))%`): it ends at the first `)` that is
//! followed by `%` or by `:N%`. A `%` that starts no operator is an error, as in Envoy.

use thiserror::Error;

/// Why a format string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// A `%` that starts no operator (`100%`), or an operator that never closes.
    #[error("no command operator at position {0} (a `%` must start one, e.g. %RESPONSE_CODE%)")]
    Unterminated(usize),
    /// A name Envoy does not know.
    #[error("unknown command operator %{0}%")]
    Unknown(String),
    /// An operator that needs an argument was given none, or one that takes none was given one.
    #[error("command operator %{name}% {problem}")]
    Argument {
        /// The operator.
        name: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// `:N` that is not a number.
    #[error("command operator %{0}%: the length after `:` is not a number")]
    Length(String),
}

/// A header operator's header and its alternative (`MAIN?ALT`), lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderPick {
    /// The header read first (`:path`, `x-tenant`).
    pub main: String,
    /// Read when the first is absent.
    pub alternative: Option<String>,
}

/// What an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `%REQ(X)%` / `%REQUEST_HEADER(X)%`: a request header or pseudo-header.
    RequestHeader(HeaderPick),
    /// `%REQ_WITHOUT_QUERY(X)%`: the same with any `?query` cut off.
    RequestHeaderWithoutQuery(HeaderPick),
    /// `%RESP(X)%` / `%RESPONSE_HEADER(X)%`.
    ResponseHeader(HeaderPick),
    /// `%TRAILER(X)%` / `%RESPONSE_TRAILER(X)%`.
    ResponseTrailer(HeaderPick),
    /// `%START_TIME%`, optionally with a strftime-like format.
    StartTime(Option<String>),
    /// `%ENVIRONMENT(X)%`: the sidecar's environment variable.
    Environment(String),
    /// `%CEL(EXPR)%`: a CEL expression over the exchange's attributes.
    Cel(String),
    /// An operator without argument (`%RESPONSE_CODE%`, `%UPSTREAM_HOST%`).
    Field(Field),
    /// An operator Envoy knows whose value a meshlite sidecar never has (dynamic metadata,
    /// filter state): rendered as absent.
    Unavailable(String),
}

/// The operators that take no argument and that a sidecar fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `%PROTOCOL%`.
    Protocol,
    /// `%RESPONSE_CODE%`.
    ResponseCode,
    /// `%RESPONSE_CODE_DETAILS%`.
    ResponseCodeDetails,
    /// `%RESPONSE_FLAGS%`.
    ResponseFlags,
    /// `%BYTES_RECEIVED%`.
    BytesReceived,
    /// `%BYTES_SENT%`.
    BytesSent,
    /// `%DURATION%`.
    Duration,
    /// `%UPSTREAM_HOST%`.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%` (and `_RAW`).
    UpstreamCluster,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`.
    UpstreamTransportFailureReason,
    /// `%UPSTREAM_PEER_URI_SAN%`.
    UpstreamPeerUriSan,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%` (and `DOWNSTREAM_DIRECT_REMOTE_ADDRESS`).
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    DownstreamRemoteAddressWithoutPort,
    /// `%DOWNSTREAM_PEER_URI_SAN%`.
    DownstreamPeerUriSan,
    /// `%TRACE_ID%`.
    TraceId,
    /// `%HOSTNAME%`: the machine's (the pod's) name.
    Hostname,
}

impl Field {
    /// The field of an operator without argument, by its Envoy name.
    fn named(name: &str) -> Option<Self> {
        use Field::*;
        Some(match name {
            "PROTOCOL" => Protocol,
            "RESPONSE_CODE" => ResponseCode,
            "RESPONSE_CODE_DETAILS" => ResponseCodeDetails,
            "RESPONSE_FLAGS" => ResponseFlags,
            "BYTES_RECEIVED" => BytesReceived,
            "BYTES_SENT" => BytesSent,
            "DURATION" => Duration,
            "UPSTREAM_HOST" => UpstreamHost,
            "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => UpstreamCluster,
            "UPSTREAM_TRANSPORT_FAILURE_REASON" => UpstreamTransportFailureReason,
            "UPSTREAM_PEER_URI_SAN" => UpstreamPeerUriSan,
            "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
                DownstreamRemoteAddress
            }
            "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT"
            | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => DownstreamRemoteAddressWithoutPort,
            "DOWNSTREAM_PEER_URI_SAN" => DownstreamPeerUriSan,
            "TRACE_ID" => TraceId,
            "HOSTNAME" => Hostname,
            _ => return None,
        })
    }
}

/// Operators Envoy accepts whose values a meshlite sidecar does not have; a format using
/// them is accepted (users' Istio YAML keeps working) and they render as absent.
const UNAVAILABLE: &[&str] = &[
    "ROUTE_NAME",
    "REQUESTED_SERVER_NAME",
    "DOWNSTREAM_LOCAL_ADDRESS",
    "UPSTREAM_LOCAL_ADDRESS",
    "RESPONSE_DURATION",
    "CONNECTION_TERMINATION_DETAILS",
    "REQUEST_DURATION",
    "REQUEST_TX_DURATION",
    "RESPONSE_TX_DURATION",
    "RESPONSE_FLAGS_LONG",
    "UPSTREAM_REQUEST_ATTEMPT_COUNT",
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "UPSTREAM_REMOTE_ADDRESS",
    "UPSTREAM_PROTOCOL",
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_LOCAL_PORT",
    "DOWNSTREAM_LOCAL_URI_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_PEER_SUBJECT",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_TLS_VERSION",
    "DOWNSTREAM_TLS_CIPHER",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_PEER_FINGERPRINT_256",
    "DOWNSTREAM_PEER_SERIAL",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_PEER_SUBJECT",
    "CONNECTION_ID",
    "STREAM_ID",
    "UPSTREAM_CONNECTION_ID",
    "DYNAMIC_METADATA",
    "CLUSTER_METADATA",
    "UPSTREAM_METADATA",
    "FILTER_STATE",
    "UPSTREAM_FILTER_STATE",
    "METADATA",
    "VIRTUAL_CLUSTER_NAME",
    "ACCESS_LOG_TYPE",
    "EMIT_TIME",
];

/// Istio's default text line (MeshConfig `accessLogEncoding: TEXT` without a format, and the
/// body of an OpenTelemetry record whose provider sets no `logFormat.text`).
pub const ISTIO_DEFAULT_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
    %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
    %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% \
    %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \
    \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" \
    %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
    %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// One piece of a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text written as it is.
    Text(String),
    /// An operator, its value cut to `max_len` bytes when set.
    Operator {
        /// What it reads.
        command: Command,
        /// `:N`.
        max_len: Option<usize>,
    },
}

/// Parses a format string into its pieces.
pub fn parse(format: &str) -> Result<Vec<Piece>, FormatError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    let mut at = 0;
    while let Some(i) = rest.find('%') {
        text.push_str(&rest[..i]);
        let (used, piece) = operator(&rest[i + 1..]).ok_or(FormatError::Unterminated(at + i))?;
        let piece = piece?;
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(piece);
        at += i + 1 + used;
        rest = &rest[i + 1 + used..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// The operator at the start of `s` (just after its opening `%`): the bytes it used,
/// through its closing `%`, and the piece; `None` when no operator starts here.
fn operator(s: &str) -> Option<(usize, Result<Piece, FormatError>)> {
    let name_len = s
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(s.len());
    if name_len == 0 {
        return None;
    }
    let name = &s[..name_len];
    let after = &s[name_len..];
    let (arg, after) = match after.strip_prefix('(') {
        None => (None, after),
        Some(inner) => {
            // The argument ends at the first `)` followed by `%` or `:N%`.
            let close = inner.match_indices(')').map(|(i, _)| i).find(|&i| {
                let tail = &inner[i + 1..];
                tail.starts_with('%') || length_then_close(tail).is_some()
            })?;
            (Some(&inner[..close]), &inner[close + 1..])
        }
    };
    let (max_len, closing) = if after.starts_with('%') {
        (None, 1)
    } else {
        let (digits, used) = length_then_close(after)?;
        match digits.parse::<usize>() {
            Ok(n) => (Some(n), used),
            Err(_) => {
                return Some((0, Err(FormatError::Length(name.to_string()))));
            }
        }
    };
    let used = s.len() - after.len() + closing;
    Some((
        used,
        command(name, arg).map(|command| Piece::Operator { command, max_len }),
    ))
}

/// `:N%` at the start of `s`: the digits and the bytes used.
fn length_then_close(s: &str) -> Option<(&str, usize)> {
    let digits = s.strip_prefix(':')?;
    let n = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    (n > 0 && digits[n..].starts_with('%')).then(|| (&digits[..n], n + 2))
}

fn command(name: &str, arg: Option<&str>) -> Result<Command, FormatError> {
    let needs = |problem| FormatError::Argument {
        name: name.to_string(),
        problem,
    };
    let header = |arg: Option<&str>| -> Result<HeaderPick, FormatError> {
        let arg = arg
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| needs("needs a header name, e.g. %REQ(X-REQUEST-ID)%"))?;
        let (main, alternative) = match arg.split_once('?') {
            Some((m, a)) => (m, Some(a.trim().to_ascii_lowercase())),
            None => (arg, None),
        };
        Ok(HeaderPick {
            main: main.trim().to_ascii_lowercase(),
            alternative,
        })
    };
    Ok(match name {
        "REQ" | "REQUEST_HEADER" => Command::RequestHeader(header(arg)?),
        "REQ_WITHOUT_QUERY" => Command::RequestHeaderWithoutQuery(header(arg)?),
        "RESP" | "RESPONSE_HEADER" => Command::ResponseHeader(header(arg)?),
        "TRAILER" | "RESPONSE_TRAILER" => Command::ResponseTrailer(header(arg)?),
        "START_TIME" => Command::StartTime(arg.filter(|a| !a.is_empty()).map(str::to_string)),
        "ENVIRONMENT" => Command::Environment(
            arg.filter(|a| !a.is_empty())
                .ok_or_else(|| needs("needs a variable name"))?
                .to_string(),
        ),
        "CEL" => Command::Cel(
            arg.filter(|a| !a.trim().is_empty())
                .ok_or_else(|| needs("needs an expression"))?
                .to_string(),
        ),
        _ if UNAVAILABLE.contains(&name) => Command::Unavailable(name.to_string()),
        _ => match Field::named(name) {
            Some(f) if arg.is_none() => Command::Field(f),
            Some(_) => return Err(needs("takes no argument")),
            None => return Err(FormatError::Unknown(name.to_string())),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(command: Command) -> Piece {
        Piece::Operator {
            command,
            max_len: None,
        }
    }

    fn req(main: &str, alternative: Option<&str>) -> Command {
        Command::RequestHeader(HeaderPick {
            main: main.into(),
            alternative: alternative.map(str::to_string),
        })
    }

    #[test]
    fn text_and_operators_alternate() {
        let p = parse("[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%\" %RESPONSE_CODE%\n")
            .unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Text("[".into()),
                op(Command::StartTime(None)),
                Piece::Text("] \"".into()),
                op(req(":method", None)),
                Piece::Text(" ".into()),
                op(req("x-envoy-original-path", Some(":path"))),
                Piece::Text("\" ".into()),
                op(Command::Field(Field::ResponseCode)),
                Piece::Text("\n".into()),
            ]
        );
    }

    #[test]
    fn lengths_and_arguments_holding_percent_and_parentheses() {
        assert_eq!(
            parse("%REQ(USER-AGENT):10%").unwrap(),
            vec![Piece::Operator {
                command: req("user-agent", None),
                max_len: Some(10),
            }]
        );
        assert_eq!(
            parse("%START_TIME(%Y-%m-%dT%H:%M:%S)%").unwrap(),
            vec![op(Command::StartTime(Some("%Y-%m-%dT%H:%M:%S".into())))]
        );
        assert_eq!(
            parse("%CEL(size(request.headers['x-a']) > 1)%:%CEL(request.path):5%").unwrap(),
            vec![
                op(Command::Cel("size(request.headers['x-a']) > 1".into())),
                Piece::Text(":".into()),
                Piece::Operator {
                    command: Command::Cel("request.path".into()),
                    max_len: Some(5),
                },
            ]
        );
        assert_eq!(
            parse("%DYNAMIC_METADATA(istio.mixer:status)%").unwrap(),
            vec![op(Command::Unavailable("DYNAMIC_METADATA".into()))]
        );
        assert_eq!(
            parse("%UPSTREAM_CLUSTER_RAW%").unwrap(),
            vec![op(Command::Field(Field::UpstreamCluster))]
        );
    }

    #[test]
    fn what_envoy_refuses_is_refused() {
        assert_eq!(parse("100% done"), Err(FormatError::Unterminated(3)));
        assert_eq!(parse("a %RESPONSE_CODE"), Err(FormatError::Unterminated(2)));
        assert_eq!(parse("%REQ(X-A%"), Err(FormatError::Unterminated(0)));
        assert_eq!(
            parse("%NOT_AN_OPERATOR%"),
            Err(FormatError::Unknown("NOT_AN_OPERATOR".into()))
        );
        assert!(matches!(parse("%REQ%"), Err(FormatError::Argument { .. })));
        assert!(matches!(
            parse("%REQ()%"),
            Err(FormatError::Argument { .. })
        ));
        assert!(matches!(
            parse("%RESPONSE_CODE(X)%"),
            Err(FormatError::Argument { .. })
        ));
        assert!(matches!(
            parse("%BYTES_SENT:99999999999999999999999%"),
            Err(FormatError::Length(_))
        ));
        assert_eq!(parse("").unwrap(), vec![]);
        assert!(parse(ISTIO_DEFAULT_TEXT).is_ok());
        assert_eq!(parse("plain").unwrap(), vec![Piece::Text("plain".into())]);
    }
}
