//! Every public request enters here: forwarding headers are settled once, the
//! request goes to its route, errors become responses in one place, and the
//! response is wrapped for the access log.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::access_log::{LoggedBody, PendingLog, RequestRecord};
use crate::body::ProxyBody;
use crate::config::Proto;
use crate::error::{DownstreamError, ProxyError};
use crate::headers;
use crate::metrics::{ErrorLabels, Metrics};
use crate::oidc::Oidc;
use crate::passthrough::Passthrough;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The scheme clients used to reach this listener, as GitLab should see it.
    pub proto: Proto,
}

pub struct Router {
    oidc: Oidc,
    passthrough: Passthrough,
    trusted_proxies: Vec<IpNet>,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(oidc: Oidc, passthrough: Passthrough, trusted_proxies: Vec<IpNet>, metrics: Arc<Metrics>) -> Self {
        Router {
            oidc,
            passthrough,
            trusted_proxies,
            metrics,
        }
    }

    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<LoggedBody> {
        let forwarded = headers::apply_forwarding(req.headers_mut(), conn.peer.ip(), &self.trusted_proxies, conn.proto);
        let record = RequestRecord::new(req.method(), req.uri(), req.version(), forwarded.client);
        let pending = PendingLog::new(record, self.metrics.clone());

        let result = if let Some(answer) = self.oidc.handle(&req).await {
            Ok(answer)
        } else if matches!(*req.method(), Method::CONNECT | Method::TRACE) {
            Err(ProxyError::Downstream(DownstreamError::MethodNotAllowed))
        } else {
            self.passthrough.forward(req).await
        };
        let resp = result.unwrap_or_else(|err| self.error_response(err, pending.record()));
        let status = resp.status();
        resp.map(|body: ProxyBody| pending.into_body(body, status))
    }

    fn error_response(&self, err: ProxyError, record: &RequestRecord) -> Response<ProxyBody> {
        match &err {
            ProxyError::Upstream(_) => {
                self.metrics
                    .upstream_errors
                    .get_or_create(&ErrorLabels { reason: err.kind() })
                    .inc();
                tracing::warn!(
                    target: "upstream",
                    reason = err.kind(),
                    method = %record.method,
                    path = %record.path,
                    error = %err,
                    "request to GitLab failed"
                );
            }
            ProxyError::Downstream(_) => {
                tracing::debug!(method = %record.method, path = %record.path, error = %err, "request refused");
            }
        }
        err.into_response()
    }
}
