//! Target `proxy_protocol`: `accept` reads what a load balancer (or anyone) sends first
//! on a connection. Input: one byte of delivery pattern, then the bytes the peer sends
//! before closing. The pattern's low 6 bits + 1 is the size of each segment, its top bit
//! makes every read be `Pending` once first. Asserted:
//!
//! - what is read through the returned stream is exactly the rest of what was sent, so
//!   the header was a prefix of the input, and no byte is lost, repeated or invented;
//! - the header is at most 107 bytes (v1, ending in CRLF) or 4096 (v2), starts with
//!   its version's signature, and a v1 source is of the family the line names;
//! - an input that cannot start a header is `Missing`; one that ends early is
//!   `Closed`; no `Timeout` or I/O error from a peer that always delivers;
//! - the answer does not depend on how the bytes were cut into segments.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::proxy_protocol::{MAX_HEADER_LEN, ProxyHeader, ProxyProtocolError, accept};

const V1_SIGNATURE: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The peer: sends `data` in segments of `segment` bytes, then closes; swallows writes.
struct Peer {
    data: Vec<u8>,
    at: usize,
    segment: usize,
    pend: bool,
    pended: bool,
}

impl AsyncRead for Peer {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.pend && !self.pended {
            self.pended = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pended = false;
        let n = self.segment.min(buf.remaining()).min(self.data.len() - self.at);
        buf.put_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The header, and every byte read through the stream after it; or the error.
type Outcome = Result<(ProxyHeader, Vec<u8>), String>;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

fn receive(data: &[u8], segment: usize, pend: bool) -> Outcome {
    let peer = Peer {
        data: data.to_vec(),
        at: 0,
        segment,
        pend,
        pended: false,
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (header, mut stream) = match accept(peer, Duration::from_secs(3600)).await {
                Ok(accepted) => accepted,
                Err(e) => return Err(classify(data, &e)),
            };
            // Small reads, so the buffered prefix is handed out in pieces too.
            let mut rest = Vec::new();
            let mut piece = vec![0; segment];
            loop {
                let n = stream.read(&mut piece).await.expect("the peer never fails");
                if n == 0 {
                    return Ok((header, rest));
                }
                rest.extend_from_slice(&piece[..n]);
            }
        })
    })
}

/// The error's reason, after checking it fits the input.
fn classify(data: &[u8], e: &ProxyProtocolError) -> String {
    let could_start = |sig: &[u8]| {
        let n = data.len().min(sig.len());
        data[..n] == sig[..n]
    };
    let missing = !could_start(V1_SIGNATURE) && !could_start(V2_SIGNATURE);
    assert_eq!(matches!(e, ProxyProtocolError::Missing), missing, "{e} for {data:?}");
    assert!(
        !matches!(e, ProxyProtocolError::Timeout | ProxyProtocolError::Io(_)),
        "{e}"
    );
    if matches!(e, ProxyProtocolError::Closed) {
        assert!(data.len() < MAX_HEADER_LEN, "closed only when the input ran out");
    }
    e.reason().to_owned()
}

pub fn run(data: &[u8]) {
    let Some((&pattern, data)) = data.split_first() else {
        return;
    };
    let segment = usize::from(pattern & 0x3f) + 1;
    let outcome = receive(data, segment, pattern & 0x80 != 0);
    // All at once, as one segment: the same answer. Only an overlong line that is
    // invalid too may be told either way, depending on which is noticed first.
    let whole = receive(data, data.len().max(1), false);
    let (header, rest) = match (outcome, whole) {
        (Ok(by_segment), Ok(whole)) => {
            assert_eq!(by_segment, whole, "segments of {segment}");
            by_segment
        }
        (Err(a), Err(b)) => {
            let either = ["invalid", "too_long"];
            assert!(
                a == b || (either.contains(&a.as_str()) && either.contains(&b.as_str())),
                "{a} / {b}"
            );
            return;
        }
        (by_segment, whole) => panic!("segments of {segment}: {by_segment:?}, all at once: {whole:?}"),
    };
    assert!(data.ends_with(&rest), "the bytes after the header, as sent");
    let header_bytes = &data[..data.len() - rest.len()];
    match header.version {
        1 => {
            assert!(header_bytes.starts_with(V1_SIGNATURE) && header_bytes.ends_with(b"\r\n"));
            assert!(header_bytes.len() <= 107, "{}", header_bytes.len());
            let line = String::from_utf8_lossy(header_bytes);
            match header.source {
                Some(source) if source.is_ipv4() => assert!(line.starts_with("PROXY TCP4 "), "{line}"),
                Some(_) => assert!(line.starts_with("PROXY TCP6 "), "{line}"),
                None => assert!(line.starts_with("PROXY UNKNOWN"), "{line}"),
            }
        }
        2 => {
            assert!(header_bytes.starts_with(V2_SIGNATURE));
            assert!(header_bytes.len() >= 16 && header_bytes.len() <= MAX_HEADER_LEN);
            let length = usize::from(u16::from_be_bytes([header_bytes[14], header_bytes[15]]));
            assert_eq!(header_bytes.len(), 16 + length, "the length field counts");
        }
        v => panic!("version {v}"),
    }
}
