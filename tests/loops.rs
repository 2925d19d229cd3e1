//! Request loops: every request the proxy sends carries `Via: <protocol> <random
//! id of this process>`; a request that comes back with this process's own id is
//! answered 508 at once, while other proxies of a chain (even other instances of
//! this one) pass. An `--upstream` that is one of its own listeners is refused
//! at start.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use http::{Request, StatusCode};
use support::*;

/// A loopback port nothing listens on right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The received-by names of a `Via` field list.
fn via_names(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all("via")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(',').map(str::to_owned).collect::<Vec<_>>())
        .map(|entry| entry.split_whitespace().nth(1).unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_chain_of_two_instances_passes_and_each_names_itself_once() {
    let mut up = upstream(Transport::Tcp, echo).await;
    let inner = Proxy::start(&up.target, &[]);
    let outer = Proxy::start(&format!("http://{}", inner.addr), &[]);
    let req = Request::get(outer.url("/api/v4/version"))
        .header("via", "1.0 corporate-proxy")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = up.next_seen().await;
    let names = via_names(&seen.headers);
    assert_eq!(names.len(), 3, "{:?}", seen.headers.get_all("via"));
    assert_eq!(names[0], "corporate-proxy");
    assert_ne!(names[1], names[2], "two instances share a Via name");
    assert!(names[1..].iter().all(|n| n.len() == 16), "{names:?}");
    let protocols: Vec<_> = seen.headers.get_all("via").iter().collect();
    assert!(
        protocols
            .iter()
            .skip(1)
            .all(|v| v.to_str().unwrap().starts_with("1.1 ")),
        "{protocols:?}"
    );
}

#[tokio::test]
async fn a_loop_through_another_proxy_is_508_at_once() {
    // A → B → A: no listener of A is B's upstream, so only Via can tell.
    // A's port is picked before A starts (B needs it); should anything take it
    // meanwhile, both start again on another.
    let (a, b) = (0..5)
        .find_map(|_| {
            let a_addr = free_port();
            let b = Proxy::start(&format!("http://{a_addr}"), &[]);
            Proxy::try_start_on(a_addr, &format!("http://{}", b.addr), &[]).map(|a| (a, b))
        })
        .expect("no free port for A in 5 tries");
    let resp = client()
        .request(Request::get(a.url("/api/v4/version")).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::LOOP_DETECTED);
    let body = body_bytes(resp).await;
    assert!(String::from_utf8_lossy(&body).contains("loop"), "{body:?}");
    let logs = a.wait_for_log("--upstream leads to itself").await;
    assert!(logs.contains(r#""level":"WARN""#), "{logs}");
    // At once: the request went round once (A, B, back to A), not again and again.
    let path = r#""path":"/api/v4/version""#;
    let passes = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains(path) && l.contains(r#""target":"access""#))
            .count()
    };
    let b_logs = b.wait_for_log(path).await;
    assert_eq!(passes(&b_logs), 1, "B passed the request on more than once:\n{b_logs}");
    let a_logs = a.logs();
    assert!(
        passes(&a_logs) <= 2,
        "the request went round A more than once:\n{a_logs}"
    );
    // Not a GitLab failure on A, whose own request came back to it.
    let metrics = a.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "gitlab_oidc_proxy_upstream_errors_total"),
        Some(0.0),
        "{metrics}"
    );
}

#[test]
fn an_upstream_that_is_its_own_listener_is_refused_at_start() {
    let port = free_port();
    for upstream in [format!("http://{port}"), format!("http://localhost:{}", port.port())] {
        let (status, stderr) =
            Proxy::start_expecting_exit(&upstream, &["--listen", &port.to_string()], Duration::from_secs(10));
        assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
        assert!(stderr.contains("is this proxy's own listener"), "{stderr}");
    }
    // Its own admin listener is caught too (wildcard listeners: unit-tested,
    // tests bind loopback only).
    let admin = free_port();
    let (status, stderr) = Proxy::start_expecting_exit(
        &format!("http://localhost:{}", admin.port()),
        &["--admin-listen", &admin.to_string()],
        Duration::from_secs(10),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("own listener {admin}")), "{stderr}");
}
