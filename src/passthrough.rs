//! Forwarding to GitLab: bodies stream both ways untouched, hop-by-hop headers
//! stay on their hop, and HTTP/1.1 upgrades (websockets) become byte tunnels.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::body::{self, IdleTimeoutBody, ProxyBody};
use crate::error::{BoxError, ClientBodyError, DownstreamError, ProxyError, UpstreamError};
use crate::headers;
use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamBody};

/// The silences the pass-through allows (`--idle-timeout`, `--client-body-timeout`,
/// `--upgrade-idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub body_idle: Duration,
    pub client_body_idle: Duration,
    pub upgrade_idle: Duration,
}

pub(crate) struct Passthrough {
    upstream: Arc<Upstream>,
    /// Longest silence inside a response body from GitLab.
    body_idle: Duration,
    /// Longest silence between two reads of a client's request body.
    client_body_idle: Duration,
    /// Longest silence on an upgraded connection.
    upgrade_idle: Duration,
    /// Tunnels outlive their request; shutdown waits for them here.
    tunnels: TaskTracker,
    metrics: Arc<Metrics>,
}

impl Passthrough {
    pub(crate) fn new(
        upstream: Arc<Upstream>,
        timeouts: Timeouts,
        tunnels: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        Passthrough {
            upstream,
            body_idle: timeouts.body_idle,
            client_body_idle: timeouts.client_body_idle,
            upgrade_idle: timeouts.upgrade_idle,
            tunnels,
            metrics,
        }
    }

    /// Sends the request to GitLab and returns its response, streaming. The
    /// forwarding headers have already been set by the router. Not an `async
    /// fn`: that one kept the request twice in its state, and the router's
    /// box holds this future whole.
    pub(crate) fn forward(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + '_ {
        match self.outgoing(req) {
            Ok((req, asked)) => Either::Left(self.upstream.send(req).map(move |sent| self.incoming(sent?, asked))),
            Err(refused) => Either::Right(std::future::ready(Err(refused))),
        }
    }

    /// The request as GitLab gets it, and what the answer depends on.
    fn outgoing(&self, mut req: Request<Incoming>) -> Result<(Request<ProxyBody>, Asked), ProxyError> {
        let client_version = req.version();
        let fields = headers::Fields::of(req.headers());
        let upgrade = headers::requested_upgrade(client_version, req.headers(), fields);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));

        if headers::has_unsupported_transfer_coding(req.headers(), fields) {
            return Err(ProxyError::Downstream(DownstreamError::UnsupportedTransferCoding));
        }
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, fields);
        if client_version == Version::HTTP_2 {
            // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one.
            headers::merge_cookies(&mut parts.headers);
        }
        if let Some(protocol) = upgrade {
            headers::set_upgrade(&mut parts.headers, protocol);
        }
        parts.uri = self.upstream.uri_for(parts.uri.path_and_query());

        // A client that goes silent mid-upload is cut after --client-body-timeout
        // (408, GitLab's request aborted), and its body's errors are told apart
        // from GitLab's. A request without a body (most) sends none: nothing to
        // time, wrap or allocate.
        let body = if http_body::Body::is_end_stream(&body) {
            body::empty()
        } else {
            body::boxed(
                IdleTimeoutBody::new(body, self.client_body_idle)
                    .map_err(|e| -> BoxError { Box::new(ClientBodyError(e)) }),
            )
        };
        let asked = Asked {
            version: client_version,
            upgrade: client_upgrade,
        };
        Ok((Request::from_parts(parts, body), asked))
    }

    /// GitLab's response as the client gets it.
    fn incoming(&self, mut resp: Response<UpstreamBody>, asked: Asked) -> Result<Response<ProxyBody>, ProxyError> {
        let fields = headers::Fields::of(resp.headers());
        if fields.conflicting_framing() || headers::has_unsupported_transfer_coding(resp.headers(), fields) {
            // The body's end or its bytes are in doubt: a client could take a cut
            // body as whole, read the rest as the next response, or get gzip
            // bytes as plain ones. The connection is dropped.
            return Err(ProxyError::Upstream(UpstreamError::Framing));
        }

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = asked.upgrade else {
                return Err(ProxyError::Upstream(UpstreamError::Exchange(
                    "upstream switched protocols without being asked".into(),
                )));
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let protocol = resp.headers().get(header::UPGRADE).cloned();
            self.spawn_tunnel(client_upgrade, upstream_upgrade);
            let (mut parts, _) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers, fields);
            headers::strip_response_internal(&mut parts.headers, fields);
            if let Some(protocol) = protocol {
                headers::set_upgrade(&mut parts.headers, protocol);
            }
            return Ok(Response::from_parts(parts, body::empty()));
        }

        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, fields);
        headers::strip_response_internal(&mut parts.headers, fields);
        if asked.version == Version::HTTP_2 {
            headers::own_values(&mut parts.headers);
        }
        // Answer in the client's protocol, not GitLab's (an HTTP/1.0 upstream
        // must not turn the client's connection into HTTP/1.0).
        parts.version = asked.version;
        Ok(Response::from_parts(
            parts,
            body::boxed(IdleTimeoutBody::new(body, self.body_idle)),
        ))
    }

    fn spawn_tunnel(&self, client: OnUpgrade, upstream: OnUpgrade) {
        let idle = self.upgrade_idle;
        let metrics = self.metrics.clone();
        self.tunnels.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::warn!(target: "upstream", error = %e, "upgrade failed");
                    return;
                }
            };
            metrics.open_tunnels.inc();
            let outcome = relay(TokioIo::new(client), TokioIo::new(upstream), idle).await;
            metrics.open_tunnels.dec();
            match outcome {
                Relay::Closed { bytes } => {
                    metrics.tunnel_bytes.inc_by(bytes);
                    tracing::debug!(bytes, "upgraded connection closed");
                }
                Relay::Idle { bytes } => {
                    metrics.tunnel_bytes.inc_by(bytes);
                    tracing::info!(
                        bytes,
                        idle_secs = idle.as_secs_f64(),
                        "upgraded connection closed after idling"
                    )
                }
                Relay::Failed(e) => {
                    tracing::debug!(error = %e, "upgraded connection ended with an error")
                }
            }
        });
    }
}

/// What the client asked that GitLab's answer is made for.
struct Asked {
    version: Version,
    /// The client's side of an upgrade it asked for.
    upgrade: Option<OnUpgrade>,
}

enum Relay {
    Closed { bytes: u64 },
    Idle { bytes: u64 },
    Failed(std::io::Error),
}

/// Copies bytes both ways until one side closes (a websocket has no use for a
/// half-open tunnel; holding one would stall a graceful shutdown) or both are
/// silent for `idle`.
async fn relay<A, B>(a: A, b: B, idle: Duration) -> Relay
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let seen = Arc::new(Seen::default());
    let (a_read, mut a_write) = tokio::io::split(a);
    let (b_read, mut b_write) = tokio::io::split(b);
    let mut a_read = Activity {
        io: a_read,
        seen: seen.clone(),
        start,
    };
    let mut b_read = Activity {
        io: b_read,
        seen: seen.clone(),
        start,
    };
    let a_to_b = async {
        tokio::io::copy(&mut a_read, &mut b_write).await?;
        b_write.shutdown().await
    };
    let b_to_a = async {
        tokio::io::copy(&mut b_read, &mut a_write).await?;
        a_write.shutdown().await
    };
    let watchdog = async {
        loop {
            let last = Duration::from_millis(seen.last_ms.load(Ordering::Relaxed));
            let deadline = start + last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let ended = tokio::select! {
        done = a_to_b => done,
        done = b_to_a => done,
        () = watchdog => return Relay::Idle { bytes: seen.bytes.load(Ordering::Relaxed) },
    };
    match ended {
        Ok(()) => Relay::Closed {
            bytes: seen.bytes.load(Ordering::Relaxed),
        },
        Err(e) => Relay::Failed(e),
    }
}

/// What both directions of a tunnel have read: when last, and how much.
#[derive(Default)]
struct Seen {
    last_ms: AtomicU64,
    bytes: AtomicU64,
}

/// Records reads into `Seen`, for the idle watchdog and the byte metric.
struct Activity<T> {
    io: T,
    seen: Arc<Seen>,
    start: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            let ms = self.start.elapsed().as_millis() as u64;
            self.seen.last_ms.store(ms, Ordering::Relaxed);
            self.seen.bytes.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn relay_copies_and_closes_on_idle() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(client, upstream, Duration::from_secs(60)));

        client_far.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");

        // 59 s of silence, then traffic: the tunnel must still be open.
        tokio::time::advance(Duration::from_secs(59)).await;
        upstream_far.write_all(b"pong").await.unwrap();
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert!(!task.is_finished());

        // Then silence past the limit closes it.
        match task.await.unwrap() {
            Relay::Idle { .. } => {}
            _ => panic!("expected the idle watchdog to end the tunnel"),
        }
    }

    #[tokio::test]
    async fn relay_ends_when_a_side_closes() {
        let (client, mut client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let task = tokio::spawn(relay(client, upstream, Duration::from_secs(60)));
        client_far.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        upstream_far.read_exact(&mut got).await.unwrap();
        // GitLab hangs up; the client keeps its end open. The tunnel still ends,
        // and the client sees the close.
        drop(upstream_far);
        let mut rest = Vec::new();
        client_far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        match task.await.unwrap() {
            Relay::Closed { bytes } => assert_eq!(bytes, 3),
            Relay::Failed(e) => panic!("{e}"),
            Relay::Idle { .. } => panic!("should end on close, not idle"),
        }
    }
}
