//! `--tls-cert-dir`: a certificate per host name picked by SNI, asked for with
//! real `openssl s_client`; pairs added, replaced, broken and removed while the
//! proxy runs. Loopback only.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

/// The subject CN of the leaf the proxy presents to a client asking for `sni`
/// (`None`: no SNI at all).
fn served_cn(addr: std::net::SocketAddr, sni: Option<&str>) -> String {
    let mut s_client = std::process::Command::new("openssl");
    s_client.args(["s_client", "-connect", &addr.to_string()]);
    match sni {
        Some(name) => s_client.args(["-servername", name]),
        None => s_client.arg("-noservername"),
    };
    let out = s_client
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let pem = String::from_utf8_lossy(&out.stdout);
    let start = pem.find("-----BEGIN CERTIFICATE-----").expect("a certificate was sent");
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----".len();
    let mut x509 = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "multiline"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(x509.stdin.as_mut().unwrap(), pem[start..end].as_bytes()).unwrap();
    let subject = String::from_utf8(x509.wait_with_output().unwrap().stdout).unwrap();
    subject
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("commonName")
                .map(|v| v.trim_start_matches([' ', '=']).to_owned())
        })
        .unwrap_or_default()
}

/// Writes a pair for `names` as DIR/`file`.crt and .key (the first name is the CN).
fn write_pair(pki: &Pki, dir: &Path, file: &str, names: &[&str]) {
    let leaf = pki.leaf_with(
        names,
        rcgen::KeyPair::generate().unwrap(),
        std::time::SystemTime::now() + Duration::from_secs(90 * 86_400),
    );
    // Written aside and renamed in, as certbot's deploy hooks and `install` do.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, pki.chain(&leaf)).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{file}.crt"))).unwrap();
    std::fs::write(&tmp, &leaf.key_pem).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{file}.key"))).unwrap();
}

#[tokio::test]
async fn each_name_gets_its_own_pair_and_a_bad_one_is_left_out_alone() {
    let up = upstream(Transport::Tcp, |_req| async { http::Response::new(full("ok")) }).await;
    let pki = Pki::new();
    let default = pki.leaf();
    let ssl = tempfile::tempdir().unwrap();
    write_pair(&pki, ssl.path(), "registry.example.test", &["registry.example.test"]);
    write_pair(&pki, ssl.path(), "pages.example.test", &["*.pages.example.test"]);
    // A pair whose key belongs to another certificate: refused, alone.
    write_pair(&pki, ssl.path(), "broken.example.test", &["broken.example.test"]);
    let other = pki.leaf();
    std::fs::write(ssl.path().join("broken.example.test.key"), &other.key_pem).unwrap();
    // A pair named for a host its certificate does not cover: refused too.
    write_pair(&pki, ssl.path(), "mattermost.example.test", &["elsewhere.example.test"]);
    std::fs::write(ssl.path().join("dhparams.pem"), "not a pair").unwrap();
    std::fs::write(ssl.path().join("lonely.example.test.crt"), "no key beside it").unwrap();

    let mut args = pki.tls_args(&default);
    args.extend(["--tls-watch-interval", "200ms", "--tls-cert-dir"].map(String::from));
    args.push(ssl.path().display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&up.target, &args);
    let tls = proxy.tls();

    assert_eq!(served_cn(tls, Some("registry.example.test")), "registry.example.test");
    assert_eq!(served_cn(tls, Some("REGISTRY.example.test")), "registry.example.test");
    assert_eq!(served_cn(tls, Some("group.pages.example.test")), "*.pages.example.test");
    for sni in [
        Some("broken.example.test"),
        Some("mattermost.example.test"),
        Some("unknown.example.test"),
        Some("a.b.pages.example.test"),
        None,
    ] {
        assert_eq!(served_cn(tls, sni), "localhost", "{sni:?}");
    }
    let logs = proxy.logs();
    assert!(
        logs.contains("broken.example.test") && logs.contains("refused"),
        "{logs}"
    );
    assert!(logs.contains("valid neither for mattermost.example.test"), "{logs}");
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds{listener="main",name="registry.example.test"}"#),
        "{metrics}"
    );

    // Fixed, added, renewed and removed while running: each noticed by itself.
    write_pair(&pki, ssl.path(), "broken.example.test", &["broken.example.test"]);
    write_pair(&pki, ssl.path(), "new.example.test", &["new.example.test"]);
    let renewed_names = ["renewed.registry.example.test", "registry.example.test"];
    write_pair(&pki, ssl.path(), "registry.example.test", &renewed_names);
    std::fs::remove_file(ssl.path().join("pages.example.test.crt")).unwrap();
    let settled = wait_until(Duration::from_secs(10), || async {
        served_cn(tls, Some("broken.example.test")) == "broken.example.test"
            && served_cn(tls, Some("new.example.test")) == "new.example.test"
            && served_cn(tls, Some("group.pages.example.test")) == "localhost"
    })
    .await;
    assert!(
        settled,
        "changes in the directory were not taken up; logs:\n{}",
        proxy.logs()
    );
    // A renewal of a held pair goes through that pair's own checks and reload.
    let renewed = wait_until(Duration::from_secs(10), || async {
        served_cn(tls, Some("registry.example.test")) == "renewed.registry.example.test"
    })
    .await;
    assert!(renewed, "{}", proxy.logs());

    // A bad renewal of a held pair leaves its last good pair serving.
    std::fs::write(ssl.path().join("new.example.test.key"), &other.key_pem).unwrap();
    let refused = wait_until(Duration::from_secs(10), || async {
        proxy.logs().contains("the last good one stays")
    })
    .await;
    assert!(refused, "{}", proxy.logs());
    assert_eq!(served_cn(tls, Some("new.example.test")), "new.example.test");
}

#[test]
fn an_unreadable_directory_stops_the_start() {
    let pki = Pki::new();
    let leaf = pki.leaf();
    let mut args = pki.tls_args(&leaf);
    args.extend([
        "--tls-cert-dir".to_owned(),
        pki.dir.path().join("absent").display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, logs) = Proxy::start_expecting_exit("http://127.0.0.1:9", &args, Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{logs}");
    assert!(logs.contains("--tls-cert-dir") && logs.contains("absent"), "{logs}");
}
