//! Trace context in request headers: W3C Trace Context (`traceparent`, `tracestate`) and
//! Zipkin's B3 (the `x-b3-*` headers and the single `b3` header), read and written as
//! SEMANTICS 7.3 states them.
//!
//! Reading is strict where the specifications are: W3C ids are lowercase hex of exactly 32
//! and 16 digits, neither all zeros, version `ff` is invalid; B3 trace ids are 16 or 32 hex
//! digits, span ids 16. A header that breaks a rule is ignored as if absent (W3C: the
//! receiver restarts the trace), never an error for the request. When several formats
//! arrive, a valid `traceparent` wins, then `b3`, then the `x-b3-*` set. Each format that
//! arrived is written back with this hop's span id, so whatever the application forwards
//! stays consistent.
//!
//! Nothing here allocates to read; writing formats the ids into fixed stack buffers.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// `traceparent` (W3C).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate` (W3C), forwarded unchanged.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3`: the single-header form of B3.
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1`: debug, which implies sampled).
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A 128-bit trace id (a 64-bit B3 id is kept in the low half).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> Self {
        let v = fastrand::u128(1..);
        Self(v.to_be_bytes())
    }

    /// Whether the id fits in 64 bits (a B3 64-bit id).
    pub fn is_64bit(&self) -> bool {
        self.0[..8].iter().all(|b| *b == 0)
    }

    /// Lowercase hex, 32 digits.
    pub fn hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        write_hex(&self.0, &mut out);
        out
    }

    /// Lowercase hex as a string (exporters).
    pub fn to_hex_string(&self) -> String {
        String::from_utf8_lossy(&self.hex()).into_owned()
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> Self {
        Self(fastrand::u64(1..).to_be_bytes())
    }

    /// Lowercase hex, 16 digits.
    pub fn hex(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        write_hex(&self.0, &mut out);
        out
    }

    /// Lowercase hex as a string (exporters).
    pub fn to_hex_string(&self) -> String {
        String::from_utf8_lossy(&self.hex()).into_owned()
    }
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// One lowercase hex digit's value.
fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from `2 * N` lowercase hex digits.
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (lower_hex_digit(pair[0])? << 4) | lower_hex_digit(pair[1])?;
    }
    Some(out)
}

/// A B3 trace id: 16 or 32 lowercase hex digits, not all zero.
fn b3_trace_id(s: &[u8]) -> Option<TraceId> {
    let id = match s.len() {
        16 => {
            let low = decode_hex::<8>(s)?;
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        32 => decode_hex::<16>(s)?,
        _ => return None,
    };
    (id != [0; 16]).then_some(TraceId(id))
}

/// A span id: 16 lowercase hex digits, not all zero.
fn span_id(s: &[u8]) -> Option<SpanId> {
    decode_hex::<8>(s).filter(|id| *id != [0; 8]).map(SpanId)
}

/// Which formats a request carried, so each is written back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats {
    /// `traceparent` (and `tracestate`).
    pub w3c: bool,
    /// `b3`.
    pub b3_single: bool,
    /// `x-b3-*`.
    pub b3_multi: bool,
}

impl Formats {
    /// W3C only.
    pub const W3C: Formats = Formats {
        w3c: true,
        b3_single: false,
        b3_multi: false,
    };
    /// The `x-b3-*` headers only.
    pub const B3_MULTI: Formats = Formats {
        w3c: false,
        b3_single: false,
        b3_multi: true,
    };

    /// Both sets of formats.
    pub fn union(self, other: Formats) -> Formats {
        Formats {
            w3c: self.w3c || other.w3c,
            b3_single: self.b3_single || other.b3_single,
            b3_multi: self.b3_multi || other.b3_multi,
        }
    }
}

/// What the caller's headers said about the trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The trace and the caller's span, when a valid context arrived.
    pub parent: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision; `None`: none was made (B3 "defer", or no context).
    pub sampled: Option<bool>,
    /// B3 debug (`x-b3-flags: 1`, `b3: ...-d`): sampled, and said so again downstream.
    pub debug: bool,
    /// The formats that arrived (valid or not: an invalid one is rewritten too).
    pub formats: Formats,
}

/// A valid `traceparent`: `(trace id, parent id, sampled)`.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
    if value.len() < 55 {
        return None;
    }
    let version = decode_hex::<1>(&value[..2])?[0];
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append fields after a dash.
    if (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace = decode_hex::<16>(&value[3..35]).filter(|t| *t != [0; 16])?;
    let parent = span_id(&value[36..52])?;
    let flags = decode_hex::<1>(&value[53..55])?[0];
    Some((TraceId(trace), parent, flags & 1 == 1))
}

/// What a valid single `b3` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct B3Single {
    /// The trace and span; `None` for a bare decision (`0`, `1`, `d`).
    pub ids: Option<(TraceId, SpanId)>,
    /// The decision, when one is given.
    pub sampled: Option<bool>,
    /// `d`: debug.
    pub debug: bool,
}

/// A valid single `b3` header.
pub fn parse_b3_single(value: &[u8]) -> Option<B3Single> {
    let decision = |s: &[u8]| match s {
        b"0" => Some((Some(false), false)),
        b"1" => Some((Some(true), false)),
        b"d" => Some((Some(true), true)),
        _ => None,
    };
    let mut parts = value.split(|b| *b == b'-');
    let first = parts.next()?;
    let Some(second) = parts.next() else {
        let (sampled, debug) = decision(first)?;
        return Some(B3Single {
            ids: None,
            sampled,
            debug,
        });
    };
    let trace = b3_trace_id(first)?;
    let span = span_id(second)?;
    let (sampled, debug) = match parts.next() {
        None => (None, false),
        Some(d) => decision(d)?,
    };
    if let Some(parent) = parts.next() {
        span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(B3Single {
        ids: Some((trace, span)),
        sampled,
        debug,
    })
}

/// Reads the trace context a request carries.
pub fn extract(headers: &HeaderMap) -> Extracted {
    let mut out = Extracted::default();
    let traceparent = headers.get(&TRACEPARENT);
    let b3 = headers.get(&B3);
    let b3_trace = headers.get(&X_B3_TRACEID);
    let b3_sampled = headers.get(&X_B3_SAMPLED);
    let b3_flags = headers.get(&X_B3_FLAGS);
    out.formats = Formats {
        w3c: traceparent.is_some(),
        b3_single: b3.is_some(),
        b3_multi: b3_trace.is_some() || b3_sampled.is_some() || b3_flags.is_some(),
    };
    if let Some((trace, parent, sampled)) =
        traceparent.and_then(|v| parse_traceparent(v.as_bytes()))
    {
        out.parent = Some((trace, parent));
        out.sampled = Some(sampled);
        return out;
    }
    if let Some(single) = b3.and_then(|v| parse_b3_single(v.as_bytes())) {
        out.parent = single.ids;
        out.sampled = single.sampled;
        out.debug = single.debug;
        return out;
    }
    if out.formats.b3_multi {
        let ids = b3_trace.and_then(|t| b3_trace_id(t.as_bytes())).zip(
            headers
                .get(&X_B3_SPANID)
                .and_then(|s| span_id(s.as_bytes())),
        );
        out.debug = b3_flags.is_some_and(|f| f.as_bytes() == b"1");
        out.sampled = if out.debug {
            Some(true)
        } else {
            match b3_sampled.map(HeaderValue::as_bytes) {
                Some(b"1" | b"true") => Some(true),
                Some(b"0" | b"false") => Some(false),
                _ => None,
            }
        };
        out.parent = ids;
    }
    out
}

/// The context this hop passes on: its own span (or, unsampled, a fresh id carrying the
/// decision) in the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The trace.
    pub trace: TraceId,
    /// This hop's span: the parent of the next hop's.
    pub span: SpanId,
    /// This hop's own parent, written as `x-b3-parentspanid`.
    pub parent: Option<SpanId>,
    /// The sampling decision.
    pub sampled: bool,
    /// B3 debug, passed on.
    pub debug: bool,
}

/// `00-<trace>-<span>-<flags>`.
pub fn format_traceparent(trace: &TraceId, span: &SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [0u8; 55];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(&trace.hex());
    out[35] = b'-';
    out[36..52].copy_from_slice(&span.hex());
    out[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    out
}

/// A header value of hex digits and dashes (always valid).
fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A B3 trace id as written: 16 digits for a 64-bit id, else 32.
fn b3_trace_value(trace: &TraceId) -> HeaderValue {
    let hex = trace.hex();
    value(if trace.is_64bit() { &hex[16..] } else { &hex })
}

/// Writes `ctx` in each of `formats`, replacing what the request carried in them.
pub fn inject(headers: &mut HeaderMap, ctx: &Outgoing, formats: Formats) {
    if formats.w3c {
        headers.insert(
            TRACEPARENT.clone(),
            value(&format_traceparent(&ctx.trace, &ctx.span, ctx.sampled)),
        );
    }
    if formats.b3_single {
        let mut buf = [0u8; 32 + 1 + 16 + 2 + 1 + 16];
        let trace = ctx.trace.hex();
        let trace: &[u8] = if ctx.trace.is_64bit() {
            &trace[16..]
        } else {
            &trace
        };
        let mut n = 0;
        for part in [trace, b"-", &ctx.span.hex()] {
            buf[n..n + part.len()].copy_from_slice(part);
            n += part.len();
        }
        let decision: &[u8] = match (ctx.debug, ctx.sampled) {
            (true, _) => b"-d",
            (false, true) => b"-1",
            (false, false) => b"-0",
        };
        buf[n..n + 2].copy_from_slice(decision);
        n += 2;
        if let Some(parent) = &ctx.parent {
            buf[n] = b'-';
            buf[n + 1..n + 17].copy_from_slice(&parent.hex());
            n += 17;
        }
        headers.insert(B3.clone(), value(&buf[..n]));
    }
    if formats.b3_multi {
        headers.insert(X_B3_TRACEID.clone(), b3_trace_value(&ctx.trace));
        headers.insert(X_B3_SPANID.clone(), value(&ctx.span.hex()));
        match &ctx.parent {
            Some(p) => {
                headers.insert(X_B3_PARENTSPANID.clone(), value(&p.hex()));
            }
            None => {
                headers.remove(&X_B3_PARENTSPANID);
            }
        }
        if ctx.debug {
            // Debug implies sampled; B3 sends no `x-b3-sampled` beside it.
            headers.insert(X_B3_FLAGS.clone(), HeaderValue::from_static("1"));
            headers.remove(&X_B3_SAMPLED);
        } else {
            headers.remove(&X_B3_FLAGS);
            headers.insert(
                X_B3_SAMPLED.clone(),
                HeaderValue::from_static(if ctx.sampled { "1" } else { "0" }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn tp(s: &str) -> Option<(TraceId, SpanId, bool)> {
        parse_traceparent(s.as_bytes())
    }

    #[test]
    fn a_valid_traceparent_gives_its_ids_and_decision() {
        let (trace, span, sampled) = tp(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
        assert_eq!(trace.to_hex_string(), TRACE);
        assert_eq!(span.to_hex_string(), SPAN);
        assert!(sampled);
        assert!(!tp(&format!("00-{TRACE}-{SPAN}-00")).unwrap().2);
        // Only bit 0 of the flags is the decision.
        assert!(!tp(&format!("00-{TRACE}-{SPAN}-02")).unwrap().2);
        assert!(tp(&format!("00-{TRACE}-{SPAN}-03")).unwrap().2);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let zeros32 = "0".repeat(32);
        let zeros16 = "0".repeat(16);
        for bad in [
            // All-zero ids.
            format!("00-{zeros32}-{SPAN}-01"),
            format!("00-{TRACE}-{zeros16}-01"),
            // Version ff.
            format!("ff-{TRACE}-{SPAN}-01"),
            // Uppercase and non-hex digits.
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-00f067aa0ba902bz-01"),
            format!("0x-{TRACE}-{SPAN}-01"),
            format!("00-{TRACE}-{SPAN}-0g"),
            // Wrong lengths.
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}0-{SPAN}-01"),
            format!("00-{TRACE}-{}-01", &SPAN[1..]),
            format!("00-{TRACE}-{SPAN}-1"),
            // Version 00 has nothing after the flags.
            format!("00-{TRACE}-{SPAN}-01-extra"),
            // Wrong separators.
            format!("00_{TRACE}-{SPAN}-01"),
            String::new(),
        ] {
            assert_eq!(tp(&bad), None, "{bad}");
            let got = extract(&headers(&[("traceparent", &bad)]));
            assert_eq!(got.parent, None, "{bad}");
            assert_eq!(got.sampled, None, "{bad}");
            assert!(got.formats.w3c, "an invalid traceparent is still rewritten");
        }
        // A later version may append fields after a dash.
        assert!(tp(&format!("01-{TRACE}-{SPAN}-01-what-ever")).is_some());
        assert!(tp(&format!("01-{TRACE}-{SPAN}-01x")).is_none());
    }

    #[test]
    fn b3_multi_headers_are_read_with_64_and_128_bit_ids() {
        let got = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(got.parent.unwrap().0.to_hex_string(), TRACE);
        assert_eq!(got.sampled, Some(true));
        assert_eq!(got.formats, Formats::B3_MULTI);
        let got = extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ]));
        let trace = got.parent.unwrap().0;
        assert!(trace.is_64bit());
        assert_eq!(trace.to_hex_string(), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(got.sampled, Some(false));
        // No decision: deferred to this hop.
        let got = extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
        assert!(got.parent.is_some());
        assert_eq!(got.sampled, None);
        // Debug implies sampled.
        let got = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-flags", "1"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!((got.sampled, got.debug), (Some(true), true));
        // A decision alone.
        let got = extract(&headers(&[("x-b3-sampled", "0")]));
        assert_eq!((got.parent, got.sampled), (None, Some(false)));
    }

    #[test]
    fn invalid_b3_ids_are_ignored() {
        for (trace, span) in [
            ("0000000000000000", SPAN),
            (TRACE, "0000000000000000"),
            ("a3ce929d0e0e473", SPAN),
            ("a3ce929d0e0e47360", SPAN),
            (TRACE, "00f067aa0ba902b"),
            ("a3ce929d0e0e473g", SPAN),
            ("A3CE929D0E0E4736", SPAN),
        ] {
            let got = extract(&headers(&[
                ("x-b3-traceid", trace),
                ("x-b3-spanid", span),
                ("x-b3-sampled", "1"),
            ]));
            assert_eq!(got.parent, None, "{trace} {span}");
        }
    }

    #[test]
    fn the_single_b3_header_is_read() {
        let parent = "05e3ac9a4f6e3b90";
        let got = parse_b3_single(format!("{TRACE}-{SPAN}-1-{parent}").as_bytes()).unwrap();
        assert_eq!(got.ids.unwrap().1.to_hex_string(), SPAN);
        assert_eq!((got.sampled, got.debug), (Some(true), false));
        let got = parse_b3_single(format!("{TRACE}-{SPAN}").as_bytes()).unwrap();
        assert!(got.ids.is_some() && got.sampled.is_none());
        let ids = got.ids;
        assert_eq!(
            parse_b3_single(format!("{TRACE}-{SPAN}-d").as_bytes()),
            Some(B3Single {
                ids,
                sampled: Some(true),
                debug: true
            })
        );
        let decision = |sampled| B3Single {
            ids: None,
            sampled: Some(sampled),
            debug: false,
        };
        assert_eq!(parse_b3_single(b"0"), Some(decision(false)));
        assert_eq!(parse_b3_single(b"1"), Some(decision(true)));
        for bad in [
            format!("{TRACE}-{SPAN}-x"),
            format!("{TRACE}-{SPAN}-1-{parent}-more"),
            format!("{TRACE}-{SPAN}-1-0000000000000000"),
            TRACE.to_string(),
            "2".to_string(),
            String::new(),
        ] {
            assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad}");
        }
        let got = extract(&headers(&[("b3", "0")]));
        assert_eq!((got.parent, got.sampled), (None, Some(false)));
        assert!(got.formats.b3_single);
    }

    #[test]
    fn a_valid_traceparent_wins_over_b3() {
        let got = extract(&headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-00")),
            ("b3", "a3ce929d0e0e4736-05e3ac9a4f6e3b90-1"),
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "05e3ac9a4f6e3b90"),
        ]));
        assert_eq!(got.parent.unwrap().0.to_hex_string(), TRACE);
        assert_eq!(got.sampled, Some(false));
        assert!(got.formats.w3c && got.formats.b3_single && got.formats.b3_multi);
        // An invalid one does not: b3 is read instead.
        let got = extract(&headers(&[
            ("traceparent", "ff-garbage"),
            ("b3", "a3ce929d0e0e4736-05e3ac9a4f6e3b90-1"),
        ]));
        assert_eq!(got.parent.unwrap().1.to_hex_string(), "05e3ac9a4f6e3b90");
        assert_eq!(got.sampled, Some(true));
    }

    #[test]
    fn injected_headers_read_back_as_this_hops_span() {
        let ctx = Outgoing {
            trace: TraceId::random(),
            span: SpanId::random(),
            parent: Some(SpanId::random()),
            sampled: true,
            debug: false,
        };
        let all = Formats {
            w3c: true,
            b3_single: true,
            b3_multi: true,
        };
        let mut h = headers(&[("x-b3-flags", "1"), ("b3", "garbage")]);
        inject(&mut h, &ctx, all);
        let parent = ctx.parent.unwrap().to_hex_string();
        assert_eq!(
            h["traceparent"],
            format!(
                "00-{}-{}-01",
                ctx.trace.to_hex_string(),
                ctx.span.to_hex_string()
            )
        );
        assert_eq!(
            h["b3"],
            format!(
                "{}-{}-1-{parent}",
                ctx.trace.to_hex_string(),
                ctx.span.to_hex_string()
            )
        );
        assert_eq!(h["x-b3-parentspanid"], parent);
        assert_eq!(h["x-b3-sampled"], "1");
        assert!(!h.contains_key("x-b3-flags"));
        for only in [
            Formats::W3C,
            Formats::B3_MULTI,
            Formats {
                b3_single: true,
                ..Formats::default()
            },
        ] {
            let mut h = HeaderMap::new();
            inject(&mut h, &ctx, only);
            let got = extract(&h);
            assert_eq!(got.parent, Some((ctx.trace, ctx.span)), "{only:?}");
            assert_eq!(got.sampled, Some(true));
            assert_eq!(got.formats, only);
        }
        // A 64-bit B3 trace id stays 64-bit; an unsampled debug-free decision says 0.
        let short = Outgoing {
            trace: TraceId(u128::from(u64::MAX).to_be_bytes()),
            parent: None,
            sampled: false,
            ..ctx
        };
        let mut h = HeaderMap::new();
        inject(&mut h, &short, Formats::B3_MULTI);
        assert_eq!(h["x-b3-traceid"], "ffffffffffffffff");
        assert_eq!(h["x-b3-sampled"], "0");
        assert!(!h.contains_key("x-b3-parentspanid"));
    }

    #[test]
    fn random_ids_are_never_zero() {
        for _ in 0..1000 {
            assert_ne!(TraceId::random().0, [0; 16]);
            assert_ne!(SpanId::random().0, [0; 8]);
        }
    }
}
