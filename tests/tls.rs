//! The TLS listener, against real clients (rustls, curl, openssl s_client) with
//! certificates generated at runtime: a root CA → intermediate → leaf for
//! `localhost`/127.0.0.1. Chain checks at load, hot reload, handshake limits, the
//! http → https redirect and HSTS.

mod support;

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{Method, Request, StatusCode, Version};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RELOADS_OK: &str = r#"gitlab_oidc_proxy_tls_reloads_total{outcome="ok"}"#;
const RELOADS_REFUSED: &str = r#"gitlab_oidc_proxy_tls_reloads_total{outcome="refused"}"#;

/// No scenario may hang the suite.
async fn bounded(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("scenario ran over 60 s");
}

/// The proxy with a TLS listener serving `leaf` (chain written in order).
fn start_tls(target: &str, pki: &Pki, leaf: &Leaf, extra: &[&str]) -> Proxy {
    let mut args = pki.tls_args(leaf);
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proxy::start(target, &args)
}

/// The leaf a fresh handshake gets now.
async fn leaf_now(pki: &Pki, proxy: &Proxy) -> CertificateDer<'static> {
    peer_leaf(&pki.connect(proxy.tls(), &[b"http/1.1"]).await.expect("TLS handshake"))
}

/// Waits (up to 5 s) for new handshakes to present `leaf`; `what` names the trigger.
async fn assert_serves_soon(pki: &Pki, proxy: &Proxy, leaf: &CertificateDer<'static>, what: &str) {
    assert!(
        wait_until(
            Duration::from_secs(5),
            || async move { leaf_now(pki, proxy).await == *leaf }
        )
        .await,
        "{what}:\n{}",
        proxy.logs()
    );
}

/// The value of a series that exists from the start (zeroed at start-up).
async fn metric_now(proxy: &Proxy, series: &str) -> f64 {
    let metrics = proxy.metrics().await;
    metric_value(&metrics, series).unwrap_or_else(|| panic!("no series {series}:\n{metrics}"))
}

fn header<'a>(resp: &'a http::Response<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

fn assert_no_panic(proxy: &Proxy) {
    let logs = proxy.logs();
    assert!(!logs.contains("panicked"), "the proxy panicked:\n{logs}");
}

// ---------------------------------------------------------------- protocols

#[tokio::test]
async fn http1_over_tls_reaches_gitlab_as_https() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(&up.target, &pki, &leaf, &[]);

        let req = Request::post(proxy.https_url("/api/v4/jobs/request?x=1"))
            // A client's own claims about the scheme are never believed.
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-ssl", "off")
            .body(full("runner poll"))
            .unwrap();
        let resp = pki.https_client(false).request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(body_bytes(resp).await, "runner poll");
        let seen = up.next_seen().await;
        assert_eq!(seen.method, Method::POST);
        assert_eq!(seen.uri, "/api/v4/jobs/request?x=1");
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["x-forwarded-ssl"], "on");
        assert_eq!(
            seen.headers["host"],
            format!("localhost:{}", proxy.tls().port()).as_str()
        );

        // ALPN: `http/1.1` offered alone is what is negotiated; the full chain is sent.
        let tls = pki.connect(proxy.tls(), &[b"http/1.1"]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let chain: Vec<_> = tls.get_ref().1.peer_certificates().unwrap().to_vec();
        assert_eq!(chain, vec![leaf.der.clone(), pki.intermediate_der.clone()]);
        // A client offering no ALPN at all speaks HTTP/1.1.
        let tls = pki.connect(proxy.tls(), &[]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        let mut sender = http1_over(tls).await;
        assert_eq!(get_on(&mut sender, "/no-alpn").await.unwrap().0, StatusCode::OK);
        assert_eq!(up.next_seen().await.headers["x-forwarded-proto"], "https");

        // A client that connects by IP address sends no SNI: the certificate is served anyway.
        let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[b"http/1.1"])));
        let ip = rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let tls = connector
            .connect(ip, TcpStream::connect(proxy.tls()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(peer_leaf(&tls), leaf.der);

        // The plain listener beside it stays plain http.
        let resp = client().get(proxy.url("/plain").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = up.next_seen().await.headers;
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-ssl"));
        assert_no_panic(&proxy);
    })
    .await
}

#[tokio::test]
async fn h2_over_tls_negotiated_by_alpn() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(&up.target, &pki, &leaf, &[]);

        let tls = pki.connect(proxy.tls(), &[b"h2", b"http/1.1"]).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

        let client = pki.https_client(true);
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..8 {
            let client = client.clone();
            let req = Request::post(proxy.https_url(&format!("/h2/{i}")))
                .body(full(format!("stream {i}")))
                .unwrap();
            requests.spawn(async move {
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                assert_eq!(resp.version(), Version::HTTP_2);
                assert_eq!(body_bytes(resp).await, format!("stream {i}").as_bytes());
            });
        }
        while let Some(done) = requests.join_next().await {
            done.unwrap();
        }
        // Flow control both ways: 4 MiB up and back on one stream.
        let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let req = Request::put(proxy.https_url("/h2/big"))
            .body(full(big.clone()))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert!(body_bytes(resp).await == big, "4 MiB echoed over h2 differ");
        up.next_seen().await;
        for _ in 0..8 {
            let seen = up.next_seen().await;
            assert_eq!(seen.version, Version::HTTP_11, "GitLab is spoken to in HTTP/1.1");
            assert_eq!(seen.headers["x-forwarded-proto"], "https");
            assert_eq!(seen.headers["x-forwarded-ssl"], "on");
            assert_eq!(
                seen.headers["host"],
                format!("localhost:{}", proxy.tls().port()).as_str()
            );
        }
        assert_no_panic(&proxy);
    })
    .await
}

#[tokio::test]
async fn tls_configured_from_the_environment() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let cert = pki.write("env-cert.pem", &pki.chain(&leaf));
        let key = pki.write("env-key.pem", &leaf.key_pem);
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let proxy = Proxy::start_with_env(
            &up.target,
            &[],
            &[
                ("GITLAB_OIDC_PROXY_TLS_LISTEN", "127.0.0.1:0"),
                ("GITLAB_OIDC_PROXY_TLS_CERT", &cert),
                ("GITLAB_OIDC_PROXY_TLS_KEY", &key),
                ("GITLAB_OIDC_PROXY_HSTS", "600"),
            ],
        );
        assert_eq!(leaf_now(&pki, &proxy).await, leaf.der);
        let resp = pki
            .https_client(false)
            .get(proxy.https_url("/").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "strict-transport-security"), Some("max-age=600"));
        assert_eq!(up.next_seen().await.headers["x-forwarded-proto"], "https");
    })
    .await
}

// ---------------------------------------------------------------- real command-line clients

async fn run_tool(program: &str, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} ran over 20 s"))
        .unwrap()
}

#[tokio::test]
async fn curl_speaks_http2_and_http1_over_tls() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(&up.target, &pki, &leaf, &[]);
        let port = proxy.tls().port();
        let resolve = format!("localhost:{port}:127.0.0.1");
        let root = pki.root_path.display().to_string();
        for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
            let url = format!("https://localhost:{port}/curl{flag}");
            let out = run_tool(
                "curl",
                &[
                    "-sS",
                    "--max-time",
                    "10",
                    "--cacert",
                    &root,
                    "--resolve",
                    &resolve,
                    flag,
                    "--data-binary",
                    "hello over tls",
                    "-o",
                    "-",
                    "-w",
                    "\n%{http_version} %{http_code}",
                    &url,
                ],
            )
            .await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "curl {flag}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(stdout, format!("hello over tls\n{version} 200"), "curl {flag}");
            let seen = up.next_seen().await;
            assert_eq!(seen.uri.path(), format!("/curl{flag}"));
            assert_eq!(seen.headers["x-forwarded-proto"], "https");
        }
    })
    .await
}

/// The certificates (DER) in `openssl s_client -showcerts` output, in order.
fn pem_blocks(text: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b64 = current.take().expect("END without BEGIN");
            blocks.push(base64::engine::general_purpose::STANDARD.decode(b64).unwrap());
        } else if let Some(b64) = current.as_mut() {
            b64.push_str(line);
        }
    }
    blocks
}

async fn s_client(pki: &Pki, proxy: &Proxy, extra: &[&str]) -> String {
    let connect = proxy.tls().to_string();
    let root = pki.root_path.display().to_string();
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "localhost",
        "-showcerts",
        "-CAfile",
        &root,
    ];
    args.extend_from_slice(extra);
    let out = run_tool("openssl", &args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "openssl {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn misordered_chain_is_served_in_order_with_a_warning() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        // Intermediate first, leaf second: a common mistake when concatenating.
        let cert = pki.write("misordered.pem", &format!("{}{}", pki.intermediate_pem, leaf.pem));
        let key = pki.write("key.pem", &leaf.key_pem);
        let tls = [
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        let proxy = Proxy::start(&up.target, &tls);
        let out = s_client(&pki, &proxy, &["-alpn", "h2"]).await;
        let served = pem_blocks(&out);
        assert_eq!(
            served,
            vec![leaf.der.to_vec(), pki.intermediate_der.to_vec()],
            "served leaf first, then the intermediate:\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("ALPN protocol: h2"), "{out}");
        let warnings = log_lines_at(&proxy.logs(), "WARN");
        assert!(
            warnings.iter().any(|w| w.to_string().to_lowercase().contains("order")),
            "no WARN names the reordering:\n{}",
            proxy.logs()
        );
        for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let out = s_client(&pki, &proxy, &[flag]).await;
            assert!(
                out.lines().any(|l| l.starts_with(&format!("New, {version}"))),
                "{flag} did not handshake:\n{out}"
            );
            assert!(out.contains("Verify return code: 0 (ok)"), "{flag}:\n{out}");
        }

        // Leaf last, with a duplicate and an unrelated certificate: only the chain is served.
        let unrelated = Pki::named("Other", SystemTime::now() + Duration::from_secs(86_400));
        let messy = format!(
            "{}{}{}{}",
            pki.intermediate_pem, unrelated.intermediate_pem, pki.intermediate_pem, leaf.pem
        );
        let out = served_chain(&up, &pki, &messy, &key).await;
        assert_eq!(
            pem_blocks(&out),
            vec![leaf.der.to_vec(), pki.intermediate_der.to_vec()],
            "duplicates and unrelated certificates dropped:\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    })
    .await
}

/// Starts the proxy with `chain` as its certificate file; what `openssl s_client` is served.
async fn served_chain(up: &Upstream, pki: &Pki, chain: &str, key: &std::path::Path) -> String {
    let cert = pki.write("served-chain.pem", chain);
    let tls = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let proxy = Proxy::start(&up.target, &tls);
    let out = s_client(pki, &proxy, &[]).await;
    assert_no_panic(&proxy);
    out
}

#[tokio::test]
async fn full_bundles_and_self_signed_certificates_load() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let key = pki.write("key.pem", &leaf.key_pem);
        // "fullchain" with the root at the end, as some CAs hand it out.
        let root_pem = std::fs::read_to_string(&pki.root_path).unwrap();
        let out = served_chain(&up, &pki, &format!("{}{root_pem}", pki.chain(&leaf)), &key).await;
        let served = pem_blocks(&out);
        assert!(
            served.starts_with(&[leaf.der.to_vec(), pki.intermediate_der.to_vec()]),
            "leaf then intermediate:\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

        // A self-signed certificate, as many internal GitLabs have.
        let self_key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let self_signed = params.self_signed(&self_key).unwrap();
        let cert = pki.write("self-signed.pem", &self_signed.pem());
        let self_key_path = pki.write("self-signed-key.pem", &self_key.serialize_pem());
        let tls = [
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            self_key_path.to_str().unwrap(),
        ];
        let proxy = Proxy::start(&up.target, &tls);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self_signed.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector
            .connect(name, TcpStream::connect(proxy.tls()).await.unwrap())
            .await
            .unwrap();
        assert_eq!(peer_leaf(&tls), *self_signed.der());
        let mut sender = http1_over(tls).await;
        assert_eq!(get_on(&mut sender, "/").await.unwrap().0, StatusCode::OK);
    })
    .await
}

#[tokio::test]
async fn a_same_named_intermediate_that_did_not_sign_the_leaf_is_dropped() {
    bounded(async {
        // A CA re-key (or a second PKI with the same names) leaves a bundle holding an
        // intermediate with the right name but the wrong key, before the right one.
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let key = pki.write("key.pem", &leaf.key_pem);
        let namesake = Pki::new();
        let bundle = format!("{}{}{}", leaf.pem, namesake.intermediate_pem, pki.intermediate_pem);
        let out = served_chain(&up, &pki, &bundle, &key).await;
        assert_eq!(
            pem_blocks(&out),
            vec![leaf.der.to_vec(), pki.intermediate_der.to_vec()],
            "the intermediate that signed the leaf is served:\n{out}"
        );
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    })
    .await
}

// ---------------------------------------------------------------- checks at load

/// Runs `serve` with `args`, which must make it exit 2 with one error line containing `needle`.
fn assert_refused(args: &[String], needle: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, stderr) = Proxy::start_expecting_exit("http://127.0.0.1:1", &args, Duration::from_secs(10));
    let status = status.unwrap_or_else(|| panic!("{args:?}: the proxy started:\n{stderr}"));
    assert_eq!(status.code(), Some(2), "{args:?}:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            l.starts_with("error") || serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["level"] == "ERROR")
        })
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: not one error line:\n{stderr}");
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "{args:?}: the error does not name {needle:?}:\n{stderr}"
    );
}

/// `--tls-listen`, `--tls-cert`, `--tls-key` for files holding `chain` and `key`.
fn tls_files(pki: &Pki, chain: &str, key: &str) -> Vec<String> {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let tag = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let cert = pki.write(&format!("cert-{tag}.pem"), chain);
    let key = pki.write(&format!("key-{tag}.pem"), key);
    tls_listen_args(&cert, &key)
}

fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

#[test]
fn bad_certificates_refuse_to_start() {
    let pki = Pki::new();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let leaf = pki.leaf();

    // A misordered chain is only a warning, unless --strict-chain.
    let misordered = tls_files(&pki, &format!("{}{}", pki.intermediate_pem, leaf.pem), &leaf.key_pem);
    assert_refused(&with(misordered, &["--strict-chain"]), "order");

    let expired = pki.leaf_with(&LEAF_NAMES, rcgen::KeyPair::generate().unwrap(), now - day);
    assert_refused(&tls_files(&pki, &pki.chain(&expired), &expired.key_pem), "expire");

    let old_pki = Pki::with_intermediate_expiry(now - day);
    let under_expired = old_pki.leaf();
    assert_refused(
        &tls_files(&old_pki, &old_pki.chain(&under_expired), &under_expired.key_pem),
        "expire",
    );

    let only_localhost = pki.leaf_with(
        &["localhost", "127.0.0.1"],
        rcgen::KeyPair::generate().unwrap(),
        now + day,
    );
    let args = tls_files(&pki, &pki.chain(&only_localhost), &only_localhost.key_pem);
    assert_refused(
        &with(args, &["--external-url", "https://gitlab.example.test"]),
        "gitlab.example.test",
    );
    // Valid for the external URL's host, but not for another issuer's.
    let args = tls_files(&pki, &pki.chain(&leaf), &leaf.key_pem);
    assert_refused(
        &with(
            args,
            &[
                "--external-url",
                "https://gitlab.example.test/gitlab",
                "--issuer",
                "https://login.example.test",
            ],
        ),
        "login.example.test",
    );

    let other = pki.leaf();
    assert_refused(&tls_files(&pki, &pki.chain(&leaf), &other.key_pem), "key");
    assert_refused(
        &tls_files(
            &pki,
            "-----BEGIN CERTIFICATE-----\nbm9wZQ==\n-----END CERTIFICATE-----\n",
            &leaf.key_pem,
        ),
        "cert",
    );
    assert_refused(&tls_files(&pki, &pki.chain(&leaf), "not a key\n"), "key");

    let args = tls_files(&pki, &pki.chain(&leaf), &leaf.key_pem);
    assert_refused(&args[..4], "tls-key");
    assert_refused(&["--tls-listen".to_owned(), "127.0.0.1:0".to_owned()], "tls-cert");
    assert_refused(&["--redirect-http".to_owned()], "tls-listen");
    assert_refused(
        &with(args.clone(), &["--tls-handshake-timeout", "0"]),
        "tls-handshake-timeout",
    );
    assert_refused(&with(args.clone(), &["--hsts", "soon"]), "hsts");
    // The plain listener would already count as https: every redirect would loop.
    assert_refused(
        &with(args, &["--redirect-http", "--forwarded-proto", "https"]),
        "forwarded-proto",
    );
}

/// As for every option (README: "A bad value exits with status 2 and one line naming
/// the option", as `--upstream-ca` does), a file that cannot be read is named by its option.
#[test]
fn unreadable_files_name_their_option() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    let absent = pki.dir.path().join("absent.pem").display().to_string();
    let args = tls_files(&pki, &pki.chain(&leaf), &leaf.key_pem);
    let mut missing_cert = args.clone();
    missing_cert[3] = absent.clone();
    assert_refused(&missing_cert, "--tls-cert");
    let mut missing_key = args;
    missing_key[5] = absent;
    assert_refused(&missing_key, "--tls-key");
}

fn openssl_convert(args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn rsa_and_ec_keys_in_every_encoding_load() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let dir = pki.dir.path();
        let path = |name: &str| dir.join(name).display().to_string();
        let year = SystemTime::now() + Duration::from_secs(365 * 86_400);

        openssl_convert(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &path("rsa-pkcs8.pem"),
        ]);
        let rsa_pkcs8 = std::fs::read_to_string(path("rsa-pkcs8.pem")).unwrap();
        let rsa_key = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&rsa_pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let rsa_leaf = pki.leaf_with(&LEAF_NAMES, rsa_key, year);
        openssl_convert(&[
            "rsa",
            "-in",
            &path("rsa-pkcs8.pem"),
            "-traditional",
            "-out",
            &path("rsa-pkcs1.pem"),
        ]);
        let rsa_pkcs1 = std::fs::read_to_string(path("rsa-pkcs1.pem")).unwrap();
        assert!(rsa_pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));

        let ec_leaf = pki.leaf();
        std::fs::write(path("ec-pkcs8.pem"), &ec_leaf.key_pem).unwrap();
        assert!(ec_leaf.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        openssl_convert(&["ec", "-in", &path("ec-pkcs8.pem"), "-out", &path("ec-sec1.pem")]);
        let ec_sec1 = std::fs::read_to_string(path("ec-sec1.pem")).unwrap();
        assert!(ec_sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));

        let cases = [
            ("RSA PKCS#8", &rsa_leaf, rsa_pkcs8.as_str()),
            ("RSA PKCS#1", &rsa_leaf, rsa_pkcs1.as_str()),
            ("EC PKCS#8", &ec_leaf, ec_leaf.key_pem.as_str()),
            ("EC SEC1", &ec_leaf, ec_sec1.as_str()),
        ];
        for (what, leaf, key) in cases {
            let args = tls_files(&pki, &pki.chain(leaf), key);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let proxy = Proxy::start(&up.target, &args);
            for versions in [&rustls::version::TLS12, &rustls::version::TLS13] {
                // One protocol version per handshake.
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut roots = rustls::RootCertStore::empty();
                roots.add(pki.root_der.clone()).unwrap();
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[versions])
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tcp = TcpStream::connect(proxy.tls()).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .unwrap_or_else(|e| panic!("{what} {versions:?}: {e}"));
                assert_eq!(peer_leaf(&tls), leaf.der, "{what}");
                let mut sender = http1_over(tls).await;
                assert_eq!(get_on(&mut sender, "/").await.unwrap().0, StatusCode::OK, "{what}");
            }
        }

        // A wildcard leaf is valid for the external URL's host.
        let wildcard = pki.leaf_with(
            &["*.example.test", "localhost"],
            rcgen::KeyPair::generate().unwrap(),
            year,
        );
        let args = with(
            tls_files(&pki, &pki.chain(&wildcard), &wildcard.key_pem),
            &["--external-url", "https://gitlab.example.test"],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = Proxy::start(&up.target, &args);
        assert_eq!(leaf_now(&pki, &proxy).await, wildcard.der);
    })
    .await
}

#[tokio::test]
async fn expiry_within_14_days_warns_and_is_a_metric() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let day = Duration::from_secs(86_400);
        // The intermediate expires first: the metric is the earliest notAfter in the chain.
        let intermediate_expiry = SystemTime::now() + 10 * day;
        let pki = Pki::with_intermediate_expiry(intermediate_expiry);
        let leaf = pki.leaf_with(
            &LEAF_NAMES,
            rcgen::KeyPair::generate().unwrap(),
            SystemTime::now() + 12 * day,
        );
        let proxy = start_tls(&up.target, &pki, &leaf, &[]);
        assert_eq!(
            leaf_now(&pki, &proxy).await,
            leaf.der,
            "an expiring chain is still served"
        );
        let warnings = log_lines_at(&proxy.logs(), "WARN");
        assert!(
            warnings.iter().any(|w| w.to_string().to_lowercase().contains("expir")),
            "no WARN about the expiry:\n{}",
            proxy.logs()
        );
        let expected = intermediate_expiry.duration_since(UNIX_EPOCH).unwrap().as_secs() as f64;
        let metrics = proxy.metrics().await;
        let value = metric_value(
            &metrics,
            r#"gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds{listener="main"}"#,
        )
        .expect("the expiry series");
        assert!(
            (value - expected).abs() <= 1.0,
            "expiry metric {value}, expected {expected}:\n{metrics}"
        );
    })
    .await
}

// ---------------------------------------------------------------- hot reload

/// One request on a fresh TLS connection; the leaf it was served with.
async fn fresh_request(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    n: usize,
) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake took over 5 s".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = peer_leaf(&tls);
    let mut sender = http1_over(tls).await;
    let (status, body) = get_on(&mut sender, &format!("/load/{n}")).await?;
    if status != StatusCode::OK {
        return Err(format!("status {status}: {body:?}"));
    }
    Ok(leaf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_files_reload_under_load_without_a_failed_request() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let (old, new) = (pki.leaf(), pki.leaf());
        let proxy = start_tls(&up.target, &pki, &old, &["--tls-watch-interval", "200ms"]);
        let addr = proxy.tls();

        // A keep-alive connection opened before the reload.
        let kept_tls = pki.connect(addr, &[b"http/1.1"]).await.unwrap();
        assert_eq!(peer_leaf(&kept_tls), old.der);
        let mut kept = http1_over(kept_tls).await;
        assert_eq!(get_on(&mut kept, "/kept/before").await.unwrap().0, StatusCode::OK);
        let ok_before = metric_now(&proxy, RELOADS_OK).await;

        let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[b"http/1.1"])));
        // A new connection per request, back to back: 10 before the files change
        // (they finish before it, so they must get the old leaf), then on until 10
        // in a row got the new one. No count or speed is required of the machine.
        let (ten_done, ten_done_rx) = tokio::sync::oneshot::channel();
        let new_der = new.der.clone();
        let load = tokio::spawn(async move {
            let mut results = Vec::new();
            let mut ten_done = Some(ten_done);
            let mut new_in_a_row = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while new_in_a_row < 10 && Instant::now() < deadline {
                let result = fresh_request(&connector, addr, results.len()).await;
                new_in_a_row = match &result {
                    Ok(leaf) if *leaf == new_der => new_in_a_row + 1,
                    _ => 0,
                };
                results.push(result);
                if results.len() == 10
                    && let Some(tx) = ten_done.take()
                {
                    let _ = tx.send(());
                }
            }
            results
        });
        ten_done_rx.await.expect("the load stopped before 10 requests");
        pki.write("cert.pem", &pki.chain(&new));
        pki.write("key.pem", &new.key_pem);
        let results = load.await.unwrap();

        let failures: Vec<_> = results
            .iter()
            .enumerate()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("request {n}: {e}")))
            .collect();
        assert!(failures.is_empty(), "failed requests during the reload:\n{failures:#?}");
        let leaves: Vec<&str> = results
            .iter()
            .map(|r| {
                let leaf = r.as_ref().unwrap();
                if *leaf == old.der {
                    "old"
                } else if *leaf == new.der {
                    "new"
                } else {
                    "unknown"
                }
            })
            .collect();
        let first_new = leaves
            .iter()
            .position(|w| *w == "new")
            .unwrap_or_else(|| panic!("the new leaf was never served in 30 s: {leaves:?}\n{}", proxy.logs()));
        assert!(first_new >= 10, "the new leaf before the files changed: {leaves:?}");
        assert!(
            leaves[..first_new].iter().all(|w| *w == "old") && leaves[first_new..].iter().all(|w| *w == "new"),
            "old leaf, then only the new one: {leaves:?}"
        );
        assert!(metric_now(&proxy, RELOADS_OK).await > ok_before);

        // The connection opened before the reload is untouched.
        assert_eq!(get_on(&mut kept, "/kept/after").await.unwrap().0, StatusCode::OK);
        assert_no_panic(&proxy);
    })
    .await
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    // Polling is effectively off: only the signal can pick up the change.
    bounded(sighup_reloads("1h")).await
}

/// `--tls-watch-interval 0`: the files are never polled, `SIGHUP` alone reloads.
#[tokio::test]
async fn watch_interval_0_reloads_on_sighup_only() {
    bounded(sighup_reloads("0")).await
}

async fn sighup_reloads(watch_interval: &str) {
    {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let (old, new) = (pki.leaf(), pki.leaf());
        let proxy = start_tls(&up.target, &pki, &old, &["--tls-watch-interval", watch_interval]);
        let kept_tls = pki.connect(proxy.tls(), &[b"http/1.1"]).await.unwrap();
        let mut kept = http1_over(kept_tls).await;
        assert_eq!(get_on(&mut kept, "/kept/before").await.unwrap().0, StatusCode::OK);

        pki.write("cert.pem", &pki.chain(&new));
        pki.write("key.pem", &new.key_pem);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            leaf_now(&pki, &proxy).await,
            old.der,
            "reloaded before SIGHUP with --tls-watch-interval {watch_interval}"
        );
        let ok_before = metric_now(&proxy, RELOADS_OK).await;

        proxy.signal(nix::sys::signal::Signal::SIGHUP);
        assert_serves_soon(&pki, &proxy, &new.der, "SIGHUP did not bring the new leaf").await;
        let proxy_ref = &proxy;
        assert!(
            wait_until(Duration::from_secs(5), || async move {
                metric_now(proxy_ref, RELOADS_OK).await == ok_before + 1.0
            })
            .await,
            "tls_reloads_total{{outcome=\"ok\"}} did not go up by one:\n{}",
            proxy.metrics().await
        );
        // Still alive and serving on both listeners, and the old connection too.
        let resp = client().get(proxy.url("/").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(get_on(&mut kept, "/kept/after").await.unwrap().0, StatusCode::OK);
        assert_no_panic(&proxy);
    }
}

/// Session resumption, TLS 1.3 (tickets) and TLS 1.2: a client coming back
/// skips the full handshake.
#[tokio::test]
async fn sessions_resume() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(&up.target, &pki, &leaf, &[]);
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.root_der.clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // rustls's default: resumption on, sessions kept in memory.
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let mut kinds = Vec::new();
            for n in 0..2 {
                let tcp = TcpStream::connect(proxy.tls()).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                kinds.push(tls.get_ref().1.handshake_kind());
                // A request, so the client reads the TLS 1.3 tickets sent after the handshake.
                let mut sender = http1_over(tls).await;
                let path = format!("/resume/{n}");
                assert_eq!(get_on(&mut sender, &path).await.unwrap().0, StatusCode::OK);
            }
            assert_eq!(
                kinds,
                [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)],
                "{version:?}"
            );
        }
        assert_no_panic(&proxy);
    })
    .await
}

/// cert-manager's Secret volume: `tls.crt` -> `..data/tls.crt`, and a renewal
/// swaps the `..data` symlink atomically to a new directory. Nothing is written
/// to the files the proxy was given.
#[tokio::test]
async fn kubernetes_secret_symlink_swap_is_picked_up() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let (old, new) = (pki.leaf(), pki.leaf());
        let dir = pki.write("probe", "").parent().unwrap().join("secret");
        let version = |name: &str, leaf: &Leaf| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("tls.crt"), pki.chain(leaf)).unwrap();
            std::fs::write(d.join("tls.key"), &leaf.key_pem).unwrap();
        };
        version("..2026_11_01", &old);
        std::os::unix::fs::symlink("..2026_11_01", dir.join("..data")).unwrap();
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        let mut args = tls_listen_args(&dir.join("tls.crt"), &dir.join("tls.key"));
        args.extend(["--tls-watch-interval".to_owned(), "200ms".to_owned()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = Proxy::start(&up.target, &args);
        assert_eq!(leaf_now(&pki, &proxy).await, old.der);

        version("..2026_11_23", &new);
        std::os::unix::fs::symlink("..2026_11_23", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_serves_soon(&pki, &proxy, &new.der, "the symlink swap was not picked up").await;
        assert_eq!(metric_now(&proxy, RELOADS_OK).await, 1.0);
        assert_no_panic(&proxy);
    })
    .await
}

#[tokio::test]
async fn broken_replacement_is_refused_and_the_last_good_stays() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let (good, next, stranger) = (pki.leaf(), pki.leaf(), pki.leaf());
        let proxy = start_tls(&up.target, &pki, &good, &["--tls-watch-interval", "200ms"]);
        let proxy_ref = &proxy;
        let refused_after = |n: f64| async move {
            wait_until(Duration::from_secs(5), || async move {
                metric_now(proxy_ref, RELOADS_REFUSED).await > n
            })
            .await
        };

        // Garbage over the certificate.
        let refused = metric_now(&proxy, RELOADS_REFUSED).await;
        let errors = log_lines_at(&proxy.logs(), "ERROR").len();
        pki.write(
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        assert!(refused_after(refused).await, "garbage not refused:\n{}", proxy.logs());
        assert!(
            wait_until(Duration::from_secs(5), || async move {
                log_lines_at(&proxy_ref.logs(), "ERROR").len() > errors
            })
            .await,
            "no ERROR line for the refused reload:\n{}",
            proxy.logs()
        );
        assert_eq!(leaf_now(&pki, &proxy).await, good.der, "the last good pair is served");

        // A valid certificate with a key that is not its own.
        let refused = metric_now(&proxy, RELOADS_REFUSED).await;
        pki.write("cert.pem", &pki.chain(&next));
        pki.write("key.pem", &stranger.key_pem);
        assert!(
            refused_after(refused).await,
            "mismatched pair not refused:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(leaf_now(&pki, &proxy).await, good.der, "the last good pair is served");

        // SIGHUP with the broken pair in place: refused too, still serving.
        let refused = metric_now(&proxy, RELOADS_REFUSED).await;
        proxy.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(
            refused_after(refused).await,
            "SIGHUP reload not refused:\n{}",
            proxy.logs()
        );
        assert_eq!(leaf_now(&pki, &proxy).await, good.der);

        // Fixed: the next pair is picked up.
        let ok = metric_now(&proxy, RELOADS_OK).await;
        pki.write("key.pem", &next.key_pem);
        assert_serves_soon(&pki, &proxy, &next.der, "the fixed pair was not loaded").await;
        assert!(metric_now(&proxy, RELOADS_OK).await > ok);
        assert_no_panic(&proxy);
    })
    .await
}

#[tokio::test]
async fn reload_applies_the_checks_made_at_start() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let good = pki.leaf();
        let proxy = start_tls(
            &up.target,
            &pki,
            &good,
            &[
                "--tls-watch-interval",
                "200ms",
                "--strict-chain",
                "--external-url",
                "https://gitlab.example.test",
            ],
        );
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let expired = pki.leaf_with(&LEAF_NAMES, rcgen::KeyPair::generate().unwrap(), now - day);
        let wrong_host = pki.leaf_with(&["localhost"], rcgen::KeyPair::generate().unwrap(), now + day);
        let misordered = pki.leaf();
        let cases = [
            ("an expired leaf", pki.chain(&expired), expired.key_pem.clone()),
            (
                "a leaf not valid for the external URL",
                pki.chain(&wrong_host),
                wrong_host.key_pem.clone(),
            ),
            (
                "a misordered chain with --strict-chain",
                format!("{}{}", pki.intermediate_pem, misordered.pem),
                misordered.key_pem.clone(),
            ),
        ];
        for (what, chain, key) in cases {
            let refused = metric_now(&proxy, RELOADS_REFUSED).await;
            // Key first: the pair is never valid in between.
            pki.write("key.pem", &key);
            pki.write("cert.pem", &chain);
            let proxy_ref = &proxy;
            assert!(
                wait_until(Duration::from_secs(5), || async move {
                    metric_now(proxy_ref, RELOADS_REFUSED).await > refused
                })
                .await,
                "{what}: not refused:\n{}",
                proxy.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                leaf_now(&pki, &proxy).await,
                good.der,
                "{what}: the last good pair is served"
            );
        }
        assert_no_panic(&proxy);
    })
    .await
}

#[tokio::test]
async fn websocket_over_tls() {
    bounded(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (target, _dir, _task) = ws_echo_upstream(Transport::Tcp).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(&target, &pki, &leaf, &[]);
        let tls = pki.connect(proxy.tls(), &[b"http/1.1"]).await.unwrap();
        let url = format!("wss://localhost:{}/-/cable", proxy.tls().port());
        let (mut ws, resp) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        for i in 0..5 {
            ws.send(Message::text(format!("hello {i}"))).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(format!("hello {i}")));
        }
        let big = vec![7u8; 1 << 20];
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        ws.close(None).await.unwrap();
    })
    .await
}

#[tokio::test]
async fn sigterm_lets_in_flight_tls_requests_finish() {
    bounded(async {
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut up = upstream(Transport::Tcp, move |_req| {
            let mut release = release_rx.clone();
            async move {
                let _ = release.wait_for(|r| *r).await;
                http::Response::new(full("finished after SIGTERM"))
            }
        })
        .await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let mut proxy = start_tls(&up.target, &pki, &leaf, &["--shutdown-grace", "20s"]);
        let (h1, h2) = (pki.https_client(false), pki.https_client(true));
        let mut in_flight = tokio::task::JoinSet::new();
        for client in [h1, h2] {
            let req = Request::post(proxy.https_url("/group/project.git/git-receive-pack"))
                .body(full("pack"))
                .unwrap();
            in_flight.spawn(async move {
                let resp = client.request(req).await.unwrap();
                (resp.status(), resp.version(), body_bytes(resp).await)
            });
        }
        up.next_seen().await;
        up.next_seen().await;

        proxy.signal(nix::sys::signal::Signal::SIGTERM);
        proxy.wait_for_log("shutting down").await;
        let tls = proxy.tls();
        let refused = tokio::time::timeout(Duration::from_secs(5), async {
            while TcpStream::connect(tls).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "the TLS listener still accepts after SIGTERM");
        assert!(
            proxy.wait_exit(Duration::from_millis(300)).await.is_none(),
            "exited with requests in flight"
        );
        release_tx.send(true).unwrap();
        let mut versions = Vec::new();
        while let Some(done) = in_flight.join_next().await {
            let (status, version, body) = done.unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, "finished after SIGTERM");
            versions.push(version);
        }
        versions.sort_by_key(|v| format!("{v:?}"));
        assert_eq!(versions, vec![Version::HTTP_11, Version::HTTP_2]);
        let exit = proxy
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("proxy did not exit");
        assert_eq!(exit.code(), Some(0));
    })
    .await
}

// ---------------------------------------------------------------- handshake limits

/// Reads until the peer closes; how long that took (None if still open after `within`).
async fn time_to_close<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> (Option<Duration>, Vec<u8>) {
    let started = Instant::now();
    let mut buf = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut buf)).await {
        Ok(_) => (Some(started.elapsed()), buf),
        Err(_) => (None, buf),
    }
}

/// A TLS keep-alive connection quiet for a second is parked like a plain one
/// (the TLS session kept), serves on, and is closed at --header-timeout with
/// a close_notify.
#[tokio::test]
async fn quiet_tls_connection_is_parked_and_serves_on() {
    bounded(async {
        let up = upstream(Transport::Tcp, |_req| async { http::Response::new(full("ok")) }).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(&up.target, &pki, &leaf, &["--header-timeout", "3s"]);
        let mut tls = pki.connect(proxy.tls(), &[b"http/1.1"]).await.unwrap();
        let proxy_ref = &proxy;
        let parked = |want: f64| async move {
            wait_until(Duration::from_secs(5), || async move {
                metric_value(&proxy_ref.metrics().await, "gitlab_oidc_proxy_parked_connections") == Some(want)
            })
            .await
        };
        for path in ["/one", "/two"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while !answer.ends_with(b"\r\n\r\nok") {
                let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                    .await
                    .expect("no answer in 5 s")
                    .unwrap();
                assert!(n > 0, "closed before the answer to {path}");
                answer.extend_from_slice(&buf[..n]);
            }
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
            assert!(parked(1.0).await, "the TLS connection was not parked after {path}");
        }
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(6), tls.read_to_end(&mut rest))
            .await
            .expect("a parked TLS connection was still open 6 s after its last answer")
            .expect("closed without a close_notify");
        assert!(rest.is_empty(), "{rest:?}");
        assert!(parked(0.0).await, "still counted as parked once closed");
    })
    .await
}

#[tokio::test]
async fn silent_and_plain_http_clients_on_the_tls_port_are_closed() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(
            &up.target,
            &pki,
            &leaf,
            &["--tls-handshake-timeout", "500ms", "--header-timeout", "1s"],
        );

        // Connects and says nothing.
        let mut silent = TcpStream::connect(proxy.tls()).await.unwrap();
        let (took, _) = time_to_close(&mut silent, Duration::from_secs(5)).await;
        let took = took.expect("a silent client was still connected after 5 s");
        assert!(
            took >= Duration::from_millis(400),
            "closed after {took:?}, before the 500ms"
        );

        // Starts a TLS record and stalls.
        let mut stalled = TcpStream::connect(proxy.tls()).await.unwrap();
        stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
        let (took, _) = time_to_close(&mut stalled, Duration::from_secs(5)).await;
        took.expect("a stalled handshake was still open after 5 s");

        // Plain HTTP on the TLS port: a clean close, nothing reaches GitLab.
        let mut plain = TcpStream::connect(proxy.tls()).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (took, answer) = time_to_close(&mut plain, Duration::from_secs(5)).await;
        assert!(took.is_some(), "plain HTTP on the TLS port left the connection open");
        assert!(
            !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 2"),
            "plain HTTP was served on the TLS port: {answer:?}"
        );
        // Each counted: two handshakes timed out, one failed.
        let proxy_ref = &proxy;
        let series = |reason: &str| format!(r#"gitlab_oidc_proxy_tls_handshake_failures_total{{reason="{reason}"}}"#);
        let counted = wait_until(Duration::from_secs(5), || async move {
            let metrics = proxy_ref.metrics().await;
            metric_value(&metrics, &series("timeout")) == Some(2.0)
                && metric_value(&metrics, &series("error")) == Some(1.0)
        })
        .await;
        assert!(counted, "handshake failures miscounted:\n{}", proxy.metrics().await);

        // After the handshake, a silent client gets --header-timeout as on the plain port.
        let mut idle = pki.connect(proxy.tls(), &[b"http/1.1"]).await.unwrap();
        let (took, _) = time_to_close(&mut idle, Duration::from_secs(5)).await;
        assert!(took.is_some(), "an idle TLS connection was still open after 5 s");

        // The proxy still serves TLS, and every connection was accounted for.
        let resp = pki
            .https_client(false)
            .get(proxy.https_url("/after").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        drop(resp);
        let mut up = up;
        assert_eq!(up.next_seen().await.uri, "/after");
        assert!(up.saw_nothing(), "something else reached GitLab");
        let proxy_ref = &proxy;
        assert!(
            wait_until(Duration::from_secs(5), || async move {
                metric_value(&proxy_ref.metrics().await, "gitlab_oidc_proxy_open_connections") == Some(0.0)
            })
            .await,
            "connections left open:\n{}",
            proxy.metrics().await
        );
        assert_no_panic(&proxy);
    })
    .await
}

// ---------------------------------------------------------------- redirect and HSTS

fn raw_status(response: &str) -> &str {
    response.split(' ').nth(1).unwrap_or("")
}

fn raw_header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response
        .split("\r\n\r\n")
        .next()?
        .lines()
        .skip(1)
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)))
        .map(|(_, v)| v.trim())
}

async fn plain(proxy: &Proxy, head: &str) -> String {
    raw_exchange(proxy.addr, head.as_bytes(), Duration::from_secs(5)).await
}

#[tokio::test]
async fn redirect_http_sends_plain_requests_to_https() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(
            &up.target,
            &pki,
            &leaf,
            &["--redirect-http", "--trusted-proxies", "127.0.0.1/32", "--hsts", "600"],
        );
        let port = proxy.tls().port();
        let cases = [
            (
                "GET /foo%20bar?x=1&y=%2F HTTP/1.1\r\nHost: gitlab.example.test:8080\r\nConnection: close\r\n\r\n",
                format!("https://gitlab.example.test:{port}/foo%20bar?x=1&y=%2F"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: gitlab.example.test\r\nConnection: close\r\n\r\n",
                format!("https://gitlab.example.test:{port}/"),
            ),
            (
                "POST /api/v4/projects HTTP/1.1\r\nHost: gitlab.example.test:8080\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                format!("https://gitlab.example.test:{port}/api/v4/projects"),
            ),
            (
                "GET /v6 HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\nConnection: close\r\n\r\n",
                format!("https://[2001:db8::1]:{port}/v6"),
            ),
            // From the trusted proxy, but it says the client used http.
            (
                "GET /foo?x=1 HTTP/1.1\r\nHost: gitlab.example.test\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n",
                format!("https://gitlab.example.test:{port}/foo?x=1"),
            ),
        ];
        for (request, location) in cases {
            let resp = plain(&proxy, request).await;
            assert_eq!(raw_status(&resp), "301", "{request:?}:\n{resp}");
            assert_eq!(raw_header(&resp, "location"), Some(location.as_str()), "{request:?}:\n{resp}");
            assert_eq!(raw_header(&resp, "strict-transport-security"), None, "HSTS over plain http");
        }
        // HTTP/2 with prior knowledge: the host comes from :authority.
        let resp = h2c_client().get(proxy.url("/h2c?q=1").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            header(&resp, "location"),
            Some(format!("https://127.0.0.1:{port}/h2c?q=1").as_str())
        );
        assert!(up.saw_nothing(), "a redirected request reached GitLab");

        // The admin listener and the TLS listener are not redirected.
        let resp = client().get(proxy.admin_url("/healthz").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let resp = pki
            .https_client(false)
            .get(proxy.https_url("/over-tls").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(up.next_seen().await.uri, "/over-tls");

        // A trusted proxy that terminated TLS itself is served, not redirected.
        let resp = plain(
            &proxy,
            "GET /behind-lb HTTP/1.1\r\nHost: gitlab.example.test\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(raw_status(&resp), "200", "{resp}");
        let seen = up.next_seen().await;
        assert_eq!(seen.uri, "/behind-lb");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    })
    .await
}

#[tokio::test]
async fn redirect_http_uses_the_https_external_url_authority() {
    bounded(async {
        let mut up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        // With an https external URL, its authority is used whatever the Host.
        for (external, request_path, location) in [
            (
                "https://gitlab.example.test",
                "/foo?x=1",
                "https://gitlab.example.test/foo?x=1",
            ),
            (
                "https://gitlab.example.test:8443/gitlab",
                "/gitlab/explore?x=1",
                "https://gitlab.example.test:8443/gitlab/explore?x=1",
            ),
        ] {
            let proxy = start_tls(
                &up.target,
                &pki,
                &leaf,
                &["--redirect-http", "--external-url", external],
            );
            let resp = plain(
                &proxy,
                &format!("GET {request_path} HTTP/1.1\r\nHost: elsewhere.example:8080\r\nConnection: close\r\n\r\n"),
            )
            .await;
            assert_eq!(raw_status(&resp), "301", "{external}:\n{resp}");
            assert_eq!(raw_header(&resp, "location"), Some(location), "{external}:\n{resp}");
        }
        assert!(up.saw_nothing(), "a redirected request reached GitLab");
    })
    .await
}

#[tokio::test]
async fn hsts_only_on_https_responses() {
    bounded(async {
        let up = upstream(Transport::Tcp, echo).await;
        let pki = Pki::new();
        let leaf = pki.leaf();
        let proxy = start_tls(
            &up.target,
            &pki,
            &leaf,
            &["--hsts", "31536000", "--trusted-proxies", "127.0.0.1/32"],
        );
        let https = pki.https_client(false);
        let resp = https.get(proxy.https_url("/").parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "strict-transport-security"), Some("max-age=31536000"));
        // Answers of the proxy's own get it too.
        let req = Request::builder()
            .method(Method::TRACE)
            .uri(proxy.https_url("/"))
            .body(empty())
            .unwrap();
        let resp = https.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&resp, "strict-transport-security"), Some("max-age=31536000"));

        for (xfp, expected) in [
            (None, None),
            (Some("http"), None),
            (Some("https"), Some("max-age=31536000")),
        ] {
            let mut req = Request::get(proxy.url("/"));
            if let Some(xfp) = xfp {
                req = req.header("x-forwarded-proto", xfp);
            }
            let resp = client().request(req.body(empty()).unwrap()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(
                header(&resp, "strict-transport-security"),
                expected,
                "plain, X-Forwarded-Proto {xfp:?}"
            );
        }
    })
    .await
}
