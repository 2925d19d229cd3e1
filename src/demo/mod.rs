//! `gitlab-oidc-proxy demo`: a simulated GitLab, the proxy in front of it, and
//! an STS-like verifier run in parallel, first straight against GitLab, then
//! through the proxy. Prints what changes, then serves for curl.
//!
//! GitLab answers from a bounded pool of Rails workers, part of them busy with
//! users; STS caches as `Cache-Control` allows and waits 5 s per fetch. So the
//! direct column fails where those numbers say it must, on every version.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use crate::app::{RunningProxy, bind, local_addr};
use crate::config::{Config, ConfigError, parse_upstream};
use crate::error::StartError;
use crate::simulator::{Profile, RailsSettings, SimConfig, SimDoc, SimulatedGitLab};

mod queueing;
mod sts;
mod sts_cache;
mod table;

use queueing::Model;
use sts::{AUDIENCE, FETCH_LIMIT, run_jobs};
use table::{Assumptions, Column};

/// The most jobs the threshold line looks at (`--jobs`' own limit).
const THRESHOLD_CAP: usize = 10_000;

/// What to simulate and where to listen (the `demo` subcommand's options).
#[derive(Debug, Clone)]
pub struct DemoSettings {
    /// Which GitLab to simulate (reference profiles).
    pub profile: Profile,
    /// Verifications run in parallel, like CI jobs assuming a role at once.
    pub jobs: u32,
    /// The jobs call STS evenly spread over this time.
    pub jobs_spread: Duration,
    /// The simulated GitLab's Rails workers, their users' load and service time.
    pub rails: RailsSettings,
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
    let RailsSettings { workers, busy, .. } = args.rails;
    if busy >= workers {
        return Err(ConfigError::DemoNoFreeWorker { busy, workers }.into());
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
    // Before the proxy starts: its own fetches from GitLab wait for workers too.
    gitlab.set_rails(Some(args.rails));
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
    println!(
        "Running {} STS-like verifications straight to GitLab, then through the proxy ...",
        args.jobs
    );
    gitlab.reset_hits();
    let direct = run_jobs(&direct_base, issuer, &tokens, args.jobs_spread).await;
    let direct = Column::new(direct, total_hits(gitlab));
    gitlab.reset_hits();
    let proxied = run_jobs(issuer, issuer, &tokens, args.jobs_spread).await;
    let proxied = Column::new(proxied, total_hits(gitlab));
    println!();
    println!("Simulated GitLab {}, issuer {issuer}", args.profile);
    table::print_assumptions(&Assumptions {
        workers: args.rails.workers,
        busy: args.rails.busy,
        service_time: args.rails.service_time,
        limit: FETCH_LIMIT,
        jobs: args.jobs,
        spread: args.jobs_spread,
    });
    table::print(&direct, &proxied, priming);
    let model = direct_model(args);
    table::print_threshold(
        model.first_failing(THRESHOLD_CAP),
        THRESHOLD_CAP,
        model.workers,
        model.service_time,
    );
    if !args.profile.oauth_keys_include_ci() {
        println!(
            "On {} every direct verification fails anyway: discovery's jwks_uri lacks the CI key.",
            args.profile
        );
    }
    table::print_failures(&direct, &proxied);
    proxied.all_passed()
}

/// The direct path as arithmetic: the free workers, and whether STS may keep
/// this GitLab's key set (discovery it may never keep).
fn direct_model(args: &DemoSettings) -> Model {
    Model {
        workers: args.rails.free_workers(),
        service_time: args.rails.service_time,
        limit: FETCH_LIMIT,
        spread: args.jobs_spread,
        keys_cacheable: sts_cache::lifetime(Some(args.profile.keys_cache_control()), None).is_some(),
    }
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
