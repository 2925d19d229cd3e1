//! The public listeners: accept TCP connections, read a PROXY header when
//! configured, terminate TLS on the TLS listener, serve HTTP/1.1 and HTTP/2 on
//! each, and on shutdown stop accepting and let every connection finish.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ipnet::IpNet;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::LoggedBody;
use crate::config::Proto;
use crate::headers;
use crate::idle::{Activity, Idle, InFlight, PARK_AFTER, ParkIo};
use crate::metrics::{ErrorLabels, Metrics};
use crate::proxy_protocol;
use crate::router::{ConnInfo, Handled, ListenerKind, Router};
use crate::woken::Woken;
use crate::workers::Workers;

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

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Longest wait for a connection no hyper connection holds to close cleanly.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything a connection task needs, shared by all of them.
struct Shared {
    router: Arc<Router>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Where the connections' idle timers are kept ([`Workers::clock`]).
    clock: tokio::runtime::Handle,
}

/// Accepts until `shutdown` fires. Connection tasks go into `tracker`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    (tracker, workers): (TaskTracker, Arc<Workers>),
) {
    let mut h1 = http1::Builder::new();
    h1
        // No per-request header timer: the connection's own clock (`Shared::drive`)
        // bounds a head that never ends, at no cost to the requests that do.
        .header_read_timeout(None)
        // Not `pipeline_flush`: hyper would then call a response done with
        // bytes unflushed, and a parked connection could lose them.
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // nginx's http2_max_concurrent_streams: bounds what one client can hold open.
        .max_concurrent_streams(128)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let shared = Arc::new(Shared {
        router,
        h1,
        h2,
        settings,
        metrics,
        shutdown: shutdown.clone(),
        clock: workers.clock().clone(),
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
        workers.spawn(&tracker, stream, move |stream| async move {
            let _open = Counted::new(&shared.metrics.open_connections);
            shared.clone().connection(stream, peer).await;
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
        // The handshake boxed apart and freed once done: the connection's
        // state, kept as long as it lives, is not sized for it.
        let Some(tls) = Box::pin(self.handshake(acceptor, stream, client)).await else {
            return;
        };
        self.http(tls, client, proxied).await
    }

    /// The TLS handshake, bounded by --tls-handshake-timeout; failures counted.
    async fn handshake<S>(&self, acceptor: TlsAcceptor, stream: S, client: SocketAddr) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = tokio::select! {
            done = tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(stream)) => done,
            () = self.shutdown.cancelled() => return None,
        };
        let reason = match handshake {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                "error"
            }
            Err(_) => {
                tracing::debug!(peer = %client, "TLS handshake timed out");
                "timeout"
            }
        };
        self.metrics
            .tls_handshake_failures
            .get_or_create(&ErrorLabels { reason })
            .inc();
        None
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
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let router = self.router.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            // hyper marks a request that may upgrade (Upgrade:, CONNECT) thus.
            let upgrade = req.extensions().get::<OnUpgrade>().is_some();
            let in_flight = InFlight::begin(seen.clone(), req.body().is_end_stream(), upgrade);
            Answer {
                handled: Some(router.handle(req, conn_info, in_flight)),
            }
        });
        let mut io = ParkIo::new(stream, activity.clone());
        // HTTP/2 when the client opens with its preface (h2c with prior
        // knowledge, or after ALPN h2), else HTTP/1.
        let h2 = loop {
            let first = io.unread();
            if first.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(first) {
                break first.starts_with(H2_PREFACE);
            }
            if !self.next_bytes(&mut io, &activity, peer).await {
                return close(io).await;
            }
        };
        if h2 {
            // Boxed: an HTTP/2 connection's state does not size every task.
            let mut conn = Box::pin(self.h2.serve_connection(TokioIo::new(io), service));
            self.drive(
                conn.as_mut(),
                http2::Connection::graceful_shutdown,
                &activity,
                peer,
                false,
            )
            .await;
            return;
        }
        self.serve_h1(io, service, &activity, peer).await
    }

    /// HTTP/1: hyper serves the connection until it ends or is parked; a
    /// parked one waits here for its next bytes, then hyper serves it again.
    async fn serve_h1<S, F>(&self, mut io: ParkIo<S>, service: F, activity: &Activity, peer: SocketAddr)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        F: hyper::service::HttpService<Incoming, ResBody = LoggedBody> + Clone,
        F::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        loop {
            let parts = {
                // Boxed, and the box gone before the wait: a parked
                // connection's task keeps no room for hyper's.
                let mut conn = Box::new(
                    self.h1
                        .serve_connection(TokioIo::new(io), service.clone())
                        .with_upgrades(),
                );
                let parked = self
                    .drive(
                        Pin::new(&mut *conn),
                        http1::UpgradeableConnection::graceful_shutdown,
                        activity,
                        peer,
                        true,
                    )
                    .await;
                if !parked {
                    return;
                }
                conn.into_parts()
            };
            // hyper is gone with its buffers; what it read past the last
            // request (a next request's start) is kept for the next one.
            // In a block: `parts` (room for another stream) is not kept in the
            // task's state while parked.
            io = {
                let Some(parts) = parts else { return };
                let mut io = parts.io.into_inner();
                io.put_back(parts.read_buf);
                io
            };
            activity.set_parking(false);
            let parked = Counted::new(&self.metrics.parked_connections);
            let more = self.next_bytes(&mut io, activity, peer).await;
            drop(parked);
            if !more {
                return close(io).await;
            }
        }
    }

    /// Waits for a client's next bytes while hyper does not hold its
    /// connection, bounded by the same idle clock. `false`: the connection is
    /// to end (the peer closed it, was quiet for --header-timeout, or the proxy
    /// is shutting down).
    async fn next_bytes<S>(&self, io: &mut ParkIo<S>, activity: &Activity, peer: SocketAddr) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let quiet = match activity.idle_for() {
            Idle::Since(quiet) => quiet,
            Idle::Busy => Duration::ZERO,
        };
        let left = self.settings.header_timeout.saturating_sub(quiet);
        let read = {
            let _on = self.clock.enter();
            tokio::time::timeout(left, io.read_more())
        };
        tokio::select! {
            biased;
            read = read => match read {
                Ok(Ok(more)) => more,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                    false
                }
                Err(_) => {
                    tracing::debug!(%peer, "no request within the header timeout; closing");
                    false
                }
            },
            () = self.shutdown.cancelled() => false,
        }
    }

    /// Runs hyper's connection until it ends; `true` when it ended to be parked.
    ///
    /// One clock per connection, in place of a timer per request: a new
    /// connection that sends nothing is cut after --header-timeout; one with
    /// no request in flight for that long (idle keep-alive, or a head that
    /// never ends: slowloris, which hyper counts as idle) is asked to close
    /// (HTTP/2: GOAWAY). A response still being written (its body handed to
    /// hyper, the client slow to read it) is never cut by it. An HTTP/1
    /// connection at a request boundary for `PARK_AFTER` is parked instead.
    async fn drive<C>(
        &self,
        mut conn: Pin<&mut C>,
        graceful_shutdown: fn(Pin<&mut C>),
        activity: &Activity,
        peer: SocketAddr,
        may_park: bool,
    ) -> bool
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let timeout = self.settings.header_timeout;
        let park_after = if may_park && PARK_AFTER < timeout {
            Some(PARK_AFTER)
        } else {
            None
        };
        let first_check = park_after.unwrap_or(timeout);
        // Both polled only when they fire (or the clock is moved), not at each
        // wake of the connection's task.
        let idle_check = {
            // Kept by the starting runtime: this thread's own would read the
            // clock at each of its wake-ups for as long as a timer is pending.
            let _on = self.clock.enter();
            Woken::new(tokio::time::sleep(first_check))
        };
        tokio::pin!(idle_check);
        let mut draining = false;
        // Made once: a wake polls it, it is not rebuilt each time round.
        let stopping = Woken::new(self.shutdown.cancelled());
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                // The connection first, the clocks after: no random start per wake.
                biased;
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return false;
                }
                () = &mut idle_check, if !draining => match activity.idle_for() {
                    Idle::Busy => idle_check.as_mut().inner_mut().reset(Instant::now() + first_check),
                    Idle::Since(quiet) if quiet >= timeout && !activity.ever_asked() => {
                        tracing::debug!(%peer, "no request within the header timeout; closing");
                        return false;
                    }
                    Idle::Since(quiet) if quiet >= timeout => {
                        tracing::debug!(%peer, "no request in flight for the header timeout; closing");
                        draining = true;
                        graceful_shutdown(conn.as_mut());
                    }
                    Idle::Since(quiet) if park_after.is_some_and(|after| quiet >= after) && activity.at_boundary() => {
                        match park(conn.as_mut(), graceful_shutdown, activity, peer).await {
                            Some(parked) => return parked,
                            // Not at a boundary after all: it ends once its exchange does.
                            None => draining = true,
                        }
                    }
                    Idle::Since(quiet) => {
                        let until_timeout = timeout - quiet;
                        // Next look: when it may be parked, or when it times out.
                        let next = match park_after {
                            _ if activity.never_parked() => until_timeout,
                            Some(after) if quiet < after => after - quiet,
                            Some(after) => after.min(until_timeout),
                            None => until_timeout,
                        };
                        idle_check.as_mut().inner_mut().reset(Instant::now() + next);
                    }
                },
                () = &mut stopping, if !draining => {
                    draining = true;
                    graceful_shutdown(conn.as_mut());
                }
            }
        }
    }
}

/// Asks hyper to end an HTTP/1 connection so that it can be parked. hyper
/// ends an idle one at once, without writing: one poll tells whether it was
/// idle. `Some(true)`: ended, to be parked; `Some(false)`: ended with an
/// error; `None`: still busy, now closing once its exchange ends.
async fn park<C>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: fn(Pin<&mut C>),
    activity: &Activity,
    peer: SocketAddr,
) -> Option<bool>
where
    C: Future<Output = hyper::Result<()>>,
{
    activity.set_parking(true);
    graceful_shutdown(conn.as_mut());
    let ended = poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
    if !matches!(ended, Poll::Ready(Ok(()))) {
        activity.set_parking(false);
    }
    match ended {
        Poll::Ready(Ok(())) => Some(true),
        Poll::Ready(Err(e)) => {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            Some(false)
        }
        Poll::Pending => None,
    }
}

/// Counted in a gauge while alive.
struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Ends a connection no hyper connection holds: TLS's close_notify, then FIN.
async fn close<S: AsyncWrite + Unpin>(mut io: S) {
    // Bounded: a peer that reads nothing cannot hold the task.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, io.shutdown()).await;
}

/// The service's future: the router's answer (its access record carries the
/// request's in-flight count until its body ends).
/// Small (hyper holds one per connection); the waiting, when there is any, is
/// boxed by the router.
struct Answer {
    handled: Option<Handled>,
}

impl Future for Answer {
    type Output = Result<Response<LoggedBody>, Infallible>;

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
        Poll::Ready(Ok(resp))
    }
}
