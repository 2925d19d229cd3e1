//! Framing and `Host` rules, with raw TCP on both sides of the real proxy: each
//! case writes exact bytes, and asserts the bytes GitLab received (or that it
//! received nothing) and what the client got.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// An upstream that records each request head it reads (lower-cased) and
/// answers every request with `response`, byte for byte.
async fn recording_upstream(response: &'static [u8]) -> (String, mpsc::UnboundedReceiver<String>, impl Drop) {
    let (tx, heads) = mpsc::unbounded_channel();
    let (target, _dir, task) = raw_upstream(Transport::Tcp, move |mut io| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = io.read(&mut chunk).await {
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head: Vec<u8> = buf.drain(..end + 4).collect();
                    let _ = tx.send(String::from_utf8_lossy(&head).to_lowercase());
                    if io.write_all(response).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    (target, heads, AbortOnDrop(task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The heads GitLab got for `path` (the proxy's own OIDC fetches left out).
fn heads_for(heads: &mut mpsc::UnboundedReceiver<String>, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(head) = heads.try_recv() {
        if head.split_whitespace().nth(1) == Some(path) {
            out.push(head);
        }
    }
    out
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";

async fn exchange(proxy: &Proxy, request: &str) -> String {
    raw_exchange(proxy.addr, request.as_bytes(), Duration::from_secs(5)).await
}

fn status(response: &str) -> &str {
    response.split_whitespace().nth(1).unwrap_or("(none)")
}

#[tokio::test]
async fn upstream_response_with_both_lengths_is_refused() {
    let both = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n\
        01234567890123456789012345678901234567890123456789012345678901234567890123456789\r\n0\r\n\r\n";
    let (target, mut heads, _up) = recording_upstream(both).await;
    let proxy = Proxy::start(&target, &[]);
    let resp = exchange(
        &proxy,
        "GET /smuggle HTTP/1.1\r\nHost: g.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "502", "{resp}");
    assert!(
        !resp.contains("0123456789"),
        "no part of the doubtful body is relayed: {resp}"
    );
    assert_eq!(heads_for(&mut heads, "/smuggle").len(), 1);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "gitlab_oidc_proxy_upstream_errors_total{reason=\"upstream_framing\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn hosts_that_are_missing_repeated_or_invalid_get_400() {
    let (target, mut heads, _up) = recording_upstream(OK).await;
    let proxy = Proxy::start(&target, &[]);
    let cases = [
        "GET /h HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a.example/evil\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a.example@evil\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: a.example, b.example\r\nConnection: close\r\n\r\n",
        "GET /h HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",
        "GET c8 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        // On the OIDC paths too: nothing is answered for a request nginx refuses.
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    ];
    for request in cases {
        let resp = exchange(&proxy, request).await;
        assert_eq!(status(&resp), "400", "{request:?} -> {resp}");
        assert!(resp.contains("bad request"), "{request:?} -> {resp}");
    }
    // A good one still passes, so the upstream is reachable and saw only it.
    let resp = exchange(
        &proxy,
        "GET /h HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = heads_for(&mut heads, "/h");
    assert_eq!(seen.len(), 1, "GitLab saw a refused request: {seen:?}");
    assert!(seen[0].contains("\r\nhost: a.example\r\n"), "{seen:?}");
}

#[tokio::test]
async fn http_1_0_without_host_gets_the_external_url_host_or_the_listener() {
    let (target, mut heads, _up) = recording_upstream(OK).await;
    let proxy = Proxy::start(&target, &[]);
    let resp = exchange(&proxy, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = heads_for(&mut heads, "/old");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with("get /old http/1.1\r\n"), "{seen:?}");
    assert!(seen[0].contains(&format!("\r\nhost: {}\r\n", proxy.addr)), "{seen:?}");

    let (target, mut heads, _up) = recording_upstream(OK).await;
    let proxy = Proxy::start(&target, &["--external-url", "https://gitlab.example.com/gitlab"]);
    let resp = exchange(&proxy, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = heads_for(&mut heads, "/old");
    assert!(seen[0].contains("\r\nhost: gitlab.example.com\r\n"), "{seen:?}");
}

#[tokio::test]
async fn absolute_form_target_names_the_host() {
    let (target, mut heads, _up) = recording_upstream(OK).await;
    let proxy = Proxy::start(&target, &[]);
    let request = "GET http://b.example/abs HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
    let resp = exchange(&proxy, request).await;
    assert_eq!(status(&resp), "200", "{resp}");
    let seen = heads_for(&mut heads, "/abs");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("\r\nhost: b.example\r\n"), "{seen:?}");
    assert!(!seen[0].contains("a.example"), "{seen:?}");
}

// ------------------------------------------------------------ the classic set

/// What GitLab received on one connection: the head (lower-cased), the body's
/// raw bytes, and whether the request arrived whole before the connection closed.
#[derive(Debug)]
struct Received {
    head: String,
    body: Vec<u8>,
    whole: bool,
}

/// Where a request's body ends, read off its head: a test's own tiny reader.
fn body_end(head: &str, body: &[u8]) -> bool {
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        return body.ends_with(b"0\r\n\r\n");
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
    body.len() >= length
}

/// An upstream that records every request whole, bytes and all, and answers
/// each with `OK`; one that is cut off is recorded as not whole.
async fn byte_recording_upstream() -> (String, mpsc::UnboundedReceiver<Received>, impl Drop) {
    let (tx, received) = mpsc::unbounded_channel();
    let (target, _dir, task) = raw_upstream(Transport::Tcp, move |mut io| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = io.read(&mut chunk).await.unwrap_or(0);
                buf.extend_from_slice(&chunk[..n]);
                let split = buf.windows(4).position(|w| w == b"\r\n\r\n");
                let whole = split.is_some_and(|end| {
                    body_end(
                        &String::from_utf8_lossy(&buf[..end + 4]).to_lowercase(),
                        &buf[end + 4..],
                    )
                });
                if n == 0 || whole {
                    let end = split.map_or(buf.len(), |e| e + 4);
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    if !buf.is_empty() && !head.contains("user-agent: gitlab-oidc-proxy") {
                        let _ = tx.send(Received {
                            head,
                            body: buf[end..].to_vec(),
                            whole,
                        });
                    }
                    buf.clear();
                    if n == 0 || io.write_all(OK).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    (target, received, AbortOnDrop(task))
}

/// What GitLab should have received of a request.
enum Upstream {
    Nothing,
    /// The request whole, with this body (raw, as framed on the wire to GitLab).
    Whole(&'static str),
    /// Nothing, or the head and part of the body, then the connection closed
    /// (which of the two depends on how much the proxy had sent when the body broke).
    NeverWhole,
}

const REQUEST_TABLE: &[(&str, &str, &str, Upstream)] = &[
    // (name, request, status to the client, what GitLab got)
    (
        "CL and TE: chunked wins, CL is dropped",
        "POST /f HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "200",
        Upstream::Whole("3\r\nabc\r\n0\r\n\r\n"),
    ),
    (
        "TE chunked twice in one line",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "501",
        Upstream::Nothing,
    ),
    (
        "TE chunked twice in two lines",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "501",
        Upstream::Nothing,
    ),
    (
        "TE xchunked",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "TE chunked then identity",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "TE with a space before the colon",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "TE identity with CL",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc",
        "400",
        Upstream::Nothing,
    ),
    (
        "TE on HTTP/1.0",
        "POST /f HTTP/1.0\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "TE in upper case",
        "POST /f HTTP/1.1\r\nHost: g\r\nConnection: close\r\nTransfer-Encoding: CHUNKED\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "200",
        Upstream::Whole("3\r\nabc\r\n0\r\n\r\n"),
    ),
    (
        "two different CLs",
        "POST /f HTTP/1.1\r\nHost: g\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "400",
        Upstream::Nothing,
    ),
    (
        "two equal CLs: one goes on",
        "POST /f HTTP/1.1\r\nHost: g\r\nConnection: close\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        "200",
        Upstream::Whole("abc"),
    ),
    (
        "a CL list",
        "POST /f HTTP/1.1\r\nHost: g\r\nContent-Length: 3, 3\r\n\r\nabc",
        "400",
        Upstream::Nothing,
    ),
    (
        "a signed CL",
        "POST /f HTTP/1.1\r\nHost: g\r\nContent-Length: +3\r\n\r\nabc",
        "400",
        Upstream::Nothing,
    ),
    (
        "a negative CL",
        "POST /f HTTP/1.1\r\nHost: g\r\nContent-Length: -1\r\n\r\nabc",
        "400",
        Upstream::Nothing,
    ),
    (
        "a CL past u64",
        "POST /f HTTP/1.1\r\nHost: g\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
        "400",
        Upstream::Nothing,
    ),
    (
        "obs-fold",
        "GET /f HTTP/1.1\r\nHost: g\r\nX-A: a\r\n b\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "a bare CR in a value",
        "GET /f HTTP/1.1\r\nHost: g\r\nX-A: a\rb\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "a NUL in a value",
        "GET /f HTTP/1.1\r\nHost: g\r\nX-A: a\0b\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "a header line starting with a space",
        "GET /f HTTP/1.1\r\nHost: g\r\n X-A: a\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "bare LF line ends: accepted, sent on with CRLF",
        "GET /f HTTP/1.1\nHost: g\nX-A: a\nConnection: close\n\n",
        "200",
        Upstream::Whole(""),
    ),
    (
        "a chunk size past u64",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "400",
        Upstream::Nothing,
    ),
    (
        "a chunk without its CRLF",
        "POST /f HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
        "400",
        Upstream::NeverWhole,
    ),
];

#[tokio::test]
async fn request_framing_table() {
    let (target, mut received, _up) = byte_recording_upstream().await;
    let proxy = Proxy::start(&target, &[]);
    for (name, request, want, upstream) in REQUEST_TABLE {
        let resp = exchange(&proxy, request).await;
        assert_eq!(status(&resp), *want, "{name}: {resp}");
        // Whatever GitLab got of it has arrived by the time the client has its answer
        // (a cut-off one once the proxy drops that connection).
        let got = match upstream {
            Upstream::Nothing | Upstream::NeverWhole => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                received.try_recv().ok()
            }
            _ => Some(
                tokio::time::timeout(Duration::from_secs(5), received.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{name}: GitLab got nothing"))
                    .unwrap(),
            ),
        };
        match (upstream, got) {
            (Upstream::Nothing, None) => {}
            (Upstream::Whole(body), Some(r)) => {
                assert!(r.whole, "{name}: {r:?}");
                assert_eq!(String::from_utf8_lossy(&r.body), *body, "{name}: {r:?}");
                assert!(
                    r.head.starts_with("post /f http/1.1\r\n") || r.head.starts_with("get /f http/1.1\r\n"),
                    "{name}: {r:?}"
                );
                let framing =
                    ["content-length", "transfer-encoding"].map(|h| r.head.matches(&format!("\r\n{h}:")).count());
                assert!(
                    framing.iter().sum::<usize>() <= 1,
                    "{name}: more than one framing header: {r:?}"
                );
            }
            (Upstream::NeverWhole, None) => {}
            (Upstream::NeverWhole, Some(r)) => assert!(!r.whole, "{name}: GitLab took a cut request as whole: {r:?}"),
            (_, got) => panic!("{name}: GitLab got {got:?}"),
        }
    }
}

#[tokio::test]
async fn cl_and_te_request_closes_the_connection_after_its_answer() {
    // RFC 9112 §6.1: processed as chunked, then the connection is closed, so no
    // request smuggled behind it is ever read.
    let (target, mut received, _up) = byte_recording_upstream().await;
    let proxy = Proxy::start(&target, &[]);
    let resp = exchange(
        &proxy,
        "POST /first HTTP/1.1\r\nHost: g\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nHost: g\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    let first = received.recv().await.unwrap();
    assert!(first.head.starts_with("post /first "), "{first:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received.try_recv().is_err(), "the request behind it reached GitLab");
}

/// What the client receives when GitLab answers `response`, then closes.
async fn relayed(response: &'static [u8]) -> (String, Proxy, impl Drop) {
    let (target, _dir, task) = raw_upstream(Transport::Tcp, move |mut io| async move {
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = io.write_all(response).await;
        let _ = io.shutdown().await;
    })
    .await;
    let up = AbortOnDrop(task);
    let proxy = Proxy::start(&target, &[]);
    let resp = exchange(&proxy, "GET /r HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n").await;
    (resp, proxy, up)
}

#[tokio::test]
async fn response_framing_table() {
    let refused: &[&'static [u8]] = &[
        // Bytes of a transfer coding relayed as plain ones: gzip taken as text.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabcdef",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a\r\n b\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: a\rb\r\n\r\nabc",
    ];
    for response in refused {
        let (resp, proxy, _up) = relayed(response).await;
        let shown = String::from_utf8_lossy(response);
        assert_eq!(status(&resp), "502", "{shown:?} -> {resp}");
        assert!(!resp.contains("abc"), "{shown:?} -> {resp}");
        let metrics = proxy.metrics().await;
        assert_eq!(
            metric_sum(&metrics, "gitlab_oidc_proxy_upstream_errors_total"),
            Some(1.0),
            "{shown:?}"
        );
    }
    // A chunk size past u64: no complete response reaches the client.
    let (resp, _proxy, _up) =
        relayed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc\r\n0\r\n\r\n").await;
    assert!(!resp.contains("abc") && !resp.ends_with("0\r\n\r\n"), "{resp}");
    // A body shorter than its Content-Length: relayed with that length, so the
    // client sees the cut; never re-framed as a complete chunked body.
    let (resp, _proxy, _up) = relayed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
    assert!(resp.contains("content-length: 10\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nabc"), "{resp}");
    // Close-delimited (legal): complete when GitLab closes, re-framed as chunked.
    let (resp, _proxy, _up) = relayed(b"HTTP/1.0 200 OK\r\n\r\nuntil-close").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_lowercase().ends_with("\r\n\r\nb\r\nuntil-close\r\n0\r\n\r\n"),
        "{resp}"
    );
}

#[tokio::test]
async fn h2_request_shorter_than_its_content_length_never_reaches_gitlab_whole() {
    let (up, mut reads) = upload_reader().await;
    let proxy = Proxy::start(&up.target, &[]);
    for (length, body) in [("10", "abcde"), ("2", "abcde")] {
        let req = hyper::Request::post(proxy.url("/h2"))
            .header("content-length", length)
            .body(full(body))
            .unwrap();
        let answer = h2c_client().request(req).await;
        // The stream is reset (or refused) rather than answered 200.
        assert!(
            answer.as_ref().map_or(true, |r| r.status() != 200),
            "{length}: {answer:?}"
        );
        let gitlab = tokio::time::timeout(Duration::from_millis(500), reads.recv()).await;
        if let Ok(Some(read)) = gitlab {
            assert!(read.is_err(), "content-length {length}: GitLab took {read:?} as whole");
        }
    }
}
