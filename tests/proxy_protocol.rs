//! `--proxy-protocol`: a load balancer (HAProxy, AWS NLB) in front sends a PROXY
//! protocol v1 or v2 header, then the client's bytes. Headers are written raw (v1)
//! or with the `ppp` crate (v2); untrusted peers connect from 127.0.0.2.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use ppp::v2::{AddressFamily, Builder, Command, Protocol, Type, Version};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const REJECTED: &str = "gitlab_oidc_proxy_proxy_protocol_rejected_total";
const TRUSTED: [&str; 3] = ["--proxy-protocol", "--trusted-proxies", "127.0.0.1/32"];

/// No scenario may hang the suite.
async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("scenario ran over 60 s");
}

fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
        .build()
        .unwrap()
}

/// A load balancer's own health check: no addresses.
fn v2_local() -> Vec<u8> {
    Builder::new(
        Version::Two | Command::Local,
        AddressFamily::Unspecified | Protocol::Unspecified,
    )
    .build()
    .unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A request whose client claims to be someone else.
const GET: &str = "GET /whoami HTTP/1.1\r\nHost: gitlab.example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n";
/// A request with no forwarding headers (a load balancer's health check).
const CHECK: &str = "GET /-/health HTTP/1.1\r\nHost: gitlab.example.com\r\nConnection: close\r\n\r\n";

/// Reads until the peer closes (or `within` passes): what was received and whether it closed.
async fn read_all<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, stream.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// `header` then `request` on one connection from `from` (None: 127.0.0.1).
async fn send_from(from: Option<&str>, to: SocketAddr, header: &[u8], request: &str) -> (String, bool) {
    let mut stream = match from {
        None => TcpStream::connect(to).await.unwrap(),
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(addr(&format!("{ip}:0"))).unwrap();
            socket.connect(to).await.unwrap()
        }
    };
    // The peer may close as soon as it has read the header: a failed write is fine.
    let _ = stream.write_all(&[header, request.as_bytes()].concat()).await;
    read_all(&mut stream, Duration::from_secs(5)).await
}

async fn send(to: SocketAddr, header: &[u8], request: &str) -> String {
    let (answer, closed) = send_from(None, to, header, request).await;
    assert!(closed, "connection still open after 5 s: {answer}");
    answer
}

/// Refusals so far. The metric has no series before the first refusal (and then
/// is not in /metrics at all): absent reads 0 here, and a renamed metric fails
/// the waits for it to go up.
async fn rejected(proxy: &Proxy) -> f64 {
    metric_sum(&proxy.metrics().await, REJECTED).unwrap_or(0.0)
}

/// Waits for the rejection counter to pass `before`.
async fn assert_rejected_after(proxy: &Proxy, before: f64) {
    assert!(
        wait_until(Duration::from_secs(5), || async move { rejected(proxy).await > before }).await,
        "{REJECTED} did not go up:\n{}",
        proxy.metrics().await
    );
}

// ---------------------------------------------------------------- trusted load balancer

#[tokio::test]
async fn v1_header_gives_the_client_address() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start(&up.target, &TRUSTED);
        let cases = [
            (addr("203.0.113.7:51234"), "203.0.113.7"),
            (addr("[2001:db8::7]:51234"), "2001:db8::7"),
        ];
        for (src, client) in cases {
            // Both addresses of one family, as the protocol requires.
            let dst = if src.is_ipv4() { proxy.addr } else { addr("[::1]:443") };
            let answer = send(proxy.addr, &v1(src, dst), GET).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{client}: {answer}");
            let h = up.next_seen().await.headers;
            assert_eq!(h["x-real-ip"], client);
            assert_eq!(
                h["x-forwarded-for"], client,
                "a spoofed X-Forwarded-For is not believed"
            );
            assert_eq!(h["x-forwarded-proto"], "http");
        }
        let logs = proxy.wait_for_log(r#""client":"203.0.113.7""#).await;
        assert!(!logs.contains("6.6.6.6"), "{logs}");

        // The header split over two segments, then two requests on the connection.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let header = v1(addr("198.51.100.30:4000"), proxy.addr);
        stream.write_all(&header[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(&header[10..]).await.unwrap();
        let mut sender = http1_over(stream).await;
        for path in ["/one", "/two"] {
            assert_eq!(get_on(&mut sender, path).await.unwrap().0, StatusCode::OK);
            let seen = up.next_seen().await;
            assert_eq!(seen.uri, path);
            assert_eq!(seen.headers["x-real-ip"], "198.51.100.30");
        }
    })
    .await
}

#[tokio::test]
async fn v2_header_gives_the_client_address() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start(&up.target, &TRUSTED);
        let cases = [
            (addr("198.51.100.20:40000"), "198.51.100.20"),
            (addr("[2001:db8::20]:40000"), "2001:db8::20"),
        ];
        for (src, client) in cases {
            let dst = if src.is_ipv4() { proxy.addr } else { addr("[::1]:443") };
            let answer = send(proxy.addr, &v2(src, dst), GET).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{client}: {answer}");
            let h = up.next_seen().await.headers;
            assert_eq!(h["x-real-ip"], client);
            assert_eq!(h["x-forwarded-for"], client);
        }
        // With TLVs, as AWS NLB sends them (authority, its own type 0xEA).
        let header = Builder::with_addresses(
            Version::Two | Command::Proxy,
            Protocol::Stream,
            (addr("192.0.2.44:5555"), proxy.addr),
        )
        .write_tlv(Type::Authority, b"gitlab.example.com")
        .unwrap()
        .write_tlv(0xEA, b"\x01vpce-0123456789abcdef")
        .unwrap()
        .build()
        .unwrap();
        let answer = send(proxy.addr, &header, GET).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(up.next_seen().await.headers["x-real-ip"], "192.0.2.44");
    })
    .await
}

#[tokio::test]
async fn v2_local_header_uses_the_tcp_peer() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start(&up.target, &TRUSTED);
        // The balancer itself is the client, and it is trusted.
        let answer = send(proxy.addr, &v2_local(), CHECK).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let h = up.next_seen().await.headers;
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    })
    .await
}

/// The client behind the balancer may itself sit in a trusted range (a runner in
/// the VPC): its own forwarding headers are still not believed, nor are they
/// when the header names no client (UNKNOWN, LOCAL).
#[tokio::test]
async fn clients_behind_the_balancer_cannot_forge_forwarding_headers() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start(&up.target, &["--proxy-protocol", "--trusted-proxies", "127.0.0.0/8"]);
        const FORGED: &str = "GET /x HTTP/1.1\r\nHost: gitlab.example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
        let inside = addr("127.0.0.9:5000");
        for (name, header, client) in [
            ("v1 from a trusted address", v1(inside, proxy.addr), "127.0.0.9"),
            ("v2 from a trusted address", v2(inside, proxy.addr), "127.0.0.9"),
            ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
            ("v2 LOCAL", v2_local(), "127.0.0.1"),
        ] {
            let answer = send(proxy.addr, &header, FORGED).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
            let h = up.next_seen().await.headers;
            assert_eq!(h["x-real-ip"], client, "{name}");
            assert_eq!(h["x-forwarded-for"], client, "{name}");
            assert_eq!(h["x-forwarded-proto"], "http", "{name}");
            assert!(!h.contains_key("x-forwarded-ssl"), "{name}");
        }
    })
    .await
}

/// The PROXY protocol spec: a receiver must accept "UNKNOWN" and use the
/// connection's own addresses (as for a v2 LOCAL header).
#[tokio::test]
async fn v1_unknown_header_uses_the_tcp_peer() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start(&up.target, &TRUSTED);
        let answer = send(proxy.addr, b"PROXY UNKNOWN\r\n", CHECK).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let h = up.next_seen().await.headers;
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    })
    .await
}

// ---------------------------------------------------------------- refused connections

#[tokio::test]
async fn untrusted_peer_is_closed_without_an_answer() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start(&up.target, &TRUSTED);
        let spoofed = v1(addr("203.0.113.7:51234"), proxy.addr);
        for header in [spoofed, v2(addr("203.0.113.7:51234"), proxy.addr), Vec::new()] {
            let before = rejected(&proxy).await;
            let (answer, closed) = send_from(Some("127.0.0.2"), proxy.addr, &header, GET).await;
            assert!(closed, "an untrusted peer's connection stayed open");
            assert!(answer.is_empty(), "an untrusted peer got an answer: {answer}");
            assert_rejected_after(&proxy, before).await;
        }
        assert!(up.saw_nothing(), "an untrusted peer's request reached GitLab");
        // The trusted balancer is still served.
        let answer = send(proxy.addr, &v1(addr("203.0.113.8:1"), proxy.addr), GET).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(up.next_seen().await.headers["x-real-ip"], "203.0.113.8");
    })
    .await
}

#[tokio::test]
async fn trusted_peer_without_a_valid_header_is_closed() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let mut args = TRUSTED.to_vec();
        args.extend(["--header-timeout", "1s"]);
        let proxy = Proxy::start(&up.target, &args);
        let truncated = v2(addr("203.0.113.7:51234"), proxy.addr);
        let too_long = format!("PROXY TCP4 203.0.113.7 127.0.0.1 1 2{}\r\n", " ".repeat(100));
        let cases: [(&str, &[u8], &str); 6] = [
            ("no header", b"", GET),
            ("a garbled v1 header", b"PROXY TCP4 nonsense\r\n", GET),
            (
                "a v1 header mixing families",
                b"PROXY TCP6 2001:db8::7 127.0.0.1 1 2\r\n",
                GET,
            ),
            ("a v1 header over 107 bytes", too_long.as_bytes(), GET),
            ("a v1 header with no end", b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2", ""),
            ("half a v2 header", &truncated[..20], ""),
        ];
        for (what, header, request) in cases {
            let before = rejected(&proxy).await;
            let started = Instant::now();
            let (answer, closed) = send_from(None, proxy.addr, header, request).await;
            assert!(closed, "{what}: connection still open after 5 s");
            // Closed before a byte of HTTP: no answer at all, not even a 400.
            assert!(answer.is_empty(), "{what}: the proxy answered: {answer}");
            assert!(
                started.elapsed() < Duration::from_secs(4),
                "{what}: took {:?}",
                started.elapsed()
            );
            assert_rejected_after(&proxy, before).await;
        }
        assert!(up.saw_nothing(), "a request without a valid header reached GitLab");
        // The admin listener never expects a header.
        let resp = client()
            .get(proxy.admin_url("/healthz").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_no_panic(&proxy);
    })
    .await
}

fn assert_no_panic(proxy: &Proxy) {
    let logs = proxy.logs();
    assert!(!logs.contains("panicked"), "the proxy panicked:\n{logs}");
}

// ---------------------------------------------------------------- with TLS

#[tokio::test]
async fn proxy_header_then_tls_handshake() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let mut args = pki.tls_args(&leaf);
        args.extend(TRUSTED.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = Proxy::start(&up.target, &args);

        for header in [
            v2(addr("198.51.100.20:40000"), proxy.tls()),
            v1(addr("198.51.100.21:40000"), proxy.tls()),
        ] {
            let mut tcp = TcpStream::connect(proxy.tls()).await.unwrap();
            tcp.write_all(&header).await.unwrap();
            let tls = pki
                .handshake(tcp, &[b"http/1.1"])
                .await
                .expect("TLS after the PROXY header");
            assert_eq!(peer_leaf(&tls), leaf.der);
            let mut sender = http1_over(tls).await;
            assert_eq!(get_on(&mut sender, "/over-tls").await.unwrap().0, StatusCode::OK);
            let h = up.next_seen().await.headers;
            let client = if header.starts_with(b"PROXY") {
                "198.51.100.21"
            } else {
                "198.51.100.20"
            };
            assert_eq!(h["x-real-ip"], client);
            assert_eq!(h["x-forwarded-for"], client);
            assert_eq!(h["x-forwarded-proto"], "https");
        }

        // The header and the ClientHello in one segment (bytes read past the header
        // belong to TLS).
        let tcp = TcpStream::connect(proxy.tls()).await.unwrap();
        let prefixed = Prefixed {
            inner: tcp,
            prefix: v2(addr("198.51.100.22:40000"), proxy.tls()),
        };
        let tls = pki
            .handshake(prefixed, &[b"http/1.1"])
            .await
            .expect("TLS right after the header");
        let mut sender = http1_over(tls).await;
        assert_eq!(get_on(&mut sender, "/coalesced").await.unwrap().0, StatusCode::OK);
        assert_eq!(up.next_seen().await.headers["x-real-ip"], "198.51.100.22");

        // A ClientHello with no PROXY header first is refused: closed with not a
        // byte sent back (no ServerHello, no alert, no HTTP).
        let hello = client_hello(&pki);
        let before = rejected(&proxy).await;
        let (answer, closed) = send_raw_from(None, proxy.tls(), &hello).await;
        assert!(closed, "a ClientHello without a PROXY header: connection still open");
        assert!(
            answer.is_empty(),
            "a ClientHello without a PROXY header got {} bytes back",
            answer.len()
        );
        assert_rejected_after(&proxy, before).await;
        // So is an untrusted peer with a header.
        let before = rejected(&proxy).await;
        let prefixed = [v2(addr("203.0.113.7:1"), proxy.tls()), hello.clone()].concat();
        let (answer, closed) = send_raw_from(Some("127.0.0.2"), proxy.tls(), &prefixed).await;
        assert!(closed, "an untrusted peer's TLS connection stayed open");
        assert!(answer.is_empty(), "an untrusted peer got {} bytes back", answer.len());
        assert_rejected_after(&proxy, before).await;
        // And the same bytes from the trusted balancer get a TLS answer: the two
        // refusals above were not for want of a valid ClientHello.
        let trusted = [v2(addr("203.0.113.8:1"), proxy.tls()), hello].concat();
        let mut tcp = TcpStream::connect(proxy.tls()).await.unwrap();
        tcp.write_all(&trusted).await.unwrap();
        let mut first = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut first))
            .await
            .expect("no ServerHello in 5 s")
            .expect("closed without a ServerHello");
        assert_eq!(first[0], 0x16, "the first byte back is not a TLS handshake record");
        assert!(up.saw_nothing());
    })
    .await
}

/// The bytes of a TLS ClientHello for `localhost`, as a client trusting `pki` sends it.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(pki.client_config(&[b"http/1.1"])), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello.first(), Some(&0x16), "not a handshake record");
    hello
}

/// Writes `bytes` on a connection from `from` (None: 127.0.0.1) and reads everything
/// that comes back until the peer closes or 5 s pass: the bytes and whether it closed.
async fn send_raw_from(from: Option<&str>, to: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut stream = match from {
        None => TcpStream::connect(to).await.unwrap(),
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(addr(&format!("{ip}:0"))).unwrap();
            socket.connect(to).await.unwrap()
        }
    };
    // The peer may close as soon as it has read the first bytes: a failed write is fine.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// A TCP stream whose first write carries `prefix` in front, in one `write` call.
struct Prefixed {
    inner: TcpStream,
    prefix: Vec<u8>,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.prefix.is_empty() {
            return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        let combined = [self.prefix.as_slice(), buf].concat();
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, &combined) {
            std::task::Poll::Ready(Ok(n)) => {
                assert_eq!(n, combined.len(), "short write on loopback");
                self.prefix.clear();
                std::task::Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------- configuration

#[test]
fn proxy_protocol_requires_trusted_proxies() {
    for extra in [
        &["--proxy-protocol"][..],
        &["--proxy-protocol", "--trusted-proxies", ""][..],
    ] {
        let (status, stderr) = Proxy::start_expecting_exit("http://127.0.0.1:1", extra, Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{extra:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.contains("--trusted-proxies"), "{extra:?}: {stderr}");
    }
}

#[tokio::test]
async fn proxy_protocol_from_the_environment() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let proxy = Proxy::start_with_env(
            &up.target,
            &[],
            &[
                ("GITLAB_OIDC_PROXY_PROXY_PROTOCOL", "true"),
                ("GITLAB_OIDC_PROXY_TRUSTED_PROXIES", "127.0.0.1/32"),
            ],
        );
        let answer = send(proxy.addr, &v1(addr("203.0.113.9:1"), proxy.addr), GET).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(up.next_seen().await.headers["x-real-ip"], "203.0.113.9");
        let (answer, closed) = send_from(None, proxy.addr, b"", GET).await;
        assert!(closed && answer.is_empty(), "served without a header: {answer}");
    })
    .await
}
