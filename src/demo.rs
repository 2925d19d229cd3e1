//! `gitlab-oidc-proxy demo`: a simulated GitLab, the proxy in front of it, and
//! an STS-like verifier run in parallel, first straight against GitLab, then
//! through the proxy. Prints what changes, then serves for curl.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::app::RunningProxy;
use crate::config::{Cli, Command};
use crate::simulator::{Profile, SimConfig, SimDoc, SimulatedGitLab};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Which GitLab to simulate (reference profiles).
    #[arg(long, value_name = "VERSION", default_value = "14.4")]
    pub profile: Profile,

    /// Verifications run in parallel, like CI jobs assuming a role at once.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub jobs: u32,

    /// Exit after the table: 0 only if every verification through the proxy passed.
    #[arg(long)]
    pub once: bool,

    /// The proxy's public listener (its URL is the issuer).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The proxy's admin listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// The simulated GitLab's listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub gitlab_listen: SocketAddr,
}

/// The audience the demo's tokens carry, as an AWS role's trust policy expects.
const AUDIENCE: &str = "sts.amazonaws.com";

/// What one verification saw.
struct Verification {
    result: Result<(), String>,
    elapsed: Duration,
    discovery_cache_control: String,
    keys_cache_control: String,
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
pub async fn run(args: DemoArgs) -> Result<u8, String> {
    let gitlab_listener = TcpListener::bind(args.gitlab_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.gitlab_listen))?;
    let gitlab_addr = gitlab_listener.local_addr().map_err(|e| e.to_string())?;
    // The issuer is the proxy's URL: bind first to know it.
    let public = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let listen = public.local_addr().map_err(|e| e.to_string())?;
    let issuer = format!("http://{listen}");
    println!("Starting a simulated GitLab {} ...", args.profile);
    let config = SimConfig {
        profile: args.profile,
        external_url: issuer.clone(),
        token_issuer: None,
    };
    let gitlab = SimulatedGitLab::new(config)?;
    let gitlab_task = gitlab.serve(gitlab_listener);

    let serve_args = serve_args(gitlab_addr, listen, args.admin_listen)?;
    let proxy = RunningProxy::start_with(&serve_args, Some(public))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while !proxy.cache.warm() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if ready.is_err() {
        return Err("the proxy did not fetch the OIDC documents within 10 s".into());
    }
    let priming = total_hits(&gitlab);

    let tokens: Vec<String> = (0..args.jobs).map(|_| gitlab.mint_ci_token(AUDIENCE)).collect();
    let direct_base = format!("http://{gitlab_addr}");
    gitlab.reset_hits();
    let direct = run_jobs(&direct_base, &issuer, &tokens).await;
    let direct = summarize(direct, total_hits(&gitlab));
    gitlab.reset_hits();
    let proxied = run_jobs(&issuer, &issuer, &tokens).await;
    let proxied = summarize(proxied, total_hits(&gitlab));

    print_table(&args, &issuer, &direct, &proxied, priming);
    let all_passed = proxied.passed == tokens.len();
    if args.once {
        proxy.shutdown(Duration::from_secs(1), std::future::pending()).await;
        gitlab_task.abort();
        return Ok(if all_passed { 0 } else { 1 });
    }
    print_walkthrough(&issuer, gitlab_addr, proxy.admin, &gitlab.mint_ci_token(AUDIENCE));
    let mut signals = crate::shutdown::Signals::install().map_err(|e| e.to_string())?;
    signals.recv().await;
    proxy.shutdown(Duration::from_secs(5), signals.recv()).await;
    gitlab_task.abort();
    Ok(0)
}

fn serve_args(gitlab: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> Result<crate::config::ServeArgs, String> {
    let argv = [
        "gitlab-oidc-proxy".to_owned(),
        "serve".into(),
        "--upstream".into(),
        format!("http://{gitlab}"),
        "--listen".into(),
        listen.to_string(),
        "--admin-listen".into(),
        admin.to_string(),
    ];
    let cli = <Cli as clap::Parser>::try_parse_from(argv).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(args) => Ok(*args),
        _ => Err("internal: demo built a non-serve command".into()),
    }
}

fn total_hits(gitlab: &SimulatedGitLab) -> usize {
    [SimDoc::Discovery, SimDoc::OauthKeys, SimDoc::Jwks]
        .iter()
        .map(|d| gitlab.hits(*d))
        .sum()
}

async fn run_jobs(base: &str, issuer: &str, tokens: &[String]) -> Vec<Verification> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let jobs = tokens.iter().map(|token| {
        let (client, base, issuer, token) = (client.clone(), base.to_owned(), issuer.to_owned(), token.clone());
        tokio::spawn(async move { verify(&client, &base, &issuer, &token).await })
    });
    let mut out = Vec::with_capacity(tokens.len());
    for job in jobs.collect::<Vec<_>>() {
        if let Ok(v) = job.await {
            out.push(v);
        }
    }
    out
}

/// What AWS STS does with a web identity token: discovery at the issuer,
/// `jwks_uri`, the key by `kid`, then signature, `iss` and `aud`.
async fn verify(client: &Client<HttpConnector, Empty<Bytes>>, base: &str, issuer: &str, token: &str) -> Verification {
    let started = Instant::now();
    let mut seen = Verification {
        result: Ok(()),
        elapsed: Duration::ZERO,
        discovery_cache_control: String::new(),
        keys_cache_control: String::new(),
    };
    seen.result = async {
        let (discovery, cc) = get_json(client, &format!("{base}/.well-known/openid-configuration")).await?;
        seen.discovery_cache_control = cc;
        if discovery["issuer"] != issuer {
            return Err(format!(
                "discovery issuer {} is not the token's {issuer}",
                discovery["issuer"]
            ));
        }
        let jwks_uri = discovery["jwks_uri"].as_str().ok_or("discovery has no jwks_uri")?;
        let (keys, cc) = get_json(client, jwks_uri).await?;
        seen.keys_cache_control = cc;
        let kid = jsonwebtoken::decode_header(token)
            .map_err(|e| e.to_string())?
            .kid
            .ok_or("token has no kid")?;
        let key = keys["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
            .ok_or_else(|| {
                format!("Couldn't retrieve verification key from your identity provider (kid {kid} not in {jwks_uri})")
            })?;
        let (n, e) = (
            key["n"].as_str().unwrap_or_default(),
            key["e"].as_str().unwrap_or_default(),
        );
        let decoding = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[AUDIENCE]);
        jsonwebtoken::decode::<Value>(token, &decoding, &validation).map_err(|e| format!("token rejected: {e}"))?;
        Ok(())
    }
    .await;
    seen.elapsed = started.elapsed();
    seen
}

async fn get_json(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> Result<(Value, String), String> {
    let req = Request::get(url)
        .body(Empty::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let cache_control = resp
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("{url}: status {status}"));
    }
    let json = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON ({e})"))?;
    Ok((json, cache_control))
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
        first_failure: runs.iter().find_map(|v| v.result.as_ref().err().cloned()),
    }
}

fn print_table(args: &DemoArgs, issuer: &str, direct: &RunSummary, proxied: &RunSummary, priming: usize) {
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
    println!("  curl -s  -X POST http://{admin}/refresh");
    println!("A CI ID token signed by the simulated CI key (aud {AUDIENCE}):");
    println!("  {token}");
}
