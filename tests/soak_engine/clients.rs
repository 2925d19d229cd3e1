//! The load: workers cycling over request kinds through the proxy, each
//! response checked against what its path says it must be, and classified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use super::gitlab::{BoxError, FAULT_HEADER, SoakBody, full};
use super::pattern::{self, Check, Rng};
use super::report::Tally;

/// Longest any one exchange may take before it counts as hung: well past the
/// slowest legitimate one (a stall cut by the proxy's 4 s idle limit after
/// slow headers, a 32 MiB body on a loaded machine).
pub(crate) const OP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Discovery or a key set, served from the proxy's memory.
    Oidc,
    /// 0-64 KiB.
    Small,
    /// The configured large range (8-32 MiB in the full soak).
    Large,
    /// Text the proxy compresses (gzip, br or zstd as the client asks).
    Text,
    /// Dribbled in pieces, as a long poll or a job log.
    Stream,
    Upload,
    Websocket,
}

pub(crate) const KINDS: [Kind; 7] = [
    Kind::Oidc,
    Kind::Small,
    Kind::Large,
    Kind::Text,
    Kind::Stream,
    Kind::Upload,
    Kind::Websocket,
];
const WEIGHTS: [u64; 7] = [20, 30, 3, 10, 5, 20, 8];

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Oidc => "oidc",
            Kind::Small => "small",
            Kind::Large => "large",
            Kind::Text => "compressed",
            Kind::Stream => "dribble",
            Kind::Upload => "upload",
            Kind::Websocket => "websocket",
        }
    }
}

/// A request kind over one protocol: what the tallies are kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Op {
    pub kind: Kind,
    pub h2: bool,
}

impl Op {
    pub(crate) fn label(self) -> String {
        format!("{}/{}", self.kind.name(), if self.h2 { "h2" } else { "h1" })
    }

    /// Every kind over every protocol it is sent on.
    pub(crate) fn all() -> Vec<Op> {
        let mut ops = Vec::new();
        for kind in KINDS {
            ops.push(Op { kind, h2: false });
            if kind != Kind::Websocket {
                ops.push(Op { kind, h2: true });
            }
        }
        ops
    }
}

/// How one exchange ended, from the client's side.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok,
    /// Status 200 (or an echoed websocket message), body ended without error,
    /// and yet not what the upstream meant to send.
    TruncatedAsComplete(String),
    /// A status other than the one wanted; `injected`: the soak's GitLab sent
    /// it on purpose and the proxy passed it on.
    Status {
        code: StatusCode,
        injected: bool,
    },
    /// No connection to the proxy.
    ProxyUnreachable(String),
    /// The exchange failed before the response headers.
    ResetBeforeHeaders(String),
    /// Headers came, then the body failed: the client knows it is incomplete.
    ResetMidBody(String),
    /// A websocket closed before every message was echoed.
    WebsocketCut(String),
    /// Not over within [`OP_LIMIT`].
    Hung,
}

impl Outcome {
    pub(crate) fn label(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::TruncatedAsComplete(_) => "TRUNCATED_AS_COMPLETE".into(),
            Outcome::Status { code, injected: true } => format!("gitlab_{}_passed_on", code.as_u16()),
            Outcome::Status { code, .. } if code.is_server_error() => format!("proxy_{}", code.as_u16()),
            Outcome::Status { code, .. } => format!("unexpected_{}", code.as_u16()),
            Outcome::ProxyUnreachable(_) => "proxy_unreachable".into(),
            Outcome::ResetBeforeHeaders(_) => "reset_before_headers".into(),
            Outcome::ResetMidBody(_) => "reset_mid_body".into(),
            Outcome::WebsocketCut(_) => "websocket_cut".into(),
            Outcome::Hung => "HUNG".into(),
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            Outcome::TruncatedAsComplete(s)
            | Outcome::ProxyUnreachable(s)
            | Outcome::ResetBeforeHeaders(s)
            | Outcome::ResetMidBody(s)
            | Outcome::WebsocketCut(s) => s.clone(),
            Outcome::Status { code, injected } => format!("{code} (x-soak-fault: {injected})"),
            Outcome::Ok | Outcome::Hung => String::new(),
        }
    }
}

/// Sizes of the large bodies and of uploads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub large: (u64, u64),
    pub upload: (u64, u64),
}

/// What the clients need to know about the proxy.
pub(crate) struct Target {
    pub addr: SocketAddr,
    pub sizes: Sizes,
    /// The HPACK table size the h2 clients announce (None: hyper's default).
    pub h2_header_table: Option<u32>,
    /// The documents as the proxy served them at start (checked then).
    pub discovery: Bytes,
    pub keys: Bytes,
}

type HttpClient = Client<HttpConnector, SoakBody>;

/// One worker's connections: an HTTP/1.1 pool and an h2c connection.
pub(crate) struct Clients {
    h1: HttpClient,
    h2: HttpClient,
}

impl Clients {
    pub(crate) fn new(target: &Target) -> Clients {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let mut h2 = Client::builder(TokioExecutor::new());
        h2.http2_only(true).http2_header_table_size(target.h2_header_table);
        Clients {
            h1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            h2: h2.build(connector),
        }
    }
}

/// Runs random exchanges of the `ops` until `end`, recording each in `tally`.
pub(crate) async fn worker(id: u64, seed: u64, ops: Arc<[Op]>, target: Arc<Target>, tally: Arc<Tally>, end: Instant) {
    let mut rng = Rng::new(seed ^ id.wrapping_mul(0x1000_0001));
    let clients = Clients::new(&target);
    // Each op weighs its kind's weight, split between its protocols.
    let weights: Vec<u64> = ops
        .iter()
        .map(|op| {
            let kind = KINDS.iter().position(|k| *k == op.kind).unwrap_or(0);
            let protocols = ops.iter().filter(|o| o.kind == op.kind).count() as u64;
            WEIGHTS[kind] * 2 / protocols
        })
        .collect();
    while Instant::now() < end {
        let op = ops[rng.weighted(&weights)];
        let started = Instant::now();
        let (outcome, bytes) = match tokio::time::timeout(OP_LIMIT, exchange(op, &target, &clients, &mut rng)).await {
            Ok(done) => done,
            Err(_) => (Outcome::Hung, 0),
        };
        tally.record(op, &outcome, bytes, started.elapsed());
        // As a client would, wait a moment before the next try after a failure.
        match outcome {
            Outcome::Ok => {}
            Outcome::ProxyUnreachable(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One exchange of kind `op`: its outcome and the bytes checked.
pub(crate) async fn exchange(op: Op, target: &Target, clients: &Clients, rng: &mut Rng) -> (Outcome, u64) {
    let client = if op.h2 { &clients.h2 } else { &clients.h1 };
    let base = format!("http://{}", target.addr);
    let seed = rng.next_u64();
    // One HTTP/1.1 request in ten on a connection of its own.
    let close = !op.h2 && rng.chance(100);
    let framing = if rng.chance(500) { "cl" } else { "chunked" };
    match op.kind {
        Kind::Oidc => {
            let (path, want) = match rng.range(0, 2) {
                0 => ("/.well-known/openid-configuration", &target.discovery),
                1 => ("/-/jwks", &target.keys),
                _ => ("/oauth/discovery/keys", &target.keys),
            };
            whole(client, &format!("{base}{path}"), close, None, want).await
        }
        Kind::Small | Kind::Large => {
            let (lo, hi) = if op.kind == Kind::Small {
                (0, 64 << 10)
            } else {
                target.sizes.large
            };
            let len = rng.range(lo, hi);
            let url = format!("{base}/gen/{len}/{seed}/{framing}");
            streamed(client, &url, close, Check::new(seed, false, len)).await
        }
        Kind::Stream => {
            let (pieces, size) = (rng.range(5, 40), rng.range(1, 4096));
            let url = format!("{base}/stream/{pieces}/{size}/{seed}");
            streamed(client, &url, close, Check::new(seed, false, pieces * size)).await
        }
        Kind::Text => {
            let len = rng.range(0, 512 << 10);
            let encoding = ["gzip", "br", "zstd"][rng.range(0, 2) as usize];
            let url = format!("{base}/text/{len}/{seed}");
            let want = Bytes::from(pattern::bytes(seed, true, 0, len as usize));
            whole(client, &url, close, Some(encoding), &want).await
        }
        Kind::Upload => {
            let len = rng.range(target.sizes.upload.0, target.sizes.upload.1);
            upload(
                client,
                &format!("{base}/upload/{len}/{seed}"),
                close,
                len,
                seed,
                rng.chance(500),
            )
            .await
        }
        Kind::Websocket => websocket(target.addr, seed, rng).await,
    }
}

async fn send(client: &HttpClient, req: Request<SoakBody>) -> Result<Response<Incoming>, Outcome> {
    client.request(req).await.map_err(|e| {
        let why = chain(&e);
        if e.is_connect() {
            Outcome::ProxyUnreachable(why)
        } else {
            Outcome::ResetBeforeHeaders(why)
        }
    })
}

fn get(url: &str, close: bool) -> http::request::Builder {
    let req = Request::get(url);
    if close {
        req.header(header::CONNECTION, "close")
    } else {
        req
    }
}

/// Anything but 200 is an outcome of its own.
fn want_ok(resp: &Response<Incoming>) -> Result<(), Outcome> {
    if resp.status() == StatusCode::OK {
        return Ok(());
    }
    Err(Outcome::Status {
        code: resp.status(),
        injected: resp.headers().contains_key(FAULT_HEADER),
    })
}

/// A GET whose body is checked piece by piece as it streams.
async fn streamed(client: &HttpClient, url: &str, close: bool, mut check: Check) -> (Outcome, u64) {
    let req = get(url, close).body(full(Bytes::new())).unwrap();
    let resp = match send(client, req).await {
        Ok(resp) => resp,
        Err(outcome) => return (outcome, 0),
    };
    if let Err(outcome) = want_ok(&resp) {
        return (outcome, 0);
    }
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    check.feed(data);
                }
            }
            Err(e) => {
                let why = format!("after {} bytes: {}", check.received(), chain(&e));
                return (Outcome::ResetMidBody(why), check.received());
            }
        }
    }
    match check.verdict() {
        Ok(()) => (Outcome::Ok, check.received()),
        Err(why) => (
            Outcome::TruncatedAsComplete(format!("GET {url}: {why}")),
            check.received(),
        ),
    }
}

/// A GET whose whole body (decoded, when `encoding` was asked for) must be `want`.
async fn whole(client: &HttpClient, url: &str, close: bool, encoding: Option<&str>, want: &Bytes) -> (Outcome, u64) {
    let mut req = get(url, close);
    if let Some(encoding) = encoding {
        req = req.header(header::ACCEPT_ENCODING, encoding);
    }
    let resp = match send(client, req.body(full(Bytes::new())).unwrap()).await {
        Ok(resp) => resp,
        Err(outcome) => return (outcome, 0),
    };
    if let Err(outcome) = want_ok(&resp) {
        return (outcome, 0);
    }
    let coding = resp
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    let body = match resp.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return (Outcome::ResetMidBody(chain(&e)), 0),
    };
    let got = match decode(coding.as_deref(), &body) {
        Ok(got) => got,
        Err(why) => {
            let why = format!("GET {url}: {} body bytes ended cleanly but {why}", body.len());
            return (Outcome::TruncatedAsComplete(why), body.len() as u64);
        }
    };
    if got == want.as_ref() {
        (Outcome::Ok, got.len() as u64)
    } else {
        let why = format!("GET {url}: {} bytes, not the {} expected", got.len(), want.len());
        (Outcome::TruncatedAsComplete(why), got.len() as u64)
    }
}

fn decode(coding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let read = match coding {
        None => {
            out.extend_from_slice(body);
            Ok(0)
        }
        Some("gzip") => flate2::read::GzDecoder::new(body).read_to_end(&mut out),
        Some("br") => brotli::Decompressor::new(body, 4096).read_to_end(&mut out),
        Some("zstd") => zstd::stream::read::Decoder::new(body).and_then(|mut d| d.read_to_end(&mut out)),
        Some(other) => return Err(format!("unknown content-encoding {other}")),
    };
    read.map(|_| out)
        .map_err(|e| format!("does not decode as {}: {e}", coding.unwrap_or("")))
}

/// A POST of `len` bytes of stream `seed`, with Content-Length or without
/// (chunked on HTTP/1.1); GitLab's answer must confirm it got exactly them.
async fn upload(client: &HttpClient, url: &str, close: bool, len: u64, seed: u64, sized: bool) -> (Outcome, u64) {
    let pieces = futures_util::stream::unfold((0u64, Rng::new(seed)), move |(pos, mut rng)| async move {
        if pos >= len {
            return None;
        }
        let n = rng.range(1 << 10, 64 << 10).min(len - pos);
        let data = Bytes::from(pattern::bytes(seed, false, pos, n as usize));
        Some((Ok::<_, BoxError>(Frame::data(data)), (pos + n, rng)))
    });
    let mut req = Request::post(url);
    if close {
        req = req.header(header::CONNECTION, "close");
    }
    if sized {
        req = req.header(header::CONTENT_LENGTH, len);
    }
    let req = req.body(StreamBody::new(pieces).boxed_unsync()).unwrap();
    let resp = match send(client, req).await {
        Ok(resp) => resp,
        Err(outcome) => return (outcome, 0),
    };
    if let Err(outcome) = want_ok(&resp) {
        return (outcome, 0);
    }
    let answer = match resp.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return (Outcome::ResetMidBody(chain(&e)), 0),
    };
    if answer == format!("{len} ok").as_bytes() {
        (Outcome::Ok, len)
    } else {
        let why = format!("POST {url}: GitLab answered {:?}", String::from_utf8_lossy(&answer));
        (Outcome::TruncatedAsComplete(why), 0)
    }
}

/// A websocket through the proxy: 3-20 messages, each echoed exactly, then a close.
async fn websocket(addr: SocketAddr, seed: u64, rng: &mut Rng) -> (Outcome, u64) {
    let tcp = match TcpStream::connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) => return (Outcome::ProxyUnreachable(e.to_string()), 0),
    };
    let mut ws = match tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp).await {
        Ok((ws, _)) => ws,
        Err(tungstenite::Error::Http(resp)) => {
            let injected = resp.headers().contains_key(FAULT_HEADER);
            return (
                Outcome::Status {
                    code: resp.status(),
                    injected,
                },
                0,
            );
        }
        Err(e) => return (Outcome::ResetBeforeHeaders(e.to_string()), 0),
    };
    let mut bytes = 0;
    for i in 0..rng.range(3, 20) {
        let text = rng.chance(300);
        let data = pattern::bytes(seed.wrapping_add(i), text, 0, rng.range(1, 32 << 10) as usize);
        let msg = if text {
            Message::text(String::from_utf8(data.clone()).unwrap())
        } else {
            Message::binary(data.clone())
        };
        if let Err(e) = ws.send(msg).await {
            return (Outcome::WebsocketCut(format!("send {i}: {e}")), bytes);
        }
        match ws.next().await {
            Some(Ok(echo)) if echo.is_text() == text && echo.clone().into_data() == data => bytes += data.len() as u64,
            Some(Ok(echo)) => {
                let why = format!("message {i}: {} bytes sent, echo {} bytes", data.len(), echo.len());
                return (Outcome::TruncatedAsComplete(why), bytes);
            }
            Some(Err(e)) => return (Outcome::WebsocketCut(format!("echo {i}: {e}")), bytes),
            None => return (Outcome::WebsocketCut(format!("echo {i}: closed")), bytes),
        }
    }
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while ws.next().await.is_some() {} }).await;
    (Outcome::Ok, bytes)
}

/// An error and its sources, on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
