//! The log: no credential at any level, on any listener, in either format;
//! `access=off`; lines held in memory written at exit; and a stderr that stops
//! taking lines costs log lines (counted), never a request.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use nix::sys::signal::Signal;
use support::{BIN, Leaf, Pki, Proxy, client, empty, h2c_client, metric_value, upstream};
use support::{Transport, echo, tls_listen_args};

const SECRETS: [&str; 5] = [
    "glpat-SECRET1aaaaaaaaaaaa",
    "SECRET2-session",
    "SECRET3-private",
    "SECRET4-job",
    "SECRET5-query",
];

/// A request carrying every kind of credential a GitLab client sends.
fn with_credentials(url: &str) -> Request<support::TestBody> {
    Request::get(format!("{url}/api/v4/projects?private_token={}", SECRETS[4]))
        .header("authorization", format!("Bearer {}", SECRETS[0]))
        .header("cookie", format!("_gitlab_session={}", SECRETS[1]))
        .header("private-token", SECRETS[2])
        .header("job-token", SECRETS[3])
        .body(empty())
        .unwrap()
}

/// The proxy in the text format (the support harness reads JSON): the log is
/// gathered as it comes; the listeners are read off the `listening` line.
struct TextProxy {
    child: Child,
    logs: Arc<Mutex<String>>,
    addr: SocketAddr,
    tls: SocketAddr,
}

impl TextProxy {
    fn start(upstream: &str, tls: &[String], rust_log: &str) -> TextProxy {
        let mut child = Command::new(BIN)
            .args(["serve", "--upstream", upstream, "--log-format", "text"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(tls)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains(" INFO gitlab_oidc_proxy::app: listening ") {
                    let _ = tx.send(line.clone());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        // Held before anything can panic: a failed start must not leave the proxy running.
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut proxy = TextProxy {
            addr: unset,
            tls: unset,
            child,
            logs,
        };
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("a listening line");
        let field = |name: &str| -> SocketAddr {
            let start = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
            // A String field is shown quoted (`tls_listen="127.0.0.1:1"`).
            line[start..]
                .split(' ')
                .next()
                .unwrap()
                .trim_matches('"')
                .parse()
                .unwrap()
        };
        proxy.addr = field("listen");
        proxy.tls = field("tls_listen");
        proxy
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

/// The log once it holds `needle` `count` times (lines come after their responses).
async fn wait_for(logs: impl Fn() -> String, needle: &str, count: usize) -> String {
    for _ in 0..500 {
        let now = logs();
        if now.matches(needle).count() >= count {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the log never held {count} × {needle:?}:\n{}", logs());
}

impl Drop for TextProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_args(pki: &Pki, leaf: &Leaf) -> Vec<String> {
    let cert = pki.write("cert.pem", &pki.chain(leaf));
    let key = pki.write("key.pem", &leaf.key_pem);
    tls_listen_args(&cert, &key)
}

#[tokio::test]
async fn trace_logs_no_credential_on_either_listener_in_either_format() {
    let up = upstream(Transport::Tcp, echo).await;
    let pki = Pki::new();
    let leaf = pki.leaf();
    // JSON (the harness), then text: each over plain HTTP/1.1, h2c, TLS HTTP/1.1 and TLS h2.
    let args = tls_args(&pki, &leaf);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let json = Proxy::start_with_env(&up.target, &args, &[("RUST_LOG", "trace")]);
    let text = TextProxy::start(&up.target, &tls_args(&pki, &leaf), "trace");
    let https = |addr: SocketAddr| format!("https://localhost:{}", addr.port());
    for (plain, tls) in [
        (json.url(""), https(json.tls())),
        (format!("http://{}", text.addr), https(text.tls)),
    ] {
        for resp in [
            client().request(with_credentials(&plain)).await,
            h2c_client().request(with_credentials(&plain)).await,
            pki.https_client(false).request(with_credentials(&tls)).await,
            pki.https_client(true).request(with_credentials(&tls)).await,
        ] {
            assert_eq!(resp.unwrap().status(), StatusCode::OK);
        }
    }
    let json_logs = wait_for(|| json.logs(), r#""path":"/api/v4/projects""#, 4).await;
    let text_logs = wait_for(|| text.logs(), "path=/api/v4/projects ", 4).await;
    for (format, logs, access, trace) in [
        ("json", &json_logs, r#""path":"/api/v4/projects""#, r#""level":"TRACE""#),
        ("text", &text_logs, "path=/api/v4/projects ", " TRACE "),
    ] {
        // The level really was trace: the check below looked at the most verbose log.
        assert!(logs.contains(trace), "{format}: no TRACE line:\n{logs}");
        assert_eq!(
            logs.matches(access).count(),
            4,
            "{format}: one access line per request:\n{logs}"
        );
        for secret in SECRETS {
            assert!(!logs.contains(secret), "{format}: {secret} leaked into the log");
        }
        assert!(
            !logs.contains("private_token"),
            "{format}: query strings are not logged"
        );
    }
}

#[tokio::test]
async fn access_off_silences_the_access_lines_only() {
    // Nothing listens upstream: each request fails and logs a warning.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let proxy = Proxy::start_with_env(&target, &[], &[("RUST_LOG", "info,access=off")]);
    for path in ["/first", "/second"] {
        let resp = client()
            .request(Request::get(proxy.url(path)).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        proxy.wait_for_log(&format!(r#""path":"{path}""#)).await;
    }
    // Lines keep their order: the first request's access line would be before the second's warning.
    let logs = proxy.logs();
    assert!(logs.contains(r#""message":"request to GitLab failed""#), "{logs}");
    assert!(!logs.contains(r#""target":"access""#), "{logs}");

    // The same with the default filter: the access lines are there.
    let proxy = Proxy::start(&target, &[]);
    client()
        .request(Request::get(proxy.url("/first")).body(empty()).unwrap())
        .await
        .unwrap();
    proxy.wait_for_log(r#""target":"access""#).await;
}

#[tokio::test]
async fn lines_still_in_memory_are_written_at_exit() {
    let up = upstream(Transport::Tcp, echo).await;
    let mut proxy = Proxy::start(&up.target, &[]);
    for i in 0..50 {
        let req = Request::get(proxy.url(&format!("/r/{i}"))).body(empty()).unwrap();
        assert_eq!(client().request(req).await.unwrap().status(), StatusCode::OK);
    }
    // At once: the writer's 100 ms period has not come round for the last lines.
    proxy.signal(Signal::SIGTERM);
    let exit = proxy.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert_eq!(exit.code(), Some(0));
    let logs = proxy.logs();
    for i in 0..50 {
        assert!(logs.contains(&format!(r#""path":"/r/{i}""#)), "/r/{i} lost:\n{logs}");
    }
}

/// The proxy with its stderr read up to the `listening` line, then never again.
struct Stuck {
    child: Child,
    _unread: Option<BufReader<ChildStderr>>,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Stuck {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_with_stuck_stderr(upstream: &str) -> Stuck {
    let child = Command::new(BIN)
        .args(["serve", "--upstream", upstream, "--log-format", "json"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let unset = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut stuck = Stuck {
        child,
        _unread: None,
        addr: unset,
        admin: unset,
    };
    let mut stderr = BufReader::new(stuck.child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited before listening");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["message"] == "listening" {
            let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
            stuck.addr = addr("listen");
            stuck.admin = addr("admin");
            stuck._unread = Some(stderr);
            return stuck;
        }
    }
}

#[tokio::test]
async fn a_stderr_that_stops_reading_costs_lines_not_requests() {
    let up = upstream(Transport::Tcp, echo).await;
    let proxy = start_with_stuck_stderr(&up.target);
    let (addr, admin) = (proxy.addr, proxy.admin);
    // ~250 bytes a line: 8,000 requests are twice what the pipe and the 1 MiB buffer hold.
    let client = client();
    let started = std::time::Instant::now();
    let workers = (0..8).map(|w| {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..1000 {
                let req = Request::get(format!("http://{addr}/w{w}/{i}")).body(empty()).unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                    .await
                    .expect("a request waited on the log")
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
            }
        })
    });
    for worker in workers {
        worker.await.unwrap();
    }
    let metrics = support::body_bytes(
        client
            .request(Request::get(format!("http://{admin}/metrics")).body(empty()).unwrap())
            .await
            .unwrap(),
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics);
    let dropped = metric_value(&metrics, "gitlab_oidc_proxy_log_lines_dropped_total").expect("the series exists");
    assert!(
        metrics.contains("# TYPE gitlab_oidc_proxy_log_lines_dropped counter"),
        "{metrics}"
    );
    assert!(
        dropped > 2000.0,
        "{dropped} lines dropped of 8,000 in {:?}",
        started.elapsed()
    );
}
