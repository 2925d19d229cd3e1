//! Requests to GitLab (Workhorse) and the other services: TCP, TLS or a unix
//! socket, over connections kept open between requests (`pool`), with a
//! connect timeout that is told apart from a refused connection (504 vs 502).

mod connect;
mod pool;
mod progress;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Sleep;

use crate::body::{IdleTimeout, ProxyBody};
use crate::config::UpstreamTarget;
use crate::error::{ClientBodyError, DownstreamError, ProxyError, UpstreamError};
use crate::headers::{self, ViaId};
use connect::Dial;
pub(crate) use connect::{Budget, SetupError, tls_client_config};
pub(crate) use pool::UpstreamBody;
use pool::{Pool, PoolError};

/// Settings the pool needs; read from the command line by `main`.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamSettings {
    pub target: UpstreamTarget,
    pub extra_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Longest wait for response headers.
    pub response_timeout: Duration,
    /// Named in the `Via` of every request sent, so a request that loops back
    /// to this process is caught.
    pub via: ViaId,
}

pub(crate) struct Upstream {
    pool: Pool,
    response_timeout: Duration,
    via: ViaId,
    /// Counts the requests refused for want of a connection.
    refusals: Option<Counter>,
}

impl Upstream {
    /// A pool to `settings.target`; with a `budget`, its connections count against it.
    pub(crate) fn new(settings: &UpstreamSettings, budget: Option<Arc<Budget>>) -> Result<Self, SetupError> {
        let (dial, dial_uri) = Dial::to(&settings.target, settings.extra_ca.as_deref())?;
        let refusals = budget.as_ref().map(|b| b.metrics.upstream_refusals.clone());
        Ok(Upstream {
            pool: Pool::new(dial, dial_uri, settings.connect_timeout, budget),
            response_timeout: settings.response_timeout,
            via: settings.via.clone(),
            refusals,
        })
    }

    /// The URI a request for `path_and_query` is sent with: origin-form, as
    /// HTTP/1.1 to an origin server has it.
    pub(crate) fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        Uri::from(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
    }

    /// Sends a request and waits for the response headers (not the body), for
    /// as long as GitLab is not silent for the response timeout: while the
    /// request body is being sent, GitLab not taking any of it for that long
    /// ends the exchange (an upload may take hours, and the client's silences
    /// are bounded by the body's own idle limit); once it is sent, the wait for
    /// the answer starts. `Via` names the protocol the request came in with;
    /// Workhorse gets HTTP/1.1.
    pub(crate) fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Sending<'_, impl Future<Output = Result<Response<UpstreamBody>, PoolError>> + '_> {
        let received = req.version();
        headers::append_via(req.headers_mut(), received, &self.via);
        *req.version_mut() = Version::HTTP_11;
        let has_body = !http_body::Body::is_end_stream(req.body());
        let (req, progress) = if has_body {
            let (parts, body) = req.into_parts();
            let (body, progress) = progress::watched(body);
            (Request::from_parts(parts, body), Some(progress))
        } else {
            (req, None)
        };
        Sending {
            exchange: self.pool.send(req),
            progress,
            deadline: None,
            upstream: self,
        }
    }

    fn classify(&self, err: PoolError) -> ProxyError {
        match err {
            PoolError::Busy => {
                if let Some(refusals) = &self.refusals {
                    refusals.inc();
                }
                ProxyError::Upstream(UpstreamError::Busy)
            }
            PoolError::ConnectTimeout => ProxyError::Upstream(UpstreamError::ConnectTimeout),
            PoolError::Connect(e) => ProxyError::Upstream(UpstreamError::Connect(e)),
            PoolError::Exchange(e) => classify_exchange(e),
        }
    }
}

pin_project! {
    /// [`Upstream::send`]'s answer: the pool's exchange, bounded by one timer
    /// for GitLab's silences. A future of its own rather than an `async fn`:
    /// that one held the request twice over and was copied whole into each
    /// caller's state.
    pub(crate) struct Sending<'a, F> {
        #[pin]
        exchange: F,
        // The request body's way to GitLab; `None` when there was none.
        progress: Option<Arc<progress::Progress>>,
        // Armed at the first poll; when it fires with a body, the body's
        // progress says whether anything is overdue or when to look again.
        #[pin]
        deadline: Option<Sleep>,
        upstream: &'a Upstream,
    }
}

impl<F> Future for Sending<'_, F>
where
    F: Future<Output = Result<Response<UpstreamBody>, PoolError>>,
{
    type Output = Result<Response<UpstreamBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.exchange.poll(cx) {
            return Poll::Ready(result.map_err(|e| this.upstream.classify(e)));
        }
        let limit = this.upstream.response_timeout;
        if this.deadline.is_none() {
            this.deadline.set(Some(tokio::time::sleep(limit)));
        }
        let Some(mut deadline) = this.deadline.as_pin_mut() else {
            return Poll::Pending;
        };
        // Each fired deadline either ends the exchange or moves to a later
        // instant, so this loop ends with a pending timer or an error.
        while deadline.as_mut().poll(cx).is_ready() {
            let Some(progress) = this.progress.as_ref() else {
                return Poll::Ready(Err(ProxyError::Upstream(UpstreamError::ResponseTimeout)));
            };
            match progress.verdict(deadline.deadline(), limit) {
                progress::Verdict::WaitUntil(at) => deadline.as_mut().reset(at),
                progress::Verdict::NotTaken => {
                    return Poll::Ready(Err(ProxyError::Upstream(UpstreamError::SendTimeout)));
                }
                progress::Verdict::NotAnswered => {
                    return Poll::Ready(Err(ProxyError::Upstream(UpstreamError::ResponseTimeout)));
                }
            }
        }
        Poll::Pending
    }
}

/// A failed exchange: the client's request body (its error, or its silence),
/// else GitLab's side.
fn classify_exchange(err: hyper::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<ClientBodyError>() {
            tracing::debug!(error = %crate::error::chain(&err), "client request body failed");
            if body.0.is::<IdleTimeout>() {
                return ProxyError::Downstream(DownstreamError::RequestBodyTimeout);
            }
            return ProxyError::Downstream(DownstreamError::RequestBody);
        }
        source = e.source();
    }
    ProxyError::Upstream(UpstreamError::Exchange(Box::new(err)))
}

/// The listener of this process that `target` names, if any: a proxy sent to
/// itself would wait on its own answers. A name that does not resolve in
/// `within` is let be (the `Via` check still catches the loop).
pub(crate) async fn own_listener(
    target: &UpstreamTarget,
    listeners: &[SocketAddr],
    within: Duration,
) -> Option<SocketAddr> {
    let (UpstreamTarget::Http { authority } | UpstreamTarget::Https { authority }) = target else {
        return None;
    };
    let default_port = if matches!(target, UpstreamTarget::Https { .. }) {
        443
    } else {
        80
    };
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(default_port);
    let resolved: Vec<SocketAddr> = match tokio::time::timeout(within, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => return None,
    };
    listeners.iter().copied().find(|listener| {
        resolved
            .iter()
            .any(|addr| addr.port() == listener.port() && reaches(addr.ip(), listener.ip()))
    })
}

/// Whether a connection to `addr` lands on a socket bound to `bound`.
fn reaches(addr: IpAddr, bound: IpAddr) -> bool {
    if addr == bound {
        return true;
    }
    // A wildcard listener takes every address of this host: those are the ones
    // a socket can be bound to.
    bound.is_unspecified() && (addr.is_loopback() || std::net::UdpSocket::bind((addr, 0)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target: &str) -> UpstreamSettings {
        UpstreamSettings {
            target: crate::config::parse_upstream(target).unwrap(),
            extra_ca: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            via: ViaId::new("test".into()),
        }
    }

    #[tokio::test]
    async fn uris_keep_path_and_query() {
        let up = Upstream::new(&settings("http://127.0.0.1:8181"), None).unwrap();
        let pq = PathAndQuery::from_static("/api/v4/jobs/request?x=1");
        // Origin-form: the connection, not the URI, says where it goes.
        assert_eq!(up.uri_for(Some(&pq)).to_string(), "/api/v4/jobs/request?x=1");
        assert_eq!(up.uri_for(None).to_string(), "/");
        let unix = Upstream::new(&settings("unix:/tmp/none.sock"), None).unwrap();
        assert_eq!(unix.uri_for(Some(&pq)).path_and_query(), Some(&pq));
    }

    #[tokio::test]
    async fn missing_unix_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let up = Upstream::new(&settings(&format!("unix:{}", path.display())), None).unwrap();
        let req = Request::get(up.uri_for(None)).body(crate::body::empty()).unwrap();
        match up.send(req).await {
            Err(ProxyError::Upstream(UpstreamError::Connect(e))) => {
                assert!(crate::error::chain(e.as_ref()).contains("absent.sock"), "{e}")
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn own_listeners_are_found_through_names_and_wildcards() {
        let target = |s: &str| crate::config::parse_upstream(s).unwrap();
        let wildcard: SocketAddr = "0.0.0.0:18080".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:19090".parse().unwrap();
        let listeners = [wildcard, loopback];
        let within = Duration::from_secs(2);
        let found = |t: &str| {
            let t = target(t);
            async move { own_listener(&t, &listeners, within).await }
        };
        assert_eq!(found("http://127.0.0.1:18080").await, Some(wildcard));
        assert_eq!(found("http://localhost:18080").await, Some(wildcard));
        assert_eq!(found("https://127.0.0.1:19090").await, Some(loopback));
        // Same port, other address; other port; a unix socket: no loop.
        assert_eq!(found("http://127.0.0.2:19090").await, None);
        assert_eq!(found("http://127.0.0.1:18081").await, None);
        assert_eq!(found("unix:/run/gitlab.sock").await, None);
        // Not an address of this host (TEST-NET-1): not ours even on a wildcard.
        assert!(!reaches("192.0.2.1".parse().unwrap(), "0.0.0.0".parse().unwrap()));
    }

    #[test]
    fn unreadable_ca_is_a_clear_error() {
        let mut s = settings("https://gitlab.internal");
        s.extra_ca = Some("/nonexistent/ca.pem".into());
        let err = Upstream::new(&s, None).err().unwrap();
        assert!(
            err.to_string().starts_with("--upstream-ca /nonexistent/ca.pem"),
            "{err}"
        );
    }
}
