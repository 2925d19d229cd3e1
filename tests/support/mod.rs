//! Test harness: the real proxy binary as a child process, in-process upstreams
//! on TCP or a unix socket, and small clients. Everything binds to loopback or a
//! temporary directory and is torn down on drop.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::mpsc;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type TestBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_gitlab-oidc-proxy");

pub(crate) fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub(crate) fn empty() -> TestBody {
    full(Bytes::new())
}

// ---------------------------------------------------------------- the proxy

/// The real binary, started with `--listen`/`--admin-listen` on ephemeral
/// loopback ports; the addresses are read from its JSON "listening" log line.
pub(crate) struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The `--tls-listen` listener, when one was asked for.
    pub tls_addr: Option<SocketAddr>,
    /// The `--oidc-listen` listener, when one was asked for.
    pub oidc_addr: Option<SocketAddr>,
    logs: Arc<Mutex<String>>,
}

impl Proxy {
    pub(crate) fn start(upstream: &str, extra: &[&str]) -> Proxy {
        Self::start_with_env(upstream, extra, &[])
    }

    pub(crate) fn start_with_env(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        Self::spawn(Self::command(upstream, extra, env))
    }

    /// As `start`, with the public listener on `listen` (a port the test chose).
    pub(crate) fn start_on(listen: SocketAddr, upstream: &str, extra: &[&str]) -> Proxy {
        let mut cmd = Self::command(upstream, extra, &[]);
        cmd.args(["--listen", &listen.to_string()]);
        Self::spawn(cmd)
    }

    /// As `start_on`, but None when the proxy exits without listening: the port,
    /// free when the test picked it, was taken since (by another test or process).
    /// Callers pick another port and try again.
    pub(crate) fn try_start_on(listen: SocketAddr, upstream: &str, extra: &[&str]) -> Option<Proxy> {
        let mut cmd = Self::command(upstream, extra, &[]);
        cmd.args(["--listen", &listen.to_string()]);
        Self::try_spawn(cmd)
    }

    fn spawn(cmd: Command) -> Proxy {
        Self::try_spawn(cmd).expect("the proxy exited without listening")
    }

    fn try_spawn(mut cmd: Command) -> Option<Proxy> {
        let mut child = cmd.spawn().expect("spawn proxy");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut logs = sink.lock().unwrap();
                    logs.push_str(&line);
                    logs.push('\n');
                }
                // The "listening" line is logged once the listeners are bound.
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == "listening"
                    && let Some(tx) = tx.take()
                {
                    let listen = v["listen"].as_str().unwrap().parse::<SocketAddr>().unwrap();
                    let admin = v["admin"].as_str().unwrap().parse::<SocketAddr>().unwrap();
                    let tls = v["tls_listen"].as_str().map(|a| a.parse::<SocketAddr>().unwrap());
                    let oidc = v["oidc_listen"].as_str().map(|a| a.parse::<SocketAddr>().unwrap());
                    let _ = tx.send((listen, admin, tls, oidc));
                }
            }
        });
        let (addr, admin, tls_addr, oidc_addr) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addrs) => addrs,
            // Exited on its own before listening (stderr closed): a port already taken.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                if child.wait().is_ok_and(|status| status.code() == Some(1))
                    && logs.lock().unwrap().contains("cannot listen on") =>
            {
                return None;
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(50));
                panic!("proxy did not start; logs:\n{}", logs.lock().unwrap());
            }
        };
        Some(Proxy {
            child,
            addr,
            admin,
            tls_addr,
            oidc_addr,
            logs,
        })
    }

    /// Runs `serve` expecting it to refuse to start: its exit status (None if it
    /// was still running after `within`, then killed) and everything on stderr.
    pub(crate) fn start_expecting_exit(
        upstream: &str,
        extra: &[&str],
        within: Duration,
    ) -> (Option<ExitStatus>, String) {
        let mut child = Self::command(upstream, extra, &[]).spawn().expect("spawn proxy");
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut out);
            out
        });
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, reader.join().unwrap())
    }

    /// `serve` on ephemeral loopback ports unless `extra` says otherwise (a
    /// `--listen` or `--admin-listen` there wins over the defaults, set by env).
    fn command(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--upstream", upstream])
            .env("GITLAB_OIDC_PROXY_LISTEN", "127.0.0.1:0")
            .env("GITLAB_OIDC_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
            .args(["--log-format", "json"])
            .args(extra)
            .env_remove("RUST_LOG")
            // As the container image and the Debian unit run it (README, Performance).
            .env("MIMALLOC_PURGE_DELAY", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// An https URL on the TLS listener, named `localhost` (SNI and the certificate's name).
    pub(crate) fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.tls().port(), path)
    }

    pub(crate) fn tls(&self) -> SocketAddr {
        self.tls_addr
            .expect("the proxy has no TLS listener (no tls_listen in its listening line)")
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` (log lines are written after the
    /// response, so a test must not race them).
    pub(crate) async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(Instant::now() < deadline, "log never showed {needle:?}:\n{logs}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("kill failed");
    }

    /// Polls for the exit status for up to `within`.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory of the proxy process (VmHWM), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    pub(crate) async fn metrics(&self) -> String {
        let resp = client().get(self.admin_url("/metrics").parse().unwrap()).await.unwrap();
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- upstreams

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Unix,
}

/// What an upstream saw of one request (the head; bodies are the handler's).
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

pub(crate) struct Upstream {
    /// The `--upstream` value for the proxy.
    pub target: String,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Connections accepted so far (pooling shows as few connections).
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
    _dir: Option<tempfile::TempDir>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// The next request head the upstream saw, waiting up to 10 s.
    pub(crate) async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("upstream saw no request in 10 s")
            .expect("upstream gone")
    }

    pub(crate) fn saw_nothing(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

/// An HTTP/1.1 upstream (with upgrades) calling `handler` for every request.
pub(crate) async fn upstream<F, Fut>(transport: Transport, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let (tx, seen) = mpsc::unbounded_channel();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    let (target, dir, task) = raw_upstream(transport, move |io| {
        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let handler = handler.clone();
        let tx = tx.clone();
        async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                // The proxy's own OIDC refresher calls too: it gets a 404 (a GitLab
                // without OIDC) and neither the handler nor the test sees it.
                let from_refresher = req
                    .headers()
                    .get("user-agent")
                    .is_some_and(|ua| ua.as_bytes().starts_with(b"gitlab-oidc-proxy/"));
                let fut = (!from_refresher).then(|| {
                    let _ = tx.send(Seen {
                        method: req.method().clone(),
                        uri: req.uri().clone(),
                        version: req.version(),
                        headers: req.headers().clone(),
                    });
                    handler(req)
                });
                async move {
                    let resp = match fut {
                        Some(fut) => fut.await,
                        None => Response::builder().status(404).body(empty()).unwrap(),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await;
        }
    })
    .await;
    Upstream {
        target,
        seen,
        connections,
        _dir: dir,
        task,
    }
}

pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Answers 200 with the request body streamed straight back.
pub(crate) async fn echo(req: Request<Incoming>) -> Response<TestBody> {
    Response::new(req.into_body().map_err(Into::into).boxed_unsync())
}

/// Accepts raw connections on `transport`, handing each stream to `handler`
/// (for websocket servers and other non-hyper peers).
pub(crate) async fn raw_upstream<F, Fut>(
    transport: Transport,
    handler: F,
) -> (String, Option<tempfile::TempDir>, tokio::task::JoinHandle<()>)
where
    F: Fn(Box<dyn Io>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match transport {
        Transport::Tcp => {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let target = format!("http://{}", listener.local_addr().unwrap());
            let task = tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(handler(Box::new(s)));
                }
            });
            (target, None, task)
        }
        Transport::Unix => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("workhorse.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let target = format!("unix:{}", path.display());
            let task = tokio::spawn(async move {
                while let Ok((s, _)) = listener.accept().await {
                    tokio::spawn(handler(Box::new(s)));
                }
            });
            (target, Some(dir), task)
        }
    }
}

/// An upstream that reads the whole upload before it answers, as Workhorse does,
/// and reports how its read of each body ended.
pub(crate) async fn upload_reader() -> (Upstream, mpsc::UnboundedReceiver<Result<usize, String>>) {
    let (tx, body_ends) = mpsc::unbounded_channel();
    let up = upstream(Transport::Tcp, move |req| {
        let tx = tx.clone();
        async move {
            let read = req.into_body().collect().await;
            let _ = tx.send(read.map(|b| b.to_bytes().len()).map_err(|e| e.to_string()));
            Response::new(empty())
        }
    })
    .await;
    (up, body_ends)
}

/// A websocket upstream that echoes until the peer closes.
pub(crate) async fn ws_echo_upstream(t: Transport) -> (String, Option<tempfile::TempDir>, tokio::task::JoinHandle<()>) {
    raw_upstream(t, |io| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(io).await else {
            return;
        };
        while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut ws).await {
            if msg.is_close() || futures_util::SinkExt::send(&mut ws, msg).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// A loopback port that refuses connections for as long as this lives: a socket
/// bound to it but not listening, so no other process can take the port meanwhile
/// (a port found free and then dropped could be).
pub(crate) struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub addr: SocketAddr,
}

pub(crate) fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    ClosedPort { _socket: socket, addr }
}

/// A path for a unix socket that nothing listens on.
pub(crate) fn absent_socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    (dir, path)
}

// ---------------------------------------------------------------- clients

/// A plain HTTP/1.1 client with its own pool.
pub(crate) fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 client with prior knowledge (h2c).
pub(crate) fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// One request with `headers`, answered within 10 s: status, headers, whole body.
pub(crate) async fn fetch(
    url: &str,
    method: http::Method,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req.body(empty()).unwrap()))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, body_bytes(resp).await)
}

pub(crate) async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Writes raw bytes to `addr` and reads until the peer closes or `within` passes.
pub(crate) async fn raw_exchange(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Header names of a raw HTTP/1.1 response head, lower-cased.
pub(crate) fn raw_header_names(response: &str) -> Vec<String> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_ascii_lowercase()))
        .collect()
}

/// The value of one series in the OpenMetrics text, e.g.
/// `gitlab_oidc_proxy_tls_reloads_total{outcome="ok"}`; None when the series is
/// absent (a renamed metric or label must not read as 0).
pub(crate) fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
}

/// Whether the metric family `name` (with or without its `_total` suffix) is in
/// the OpenMetrics text: its `# HELP` and `# TYPE` lines. prometheus-client
/// writes nothing for a labelled family without a series yet, so this is only
/// true once a series exists (the proxy creates at 0 the ones alerts count).
pub(crate) fn metric_declared(text: &str, name: &str) -> bool {
    let family = name.strip_suffix("_total").unwrap_or(name);
    let help = format!("# HELP {family} ");
    let kind = format!("# TYPE {family} ");
    text.lines().any(|l| l.starts_with(&help)) && text.lines().any(|l| l.starts_with(&kind))
}

/// The value of one series that may not exist yet: 0 when absent, but the
/// metric's family must be in the text (so a renamed metric fails instead of reading 0).
pub(crate) fn metric_value_or_zero(text: &str, series: &str) -> f64 {
    let family = series.split('{').next().unwrap_or(series);
    assert!(metric_declared(text, family), "no metric {family} in /metrics:\n{text}");
    metric_value(text, series).unwrap_or(0.0)
}

/// The sum of every series of the metric `name`, whatever its labels; None when
/// the metric is not in the text at all (neither declared nor any series).
pub(crate) fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (metric_declared(text, name) || !values.is_empty()).then(|| values.iter().sum())
}

/// The JSON log lines at `level` (`WARN`, `ERROR`, ...).
pub(crate) fn log_lines_at(logs: &str, level: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["level"] == level)
        .collect()
}

/// Polls `check` every 50 ms until it holds, for at most `within`.
pub(crate) async fn wait_until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- TLS

pub(crate) use rustls::pki_types::CertificateDer;

/// A private PKI generated at runtime into a temporary directory: a root CA and an
/// intermediate CA (ECDSA P-256) that sign leaves. Clients trust the root only.
pub(crate) struct Pki {
    pub dir: tempfile::TempDir,
    pub root_der: CertificateDer<'static>,
    /// The root as a PEM file (for curl's `--cacert`, openssl's `-CAfile`).
    pub root_path: PathBuf,
    pub intermediate_pem: String,
    pub intermediate_der: CertificateDer<'static>,
    intermediate: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its private key.
pub(crate) struct Leaf {
    pub der: CertificateDer<'static>,
    pub pem: String,
    pub key_pem: String,
}

const DAY: Duration = Duration::from_secs(86_400);

/// Leaves are for these names unless a test says otherwise.
pub(crate) const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "gitlab.example.test"];

fn ca_params(cn: &str, not_after: std::time::SystemTime) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = (std::time::SystemTime::now() - DAY).into();
    params.not_after = not_after.into();
    params
}

impl Pki {
    pub(crate) fn new() -> Pki {
        Self::with_intermediate_expiry(std::time::SystemTime::now() + 365 * DAY)
    }

    /// A PKI whose intermediate CA expires at `not_after`.
    pub(crate) fn with_intermediate_expiry(not_after: std::time::SystemTime) -> Pki {
        Self::named("Test", not_after)
    }

    /// A PKI whose CAs are called "`prefix` Root CA" and "`prefix` Intermediate CA".
    pub(crate) fn named(prefix: &str, intermediate_expiry: std::time::SystemTime) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let root_key = rcgen::KeyPair::generate().unwrap();
        let root_params = ca_params(&format!("{prefix} Root CA"), std::time::SystemTime::now() + 3650 * DAY);
        let root_cert = root_params.self_signed(&root_key).unwrap();
        let root = rcgen::Issuer::new(root_params, root_key);
        let int_key = rcgen::KeyPair::generate().unwrap();
        let int_params = ca_params(&format!("{prefix} Intermediate CA"), intermediate_expiry);
        let int_cert = int_params.signed_by(&int_key, &root).unwrap();
        let root_path = dir.path().join("root.pem");
        std::fs::write(&root_path, root_cert.pem()).unwrap();
        Pki {
            dir,
            root_der: root_cert.der().clone(),
            root_path,
            intermediate_pem: int_cert.pem(),
            intermediate_der: int_cert.der().clone(),
            intermediate: rcgen::Issuer::new(int_params, int_key),
        }
    }

    /// A leaf for [`LEAF_NAMES`] with a fresh ECDSA P-256 key, valid for a year.
    pub(crate) fn leaf(&self) -> Leaf {
        self.leaf_with(
            &LEAF_NAMES,
            rcgen::KeyPair::generate().unwrap(),
            std::time::SystemTime::now() + 365 * DAY,
        )
    }

    /// A leaf for `names` (DNS names or IP addresses) with `key`, valid until `not_after`.
    pub(crate) fn leaf_with(&self, names: &[&str], key: rcgen::KeyPair, not_after: std::time::SystemTime) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = (std::time::SystemTime::now() - DAY).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.intermediate).unwrap();
        Leaf {
            der: cert.der().clone(),
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// The full chain in the order servers must send it: leaf, then intermediate.
    pub(crate) fn chain(&self, leaf: &Leaf) -> String {
        format!("{}{}", leaf.pem, self.intermediate_pem)
    }

    /// Writes `contents` to `name` in the PKI's directory (overwriting it in place).
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `leaf`'s chain and key as `cert.pem` and `key.pem`: the arguments for
    /// a TLS listener on an ephemeral loopback port.
    pub(crate) fn tls_args(&self, leaf: &Leaf) -> Vec<String> {
        let cert = self.write("cert.pem", &self.chain(leaf));
        let key = self.write("key.pem", &leaf.key_pem);
        tls_listen_args(&cert, &key)
    }

    /// A rustls client configuration trusting only the root, offering `alpn`.
    pub(crate) fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Every handshake a full one, so the peer certificate is what the server sends
        // now (a resumed session reports the certificate of the session it resumes).
        config.resumption = rustls::client::Resumption::disabled();
        config
    }

    /// A pooling https client (hyper-util's legacy client over hyper-rustls). With
    /// `h2`, ALPN offers `h2` and `http/1.1`, else no ALPN (hyper-rustls's HTTP/1.1 only).
    pub(crate) fn https_client(&self, h2: bool) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, TestBody> {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.client_config(&[]))
            .https_only()
            .enable_http1();
        let connector = if h2 {
            builder.enable_http2().build()
        } else {
            builder.build()
        };
        Client::builder(TokioExecutor::new()).build(connector)
    }

    /// A TLS handshake as `localhost` on `io` (a fresh TCP connection, or one that
    /// already carried a PROXY protocol header).
    pub(crate) async fn handshake<S>(
        &self,
        io: S,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(alpn)));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, io))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake took over 10 s"))?
    }

    /// A fresh TCP connection to `addr` and a TLS handshake on it.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.handshake(tcp, alpn).await
    }
}

/// The leaf certificate a TLS server presented.
pub(crate) fn peer_leaf<S>(tls: &tokio_rustls::client::TlsStream<S>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("the server sent no certificate")[0]
        .clone()
        .into_owned()
}

/// An HTTP/1.1 client connection over `io` (TLS or plain), driven in the background.
pub(crate) async fn http1_over<S>(io: S) -> hyper::client::conn::http1::SendRequest<TestBody>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET `path` with `Host: localhost` on an HTTP/1.1 connection; the status and body.
pub(crate) async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<TestBody>,
    path: &str,
) -> Result<(http::StatusCode, Bytes), String> {
    let req = Request::get(path).header("host", "localhost").body(empty()).unwrap();
    let exchange = async {
        sender.ready().await.map_err(|e| format!("not ready: {e}"))?;
        let resp = sender.send_request(req).await.map_err(|e| format!("request: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer in 10 s".to_owned())?
}

/// `--tls-listen` on an ephemeral loopback port with these files.
pub(crate) fn tls_listen_args(cert: &std::path::Path, key: &std::path::Path) -> Vec<String> {
    vec![
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}
