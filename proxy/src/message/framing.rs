//! Requests whose framing or target could be read two ways are refused at the edge, before
//! anything is routed or forwarded (request smuggling, RFC 9112 sections 3.2, 6.1, 6.3).
//!
//! hyper's parser already refuses malformed Content-Length values (duplicates that disagree,
//! lists, signs), control bytes and bare CR in header names and values, obs-fold, whitespace
//! before a colon, unknown HTTP versions and oversized heads; what it accepts and re-frames,
//! this module refuses instead: Content-Length beside Transfer-Encoding, transfer codings
//! other than a single final `chunked`, several Host headers, an absolute-form target naming
//! another authority than Host, and heads with bare LF line ends (seen by the connection's
//! reader, [`crate::server::conn`]). Each refusal closes the connection.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Request};

use super::errors::ProxyError;

/// Checks one request's framing and target.
pub fn check<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let h = req.headers();
    if h.contains_key(TRANSFER_ENCODING) {
        transfer_codings(h)?;
        if h.contains_key(CONTENT_LENGTH) {
            return Err(ProxyError::BadRequest(
                "Content-Length and Transfer-Encoding together",
            ));
        }
    }
    let mut hosts = h.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    // Absolute form (`GET http://a/ HTTP/1.1`): its authority must be the Host's.
    if req.version() <= http::Version::HTTP_11
        && let (Some(target), Some(host)) = (req.uri().authority(), host)
        && !target
            .as_str()
            .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
    {
        return Err(ProxyError::BadRequest(
            "the absolute-form target names another authority than Host",
        ));
    }
    Ok(())
}

/// `Transfer-Encoding` must be exactly `chunked`: a coding after it cannot be framed, one
/// before it (gzip) would reach the app undecoded, as the proxy re-frames the body.
fn transfer_codings(h: &HeaderMap) -> Result<(), ProxyError> {
    let mut codings = h
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii())
        .filter(|c| !c.is_empty());
    let mut last_chunked = false;
    let mut others = false;
    let mut chunked = 0;
    for c in codings.by_ref() {
        last_chunked = c.eq_ignore_ascii_case(b"chunked");
        if last_chunked {
            chunked += 1;
        } else {
            others = true;
        }
    }
    if !last_chunked || chunked > 1 {
        return Err(ProxyError::BadRequest(
            "Transfer-Encoding must end with a single chunked",
        ));
    }
    if others {
        return Err(ProxyError::UnsupportedTransferCoding);
    }
    Ok(())
}

/// Whether `bytes` (read while a request head is awaited) hold a bare LF before the end of
/// the head; `prev` is the byte read just before them.
pub fn bare_lf_in_head(prev: u8, bytes: &[u8]) -> bool {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(bytes.len(), |p| p + 4);
    let head = &bytes[..end];
    let mut from = 0;
    while let Some(i) = head[from..].iter().position(|b| *b == b'\n') {
        let at = from + i;
        let before = if at == 0 { prev } else { head[at - 1] };
        if before != b'\r' {
            return true;
        }
        from = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)], target: &str) -> Request<()> {
        let mut b = Request::post(target);
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn transfer_encoding_must_be_a_single_final_chunked() {
        let te = |v: &str| check(&req(&[("host", "a"), ("transfer-encoding", v)], "/"));
        assert!(te("chunked").is_ok());
        assert!(te("Chunked").is_ok());
        assert!(matches!(
            te("gzip, chunked"),
            Err(ProxyError::UnsupportedTransferCoding)
        ));
        assert!(matches!(
            te("chunked, gzip"),
            Err(ProxyError::BadRequest(_))
        ));
        assert!(matches!(te("gzip"), Err(ProxyError::BadRequest(_))));
        assert!(matches!(
            te("chunked, chunked"),
            Err(ProxyError::BadRequest(_))
        ));
        let both = check(&req(
            &[
                ("host", "a"),
                ("transfer-encoding", "chunked"),
                ("content-length", "5"),
            ],
            "/",
        ));
        assert!(matches!(both, Err(ProxyError::BadRequest(_))));
    }

    #[test]
    fn one_host_and_it_agrees_with_an_absolute_target() {
        assert!(check(&req(&[("host", "a"), ("host", "b")], "/")).is_err());
        assert!(check(&req(&[("host", "reviews:9080")], "http://reviews:9080/x")).is_ok());
        assert!(check(&req(&[("host", "Reviews")], "http://reviews/x")).is_ok());
        assert!(check(&req(&[("host", "reviews")], "http://ratings/x")).is_err());
        assert!(
            check(&req(&[], "http://ratings/x")).is_ok(),
            "no Host: the target names it"
        );
    }

    #[test]
    fn bare_line_feeds_in_a_head_are_found_and_body_bytes_ignored() {
        assert!(!bare_lf_in_head(0, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(bare_lf_in_head(0, b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(bare_lf_in_head(0, b"GET / HTTP/1.1\r\nX: a\nb\r\n\r\n"));
        assert!(
            !bare_lf_in_head(b'\r', b"\nHost: a\r\n\r\n"),
            "CR at the end of the last read"
        );
        assert!(bare_lf_in_head(b'x', b"\nHost: a\r\n\r\n"));
        assert!(!bare_lf_in_head(
            0,
            b"POST / HTTP/1.1\r\n\r\nbody\nwith\nlines"
        ));
    }
}
