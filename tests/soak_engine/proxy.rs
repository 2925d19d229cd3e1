//! The real proxy binary as a child process: started, watched (RSS, open file
//! descriptors, its gauges, its log lines counted by kind), stopped with SIGTERM.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::gitlab::{SoakBody, full};

const BIN: &str = env!("CARGO_BIN_EXE_gitlab-oidc-proxy");

/// Log lines by kind: access lines by outcome, others by level and message.
#[derive(Default)]
pub(crate) struct Logs {
    pub counts: BTreeMap<String, u64>,
    /// The last WARN and ERROR lines.
    pub recent: VecDeque<String>,
}

pub(crate) struct ProxyProcess {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Logs>>,
    admin_client: Client<HttpConnector, SoakBody>,
}

impl ProxyProcess {
    /// Starts `serve` with `args` on ephemeral loopback ports; blocks until it
    /// logs that it listens (at most 20 s).
    pub(crate) fn start(args: &[String]) -> Result<ProxyProcess, String> {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {BIN}: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Logs::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || read_logs(BufReader::new(stderr), &sink, tx));
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, admin)) => Ok(ProxyProcess {
                child,
                addr,
                admin,
                logs,
                admin_client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let recent: Vec<String> = logs.lock().unwrap().recent.iter().cloned().collect();
                Err(format!("the proxy did not start: {}", recent.join("\n")))
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// VmRSS in KiB (0 once the process is gone).
    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Entries of /proc/<pid>/fd (0 once the process is gone).
    pub(crate) fn fds(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count() as u64)
    }

    /// The exit status, if the process has ended.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An admin endpoint's status and body (within 5 s).
    pub(crate) async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let url = format!("http://{}{path}", self.admin);
        let req = http::Request::get(url).body(full(Bytes::new())).unwrap();
        let exchange = async {
            let resp = self.admin_client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| "admin: no answer in 5 s".to_owned())?
    }

    /// The metrics text, None if the admin listener does not answer twice in a
    /// row (a first try may meet a kept-alive connection the proxy just closed).
    pub(crate) async fn metrics(&self) -> Option<String> {
        for _ in 0..2 {
            if let Ok((200, body)) = self.admin_get("/metrics").await {
                return Some(body);
            }
        }
        None
    }

    /// SIGTERM, then waits up to `within` for the exit.
    pub(crate) fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Listening = std::sync::mpsc::Sender<(SocketAddr, SocketAddr)>;

fn read_logs(stderr: impl BufRead, sink: &Mutex<Logs>, tx: Listening) {
    let mut tx = Some(tx);
    for line in stderr.lines() {
        let Ok(line) = line else { break };
        // Access lines are most of the log: counted by outcome without a JSON parse.
        if line.contains(r#""target":"access""#) {
            let outcome = field(&line, "outcome").unwrap_or("?");
            *sink
                .lock()
                .unwrap()
                .counts
                .entry(format!("access outcome={outcome}"))
                .or_default() += 1;
            continue;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            *sink.lock().unwrap().counts.entry("not JSON".into()).or_default() += 1;
            continue;
        };
        let level = v["level"].as_str().unwrap_or("?");
        let mut key = format!("{level} {}", v["message"].as_str().unwrap_or("?"));
        for extra in ["reason", "document", "outcome"] {
            if let Some(value) = v[extra].as_str() {
                key.push_str(&format!(" {extra}={value}"));
            }
        }
        let mut logs = sink.lock().unwrap();
        *logs.counts.entry(key).or_default() += 1;
        if level == "WARN" || level == "ERROR" {
            if logs.recent.len() == 20 {
                logs.recent.pop_front();
            }
            logs.recent.push_back(line.clone());
        }
        drop(logs);
        if v["message"] == "listening"
            && let Some(tx) = tx.take()
        {
            let addr = |k: &str| v[k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
            if let (Some(listen), Some(admin)) = (addr("listen"), addr("admin")) {
                let _ = tx.send((listen, admin));
            }
        }
    }
}

/// The string value of `"name":"…"` in a JSON line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The value of one series in OpenMetrics text (0 when absent).
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Every series of metric `name` with its value, labels as written.
pub(crate) fn metric_series(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}
