//! The reference for the cached OIDC documents (issue 15): a bare server on the
//! stack the proxy is built on (a single-threaded tokio runtime, as each of the
//! proxy's serving threads is, with the bench's one core; hyper-util's HTTP/1.1 +
//! HTTP/2 connection builder; TCP_NODELAY) that answers every request
//! with the same bytes and headers, doing nothing else: no routing, no log, no
//! metric. benches/vs_nginx.sh runs it beside the proxy.
//!
//!   bare_hyper ADDR BODY_FILE [NAME:VALUE]...
//!
//! Prints `listening` once bound; runs until killed.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

fn main() {
    // `cargo bench` runs every bench with `--bench`: this one only serves when told what.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench").peekable();
    let usage = "usage: bare_hyper ADDR BODY_FILE [NAME:VALUE]...";
    if args.peek().is_none() {
        println!("{usage} (the reference server of benches/vs_nginx.sh)");
        return;
    }
    let addr = args.next().expect(usage);
    let body = Bytes::from(std::fs::read(args.next().expect(usage)).expect("BODY_FILE is readable"));
    let mut headers = HeaderMap::new();
    for pair in args {
        let (name, value) = pair.split_once(':').expect(usage);
        headers.insert(
            HeaderName::from_bytes(name.trim().as_bytes()).expect("a header name"),
            HeaderValue::from_str(value.trim()).expect("a header value"),
        );
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(serve(&addr, body, headers));
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
