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
        1.0
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
