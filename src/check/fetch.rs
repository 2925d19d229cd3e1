//! GET a document the way AWS STS does: one connection, https, 5 s for the
//! whole answer, no redirects followed. The certificate chain the server sends
//! is kept as sent and judged against the public roots (then `--ca`), but the
//! connection goes on whatever the verdict, so that the later steps still have
//! something to report on. Only public documents are ever asked for here.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// STS gives each fetch this long.
pub(super) const LIMIT: Duration = Duration::from_secs(5);
/// A larger answer is not an OIDC document.
const MAX_BODY: usize = 1 << 20;

/// Whether the chain a server sent is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Trust {
    /// By the public roots: as STS sees it.
    Public,
    /// Only with `--ca`: fine for this test, refused by STS.
    OnlyWithCa,
    /// By nothing; why.
    Untrusted(String),
}

/// The chain as sent, and the verdict.
#[derive(Debug, Clone)]
pub(super) struct ChainSeen {
    pub ders: Vec<CertificateDer<'static>>,
    pub trust: Trust,
}

/// One answer and what it took.
#[derive(Debug)]
pub(super) struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
    /// https only.
    pub chain: Option<ChainSeen>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("no complete answer within {} s", LIMIT.as_secs())]
    Timeout,
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(String),
    #[error("the answer is over {} KiB", MAX_BODY / 1024)]
    TooLarge,
    #[error("{0}: not an http(s) URL with a host")]
    BadUrl(String),
}

/// Fetches public documents; shared by every step and the burst.
#[derive(Clone)]
pub(super) struct Fetcher {
    public: Arc<WebPkiServerVerifier>,
    with_ca: Option<Arc<WebPkiServerVerifier>>,
    /// `--connect-to`: where to connect for this host instead of resolving it.
    connect_to: Option<(String, SocketAddr)>,
}

impl Fetcher {
    /// `ca`: PEM roots trusted besides the public ones (a warning when needed).
    pub(super) fn new(
        ca: &[CertificateDer<'static>],
        connect_to: Option<(String, SocketAddr)>,
    ) -> Result<Self, String> {
        let mut public = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = public.add_parsable_certificates(native.certs);
        if added == 0 {
            // No system store (a scratch image without a bundle): Mozilla's roots.
            public.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let verifier = |roots: RootCertStore| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| e.to_string())
        };
        let with_ca = if ca.is_empty() {
            None
        } else {
            let mut roots = public.clone();
            for cert in ca {
                roots.add(cert.clone()).map_err(|e| format!("--ca: {e}"))?;
            }
            Some(verifier(roots)?)
        };
        Ok(Fetcher {
            public: verifier(public)?,
            with_ca,
            connect_to,
        })
    }

    /// GET `url` within [`LIMIT`], as STS would.
    pub(super) async fn get(&self, url: &Uri) -> Result<Fetched, FetchError> {
        let started = Instant::now();
        tokio::time::timeout(LIMIT, self.exchange(url, started))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn exchange(&self, url: &Uri, started: Instant) -> Result<Fetched, FetchError> {
        let bad_url = || FetchError::BadUrl(url.to_string());
        let host = url.host().ok_or_else(bad_url)?.to_owned();
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad_url()),
        };
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = self.connect(&host, port).await?;
        let authority = url.authority().ok_or_else(bad_url)?.as_str().to_owned();
        if https {
            let recorder = Arc::new(Recorder {
                public: self.public.clone(),
                with_ca: self.with_ca.clone(),
                seen: Mutex::default(),
            });
            let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
                .map_err(|_| bad_url())?;
            let tls = TlsConnector::from(Arc::new(client_config(recorder.clone())))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    // What a plain-HTTP port answers to a ClientHello.
                    if e.to_string().contains("InvalidContentType") {
                        FetchError::Tls(std::io::Error::other("the server answered in plain HTTP, not TLS"))
                    } else {
                        FetchError::Tls(e)
                    }
                })?;
            let chain = recorder.seen.lock().unwrap_or_else(|p| p.into_inner()).take();
            let mut fetched = request(tls, url, &authority, started).await?;
            fetched.chain = chain;
            Ok(fetched)
        } else {
            request(tcp, url, &authority, started).await
        }
    }

    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, FetchError> {
        let addrs: Vec<SocketAddr> = match &self.connect_to {
            Some((name, addr)) if name.eq_ignore_ascii_case(host) => vec![*addr],
            _ => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| FetchError::Resolve {
                    host: host.to_owned(),
                    reason: e.to_string(),
                })?
                .collect(),
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some((addr, e)),
            }
        }
        Err(match last {
            Some((addr, source)) => FetchError::Connect {
                addr: addr.to_string(),
                source,
            },
            None => FetchError::Resolve {
                host: host.to_owned(),
                reason: "no address".into(),
            },
        })
    }
}

/// One HTTP/1.1 GET on `io`, the whole body read (bounded).
async fn request<IO>(io: IO, url: &Uri, authority: &str, started: Instant) -> Result<Fetched, FetchError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let http = |e: hyper::Error| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("gitlab-oidc-proxy-check/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge
            } else {
                FetchError::Http(e.to_string())
            }
        })?
        .to_bytes();
    Ok(Fetched {
        status: parts.status,
        headers: parts.headers,
        body,
        elapsed: started.elapsed(),
        chain: None,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(recorder: Arc<Recorder>) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(recorder)
        .with_no_client_auth();
    // Each fetch a full handshake, so each sees the chain the server sends now.
    config.resumption = rustls::client::Resumption::disabled();
    config
}

/// Keeps the chain as sent and the verdict on it, then lets the handshake go on:
/// `check` reports an untrusted chain as a failed step instead of stopping there.
#[derive(Debug)]
struct Recorder {
    public: Arc<WebPkiServerVerifier>,
    with_ca: Option<Arc<WebPkiServerVerifier>>,
    seen: Mutex<Option<ChainSeen>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |v: &WebPkiServerVerifier| v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let trust = match verify(&self.public) {
            Ok(_) => Trust::Public,
            Err(public) => match self.with_ca.as_deref().map(verify) {
                Some(Ok(_)) => Trust::OnlyWithCa,
                _ => Trust::Untrusted(public.to_string()),
            },
        };
        let ders = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(ChainSeen { ders, trust });
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.public.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.public.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.public.supported_verify_schemes()
    }
}
