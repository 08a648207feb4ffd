//! Request-target handling shared by both directions: where the authority comes from, and the
//! URI a forwarded request carries (origin-form, or absolute with the next hop's authority).

use http::header;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};

use super::errors::ProxyError;

/// The request's authority: the URI's (HTTP/2, absolute-form) or the Host header.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The path and query of `uri`, `/` when it has none.
pub fn origin_form(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The URI to forward with: `http://{authority}{path}` when an authority is given (HTTP/2 and
/// the pooled HTTP/1.1 clients need one), origin-form `{path}` otherwise.
pub fn forward_uri(uri: &Uri, authority: Option<Authority>) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    if let Some(authority) = authority {
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
    }
    parts.path_and_query = Some(origin_form(uri));
    Uri::from_parts(parts).map_err(|e| ProxyError::InvalidTarget(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_uri_keeps_path_and_query() {
        let uri: Uri = "http://reviews:9080/a/b?x=1".parse().unwrap();
        let absolute = forward_uri(&uri, Some(Authority::from_static("10.0.0.1:15006"))).unwrap();
        assert_eq!(absolute.to_string(), "http://10.0.0.1:15006/a/b?x=1");
        let origin = forward_uri(&uri, None).unwrap();
        assert_eq!(origin.to_string(), "/a/b?x=1");
        let bare: Uri = "http://reviews".parse().unwrap();
        assert_eq!(forward_uri(&bare, None).unwrap().to_string(), "/");
    }

    #[test]
    fn authority_prefers_the_uri_over_host() {
        let req = Request::get("http://a.example/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&req), Some("a.example"));
        let req = Request::get("/x")
            .header("host", "b.example")
            .body(())
            .unwrap();
        assert_eq!(request_authority(&req), Some("b.example"));
        let req = Request::get("/x").body(()).unwrap();
        assert_eq!(request_authority(&req), None);
    }
}
