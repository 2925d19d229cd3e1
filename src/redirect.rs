//! `--redirect-http`: the plain listener sends every request to the same URL
//! over https, as omnibus nginx does with `redirect_http_to_https`.

use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::{self, ProxyBody};

#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The https external URL's authority, when configured: always used.
    pub authority: Option<String>,
    /// The TLS listener's port, added to the request's host unless 443.
    pub tls_port: u16,
}

impl Target {
    /// The same redirect, to the request's own host: for a `--route` host,
    /// which `--external-url` does not name.
    pub(crate) fn for_any_host(&self) -> Target {
        Target {
            authority: None,
            tls_port: self.tls_port,
        }
    }

    /// 301 to the https URL, or 400 when the request names no usable host.
    pub(crate) fn respond<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(Authority::as_str));
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let location = self.location(host, path).and_then(|l| HeaderValue::from_str(&l).ok());
        let Some(location) = location else {
            let mut resp = Response::new(body::full("a Host header is needed to redirect to https\n"));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return resp;
        };
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::MOVED_PERMANENTLY;
        resp.headers_mut().insert(header::LOCATION, location);
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        resp
    }

    /// The https URL for a request's Host and path, if the Host is a valid authority.
    pub(crate) fn location(&self, host: Option<&str>, path: &str) -> Option<String> {
        let path = if path.starts_with('/') { path } else { "/" };
        if let Some(authority) = &self.authority {
            return Some(format!("https://{authority}{path}"));
        }
        let authority: Authority = host?.trim().parse().ok()?;
        // `Authority` accepts userinfo; a redirect must never carry it.
        let bad_port = authority
            .as_str()
            .rsplit(']')
            .next()
            .is_some_and(|rest| rest.contains(':'))
            && authority.port_u16().is_none();
        if bad_port || authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        let host = authority.host();
        Some(match self.tls_port {
            443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u16) -> Target {
        Target {
            authority: None,
            tls_port: port,
        }
    }

    #[test]
    fn host_port_is_replaced_by_the_tls_port() {
        let t = target(8443);
        assert_eq!(
            t.location(Some("gitlab.example.test:8080"), "/foo?x=1").as_deref(),
            Some("https://gitlab.example.test:8443/foo?x=1")
        );
        assert_eq!(
            target(443).location(Some("gitlab.example.test"), "/").as_deref(),
            Some("https://gitlab.example.test/")
        );
        assert_eq!(
            t.location(Some("[::1]:80"), "/a").as_deref(),
            Some("https://[::1]:8443/a")
        );
        assert_eq!(
            t.location(Some("10.0.0.1"), "/a").as_deref(),
            Some("https://10.0.0.1:8443/a")
        );
    }

    #[test]
    fn external_url_wins_over_host() {
        let t = Target {
            authority: Some("gitlab.example.test".into()),
            tls_port: 8443,
        };
        assert_eq!(
            t.location(Some("evil.example:80"), "/p?q").as_deref(),
            Some("https://gitlab.example.test/p?q")
        );
        assert_eq!(t.location(None, "/").as_deref(), Some("https://gitlab.example.test/"));
    }

    #[test]
    fn bad_hosts_get_no_location() {
        let t = target(443);
        for bad in [
            None,
            Some(""),
            Some("a b"),
            Some("user@host"),
            Some("host/evil"),
            Some("h:99999"),
        ] {
            assert_eq!(t.location(bad, "/"), None, "{bad:?}");
        }
    }

    #[test]
    fn responses() {
        let t = target(8443);
        let req = Request::builder()
            .uri("/x?y")
            .header("host", "h.test:80")
            .body(())
            .unwrap();
        let resp = t.respond(&req);
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(resp.headers()[header::LOCATION], "https://h.test:8443/x?y");
        let no_host = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(t.respond(&no_host).status(), StatusCode::BAD_REQUEST);
        // h2: the authority stands in for Host.
        let h2 = Request::builder().uri("http://h2.test/z").body(()).unwrap();
        assert_eq!(t.respond(&h2).headers()[header::LOCATION], "https://h2.test:8443/z");
    }
}
