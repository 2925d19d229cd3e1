//! The public listeners: accept TCP connections, read a PROXY header when
//! configured, terminate TLS on the TLS listener, serve HTTP/1.1 and HTTP/2 on
//! each, and on shutdown stop accepting and let every connection finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::LoggedBody;
use crate::config::Proto;
use crate::headers;
use crate::metrics::{ErrorLabels, Metrics};
use crate::proxy_protocol;
use crate::router::{ConnInfo, Handled, ListenerKind, Router};

pub(crate) struct ListenerSettings {
    pub kind: ListenerKind,
    pub proto: Proto,
    /// Longest time to receive a request's headers, and the longest idle time of a connection.
    pub header_timeout: Duration,
    /// Set on the TLS listener.
    pub tls: Option<TlsAcceptor>,
    pub handshake_timeout: Duration,
    /// Set with `--proxy-protocol`: the peers allowed to send the header.
    pub proxy_protocol: Option<Vec<IpNet>>,
    /// The listener's bound address.
    pub local: SocketAddr,
}

/// Everything a connection task needs, shared by all of them.
struct Shared {
    router: Arc<Router>,
    builder: auto::Builder<TokioExecutor>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

/// Accepts until `shutdown` fires. Connection tasks go into `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // No per-request header timer: the connection's own clock (`Shared::http`)
        // bounds a head that never ends, at no cost to the requests that do.
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // nginx's http2_max_concurrent_streams: bounds what one client can hold open.
        .max_concurrent_streams(128)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let shared = Arc::new(Shared {
        router,
        builder,
        settings,
        metrics,
        shutdown: shutdown.clone(),
    });

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tracker.spawn(async move {
            shared.metrics.open_connections.inc();
            shared.clone().connection(stream, peer).await;
            shared.metrics.open_connections.dec();
        });
    }
}

impl Shared {
    /// PROXY header (if configured), then TLS (if this is the TLS listener), then HTTP.
    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let Some(trusted) = &self.settings.proxy_protocol else {
            return self.secure(stream, peer, false).await;
        };
        if !headers::is_trusted(peer.ip(), trusted) {
            self.reject_proxy_protocol(peer, "untrusted_peer");
            return;
        }
        match proxy_protocol::accept(stream, self.settings.header_timeout).await {
            Ok((header, stream)) => {
                // LOCAL (a load balancer's own health check): the peer is the client.
                let client = header.source.unwrap_or(peer);
                // Boxed: a plain connection's task is not sized for this one.
                Box::pin(self.secure(stream, client, true)).await
            }
            Err(e) => self.reject_proxy_protocol(peer, e.reason()),
        }
    }

    fn reject_proxy_protocol(&self, peer: SocketAddr, reason: &'static str) {
        self.metrics
            .proxy_protocol_rejected
            .get_or_create(&ErrorLabels { reason })
            .inc();
        if reason == "untrusted_peer" {
            // Anyone can connect: a scanner must not flood the log. The metric counts them.
            tracing::debug!(%peer, reason, "connection closed: PROXY protocol expected from trusted peers only");
        } else {
            tracing::warn!(%peer, reason, "connection closed: no valid PROXY protocol header from a trusted peer");
        }
    }

    async fn secure<S>(self: Arc<Self>, stream: S, client: SocketAddr, proxied: bool)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        match &self.settings.tls {
            None => self.http(stream, client, proxied).await,
            // Boxed: a plain connection's task (kept as long as the connection)
            // is not sized for a handshake and a TLS stream.
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                Box::pin(self.tls(acceptor, stream, client, proxied)).await
            }
        }
    }

    async fn tls<S>(self: Arc<Self>, acceptor: TlsAcceptor, stream: S, client: SocketAddr, proxied: bool)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let handshake = tokio::select! {
            done = tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(stream)) => done,
            () = self.shutdown.cancelled() => return,
        };
        match handshake {
            Ok(Ok(tls)) => self.http(tls, client, proxied).await,
            Ok(Err(e)) => {
                self.metrics
                    .tls_handshake_failures
                    .get_or_create(&ErrorLabels { reason: "error" })
                    .inc();
                tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                self.metrics
                    .tls_handshake_failures
                    .get_or_create(&ErrorLabels { reason: "timeout" })
                    .inc();
                tracing::debug!(peer = %client, "TLS handshake timed out");
            }
        }
    }

    async fn http<S>(self: Arc<Self>, stream: S, peer: SocketAddr, proxied: bool)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let conn_info = ConnInfo {
            peer,
            proxied,
            proto: self.settings.proto,
            kind: self.settings.kind,
            local: self.settings.local,
        };
        // One clock per connection, in place of a timer per request: a new
        // connection that sends nothing is cut after --header-timeout; one with
        // no request in flight for that long (idle keep-alive, or a head that
        // never ends: slowloris, which hyper counts as idle) is asked to close
        // (HTTP/2: GOAWAY). A response still being written (its body handed to
        // hyper, the client slow to read it) is never cut by it.
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let router = self.router.clone();
        let service = service_fn(move |req| {
            let in_flight = InFlight::begin(seen.clone());
            Answer {
                handled: Some(router.handle(req, conn_info)),
                in_flight: Some(in_flight),
            }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let timeout = self.settings.header_timeout;
        let idle_check = tokio::time::sleep(timeout);
        tokio::pin!(idle_check);
        let mut draining = false;
        // Made once: a wake polls it, it is not rebuilt each time round.
        let stopping = self.shutdown.cancelled();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                // The connection first, the clocks after: no random start per wake.
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = &mut idle_check, if !draining => match activity.idle_for() {
                    Idle::Since(quiet) if quiet < timeout => idle_check.as_mut().reset(Instant::now() + (timeout - quiet)),
                    Idle::Busy => idle_check.as_mut().reset(Instant::now() + timeout),
                    Idle::Since(_) if !activity.ever_asked() => {
                        tracing::debug!(%peer, "no request within the header timeout; closing");
                        break;
                    }
                    Idle::Since(_) => {
                        tracing::debug!(%peer, "no request in flight for the header timeout; closing");
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                },
                () = &mut stopping, if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The service's future: the router's answer, tracked until its body ends.
/// Small (hyper holds one per connection); the waiting, when there is any, is
/// boxed by the router.
struct Answer {
    handled: Option<Handled>,
    in_flight: Option<InFlight>,
}

impl Future for Answer {
    type Output = Result<Response<Tracked<LoggedBody>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = match self.handled.take().expect("an answer is not polled once ready") {
            Handled::Now(resp) => resp,
            Handled::Later(mut later) => match later.as_mut().poll(cx) {
                Poll::Ready(resp) => resp,
                Poll::Pending => {
                    self.handled = Some(Handled::Later(later));
                    return Poll::Pending;
                }
            },
        };
        let in_flight = self.in_flight.take().expect("taken with the answer");
        Poll::Ready(Ok(resp.map(|body| Tracked {
            body,
            _in_flight: in_flight,
        })))
    }
}

/// What a connection's requests are doing, for its idle clock.
struct Activity {
    start: Instant,
    /// Requests begun and not yet answered in full.
    in_flight: AtomicU32,
    /// Requests begun, ever.
    asked: AtomicU32,
    /// Milliseconds after `start` when the last request ended.
    quiet_since_ms: AtomicU64,
}

enum Idle {
    Busy,
    /// No request in flight for this long.
    Since(Duration),
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            asked: AtomicU32::new(0),
            quiet_since_ms: AtomicU64::new(0),
        }
    }

    fn ever_asked(&self) -> bool {
        self.asked.load(Ordering::Relaxed) > 0
    }

    fn idle_for(&self) -> Idle {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Idle::Busy;
        }
        let since = self.start + Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        Idle::Since(Instant::now().saturating_duration_since(since))
    }
}

/// One request in flight on a connection, until its response body is done
/// (or the request is dropped, the client gone).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: Arc<Activity>) -> Self {
        activity.asked.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = a.start.elapsed().as_millis() as u64;
        a.quiet_since_ms.fetch_max(ms, Ordering::AcqRel);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight.
    struct Tracked<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
