//! The answers the proxy gives for OIDC documents: cacheable by anyone
//! (`public, max-age`), validated by a strong ETag, open to any origin, and
//! never carrying cookies or "do not cache" headers.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use super::cache::Published;
use super::style::Style;
use crate::body::{self, ProxyBody};
use crate::compress;
use crate::headers;

const ALLOWED: &str = "GET, HEAD, OPTIONS";

/// 200 with the document, or 304 when the client already holds it. With
/// compression on, the copy precompressed in the client's preferred encoding.
pub(crate) fn document(method: &Method, request: &HeaderMap, doc: &Published, style: &Style) -> Response<ProxyBody> {
    // One walk over the request's fields for both: most verifiers send neither.
    const ENCODINGS: u32 = 1 << 0;
    const VALIDATOR: u32 = 1 << 1;
    let asks = headers::present(request, &[header::ACCEPT_ENCODING, header::IF_NONE_MATCH]);
    let choice = if style.compression && asks & ENCODINGS != 0 {
        compress::negotiate(request)
    } else {
        None
    };
    let rep = doc.representation(choice);
    if asks & VALIDATOR != 0 && if_none_match(request, rep.etag) {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        style.validators(resp.headers_mut(), rep.etag);
        return resp;
    }
    let body = if method == Method::HEAD {
        body::empty()
    } else {
        body::full(rep.body.clone())
    };
    let mut resp = Response::new(body);
    *resp.headers_mut() = rep.head.clone();
    resp
}

/// RFC 9110 §13.1.2: weak comparison, `*` matches anything held.
fn if_none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let asked = request.get_all(header::IF_NONE_MATCH);
    if asked.iter().next().is_none() {
        return false;
    }
    let ours = etag.to_str().unwrap_or_default();
    let ours = ours.strip_prefix("W/").unwrap_or(ours);
    asked
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

/// CORS preflight: any origin may read the documents.
pub(crate) fn preflight(request: &HeaderMap) -> Response<ProxyBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED));
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
    resp
}

pub(crate) fn method_not_allowed() -> Response<ProxyBody> {
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "only GET, HEAD and OPTIONS",
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
    resp
}

/// 503 when no good copy may be served: never cached, retried soon when a
/// first copy is still being fetched.
pub(crate) fn unavailable(document: &str, retry_after: Option<Duration>) -> Response<ProxyBody> {
    let description = format!("the {document} document could not be fetched from GitLab");
    let mut resp = json(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &description);
    if let Some(after) = retry_after {
        let secs = after.as_secs().max(1);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn json(status: StatusCode, error: &str, description: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    let mut resp = Response::new(body::full(body.to_string()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Encoding;
    use tokio::time::Instant;

    fn style(compression: bool) -> Style {
        Style::new(Duration::from_secs(60), compression)
    }

    /// `{"keys":[]}` tagged `"abc"`, as published with `style`.
    fn doc_with(style: &Style) -> Published {
        let etag = HeaderValue::from_static("\"abc\"");
        let body = bytes::Bytes::from_static(br#"{"keys":[]}"#);
        Published {
            head: style.head(body.len(), &etag, None),
            body,
            etag,
            fetched_at: Instant::now(),
            encoded: std::sync::Arc::new([]),
        }
    }

    fn doc() -> Published {
        doc_with(&style(true))
    }

    /// The answer with `max-age=60`, from a document published the same way.
    fn answer(method: &Method, request: &HeaderMap, doc: &Published, compression: bool) -> Response<ProxyBody> {
        document(method, request, doc, &style(compression))
    }

    fn inm(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn cacheable_headers_on_200() {
        let hour = Style::new(Duration::from_secs(3600), true);
        let resp = document(&Method::GET, &HeaderMap::new(), &doc_with(&hour), &hour);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::CACHE_CONTROL], "public, max-age=3600");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(h[header::ETAG], "\"abc\"");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::CONTENT_LENGTH], "11");
        assert_eq!(h[header::VARY], "Accept-Encoding");
        for never in [header::SET_COOKIE, header::PRAGMA, header::CONTENT_ENCODING] {
            assert!(!h.contains_key(&never), "{never}");
        }
        let off = answer(&Method::GET, &HeaderMap::new(), &doc_with(&style(false)), false);
        assert!(!off.headers().contains_key(header::VARY));
        assert_eq!(off.headers()[header::CONTENT_LENGTH], "11");
    }

    #[test]
    fn precompressed_copies_are_their_own_representations() {
        let mut d = doc();
        let etag = HeaderValue::from_static("\"abc-gzip\"");
        d.encoded = std::sync::Arc::new([super::super::cache::Encoded {
            encoding: Encoding::Gzip,
            body: bytes::Bytes::from_static(b"gz"),
            head: style(true).head(2, &etag, Some(Encoding::Gzip)),
            etag,
        }]);
        let gzip = |v: &str| {
            let mut h = inm(v);
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
            h
        };
        let resp = answer(&Method::GET, &gzip("\"other\""), &d, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(resp.headers()[header::ETAG], "\"abc-gzip\"");
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "2");
        // The identity tag does not validate the gzip copy, and vice versa.
        assert_eq!(
            answer(&Method::GET, &gzip("\"abc\""), &d, true).status(),
            StatusCode::OK
        );
        assert_eq!(
            answer(&Method::GET, &gzip("\"abc-gzip\""), &d, true).status(),
            StatusCode::NOT_MODIFIED
        );
        // br was asked for too, but no br copy is held: gzip it is. Off: identity.
        let off = answer(&Method::GET, &gzip("\"x\""), &d, false);
        assert!(!off.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(off.headers()[header::ETAG], "\"abc\"");
    }

    #[test]
    fn conditional_requests() {
        for (given, hit) in [
            ("\"abc\"", true),
            ("W/\"abc\"", true),
            ("\"x\", \"abc\"", true),
            ("*", true),
            ("\"abd\"", false),
            ("abc", false),
        ] {
            let resp = answer(&Method::GET, &inm(given), &doc(), true);
            let want = if hit { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
            assert_eq!(resp.status(), want, "{given}");
            assert_eq!(resp.headers()[header::ETAG], "\"abc\"");
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "public, max-age=60");
            assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
            assert_eq!(resp.headers()[header::VARY], "Accept-Encoding");
            if hit {
                // A 304 carries no body, so nothing that describes one.
                for absent in [
                    header::CONTENT_LENGTH,
                    header::CONTENT_TYPE,
                    header::X_CONTENT_TYPE_OPTIONS,
                ] {
                    assert!(!resp.headers().contains_key(&absent), "{absent}");
                }
            }
        }
    }

    #[test]
    fn head_has_headers_without_body() {
        use http_body::Body;
        let resp = answer(&Method::HEAD, &HeaderMap::new(), &doc(), true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "11");
        assert!(resp.body().is_end_stream());
    }

    #[test]
    fn errors_are_never_cached() {
        let resp = unavailable("keys", Some(Duration::from_secs(3)));
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        assert!(!unavailable("keys", None).headers().contains_key(header::RETRY_AFTER));
        let resp = method_not_allowed();
        assert_eq!(resp.headers()[header::ALLOW], "GET, HEAD, OPTIONS");
    }

    #[test]
    fn preflight_allows_any_origin() {
        let mut req = HeaderMap::new();
        req.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("x-requested-with"),
        );
        let resp = preflight(&req);
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(resp.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-requested-with");
    }
}
