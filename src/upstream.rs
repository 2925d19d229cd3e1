//! The connection pool to GitLab (Workhorse): TCP, TLS or a unix socket, all
//! through hyper-util's pooled client, with a connect timeout that is told apart
//! from a refused connection (504 vs 502).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::UnixStream;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{IdleTimeout, ProxyBody};
use crate::config::UpstreamTarget;
use crate::error::{BoxError, ClientBodyError, DownstreamError, ProxyError, UpstreamError};
use crate::headers::{self, ViaId};
use crate::metrics::Metrics;

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
    client: Pool,
    scheme: Scheme,
    authority: http::uri::Authority,
    response_timeout: Duration,
    via: ViaId,
    /// Counts the requests refused for want of a connection.
    refusals: Option<Counter>,
}

enum Pool {
    Tcp(Client<Connector<HttpConnector>, ProxyBody>),
    Tls(Client<Connector<HttpsConnector<HttpConnector>>, ProxyBody>),
    Unix(Client<Connector<UnixConnector>, ProxyBody>),
}

impl Upstream {
    /// A pool to `settings.target`; with a `budget`, its connections count against it.
    pub(crate) fn new(settings: &UpstreamSettings, budget: Option<Arc<Budget>>) -> Result<Self, SetupError> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Host is the client's, set by the passthrough; never invent one.
            .set_host(false);
        let timeout = settings.connect_timeout;
        let (client, scheme, authority) = match &settings.target {
            UpstreamTarget::Http { authority } => {
                let pool = Pool::Tcp(builder.build(Connector::new(tcp_connector(), timeout, budget.clone())));
                (pool, Scheme::HTTP, authority.clone())
            }
            UpstreamTarget::Https { authority } => {
                let tls = tls_client_config("--upstream-ca", settings.extra_ca.as_deref())?;
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(tcp_connector());
                let pool = Pool::Tls(builder.build(Connector::new(https, timeout, budget.clone())));
                (pool, Scheme::HTTPS, authority.clone())
            }
            UpstreamTarget::Unix { path } => {
                let unix = UnixConnector {
                    path: Arc::from(path.as_path()),
                };
                let pool = Pool::Unix(builder.build(Connector::new(unix, timeout, budget.clone())));
                // Only the pool key (Host is never taken from it): the socket
                // path decides where bytes go. One byte: hyper-util hashes the
                // key byte by byte with SipHash three times a request.
                (pool, Scheme::HTTP, http::uri::Authority::from_static("u"))
            }
        };
        Ok(Upstream {
            client,
            scheme,
            authority,
            response_timeout: settings.response_timeout,
            via: settings.via.clone(),
            refusals: budget.map(|b| b.metrics.upstream_refusals.clone()),
        })
    }

    /// The URI a request for `path_and_query` is sent to.
    pub(crate) fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(
                path_and_query
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
            .expect("scheme, authority and path are each valid")
    }

    /// Sends a request and waits for the response headers (not the body). The
    /// response timeout starts once the request body is sent: an upload may take
    /// hours, its silences are bounded by the body's own idle limit.
    /// `Via` names the protocol the request came in with; Workhorse gets HTTP/1.1.
    pub(crate) async fn send(&self, mut req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        let received = req.version();
        headers::append_via(req.headers_mut(), received, &self.via);
        *req.version_mut() = Version::HTTP_11;
        let has_body = !http_body::Body::is_end_stream(req.body());
        let (req, sent) = if has_body {
            let (parts, body) = req.into_parts();
            let (body, sent) = crate::body::with_end_signal(body);
            (Request::from_parts(parts, body), Some(sent))
        } else {
            (req, None)
        };
        let exchange = match &self.client {
            Pool::Tcp(c) => c.request(req),
            Pool::Tls(c) => c.request(req),
            Pool::Unix(c) => c.request(req),
        };
        tokio::pin!(exchange);
        if let Some(sent) = sent {
            tokio::select! {
                biased;
                result = &mut exchange => return result.map_err(|e| self.classify(e)),
                _ = sent => {}
            }
        }
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => Err(ProxyError::Upstream(UpstreamError::ResponseTimeout)),
            Ok(result) => result.map_err(|e| self.classify(e)),
        }
    }

    fn classify(&self, err: hyper_util::client::legacy::Error) -> ProxyError {
        let err = classify(err);
        if let (ProxyError::Upstream(UpstreamError::Busy), Some(refusals)) = (&err, &self.refusals) {
            refusals.inc();
        }
        err
    }
}

fn classify(err: hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if e.is::<ConnectTimedOut>() {
            return ProxyError::Upstream(UpstreamError::ConnectTimeout);
        }
        if e.is::<BudgetExhausted>() {
            return ProxyError::Upstream(UpstreamError::Busy);
        }
        if let Some(body) = e.downcast_ref::<ClientBodyError>() {
            tracing::debug!(error = %crate::error::chain(&err), "client request body failed");
            if body.0.is::<IdleTimeout>() {
                return ProxyError::Downstream(DownstreamError::RequestBodyTimeout);
            }
            return ProxyError::Downstream(DownstreamError::RequestBody);
        }
        source = e.source();
    }
    if err.is_connect() {
        ProxyError::Upstream(UpstreamError::Connect(Box::new(err)))
    } else {
        ProxyError::Upstream(UpstreamError::Exchange(Box::new(err)))
    }
}

fn tcp_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
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

/// Why the client to an https upstream cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("{option} {}: {source}", path.display())]
    CaFile {
        option: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{option} {}: no certificate in the file", path.display())]
    CaEmpty { option: &'static str, path: PathBuf },
    #[error("{option} {}: {source}", path.display())]
    CaRefused {
        option: &'static str,
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("no system CA certificates found for the https connection; pass {0}")]
    NoSystemRoots(&'static str),
    #[error("TLS client configuration: {0}")]
    Config(rustls::Error),
}

/// System roots and those of `extra_ca` (named `option` in errors); without
/// `extra_ca`, at least one system root.
pub(crate) fn tls_client_config(
    option: &'static str,
    extra_ca: Option<&Path>,
) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|source| SetupError::CaFile {
                option,
                path: path.to_owned(),
                source,
            })?;
        if certs.is_empty() {
            return Err(SetupError::CaEmpty {
                option,
                path: path.to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|source| SetupError::CaRefused {
                option,
                path: path.to_owned(),
                source,
            })?;
        }
    } else if added == 0 {
        return Err(SetupError::NoSystemRoots(option));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Marks a connect attempt that ran out of time, so it maps to 504.
#[derive(Debug, thiserror::Error)]
#[error("connect timed out")]
pub(crate) struct ConnectTimedOut;

/// Marks a connection that could not be had within the budget, so it maps to 503.
#[derive(Debug, thiserror::Error)]
#[error("--max-upstream-connections reached and none freed up within --connect-timeout")]
pub(crate) struct BudgetExhausted;

/// How many connections may be open to one upstream at once. A permit is held
/// by the connection itself, so it is returned only when the socket closes:
/// idle pooled connections, websockets and long polls all count.
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    /// How long a request waits for a permit (`--connect-timeout`).
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl Budget {
    pub(crate) fn new(max: u32, wait: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Budget {
            permits: Arc::new(Semaphore::new(max as usize)),
            wait,
            metrics,
        })
    }

    async fn acquire(&self) -> Result<Permit, BoxError> {
        // Out of time, or the semaphore closed (never done): either way no place.
        let Ok(Ok(permit)) = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await else {
            return Err(Box::new(BudgetExhausted));
        };
        self.metrics.upstream_connections.inc();
        Ok(Permit {
            _permit: permit,
            gauge: self.metrics.upstream_connections.clone(),
        })
    }
}

/// One connection's place in the budget, and in the gauge, until it closes.
struct Permit {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Connects within `--connect-timeout`, once the budget (if any) allows.
///
/// hyper-util's pool asks for a new connection only when it has no idle one for
/// the request, and hands a waiting request the first connection that turns
/// idle: a request waiting here takes a pooled connection as soon as one is
/// free, so idle connections never hold the budget against it.
#[derive(Clone)]
pub(crate) struct Connector<C> {
    inner: C,
    timeout: Duration,
    budget: Option<Arc<Budget>>,
}

impl<C> Connector<C> {
    fn new(inner: C, timeout: Duration, budget: Option<Arc<Budget>>) -> Self {
        Connector { inner, timeout, budget }
    }
}

type ConnectFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<C> tower_service::Service<Uri> for Connector<C>
where
    C: tower_service::Service<Uri> + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = Counted<C::Response>;
    type Error = BoxError;
    type Future = ConnectFuture<Counted<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        let budget = self.budget.clone();
        Box::pin(async move {
            let permit = match &budget {
                Some(budget) => Some(budget.acquire().await?),
                None => None,
            };
            match tokio::time::timeout(timeout, connecting).await {
                Ok(io) => Ok(Counted {
                    io: io.map_err(Into::into)?,
                    _permit: permit,
                }),
                Err(_) => Err(Box::new(ConnectTimedOut) as BoxError),
            }
        })
    }
}

/// Connects to Workhorse's unix socket whatever the URI says.
#[derive(Clone)]
pub(crate) struct UnixConnector {
    path: Arc<Path>,
}

impl tower_service::Service<Uri> for UnixConnector {
    type Response = TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<UnixStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.path.clone();
        Box::pin(async move {
            let stream = UnixStream::connect(&*path)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A connection to GitLab that holds its place in the budget until dropped.
pub(crate) struct Counted<T> {
    io: T,
    _permit: Option<Permit>,
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
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
        assert_eq!(
            up.uri_for(Some(&pq)).to_string(),
            "http://127.0.0.1:8181/api/v4/jobs/request?x=1"
        );
        assert_eq!(up.uri_for(None).to_string(), "http://127.0.0.1:8181/");
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

    #[tokio::test(start_paused = true)]
    async fn budget_waits_then_refuses_and_frees_on_close() {
        let metrics = Arc::new(Metrics::new());
        let budget = Budget::new(1, Duration::from_secs(10), metrics.clone());
        let first = budget.acquire().await.unwrap();
        assert_eq!(metrics.upstream_connections.get(), 1);
        let started = tokio::time::Instant::now();
        let refused = budget.acquire().await.err().unwrap();
        assert!(refused.is::<BudgetExhausted>(), "{refused}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // A waiter gets the place the moment a connection closes.
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire().await.map(drop).is_ok() }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(metrics.upstream_connections.get(), 0);
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
