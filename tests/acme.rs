//! `--acme-domain` against pebble, Let's Encrypt's test ACME server, on
//! loopback: pebble-challtestsrv answers pebble's DNS (every name is
//! 127.0.0.1), and pebble validates on the proxy's own listeners. The served
//! certificate is read with real `openssl s_client`. Skipped only where the
//! `pebble` package is not installed (CI installs it).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const DOMAIN: &str = "gitlab.acme.test";

fn have_pebble() -> bool {
    // curl tells a started pebble's directory apart from another's.
    let found = ["pebble", "pebble-challtestsrv", "curl"].iter().all(|bin| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        eprintln!("SKIPPED: pebble or curl is not installed (apt-get install pebble curl); .ci/run installs both");
    }
    found
}

/// A loopback port free now (the listeners that take it are started next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// pebble and its DNS server, killed on drop.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    challtest_mgmt: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pebble {
    /// pebble validating on `http_port` (HTTP-01) and `tls_port` (TLS-ALPN-01),
    /// its own listener under a certificate of `pki` (trust `pki.root_path`).
    /// Its own ports are picked free and then bound by pebble, so a test
    /// running beside it may take one first: a start is only kept once its
    /// directory answers under `pki`'s certificate, otherwise it is retried
    /// on new ports.
    fn start(pki: &Pki, http_port: u16, tls_port: u16) -> Pebble {
        for _ in 0..5 {
            let mut pebble = Pebble::spawn(pki, http_port, tls_port);
            if pebble.answers(pki) {
                return pebble;
            }
            eprintln!("pebble did not answer under its certificate; retrying on new ports");
        }
        panic!("pebble never answered its directory in 5 starts");
    }

    fn spawn(pki: &Pki, http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let leaf = pki.leaf();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, pki.chain(&leaf)).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        let (dns, challtest_mgmt, listen, mgmt) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let dns_addr = format!("127.0.0.1:{dns}");
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", &dns_addr])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtest_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv runs");
        let pebble = Command::new("pebble")
            .args(["-config", config_path.to_str().unwrap(), "-dnsserver", &dns_addr])
            .envs([
                ("PEBBLE_VA_NOSLEEP", "1"),
                ("PEBBLE_WFE_NONCEREJECT", "0"),
                ("PEBBLE_AUTHZREUSE", "0"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble runs");
        Pebble {
            children: vec![challtestsrv, pebble],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            challtest_mgmt,
            _dir: dir,
        }
    }

    /// Both processes alive, the DNS server's management port open, and the
    /// directory served under `pki`'s certificate (not another pebble's).
    fn answers(&mut self, pki: &Pki) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.children.iter_mut().any(|c| !matches!(c.try_wait(), Ok(None))) {
                return false;
            }
            let directory = Command::new("curl")
                .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
                .arg(&pki.root_path)
                .arg(&self.directory)
                .status()
                .is_ok_and(|s| s.success());
            let dns = std::net::TcpStream::connect(("127.0.0.1", self.challtest_mgmt)).is_ok();
            if directory && dns {
                // A port lost to another test shows as an exit soon after.
                std::thread::sleep(Duration::from_millis(200));
                return self.children.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)));
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// (subject, issuer) of the leaf served to a client asking for `sni`.
fn served(addr: SocketAddr, sni: &str) -> (String, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string(), "-servername", sni])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .to_owned()
    };
    (line("subject="), line("issuer="))
}

/// The proxy on `http_port` and `tls_port`, ordering for [`DOMAIN`].
fn proxy(up: &Upstream, (http_port, tls_port): (u16, u16), directory: &str, cache: &Path, extra: &[&str]) -> Proxy {
    let listen: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let tls = format!("127.0.0.1:{tls_port}");
    let mut args = vec![
        "--tls-listen",
        &tls,
        "--acme-domain",
        DOMAIN,
        "--acme-directory",
        directory,
    ];
    args.extend([
        "--acme-cache",
        cache.to_str().unwrap(),
        "--acme-contact",
        "ops@example.test",
    ]);
    args.extend(extra);
    Proxy::start_on(listen, &up.target, &args)
}

/// Waits for `series` to show in /metrics with value `value`.
async fn wait_metric(proxy: &Proxy, series: &str, value: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let metrics = proxy.metrics().await;
        if metrics
            .lines()
            .any(|l| l.strip_prefix(series).map(str::trim) == Some(value))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never {value}:\n{metrics}\nlogs:\n{}",
            proxy.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const OK: &str = r#"gitlab_oidc_proxy_acme_orders_total{outcome="ok"}"#;
const FAILED: &str = r#"gitlab_oidc_proxy_acme_orders_total{outcome="failed"}"#;

async fn upstream_ok() -> Upstream {
    upstream(Transport::Tcp, |_req| async { http::Response::new(full("gitlab")) }).await
}

/// Orders with `challenge` and checks the pebble-issued pair is served.
async fn obtain_with(challenge: &str, extra: &[&str]) -> (tempfile::TempDir, Pki) {
    let up = upstream_ok().await;
    let pki = Pki::new();
    let ports = (free_port(), free_port());
    let pebble = Pebble::start(&pki, ports.0, ports.1);
    let cache = tempfile::tempdir().unwrap();
    let ca = pki.root_path.to_str().unwrap().to_owned();
    let mut args = vec!["--acme-ca", &ca, "--acme-challenge", challenge];
    args.extend(extra);
    let proxy = proxy(&up, ports, &pebble.directory, cache.path(), &args);
    wait_metric(&proxy, OK, "1", Duration::from_secs(45)).await;
    let (subject, issuer) = served(proxy.tls(), DOMAIN);
    assert!(issuer.contains("Pebble"), "issuer {issuer}");
    assert!(!subject.contains("rcgen"), "subject {subject}");
    let logs = proxy.logs();
    assert!(logs.contains("ACME certificate served"), "{logs}");
    (cache, pki)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn_01_obtains_a_certificate_and_a_restart_serves_it_from_the_cache() {
    if !have_pebble() {
        return;
    }
    let (cache, _pki) = obtain_with("tls-alpn-01", &[]).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(cache.path()), 0o700);
    for file in ["account.json", "certificate.pem", "key.pem"] {
        assert_eq!(mode(&cache.path().join(file)), 0o600, "{file}");
    }
    // pebble is gone: a restart must serve the cached pair without any order.
    let up = upstream_ok().await;
    let ports = (free_port(), free_port());
    let proxy = proxy(&up, ports, "https://127.0.0.1:9/dir", cache.path(), &[]);
    let (_, issuer) = served(proxy.tls(), DOMAIN);
    assert!(issuer.contains("Pebble"), "issuer {issuer}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_metric(&proxy, FAILED, "0", Duration::from_secs(1)).await;
    wait_metric(&proxy, OK, "0", Duration::from_secs(1)).await;
    proxy.wait_for_log(r#""trigger":"cache""#).await;
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            r#"tls_certificate_expiry_timestamp_seconds{{listener="main",name="{DOMAIN}"}}"#
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn http_01_is_answered_on_the_plain_listener_despite_the_redirect() {
    if !have_pebble() {
        return;
    }
    obtain_with("http-01", &["--redirect-http"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_acme_server_is_logged_and_counted_while_the_pair_keeps_serving() {
    let up = upstream_ok().await;
    let pki = Pki::new();
    let default = pki.leaf();
    let cache = tempfile::tempdir().unwrap();
    let mut args = pki.tls_args(&default);
    // A directory nothing listens on.
    let dead = format!("https://127.0.0.1:{}/dir", free_port());
    args.extend(["--acme-domain", DOMAIN, "--acme-directory", &dead].map(String::from));
    args.extend(["--acme-cache", cache.path().to_str().unwrap()].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&up.target, &args);
    wait_metric(&proxy, FAILED, "1", Duration::from_secs(20)).await;
    let logs = proxy.wait_for_log("ACME order failed").await;
    assert!(logs.contains(r#""level":"ERROR""#), "{logs}");
    // Until an order succeeds, the ACME name gets the --tls-cert pair.
    let (subject, issuer) = served(proxy.tls(), DOMAIN);
    assert!(subject.contains("localhost"), "subject {subject}");
    assert!(issuer.contains("Test Intermediate CA"), "issuer {issuer}");
}
