//! The references on the stack the proxy is built on (issue 15): a
//! single-threaded tokio runtime, as each of the proxy's serving threads is,
//! with the bench's one core; hyper-util's HTTP/1.1 + HTTP/2 connection
//! builder; TCP_NODELAY. Each does nothing else: no routing, no header rule, no
//! timer, no log, no metric. benches/vs_nginx.sh runs them beside the proxy.
//!
//!   bare_hyper ADDR BODY_FILE [NAME:VALUE]...   answers every request with the
//!                                               same bytes and headers (the cached documents' reference)
//!   bare_hyper proxy ADDR UNIX_SOCKET           passes every request as it is to the
//!                                               HTTP/1.1 server on UNIX_SOCKET, on one
//!                                               connection per client connection, opened
//!                                               with it (the floor under any pass-through
//!                                               on this stack: two HTTP/1.1 exchanges)
//!
//! Prints `listening` once bound; runs until killed.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream, UnixStream};

fn main() {
    // `cargo bench` runs every bench with `--bench`: this one only serves when told what.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench").peekable();
    let usage = "usage: bare_hyper ADDR BODY_FILE [NAME:VALUE]... | bare_hyper proxy ADDR UNIX_SOCKET";
    if args.peek().is_none() {
        println!("{usage} (the reference servers of benches/vs_nginx.sh)");
        return;
    }
    let addr = args.next().expect(usage);
    if addr == "proxy" {
        let (addr, socket) = (args.next().expect(usage), args.next().expect(usage));
        runtime().block_on(pass_through(&addr, socket));
        return;
    }
    let body = Bytes::from(std::fs::read(args.next().expect(usage)).expect("BODY_FILE is readable"));
    let mut headers = HeaderMap::new();
    for pair in args {
        let (name, value) = pair.split_once(':').expect(usage);
        headers.insert(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("a header name"),
            HeaderValue::from_str(value.trim()).expect("a header value"),
        );
    }
    runtime().block_on(serve(&addr, body, headers));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn accepted(listener: &TcpListener) -> TcpStream {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            return stream;
        }
    }
}

async fn serve(addr: &str, body: Bytes, headers: HeaderMap) {
    let listener = TcpListener::bind(addr).await.expect("ADDR can be bound");
    println!("listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (body, headers) = (body.clone(), headers.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let mut resp = Response::new(Full::new(body.clone()));
                *resp.headers_mut() = headers.clone();
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn pass_through(addr: &str, socket: String) {
    let listener = TcpListener::bind(addr).await.expect("ADDR can be bound");
    println!("listening");
    loop {
        let stream = accepted(&listener).await;
        let Ok(upstream) = UnixStream::connect(&socket).await else {
            continue;
        };
        let Ok((send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await else {
            continue;
        };
        // As hyper's documentation has it: the connection on a task of its own.
        tokio::spawn(conn);
        // One request at a time on an HTTP/1.1 connection: the lock is never
        // contended, and the sender is always there to take.
        let send = Arc::new(Mutex::new(Some(send)));
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let send = send.clone();
                async move { Ok::<_, Infallible>(forward(&send, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// GitLab's answer as it came, or an empty 502.
type Answer = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

async fn forward(slot: &Mutex<Option<SendRequest<Incoming>>>, req: Request<Incoming>) -> Answer {
    let mut send = slot
        .lock()
        .expect("not poisoned")
        .take()
        .expect("one request at a time");
    // Ready once the connection has seen the previous response's end.
    let sent = send.ready().await.map(|()| send.send_request(req));
    *slot.lock().expect("not poisoned") = Some(send);
    if let Ok(sent) = sent
        && let Ok(resp) = sent.await
    {
        return resp.map(BodyExt::boxed);
    }
    let mut resp = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
