//! The connections to one upstream, kept open between requests: HTTP/1.1 over
//! hyper's connection API.
//!
//! hyper-util's pool cost about an eighth of a small pass-through request
//! (callgrind, ~6k of ~49k instructions): a race of checkout against connect,
//! the pool key hashed three times, and a task spawned per request to put the
//! connection back once its body ended. Here a connection goes back when its
//! response body ends, from the body itself; each is driven by a task on the
//! thread that opened it, and a request takes one of its own thread's first
//! when one is idle, so the exchange then crosses no thread.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::connect::{Budget, Dial, Permit};
use crate::body::ProxyBody;
use crate::error::BoxError;

/// Idle connections are looked at this often; one idle for three looks (60 to
/// 90 s) is closed, as hyper-util's pool closed them after 90 s.
const REAP_EVERY: Duration = Duration::from_secs(30);
const REAP_AFTER_LOOKS: u64 = 3;
/// How far down the idle stack a request looks for a connection of its own thread.
const AFFINITY_DEPTH: usize = 8;
/// A connection whose response ended before its request body did is put back
/// once the request is sent too, if that takes no longer than this.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Why no response came.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// `--max-upstream-connections` reached, and none freed within the wait.
    Busy,
    ConnectTimeout,
    Connect(BoxError),
    /// After the request was handed to a connection.
    Exchange(hyper::Error),
}

pub(super) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    dial: Dial,
    /// What the connectors are given: scheme and authority (the socket path
    /// for a unix target, whatever this says).
    dial_uri: Uri,
    connect_timeout: Duration,
    budget: Option<Arc<Budget>>,
    state: Mutex<State>,
    /// Advanced by the reaper at each look.
    looks: AtomicU64,
    reaper_started: AtomicBool,
}

struct State {
    /// The most recently used last.
    idle: Vec<Idle>,
    /// Requests waiting on a full budget, the oldest first: a connection put
    /// back goes to the oldest still waiting, before any newer request.
    waiters: VecDeque<oneshot::Sender<Conn>>,
}

struct Idle {
    conn: Conn,
    /// `looks` when it was put back.
    since: u64,
}

/// A connection, and the thread whose runtime drives it.
struct Conn {
    send: SendRequest<ProxyBody>,
    home: u32,
}

impl Pool {
    pub(super) fn new(dial: Dial, dial_uri: Uri, connect_timeout: Duration, budget: Option<Arc<Budget>>) -> Self {
        Pool {
            shared: Arc::new(Shared {
                dial,
                dial_uri,
                connect_timeout,
                budget,
                state: Mutex::new(State {
                    idle: Vec::new(),
                    waiters: VecDeque::new(),
                }),
                looks: AtomicU64::new(0),
                reaper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (origin-form) on an idle connection, or a new one, and
    /// returns the response; its body puts the connection back once read to
    /// its end. A request that an idle connection could not take (GitLab
    /// closed it meanwhile, nothing was sent) goes on another, as hyper-util did.
    pub(super) async fn send(&self, mut req: Request<ProxyBody>) -> Result<Response<UpstreamBody>, PoolError> {
        loop {
            let (mut conn, reused) = match self.shared.take_idle() {
                Some(conn) => (conn, true),
                // Boxed: connecting, or waiting on the budget, is the rare case,
                // and its state would otherwise size (and be copied with) every
                // request's future.
                None => Box::pin(self.open_or_wait()).await?,
            };
            match conn.send.try_send_request(req).await {
                Ok(resp) => return Ok(self.lend(conn, resp)),
                Err(mut err) => match err.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(PoolError::Exchange(err.into_error())),
                },
            }
        }
    }

    /// A new connection once the budget allows, or (and `true`) an idle one:
    /// a request waiting on a full budget takes the first connection put back.
    async fn open_or_wait(&self) -> Result<(Conn, bool), PoolError> {
        let shared = &*self.shared;
        let Some(budget) = &shared.budget else {
            return shared.open(None).await.map(|c| (c, false));
        };
        if let Some(permit) = budget.try_acquire() {
            return shared.open(Some(permit)).await.map(|c| (c, false));
        }
        let deadline = Instant::now() + budget.wait;
        let handed = {
            let mut state = shared.state();
            // Looked for under the lock that `push` takes: none put back in between is missed.
            if let Some(conn) = take_idle(&mut state.idle) {
                return Ok((conn, true));
            }
            // Requests that gave up (took a place, or ran out of time) leave
            // their senders behind; only a connection put back would clear them.
            state.waiters.retain(|waiter| !waiter.is_closed());
            let (tx, rx) = oneshot::channel();
            state.waiters.push_back(tx);
            rx
        };
        tokio::select! {
            biased;
            Ok(conn) = handed => Ok((conn, true)),
            permit = budget.acquire_until(deadline) => match permit {
                Some(permit) => shared.open(Some(permit)).await.map(|c| (c, false)),
                None => Err(PoolError::Busy),
            },
        }
    }

    /// The response, its body holding the connection until it ends. A
    /// connection that switched protocols is the tunnel's now: never put back.
    fn lend(&self, conn: Conn, resp: Response<Incoming>) -> Response<UpstreamBody> {
        let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Back {
            shared: Arc::clone(&self.shared),
            conn,
        });
        resp.map(|inner| {
            let mut body = UpstreamBody { inner, back };
            // No body to read (HEAD, 204, 304, length 0): free at once.
            if body.inner.is_end_stream() {
                body.give_back();
            }
            body
        })
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take_idle(&self) -> Option<Conn> {
        take_idle(&mut self.state().idle)
    }

    async fn open(&self, permit: Option<Permit>) -> Result<Conn, PoolError> {
        match tokio::time::timeout(self.connect_timeout, self.dial.open(&self.dial_uri, permit)).await {
            Err(_) => Err(PoolError::ConnectTimeout),
            Ok(Err(e)) => Err(PoolError::Connect(e)),
            Ok(Ok(send)) => Ok(Conn {
                send,
                home: this_thread(),
            }),
        }
    }

    /// Back to the idle stack, once it can take the next request.
    fn put(self: Arc<Self>, mut conn: Conn) {
        if conn.send.is_ready() {
            self.push(conn);
        } else if !conn.send.is_closed()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // Its task has not yet seen the exchange end: another thread's
            // connection, or a request body still going out.
            runtime.spawn(async move {
                if let Ok(Ok(())) = tokio::time::timeout(READY_WITHIN, conn.send.ready()).await {
                    self.push(conn);
                }
            });
        }
    }

    fn push(self: Arc<Self>, mut conn: Conn) {
        {
            let mut state = self.state();
            // The oldest request still waiting takes it; one that gave up
            // (dropped, or took a place in the budget) hands it on.
            while let Some(waiter) = state.waiters.pop_front() {
                match waiter.send(conn) {
                    Ok(()) => return,
                    Err(back) => conn = back,
                }
            }
            let since = self.looks.load(Ordering::Relaxed);
            state.idle.push(Idle { conn, since });
        }
        if !self.reaper_started.swap(true, Ordering::Relaxed) {
            reap(&self);
        }
    }
}

/// The most recently used idle connection that can take a request, one of
/// this thread's if one is near the top. Closed ones met on the way are dropped.
fn take_idle(idle: &mut Vec<Idle>) -> Option<Conn> {
    let here = this_thread();
    loop {
        let top = idle.len().checked_sub(1)?;
        let at = idle
            .iter()
            .rev()
            .take(AFFINITY_DEPTH)
            .position(|i| i.conn.home == here)
            .map_or(top, |down| top - down);
        let Idle { conn, .. } = idle.remove(at);
        if conn.send.is_ready() {
            return Some(conn);
        }
    }
}

/// Closes connections idle too long, so they give back their sockets and
/// their places in the budget; ends with the pool. It runs on the runtime of
/// the thread that first put a connection back; should that runtime stop
/// first, the next connection put back starts it again elsewhere.
fn reap(shared: &Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        shared.reaper_started.store(false, Ordering::Relaxed);
        return;
    };
    let started = Started(Arc::downgrade(shared));
    runtime.spawn(async move {
        let mut every = tokio::time::interval_at(Instant::now() + REAP_EVERY, REAP_EVERY);
        loop {
            every.tick().await;
            let Some(shared) = started.0.upgrade() else { return };
            let looks = shared.looks.fetch_add(1, Ordering::Relaxed) + 1;
            let stale: Vec<Idle> = {
                let idle = &mut shared.state().idle;
                let (keep, stale) = std::mem::take(idle)
                    .into_iter()
                    .partition(|i| looks - i.since < REAP_AFTER_LOOKS && !i.conn.send.is_closed());
                *idle = keep;
                stale
            };
            // Closed outside the lock.
            drop(stale);
        }
    });
}

/// Held by the reaper's task: when the task ends (its runtime stopped), the
/// pool may start another.
struct Started(Weak<Shared>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.reaper_started.store(false, Ordering::Relaxed);
        }
    }
}

/// A response body from the upstream; puts its connection back once read to the end.
pub(crate) struct UpstreamBody {
    inner: Incoming,
    /// Dropped with the body when it ends early: hyper then closes the connection.
    back: Option<Back>,
}

struct Back {
    shared: Arc<Shared>,
    conn: Conn,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .field("holds_connection", &self.back.is_some())
            .finish()
    }
}

impl UpstreamBody {
    fn give_back(&mut self) {
        if let Some(Back { shared, conn }) = self.back.take() {
            shared.put(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            // hyper stops reading once a body says it has ended, and after trailers.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

static NEXT_THREAD: AtomicU32 = AtomicU32::new(0);

thread_local! {
    static THIS_THREAD: u32 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// A small number naming the calling thread.
fn this_thread() -> u32 {
    THIS_THREAD.with(|t| *t)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, StreamBody};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::sync::mpsc;

    use std::future::Future;

    use super::*;
    use crate::metrics::Metrics;

    type Chunks = mpsc::Receiver<Result<Frame<Bytes>, Infallible>>;
    type Streamed = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    /// A loopback HTTP/1.1 server counting the connections it accepted; each
    /// response's body is what `body` gives for the request's path.
    async fn server(body: impl Fn(&str) -> Streamed + Send + Sync + 'static) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let body = Arc::new(body);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let body = body(req.uri().path());
                        // Declared, so hyper sends trailers when a body has some.
                        let mut resp = Response::new(body);
                        resp.headers_mut()
                            .insert(http::header::TRAILER, http::HeaderValue::from_static("x-checksum"));
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn stream(rx: Chunks) -> Streamed {
        let frames = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
        StreamBody::new(frames).boxed_unsync()
    }

    /// A body of `text`, whole.
    fn whole(text: &'static str) -> Streamed {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Ok(Frame::data(Bytes::from_static(text.as_bytes()))))
            .unwrap();
        stream(rx)
    }

    fn pool(addr: SocketAddr, budget: Option<Arc<Budget>>) -> Pool {
        let uri: Uri = format!("http://{addr}/").parse().unwrap();
        Pool::new(
            Dial::Tcp(super::super::connect::tcp_connector()),
            uri,
            Duration::from_secs(2),
            budget,
        )
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(path)
            .header(http::header::HOST, "gitlab.test")
            .body(crate::body::empty())
            .unwrap()
    }

    async fn text(resp: Response<UpstreamBody>) -> String {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Returns once a request waits on the pool's full budget.
    async fn until_waiting(pool: &Pool) {
        while pool.shared.state().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
    }

    /// No test may hang.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("over 10 s")
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_is_used_again_and_one_left_early_is_not() {
        bounded(async {
            let (addr, accepted) = server(|path| match path {
                // Never ends: the test leaves it after the first chunk.
                "/endless" => {
                    let (tx, rx) = mpsc::channel(1);
                    tx.try_send(Ok(Frame::data(Bytes::from_static(b"first")))).unwrap();
                    tokio::spawn(async move { tx.closed().await });
                    stream(rx)
                }
                _ => whole("ok"),
            })
            .await;
            let pool = pool(addr, None);
            for _ in 0..3 {
                assert_eq!(text(pool.send(get("/")).await.unwrap()).await, "ok");
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "three exchanges, one connection");
            let mut endless = pool.send(get("/endless")).await.unwrap().into_body();
            assert_eq!(endless.frame().await.unwrap().unwrap().into_data().unwrap(), "first");
            drop(endless);
            // That connection is mid-body: never lent again.
            assert_eq!(text(pool.send(get("/")).await.unwrap()).await, "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        })
        .await;
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_while_idle_is_replaced_without_an_error() {
        bounded(async {
            // Each connection closes once idle for 50 ms (as GitLab closes a
            // keep-alive connection left idle too long).
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counter = accepted.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let service = service_fn(|_req: Request<Incoming>| async {
                            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from_static(b"ok"))))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(Duration::from_millis(50))
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            let pool = pool(addr, None);
            for round in 1..=3 {
                assert_eq!(text(pool.send(get("/")).await.unwrap()).await, "ok", "round {round}");
                // The server closes the idle connection meanwhile.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 3);
        })
        .await;
    }

    #[tokio::test]
    async fn a_request_waiting_on_a_full_budget_takes_the_connection_put_back() {
        bounded(async {
            let (held_tx, held_rx) = mpsc::channel(1);
            let held_rx = Arc::new(Mutex::new(Some(held_rx)));
            let (addr, accepted) = server(move |path| match path {
                "/held" => stream(held_rx.lock().unwrap().take().expect("asked once")),
                _ => whole("ok"),
            })
            .await;
            let metrics = Arc::new(Metrics::new());
            let budget = Budget::new(1, Duration::from_secs(5), metrics.clone());
            let pool = Arc::new(pool(addr, Some(budget)));
            let held = pool.send(get("/held")).await.unwrap();
            assert_eq!(metrics.upstream_connections.get(), 1);
            let waiting = tokio::spawn({
                let pool = pool.clone();
                async move {
                    let started = Instant::now();
                    let answer = text(pool.send(get("/")).await.unwrap()).await;
                    (answer, started.elapsed())
                }
            });
            until_waiting(&pool).await;
            assert!(!waiting.is_finished(), "the budget is full");
            held_tx
                .send(Ok(Frame::data(Bytes::from_static(b"done"))))
                .await
                .unwrap();
            drop(held_tx);
            assert_eq!(text(held).await, "done");
            let (answer, waited) = waiting.await.unwrap();
            assert_eq!(answer, "ok");
            assert!(waited < Duration::from_secs(4), "took the freed connection: {waited:?}");
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "the same connection");
            assert_eq!(metrics.upstream_connections.get(), 1);
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_after_60_to_90_s_and_free_their_place() {
        let (addr, accepted) = server(|_| whole("ok")).await;
        let metrics = Arc::new(Metrics::new());
        let budget = Budget::new(4, Duration::from_secs(1), metrics.clone());
        let pool = pool(addr, Some(budget));
        assert_eq!(text(pool.send(get("/")).await.unwrap()).await, "ok");
        assert_eq!(pool.shared.state().idle.len(), 1);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(pool.shared.state().idle.len(), 1, "kept at 59 s");
        tokio::time::sleep(Duration::from_secs(32)).await;
        assert!(pool.shared.state().idle.is_empty(), "closed by 91 s");
        // The connection's task ends and gives its place back.
        for _ in 0..100 {
            if metrics.upstream_connections.get() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(metrics.upstream_connections.get(), 0);
        assert_eq!(text(pool.send(get("/")).await.unwrap()).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_waiter_is_not_overtaken_by_newer_requests() {
        bounded(async {
            let (addr, accepted) = server(|_| whole("ok")).await;
            let budget = Budget::new(1, Duration::from_millis(500), Arc::new(Metrics::new()));
            let pool = Arc::new(pool(addr, Some(budget)));
            let mut resp = pool.send(get("/")).await.unwrap();
            let waiting = tokio::spawn({
                let pool = pool.clone();
                async move {
                    let resp = pool.send(get("/")).await?;
                    Ok::<_, PoolError>(text(resp).await)
                }
            });
            until_waiting(&pool).await;
            // Each answer read puts the connection back; the request made right
            // after must not take it from the one already waiting.
            let started = Instant::now();
            let mut served = 0;
            while started.elapsed() < Duration::from_millis(800) && !waiting.is_finished() {
                assert_eq!(text(resp).await, "ok");
                resp = pool.send(get("/")).await.unwrap();
                served += 1;
            }
            let waited = waiting.await.unwrap();
            assert!(
                waited.is_ok(),
                "waiter refused ({waited:?}) while {served} newer requests were served"
            );
            assert_eq!(text(resp).await, "ok");
            assert!(served <= 1, "{served} newer requests went first");
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn a_body_read_outside_any_runtime_gives_its_connection_back_without_a_panic() {
        bounded(async {
            let (addr, accepted) = server(|_| whole("ok")).await;
            let pool = pool(addr, None);
            let resp = pool.send(get("/")).await.unwrap();
            // The connection's task takes its end: ready before the body is read.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let read = std::thread::spawn(move || {
                use futures_util::FutureExt;
                let mut body = resp.into_body();
                for _ in 0..500 {
                    match body.frame().now_or_never() {
                        Some(Some(frame)) => drop(frame.unwrap()),
                        Some(None) => return,
                        None => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                panic!("the body never ended");
            });
            tokio::task::spawn_blocking(move || read.join())
                .await
                .unwrap()
                .expect("no panic");
            // Back in the pool: the next request needs no new connection.
            assert_eq!(text(pool.send(get("/")).await.unwrap()).await, "ok");
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn a_connection_whose_answer_ended_with_trailers_is_used_again() {
        bounded(async {
            let (addr, accepted) = server(|_| {
                let (tx, rx) = mpsc::channel(2);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
                tx.try_send(Ok(Frame::data(Bytes::from_static(b"ok")))).unwrap();
                tx.try_send(Ok(Frame::trailers(trailers))).unwrap();
                stream(rx)
            })
            .await;
            let pool = pool(addr, None);
            for _ in 0..2 {
                // hyper sends trailers only to a client that says it takes them.
                let mut req = get("/");
                req.headers_mut()
                    .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
                let mut body = pool.send(req).await.unwrap().into_body();
                let mut saw_trailers = false;
                // Read as hyper's server reads: nothing after the trailers.
                while let Some(frame) = body.frame().await {
                    if frame.unwrap().is_trailers() {
                        saw_trailers = true;
                        break;
                    }
                }
                assert!(saw_trailers);
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1);
        })
        .await;
    }

    #[tokio::test]
    async fn requests_that_gave_up_waiting_are_not_kept() {
        bounded(async {
            let (addr, _) = server(|_| whole("ok")).await;
            let budget = Budget::new(1, Duration::from_millis(20), Arc::new(Metrics::new()));
            let pool = pool(addr, Some(budget));
            let held = pool.send(get("/")).await.unwrap();
            for _ in 0..5 {
                assert!(matches!(pool.send(get("/")).await, Err(PoolError::Busy)));
            }
            // Each refused request left its place in the queue; the next one to wait clears them.
            assert!(
                pool.shared.state().waiters.len() <= 1,
                "{}",
                pool.shared.state().waiters.len()
            );
            drop(held);
        })
        .await;
    }
}
