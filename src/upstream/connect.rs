//! Opening connections to an upstream: TCP, TLS or a unix socket, within the
//! budget of connections (`--max-upstream-connections`), HTTP/1.1 on each.

use std::future::{Future, poll_fn};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use http::uri::Scheme;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::ProxyBody;
use crate::config::UpstreamTarget;
use crate::error::BoxError;
use crate::metrics::Metrics;

/// How a connection is opened.
pub(super) enum Dial {
    Tcp(HttpConnector),
    Tls(HttpsConnector<HttpConnector>),
    Unix(UnixConnector),
}

impl Dial {
    /// How to reach `target`, and the URI its connector is given (scheme and
    /// authority; a unix socket's path decides where bytes go, whatever it says).
    pub(super) fn to(target: &UpstreamTarget, extra_ca: Option<&Path>) -> Result<(Dial, Uri), SetupError> {
        let (dial, scheme, authority) = match target {
            UpstreamTarget::Http { authority } => (Dial::Tcp(tcp_connector()), Scheme::HTTP, authority.clone()),
            UpstreamTarget::Https { authority } => {
                let tls = tls_client_config("--upstream-ca", extra_ca)?;
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_only()
                    .enable_http1()
                    .wrap_connector(tcp_connector());
                (Dial::Tls(https), Scheme::HTTPS, authority.clone())
            }
            UpstreamTarget::Unix { path } => {
                let unix = UnixConnector {
                    path: Arc::from(path.as_path()),
                };
                (
                    Dial::Unix(unix),
                    Scheme::HTTP,
                    http::uri::Authority::from_static("unix"),
                )
            }
        };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query("/")
            .build()
            .expect("scheme and authority are each valid");
        Ok((dial, uri))
    }

    pub(super) async fn open(&self, uri: &Uri, permit: Option<Permit>) -> Result<SendRequest<ProxyBody>, BoxError> {
        match self {
            Dial::Tcp(c) => handshake(connect(c.clone(), uri).await?, permit).await,
            Dial::Tls(c) => handshake(connect(c.clone(), uri).await?, permit).await,
            Dial::Unix(c) => handshake(connect(c.clone(), uri).await?, permit).await,
        }
    }
}

async fn connect<C>(mut connector: C, uri: &Uri) -> Result<C::Response, BoxError>
where
    C: tower_service::Service<Uri>,
    C::Error: Into<BoxError>,
{
    poll_fn(|cx| connector.poll_ready(cx)).await.map_err(Into::into)?;
    connector.call(uri.clone()).await.map_err(Into::into)
}

/// HTTP/1.1 on `io`, driven by a task of this thread's runtime; the permit
/// (with the socket) is released when the connection ends, a tunnel's included.
async fn handshake<T>(io: T, permit: Option<Permit>) -> Result<SendRequest<ProxyBody>, BoxError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) = http1::handshake(Counted { io, _permit: permit }).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(target: "upstream", error = %e, "upstream connection ended with an error");
        }
    });
    Ok(send)
}

pub(super) fn tcp_connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
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

/// How many connections may be open to one upstream at once. A permit is held
/// by the connection itself, so it is returned only when the socket closes:
/// idle pooled connections, websockets and long polls all count.
pub(crate) struct Budget {
    permits: Arc<Semaphore>,
    /// How long a request waits for a permit (`--connect-timeout`).
    pub(super) wait: Duration,
    pub(super) metrics: Arc<Metrics>,
}

impl Budget {
    pub(crate) fn new(max: u32, wait: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Budget {
            permits: Arc::new(Semaphore::new(max as usize)),
            wait,
            metrics,
        })
    }

    /// A place now, if one is free.
    pub(super) fn try_acquire(&self) -> Option<Permit> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.counted(permit))
    }

    /// A place once one frees up, if that is before `deadline`.
    pub(super) async fn acquire_until(&self, deadline: tokio::time::Instant) -> Option<Permit> {
        // Out of time, or the semaphore closed (never done): either way no place.
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await else {
            return None;
        };
        Some(self.counted(permit))
    }

    fn counted(&self, permit: OwnedSemaphorePermit) -> Permit {
        self.metrics.upstream_connections.inc();
        Permit {
            _permit: permit,
            gauge: self.metrics.upstream_connections.clone(),
        }
    }
}

/// One connection's place in the budget, and in the gauge, until it closes.
pub(super) struct Permit {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gauge.dec();
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

    #[tokio::test(start_paused = true)]
    async fn budget_waits_then_refuses_and_frees_on_close() {
        let metrics = Arc::new(Metrics::new());
        let budget = Budget::new(1, Duration::from_secs(10), metrics.clone());
        let first = budget.try_acquire().unwrap();
        assert_eq!(metrics.upstream_connections.get(), 1);
        assert!(budget.try_acquire().is_none());
        let started = tokio::time::Instant::now();
        assert!(budget.acquire_until(started + budget.wait).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        // A waiter gets the place the moment a connection closes.
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move {
                let deadline = tokio::time::Instant::now() + budget.wait;
                budget.acquire_until(deadline).await.map(drop).is_some()
            }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(first);
        assert!(waiter.await.unwrap());
        assert_eq!(metrics.upstream_connections.get(), 0);
    }
}
