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

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

pub const BIN: &str = env!("CARGO_BIN_EXE_gitlab-oidc-proxy");

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

// ---------------------------------------------------------------- the proxy

/// The real binary, started with `--listen`/`--admin-listen` on ephemeral
/// loopback ports; the addresses are read from its JSON "listening" log line.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Proxy {
    pub fn start(upstream: &str, extra: &[&str]) -> Proxy {
        Self::start_with_env(upstream, extra, &[])
    }

    pub fn start_with_env(upstream: &str, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--log-format", "json"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
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
                    let _ = tx.send((listen, admin));
                }
            }
        });
        let (addr, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(pair) => pair,
            Err(_) => {
                let _ = child.kill();
                panic!("proxy did not start; logs:\n{}", logs.lock().unwrap());
            }
        };
        Proxy {
            child,
            addr,
            admin,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` (log lines are written after the
    /// response, so a test must not race them).
    pub async fn wait_for_log(&self, needle: &str) -> String {
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

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Polls for the exit status for up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
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
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status")
    }

    pub async fn metrics(&self) -> String {
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
pub enum Transport {
    Tcp,
    Unix,
}

/// What an upstream saw of one request (the head; bodies are the handler's).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: http::Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

pub struct Upstream {
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
    pub async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.seen.recv())
            .await
            .expect("upstream saw no request in 10 s")
            .expect("upstream gone")
    }

    pub fn saw_nothing(&mut self) -> bool {
        self.seen.try_recv().is_err()
    }
}

/// An HTTP/1.1 upstream (with upgrades) calling `handler` for every request.
pub async fn upstream<F, Fut>(transport: Transport, handler: F) -> Upstream
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

pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Answers 200 with the request body streamed straight back.
pub async fn echo(req: Request<Incoming>) -> Response<TestBody> {
    Response::new(req.into_body().map_err(Into::into).boxed_unsync())
}

/// Accepts raw connections on `transport`, handing each stream to `handler`
/// (for websocket servers and other non-hyper peers).
pub async fn raw_upstream<F, Fut>(
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

/// A websocket upstream that echoes until the peer closes.
pub async fn ws_echo_upstream(t: Transport) -> (String, Option<tempfile::TempDir>, tokio::task::JoinHandle<()>) {
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

/// A path for a unix socket that nothing listens on.
pub fn absent_socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.sock");
    (dir, path)
}

// ---------------------------------------------------------------- clients

/// A plain HTTP/1.1 client with its own pool.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 client with prior knowledge (h2c).
pub fn h2c_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub async fn body_bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Writes raw bytes to `addr` and reads until the peer closes or `within` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Header names of a raw HTTP/1.1 response head, lower-cased.
pub fn raw_header_names(response: &str) -> Vec<String> {
    response
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_ascii_lowercase()))
        .collect()
}
