//! `gitlab-oidc-proxy check`, the real binary, against the simulated GitLab of
//! every profile: behind the proxy (TLS on the proxy's listener), and directly
//! behind a plain TLS terminator that leaves GitLab's headers as they are; then
//! broken set-ups, each failing at its own step. The issuer is
//! https://gitlab.example.com, reached through `--connect-to` on loopback, its
//! certificate from a private CA given with `--ca` (a warning, never a failure).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use gitlab_oidc_proxy::simulator::{Fault, Profile, SimConfig, SimDoc, SimulatedGitLab};
use support::{BIN, Leaf, Pki, Proxy};

const ISSUER: &str = "https://gitlab.example.com";
const AUD: &str = "sts.amazonaws.com";
const PROFILES: [Profile; 4] = [Profile::V14_4, Profile::V16_6, Profile::V16_8, Profile::V17_0];

struct Gitlab {
    sim: Arc<SimulatedGitLab>,
    addr: SocketAddr,
    _task: JoinHandle<()>,
}

async fn gitlab(profile: Profile) -> Gitlab {
    let sim = SimulatedGitLab::new(SimConfig {
        profile,
        external_url: ISSUER.into(),
        token_issuer: None,
    })
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = sim.serve(listener);
    Gitlab { sim, addr, _task: task }
}

fn leaf(pki: &Pki) -> Leaf {
    pki.leaf_with(
        &["gitlab.example.com"],
        rcgen::KeyPair::generate().unwrap(),
        std::time::SystemTime::now() + Duration::from_secs(90 * 86_400),
    )
}

/// A TLS terminator sending `chain_pem` as is (any order) and relaying bytes to
/// `backend` untouched: what a load balancer in front of GitLab does.
async fn tls_front(chain_pem: &str, key_pem: &str, backend: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let (Ok(mut tls), Ok(mut up)) = (acceptor.accept(tcp).await, TcpStream::connect(backend).await) else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, task)
}

/// The proxy with TLS for gitlab.example.com in front of `gitlab`; its TLS address.
async fn proxy_in_front(pki: &Pki, gitlab: SocketAddr) -> (Proxy, SocketAddr) {
    let mut args = pki.tls_args(&leaf(pki));
    args.extend(["--external-url".into(), ISSUER.into()]);
    let proxy = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(&format!("http://{gitlab}"), &args)
    })
    .await
    .unwrap();
    let tls = proxy.tls_addr.unwrap();
    (proxy, tls)
}

/// `check ISSUER --json` through `--connect-to addr` with the PKI's root as `--ca`;
/// the exit status and the report.
async fn check(pki: &Pki, addr: SocketAddr, token: Option<&str>, extra: &[&str]) -> (Option<i32>, Value) {
    let (code, stdout, stderr) = run_check(
        &[
            ISSUER,
            "--json",
            "--connect-to",
            &addr.to_string(),
            "--ca",
            pki.root_path.to_str().unwrap(),
        ],
        token,
        extra,
    )
    .await;
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    (code, report)
}

async fn run_check(args: &[&str], token: Option<&str>, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("check").args(args).args(extra);
    if token.is_some() {
        cmd.args(["--token", "-"]);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(token.unwrap_or_default().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("check ends within 60 s")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Each step's status, in order ("pass", "warn", "fail", "skip").
fn statuses(report: &Value) -> Vec<&str> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect()
}

/// Step `n`'s problems, joined.
fn problems(report: &Value, n: usize) -> String {
    let list = report["steps"][n - 1]["problems"].as_array().unwrap();
    list.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_profile_passes_behind_the_proxy_and_fails_caching_without_it() {
    let pki = Pki::new();
    let leaf = leaf(&pki);
    for profile in PROFILES {
        let gitlab = gitlab(profile).await;
        let token = gitlab.sim.mint_ci_token(AUD);

        let (_proxy, tls) = proxy_in_front(&pki, gitlab.addr).await;
        let (code, report) = check(&pki, tls, Some(&token), &["--audience", AUD, "--burst", "20"]).await;
        assert_eq!(code, Some(0), "{profile:?} behind the proxy: {report:#}");
        // The private CA is the only warning; everything else passes.
        assert_eq!(
            statuses(&report),
            ["warn", "pass", "pass", "pass", "pass", "pass"],
            "{profile:?}: {report:#}"
        );
        assert!(problems(&report, 1).contains("only with --ca"), "{report:#}");
        let evidence = report["steps"][3]["evidence"].to_string();
        assert!(evidence.contains("effective max-age: 3600 s"), "{evidence}");
        // The token itself never appears, its claims and a trust policy do.
        let signature = token.rsplit('.').next().unwrap();
        assert!(!report.to_string().contains(signature));
        assert_eq!(
            report["claims"]["iam_condition_keys"]["gitlab.example.com:sub"],
            "project_path:my-group/my-project:ref_type:branch:ref:main"
        );
        let condition = &report["trust_policy"]["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(condition["gitlab.example.com:aud"], AUD);

        let (front, _task) = tls_front(&pki.chain(&leaf), &leaf.key_pem, gitlab.addr).await;
        let (code, report) = check(&pki, front, Some(&token), &["--audience", AUD]).await;
        assert_eq!(code, Some(1), "{profile:?} without the proxy: {report:#}");
        assert_eq!(report["steps"][3]["status"], "fail", "{profile:?}: {report:#}");
        assert!(problems(&report, 4).contains("discovery sends Cache-Control: max-age=0"));
        if profile == Profile::V14_4 {
            // jwks_uri names the set without the CI key; /-/jwks has it.
            assert_eq!(report["steps"][4]["status"], "fail");
            assert!(problems(&report, 5).contains("(GitLab 14.4 and before)"), "{report:#}");
        } else {
            assert_eq!(report["steps"][4]["status"], "pass", "{profile:?}: {report:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misordered_or_padded_chain_fails_step_1() {
    let pki = Pki::new();
    let leaf = leaf(&pki);
    let gitlab = gitlab(Profile::V17_0).await;
    let root_pem = std::fs::read_to_string(&pki.root_path).unwrap();
    let misordered = format!("{}{}{}", leaf.pem, root_pem, pki.intermediate_pem);
    let (front, _task) = tls_front(&misordered, &leaf.key_pem, gitlab.addr).await;
    let (code, report) = check(&pki, front, None, &[]).await;
    assert_eq!(code, Some(1));
    assert_eq!(report["steps"][0]["status"], "fail", "{report:#}");
    assert!(problems(&report, 1).contains("out of order"), "{report:#}");

    let other = Pki::named(
        "Other",
        std::time::SystemTime::now() + Duration::from_secs(365 * 86_400),
    );
    let padded = format!("{}{}{}", pki.chain(&leaf), other.intermediate_pem, "");
    let (front, _task) = tls_front(&padded, &leaf.key_pem, gitlab.addr).await;
    let (_, report) = check(&pki, front, None, &[]).await;
    assert!(
        problems(&report, 1).contains("(CN=Other Intermediate CA) is not part of the chain"),
        "{report:#}"
    );
    // Without --ca the private chain is untrusted: a failure, as STS sees it.
    let (front, _task) = tls_front(&pki.chain(&leaf), &leaf.key_pem, gitlab.addr).await;
    let (code, stdout, _) = run_check(&[ISSUER, "--json", "--connect-to", &front.to_string()], None, &[]).await;
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(code, Some(1));
    assert!(problems(&report, 1).contains("not publicly trusted"), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tokens_fail_step_5_with_the_reason() {
    let pki = Pki::new();
    let gitlab = gitlab(Profile::V16_8).await;
    let (_proxy, tls) = proxy_in_front(&pki, gitlab.addr).await;
    let sim = &gitlab.sim;
    let cases: [(&str, String); 5] = [
        (
            "the token has no aud",
            sim.mint_ci_token_with(AUD, |_, c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        (
            "kid nobody-knows is not in the key set",
            sim.mint_ci_token_with(AUD, |h, _| h["kid"] = "nobody-knows".into()),
        ),
        (
            "the token expired",
            sim.mint_ci_token_with(AUD, |_, c| {
                c["exp"] = (c["iat"].as_u64().unwrap() - 100).into();
            }),
        ),
        (
            "iss \"https://other.example.com\" is not the issuer",
            sim.mint_ci_token_with(AUD, |_, c| c["iss"] = "https://other.example.com".into()),
        ),
        (
            "aud other-audience does not include sts.amazonaws.com",
            sim.mint_ci_token("other-audience"),
        ),
    ];
    for (expected, token) in cases {
        let (code, report) = check(&pki, tls, Some(&token), &["--audience", AUD]).await;
        assert_eq!(code, Some(1), "{expected}: {report:#}");
        assert_eq!(
            statuses(&report)[..5],
            ["warn", "pass", "pass", "pass", "fail"],
            "{expected}: {report:#}"
        );
        assert!(problems(&report, 5).contains(expected), "{expected}: {report:#}");
    }
    // A signature made by another key under the right kid.
    let good = sim.mint_ci_token(AUD);
    let other = tampered(&good);
    let (_, report) = check(&pki, tls, Some(&other), &[]).await;
    assert!(problems(&report, 5).contains("signature does not verify"), "{report:#}");
}

/// `token` with its signature's last byte changed.
fn tampered(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut chars: Vec<char> = signature.chars().collect();
    let last = chars.len() - 2;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", chars.into_iter().collect::<String>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gitlab_fails_step_1_unless_the_proxy_answers_from_memory() {
    let pki = Pki::new();
    let leaf = leaf(&pki);
    let gitlab = gitlab(Profile::V17_0).await;
    let (_proxy, tls) = proxy_in_front(&pki, gitlab.addr).await;
    // The proxy holds the documents before GitLab turns slow.
    let (code, report) = check(&pki, tls, None, &[]).await;
    assert_eq!(code, Some(0), "{report:#}");
    gitlab
        .sim
        .set_fault(SimDoc::Discovery, Fault::Delay(Duration::from_secs(7)));
    let (front, _task) = tls_front(&pki.chain(&leaf), &leaf.key_pem, gitlab.addr).await;
    let (code, report) = check(&pki, front, None, &[]).await;
    assert_eq!(code, Some(1));
    assert!(
        problems(&report, 1).contains("no complete answer within 5 s"),
        "{report:#}"
    );
    let (code, report) = check(&pki, tls, None, &[]).await;
    assert_eq!(code, Some(0), "the proxy answers from memory: {report:#}");
}

#[tokio::test]
async fn usage_errors_exit_2_and_a_bad_issuer_exits_1() {
    for (args, expected) in [
        (vec![], "ISSUER_URL"),
        (vec!["not a url"], "not a URL"),
        (vec!["ftp://gitlab.example.com"], "not an http(s) URL"),
        (
            vec![ISSUER, "--token", "/nonexistent/token"],
            "--token /nonexistent/token",
        ),
    ] {
        let (code, stdout, stderr) = run_check(&args, None, &[]).await;
        assert_eq!(code, Some(2), "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // http and a port are URLs, refused by STS: step 1 fails (nothing listens there either).
    let closed = support::closed_port();
    let (code, stdout, _) = run_check(
        &[&format!("http://127.0.0.1:{}", closed.addr.port()), "--json"],
        None,
        &[],
    )
    .await;
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let step1 = problems(&report, 1);
    assert!(
        step1.contains("is not https") && step1.contains("has a port"),
        "{step1}"
    );
}
