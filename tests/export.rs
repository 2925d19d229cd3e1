//! `gitlab-oidc-proxy export`: the documents copied under a custom issuer URL
//! into a directory that a real static web server (Python's http.server)
//! serves, and a CI token verified against what that server hands out, as
//! STS would; then a key rotation carried over with its grace.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use gitlab_oidc_proxy::simulator::{Profile, SimConfig, SimulatedGitLab};
use support::{BIN, Proxy, body_bytes, client, empty, wait_until};

const AUD: &str = "sts.amazonaws.com";

/// A static web server on the export directory (stands in for a bucket's website).
struct StaticServer {
    child: Child,
    addr: SocketAddr,
}

impl StaticServer {
    async fn start(dir: &Path) -> StaticServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let up = wait_until(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(up, "python3 -m http.server did not start");
        StaticServer { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(url: &str) -> Value {
    fetch_json(url).await.unwrap()
}

/// GET `url` as JSON; Err for anything but a 200 with JSON.
async fn fetch_json(url: &str) -> Result<Value, String> {
    let req = Request::builder().method(Method::GET).uri(url).body(empty()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .map_err(|_| format!("{url}: no answer in 10 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("{url}: {}", resp.status()));
    }
    serde_json::from_slice(&body_bytes(resp).await).map_err(|e| format!("{url}: {e}"))
}

/// What STS does: discovery under the issuer, its jwks_uri, the key by `kid`, RS256, iss, aud.
async fn verify_at(issuer: &str, token: &str) -> Result<(), String> {
    let discovery = fetch_json(&format!("{issuer}/.well-known/openid-configuration")).await?;
    if discovery["issuer"] != issuer {
        return Err(format!("issuer {} is not {issuer}", discovery["issuer"]));
    }
    let jwks = fetch_json(discovery["jwks_uri"].as_str().unwrap()).await?;
    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} is not in the exported key set"))?;
    let key = DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[AUD]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `export --once` to a directory: its exit status and what it logged.
async fn export_once(gitlab: SocketAddr, issuer: &str, to: &Path, max_age: &str) -> (Option<i32>, String) {
    export_once_to(gitlab, issuer, to.as_os_str(), max_age, &[]).await
}

/// `export --once` to any `--to`, with `env` added.
async fn export_once_to(
    gitlab: SocketAddr,
    issuer: &str,
    to: &std::ffi::OsStr,
    max_age: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["export", "--once", "--log-format", "json", "--max-age", max_age])
        .args(["--upstream", &format!("http://{gitlab}")])
        .args([
            "--external-url",
            "https://gitlab.example.com",
            "--issuer",
            issuer,
            "--to",
        ])
        .arg(to)
        .env_remove("RUST_LOG");
    // Only the variables the test names: the machine's own AWS set-up stays out.
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("AWS_")) {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("export --once ends within 20 s")
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn a_token_verifies_against_the_exported_copy_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let web = StaticServer::start(dir.path()).await;
    let issuer = web.url();
    // GitLab 18.1 with a custom CI issuer URL: the tokens' `iss` is the copy's URL.
    let (sim, gitlab, _task) = gitlab_with_issuer(&issuer).await;

    let before = sim.mint_ci_token(AUD);
    // Nothing exported yet: STS would fail.
    assert!(!dir.path().join(".well-known").exists());
    let (code, logs) = export_once(gitlab, &issuer, dir.path(), "1h").await;
    assert_eq!(code, Some(0), "{logs}");
    verify_at(&issuer, &before).await.unwrap();
    let discovery = get_json(&format!("{issuer}/.well-known/openid-configuration")).await;
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/-/jwks"));
    // Both key paths hold the same set, with the CI key (missing from 14.4's own).
    let oauth = get_json(&format!("{issuer}/oauth/discovery/keys")).await;
    assert_eq!(oauth, get_json(&format!("{issuer}/-/jwks")).await);

    // Again: nothing changed, nothing written.
    let (code, logs) = export_once(gitlab, &issuer, dir.path(), "1h").await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("copy unchanged"), "{logs}");

    // A rotation: the new key is exported; the old one stays for --max-age.
    let old_kid = sim.ci_kid();
    sim.rotate_ci_key();
    let after = sim.mint_ci_token(AUD);
    assert!(
        verify_at(&issuer, &after).await.is_err(),
        "the copy is stale before the next pass"
    );
    // Even with the state lost: the copy's own key set stands in for it.
    std::fs::remove_file(dir.path().join(".gitlab-oidc-proxy-export.json")).unwrap();
    let (code, logs) = export_once(gitlab, &issuer, dir.path(), "1h").await;
    assert_eq!(code, Some(0), "{logs}");
    verify_at(&issuer, &after).await.unwrap();
    verify_at(&issuer, &before)
        .await
        .expect("the dropped key stays for --max-age");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(".gitlab-oidc-proxy-export.json")).unwrap()).unwrap();
    let dropped = state["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == old_kid.as_str())
        .unwrap();
    assert!(dropped["dropped_at"].is_u64(), "{state}");

    // With the grace over (a run with --max-age 1s after 1 s), the old key goes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, logs) = export_once(gitlab, &issuer, dir.path(), "1s").await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        verify_at(&issuer, &before)
            .await
            .unwrap_err()
            .contains("not in the exported key set")
    );
    verify_at(&issuer, &after).await.unwrap();
}

#[tokio::test]
async fn a_failing_gitlab_leaves_the_copy_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".well-known")).unwrap();
    std::fs::write(dir.path().join(".well-known/openid-configuration"), "kept").unwrap();
    let closed_port = support::closed_port();
    let closed = closed_port.addr;
    let (code, logs) = export_once(closed, "https://oidc.example.net", dir.path(), "1h").await;
    assert_eq!(code, Some(1), "{logs}");
    assert!(logs.contains("export failed; the copy stays as it was"), "{logs}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".well-known/openid-configuration")).unwrap(),
        "kept"
    );
}

/// A GitLab 18.1 with a custom CI issuer URL (`issuer`) on a loopback port.
async fn gitlab_with_issuer(
    issuer: &str,
) -> (std::sync::Arc<SimulatedGitLab>, SocketAddr, tokio::task::JoinHandle<()>) {
    let sim = SimulatedGitLab::new(SimConfig {
        profile: Profile::V14_4,
        external_url: "https://gitlab.example.com".into(),
        token_issuer: Some(issuer.to_owned()),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gitlab = listener.local_addr().unwrap();
    let task = sim.serve(listener);
    (sim, gitlab, task)
}

/// The admin listener's /status, `export` part.
async fn export_status(proxy: &Proxy) -> Value {
    get_json(&format!("http://{}/status", proxy.admin)).await["export"].clone()
}

/// A metric's value on the admin listener, by its full series text.
async fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let req = Request::get(format!("http://{}/metrics", proxy.admin))
        .body(empty())
        .unwrap();
    let text = String::from_utf8(body_bytes(client().request(req).await.unwrap()).await.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Whether `token` verifies against the copy at `issuer` within `within`.
async fn verifies_within(issuer: &str, token: &str, within: Duration) -> Result<(), String> {
    if wait_until(within, || async { verify_at(issuer, token).await.is_ok() }).await {
        Ok(())
    } else {
        verify_at(issuer, token).await
    }
}

#[tokio::test]
async fn serve_keeps_a_copy_in_sync_and_its_failures_never_touch_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let web = StaticServer::start(dir.path()).await;
    let issuer = web.url();
    let (sim, gitlab, _task) = gitlab_with_issuer(&issuer).await;
    let to = dir.path().display().to_string();
    let proxy = Proxy::start(
        &format!("http://{gitlab}"),
        &[
            "--external-url",
            "https://gitlab.example.com",
            "--refresh",
            "1s",
            "--export-to",
            &to,
            "--export-issuer",
            &issuer,
        ],
    );
    let before = sim.mint_ci_token(AUD);
    let ten = Duration::from_secs(10);
    verifies_within(&issuer, &before, ten).await.unwrap();

    // A rotation reaches the copy with the next refresh; the old key stays for --max-age.
    sim.rotate_ci_key();
    let after = sim.mint_ci_token(AUD);
    verifies_within(&issuer, &after, ten).await.unwrap();
    verify_at(&issuer, &before)
        .await
        .expect("the dropped key stays for --max-age");
    // The pass is counted once its files are written: a verifier may see them first.
    let written = format!(r#"gitlab_oidc_proxy_export_passes_total{{to="{to}",outcome="written"}}"#);
    let counted = wait_until(ten, || async { metric(&proxy, &written).await >= Some(2.0) }).await;
    assert!(counted, "the first copy and the rotation");
    let status = export_status(&proxy).await;
    assert_eq!(
        (status["to"].as_str(), status["issuer"].as_str()),
        (Some(to.as_str()), Some(issuer.as_str()))
    );
    assert!(status["last_success"].is_u64() && status["error"].is_null(), "{status}");

    // The target breaks (a file where the copy's directory must be), then is mended.
    std::fs::remove_dir_all(dir.path().join(".well-known")).unwrap();
    std::fs::write(dir.path().join(".well-known"), "in the way").unwrap();
    failures_are_reported_but_serving_goes_on(&proxy, &to).await;
    std::fs::remove_file(dir.path().join(".well-known")).unwrap();
    verifies_within(&issuer, &after, ten).await.unwrap();
    let status = export_status(&proxy).await;
    assert!(
        status["error"].is_null() && status["consecutive_failures"] == 0,
        "{status}"
    );
    assert!(proxy.logs().contains("export failed; the copy stays as it was"));
}

/// The copy at `to` keeps failing: /status and the metric say so, the last
/// success is kept, and /readyz and the served documents do not care.
async fn failures_are_reported_but_serving_goes_on(proxy: &Proxy, to: &str) {
    let failing = wait_until(Duration::from_secs(10), || async {
        export_status(proxy).await["consecutive_failures"].as_u64() >= Some(2)
    })
    .await;
    let status = export_status(proxy).await;
    assert!(failing, "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains(".well-known/openid-configuration"),
        "{status}"
    );
    assert!(status["last_success"].is_u64(), "the last success is kept: {status}");
    let failed = format!(r#"gitlab_oidc_proxy_export_passes_total{{to="{to}",outcome="failed"}}"#);
    assert!(metric(proxy, &failed).await >= Some(2.0));
    let ready = client()
        .request(
            Request::get(format!("http://{}/readyz", proxy.admin))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let served = get_json(&format!("http://{}/.well-known/openid-configuration", proxy.addr)).await;
    assert_eq!(served["issuer"], "https://gitlab.example.com");
}

#[tokio::test]
async fn plain_http_to_a_remote_s3_endpoint_is_refused_whatever_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let closed_port = support::closed_port();
    let closed = closed_port.addr;
    for variable in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"] {
        let env = [
            (variable, "http://192.0.2.10:9000"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ];
        let (code, logs) = export_once_to(
            closed,
            "https://oidc.example.net",
            std::ffi::OsStr::new("s3://bucket/prefix"),
            "1h",
            &env,
        )
        .await;
        // A setting that cannot be used: 2, as a bad option.
        assert_eq!(code, Some(2), "{variable}: {logs}");
        assert!(
            logs.contains("plain http is allowed only to a loopback endpoint"),
            "{variable}: {logs}"
        );
    }
    // AWS S3 without a region: object_store would sign for us-east-1 and every
    // request to another region would fail; refused at start instead.
    let keys = [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test")];
    let to = std::ffi::OsStr::new("s3://bucket/prefix");
    let (code, logs) = export_once_to(closed, "https://oidc.example.net", to, "1h", &keys).await;
    assert_eq!(code, Some(2), "{logs}");
    assert!(logs.contains("set AWS_REGION"), "{logs}");
    // A cut-short --once did not write the copy: exit 1, not 0. GitLab never answers here.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gitlab = silent.local_addr().unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["export", "--once", "--upstream", &format!("http://{gitlab}")])
        .args(["--issuer", "https://oidc.example.net", "--to"])
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn print_jwks_prints_the_united_key_set() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = SimulatedGitLab::new(SimConfig {
        profile: Profile::V14_4,
        external_url: "https://gitlab.example.com".into(),
        token_issuer: None,
    })
    .unwrap();
    let (gitlab, _task) = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener.local_addr().unwrap(), sim.serve(listener))
    });
    let out = Command::new(BIN)
        .args(["export", "--print-jwks", "--upstream", &format!("http://{gitlab}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let set: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(kids.contains(&sim.ci_kid().as_str()), "{kids:?}");
    assert!(kids.contains(&sim.oidc_kid().as_str()), "{kids:?}");
    // Without --to and --issuer, and without --print-jwks: a usage error.
    let out = Command::new(BIN)
        .args(["export", "--upstream", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `moto_server` (PyPI `moto[server]`, which .ci/run installs into a venv and puts
/// on PATH): a real S3 API on loopback, and its venv's Python with boto3 to read
/// the objects back with their metadata.
struct Moto {
    child: Child,
    port: u16,
    python: std::path::PathBuf,
}

impl Moto {
    async fn start() -> Moto {
        let server = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("moto_server"))
            .find(|p| p.is_file())
            .expect("moto_server on PATH (pip install 'moto[server]'; .ci/run does)");
        let python = server.with_file_name("python3");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        assert!(up, "moto_server did not start");
        Moto { child, port, python }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The object's Content-Type, Cache-Control and body, through boto3.
    fn object(&self, bucket: &str, key: &str) -> (String, String, Value) {
        let script = "import boto3, json, sys\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')\n\
            o = s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])\n\
            print(json.dumps([o['ContentType'], o.get('CacheControl', ''), json.loads(o['Body'].read())]))\n";
        let out = Command::new(&self.python)
            .args(["-c", script, &self.endpoint(), bucket, key])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            v[0].as_str().unwrap().to_owned(),
            v[1].as_str().unwrap().to_owned(),
            v[2].clone(),
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn s3_objects_are_json_cacheable_and_follow_a_rotation() {
    let moto = Moto::start().await;
    let create = Request::builder()
        .method(Method::PUT)
        .uri(format!("{}/oidc-copy", moto.endpoint()))
        .body(empty())
        .unwrap();
    assert!(client().request(create).await.unwrap().status().is_success());
    let issuer = "https://oidc-copy.s3.amazonaws.com/ci";
    let sim = SimulatedGitLab::new(SimConfig {
        profile: Profile::V16_6,
        external_url: "https://gitlab.example.com".into(),
        token_issuer: Some(issuer.into()),
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gitlab = listener.local_addr().unwrap();
    let _task = sim.serve(listener);
    let endpoint = moto.endpoint();
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let export = || export_once_to(gitlab, issuer, "s3://oidc-copy/ci".as_ref(), "1h", &env);
    let (code, logs) = export().await;
    assert_eq!(code, Some(0), "{logs}");
    let (content_type, cache_control, discovery) = moto.object("oidc-copy", "ci/.well-known/openid-configuration");
    assert_eq!(
        (content_type.as_str(), cache_control.as_str()),
        ("application/json", "public, max-age=3600")
    );
    assert_eq!(discovery["issuer"], issuer);
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/-/jwks"));
    let kids = |set: &Value| -> Vec<String> {
        set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    for key in ["ci/-/jwks", "ci/oauth/discovery/keys"] {
        let (content_type, _, set) = moto.object("oidc-copy", key);
        assert_eq!(content_type, "application/json");
        assert!(kids(&set).contains(&sim.ci_kid()), "{key}: {set}");
    }
    let (code, logs) = export().await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("copy unchanged"), "{logs}");

    let old = sim.ci_kid();
    let new = sim.rotate_ci_key();
    let (code, logs) = export().await;
    assert_eq!(code, Some(0), "{logs}");
    let (_, _, set) = moto.object("oidc-copy", "ci/-/jwks");
    assert!(kids(&set).contains(&new) && kids(&set).contains(&old), "{set}");

    // A new --max-age reaches every object's Cache-Control, unchanged bodies too.
    let (code, logs) = export_once_to(gitlab, issuer, "s3://oidc-copy/ci".as_ref(), "10m", &env).await;
    assert_eq!(code, Some(0), "{logs}");
    for key in [
        "ci/-/jwks",
        "ci/oauth/discovery/keys",
        "ci/.well-known/openid-configuration",
    ] {
        let (_, cache_control, _) = moto.object("oidc-copy", key);
        assert_eq!(cache_control, "public, max-age=600", "{key}");
    }
}
