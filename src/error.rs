//! Errors tagged by where they came from, mapped to a status in one place.
//!
//! Downstream: the client asked for something we refuse (4xx). Upstream: GitLab
//! could not be reached or failed mid-answer (502/504). Internal: our own bug (500).
//! Bodies are short plain text; the cause goes to the log, never to the client.

use std::error::Error as StdError;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::ProxyBody;

pub type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug)]
pub enum ProxyError {
    /// The client sent something we refuse to forward.
    Downstream(DownstreamError),
    /// GitLab failed: connection refused, timed out, or broke mid-response.
    Upstream(UpstreamError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownstreamError {
    /// CONNECT and TRACE: a reverse proxy is no forward proxy, and TRACE echoes
    /// credentials back (nginx refuses both too).
    MethodNotAllowed,
    /// A transfer coding other than chunked: what it would mean for GitLab is
    /// unclear, so it is refused (nginx answers 501 too).
    UnsupportedTransferCoding,
    /// The client's request body broke off, was malformed, or went silent.
    RequestBody,
}

/// Marks an error that came from the client's request body, so a client that
/// aborts its own upload is not counted as a GitLab failure.
#[derive(Debug)]
pub struct ClientBodyError(pub BoxError);

impl fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl StdError for ClientBodyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(self.0.as_ref())
    }
}

#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (refused, DNS, TLS handshake): 502.
    Connect(BoxError),
    /// The connection attempt outlived `--connect-timeout`: 504.
    ConnectTimeout,
    /// No response headers within `--idle-timeout` after the request was sent: 504.
    ResponseTimeout,
    /// The exchange failed after connecting: 502.
    Exchange(BoxError),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Downstream(DownstreamError::MethodNotAllowed) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Downstream(DownstreamError::UnsupportedTransferCoding) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Downstream(DownstreamError::RequestBody) => StatusCode::BAD_REQUEST,
            ProxyError::Upstream(UpstreamError::ConnectTimeout | UpstreamError::ResponseTimeout) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Upstream(UpstreamError::Connect(_) | UpstreamError::Exchange(_)) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Short label for logs and the `reason` metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Downstream(DownstreamError::MethodNotAllowed) => "method_not_allowed",
            ProxyError::Downstream(DownstreamError::UnsupportedTransferCoding) => "unsupported_transfer_coding",
            ProxyError::Downstream(DownstreamError::RequestBody) => "request_body_failed",
            ProxyError::Upstream(UpstreamError::Connect(_)) => "connect_failed",
            ProxyError::Upstream(UpstreamError::ConnectTimeout) => "connect_timeout",
            ProxyError::Upstream(UpstreamError::ResponseTimeout) => "response_timeout",
            ProxyError::Upstream(UpstreamError::Exchange(_)) => "upstream_failed",
        }
    }

    /// The plain-text response the client gets. Never carries the cause.
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        let text = match &self {
            ProxyError::Downstream(DownstreamError::MethodNotAllowed) => "method not allowed\n",
            ProxyError::Downstream(DownstreamError::UnsupportedTransferCoding) => "transfer coding not implemented\n",
            ProxyError::Downstream(DownstreamError::RequestBody) => "bad request: the request body broke off\n",
            ProxyError::Upstream(UpstreamError::ConnectTimeout) => {
                "gateway timeout: GitLab did not accept the connection in time\n"
            }
            ProxyError::Upstream(UpstreamError::ResponseTimeout) => "gateway timeout: GitLab did not answer in time\n",
            ProxyError::Upstream(_) => "bad gateway: GitLab is unreachable or failed\n",
        };
        let mut resp = Response::new(
            Full::new(Bytes::from_static(text.as_bytes()))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        resp
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Downstream(d) => f.write_str(match d {
                DownstreamError::MethodNotAllowed => "method not allowed",
                DownstreamError::UnsupportedTransferCoding => "unsupported transfer coding",
                DownstreamError::RequestBody => "the client's request body failed",
            }),
            ProxyError::Upstream(UpstreamError::Connect(e)) => {
                write!(f, "connect to upstream failed: {}", chain(e.as_ref()))
            }
            ProxyError::Upstream(UpstreamError::ConnectTimeout) => f.write_str("connect to upstream timed out"),
            ProxyError::Upstream(UpstreamError::ResponseTimeout) => {
                f.write_str("upstream sent no response headers in time")
            }
            ProxyError::Upstream(UpstreamError::Exchange(e)) => {
                write!(f, "upstream exchange failed: {}", chain(e.as_ref()))
            }
        }
    }
}

impl StdError for ProxyError {}

/// "outer: inner: root" from an error and its sources, for one log line.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_in_one_place() {
        let io = || -> BoxError { Box::new(std::io::Error::other("x")) };
        assert_eq!(
            ProxyError::Upstream(UpstreamError::Connect(io())).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::Upstream(UpstreamError::Exchange(io())).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::Upstream(UpstreamError::ConnectTimeout).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::Upstream(UpstreamError::ResponseTimeout).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::Downstream(DownstreamError::MethodNotAllowed).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn response_hides_cause() {
        let err = ProxyError::Upstream(UpstreamError::Connect(Box::new(std::io::Error::other(
            "secret-host:1234 refused",
        ))));
        assert!(
            err.to_string().contains("secret-host:1234"),
            "the log line carries the cause"
        );
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }

    #[test]
    fn chain_joins_sources_without_repeats() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl StdError for Outer {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(chain(&e), "client error (Connect): Connection refused");
    }
}
