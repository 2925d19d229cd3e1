//! The demo's before/after table: what was assumed, what each column saw,
//! and from how many jobs the direct path fails under those assumptions.

use std::time::Duration;

use super::sts::{Cause, Verification};

/// What one column (straight to GitLab, or through the proxy) saw.
pub(super) struct Column {
    jobs: usize,
    passed: usize,
    timeouts: usize,
    unknown_kid: usize,
    other: usize,
    fetched: usize,
    from_cache: usize,
    /// Requests that reached the simulated GitLab during the run.
    pub(super) gitlab_requests: usize,
    p50: Duration,
    p99: Duration,
    discovery_cache_control: String,
    keys_cache_control: String,
    /// The first failure of each cause seen.
    examples: Vec<String>,
}

impl Column {
    pub(super) fn new(mut runs: Vec<Verification>, gitlab_requests: usize) -> Column {
        runs.sort_by_key(|v| v.elapsed);
        let pick = |q: f64| {
            runs.get(((runs.len() as f64 - 1.0) * q).round() as usize)
                .map(|v| v.elapsed)
                .unwrap_or_default()
        };
        let first = |f: fn(&Verification) -> &str| {
            runs.iter()
                .map(f)
                .find(|s| !s.is_empty())
                .map_or_else(|| "(none seen)".into(), str::to_owned)
        };
        let failed = |cause: Cause| {
            runs.iter()
                .filter(|v| v.result.as_ref().is_err_and(|e| e.cause() == cause))
                .count()
        };
        Column {
            jobs: runs.len(),
            passed: runs.iter().filter(|v| v.result.is_ok()).count(),
            timeouts: failed(Cause::Timeout),
            unknown_kid: failed(Cause::UnknownKid),
            other: failed(Cause::Other),
            fetched: runs.iter().map(|v| v.fetched).sum(),
            from_cache: runs.iter().map(|v| v.from_cache).sum(),
            gitlab_requests,
            p50: pick(0.5),
            p99: pick(0.99),
            discovery_cache_control: first(|v| &v.discovery_cache_control),
            keys_cache_control: first(|v| &v.keys_cache_control),
            examples: [Cause::Timeout, Cause::UnknownKid, Cause::Other]
                .into_iter()
                .filter_map(|cause| {
                    runs.iter()
                        .find_map(|v| v.result.as_ref().err().filter(|e| e.cause() == cause))
                        .map(ToString::to_string)
                })
                .collect(),
        }
    }

    pub(super) fn all_passed(&self) -> bool {
        self.passed == self.jobs
    }
}

/// The numbers the run simulates, printed above the table.
pub(super) struct Assumptions {
    pub(super) workers: u32,
    pub(super) busy: u32,
    pub(super) service_time: Duration,
    pub(super) limit: Duration,
    pub(super) jobs: u32,
    pub(super) spread: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `1 s`, `1.5 s`, `300 ms`: the way the options were likely given.
fn span(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

pub(super) fn print_assumptions(a: &Assumptions) {
    let load = if a.busy == 0 {
        "an idle GitLab".to_owned()
    } else {
        format!("a busy GitLab, users' requests keep {} of them busy", a.busy)
    };
    println!(
        "Assumed: {} Rails workers ({load}; {} left for CI), {} per request, queueing beyond that;",
        a.workers,
        a.workers.saturating_sub(a.busy).max(1),
        span(a.service_time)
    );
    println!(
        "         STS gives up on a fetch after {} s and keeps a document only as its Cache-Control allows;",
        a.limit.as_secs()
    );
    println!(
        "         {} CI jobs call STS at once (spread over {}).",
        a.jobs,
        span(a.spread)
    );
}

pub(super) fn print(direct: &Column, proxied: &Column, priming: usize) {
    let jobs = direct.jobs;
    println!();
    println!("{:<34} {:<58} through gitlab-oidc-proxy", "", "straight to GitLab");
    let row = |name: &str, a: String, b: String| println!("{name:<34} {a:<58} {b}");
    row(
        "verifications passed",
        format!("{}/{jobs}", direct.passed),
        format!("{}/{}", proxied.passed, proxied.jobs),
    );
    let count = |n: usize| n.to_string();
    row(
        "  failed: no answer within 5 s",
        count(direct.timeouts),
        count(proxied.timeouts),
    );
    row(
        "  failed: kid not in the key set",
        count(direct.unknown_kid),
        count(proxied.unknown_kid),
    );
    if direct.other + proxied.other > 0 {
        row("  failed otherwise", count(direct.other), count(proxied.other));
    }
    let fetches = |c: &Column| format!("{} (+{} from its cache)", c.fetched, c.from_cache);
    row("documents STS fetched", fetches(direct), fetches(proxied));
    row(
        "requests that reached GitLab",
        direct.gitlab_requests.to_string(),
        format!("{} (+{priming} when the proxy started)", proxied.gitlab_requests),
    );
    row("time per verification, p50", ms(direct.p50), ms(proxied.p50));
    row("time per verification, p99", ms(direct.p99), ms(proxied.p99));
    row(
        "Cache-Control, discovery",
        direct.discovery_cache_control.clone(),
        proxied.discovery_cache_control.clone(),
    );
    row(
        "Cache-Control, key set",
        direct.keys_cache_control.clone(),
        proxied.keys_cache_control.clone(),
    );
    println!("(time per verification: from a job's call to STS's verdict, the fetches included)");
}

/// The line that makes the direct column a consequence of the assumptions.
pub(super) fn print_threshold(first_failing: Option<usize>, cap: usize, free: u32, service_time: Duration) {
    println!();
    let rate = f64::from(free) / service_time.as_secs_f64();
    match first_failing {
        Some(jobs) => println!(
            "Under these assumptions STS's fetches straight to GitLab start to miss the 5 s from {jobs} parallel jobs:\n\
             {free} free workers answer {rate:.1} requests/s, first come first served (worked out in src/demo/queueing.rs)."
        ),
        None => println!(
            "Under these assumptions STS's fetches straight to GitLab keep within the 5 s up to {cap} parallel jobs:\n\
             {free} free workers answer {rate:.1} requests/s, first come first served (worked out in src/demo/queueing.rs)."
        ),
    }
}

pub(super) fn print_failures(direct: &Column, proxied: &Column) {
    for (name, column) in [("straight to GitLab", direct), ("through the proxy", proxied)] {
        for failure in &column.examples {
            println!("failed {name}: {failure}");
        }
    }
}
