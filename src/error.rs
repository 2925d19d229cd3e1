//! Errors, each with a `thiserror` message, tagged by where they came from.
//!
//! Requests: downstream (the client asked for something we refuse: 4xx) or
//! upstream (GitLab could not be reached or failed mid-answer: 502/504), turned
//! into (status, metric label, body) by [`ProxyError::answer`] alone. The body is
//! short plain text; the cause goes to the log, never to the client.
//! OIDC documents: [`DocError`], why a GitLab answer was refused.
//! Start-up: [`StartError`], one line and the documented exit code.

use std::error::Error as StdError;
use std::net::SocketAddr;

use http::StatusCode;

use crate::config::ConfigError;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The client sent something we refuse to forward.
    #[error(transparent)]
    Downstream(#[from] DownstreamError),
    /// GitLab failed: connection refused, timed out, or broke mid-response.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DownstreamError {
    /// CONNECT and TRACE: a reverse proxy is no forward proxy, and TRACE echoes
    /// credentials back (nginx refuses both too).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A transfer coding other than chunked: what it would mean for GitLab is
    /// unclear, so it is refused (nginx answers 501 too).
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// The client's request body broke off or was malformed.
    #[error("the client's request body failed")]
    RequestBody,
    /// The client went silent mid-body for `--client-body-timeout`: 408.
    #[error("the client's request body stalled")]
    RequestBodyTimeout,
    /// No `Host` on HTTP/1.1, several, or one that is not `host[:port]`.
    #[error("missing, repeated or invalid Host")]
    BadHost,
    /// A request target in authority-form (`GET c8 HTTP/1.1`).
    #[error("request target in authority-form")]
    BadTarget,
    /// The request's `Via` names this process: it has come back (508).
    #[error("request loop: Via names this proxy")]
    Loop,
    /// A path other than the OIDC documents' on `--oidc-listen`: 404, and
    /// GitLab never sees it.
    #[error("not an OIDC document (OIDC-only listener)")]
    NotOidc,
}

/// Marks an error that came from the client's request body, so a client that
/// aborts its own upload is not counted as a GitLab failure.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {0}")]
pub(crate) struct ClientBodyError(#[source] pub BoxError);

#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made (refused, DNS, TLS handshake): 502.
    #[error("connect to upstream failed: {}", chain(.0.as_ref()))]
    Connect(BoxError),
    /// The connection attempt outlived `--connect-timeout`: 504.
    #[error("connect to upstream timed out")]
    ConnectTimeout,
    /// No response headers within `--idle-timeout` after the request was sent: 504.
    #[error("upstream sent no response headers in time")]
    ResponseTimeout,
    /// GitLab took none of the request body for `--idle-timeout` (it stopped
    /// reading an upload): 504, as nginx's `proxy_send_timeout`.
    #[error("upstream took none of the request body in time")]
    SendTimeout,
    /// A response whose length or bytes cannot be trusted (`Content-Length` and
    /// `Transfer-Encoding` together, RFC 9112 §6.1, or a transfer coding other
    /// than one `chunked`): 502, as nginx.
    #[error(
        "upstream response framing in doubt: Content-Length with Transfer-Encoding, or a transfer coding other than chunked"
    )]
    Framing,
    /// `--max-upstream-connections` stayed reached for `--connect-timeout`: 503.
    #[error("no upstream connection free within the budget")]
    Busy,
    /// The exchange failed after connecting: 502.
    #[error("upstream exchange failed: {}", chain(.0.as_ref()))]
    Exchange(BoxError),
}

/// What the client gets for a [`ProxyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub status: StatusCode,
    /// The `reason` metric label and the log's short name.
    pub label: &'static str,
    /// The plain-text body. Never carries the cause.
    pub body: &'static str,
}

impl ProxyError {
    /// Status, label and body, decided here and nowhere else.
    pub(crate) fn answer(&self) -> Answer {
        let (status, label, body) = match self {
            ProxyError::Downstream(DownstreamError::MethodNotAllowed) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed\n",
            ),
            ProxyError::Downstream(DownstreamError::UnsupportedTransferCoding) => (
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_coding",
                "transfer coding not implemented\n",
            ),
            ProxyError::Downstream(DownstreamError::RequestBody) => (
                StatusCode::BAD_REQUEST,
                "request_body_failed",
                "bad request: the request body broke off\n",
            ),
            ProxyError::Downstream(DownstreamError::RequestBodyTimeout) => (
                StatusCode::REQUEST_TIMEOUT,
                "client_body_timeout",
                "request timeout: the request body stalled\n",
            ),
            ProxyError::Downstream(DownstreamError::NotOidc) => (
                StatusCode::NOT_FOUND,
                "not_oidc",
                "not found: this listener serves only the OIDC documents\n",
            ),
            ProxyError::Downstream(DownstreamError::Loop) => (
                StatusCode::LOOP_DETECTED,
                "loop_detected",
                "loop detected: this request has passed this proxy before\n",
            ),
            ProxyError::Downstream(DownstreamError::BadHost) => (
                StatusCode::BAD_REQUEST,
                "bad_host",
                "bad request: missing, repeated or invalid Host\n",
            ),
            ProxyError::Downstream(DownstreamError::BadTarget) => (
                StatusCode::BAD_REQUEST,
                "bad_request_target",
                "bad request: invalid request target\n",
            ),
            ProxyError::Upstream(UpstreamError::Framing) => (StatusCode::BAD_GATEWAY, "upstream_framing", BAD_GATEWAY),
            ProxyError::Upstream(UpstreamError::Connect(_)) => (StatusCode::BAD_GATEWAY, "connect_failed", BAD_GATEWAY),
            ProxyError::Upstream(UpstreamError::Exchange(_)) => {
                (StatusCode::BAD_GATEWAY, "upstream_failed", BAD_GATEWAY)
            }
            ProxyError::Upstream(UpstreamError::Busy) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_busy",
                "service unavailable: too many connections to GitLab; retry\n",
            ),
            ProxyError::Upstream(UpstreamError::ConnectTimeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                "connect_timeout",
                "gateway timeout: GitLab did not accept the connection in time\n",
            ),
            ProxyError::Upstream(UpstreamError::ResponseTimeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                "response_timeout",
                "gateway timeout: GitLab did not answer in time\n",
            ),
            ProxyError::Upstream(UpstreamError::SendTimeout) => (
                StatusCode::GATEWAY_TIMEOUT,
                "send_timeout",
                "gateway timeout: GitLab stopped taking the request body\n",
            ),
        };
        Answer { status, label, body }
    }
}

const BAD_GATEWAY: &str = "bad gateway: GitLab is unreachable or failed\n";

/// Why a GitLab answer was refused. Labels are metric values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DocError {
    #[error("not found (404)")]
    NotFound,
    #[error("status {0}")]
    Status(u16),
    #[error("no answer within the upstream timeout")]
    Timeout,
    #[error("body over 1 MiB")]
    TooLarge,
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Invalid(String),
    #[error("upstream: {0}")]
    Upstream(String),
}

impl DocError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            DocError::NotFound => "not_found",
            DocError::Status(_) => "bad_status",
            DocError::Timeout => "timeout",
            DocError::TooLarge => "too_large",
            DocError::NotJson(_) => "not_json",
            DocError::Invalid(_) => "invalid",
            DocError::Upstream(_) => "upstream_error",
        }
    }
}

/// Why the proxy (or the demo) could not start: printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Settings that do not fit together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file an option names is unusable: the message names the option and file.
    #[error("{0}")]
    File(BoxError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    /// The operating system refused something else (signals, a socket's address).
    #[error("{what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    /// rustls refused its own configuration (a defect, not the user's mistake).
    #[error("{0}")]
    Tls(BoxError),
    /// The demo could not run its scenario.
    #[error("{0}")]
    Demo(BoxError),
}

impl StartError {
    /// 2 for what the user can fix in the options, 1 for the rest (`--help` says so).
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::File(_) => 2,
            StartError::Bind { .. } | StartError::Io { .. } | StartError::Tls(_) | StartError::Demo(_) => 1,
        }
    }

    pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
        move |source| StartError::Io { what, source }
    }
}

/// "outer: inner: root" from an error and its sources, for one log line.
pub(crate) fn chain(err: &(dyn StdError + 'static)) -> String {
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
        let io = || -> BoxError { Box::new(std::io::Error::other("secret-cause")) };
        let cases: [(ProxyError, StatusCode, &str); 13] = [
            (DownstreamError::NotOidc.into(), StatusCode::NOT_FOUND, "not_oidc"),
            (
                UpstreamError::Busy.into(),
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_busy",
            ),
            (
                UpstreamError::Framing.into(),
                StatusCode::BAD_GATEWAY,
                "upstream_framing",
            ),
            (DownstreamError::BadHost.into(), StatusCode::BAD_REQUEST, "bad_host"),
            (
                DownstreamError::BadTarget.into(),
                StatusCode::BAD_REQUEST,
                "bad_request_target",
            ),
            (
                UpstreamError::Connect(io()).into(),
                StatusCode::BAD_GATEWAY,
                "connect_failed",
            ),
            (
                UpstreamError::Exchange(io()).into(),
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
            ),
            (
                UpstreamError::ConnectTimeout.into(),
                StatusCode::GATEWAY_TIMEOUT,
                "connect_timeout",
            ),
            (
                UpstreamError::ResponseTimeout.into(),
                StatusCode::GATEWAY_TIMEOUT,
                "response_timeout",
            ),
            (
                UpstreamError::SendTimeout.into(),
                StatusCode::GATEWAY_TIMEOUT,
                "send_timeout",
            ),
            (
                DownstreamError::MethodNotAllowed.into(),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                DownstreamError::UnsupportedTransferCoding.into(),
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_coding",
            ),
            (
                DownstreamError::RequestBody.into(),
                StatusCode::BAD_REQUEST,
                "request_body_failed",
            ),
        ];
        for (err, status, label) in cases {
            let answer = err.answer();
            assert_eq!((answer.status, answer.label), (status, label), "{err}");
            if matches!(err, ProxyError::Upstream(_)) {
                assert!(
                    crate::metrics::UPSTREAM_ERROR_REASONS.contains(&label),
                    "{label} is not zeroed"
                );
            }
            assert!(
                answer.body.ends_with('\n') && !answer.body.contains("secret-cause"),
                "{err}: {}",
                answer.body
            );
        }
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
        let answer = err.answer();
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(!answer.body.contains("secret-host"), "the client never sees it");
    }

    #[test]
    fn chain_joins_sources_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(chain(&e), "client error (Connect): Connection refused");
    }
}
