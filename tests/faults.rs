//! A failing or slow GitLab, a slow client, shutdown, and what reaches the logs.

mod support;

use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn unreachable_upstream_is_502_with_one_log_line() {
    // A port nothing listens on (held, so nothing else can take it meanwhile).
    let closed = closed_port();
    let proxy = Proxy::start(&format!("http://{}", closed.addr), &[]);
    let resp = client().get(proxy.url("/explore").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let body = body_bytes(resp).await;
    assert!(body.starts_with(b"bad gateway"), "{body:?}");

    let logs = proxy.wait_for_log(r#""status":502"#).await;
    let failures: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("request to GitLab failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{logs}");
    assert!(
        failures[0].contains("connect_failed") && failures[0].contains("refused"),
        "{}",
        failures[0]
    );
    assert!(
        proxy
            .metrics()
            .await
            .contains(r#"gitlab_oidc_proxy_upstream_errors_total{reason="connect_failed"} 1"#)
    );
}

#[tokio::test]
async fn unreachable_unix_socket_is_502() {
    let (_dir, path) = absent_socket();
    let proxy = Proxy::start(&format!("unix:{}", path.display()), &[]);
    let resp = client().get(proxy.url("/").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let logs = proxy.wait_for_log("request to GitLab failed").await;
    assert!(logs.contains("absent.sock"), "the log names the socket:\n{logs}");
}

#[tokio::test]
async fn connect_timeout_is_504() {
    // A listener that never accepts, with its backlog filled, drops further SYNs:
    // connecting to it hangs the way an unreachable host does.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
        assert!(fillers.len() < 64, "backlog never filled");
    }
    let proxy = Proxy::start(&format!("http://{addr}"), &["--connect-timeout", "300ms"]);
    let started = Instant::now();
    let resp = client().get(proxy.url("/").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    proxy.wait_for_log("connect_timeout").await;
    drop(listener);
}

#[tokio::test]
async fn silent_upstream_is_504_after_idle_timeout() {
    let up = upstream(Transport::Tcp, |_req| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(empty())
    })
    .await;
    let proxy = Proxy::start(&up.target, &["--idle-timeout", "500ms"]);
    let started = Instant::now();
    let resp = client().get(proxy.url("/").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5));
    proxy.wait_for_log("response_timeout").await;
}

#[tokio::test]
async fn slow_header_and_silent_clients_are_disconnected() {
    let up = upstream(Transport::Tcp, echo).await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "500ms"]);

    // Slowloris: starts a request and never finishes the headers.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: gitlab.example.com\r\nX-Slow: ")
        .await
        .unwrap();
    // Connects and says nothing at all.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();

    for (name, stream) in [("slow", &mut slow), ("silent", &mut silent)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{name} client still connected after 5 s");
    }
    // A normal client on the same proxy is unaffected.
    let resp = client().get(proxy.url("/").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Sends `GET /first` on `stream` and reads the whole answer (an upstream that says "ok").
async fn first_answer(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: gitlab.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !(answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"ok")) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("no answer in 5 s")
            .unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    answer
}

/// The header timeout bounds every head, not only a connection's first: a
/// client that finishes one request and then trickles the next one's headers
/// a byte at a time is cut as well.
#[tokio::test]
async fn slow_second_header_is_disconnected_too() {
    let up = upstream(Transport::Tcp, |_req| async { Response::new(full("ok")) }).await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "500ms"]);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    first_answer(&mut stream).await;
    let started = Instant::now();
    let trickle = async {
        for byte in b"GET /second HTTP/1.1\r\nHost: gitlab.example.com\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The proxy ends the connection: writes fail once it is gone.
    tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .expect("a trickled head kept the connection open for 5 s");
    let cut_after = started.elapsed();
    assert!(cut_after >= Duration::from_millis(400), "cut too soon: {cut_after:?}");
    // The proxy serves on.
    let resp = client().get(proxy.url("/third").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn sigterm_drains_in_flight_request_then_exits_0() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut up = upstream(Transport::Tcp, move |_req| {
        let mut release = release_rx.clone();
        async move {
            let _ = release.wait_for(|r| *r).await;
            Response::new(full("finished after SIGTERM"))
        }
    })
    .await;
    let mut proxy = Proxy::start(&up.target, &["--shutdown-grace", "20s"]);
    let url = proxy.url("/group/project.git/git-receive-pack");
    let in_flight = tokio::spawn(async move {
        let resp = client()
            .request(Request::post(url).body(full("pack")).unwrap())
            .await
            .unwrap();
        (resp.status(), body_bytes(resp).await)
    });
    up.next_seen().await;

    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait_for_log("shutting down").await;
    // Not accepting any more; the admin listener says so.
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        while TcpStream::connect(proxy.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting after SIGTERM");
    let ready = client().get(proxy.admin_url("/readyz").parse().unwrap()).await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).await.is_none(),
        "exited with a request in flight"
    );

    release_tx.send(true).unwrap();
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "finished after SIGTERM");
    let exit = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("proxy did not exit");
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn shutdown_grace_bounds_a_stuck_request() {
    let mut up = upstream(Transport::Tcp, |_req| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Response::new(empty())
    })
    .await;
    // Two serving threads: the request is on one of them, not the main thread.
    let mut proxy = Proxy::start(&up.target, &["--shutdown-grace", "500ms", "--threads", "2"]);
    let url = proxy.url("/api/v4/jobs/request");
    let _stuck = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    up.next_seen().await;
    let started = Instant::now();
    proxy.signal(nix::sys::signal::Signal::SIGINT);
    let exit = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("proxy did not exit");
    assert_eq!(exit.code(), Some(0));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "did not wait for the grace period"
    );
    let logs = proxy.logs();
    assert!(logs.contains("grace period over"));
    // Cut by the shutdown, and logged as such: not as the client's leaving.
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["path"] == "/api/v4/jobs/request")
        .unwrap_or_else(|| panic!("no access line for the cut request:\n{logs}"));
    assert_eq!(
        (&line["status"], &line["outcome"]),
        (&499.into(), &"shutdown".into()),
        "{line}"
    );
}

#[tokio::test]
async fn a_second_signal_ends_the_drain() {
    let mut up = upstream(Transport::Tcp, |_req| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        Response::new(empty())
    })
    .await;
    // A grace far longer than the test may take: only the second signal can end it.
    let mut proxy = Proxy::start(&up.target, &["--shutdown-grace", "1h"]);
    let url = proxy.url("/api/v4/jobs/request");
    let _stuck = tokio::spawn(async move { client().get(url.parse().unwrap()).await });
    up.next_seen().await;
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait_for_log("shutting down").await;
    proxy.signal(nix::sys::signal::Signal::SIGINT);
    let exit = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("a second signal did not end the drain");
    assert_eq!(exit.code(), Some(0));
    let logs = proxy.logs();
    assert!(logs.contains("second signal; closing what is left"), "{logs}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_header_timeout() {
    let up = upstream(Transport::Tcp, |_req| async { Response::new(full("ok")) }).await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "500ms"]);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // One whole answer, then the connection stays open (keep-alive) and idles.
    let answer = first_answer(&mut stream).await;
    let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && !head.contains("connection: close"),
        "{head}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle keep-alive connection was still open after 5 s");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    // The proxy serves on.
    let resp = client().get(proxy.url("/second").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Waits (up to 5 s) until the proxy counts `want` parked connections.
async fn parked_becomes(proxy: &Proxy, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = proxy.metrics().await;
        let parked = metric_value(&text, "gitlab_oidc_proxy_parked_connections").expect("the parked gauge");
        if parked == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "parked connections stayed {parked}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads from `stream` until `count` whole "ok" answers have arrived.
async fn answers(stream: &mut TcpStream, count: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while String::from_utf8_lossy(&got).matches("\r\n\r\nok").count() < count {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("no answer in 5 s")
            .unwrap();
        assert!(n > 0, "closed before the answers: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// Sends `GET path` on a connection already open and reads its "ok" answer.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    answers(stream, 1).await
}

/// A keep-alive connection quiet for a second is parked (hyper's buffers
/// freed) and serves on as before: the start of a next request sent before
/// the park is kept, pipelined requests after it are all answered, in order,
/// and the header timeout still ends it.
#[tokio::test]
async fn quiet_keep_alive_connection_is_parked_and_serves_on() {
    let mut up = upstream(Transport::Tcp, |_req| async { Response::new(full("ok")) }).await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "3s"]);
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    first_answer(&mut stream).await;
    assert_eq!(up.next_seen().await.uri.path(), "/first");
    // Half a head, then quiet: parked with the half kept.
    stream.write_all(b"GET /second HTTP/1.1\r\nHo").await.unwrap();
    parked_becomes(&proxy, 1.0).await;
    stream.write_all(b"st: gitlab.example.com\r\n\r\n").await.unwrap();
    let second = answers(&mut stream, 1).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(up.next_seen().await.uri.path(), "/second");
    parked_becomes(&proxy, 0.0).await;
    // Parked again, then woken by two requests in one write.
    parked_becomes(&proxy, 1.0).await;
    stream
        .write_all(b"GET /third HTTP/1.1\r\nHost: a\r\n\r\nGET /fourth HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let both = answers(&mut stream, 2).await;
    assert_eq!(both.matches("HTTP/1.1 200").count(), 2, "{both}");
    assert_eq!(up.next_seen().await.uri.path(), "/third");
    assert_eq!(up.next_seen().await.uri.path(), "/fourth");
    // Quiet until the header timeout: closed, parked or not.
    parked_becomes(&proxy, 1.0).await;
    let quiet_from = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(6), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a parked connection was still open 6 s after its last answer"
    );
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        quiet_from.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        quiet_from.elapsed()
    );
    parked_becomes(&proxy, 0.0).await;
}

/// Only a connection at a request boundary is parked: after a request with a
/// body (which may still be on its way) it stays with hyper; after a request
/// that asked for an upgrade (hyper keeps it pending) it always does; HTTP/2
/// is never parked. Each serves on.
#[tokio::test]
async fn connections_after_a_body_an_upgrade_or_http2_stay_with_hyper() {
    let up = upstream(Transport::Tcp, |_req| async { Response::new(full("ok")) }).await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "10s"]);
    let mut posted = TcpStream::connect(proxy.addr).await.unwrap();
    posted
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .unwrap();
    answers(&mut posted, 1).await;
    // As `curl --http2` asks over plain HTTP; GitLab answers without switching.
    let mut upgrader = TcpStream::connect(proxy.addr).await.unwrap();
    let ask_upgrade = b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n";
    upgrader.write_all(ask_upgrade).await.unwrap();
    let answer = answers(&mut upgrader, 1).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let h2 = h2c_client();
    let resp = h2.get(proxy.url("/h2").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    parked_becomes(&proxy, 0.0).await;
    // A bodiless request next: now it may park.
    get_on(&mut posted, "/after").await;
    parked_becomes(&proxy, 1.0).await;
    // Not the one that asked for an upgrade, even after a plain request.
    get_on(&mut upgrader, "/plain").await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    parked_becomes(&proxy, 1.0).await;
    get_on(&mut upgrader, "/still").await;
    let resp = h2.get(proxy.url("/h2-again").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn credentials_never_reach_the_logs() {
    const SECRETS: [&str; 6] = [
        "glpat-SECRET1aaaaaaaaaaaa",
        "SECRET2-session",
        "SECRET3-private",
        "SECRET4-job",
        "SECRET5-query",
        "SECRET6-basic",
    ];
    let up = upstream(Transport::Tcp, echo).await;
    let closed = closed_port();
    let ok = Proxy::start_with_env(&up.target, &[], &[("RUST_LOG", "trace")]);
    let failing = Proxy::start_with_env(&format!("http://{}", closed.addr), &[], &[("RUST_LOG", "trace")]);
    for proxy in [&ok, &failing] {
        let req = Request::get(proxy.url(&format!("/api/v4/projects?private_token={}&x=1", SECRETS[4])))
            .header("authorization", format!("Bearer {}", SECRETS[0]))
            .header("cookie", format!("_gitlab_session={}", SECRETS[1]))
            .header("private-token", SECRETS[2])
            .header("job-token", SECRETS[3])
            .body(empty())
            .unwrap();
        client().request(req).await.unwrap();
        // And over HTTP/2, whose codec logs frames at trace level.
        let req = Request::post(proxy.url("/api/v4/jobs/request"))
            .header("job-token", SECRETS[3])
            .header("cookie", format!("_gitlab_session={}", SECRETS[1]))
            .body(full("{}"))
            .unwrap();
        h2c_client().request(req).await.unwrap();
        let req = Request::get(proxy.url("/"))
            .header("authorization", format!("Basic {}", SECRETS[5]))
            .body(empty())
            .unwrap();
        client().request(req).await.unwrap();
    }
    for proxy in [&ok, &failing] {
        proxy.wait_for_log(r#""path":"/api/v4/projects""#).await;
        proxy.wait_for_log(r#""path":"/""#).await;
        proxy.wait_for_log(r#""path":"/api/v4/jobs/request""#).await;
        let logs = proxy.logs();
        for secret in SECRETS {
            assert!(!logs.contains(secret), "{secret} leaked into the log:\n{logs}");
        }
        assert!(!logs.contains("private_token"), "query strings are not logged:\n{logs}");
    }
    // The access line carries what an operator needs.
    let logs = ok.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(r#""path":"/api/v4/projects""#))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["status"], 200);
    assert!(v["bytes"].is_u64() && v["duration_ms"].is_number(), "{line}");
}

#[tokio::test]
async fn sigterm_lets_an_open_websocket_finish() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (target, _dir, _task) = ws_echo_upstream(Transport::Unix).await;
    let mut proxy = Proxy::start(&target, &["--shutdown-grace", "20s"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/-/cable", proxy.addr))
        .await
        .unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGTERM);
    proxy.wait_for_log("shutting down").await;
    // The tunnel keeps working during the drain...
    for i in 0..3 {
        ws.send(Message::text(format!("during drain {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("during drain {i}"))
        );
    }
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).await.is_none(),
        "exited under an open websocket"
    );
    // ...and once the client closes it the proxy exits at once, well inside the grace.
    ws.close(None).await.unwrap();
    let exit = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("proxy did not exit after the websocket closed");
    assert_eq!(exit.code(), Some(0));
    assert!(proxy.logs().contains("all requests and upgraded connections finished"));
}

#[tokio::test]
async fn slow_upload_is_not_cut_by_the_body_timeouts() {
    // An upload that takes three timeout periods but is never silent for one.
    let up = upstream(Transport::Tcp, echo).await;
    let proxy = Proxy::start(&up.target, &["--idle-timeout", "1s", "--client-body-timeout", "1s"]);
    let trickle = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((
            Ok::<_, BoxError>(hyper::body::Frame::data(bytes::Bytes::from(format!("part {i};")))),
            i + 1,
        ))
    });
    let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(trickle));
    let req = Request::post(proxy.url("/api/v4/projects/1/uploads"))
        .body(body)
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = body_bytes(resp).await;
    assert_eq!(echoed, (0..10).map(|i| format!("part {i};")).collect::<String>());
}

/// Starts a PUT that promises 100000 bytes and sends 10.
async fn partial_upload(proxy: &Proxy, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: gitlab.example.com\r\nContent-Length: 100000\r\n\r\n0123456789");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The request was logged, and neither logged nor counted as GitLab's failure.
async fn assert_not_blamed_on_gitlab(proxy: &Proxy, path: &str) {
    let logs = proxy.wait_for_log(&format!(r#""path":"{path}""#)).await;
    assert!(!logs.contains("request to GitLab failed"), "{logs}");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "gitlab_oidc_proxy_upstream_errors_total"),
        Some(0.0),
        "counted as a GitLab error: {metrics}"
    );
}

/// What GitLab (an upstream that reads the whole upload before it answers, as
/// Workhorse does) saw of an upload: bytes as they arrive, then how the body ended.
#[derive(Debug)]
enum UploadEvent {
    Read(usize),
    Ended(Result<usize, String>),
}

async fn progress_reader() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<UploadEvent>) {
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let up = upstream(Transport::Tcp, move |req| {
        let tx = tx.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            let end = loop {
                match http_body_util::BodyExt::frame(&mut body).await {
                    None => break Ok(total),
                    Some(Err(e)) => break Err(e.to_string()),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            total += data.len();
                            let _ = tx.send(UploadEvent::Read(total));
                        }
                    }
                }
            };
            let _ = tx.send(UploadEvent::Ended(end));
            Response::new(empty())
        }
    })
    .await;
    (up, events)
}

/// Waits until GitLab has read `bytes` of the upload (the upload is under way).
async fn gitlab_reads(events: &mut tokio::sync::mpsc::UnboundedReceiver<UploadEvent>, bytes: usize) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("GitLab read nothing of the upload in 5 s")
            .unwrap();
        match event {
            UploadEvent::Read(n) if n >= bytes => return,
            UploadEvent::Read(_) => {}
            UploadEvent::Ended(end) => panic!("the upload ended before GitLab read {bytes} bytes: {end:?}"),
        }
    }
}

/// How GitLab's read of the upload ended.
async fn gitlab_read(events: &mut tokio::sync::mpsc::UnboundedReceiver<UploadEvent>) -> Result<usize, String> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("GitLab's request was left open")
            .unwrap();
        if let UploadEvent::Ended(end) = event {
            return end;
        }
    }
}

async fn requests_with_status(proxy: &Proxy, status: u16) -> Option<f64> {
    metric_value(
        &proxy.metrics().await,
        &format!(r#"gitlab_oidc_proxy_http_requests_total{{method="PUT",status="{status}",listener="main"}}"#),
    )
}

#[tokio::test]
async fn stalled_upload_gets_408_aborts_gitlabs_request_and_is_not_blamed_on_gitlab() {
    let (up, mut events) = progress_reader().await;
    // --idle-timeout stays at its hour: the client's silence alone is timed.
    let proxy = Proxy::start(&up.target, &["--client-body-timeout", "500ms"]);
    let started = Instant::now();
    let mut stream = partial_upload(&proxy, "/big").await;
    // Mid-upload: GitLab has the first bytes and waits for the rest.
    gitlab_reads(&mut events, 10).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a silent uploader held its request open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "cut before the timeout"
    );
    let gitlab_saw = gitlab_read(&mut events).await;
    assert!(gitlab_saw.is_err(), "GitLab took a cut upload as whole: {gitlab_saw:?}");
    assert_not_blamed_on_gitlab(&proxy, "/big").await;
    assert_eq!(requests_with_status(&proxy, 408).await, Some(1.0));
}

/// GitLab reads an upload's head and then nothing more: once the socket
/// buffers between it and the client are full, nothing moves. The client keeps
/// trying to send; the answer is a 504 after --idle-timeout, blamed on GitLab.
#[tokio::test]
async fn upload_gitlab_stops_taking_is_504_after_idle_timeout() {
    let (target, _dir, _task) = raw_upstream(Transport::Tcp, |mut s| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        // Holds the connection open, reading nothing.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let proxy = Proxy::start(&target, &["--idle-timeout", "1s"]);
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let uploader = tokio::spawn(async move {
        writer
            .write_all(b"PUT /stuck HTTP/1.1\r\nHost: gitlab.example.com\r\nContent-Length: 1073741824\r\n\r\n")
            .await
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        // Until the proxy stops reading or closes: far past every buffer.
        while sent < 1 << 30 {
            match tokio::time::timeout(Duration::from_secs(20), writer.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        sent
    });
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(15), reader.read(&mut answer))
        .await
        .expect("a stalled upload held its request open")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    uploader.abort();
    let logs = proxy.wait_for_log("send_timeout").await;
    assert!(logs.contains(r#""path":"/stuck""#), "{logs}");
    assert_eq!(
        metric_value(
            &proxy.metrics().await,
            r#"gitlab_oidc_proxy_upstream_errors_total{reason="send_timeout"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn aborted_upload_gets_400_and_is_not_blamed_on_gitlab() {
    let (up, mut events) = progress_reader().await;
    let proxy = Proxy::start(&up.target, &[]);
    let stream = partial_upload(&proxy, "/aborted").await;
    // The client leaves mid-upload, once GitLab has read part of the body.
    gitlab_reads(&mut events, 10).await;
    drop(stream);
    let gitlab_saw = gitlab_read(&mut events).await;
    assert!(gitlab_saw.is_err(), "GitLab took a cut upload as whole: {gitlab_saw:?}");
    assert_not_blamed_on_gitlab(&proxy, "/aborted").await;
    // Logged and counted as the 400 it is (nobody is left to read it), not as a
    // 408 and not as a GitLab failure (502).
    let logs = proxy.wait_for_log(r#""path":"/aborted""#).await;
    let line = logs.lines().find(|l| l.contains(r#""path":"/aborted""#)).unwrap();
    assert!(line.contains(r#""status":400"#), "{line}");
    assert_eq!(requests_with_status(&proxy, 400).await, Some(1.0));
    assert_eq!(requests_with_status(&proxy, 502).await, None);
}

#[tokio::test]
async fn body_cut_by_gitlab_is_logged_as_upstream_body_error() {
    // GitLab promises 1000 bytes, sends 100 and hangs up.
    let (target, _dir, _task) = raw_upstream(Transport::Tcp, |mut io| async move {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && io.read_exact(&mut byte).await.is_ok() {
            head.push(byte[0]);
        }
        let _ = io
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n")
            .await;
        let _ = io.write_all(&[b'x'; 100]).await;
        let _ = io.shutdown().await;
    })
    .await;
    let proxy = Proxy::start(&target, &[]);
    let answer = raw_exchange(
        proxy.addr,
        b"GET /cut/artifact.zip HTTP/1.1\r\nHost: gitlab.example.com\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    // The client sees the cut: the length stays, the body falls short, the connection ends.
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("content-length: 1000"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body.len(), 100, "{answer}");
    let logs = proxy.wait_for_log(r#""path":"/cut/artifact.zip""#).await;
    let line = logs
        .lines()
        .find(|l| l.contains(r#""path":"/cut/artifact.zip""#))
        .unwrap();
    assert!(line.contains(r#""outcome":"upstream_body_error""#), "{line}");
}

#[tokio::test]
async fn client_leaving_before_the_answer_is_still_logged() {
    let up = upstream(Transport::Tcp, |_req| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(empty())
    })
    .await;
    let proxy = Proxy::start(&up.target, &[]);
    let url = proxy.url("/api/v4/jobs/request");
    let gone = tokio::time::timeout(Duration::from_millis(300), client().get(url.parse().unwrap())).await;
    assert!(gone.is_err(), "the upstream answered early");
    let logs = proxy.wait_for_log(r#""outcome":"client_gone""#).await;
    let line = logs.lines().find(|l| l.contains("client_gone")).unwrap();
    assert!(
        line.contains(r#""status":499"#) && line.contains(r#""path":"/api/v4/jobs/request""#),
        "{line}"
    );
    assert!(
        proxy
            .metrics()
            .await
            .contains(r#"http_requests_total{method="GET",status="499",listener="main"} 1"#)
    );
}

#[tokio::test]
async fn unknown_transfer_coding_is_501() {
    let mut up = upstream(Transport::Tcp, echo).await;
    let proxy = Proxy::start(&up.target, &[]);
    let request = b"POST /x HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let resp = raw_exchange(proxy.addr, request, Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 501"), "{resp}");
    assert!(up.saw_nothing());
}

#[tokio::test]
async fn idle_h2_connection_that_answers_pings_is_closed_with_goaway() {
    let up = upstream(Transport::Tcp, |req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Response::new(full("ok"))
    })
    .await;
    let proxy = Proxy::start(&up.target, &["--header-timeout", "1s"]);
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // A client that pings every 200 ms, idle or not: the connection stays alive
    // at the HTTP/2 level, but serves no request.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(200))
        .keep_alive_while_idle(true)
        .handshake::<_, TestBody>(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    // A request longer than the idle limit is not cut: it is activity.
    let req = Request::get(proxy.url("/slow")).body(empty()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body_bytes(resp).await, "ok");
    let idle_from = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle h2 connection was still open after 5 s");
    let idle = idle_from.elapsed();
    assert!(ended.unwrap().is_ok(), "closed without a clean GOAWAY");
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?} of idling");
}
