//! `--oidc-listen`: the listener meant to face the internet while GitLab stays
//! private. It answers the OIDC documents exactly as the main listener does,
//! and 404 to everything else without GitLab ever seeing the request.

mod support;

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use gitlab_oidc_proxy::simulator::{Profile, SimConfig, SimulatedGitLab};
use support::*;

const DISCOVERY: &str = "/.well-known/openid-configuration";
const KEY_PATHS: [&str; 2] = ["/oauth/discovery/keys", "/-/jwks"];

/// Pass-through, health and admin paths, and near misses of the documents' paths.
const NOT_OIDC: [&str; 10] = [
    "/",
    "/explore",
    "/api/v4/jobs/request",
    "/group/project.git/info/refs?service=git-upload-pack",
    "/-/health",
    "/metrics",
    "/readyz",
    "/refresh",
    "/.well-known/openid-configuration/../../api/v4/user",
    "/-/jwks/extra",
];

async fn start_proxy(upstream: String, args: Vec<String>) -> Proxy {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(&upstream, &args)
    })
    .await
    .unwrap()
}

use support::fetch as get;

#[tokio::test]
async fn every_other_path_is_404_and_never_reaches_gitlab() {
    let mut gitlab = upstream(Transport::Tcp, |_req: Request<Incoming>| async {
        Response::new(full("from GitLab\n"))
    })
    .await;
    let proxy = start_proxy(
        gitlab.target.clone(),
        vec!["--oidc-listen".into(), "127.0.0.1:0".into()],
    )
    .await;
    let oidc = proxy.oidc_addr.expect("the listening line names the OIDC listener");
    for path in NOT_OIDC {
        for method in [Method::GET, Method::POST, Method::PUT] {
            let (status, headers, body) = get(&format!("http://{oidc}{path}"), method.clone(), &[]).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
            assert_eq!(
                body, "not found: this listener serves only the OIDC documents\n",
                "{method} {path}"
            );
            assert!(headers.get("set-cookie").is_none());
        }
    }
    // A websocket upgrade is refused the same way.
    let (status, _, _) = get(
        &format!("http://{oidc}/-/cable"),
        Method::GET,
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        gitlab.saw_nothing(),
        "GitLab saw a request sent to the OIDC-only listener"
    );

    // The same request on the main listener does reach GitLab: the check above can fail.
    let (status, _, body) = get(&proxy.url("/explore"), Method::GET, &[]).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"from GitLab\n"[..]));
    assert_eq!(gitlab.next_seen().await.uri.path(), "/explore");

    // The access log and the request metrics say which listener answered.
    let logs = proxy
        .wait_for_log(r#""path":"/explore","version":"HTTP/1.1","status":200"#)
        .await;
    let lines = log_lines_at(&logs, "INFO");
    let listener_of = |path: &str, status: u64| {
        lines
            .iter()
            .find(|l| l["path"] == path && l["status"] == status)
            .map(|l| l["listener"].clone())
    };
    assert_eq!(listener_of("/explore", 404), Some("oidc".into()), "{logs}");
    assert_eq!(listener_of("/explore", 200), Some("main".into()), "{logs}");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"gitlab_oidc_proxy_http_requests_total{method="GET",status="404",listener="oidc"}"#
        ),
        Some((NOT_OIDC.len() + 1) as f64),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"gitlab_oidc_proxy_http_requests_total{method="GET",status="200",listener="main"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_documents_are_the_main_listeners() {
    let sim = SimulatedGitLab::new(SimConfig {
        profile: Profile::V14_4,
        external_url: "https://gitlab.example.com".into(),
        token_issuer: None,
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _task = sim.serve(listener);
    let proxy = start_proxy(
        format!("http://{addr}"),
        vec![
            "--oidc-listen".into(),
            "127.0.0.1:0".into(),
            "--external-url".into(),
            "https://gitlab.example.com".into(),
        ],
    )
    .await;
    let oidc = proxy.oidc_addr.unwrap();
    let warm = wait_until(Duration::from_secs(10), || async {
        get(&format!("http://{oidc}{DISCOVERY}"), Method::GET, &[]).await.0 == StatusCode::OK
    })
    .await;
    assert!(warm, "{}", proxy.logs());
    let hits_before: usize = [gitlab_oidc_proxy::simulator::SimDoc::Discovery]
        .iter()
        .map(|d| sim.hits(*d))
        .sum();
    for path in [DISCOVERY, KEY_PATHS[0], KEY_PATHS[1]] {
        let main = get(&proxy.url(path), Method::GET, &[]).await;
        let only = get(&format!("http://{oidc}{path}"), Method::GET, &[]).await;
        assert_eq!(only.0, StatusCode::OK, "{path}");
        assert_eq!(only.2, main.2, "{path}: the same body");
        for h in ["etag", "cache-control", "content-type", "access-control-allow-origin"] {
            assert_eq!(only.1.get(h), main.1.get(h), "{path}: {h}");
        }
        assert_eq!(only.1["cache-control"], "public, max-age=3600");
        let etag = only.1["etag"].to_str().unwrap().to_owned();
        let revalidated = get(
            &format!("http://{oidc}{path}"),
            Method::GET,
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(revalidated.0, StatusCode::NOT_MODIFIED, "{path}");
        let head = get(&format!("http://{oidc}{path}"), Method::HEAD, &[]).await;
        assert_eq!((head.0, head.2.len()), (StatusCode::OK, 0), "{path}");
        let post = get(&format!("http://{oidc}{path}"), Method::POST, &[]).await;
        assert_eq!(post.0, StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&get(&format!("http://{oidc}{DISCOVERY}"), Method::GET, &[]).await.2).unwrap();
    assert_eq!(doc["jwks_uri"], "https://gitlab.example.com/-/jwks");
    // Served from memory: no fetch per request.
    let hits_after: usize = [gitlab_oidc_proxy::simulator::SimDoc::Discovery]
        .iter()
        .map(|d| sim.hits(*d))
        .sum();
    assert!(hits_after <= hits_before + 1, "{hits_before} -> {hits_after}");
}

/// `--oidc-tls-cert`/`--oidc-tls-key`: TLS on the OIDC listener, its own
/// certificate, reloaded on SIGHUP like the main one.
#[tokio::test]
async fn its_own_certificate_reloads_on_sighup() {
    let pki = Pki::new();
    let first = pki.leaf();
    let cert = pki.write("oidc-cert.pem", &pki.chain(&first));
    let key = pki.write("oidc-key.pem", &first.key_pem);
    let gitlab = upstream(Transport::Tcp, |_req: Request<Incoming>| async {
        Response::new(full("from GitLab\n"))
    })
    .await;
    let args = [
        "--oidc-listen",
        "127.0.0.1:0",
        "--oidc-tls-cert",
        cert.to_str().unwrap(),
        "--oidc-tls-key",
        key.to_str().unwrap(),
        "--tls-watch-interval",
        "0",
    ];
    let proxy = start_proxy(gitlab.target.clone(), args.iter().map(|a| (*a).to_owned()).collect()).await;
    let oidc = proxy.oidc_addr.unwrap();
    let leaf_now = || async { peer_leaf(&pki.connect(oidc, &[b"http/1.1"]).await.expect("TLS handshake")) };
    assert_eq!(leaf_now().await, first.der);
    let mut sender = http1_over(pki.connect(oidc, &[b"http/1.1"]).await.unwrap()).await;
    assert_eq!(get_on(&mut sender, "/explore").await.unwrap().0, StatusCode::NOT_FOUND);
    // No plain HTTP on it: the bytes of a request are no TLS handshake.
    let plain = raw_exchange(oidc, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(5)).await;
    assert!(!plain.starts_with("HTTP/1.1"), "{plain}");
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds{listener="oidc"} "#),
        "{metrics}"
    );

    let second = pki.leaf();
    pki.write("oidc-cert.pem", &pki.chain(&second));
    pki.write("oidc-key.pem", &second.key_pem);
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = wait_until(Duration::from_secs(5), || async { leaf_now().await == second.der }).await;
    assert!(reloaded, "{}", proxy.logs());
    assert!(proxy.logs().contains(r#""listener":"oidc""#), "{}", proxy.logs());
}
