//! `--max-upstream-connections`: every connection open to GitLab counts (busy,
//! idle in the pool, websockets); past the budget a request waits up to
//! `--connect-timeout`, then gets 503 with `Retry-After`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use support::*;
use tokio::sync::Semaphore;

const OPEN: &str = "gitlab_oidc_proxy_upstream_connections";
const REFUSED: &str = "gitlab_oidc_proxy_upstream_connection_refusals_total";
const BUSY: &str = r#"gitlab_oidc_proxy_upstream_errors_total{reason="upstream_busy"}"#;

async fn get(proxy: &Proxy, path: &str) -> Response<hyper::body::Incoming> {
    // A client of its own per request: the budget is the proxy's, not the client's.
    client()
        .request(Request::get(proxy.url(path)).body(empty()).unwrap())
        .await
        .unwrap()
}

async fn wait_for_metric(proxy: &Proxy, series: &str, value: f64) {
    let reached = wait_until(Duration::from_secs(5), || async {
        metric_value(&proxy.metrics().await, series) == Some(value)
    })
    .await;
    assert!(reached, "{series} never reached {value}:\n{}", proxy.metrics().await);
}

#[tokio::test]
async fn past_the_budget_requests_wait_then_get_503_and_idle_connections_are_reused() {
    // `/hold` answers once the test lets it (a runner's long poll); the rest at once.
    let release = Arc::new(Semaphore::new(0));
    let gate = release.clone();
    let up = upstream(Transport::Tcp, move |req| {
        let gate = gate.clone();
        async move {
            if req.uri().path() == "/hold" {
                gate.acquire().await.unwrap().forget();
            }
            Response::new(full("done"))
        }
    })
    .await;
    let proxy = Proxy::start(
        &up.target,
        &["--max-upstream-connections", "2", "--connect-timeout", "700ms"],
    );
    let held: Vec<_> = (0..2)
        .map(|_| {
            let url = proxy.url("/hold");
            tokio::spawn(async move { client().get(url.parse().unwrap()).await.unwrap().status() })
        })
        .collect();
    wait_for_metric(&proxy, OPEN, 2.0).await;

    // Both connections busy: the third request waits its 700 ms, then 503.
    let started = Instant::now();
    let refused = get(&proxy, "/quick").await;
    let waited = started.elapsed();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(waited >= Duration::from_millis(650), "refused after {waited:?}");
    assert!(waited < Duration::from_secs(5), "refused after {waited:?}");
    let metrics = proxy.metrics().await;
    assert_eq!(metric_value(&metrics, REFUSED), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, BUSY), Some(1.0), "{metrics}");
    assert_eq!(metric_value(&metrics, OPEN), Some(2.0), "{metrics}");

    // A waiting request takes the first connection that frees up.
    let proxy = Arc::new(proxy);
    let waiting = {
        let proxy = proxy.clone();
        tokio::spawn(async move { get(&proxy, "/quick").await.status() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    release.add_permits(1);
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    release.add_permits(1);
    for task in held {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }

    // Both connections now idle in the pool, still open and counted; new
    // requests reuse them instead of being refused.
    for _ in 0..20 {
        assert_eq!(get(&proxy, "/quick").await.status(), StatusCode::OK);
    }
    let metrics = proxy.metrics().await;
    assert_eq!(metric_value(&metrics, OPEN), Some(2.0), "{metrics}");
    assert_eq!(metric_value(&metrics, REFUSED), Some(1.0), "{metrics}");
}

#[tokio::test]
async fn a_websocket_holds_its_connection_until_it_closes() {
    let (target, _dir, _task) = ws_echo_upstream(Transport::Tcp).await;
    let proxy = Proxy::start(
        &target,
        &["--max-upstream-connections", "1", "--connect-timeout", "300ms"],
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/-/cable", proxy.addr))
        .await
        .unwrap();
    ws.send("ping".into()).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap(), "ping");
    wait_for_metric(&proxy, OPEN, 1.0).await;
    assert_eq!(
        get(&proxy, "/api/v4/version").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    ws.close(None).await.unwrap();
    wait_for_metric(&proxy, OPEN, 0.0).await;
    // The websocket upstream answers plain HTTP with an error of its own; what
    // matters is that the proxy reached it.
    assert_ne!(
        get(&proxy, "/api/v4/version").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}
