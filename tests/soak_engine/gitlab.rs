//! The soak's GitLab: an HTTP/1.1 server on a fixed loopback port that can be
//! taken down (listener closed, every connection and tunnel dropped) and brought
//! back, and that misbehaves on request while "faulty". What each response is
//! meant to be is in its request's path, so clients check it on their own:
//!
//! - `/.well-known/openid-configuration`, `/oauth/discovery/keys`, `/-/jwks`:
//!   the documents of the crate's simulated GitLab (16.8), taken once at start.
//! - `GET /gen/{len}/{seed}/{cl|chunked}`: `len` bytes of stream `seed`
//!   (`application/octet-stream`), with `Content-Length` or chunked.
//! - `GET /text/{len}/{seed}`: a text stream (`text/plain`, so the proxy compresses it).
//! - `GET /stream/{pieces}/{size}/{seed}`: a stream dribbled in pieces 5-40 ms apart.
//! - `POST /upload/{len}/{seed}`: reads the body, checks it is `len` bytes of
//!   stream `seed`, answers `"{received} ok"` or `"{received} bad: ..."`.
//! - `GET /ws`: a websocket that echoes every message.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::pattern::{Check, Rng, fill};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type SoakBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(b: impl Into<Bytes>) -> SoakBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

/// A stalled body stays silent this long: past the proxy's `--idle-timeout`.
pub(crate) const STALL: Duration = Duration::from_secs(6);
/// Header set on every failure the soak's GitLab answers on purpose.
pub(crate) const FAULT_HEADER: &str = "x-soak-fault";

/// The OIDC documents served, as the simulated GitLab made them.
pub(crate) struct Docs {
    pub discovery: Bytes,
    pub oauth_keys: Bytes,
    pub jwks: Bytes,
    /// The kids every key set must hold.
    pub kids: Vec<String>,
}

/// Faults injected so far, by kind (for the summary).
pub(crate) const FAULT_KINDS: [&str; 9] = [
    "status_5xx",
    "slow_headers",
    "no_headers",
    "cut_mid_body",
    "stall_mid_body",
    "hang_up",
    "upload_cut",
    "ws_refused",
    "ws_dropped",
];

#[derive(Clone, Copy)]
enum Fault {
    Status5xx,
    SlowHeaders,
    NoHeaders,
    CutMidBody,
    StallMidBody,
    HangUp,
    UploadCut,
    WsRefused,
    WsDropped,
}

struct Shared {
    docs: Docs,
    faulty: AtomicBool,
    seed: u64,
    requests: AtomicU64,
    injected: [AtomicU64; 9],
    /// Uploads whose body ended cleanly but was not what the path said.
    bad_uploads: AtomicU64,
}

impl Shared {
    fn rng(&self) -> Rng {
        Rng::new(self.seed ^ self.requests.fetch_add(1, Ordering::Relaxed))
    }

    fn inject(&self, fault: Fault) {
        self.injected[fault as usize].fetch_add(1, Ordering::Relaxed);
    }
}

struct Generation {
    token: CancellationToken,
    accept: JoinHandle<()>,
}

pub(crate) struct GitLab {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    live: Mutex<Option<Generation>>,
}

impl GitLab {
    /// Up on a free port of 20000-31999 (below the ephemeral range, so no
    /// outgoing connection takes it while the server is down).
    pub(crate) async fn start(docs: Docs, seed: u64) -> io::Result<GitLab> {
        let shared = Arc::new(Shared {
            docs,
            faulty: AtomicBool::new(false),
            seed,
            requests: AtomicU64::new(0),
            injected: Default::default(),
            bad_uploads: AtomicU64::new(0),
        });
        let mut rng = Rng::new(seed);
        for _ in 0..200 {
            let addr = SocketAddr::from(([127, 0, 0, 1], rng.range(20000, 31999) as u16));
            if let Ok(listener) = bind(addr) {
                let gitlab = GitLab {
                    addr,
                    shared,
                    live: Mutex::new(None),
                };
                gitlab.serve(listener);
                return Ok(gitlab);
            }
        }
        Err(io::Error::other("no free port in 20000-31999"))
    }

    fn serve(&self, listener: TcpListener) {
        let token = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(listener, self.shared.clone(), token.clone()));
        *self.live.lock().unwrap() = Some(Generation { token, accept });
    }

    /// Stops listening and drops every connection and tunnel at once.
    pub(crate) fn down(&self) {
        if let Some(generation) = self.live.lock().unwrap().take() {
            generation.token.cancel();
            generation.accept.abort();
        }
    }

    /// Listens again on the same port (retrying while the old socket goes away).
    pub(crate) async fn up(&self) -> io::Result<()> {
        let mut last = None;
        for _ in 0..100 {
            match bind(self.addr) {
                Ok(listener) => {
                    self.serve(listener);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| io::Error::other("bind failed")))
    }

    pub(crate) fn set_faulty(&self, on: bool) {
        self.shared.faulty.store(on, Ordering::Relaxed);
    }

    /// Faults injected so far, in the order of [`FAULT_KINDS`].
    pub(crate) fn injected(&self) -> Vec<(&'static str, u64)> {
        let counts = self.shared.injected.iter().map(|n| n.load(Ordering::Relaxed));
        FAULT_KINDS.iter().copied().zip(counts).collect()
    }

    pub(crate) fn bad_uploads(&self) -> u64 {
        self.shared.bad_uploads.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for GitLab {
    fn drop(&mut self) {
        self.down();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, token: CancellationToken) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let conn_token = token.clone();
            let svc = service_fn(move |req| handle(req, shared.clone(), conn_token.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            tokio::select! {
                _ = token.cancelled() => {}
                _ = conn => {}
            }
        });
    }
}

/// Returned by the service to make hyper drop the connection without an answer.
#[derive(Debug)]
struct HangUp;

impl std::fmt::Display for HangUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("soak GitLab hangs up (injected)")
    }
}

impl std::error::Error for HangUp {}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    token: CancellationToken,
) -> Result<Response<SoakBody>, HangUp> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let num = |i: usize| parts.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let mut rng = shared.rng();
    let faulty = shared.faulty.load(Ordering::Relaxed);
    match parts[0] {
        "upload" => return upload(req, &shared, num(1), num(2), faulty.then_some(&mut rng)).await,
        "ws" => return Ok(websocket(req, &shared, token, faulty.then_some(&mut rng))),
        _ => {}
    }
    let (content_type, plan) = match (parts[0], path.as_str()) {
        (_, "/.well-known/openid-configuration") => ("application/json", Plan::doc(&shared.docs.discovery)),
        (_, "/oauth/discovery/keys") => ("application/json", Plan::doc(&shared.docs.oauth_keys)),
        (_, "/-/jwks") => ("application/json", Plan::doc(&shared.docs.jwks)),
        ("gen", _) => ("application/octet-stream", Plan::generated(num(1), num(2), false)),
        ("text", _) => ("text/plain; charset=utf-8", Plan::generated(num(1), num(2), true)),
        ("stream", _) => ("application/octet-stream", Plan::stream(num(1), num(2), num(3))),
        _ => return Ok(status(StatusCode::NOT_FOUND, false)),
    };
    let chunked = parts.get(3) == Some(&"chunked") || parts[0] == "stream";
    let plan = match faulty.then(|| get_fault(&mut rng)).flatten() {
        None => plan,
        Some(fault) => {
            shared.inject(fault);
            match apply_get_fault(fault, plan, &mut rng).await {
                Ok(plan) => plan,
                Err(answer) => return answer,
            }
        }
    };
    let len = plan.len;
    let mut resp = Response::new(plan.into_body(rng));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if !chunked {
        // The body's length is unknown to hyper, which then takes the header as
        // it is: a body cut short fails instead of being refused up front.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

/// Which fault a GET meets while the server is faulty (about one in five).
fn get_fault(rng: &mut Rng) -> Option<Fault> {
    let fault = match rng.next_u64() % 1000 {
        0..60 => Fault::Status5xx,
        60..120 => Fault::SlowHeaders,
        120..130 => Fault::NoHeaders,
        130..190 => Fault::CutMidBody,
        190..200 => Fault::StallMidBody,
        200..220 => Fault::HangUp,
        _ => return None,
    };
    Some(fault)
}

/// Either the plan, changed by the fault, or the answer that replaces it.
async fn apply_get_fault(
    fault: Fault,
    mut plan: Plan,
    rng: &mut Rng,
) -> Result<Plan, Result<Response<SoakBody>, HangUp>> {
    match fault {
        Fault::Status5xx => return Err(Ok(status(injected_5xx(rng), true))),
        Fault::SlowHeaders => tokio::time::sleep(Duration::from_millis(rng.range(300, 2500))).await,
        Fault::NoHeaders => {
            tokio::time::sleep(STALL).await;
            return Err(Err(HangUp));
        }
        Fault::HangUp => return Err(Err(HangUp)),
        Fault::CutMidBody => plan.cut_at = Some(rng.range(0, plan.len.saturating_sub(1))),
        Fault::StallMidBody => plan.stall_at = Some(rng.range(0, plan.len.saturating_sub(1))),
        Fault::UploadCut | Fault::WsRefused | Fault::WsDropped => {}
    }
    Ok(plan)
}

fn injected_5xx(rng: &mut Rng) -> StatusCode {
    [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
    ][rng.range(0, 2) as usize]
}

/// A short plain answer; `injected` marks it as a fault of the soak's GitLab.
fn status(code: StatusCode, injected: bool) -> Response<SoakBody> {
    let mut resp = Response::new(full(format!("soak GitLab: {code}\n")));
    *resp.status_mut() = code;
    if injected {
        resp.headers_mut()
            .insert(FAULT_HEADER, HeaderValue::from_static("status"));
    }
    resp
}

/// How a response body is produced.
struct Plan {
    source: Source,
    len: u64,
    /// Pieces of this many bytes (a range).
    piece: (u64, u64),
    /// Pause between pieces, in ms (a range).
    gap_ms: Option<(u64, u64)>,
    /// The body fails once this many bytes went out.
    cut_at: Option<u64>,
    /// The body goes silent for [`STALL`] once this many bytes went out.
    stall_at: Option<u64>,
}

enum Source {
    Fixed(Bytes),
    Stream { seed: u64, text: bool },
}

impl Plan {
    fn doc(body: &Bytes) -> Plan {
        Plan {
            len: body.len() as u64,
            source: Source::Fixed(body.clone()),
            piece: (256, 4096),
            gap_ms: None,
            cut_at: None,
            stall_at: None,
        }
    }

    fn generated(len: u64, seed: u64, text: bool) -> Plan {
        let piece = if len > 1 << 20 {
            (16 << 10, 256 << 10)
        } else {
            (1 << 10, 32 << 10)
        };
        Plan {
            source: Source::Stream { seed, text },
            len,
            piece,
            gap_ms: None,
            cut_at: None,
            stall_at: None,
        }
    }

    fn stream(pieces: u64, size: u64, seed: u64) -> Plan {
        Plan {
            source: Source::Stream { seed, text: false },
            len: pieces * size,
            piece: (size.max(1), size.max(1)),
            gap_ms: Some((5, 40)),
            cut_at: None,
            stall_at: None,
        }
    }

    fn into_body(self, rng: Rng) -> SoakBody {
        let state = Pieces {
            plan: self,
            rng,
            pos: 0,
            failed: false,
        };
        StreamBody::new(futures_util::stream::unfold(state, Pieces::next)).boxed_unsync()
    }
}

struct Pieces {
    plan: Plan,
    rng: Rng,
    pos: u64,
    failed: bool,
}

impl Pieces {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, BoxError>, Pieces)> {
        if self.failed {
            return None;
        }
        if self.plan.stall_at.is_some_and(|at| self.pos >= at) {
            self.plan.stall_at = None;
            tokio::time::sleep(STALL).await;
        }
        if self.plan.cut_at.is_some_and(|at| self.pos >= at) {
            self.failed = true;
            return Some((Err("soak GitLab: reset mid-body (injected)".into()), self));
        }
        if self.pos >= self.plan.len {
            return None;
        }
        if let Some((lo, hi)) = self.plan.gap_ms.filter(|_| self.pos > 0) {
            tokio::time::sleep(Duration::from_millis(self.rng.range(lo, hi))).await;
        }
        let limit = [
            self.plan.len,
            self.plan.cut_at.unwrap_or(u64::MAX),
            self.plan.stall_at.unwrap_or(u64::MAX),
        ]
        .into_iter()
        .min()
        .unwrap_or(0)
            - self.pos;
        let n = self.rng.range(self.plan.piece.0, self.plan.piece.1).min(limit).max(1);
        let data = match &self.plan.source {
            Source::Fixed(body) => body.slice(self.pos as usize..(self.pos + n) as usize),
            Source::Stream { seed, text } => {
                let mut out = vec![0; n as usize];
                fill(*seed, *text, self.pos, &mut out);
                Bytes::from(out)
            }
        };
        self.pos += n;
        Some((Ok(Frame::data(data)), self))
    }
}

/// Reads and checks an upload; faulty: refuses it unread, cuts it, or answers slowly.
async fn upload(
    req: Request<Incoming>,
    shared: &Shared,
    len: u64,
    seed: u64,
    rng: Option<&mut Rng>,
) -> Result<Response<SoakBody>, HangUp> {
    let (fault, cut_at, slow) = match rng {
        None => (None, None, None),
        Some(rng) => match rng.next_u64() % 1000 {
            0..50 => (Some(Fault::Status5xx), None, None),
            50..100 => (Some(Fault::UploadCut), Some(rng.range(0, len)), None),
            100..150 => (Some(Fault::SlowHeaders), None, Some(rng.range(300, 2500))),
            _ => (None, None, None),
        },
    };
    if let Some(fault) = fault {
        shared.inject(fault);
    }
    if matches!(fault, Some(Fault::Status5xx)) {
        return Ok(status(StatusCode::SERVICE_UNAVAILABLE, true));
    }
    let mut check = Check::new(seed, false, len);
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Err(HangUp) };
        if let Some(data) = frame.data_ref() {
            check.feed(data);
        }
        if cut_at.is_some_and(|at| check.received() >= at) {
            return Err(HangUp);
        }
    }
    if let Some(ms) = slow {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let verdict = match check.verdict() {
        Ok(()) => format!("{} ok", check.received()),
        Err(why) => {
            shared.bad_uploads.fetch_add(1, Ordering::Relaxed);
            format!("{} bad: {why}", check.received())
        }
    };
    Ok(Response::new(full(verdict)))
}

/// Answers 101 and echoes messages until the peer closes (faulty: refuses, or
/// drops the connection after a few messages).
fn websocket(
    mut req: Request<Incoming>,
    shared: &Shared,
    token: CancellationToken,
    rng: Option<&mut Rng>,
) -> Response<SoakBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return status(StatusCode::BAD_REQUEST, false);
    };
    let mut drop_after = None;
    if let Some(rng) = rng {
        match rng.next_u64() % 1000 {
            0..100 => {
                shared.inject(Fault::WsRefused);
                return status(StatusCode::SERVICE_UNAVAILABLE, true);
            }
            100..200 => {
                shared.inject(Fault::WsDropped);
                drop_after = Some(rng.range(0, 4));
            }
            _ => {}
        }
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let echo = async {
            let Ok(upgraded) = on_upgrade.await else { return };
            let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let mut echoed = 0;
            while let Some(Ok(msg)) = ws.next().await {
                if drop_after.is_some_and(|n| echoed >= n) {
                    return; // the tunnel is dropped without a close frame
                }
                if msg.is_close() || ws.send(msg).await.is_err() {
                    break;
                }
                echoed += 1;
            }
        };
        tokio::select! {
            _ = token.cancelled() => {}
            _ = echo => {}
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap()
}

/// Takes the three documents from the crate's simulated GitLab (16.8) for
/// `external_url`, then stops it.
pub(crate) async fn simulated_docs(external_url: &str) -> Result<Docs, String> {
    use gitlab_oidc_proxy::simulator::{Profile, SimConfig, SimulatedGitLab};
    let sim = SimulatedGitLab::new(SimConfig {
        profile: Profile::V16_8,
        external_url: external_url.to_owned(),
        token_issuer: None,
    })
    .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let task = sim.serve(listener);
    let host = http::Uri::try_from(external_url)
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut bodies = Vec::new();
    for path in ["/.well-known/openid-configuration", "/oauth/discovery/keys", "/-/jwks"] {
        bodies.push(fetch(addr, &host, path).await?);
    }
    task.abort();
    let [discovery, oauth_keys, jwks] = <[Bytes; 3]>::try_from(bodies).map_err(|_| "three documents")?;
    Ok(Docs {
        discovery,
        oauth_keys,
        jwks,
        kids: vec![sim.oidc_kid(), sim.ci_kid()],
    })
}

async fn fetch(addr: SocketAddr, host: &str, path: &str) -> Result<Bytes, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(full(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!("simulated GitLab {path}: {}", resp.status()));
    }
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}
