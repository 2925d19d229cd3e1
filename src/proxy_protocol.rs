//! PROXY protocol v1/v2: the header a load balancer (AWS NLB, HAProxy, GCP) writes at the start of a
//! connection to say who the client really is.
//!
//! [`accept`] reads exactly one header, parsed by the `ppp` crate, and hands back the stream wrapped in
//! [`Prefixed`] so that any bytes that arrived in the same segment as the header (a TLS ClientHello, an
//! HTTP request line) are still read first. Memory is bounded: at most [`MAX_HEADER_LEN`] bytes are
//! buffered, and a connection that does not start like a PROXY header is refused after the first read.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use ppp::PartialResult;
use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The v1 signature, including the space that must follow "PROXY".
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The 12-byte v2 signature.
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
/// A v1 header is at most 107 bytes including the CRLF.
const V1_MAX_LEN: usize = 107;
/// Fixed part of a v2 header: signature, version/command, family/protocol, 2-byte length.
const V2_FIXED_LEN: usize = 16;
/// Largest header accepted (v2: 16 + length). The protocol allows 16 + 65535, but no load balancer
/// sends more than a few hundred bytes, and this bounds what one connection can make us buffer.
pub(crate) const MAX_HEADER_LEN: usize = 4096;

/// What the header said. `source` is None for v2 LOCAL (health checks) and v1 UNKNOWN / v2 UNSPEC / unix
/// addresses: then the TCP peer is the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    pub source: Option<SocketAddr>,
    /// 1 (text) or 2 (binary).
    pub version: u8,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyProtocolError {
    #[error("connection did not start with a PROXY protocol header")]
    Missing,
    #[error("invalid PROXY protocol header: {0}")]
    Invalid(String),
    #[error("PROXY protocol header longer than {MAX_HEADER_LEN} bytes (v1: 107)")]
    TooLong,
    #[error("timed out waiting for the PROXY protocol header")]
    Timeout,
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a complete PROXY protocol header")]
    Closed,
}

impl ProxyProtocolError {
    /// Short, fixed label for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid(_) => "invalid",
            Self::TooLong => "too_long",
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
            Self::Closed => "closed",
        }
    }
}

/// Reads exactly one header from `stream` within `timeout`. Bytes read past the header (a client's first TLS
/// or HTTP bytes may arrive in the same segment) are returned in the [`Prefixed`] wrapper, so nothing is lost.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(ProxyHeader, Prefixed<S>), ProxyProtocolError> {
    let (header, leftover) = tokio::time::timeout(timeout, read_header(&mut stream))
        .await
        .map_err(|_| ProxyProtocolError::Timeout)??;
    Ok((header, Prefixed::new(leftover, stream)))
}

/// Reads in chunks into a fixed buffer of [`MAX_HEADER_LEN`] bytes, trying to parse after every read.
/// Returns the header and the bytes read past it.
async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(ProxyHeader, Bytes), ProxyProtocolError> {
    let mut buf = vec![0u8; MAX_HEADER_LEN];
    let mut filled = 0;
    loop {
        // A header that can still complete always fits (v1 ≤ 107, v2 ≤ MAX_HEADER_LEN is checked as soon as
        // the length is known), so a full buffer means there is a bug in the checks below; refuse anyway.
        if filled == buf.len() {
            return Err(ProxyProtocolError::TooLong);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(ProxyProtocolError::Closed);
        }
        filled += n;
        if let Some((header, len)) = try_parse(&buf[..filled])? {
            return Ok((header, Bytes::copy_from_slice(&buf[len..filled])));
        }
    }
}

enum Version {
    V1,
    V2,
}

/// Which version `input` (non-empty) can still become, or None when it cannot be a PROXY header at all.
fn signature(input: &[u8]) -> Option<Version> {
    let is_prefix_of = |sig: &[u8]| {
        let n = input.len().min(sig.len());
        input[..n] == sig[..n]
    };
    if is_prefix_of(V1_SIGNATURE) {
        Some(Version::V1)
    } else if is_prefix_of(V2_SIGNATURE) {
        Some(Version::V2)
    } else {
        None
    }
}

/// `Ok(None)`: need more bytes. `Ok(Some((header, length_in_bytes)))`: complete.
fn try_parse(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    match signature(input) {
        None => Err(ProxyProtocolError::Missing),
        Some(Version::V1) => parse_v1(input),
        Some(Version::V2) => parse_v2(input),
    }
}

fn parse_v1(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let cr = input.iter().position(|&b| b == b'\r');
    // Judged here until the line is complete: ppp guesses whether a line is unfinished from how it ends (a
    // line ending in "PROXY" or "TC" passes for one), and calls a field cut by a segment boundary invalid.
    if !v1_can_complete(&input[..cr.unwrap_or(input.len())]) {
        return Err(ProxyProtocolError::Invalid("v1: not a PROXY header line".to_owned()));
    }
    // Complete once a byte follows the CR (the LF, or ppp refuses it).
    if cr.is_none_or(|cr| cr + 1 == input.len()) {
        return if input.len() >= V1_MAX_LEN {
            Err(ProxyProtocolError::TooLong)
        } else {
            Ok(None)
        };
    }
    // ppp only looks up to the first CR; everything after the header is ignored.
    match v1::Header::try_from(input) {
        Ok(header) => {
            let source = match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            };
            Ok(Some((ProxyHeader { source, version: 1 }, header.header.len())))
        }
        Err(v1::BinaryParseError::Parse(v1::ParseError::HeaderTooLong)) => Err(ProxyProtocolError::TooLong),
        // Missing fields included: the line is complete, more bytes cannot add them.
        Err(e) => Err(ProxyProtocolError::Invalid(format!("v1: {e}"))),
    }
}

/// Whether `line` (a v1 line so far, without its CR) can still become a valid header:
/// printable ASCII, every field followed by a space valid in its place, the last field the
/// beginning of a valid one. `PROXY UNKNOWN` may be followed by anything.
fn v1_can_complete(line: &[u8]) -> bool {
    if line.iter().any(|b| !(b' '..=b'~').contains(b)) {
        return false;
    }
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let last = fields.len() - 1;
    let protocol = fields.get(1).copied().unwrap_or_default();
    fields.iter().enumerate().all(|(i, &field)| {
        let complete = i < last;
        let one_of = |words: &[&[u8]]| {
            words
                .iter()
                .any(|w| if complete { field == *w } else { w.starts_with(field) })
        };
        let chars = |allowed: &dyn Fn(u8) -> bool| field.iter().all(|&b| allowed(b));
        let text = std::str::from_utf8(field).unwrap_or_default();
        match (i, protocol) {
            (0, _) => one_of(&[b"PROXY"]),
            (1, _) => one_of(&[b"TCP4", b"TCP6", b"UNKNOWN"]),
            (_, b"UNKNOWN") => true,
            (2 | 3, b"TCP4") if complete => text.parse::<std::net::Ipv4Addr>().is_ok(),
            (2 | 3, b"TCP6") if complete => text.parse::<std::net::Ipv6Addr>().is_ok(),
            (2 | 3, b"TCP4") => chars(&|b| b.is_ascii_digit() || b == b'.'),
            (2 | 3, _) => chars(&|b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
            // Ports: digits (ppp would take "+1"), no leading zero.
            (4 | 5, _) if complete => {
                chars(&|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok() && (text == "0" || !text.starts_with('0'))
            }
            (4 | 5, _) => chars(&|b| b.is_ascii_digit()),
            _ => false,
        }
    })
}

fn parse_v2(input: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    // Refuse an oversized header as soon as its length is known, before buffering it.
    if input.len() >= V2_FIXED_LEN {
        let length = usize::from(u16::from_be_bytes([input[14], input[15]]));
        if V2_FIXED_LEN + length > MAX_HEADER_LEN {
            return Err(ProxyProtocolError::TooLong);
        }
    }
    match v2::Header::try_from(input) {
        Ok(header) => {
            let source = match (header.command, header.protocol, header.addresses) {
                (v2::Command::Local, _, _) => None,
                (_, v2::Protocol::Unspecified, _) => None,
                (v2::Command::Proxy, _, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, _, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (v2::Command::Proxy, _, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            };
            Ok(Some((ProxyHeader { source, version: 2 }, header.len())))
        }
        Err(e) if e.is_incomplete() => Ok(None),
        Err(e) => Err(ProxyProtocolError::Invalid(format!("v2: {e}"))),
    }
}

pin_project_lite::pin_project! {
    /// A stream that first yields `prefix`, then reads from `inner`; writes, flush and shutdown go straight to
    /// `inner`.
    #[derive(Debug)]
    pub struct Prefixed<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

/// What the tests look into.
#[cfg(test)]
impl<S> Prefixed<S> {
    /// The bytes not yet read from the prefix, and the inner stream.
    fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }

    /// The bytes not yet read from the prefix.
    fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.is_empty() {
            return this.inner.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;
    use std::time::Instant;

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// A connected loopback pair: (client, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        (client, server)
    }

    /// Sends `bytes` in one write and accepts on the other side, keeping the client open.
    async fn send_and_accept(
        bytes: &[u8],
        timeout: Duration,
    ) -> (
        TcpStream,
        Result<(ProxyHeader, Prefixed<TcpStream>), ProxyProtocolError>,
    ) {
        let (mut client, server) = pair().await;
        client.write_all(bytes).await.unwrap();
        (client, accept(server, timeout).await)
    }

    async fn header_of(bytes: &[u8]) -> ProxyHeader {
        let (_client, result) = send_and_accept(bytes, LONG).await;
        let (header, stream) = result.unwrap();
        assert!(stream.prefix().is_empty(), "no leftover expected");
        header
    }

    async fn error_of(bytes: &[u8], timeout: Duration) -> ProxyProtocolError {
        let (_client, result) = send_and_accept(bytes, timeout).await;
        result.expect_err("accept should fail")
    }

    fn v2_ip(src: &str, dst: &str) -> v2::Builder {
        let addrs: v2::Addresses = (src.parse::<SocketAddr>().unwrap(), dst.parse::<SocketAddr>().unwrap()).into();
        v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addrs)
    }

    fn sock(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[tokio::test]
    async fn v1_tcp4() {
        let h = header_of(b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n").await;
        assert_eq!(
            h,
            ProxyHeader {
                source: sock("192.0.2.10:56324"),
                version: 1
            }
        );
    }

    #[tokio::test]
    async fn v1_tcp6() {
        let h = header_of(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n").await;
        assert_eq!(
            h,
            ProxyHeader {
                source: sock("[2001:db8::7]:40000"),
                version: 1
            }
        );
    }

    #[tokio::test]
    async fn v1_longest_header_is_accepted() {
        let addrs = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let tcp6 = format!("PROXY TCP6 {addrs}");
        assert_eq!(tcp6.len(), 104);
        let h = header_of(tcp6.as_bytes()).await;
        assert_eq!(h.source, Some(SocketAddr::from((Ipv6Addr::from(u128::MAX), 65535))));

        // The protocol's worst case: UNKNOWN followed by the longest addresses.
        let unknown = format!("PROXY UNKNOWN {addrs}");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        assert_eq!(
            header_of(unknown.as_bytes()).await,
            ProxyHeader {
                source: None,
                version: 1
            }
        );
    }

    #[tokio::test]
    async fn v1_unknown() {
        assert_eq!(
            header_of(b"PROXY UNKNOWN\r\n").await,
            ProxyHeader {
                source: None,
                version: 1
            }
        );
        let with_addrs = b"PROXY UNKNOWN 192.0.2.10 198.51.100.1 56324 443\r\n";
        assert_eq!(
            header_of(with_addrs).await,
            ProxyHeader {
                source: None,
                version: 1
            }
        );
    }

    #[tokio::test]
    async fn v2_proxy_ipv4() {
        let bytes = v2_ip("192.0.2.10:56324", "198.51.100.1:443").build().unwrap();
        assert_eq!(
            header_of(&bytes).await,
            ProxyHeader {
                source: sock("192.0.2.10:56324"),
                version: 2
            }
        );
    }

    #[tokio::test]
    async fn v2_proxy_ipv6() {
        let bytes = v2_ip("[2001:db8::7]:40000", "[2001:db8::1]:443").build().unwrap();
        assert_eq!(
            header_of(&bytes).await,
            ProxyHeader {
                source: sock("[2001:db8::7]:40000"),
                version: 2
            }
        );
    }

    #[tokio::test]
    async fn v2_proxy_udp_gives_source() {
        let addrs: v2::Addresses = v2::IPv4::new([192, 0, 2, 10], [198, 51, 100, 1], 5353, 53).into();
        let bytes = v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Datagram, addrs)
            .build()
            .unwrap();
        assert_eq!(header_of(&bytes).await.source, sock("192.0.2.10:5353"));
    }

    #[tokio::test]
    async fn v2_local_has_no_source() {
        let bytes = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(
            header_of(&bytes).await,
            ProxyHeader {
                source: None,
                version: 2
            }
        );

        // LOCAL ignores any addresses it carries.
        let addrs: v2::Addresses = v2::IPv4::new([10, 0, 0, 1], [10, 0, 0, 2], 1, 2).into();
        let bytes = v2::Builder::with_addresses(v2::Version::Two | v2::Command::Local, v2::Protocol::Stream, addrs)
            .build()
            .unwrap();
        assert_eq!(
            header_of(&bytes).await,
            ProxyHeader {
                source: None,
                version: 2
            }
        );
    }

    #[tokio::test]
    async fn v2_unspec_and_unix_have_no_source() {
        let unspec = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(header_of(&unspec).await.source, None);

        let unix = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            v2::Unix::new([1; 108], [2; 108]),
        )
        .build()
        .unwrap();
        assert_eq!(unix.len(), 16 + 216);
        assert_eq!(
            header_of(&unix).await,
            ProxyHeader {
                source: None,
                version: 2
            }
        );
    }

    #[tokio::test]
    async fn v2_with_tlvs() {
        let bytes = v2_ip("192.0.2.10:56324", "198.51.100.1:443")
            .write_tlv(v2::Type::Authority, b"gitlab.example.com")
            .unwrap()
            .write_tlv(v2::Type::UniqueId, &[7; 32])
            .unwrap()
            // AWS NLB's VPC endpoint id TLV.
            .write_tlv(0xEAu8, b"\x01vpce-0123456789abcdef0")
            .unwrap()
            .build()
            .unwrap();
        let mut sent = bytes.clone();
        sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (_client, result) = send_and_accept(&sent, LONG).await;
        let (header, stream) = result.unwrap();
        assert_eq!(
            header,
            ProxyHeader {
                source: sock("192.0.2.10:56324"),
                version: 2
            }
        );
        assert_eq!(stream.prefix(), b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn v2_largest_allowed_header_is_accepted() {
        // 16 fixed + 12 addresses + 3 TLV header + value = MAX_HEADER_LEN exactly.
        let value = vec![b'x'; MAX_HEADER_LEN - 16 - 12 - 3];
        let bytes = v2_ip("192.0.2.10:1", "198.51.100.1:443")
            .write_tlv(v2::Type::NoOp, &value)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(bytes.len(), MAX_HEADER_LEN);
        let mut sent = bytes;
        sent.extend_from_slice(b"after");
        let (_client, result) = send_and_accept(&sent, LONG).await;
        let (header, mut stream) = result.unwrap();
        assert_eq!(header.source, sock("192.0.2.10:1"));
        let mut after = [0u8; 5];
        stream.read_exact(&mut after).await.unwrap();
        assert_eq!(&after, b"after");
    }

    /// Leftover bytes from the header's segment come first, then later bytes; writes reach the peer.
    #[tokio::test]
    async fn leftover_bytes_then_later_bytes_and_echo() {
        for header in [
            b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\n".to_vec(),
            v2_ip("192.0.2.10:56324", "198.51.100.1:443").build().unwrap(),
        ] {
            let (mut client, server) = pair().await;
            let mut first = header.clone();
            first.extend_from_slice(b"\x16\x03\x01hello ");
            client.write_all(&first).await.unwrap();
            // Make sure the server's first read sees header and leftover together.
            tokio::time::sleep(Duration::from_millis(20)).await;

            let (h, mut stream) = accept(server, LONG).await.unwrap();
            assert_eq!(h.source, sock("192.0.2.10:56324"));
            assert_eq!(stream.prefix(), b"\x16\x03\x01hello ");

            let echo = tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        stream.shutdown().await.unwrap();
                        return stream;
                    }
                    stream.write_all(&buf[..n]).await.unwrap();
                    stream.flush().await.unwrap();
                }
            });

            client.write_all(b"world").await.unwrap();
            let mut got = [0u8; 14];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"\x16\x03\x01hello world");

            client.shutdown().await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            let stream = echo.await.unwrap();
            let (prefix, _tcp) = stream.into_parts();
            assert!(prefix.is_empty());
        }
    }

    #[tokio::test]
    async fn header_split_across_writes() {
        let v2 = v2_ip("[2001:db8::7]:40000", "[2001:db8::1]:443")
            .write_tlv(v2::Type::Authority, b"gitlab.example.com")
            .unwrap()
            .build()
            .unwrap();
        let cases: [(Vec<u8>, &[usize], Option<SocketAddr>); 3] = [
            // Splits inside "PROXY", inside an address, and between CR and LF.
            (
                b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nrest".to_vec(),
                &[3, 17, 45, 46],
                sock("192.0.2.10:56324"),
            ),
            // Splits after the spaces before the ports: ppp sees an empty last field (found by fuzzing).
            (
                b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 443\r\nrest".to_vec(),
                &[35, 41],
                sock("192.0.2.10:56324"),
            ),
            // Splits inside the signature, inside the fixed part, inside the addresses and TLVs.
            (
                v2.iter().copied().chain(*b"rest").collect(),
                &[5, 14, 30, 60],
                sock("[2001:db8::7]:40000"),
            ),
        ];
        for (bytes, cuts, source) in cases {
            let (mut client, server) = pair().await;
            let writer = tokio::spawn(async move {
                let mut start = 0;
                for &cut in cuts.iter().chain(&[bytes.len()]) {
                    client.write_all(&bytes[start..cut]).await.unwrap();
                    start = cut;
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                client
            });
            let (h, mut stream) = accept(server, LONG).await.unwrap();
            assert_eq!(h.source, source);
            let mut rest = [0u8; 4];
            stream.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"rest");
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn plain_http_is_missing_immediately() {
        for request in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"POST /x HTTP/1.1\r\n",
            b"PRI * HTTP/2.0\r\n",
        ] {
            let started = Instant::now();
            let err = error_of(request, LONG).await;
            assert!(matches!(err, ProxyProtocolError::Missing), "{err:?}");
            assert_eq!(err.reason(), "missing");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "took {:?}",
                started.elapsed()
            );
        }
    }

    #[tokio::test]
    async fn missing_after_a_partial_prefix() {
        // "PROX" could still be a header; the next byte settles it without waiting for the timeout.
        let (mut client, server) = pair().await;
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            client.write_all(b"PROX").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"Y-Authorization: x\r\n").await.unwrap();
            client
        });
        let err = accept(server, LONG).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::Missing), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn tls_client_hello_is_missing() {
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0xf8, 0x01, 0x00, 0x00, 0xf4, 0x03, 0x03, 0xab, 0xcd,
        ];
        let started = Instant::now();
        let err = error_of(&hello, LONG).await;
        assert!(matches!(err, ProxyProtocolError::Missing), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn invalid_headers() {
        let mut bad_version = v2_ip("192.0.2.10:1", "198.51.100.1:2").build().unwrap();
        bad_version[12] = 0x11; // version 1 in a binary header
        let mut bad_command = v2_ip("192.0.2.10:1", "198.51.100.1:2").build().unwrap();
        bad_command[12] = 0x2F;
        let mut short_addresses = v2_ip("192.0.2.10:1", "198.51.100.1:2").build().unwrap();
        short_addresses[15] = 4; // IPv4 needs 12 address bytes
        let cases: [&[u8]; 12] = [
            b"PROXY garbage\r\n",
            // Invalid before its last space, so no need to wait for what follows it (found by fuzzing).
            b"PROXY \x07PROXY TCP4 ",
            // Not ASCII: refused before the line is complete (found by fuzzing).
            b"PROXY TCP4 1\0\xca\x9a;.2.10 X",
            b"PROXY garbage",
            b"PROXY TCP4\r\n",
            b"PROXY TCP4 192.0.2.10\r\n",
            b"PROXY TCP4 300.0.2.10 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\rX",
            b"PROXY TCP4\rfoo",
            &bad_version,
            &bad_command,
            &short_addresses,
        ];
        for case in cases {
            let started = Instant::now();
            let err = error_of(case, LONG).await;
            assert!(
                matches!(err, ProxyProtocolError::Invalid(_)),
                "{:?}: {err:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(err.reason(), "invalid");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[tokio::test]
    async fn oversize_v2_is_too_long_without_waiting_for_the_body() {
        for length in [u16::MAX, (MAX_HEADER_LEN - 16 + 1) as u16] {
            let mut fixed = V2_SIGNATURE.to_vec();
            fixed.extend_from_slice(&[0x21, 0x11]);
            fixed.extend_from_slice(&length.to_be_bytes());
            let started = Instant::now();
            let err = error_of(&fixed, LONG).await;
            assert!(matches!(err, ProxyProtocolError::TooLong), "{length}: {err:?}");
            assert_eq!(err.reason(), "too_long");
            assert!(started.elapsed() < Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn v1_line_without_crlf_is_too_long() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(300, b'a');
        let err = error_of(&line, LONG).await;
        assert!(matches!(err, ProxyProtocolError::TooLong), "{err:?}");

        // Reaches 107 bytes without a CR, arriving in two parts.
        let (mut client, server) = pair().await;
        let writer = tokio::spawn(async move {
            client.write_all(b"PROXY TCP4 192.0.2.10 ").await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(&[b'1'; V1_MAX_LEN - 22]).await.unwrap();
            client
        });
        let err = accept(server, LONG).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::TooLong), "{err:?}");
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (_client, server) = pair().await;
        let started = Instant::now();
        let err = accept(server, Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(err, ProxyProtocolError::Timeout), "{err:?}");
        assert_eq!(err.reason(), "timeout");
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn slow_partial_header_times_out() {
        let err = error_of(b"PROXY TCP4 192.0.2.10 198.51", Duration::from_millis(200)).await;
        assert!(matches!(err, ProxyProtocolError::Timeout), "{err:?}");
    }

    #[tokio::test]
    async fn eof_mid_header_is_closed() {
        let v2 = v2_ip("192.0.2.10:1", "198.51.100.1:2").build().unwrap();
        for partial in [&b"PROXY TCP4 192.0.2.10"[..], &v2[..20], &v2[..7], b""] {
            let (mut client, server) = pair().await;
            client.write_all(partial).await.unwrap();
            client.shutdown().await.unwrap();
            let err = accept(server, LONG).await.unwrap_err();
            assert!(matches!(err, ProxyProtocolError::Closed), "{partial:?}: {err:?}");
            assert_eq!(err.reason(), "closed");
        }
    }

    #[tokio::test]
    async fn prefixed_reads_prefix_in_small_pieces_then_inner() {
        let (mut far, near) = tokio::io::duplex(64);
        let mut stream = Prefixed::new(Bytes::from_static(b"abcde"), near);
        far.write_all(b"fg").await.unwrap();
        let mut small = [0u8; 2];
        let mut got = Vec::new();
        while got.len() < 7 {
            let n = stream.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, b"abcdefg");
        stream.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        far.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
        assert_eq!(stream.get_ref().is_write_vectored(), stream.is_write_vectored());
    }

    #[test]
    fn unfinished_v1_lines() {
        for waits in [
            &b"PRO"[..],
            b"PROXY ",
            b"PROXY TC",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 ",
            b"PROXY TCP6 2001:db8::",
            b"PROXY UNKNOWN anything PROXY",
        ] {
            assert!(v1_can_complete(waits), "{:?}", String::from_utf8_lossy(waits));
        }
        // Found by fuzzing, where ppp took the line for unfinished or a cut field for invalid.
        for refused in [
            &b"PROXY TC 1"[..],
            b"PROXY TCP4 192.0.2.10 19?PROXY",
            b"PROXY TCP4 1\0",
            b"PROXY TCP4 \xc3",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 01 ",
            b"PROXY TCP4 192.0.2.10  ",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2 x",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 +56324 ",
        ] {
            assert!(!v1_can_complete(refused), "{:?}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            ProxyProtocolError::Missing,
            ProxyProtocolError::Invalid(String::new()),
            ProxyProtocolError::TooLong,
            ProxyProtocolError::Timeout,
            ProxyProtocolError::Io(io::ErrorKind::ConnectionReset.into()),
            ProxyProtocolError::Closed,
        ];
        let mut reasons: Vec<_> = all.iter().map(ProxyProtocolError::reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
    }
}
