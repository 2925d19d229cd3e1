//! What containers run: `demo --gitlab-only` as a stand-in GitLab, the proxy
//! in front, and `healthcheck` as the image's HEALTHCHECK. Real processes.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use support::{BIN, Proxy, body_bytes, client};

fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .arg("healthcheck")
        .args(args)
        .env_remove("GITLAB_OIDC_PROXY_ADMIN_LISTEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out, started.elapsed())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `demo --gitlab-only` on an ephemeral port; its address from the first line.
struct SimulatedGitLab {
    child: Child,
    addr: SocketAddr,
}

impl SimulatedGitLab {
    fn start(external_url: &str) -> SimulatedGitLab {
        let mut child = Command::new(BIN)
            .args(["demo", "--gitlab-only", "--profile", "14.4"])
            .args(["--gitlab-listen", "127.0.0.1:0", "--external-url", external_url])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let addr = first
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split([',', ' ']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        SimulatedGitLab { child, addr }
    }

    fn terminate(&mut self) -> Option<i32> {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for SimulatedGitLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn gitlab_only_serves_a_proxy_and_healthcheck_follows_readiness() {
    // The issuer names the proxy's port, so it is picked before the proxy starts;
    // should anything take it meanwhile, start again on another.
    let (mut gitlab, proxy) = (0..5)
        .find_map(|_| {
            let public = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen = public.local_addr().unwrap();
            drop(public);
            let gitlab = SimulatedGitLab::start(&format!("http://{listen}"));
            Proxy::try_start_on(listen, &format!("http://{}", gitlab.addr), &[]).map(|proxy| (gitlab, proxy))
        })
        .expect("no free port for the proxy in 5 tries");
    let issuer = format!("http://{}", proxy.addr);
    let admin = proxy.admin.to_string();
    let ready = support::wait_until(Duration::from_secs(10), || async {
        healthcheck(&["--admin-listen", &admin], &[]).0.status.success()
    })
    .await;
    assert!(ready, "never ready: {}", proxy.logs());
    let (out, _) = healthcheck(&["--admin-listen", &admin], &[]);
    assert_eq!(text(&out.stdout), "ready\n");

    // The variable `serve` reads names the admin listener for healthcheck too,
    // and a wildcard address is asked on loopback.
    let wildcard = format!("0.0.0.0:{}", proxy.admin.port());
    let (out, _) = healthcheck(&[], &[("GITLAB_OIDC_PROXY_ADMIN_LISTEN", wildcard.as_str())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `[::]` is asked on [::1] (nothing there: this listener is IPv4), then on 127.0.0.1.
    let dual = format!("[::]:{}", proxy.admin.port());
    let (out, _) = healthcheck(&["--admin-listen", &dual], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let resp = client()
        .get(proxy.url("/.well-known/openid-configuration").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()["cache-control"], "public, max-age=3600");
    let doc: serde_json::Value = serde_json::from_slice(&body_bytes(resp).await).unwrap();
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["jwks_uri"], format!("{issuer}/-/jwks"));

    // SIGTERM ends the simulated GitLab with 0; the proxy keeps its good copy.
    assert_eq!(gitlab.terminate(), Some(0));
    let (out, _) = healthcheck(&["--admin-listen", &admin], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn not_ready_is_exit_1_with_the_reason() {
    // Nothing servable: GitLab was never reachable.
    let proxy = Proxy::start("http://127.0.0.1:1", &[]);
    let (out, _) = healthcheck(&["--admin-listen", &proxy.admin.to_string()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("not ready: /readyz answered 503"), "{stderr}");
    assert!(stderr.contains("no servable OIDC documents"), "{stderr}");

    // No proxy at all.
    let closed = support::closed_port();
    let addr = closed.addr.to_string();
    let (out, _) = healthcheck(&["--admin-listen", &addr], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot connect"), "{}", text(&out.stderr));

    // A listener that accepts and never answers: the timeout bounds the probe.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let (out, took) = healthcheck(&["--admin-listen", &addr, "--timeout", "300ms"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no answer"), "{}", text(&out.stderr));
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_bad_setting_is_exit_1_not_2() {
    // docker reserves exit status 2 of a HEALTHCHECK.
    let (out, _) = healthcheck(&[], &[("GITLAB_OIDC_PROXY_ADMIN_LISTEN", "not-an-address")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("admin-listen"), "{}", text(&out.stderr));
}

#[test]
fn gitlab_only_refuses_the_full_demos_options() {
    let out = Command::new(BIN)
        .args(["demo", "--gitlab-only", "--jobs", "3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["demo", "--external-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
