//! What omnibus nginx fronted besides GitLab, through the real proxy binary:
//! `--route` hosts (registry, Pages), KAS's two paths, GitLab's error pages for
//! browsers, and certbot's webroot challenges. Loopback only.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use support::*;

/// An upstream that answers `name path?query` and streams a PUT body back.
async fn named(name: &'static str, transport: Transport) -> Upstream {
    upstream(transport, move |req: Request<Incoming>| async move {
        if req.method() == http::Method::PUT {
            return echo(req).await;
        }
        let target = req.uri().path_and_query().map(|pq| pq.to_string()).unwrap_or_default();
        Response::new(full(format!("{name} {target}")))
    })
    .await
}

async fn get(proxy: &Proxy, host: &str, path: &str, accept: Option<&str>) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut headers = vec![("host", host)];
    headers.extend(accept.map(|a| ("accept", a)));
    fetch(&proxy.url(path), http::Method::GET, &headers).await
}

#[tokio::test]
async fn each_route_host_reaches_its_own_service_and_every_other_host_gitlab() {
    let mut gitlab = named("gitlab", Transport::Tcp).await;
    let mut registry = named("registry", Transport::Unix).await;
    let mut pages = named("pages", Transport::Tcp).await;
    let routes = format!(
        "registry.example.test={},*.pages.example.test={}",
        registry.target, pages.target
    );
    let proxy = Proxy::start_with_env(&gitlab.target, &[], &[("GITLAB_OIDC_PROXY_ROUTE", &routes)]);

    let cases = [
        (
            "registry.example.test:8080",
            "/v2/_catalog?n=10",
            "registry /v2/_catalog?n=10",
        ),
        ("REGISTRY.Example.test.", "/v2/", "registry /v2/"),
        ("group.pages.example.test", "/index.html", "pages /index.html"),
        ("a.b.pages.example.test", "/", "pages /"),
        ("pages.example.test", "/", "gitlab /"),
        ("127.0.0.1", "/users/sign_in", "gitlab /users/sign_in"),
        ("gitlab.internal", "/api/v4/version", "gitlab /api/v4/version"),
        // On a routed host the OIDC paths are that service's.
        (
            "registry.example.test",
            "/.well-known/openid-configuration",
            "registry /.well-known/openid-configuration",
        ),
    ];
    for (host, path, expected) in cases {
        let (status, _, body) = get(&proxy, host, path, None).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, expected.as_bytes()),
            "{host}{path}"
        );
    }
    // The service sees the client's Host and the forwarding headers, as GitLab does.
    let seen = registry.next_seen().await;
    assert_eq!(seen.headers[header::HOST], "registry.example.test:8080");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(
        pages.next_seen().await.headers[header::HOST],
        "group.pages.example.test"
    );
    assert_eq!(gitlab.next_seen().await.uri, "/");

    // A registry layer upload: streamed through, whole, with no size limit.
    let layer: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
    let req = Request::put(proxy.url("/v2/group/image/blobs/uploads/1"))
        .header(header::HOST, "registry.example.test")
        .body(full(layer.clone()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(body_bytes(resp).await == layer[..], "the layer came back changed");
}

#[tokio::test]
async fn a_websocket_and_a_down_service_on_a_route() {
    let gitlab = named("gitlab", Transport::Tcp).await;
    let (ws, _dir, _task) = ws_echo_upstream(Transport::Tcp).await;
    let (_absent_dir, absent) = absent_socket();
    let routes = [
        "--route".to_owned(),
        format!("chat.example.test={ws}"),
        "--route".to_owned(),
        format!("down.example.test=unix:{}", absent.display()),
    ];
    let args: Vec<&str> = routes.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&gitlab.target, &args);

    let req = Request::get(format!("ws://{}/api/v4/websocket", proxy.addr))
        .header(header::HOST, "chat.example.test")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .body(())
        .unwrap();
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
        .await
        .unwrap()
        .unwrap();
    futures_util::SinkExt::send(&mut socket, "hello".into()).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut socket))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap(), "hello");

    let (status, _, _) = get(&proxy, "down.example.test", "/", None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn kas_paths_go_to_kas_without_their_prefix() {
    let mut gitlab = named("gitlab", Transport::Unix).await;
    let mut kas = named("kas", Transport::Tcp).await;
    let mut k8s = named("k8s", Transport::Tcp).await;
    let proxy = Proxy::start(
        &gitlab.target,
        &["--kas-upstream", &kas.target, "--kas-k8s-proxy-upstream", &k8s.target],
    );
    let cases = [
        ("/-/kubernetes-agent/", "kas /"),
        (
            "/-/kubernetes-agent/k8s-proxy/api/v1/namespaces?limit=1",
            "k8s /api/v1/namespaces?limit=1",
        ),
        ("/-/kubernetes-agent/k8s-proxy/", "k8s /"),
        ("/-/kubernetes-agent/other", "gitlab /-/kubernetes-agent/other"),
        ("/-/kubernetes-agent", "gitlab /-/kubernetes-agent"),
    ];
    for (path, expected) in cases {
        let (status, _, body) = get(&proxy, "gitlab.example.test", path, None).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, expected.as_bytes()), "{path}");
    }
    assert_eq!(kas.next_seen().await.headers[header::HOST], "gitlab.example.test");
    assert_eq!(k8s.next_seen().await.uri, "/api/v1/namespaces?limit=1");
    assert_eq!(gitlab.next_seen().await.uri, "/-/kubernetes-agent/other");
}

#[tokio::test]
async fn gitlabs_error_pages_go_to_browsers_for_the_proxys_own_errors_only() {
    let public = tempfile::tempdir().unwrap();
    std::fs::write(public.path().join("502.html"), "<h1>GitLab is not responding</h1>").unwrap();
    std::fs::write(public.path().join("503.html"), "<h1>GitLab is under maintenance</h1>").unwrap();
    let (_dir, absent) = absent_socket();
    let pages = public.path().to_str().unwrap();
    let down = Proxy::start(&format!("unix:{}", absent.display()), &["--error-pages", pages]);
    let browser = "text/html,application/xhtml+xml,*/*;q=0.8";

    let (status, headers, body) = get(&down, "gitlab.example.test", "/", Some(browser)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(&body[..], b"<h1>GitLab is not responding</h1>");
    // git, curl, API clients and runners keep the short plain text.
    for accept in [None, Some("*/*"), Some("application/json")] {
        let (status, headers, body) = get(&down, "gitlab.example.test", "/info/refs", accept).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8", "{accept:?}");
        assert!(!body.starts_with(b"<h1>"), "{accept:?}");
    }

    // GitLab's own 502 reaches the browser as GitLab sent it.
    let gitlab = upstream(Transport::Tcp, |_req| async {
        Response::builder()
            .status(502)
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(r#"{"message":"502 from Workhorse"}"#))
            .unwrap()
    })
    .await;
    let up = Proxy::start(&gitlab.target, &["--error-pages", pages]);
    let (status, headers, body) = get(&up, "gitlab.example.test", "/", Some(browser)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(&body[..], br#"{"message":"502 from Workhorse"}"#);

    // A directory without the pages stops the start, naming the option.
    let empty = tempfile::tempdir().unwrap();
    let (status, logs) = Proxy::start_expecting_exit(
        &gitlab.target,
        &["--error-pages", empty.path().to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{logs}");
    assert!(logs.contains("--error-pages") && logs.contains("502.html"), "{logs}");
}

#[tokio::test]
async fn certbot_challenges_are_served_on_the_plain_listener_despite_the_redirect() {
    let mut gitlab = named("gitlab", Transport::Tcp).await;
    let registry = named("registry", Transport::Tcp).await;
    let webroot = tempfile::tempdir().unwrap();
    let challenges = webroot.path().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&challenges).unwrap();
    std::fs::write(challenges.join("Tok3n_-x"), "Tok3n_-x.account-thumbprint").unwrap();
    std::fs::write(webroot.path().join("secret"), "not for the CA").unwrap();
    std::os::unix::fs::symlink(webroot.path().join("secret"), challenges.join("leak")).unwrap();
    let pki = Pki::new();
    let leaf = pki.leaf();
    let mut args = pki.tls_args(&leaf);
    args.extend(["--redirect-http", "--acme-webroot"].map(String::from));
    args.push(webroot.path().display().to_string());
    args.extend([
        "--route".to_owned(),
        format!("registry.example.test={}", registry.target),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&gitlab.target, &args);
    let port = proxy.tls().port();

    // Real curl, as a CA's validator asks: plain http, any Host.
    let curl = |path: &str, host: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "--path-as-is", "-m", "10", "-H", &format!("Host: {host}")])
            .args(["-o", "-", "-w", "\n%{http_code} %{redirect_url}"])
            .arg(proxy.url(path))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = curl("/.well-known/acme-challenge/Tok3n_-x", "gitlab.example.test");
    assert_eq!(ok, "Tok3n_-x.account-thumbprint\n200 ");
    let routed = curl("/.well-known/acme-challenge/Tok3n_-x", "registry.example.test");
    assert_eq!(routed, "Tok3n_-x.account-thumbprint\n200 ");
    for path in [
        "/.well-known/acme-challenge/missing",
        "/.well-known/acme-challenge/leak",
        "/.well-known/acme-challenge/../../secret",
        "/.well-known/acme-challenge/..%2F..%2Fsecret",
        "/.well-known/acme-challenge/",
    ] {
        let answer = curl(path, "gitlab.example.test");
        assert!(answer.ends_with("404 "), "{path}: {answer}");
        assert!(!answer.contains("not for the CA"), "{path}: {answer}");
    }
    // Everything else is still redirected; a routed host keeps its own name.
    let redirect = curl("/users/sign_in", "gitlab.example.test:8080");
    assert!(
        redirect.ends_with(&format!("301 https://gitlab.example.test:{port}/users/sign_in")),
        "{redirect}"
    );
    let redirect = curl("/v2/", "registry.example.test");
    assert!(
        redirect.ends_with(&format!("301 https://registry.example.test:{port}/v2/")),
        "{redirect}"
    );
    assert!(gitlab.saw_nothing(), "no challenge request reached GitLab");
}
