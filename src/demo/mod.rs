//! `gitlab-oidc-proxy demo`: a simulated GitLab, the proxy in front of it, and
//! an STS-like verifier run in parallel, first straight against GitLab, then
//! through the proxy. Prints what changes, then serves for curl.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::app::{RunningProxy, bind, local_addr};
use crate::config::{Config, ConfigError, parse_upstream};
use crate::error::StartError;
use crate::simulator::{Profile, SimConfig, SimDoc, SimulatedGitLab};

mod sts;

use sts::{AUDIENCE, Verification, run_jobs};

/// What to simulate and where to listen (the `demo` subcommand's options).
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// Which GitLab to simulate (reference profiles).
    pub profile: Profile,
    /// Verifications run in parallel, like CI jobs assuming a role at once.
    pub jobs: u32,
    /// Exit after the table: 0 only if every verification through the proxy passed.
    pub once: bool,
    /// The proxy's public listener (its URL is the issuer).
    pub listen: SocketAddr,
    /// The proxy's admin listener.
    pub admin_listen: SocketAddr,
    /// The simulated GitLab's listener.
    pub gitlab_listen: SocketAddr,
    /// Serve the simulated GitLab alone (for a proxy started separately, as in
    /// a container), with this external URL: the proxy's, which is the issuer.
    pub gitlab_only: Option<String>,
}

struct RunSummary {
    passed: usize,
    gitlab_requests: usize,
    p50: Duration,
    p99: Duration,
    discovery_cache_control: String,
    keys_cache_control: String,
    first_failure: Option<String>,
}

/// Runs the demo; returns the process exit code.
pub async fn run(args: DemoSettings) -> Result<u8, StartError> {
    if let Some(external_url) = &args.gitlab_only {
        return serve_gitlab(args.profile, args.gitlab_listen, external_url).await;
    }
    // Anyone could mint tokens the demo accepts; keep it off the network.
    for addr in [args.listen, args.admin_listen, args.gitlab_listen] {
        if !addr.ip().is_loopback() {
            return Err(ConfigError::DemoNotLoopback(addr).into());
        }
    }
    let gitlab_listener = bind(args.gitlab_listen).await?;
    let gitlab_addr = local_addr(&gitlab_listener)?;
    // The issuer is the proxy's URL: bind first to know it.
    let public = bind(args.listen).await?;
    let listen = local_addr(&public)?;
    let issuer = format!("http://{listen}");
    println!("Starting a simulated GitLab {} ...", args.profile);
    let config = SimConfig {
        profile: args.profile,
        external_url: issuer.clone(),
        token_issuer: None,
    };
    let gitlab = SimulatedGitLab::new(config).map_err(|e| StartError::Demo(e.into()))?;
    let gitlab_task = gitlab.serve(gitlab_listener);
    let proxy = RunningProxy::start_on(&proxy_config(gitlab_addr, listen, args.admin_listen)?, Some(public)).await?;
    wait_warm(&proxy).await?;
    let all_passed = compare(&args, &gitlab, gitlab_addr, &issuer).await;
    if args.once {
        proxy.shutdown(Duration::from_secs(1), std::future::pending()).await;
        gitlab_task.abort();
        return Ok(if all_passed { 0 } else { 1 });
    }
    print_walkthrough(
        &issuer,
        gitlab_addr,
        proxy.admin_addr(),
        &gitlab.mint_ci_token(AUDIENCE),
    );
    let mut signals = crate::shutdown::Signals::install().map_err(StartError::io("cannot install signal handlers"))?;
    signals.recv().await;
    proxy.shutdown(Duration::from_secs(5), signals.recv()).await;
    gitlab_task.abort();
    Ok(0)
}

/// `demo --gitlab-only`: the simulated GitLab until a signal. Any address may
/// be used: it serves only public keys, and its private ones ship in this binary.
async fn serve_gitlab(profile: Profile, listen: SocketAddr, external_url: &str) -> Result<u8, StartError> {
    let mut signals = crate::shutdown::Signals::install().map_err(StartError::io("cannot install signal handlers"))?;
    let listener = bind(listen).await?;
    let addr = local_addr(&listener)?;
    let config = SimConfig {
        profile,
        external_url: external_url.to_owned(),
        token_issuer: None,
    };
    let gitlab = SimulatedGitLab::new(config).map_err(|e| StartError::Demo(e.into()))?;
    let task = gitlab.serve(listener);
    // A closed stdout (a supervisor that read the address) must not end the server.
    let _ = writeln!(
        std::io::stdout(),
        "Simulated GitLab {profile} on http://{addr}, external URL (issuer) {external_url}\n\
         Put the proxy in front: gitlab-oidc-proxy serve --upstream http://{addr} --external-url {external_url}"
    );
    signals.recv().await;
    task.abort();
    Ok(0)
}

async fn wait_warm(proxy: &RunningProxy) -> Result<(), StartError> {
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while !proxy.oidc_warm() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    ready.map_err(|_| StartError::Demo("the proxy did not fetch the OIDC documents within 10 s".into()))
}

/// The same tokens verified straight against GitLab, then through the proxy;
/// prints the table. True when every verification through the proxy passed.
async fn compare(args: &DemoSettings, gitlab: &SimulatedGitLab, gitlab_addr: SocketAddr, issuer: &str) -> bool {
    let priming = total_hits(gitlab);
    let tokens: Vec<String> = (0..args.jobs).map(|_| gitlab.mint_ci_token(AUDIENCE)).collect();
    let direct_base = format!("http://{gitlab_addr}");
    gitlab.reset_hits();
    let direct = run_jobs(&direct_base, issuer, &tokens).await;
    let direct = summarize(direct, total_hits(gitlab));
    gitlab.reset_hits();
    let proxied = run_jobs(issuer, issuer, &tokens).await;
    let proxied = summarize(proxied, total_hits(gitlab));
    print_table(args, issuer, &direct, &proxied, priming);
    proxied.passed == tokens.len()
}

/// The proxy's settings: the defaults, in front of the simulated GitLab.
fn proxy_config(gitlab: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> Result<Config, StartError> {
    let upstream = parse_upstream(&format!("http://{gitlab}")).map_err(|e| StartError::Demo(e.into()))?;
    let mut config = Config::new(upstream);
    config.listen = listen;
    config.admin_listen = admin;
    Ok(config)
}

fn total_hits(gitlab: &SimulatedGitLab) -> usize {
    [SimDoc::Discovery, SimDoc::OauthKeys, SimDoc::Jwks]
        .iter()
        .map(|d| gitlab.hits(*d))
        .sum()
}

fn summarize(mut runs: Vec<Verification>, gitlab_requests: usize) -> RunSummary {
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
            .map(str::to_owned)
            .unwrap_or_else(|| "(none seen)".into())
    };
    RunSummary {
        passed: runs.iter().filter(|v| v.result.is_ok()).count(),
        gitlab_requests,
        p50: pick(0.5),
        p99: pick(0.99),
        discovery_cache_control: first(|v| &v.discovery_cache_control),
        keys_cache_control: first(|v| &v.keys_cache_control),
        first_failure: runs
            .iter()
            .find_map(|v| v.result.as_ref().err().map(ToString::to_string)),
    }
}

fn print_table(args: &DemoSettings, issuer: &str, direct: &RunSummary, proxied: &RunSummary, priming: usize) {
    let jobs = args.jobs;
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!();
    println!(
        "Simulated GitLab {}, issuer {issuer}, {jobs} parallel STS-like verifications",
        args.profile
    );
    println!();
    println!(
        "{:<28} {:<58} {:<40}",
        "", "straight to GitLab", "through gitlab-oidc-proxy"
    );
    let row = |name: &str, a: String, b: String| println!("{name:<28} {a:<58} {b}");
    row(
        "verifications passed",
        format!("{}/{jobs}", direct.passed),
        format!("{}/{jobs}", proxied.passed),
    );
    row(
        "requests that reached GitLab",
        direct.gitlab_requests.to_string(),
        format!("{} (+{priming} when the proxy started)", proxied.gitlab_requests),
    );
    row("latency p50", ms(direct.p50), ms(proxied.p50));
    row("latency p99", ms(direct.p99), ms(proxied.p99));
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
    println!();
    for (name, run) in [("straight to GitLab", direct), ("through the proxy", proxied)] {
        if let Some(failure) = &run.first_failure {
            println!("first failure {name}: {failure}");
        }
    }
}

fn print_walkthrough(issuer: &str, gitlab: SocketAddr, admin: SocketAddr, token: &str) {
    println!();
    println!("Serving until Ctrl-C. Try:");
    println!("  curl -si http://{gitlab}/.well-known/openid-configuration   # GitLab itself: max-age=0, private");
    println!("  curl -si {issuer}/.well-known/openid-configuration           # the proxy: public, max-age=3600");
    println!("  curl -si {issuer}/-/jwks                                     # the united key set, CI key included");
    println!("  curl -s  http://{admin}/metrics | grep oidc");
    println!("  curl -s  -X POST -H 'Content-Type: application/json' http://{admin}/refresh");
    println!("A CI ID token signed by the simulated CI key (aud {AUDIENCE}):");
    println!("  {token}");
}
