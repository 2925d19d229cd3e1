//! `gitlab-oidc-proxy healthcheck`: asks a running proxy's admin listener for
//! `/readyz`, so a container `HEALTHCHECK` or an exec probe needs no shell or
//! curl in the image. Ready means 200; anything else, including no answer
//! within the timeout, is not ready.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why the proxy is not ready, as one line for the probe's output.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    #[error("cannot connect to the admin listener {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("the admin listener {addr} broke the exchange: {source}")]
    Http { addr: SocketAddr, source: hyper::Error },
    #[error("no answer from the admin listener {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("/readyz answered {status}: {reason}")]
    Status { status: StatusCode, reason: String },
}

/// Where to reach an admin listener bound to `listen`, in the order to try: a
/// wildcard address (`0.0.0.0:9090` in a pod) is reached on loopback, and `[::]`
/// on `[::1]`, then on 127.0.0.1 (a dual-stack listener in a container whose
/// IPv6 is off has no `::1`).
pub fn probe_addresses(listen: SocketAddr) -> Vec<SocketAddr> {
    let port = listen.port();
    match listen {
        SocketAddr::V4(a) if a.ip().is_unspecified() => vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))],
        SocketAddr::V6(a) if a.ip().is_unspecified() => vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ],
        other => vec![other],
    }
}

/// GET `/readyz` on the admin listener bound to `listen`; Ok with its body's
/// first line when it answers 200. Only a failed connection moves on to the
/// next address; an answer, even "not ready", is final.
pub async fn probe(listen: SocketAddr, timeout: Duration) -> Result<String, NotReady> {
    let addrs = probe_addresses(listen);
    let first = addrs[0];
    tokio::time::timeout(timeout, async {
        let mut outcome = Err(NotReady::Timeout { addr: first, timeout });
        for addr in addrs {
            outcome = ask(addr).await;
            if !matches!(outcome, Err(NotReady::Connect { .. })) {
                break;
            }
        }
        outcome
    })
    .await
    .unwrap_or(Err(NotReady::Timeout { addr: first, timeout }))
}

async fn ask(addr: SocketAddr) -> Result<String, NotReady> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| NotReady::Connect { addr, source })?;
    let http = |source| NotReady::Http { addr, source };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let req = Request::get("/readyz")
        .header(header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a fixed path and a socket address make a valid request");
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status();
    // The admin listener's answers are one short line; a bigger body is not ours.
    let body = Limited::new(resp.into_body(), 4096).collect().await;
    let reason = body
        .map(|b| {
            String::from_utf8_lossy(&b.to_bytes())
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    if status == StatusCode::OK {
        Ok(reason)
    } else {
        Err(NotReady::Status { status, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        let cases = [
            ("0.0.0.0:9090", "127.0.0.1:9090"),
            ("[::]:9090", "[::1]:9090"),
            ("127.0.0.1:1", "127.0.0.1:1"),
            ("10.1.2.3:9090", "10.1.2.3:9090"),
            ("[::1]:9", "[::1]:9"),
        ];
        for (listen, probed) in cases {
            assert_eq!(
                probe_addresses(listen.parse().unwrap())[0],
                probed.parse().unwrap(),
                "{listen}"
            );
        }
        let dual: Vec<SocketAddr> = vec!["[::1]:9090".parse().unwrap(), "127.0.0.1:9090".parse().unwrap()];
        assert_eq!(probe_addresses("[::]:9090".parse().unwrap()), dual);
        assert_eq!(probe_addresses("0.0.0.0:9090".parse().unwrap()).len(), 1);
    }
}
