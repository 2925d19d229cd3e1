//! The soak: the real proxy binary between many clients and a GitLab that
//! restarts and flaps on a schedule, for a set time. Shared by the full soak
//! (`benches/soak.rs`) and its short CI version (`tests/soak.rs`).
//!
//! Pass/fail (see [`judge`]): no response taken as complete that was not
//! (status 200, clean end, wrong length or bytes), no exchange hung, every
//! request kind succeeded during the load and once more after it, the proxy
//! lived through it and exits 0 on SIGTERM, and its open file descriptors and
//! memory came back flat.

pub(crate) mod clients;
pub(crate) mod gitlab;
pub(crate) mod pattern;
pub(crate) mod proxy;
pub(crate) mod report;
pub(crate) mod schedule;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use clients::{Clients, OP_LIMIT, Op, Outcome, Sizes, Target};
use gitlab::GitLab;
use pattern::Rng;
use proxy::ProxyProcess;
use report::{Counts, Sample, Tally};
use schedule::Timeline;

/// GitLab's external URL (and the issuer) as the proxy is told.
const EXTERNAL: &str = "http://gitlab.soak.test";
/// Open descriptors allowed above the idle count once the load is over.
pub(crate) const FD_SLACK: u64 = 8;
/// Memory allowed above the early peak: a quarter of it, at least this much.
pub(crate) const RSS_SLACK_MIN_KIB: u64 = 16 * 1024;

#[derive(Clone, Debug)]
pub(crate) struct SoakConfig {
    /// How long the load runs.
    pub load: Duration,
    /// Concurrent client tasks.
    pub clients: usize,
    pub sample_every: Duration,
    /// Length of the upstream's restart/flap cycle (see [`schedule`]).
    pub cycle: Duration,
    pub sizes: Sizes,
    /// Quiet time after the load before the final sample.
    pub settle: Duration,
    pub seed: u64,
    /// The request kinds sent (labels of [`Op`]), normally [`Op::all`].
    pub ops: Vec<Op>,
    /// Whether GitLab follows the restart/flap schedule or stays steady.
    pub flapping: bool,
    /// Whether RSS must be flat (a run of seconds cannot tell a leak from warming up).
    pub check_rss: bool,
    /// The HPACK table size the h2 clients announce (None: hyper's default, 4096).
    pub h2_header_table: Option<u32>,
}

/// What the soak measured, and why it failed (empty: it passed).
pub(crate) struct Verdict {
    pub failures: Vec<String>,
    pub counts: Counts,
}

impl Verdict {
    pub(crate) fn truncated_as_complete(&self) -> u64 {
        self.counts.count("TRUNCATED_AS_COMPLETE")
    }
}

/// Everything one run gathered, for [`judge`] and the summary.
struct Run {
    /// The idle proxy before the load, every sample during it, then the one after.
    samples: Vec<Sample>,
    counts: Counts,
    /// Kinds that did not succeed once more after the load.
    post_check: Vec<String>,
    /// Workers still running past the load and [`OP_LIMIT`].
    stuck_workers: usize,
    died_during_load: Option<String>,
    exit: Result<(), String>,
    injected: Vec<(&'static str, u64)>,
    bad_uploads: u64,
    gitlab_requests: u64,
    timeline: Arc<Timeline>,
    logs: BTreeMap<String, u64>,
    recent_warnings: Vec<String>,
    metrics_after: String,
}

/// Runs the whole soak, printing as it goes and a summary at the end.
pub(crate) async fn run(cfg: &SoakConfig) -> Result<Verdict, String> {
    println!(
        "soak: {} s of load, {} clients, seed {}, samples every {} s; upstream {} s cycles: {}",
        cfg.load.as_secs(),
        cfg.clients,
        cfg.seed,
        cfg.sample_every.as_secs(),
        cfg.cycle.as_secs(),
        if cfg.flapping {
            schedule::SCHEDULE
        } else {
            "steady (no restarts, no faults)"
        }
    );
    let ops: Vec<String> = cfg.ops.iter().map(|op| op.label()).collect();
    println!(
        "kinds: {}; large bodies {}-{} MiB, uploads up to {} MiB; h2 HPACK table {}; RSS {}judged",
        ops.join(" "),
        cfg.sizes.large.0 >> 20,
        cfg.sizes.large.1 >> 20,
        cfg.sizes.upload.1 >> 20,
        cfg.h2_header_table
            .map_or("4096 (default)".to_owned(), |n| n.to_string()),
        if cfg.check_rss { "" } else { "not " }
    );
    let docs = gitlab::simulated_docs(EXTERNAL).await?;
    let kids = docs.kids.clone();
    let gitlab = Arc::new(GitLab::start(docs, cfg.seed).await.map_err(|e| e.to_string())?);
    let args = proxy_args(&gitlab);
    let mut proxy = tokio::task::spawn_blocking(move || ProxyProcess::start(&args))
        .await
        .map_err(|e| e.to_string())??;
    println!(
        "proxy pid {} on {}; soak GitLab on {}",
        proxy.pid(),
        proxy.addr,
        gitlab.addr
    );
    wait_ready(&proxy).await?;
    let target = Arc::new(reference(&proxy, &kids, cfg).await?);
    let run = load_and_settle(cfg, &gitlab, &mut proxy, target).await;
    let failures = judge(cfg, &run);
    print_summary(cfg, &run, &failures);
    Ok(Verdict {
        failures,
        counts: run.counts,
    })
}

fn proxy_args(gitlab: &GitLab) -> Vec<String> {
    let args = [
        "--upstream",
        &format!("http://{}", gitlab.addr),
        "--external-url",
        EXTERNAL,
        "--refresh",
        "2s",
        "--upstream-timeout",
        "1s",
        "--idle-timeout",
        "4s",
        "--connect-timeout",
        "2s",
        "--shutdown-grace",
        "5s",
    ];
    args.iter().map(|a| (*a).to_owned()).collect()
}

async fn wait_ready(proxy: &ProxyProcess) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = proxy.admin_get("/readyz").await;
        if matches!(answer, Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("the proxy was not ready within 15 s: {answer:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The documents as the proxy serves them, checked: the issuer, `jwks_uri`,
/// both key paths the same set, holding every kid of the simulated GitLab.
async fn reference(proxy: &ProxyProcess, kids: &[String], cfg: &SoakConfig) -> Result<Target, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut bodies = Vec::new();
    for path in ["/.well-known/openid-configuration", "/-/jwks", "/oauth/discovery/keys"] {
        let req = http::Request::get(format!("http://{}{path}", proxy.addr))
            .body(gitlab::full(Bytes::new()))
            .unwrap();
        let resp = client.request(req).await.map_err(|e| format!("{path}: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("{path}: {}", resp.status()));
        }
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?;
        bodies.push(body.to_bytes());
    }
    let json = |b: &Bytes| serde_json::from_slice::<serde_json::Value>(b).map_err(|e| e.to_string());
    let discovery = json(&bodies[0])?;
    let keys = json(&bodies[1])?;
    let held: Vec<&str> = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    let jwks_uri = format!("{EXTERNAL}/-/jwks");
    if discovery["issuer"] != EXTERNAL || discovery["jwks_uri"] != jwks_uri.as_str() {
        return Err(format!("unexpected discovery document {discovery}"));
    }
    if bodies[1] != bodies[2] || kids.iter().any(|k| !held.contains(&k.as_str())) {
        return Err(format!("key sets differ or lack {kids:?}: {keys}"));
    }
    Ok(Target {
        addr: proxy.addr,
        sizes: cfg.sizes,
        h2_header_table: cfg.h2_header_table,
        discovery: bodies[0].clone(),
        keys: bodies[1].clone(),
    })
}

async fn sample(proxy: &ProxyProcess, t: f64, phase: &'static str, tally: &Tally) -> Sample {
    let metrics = proxy.metrics().await;
    let counts = tally.snapshot();
    Sample {
        t,
        phase,
        rss_kib: proxy.rss_kib(),
        fds: proxy.fds(),
        conns: metrics
            .as_deref()
            .map(|m| proxy::metric(m, "gitlab_oidc_proxy_open_connections") as i64),
        tunnels: metrics
            .as_deref()
            .map(|m| proxy::metric(m, "gitlab_oidc_proxy_open_upgraded_connections") as i64),
        done: counts.total,
        ok: counts.ok,
        failed: counts.total - counts.ok,
    }
}

/// Samples every `every` until `end`, printing each row as it is taken.
async fn sample_until(
    proxy: &ProxyProcess,
    tally: &Tally,
    timeline: &Timeline,
    start: Instant,
    end: Instant,
    every: Duration,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut next = start + every;
    while next <= end {
        tokio::time::sleep_until(next).await;
        let s = sample(proxy, (next - start).as_secs_f64(), timeline.phase(), tally).await;
        println!("{}", s.row());
        samples.push(s);
        next += every;
    }
    samples
}

/// The load with the upstream's schedule, then the checks after it.
async fn load_and_settle(cfg: &SoakConfig, gitlab: &Arc<GitLab>, proxy: &mut ProxyProcess, target: Arc<Target>) -> Run {
    let tally = Arc::new(Tally::default());
    let timeline = Arc::new(Timeline::default());
    // The reference client's connection closes first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("{}", report::sample_header());
    let idle = sample(proxy, 0.0, "idle", &tally).await;
    println!("{}", idle.row());
    let start = Instant::now();
    let end = start + cfg.load;
    let workers: Vec<_> = (0..cfg.clients as u64)
        .map(|id| {
            let ops: Arc<[Op]> = cfg.ops.clone().into();
            tokio::spawn(clients::worker(id, cfg.seed, ops, target.clone(), tally.clone(), end))
        })
        .collect();
    let drive = async {
        if cfg.flapping {
            schedule::drive(gitlab, &timeline, start, end, cfg.cycle).await;
        }
    };
    let (_, mut samples) = tokio::join!(
        drive,
        sample_until(proxy, &tally, &timeline, start, end, cfg.sample_every),
    );
    samples.insert(0, idle);
    let stuck_workers = join_workers(workers).await;
    let died_during_load = proxy
        .exited()
        .map(|status| format!("the proxy exited during the load: {status}"));
    let post_check = post_check(&cfg.ops, &target, cfg.seed).await;
    drop(target);
    // A last restart drops the proxy's pooled connections to GitLab, so what
    // stays open after the settle is what the proxy itself kept.
    gitlab.down();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = gitlab.up().await;
    tokio::time::sleep(cfg.settle).await;
    let after = sample(proxy, start.elapsed().as_secs_f64(), "after", &tally).await;
    println!("{}", after.row());
    samples.push(after);
    let metrics_after = proxy.metrics().await.unwrap_or_default();
    let exit = match proxy.terminate(Duration::from_secs(10)) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("the proxy exited with {status} on SIGTERM")),
        None => Err("the proxy did not exit within 10 s of SIGTERM".to_owned()),
    };
    let logs = proxy.logs.lock().unwrap();
    Run {
        samples,
        counts: tally.snapshot(),
        post_check,
        stuck_workers,
        died_during_load,
        exit,
        injected: gitlab.injected(),
        bad_uploads: gitlab.bad_uploads(),
        gitlab_requests: gitlab.requests(),
        timeline,
        logs: logs.counts.clone(),
        recent_warnings: logs.recent.iter().cloned().collect(),
        metrics_after,
    }
}

/// Waits for the workers (each exchange is bounded by [`OP_LIMIT`]); returns
/// how many were still running after that, and aborts them.
async fn join_workers(workers: Vec<tokio::task::JoinHandle<()>>) -> usize {
    let deadline = Instant::now() + OP_LIMIT + Duration::from_secs(10);
    let mut stuck = 0;
    for worker in workers {
        let abort = worker.abort_handle();
        if tokio::time::timeout_at(deadline, worker).await.is_err() {
            abort.abort();
            stuck += 1;
        }
    }
    stuck
}

/// Every kind once more on fresh connections, GitLab steady: each must succeed
/// within three tries (a try may meet a pooled connection the last outage closed).
async fn post_check(ops: &[Op], target: &Target, seed: u64) -> Vec<String> {
    let mut failed = Vec::new();
    let mut rng = Rng::new(seed ^ 0xAF7E);
    for &op in ops {
        let mut last = String::new();
        for _ in 0..3 {
            let clients = Clients::new(target);
            let attempt = tokio::time::timeout(OP_LIMIT, clients::exchange(op, target, &clients, &mut rng)).await;
            match attempt {
                Ok((Outcome::Ok, _)) => {
                    last.clear();
                    break;
                }
                Ok((outcome, _)) => last = format!("{} {}", outcome.label(), outcome.detail()),
                Err(_) => last = "HUNG".to_owned(),
            }
        }
        if !last.is_empty() {
            failed.push(format!("{}: {last}", op.label()));
        }
    }
    failed
}

/// Why the run failed; empty when it passed.
fn judge(cfg: &SoakConfig, run: &Run) -> Vec<String> {
    let mut failures = Vec::new();
    let c = &run.counts;
    for (label, what) in [
        ("TRUNCATED_AS_COMPLETE", "responses taken as complete that were not"),
        ("HUNG", "exchanges hung"),
    ] {
        if c.count(label) > 0 {
            failures.push(format!("{} {what}", c.count(label)));
        }
    }
    if run.bad_uploads > 0 {
        failures.push(format!(
            "{} uploads reached GitLab cut or altered yet ended cleanly",
            run.bad_uploads
        ));
    }
    if run.stuck_workers > 0 {
        failures.push(format!(
            "{} client tasks still running {} s after the load",
            run.stuck_workers,
            OP_LIMIT.as_secs() + 10
        ));
    }
    for &op in &cfg.ops {
        if c.ok_of(op) == 0 {
            failures.push(format!("{}: no success during the load", op.label()));
        }
    }
    failures.extend(run.post_check.iter().map(|f| format!("after the load, {f}")));
    failures.extend(run.died_during_load.clone());
    if let Err(e) = &run.exit {
        failures.push(e.clone());
    }
    if run.timeline.failed_rebinds.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        failures.push("the soak's GitLab could not listen again on its port".to_owned());
    }
    failures.extend(
        flatness(cfg, &run.samples)
            .into_iter()
            .filter(|f| cfg.check_rss || !f.starts_with("RSS")),
    );
    failures
}

/// The flatness rule, on the samples (idle first, after-the-settle last):
/// - descriptors after the settle at most [`FD_SLACK`] above the idle count,
///   and the proxy's connection and tunnel gauges back to 0;
/// - RSS in the last quarter of the load and after the settle at most the
///   peak of the first quarter plus a quarter of it (at least
///   [`RSS_SLACK_MIN_KIB`]).
fn flatness(cfg: &SoakConfig, samples: &[Sample]) -> Vec<String> {
    let mut failures = Vec::new();
    let (Some(idle), Some(after)) = (samples.first(), samples.last()) else {
        return vec!["no samples".to_owned()];
    };
    if after.fds > idle.fds + FD_SLACK {
        failures.push(format!(
            "open descriptors not flat: {} idle, {} after the load",
            idle.fds, after.fds
        ));
    }
    if after.conns != Some(0) || after.tunnels != Some(0) {
        failures.push(format!(
            "after the load the proxy counts {:?} connections, {:?} tunnels (None: no answer)",
            after.conns, after.tunnels
        ));
    }
    let load = cfg.load.as_secs_f64();
    let during = &samples[1..samples.len() - 1];
    let early = during
        .iter()
        .filter(|s| s.t <= load / 4.0)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(idle.rss_kib);
    let late = during
        .iter()
        .filter(|s| s.t >= load * 0.75)
        .map(|s| s.rss_kib)
        .max()
        .unwrap_or(0);
    let bound = early + (early / 4).max(RSS_SLACK_MIN_KIB);
    for (when, rss) in [
        ("in the last quarter of the load", late),
        ("after the load", after.rss_kib),
    ] {
        if rss > bound {
            failures.push(format!(
                "RSS not flat: {:.1} MiB {when}, early peak {:.1} MiB (bound {:.1} MiB)",
                mib(rss),
                mib(early),
                mib(bound)
            ));
        }
    }
    failures
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_summary(cfg: &SoakConfig, run: &Run, failures: &[String]) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &run.counts;
    let t = &run.timeline;
    println!(
        "\n=== soak summary ({} s of load, {} clients, seed {}) ===",
        cfg.load.as_secs(),
        cfg.clients,
        cfg.seed
    );
    println!(
        "soak GitLab: {} requests; {} restarts and {} flaps, {:.1} s down in all",
        run.gitlab_requests,
        t.restarts.load(Relaxed),
        t.bounces.load(Relaxed),
        t.down_ms.load(Relaxed) as f64 / 1000.0
    );
    let injected: Vec<String> = run.injected.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("faults injected: {}", injected.join(", "));
    println!(
        "\nexchanges by kind and outcome ({} in all, {:.1} GiB checked):",
        c.total,
        c.bytes_checked as f64 / (1u64 << 30) as f64
    );
    print!("{}", report::outcome_table(c, &cfg.ops));
    println!("\nerrors by kind (and the first of each per request kind):");
    for (label, n) in c.by_outcome.iter().filter(|(l, _)| *l != "ok") {
        println!("  {label:<24} {n:>8}");
        for ((_, op), example) in c
            .examples
            .range((label.clone(), String::new())..)
            .take_while(|((l, _), _)| l == label)
        {
            let n = c.by_op.get(op).and_then(|o| o.get(label)).copied().unwrap_or(0);
            println!("      {op:<14} {n:>6}  {example}");
        }
    }
    println!("\ntruncated as complete: {}", c.count("TRUNCATED_AS_COMPLETE"));
    for line in &c.critical {
        println!("  {line}");
    }
    let slowest: Vec<String> = c
        .slowest_ok
        .iter()
        .map(|(op, d)| format!("{op} {:.1}", d.as_secs_f64()))
        .collect();
    println!("slowest success (s): {}", slowest.join(", "));
    print_process(run);
    println!("\nRESULT: {}", if failures.is_empty() { "PASS" } else { "FAIL" });
    for f in failures {
        println!("  - {f}");
    }
}

fn print_process(run: &Run) {
    let s = &run.samples;
    let (rss0, rss_max, rss_last) = report::first_max_last(s.iter().map(|s| s.rss_kib));
    let (fd0, fd_max, fd_last) = report::first_max_last(s.iter().map(|s| s.fds));
    println!("\nproxy process (first = idle before the load, last = after the settle):");
    println!(
        "  RSS MiB  first {:.1}  max {:.1}  last {:.1}",
        mib(rss0),
        mib(rss_max),
        mib(rss_last)
    );
    println!("  fds      first {fd0}  max {fd_max}  last {fd_last}");
    println!(
        "  exit on SIGTERM: {}",
        run.exit.as_ref().map_or_else(|e| e.clone(), |()| "0".to_owned())
    );
    println!("proxy metrics after the load:");
    for name in [
        "gitlab_oidc_proxy_upstream_errors_total",
        "gitlab_oidc_proxy_oidc_responses_total",
    ] {
        for (labels, value) in proxy::metric_series(&run.metrics_after, name) {
            println!("  {name}{labels} {value}");
        }
    }
    println!("proxy log lines by kind:");
    for (key, n) in &run.logs {
        println!("  {n:>8}  {key}");
    }
    if !run.recent_warnings.is_empty() {
        println!("last WARN/ERROR lines:");
        for line in &run.recent_warnings {
            println!("  {line}");
        }
    }
}

/// A seed from the clock, for runs that do not name one.
pub(crate) fn time_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
}
