//! What goes in comes out: the real proxy binary between real clients and
//! in-process upstreams, over TCP and over a unix socket (Workhorse's).

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Runs one scenario against a TCP upstream and against a unix-socket upstream.
macro_rules! over_both_transports {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn tcp() { super::bounded(super::$name(super::Transport::Tcp)).await }
            #[tokio::test]
            async fn unix() { super::bounded(super::$name(super::Transport::Unix)).await }
        }
    )*};
}

/// No scenario may hang the suite.
async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("scenario ran over 60 s");
}

over_both_transports!(
    http2_cookie_fields_are_joined_for_http1,
    every_method_reaches_upstream_unchanged,
    host_and_forwarding_headers_from_untrusted_client,
    hop_by_hop_headers_removed_both_ways,
    chunked_gzip_upload_passes_untouched,
    response_streams_before_upstream_finishes,
    websocket_echo,
    h2c_client_reaches_http1_upstream,
    upstream_connections_are_reused,
);

async fn every_method_reaches_upstream_unchanged(t: Transport) {
    let mut up = upstream(t, echo).await;
    let proxy = Proxy::start(&up.target, &[]);
    let client = client();
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "HEAD"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let payload = format!("body of {method}");
        let req = Request::builder()
            .method(method.clone())
            .uri(proxy.url("/api/v4/projects/1%2F2/jobs?scope[]=running&page=2"))
            .body(full(payload.clone()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        let seen = up.next_seen().await;
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, "/api/v4/projects/1%2F2/jobs?scope[]=running&page=2");
        assert_eq!(seen.version, Version::HTTP_11);
        let body = body_bytes(resp).await;
        if method == Method::HEAD {
            assert!(body.is_empty());
        } else {
            assert_eq!(body, payload.as_bytes(), "{method}");
        }
    }
    for refused in [Method::TRACE, Method::CONNECT] {
        let raw = format!("{refused} /x HTTP/1.1\r\nHost: gitlab.example.com\r\nConnection: close\r\n\r\n");
        let resp = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 405"), "{refused}: {resp}");
    }
    assert!(up.saw_nothing(), "refused methods must not reach GitLab");
}

async fn host_and_forwarding_headers_from_untrusted_client(t: Transport) {
    let mut up = upstream(t, echo).await;
    let proxy = Proxy::start(&up.target, &["--trusted-proxies", "10.0.0.0/8"]);
    let req = Request::get(proxy.url("/"))
        .header("host", "gitlab.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-ssl", "on")
        .header("x-forwarded-host", "evil.example")
        .header("x-real-ip", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .body(empty())
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), StatusCode::OK);
    let h = up.next_seen().await.headers;
    assert_eq!(h["host"], "gitlab.example.com");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    for gone in ["x-forwarded-ssl", "x-forwarded-host", "forwarded"] {
        assert!(!h.contains_key(gone), "{gone} from an untrusted client reached GitLab");
    }
}

#[tokio::test]
async fn trusted_proxy_headers_are_believed_and_appended() {
    let mut up = upstream(Transport::Tcp, echo).await;
    let proxy = Proxy::start(
        &up.target,
        &[
            "--trusted-proxies",
            "127.0.0.1,10.0.0.0/8",
            "--forwarded-proto",
            "https",
        ],
    );
    let req = Request::get(proxy.url("/users/sign_in"))
        .header("host", "gitlab.example.com")
        .header("x-forwarded-for", "198.51.100.9, 10.1.2.3")
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "gitlab.example.com")
        .body(empty())
        .unwrap();
    assert_eq!(client().request(req).await.unwrap().status(), StatusCode::OK);
    let h = up.next_seen().await.headers;
    assert_eq!(h["x-forwarded-for"], "198.51.100.9, 10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "198.51.100.9");
    assert_eq!(h["x-forwarded-proto"], "http", "a trusted proxy's scheme wins");
    assert!(!h.contains_key("x-forwarded-ssl"));
    assert!(
        !h.contains_key("x-forwarded-host"),
        "only XFF and XFP are believed, even from a trusted proxy"
    );

    // Without the header the listener's --forwarded-proto applies.
    let req = Request::get(proxy.url("/")).body(empty()).unwrap();
    client().request(req).await.unwrap();
    let h = up.next_seen().await.headers;
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-ssl"], "on");
    let logs = proxy.wait_for_log(r#""path":"/users/sign_in""#).await;
    assert!(
        logs.contains(r#""client":"198.51.100.9""#),
        "access log names the real client:\n{logs}"
    );
}

async fn hop_by_hop_headers_removed_both_ways(t: Transport) {
    let mut up = upstream(t, |_req| async {
        Response::builder()
            .header("connection", "x-internal")
            .header("x-internal", "1")
            .header("keep-alive", "timeout=99")
            .header("proxy-authenticate", "Basic")
            .header("x-accel-buffering", "no")
            .header("x-gitlab-meta", "kept")
            .body(full("ok"))
            .unwrap()
    })
    .await;
    let proxy = Proxy::start(&up.target, &[]);
    let request = "GET /hop HTTP/1.1\r\nHost: gitlab.example.com\r\n\
        Connection: close, X-Hop-Secret, Host, Authorization\r\nX-Hop-Secret: 1\r\n\
        Connection: PRIVATE-TOKEN, job-token, Cookie\r\n\
        Keep-Alive: timeout=5\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\n\
        TE: trailers\r\nAuthorization: Bearer end-to-end\r\nX-End-To-End: 1\r\n\
        PRIVATE-TOKEN: glpat-end-to-end\r\nJOB-TOKEN: job-end-to-end\r\nCookie: _gitlab_session=s\r\n\r\n";
    let resp = raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let h = up.next_seen().await.headers;
    for gone in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(!h.contains_key(gone), "{gone} reached GitLab: {h:?}");
    }
    assert_eq!(h["host"], "gitlab.example.com", "Connection cannot remove Host");
    assert_eq!(h["authorization"], "Bearer end-to-end", "nor Authorization");
    assert_eq!(h["private-token"], "glpat-end-to-end", "nor PRIVATE-TOKEN");
    assert_eq!(h["job-token"], "job-end-to-end", "nor JOB-TOKEN");
    assert_eq!(h["cookie"], "_gitlab_session=s", "nor Cookie");
    assert_eq!(h["x-end-to-end"], "1");

    let names = raw_header_names(&resp);
    for gone in ["x-internal", "keep-alive", "proxy-authenticate", "x-accel-buffering"] {
        assert!(!names.contains(&gone.to_string()), "{gone} reached the client: {resp}");
    }
    assert!(names.contains(&"x-gitlab-meta".to_string()), "{resp}");
}

async fn chunked_gzip_upload_passes_untouched(t: Transport) {
    let mut up = upstream(t, echo).await;
    let proxy = Proxy::start(&up.target, &[]);
    // Bytes that are not valid gzip: the proxy must neither decode nor re-encode.
    let chunks: Vec<Vec<u8>> = (0..20u8)
        .map(|i| vec![i.wrapping_mul(37); 1000 + i as usize * 311])
        .collect();
    let mut request = b"POST /group/project.git/git-receive-pack HTTP/1.1\r\nHost: gitlab.example.com\r\n\
        Content-Type: application/x-git-receive-pack-request\r\nContent-Encoding: gzip\r\n\
        Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let mut expected = Vec::new();
    for c in &chunks {
        request.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        request.extend_from_slice(c);
        request.extend_from_slice(b"\r\n");
        expected.extend_from_slice(c);
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let resp = raw_exchange(proxy.addr, &request, Duration::from_secs(10)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{}", &resp[..resp.len().min(300)]);
    let seen = up.next_seen().await;
    assert_eq!(seen.headers["content-encoding"], "gzip");
    assert_eq!(
        seen.headers["transfer-encoding"], "chunked",
        "unknown length stays streamed"
    );
    assert!(!seen.headers.contains_key("content-length"));
    // The echoed body comes back chunked; de-chunk it with hyper rather than by hand.
    let mut up2 = upstream(t, echo).await;
    let proxy2 = Proxy::start(&up2.target, &[]);
    let frames = chunks
        .clone()
        .into_iter()
        .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from(c))));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let req = Request::post(proxy2.url("/group/project.git/git-receive-pack"))
        .header("content-encoding", "gzip")
        .body(body)
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(body_bytes(resp).await, expected);
    assert_eq!(up2.next_seen().await.headers["content-encoding"], "gzip");
}

async fn response_streams_before_upstream_finishes(t: Transport) {
    let (release_tx, release_rx) = tokio::sync::mpsc::channel::<()>(1);
    let release_rx = std::sync::Arc::new(tokio::sync::Mutex::new(release_rx));
    let up = upstream(t, move |_req| {
        let release_rx = release_rx.clone();
        async move {
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let release_rx = release_rx.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"first "))), 1)),
                        1 => {
                            release_rx.lock().await.recv().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"second"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::new(StreamBody::new(stream).boxed_unsync())
        }
    })
    .await;
    let proxy = Proxy::start(&up.target, &[]);
    let resp = client()
        .get(proxy.url("/api/v4/jobs/request").parse().unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("first chunk must arrive while GitLab still holds the rest")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first ");
    release_tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");
}

async fn websocket_echo(t: Transport) {
    let (target, _dir, _task) = raw_upstream(t, |io| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(io).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    })
    .await;
    let proxy = Proxy::start(&target, &[]);
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/-/cable", proxy.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("gitlab_oidc_proxy_open_upgraded_connections 1"),
        "{metrics}"
    );
    ws.close(None).await.unwrap();
    // The tunnel ends once the close handshake is through.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = proxy.metrics().await;
        if metrics.contains("gitlab_oidc_proxy_open_upgraded_connections 0") {
            let relayed: u64 = metrics
                .lines()
                .find_map(|l| l.strip_prefix("gitlab_oidc_proxy_upgraded_bytes_total "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            assert!(relayed > 2 << 20, "relayed {relayed} bytes");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tunnel still counted open:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn h2c_client_reaches_http1_upstream(t: Transport) {
    let mut up = upstream(t, echo).await;
    let proxy = Proxy::start(&up.target, &[]);
    let client = h2c_client();
    let mut handles = Vec::new();
    for i in 0..20 {
        let client = client.clone();
        let url = proxy.url(&format!("/api/v4/version?i={i}"));
        handles.push(tokio::spawn(async move {
            let req = Request::post(url).body(full(format!("h2 body {i}"))).unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(body_bytes(resp).await, format!("h2 body {i}").as_bytes());
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let seen = up.next_seen().await;
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        seen.headers["host"],
        proxy.addr.to_string(),
        "Host comes from :authority"
    );
}

#[tokio::test]
async fn long_held_response_outlives_header_timeout() {
    // Runner long polling: GitLab holds the request far longer than any client-side timeout.
    let up = upstream(Transport::Tcp, |_req| async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Response::new(full("job"))
    })
    .await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "500ms"]);
    let req = Request::post(proxy.url("/api/v4/jobs/request"))
        .body(full("{}"))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // GitLab's answer came whole, five header timeouts after the request.
    assert_eq!(body_bytes(resp).await, "job");
}

async fn upstream_connections_are_reused(t: Transport) {
    let up = upstream(t, echo).await;
    let proxy = Proxy::start(&up.target, &[]);
    for i in 0..50 {
        // A fresh client connection each time: only the proxy's pool can reuse.
        let raw = format!("GET /r/{i} HTTP/1.1\r\nHost: gitlab.example.com\r\nConnection: close\r\n\r\n");
        let resp = raw_exchange(proxy.addr, raw.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    let opened = up.connections.load(std::sync::atomic::Ordering::Relaxed);
    // The OIDC refresher shares the pool and may open up to three at start.
    assert!(
        opened <= 4,
        "50 sequential requests opened {opened} upstream connections"
    );
}

#[tokio::test]
async fn idle_websocket_is_closed_after_upgrade_idle_timeout() {
    let (target, _dir, _task) = ws_echo_upstream(Transport::Tcp).await;
    let proxy = Proxy::start(&target, &["--upgrade-idle-timeout", "700ms"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/-/cable", proxy.addr))
        .await
        .unwrap();
    // Traffic every 300 ms keeps it open well past the limit.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::text(format!("keepalive {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("keepalive {i}"))
        );
    }
    // Then silence: the proxy closes the tunnel.
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("tunnel still open after 5 s");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early: {:?}",
        started.elapsed()
    );
    proxy.wait_for_log("upgraded connection closed after idling").await;
}

async fn http2_cookie_fields_are_joined_for_http1(t: Transport) {
    let mut up = upstream(t, echo).await;
    let proxy = Proxy::start(&up.target, &[]);
    let req = Request::get(proxy.url("/dashboard"))
        .header("cookie", "_gitlab_session=abc")
        .header("cookie", "known_sign_in=xyz")
        .body(empty())
        .unwrap();
    assert_eq!(h2c_client().request(req).await.unwrap().status(), StatusCode::OK);
    let h = up.next_seen().await.headers;
    let cookies: Vec<_> = h.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["_gitlab_session=abc; known_sign_in=xyz"]);
}
