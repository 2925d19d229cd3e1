//! The floor under any pass-through on the proxy's stack (issue 15): hyper on
//! the same runtime and connection builder as benches/bare_hyper.rs, passing
//! every request as it is to the HTTP/1.1 server on UNIX_SOCKET, over one
//! connection per client connection opened with it (its task of its own, as
//! hyper's documentation has it). No header rule, timer, log or metric: two
//! HTTP/1.1 exchanges and nothing else. A binary of its own, so that the bare
//! server's count does not move with this code beside it.
//!
//!   bare_hyper_proxy ADDR UNIX_SOCKET
//!
//! Prints `listening` once bound; runs until killed.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, UnixStream};

fn main() {
    // `cargo bench` runs every bench with `--bench`: this one only serves when told what.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let usage = "usage: bare_hyper_proxy ADDR UNIX_SOCKET";
    let (Some(addr), Some(socket)) = (args.next(), args.next()) else {
        println!("{usage} (the stack floor of benches/vs_nginx.sh)");
        return;
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(pass_through(&addr, socket));
}

async fn pass_through(addr: &str, socket: String) {
    let listener = TcpListener::bind(addr).await.expect("ADDR can be bound");
    println!("listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
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
