//! `gitlab-oidc-proxy demo`: a simulated GitLab, the proxy in front of it, and
//! an STS-like verifier run in parallel, first straight against GitLab, then
//! through the proxy. Prints what changes, then serves for curl.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::app::RunningProxy;
use crate::config::{Config, parse_upstream};
use crate::error::StartError;
use crate::simulator::{Profile, SimConfig, SimDoc, SimulatedGitLab};

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
pub async fn run(args: DemoSettings) -> Result<u8, StartError> {
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let local = |l: &TcpListener| l.local_addr().map_err(StartError::io("reading a listener's address"));
    let gitlab_listener = bind(args.gitlab_listen).await?;
    let gitlab_addr = local(&gitlab_listener)?;
    // The issuer is the proxy's URL: bind first to know it.
    let public = bind(args.listen).await?;
    let listen = local(&public)?;
    let issuer = format!("http://{listen}");
    println!("Starting a simulated GitLab {} ...", args.profile);
    let config = SimConfig {
        profile: args.profile,
        external_url: issuer.clone(),
        token_issuer: None,
    };
    let gitlab = SimulatedGitLab::new(config).map_err(StartError::Demo)?;
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
    let upstream = parse_upstream(&format!("http://{gitlab}")).map_err(|e| StartError::Demo(e.to_string()))?;
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
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let expected = Expected {
            issuer,
            audience: AUDIENCE,
            now,
        };
        verify_jws(token, &keys, jwks_uri, &expected).map_err(|e| e.to_string())?;
        Ok(())
    }
    .await;
    seen.elapsed = started.elapsed();
    seen
}

/// Leeway on `exp` and `nbf`, jsonwebtoken's default (clock skew between hosts).
const LEEWAY_SECS: f64 = 60.0;

/// What a token must say to be accepted.
struct Expected<'a> {
    issuer: &'a str,
    audience: &'a str,
    /// Seconds since the Unix epoch.
    now: u64,
}

/// Why [`verify_jws`] refused a token.
#[derive(Debug, thiserror::Error)]
enum JwsError {
    #[error("token is not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("token has no kid")]
    NoKid,
    #[error("Couldn't retrieve verification key from your identity provider (kid {kid} not in {jwks_uri})")]
    UnknownKid { kid: String, jwks_uri: String },
    #[error("token rejected: {0}")]
    Rejected(#[from] Rejection),
}

/// A well-formed token that does not pass.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("alg {0} is not RS256")]
    Algorithm(String),
    #[error("key {0} has no usable RSA n and e")]
    Key(String),
    #[error("the signature does not verify with key {0}")]
    Signature(String),
    #[error("iss {0} is not the issuer")]
    Issuer(String),
    #[error("aud {0} does not include the audience")]
    Audience(String),
    #[error("no numeric {0}")]
    Missing(&'static str),
    #[error("expired (exp {0})")]
    Expired(f64),
    #[error("not valid yet (nbf {0})")]
    NotYetValid(f64),
}

/// Checks a compact JWS as STS does: RS256 only, signed by the key of its `kid`
/// in the key set `jwks` (fetched from `jwks_uri`), then `iss`, `aud`, `exp`
/// and `nbf`. Returns the claims.
fn verify_jws(token: &str, jwks: &Value, jwks_uri: &str, expected: &Expected) -> Result<Value, JwsError> {
    let [header_b64, payload_b64, signature_b64] = split_jws(token)?;
    let header = decode_json(header_b64, "the header is not base64url JSON")?;
    // The verifier, not the token, picks the algorithm.
    if header["alg"] != "RS256" {
        return Err(Rejection::Algorithm(header["alg"].to_string()).into());
    }
    let kid = header["kid"].as_str().ok_or(JwsError::NoKid)?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| JwsError::UnknownKid {
            kid: kid.to_owned(),
            jwks_uri: jwks_uri.to_owned(),
        })?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| JwsError::Malformed("the signature is not base64url"))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    check_signature(kid, key, signing_input.as_bytes(), &signature)?;
    let claims = decode_json(payload_b64, "the payload is not base64url JSON")?;
    check_claims(&claims, expected)?;
    Ok(claims)
}

fn split_jws(token: &str) -> Result<[&str; 3], JwsError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => Ok([header, payload, signature]),
        _ => Err(JwsError::Malformed("expected three dot-separated parts")),
    }
}

/// A base64url (unpadded) JSON object.
fn decode_json(part: &str, complaint: &'static str) -> Result<Value, JwsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwsError::Malformed(complaint))?;
    match serde_json::from_slice(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(JwsError::Malformed(complaint)),
    }
}

/// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) with the JWK `key`'s `n` and `e`.
fn check_signature(kid: &str, key: &Value, signing_input: &[u8], signature: &[u8]) -> Result<(), Rejection> {
    let member = |name: &str| key[name].as_str().and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
    let (Some(n), Some(e)) = (member("n"), member("e")) else {
        return Err(Rejection::Key(kid.to_owned()));
    };
    RsaPublicKeyComponents { n, e }
        .verify(&RSA_PKCS1_2048_8192_SHA256, signing_input, signature)
        .map_err(|_| Rejection::Signature(kid.to_owned()))
}

fn check_claims(claims: &Value, expected: &Expected) -> Result<(), Rejection> {
    if claims["iss"] != expected.issuer {
        return Err(Rejection::Issuer(claims["iss"].to_string()));
    }
    let audience_ok = match &claims["aud"] {
        Value::String(aud) => aud == expected.audience,
        Value::Array(auds) => auds.iter().any(|aud| aud == expected.audience),
        _ => false,
    };
    if !audience_ok {
        return Err(Rejection::Audience(claims["aud"].to_string()));
    }
    let now = expected.now as f64;
    let exp = claims["exp"].as_f64().ok_or(Rejection::Missing("exp"))?;
    if exp + LEEWAY_SECS < now {
        return Err(Rejection::Expired(exp));
    }
    match &claims["nbf"] {
        Value::Null => Ok(()),
        nbf => match nbf.as_f64() {
            Some(nbf) if nbf > now + LEEWAY_SECS => Err(Rejection::NotYetValid(nbf)),
            Some(_) => Ok(()),
            None => Err(Rejection::Missing("nbf")),
        },
    }
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
    println!("  curl -s  -X POST http://{admin}/refresh");
    println!("A CI ID token signed by the simulated CI key (aud {AUDIENCE}):");
    println!("  {token}");
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, EncodingKey};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://gitlab.example.com";
    const JWKS_URI: &str = "https://gitlab.example.com/oauth/discovery/keys";
    const KID: &str = "test-kid";
    const NOW: u64 = 1_700_000_000;
    /// One of the simulator's public demo keys; here it signs through `rsa` and
    /// `jsonwebtoken`, so the verifier is checked against an independent signer.
    const PRIVATE_JWK: &str = include_str!("simulator/keys/ci-0.json");

    fn private_jwk() -> Value {
        serde_json::from_str(PRIVATE_JWK).unwrap()
    }

    fn key_set() -> Value {
        let jwk = private_jwk();
        json!({"keys": [
            {"kty": "RSA", "kid": "another", "e": "AQAB", "n": "AQAB", "use": "sig", "alg": "RS256"},
            {"kty": "RSA", "kid": KID, "e": jwk["e"], "n": jwk["n"], "use": "sig", "alg": "RS256"},
        ]})
    }

    fn encoding_key() -> EncodingKey {
        let jwk = private_jwk();
        let int =
            |name: &str| rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap());
        let key = rsa::RsaPrivateKey::from_components(int("n"), int("e"), int("d"), vec![int("p"), int("q")]).unwrap();
        EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes())
    }

    fn header() -> Value {
        json!({"kid": KID, "typ": "JWT", "alg": "RS256"})
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": NOW,
            "nbf": NOW - 5,
            "exp": NOW + 3600,
            "sub": "project_path:my-group/my-project:ref_type:branch:ref:main",
        })
    }

    fn with(mut value: Value, member: &str, new: Value) -> Value {
        value[member] = new;
        value
    }

    /// `header.claims.signature`, RS256-signed whatever the header says.
    fn token(header: &Value, claims: &Value) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        signed(&format!("{}.{}", b64(header), b64(claims)))
    }

    /// `input.signature`.
    fn signed(input: &str) -> String {
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &encoding_key(), Algorithm::RS256).unwrap();
        format!("{input}.{signature}")
    }

    fn check(token: &str) -> Result<Value, JwsError> {
        let expected = Expected {
            issuer: ISSUER,
            audience: AUDIENCE,
            now: NOW,
        };
        verify_jws(token, &key_set(), JWKS_URI, &expected)
    }

    fn rejection(token: &str) -> Rejection {
        match check(token) {
            Err(JwsError::Rejected(why)) => why,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_good_token_passes() {
        let claims = check(&token(&header(), &claims())).unwrap();
        assert_eq!(claims["iss"], ISSUER);
        let listed = with(claims.clone(), "aud", json!(["other", AUDIENCE]));
        check(&token(&header(), &listed)).unwrap();
        // Within jsonwebtoken's default leeway of 60 s.
        let late = with(claims.clone(), "exp", json!(NOW - 59));
        check(&token(&header(), &late)).unwrap();
        let early = with(claims, "nbf", json!(NOW + 59));
        check(&token(&header(), &early)).unwrap();
    }

    #[test]
    fn a_flipped_signature_byte_fails() {
        let good = token(&header(), &claims());
        let (input, signature) = good.rsplit_once('.').unwrap();
        let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        signature[100] ^= 0x01;
        let bad = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature));
        let why = rejection(&bad);
        assert!(matches!(why, Rejection::Signature(_)), "{why:?}");
        assert_eq!(
            check(&bad).unwrap_err().to_string(),
            "token rejected: the signature does not verify with key test-kid"
        );
    }

    #[test]
    fn changed_claims_break_the_signature() {
        let good = token(&header(), &claims());
        let forged = token(&header(), &with(claims(), "sub", json!("someone else")));
        let [h, _, s] = split_jws(&good).unwrap();
        let [_, p, _] = split_jws(&forged).unwrap();
        assert!(matches!(rejection(&format!("{h}.{p}.{s}")), Rejection::Signature(_)));
    }

    #[test]
    fn a_wrong_issuer_fails() {
        let bad = token(&header(), &with(claims(), "iss", json!("https://evil.example")));
        assert!(matches!(rejection(&bad), Rejection::Issuer(iss) if iss == "\"https://evil.example\""));
        let none = token(&header(), &with(claims(), "iss", Value::Null));
        assert!(matches!(rejection(&none), Rejection::Issuer(_)));
    }

    #[test]
    fn a_wrong_audience_fails() {
        for aud in [
            json!("sts.example.com"),
            json!(["a", "b"]),
            json!([]),
            json!(7),
            Value::Null,
        ] {
            let bad = token(&header(), &with(claims(), "aud", aud.clone()));
            assert!(matches!(rejection(&bad), Rejection::Audience(_)), "{aud}");
        }
    }

    #[test]
    fn an_expired_or_premature_token_fails() {
        let expired = token(&header(), &with(claims(), "exp", json!(NOW - 61)));
        assert!(matches!(rejection(&expired), Rejection::Expired(_)));
        let premature = token(&header(), &with(claims(), "nbf", json!(NOW + 61)));
        assert!(matches!(rejection(&premature), Rejection::NotYetValid(_)));
        let endless = token(&header(), &with(claims(), "exp", Value::Null));
        assert!(matches!(rejection(&endless), Rejection::Missing("exp")));
        let odd = token(&header(), &with(claims(), "nbf", json!("yesterday")));
        assert!(matches!(rejection(&odd), Rejection::Missing("nbf")));
    }

    #[test]
    fn a_kid_not_in_the_set_fails() {
        let bad = token(&with(header(), "kid", json!("rotated-away")), &claims());
        assert_eq!(
            check(&bad).unwrap_err().to_string(),
            "Couldn't retrieve verification key from your identity provider \
             (kid rotated-away not in https://gitlab.example.com/oauth/discovery/keys)"
        );
        let kidless = token(&with(header(), "kid", Value::Null), &claims());
        assert!(matches!(check(&kidless), Err(JwsError::NoKid)));
        let unusable = token(&with(header(), "kid", json!("another")), &claims());
        assert!(matches!(rejection(&unusable), Rejection::Signature(_)));
    }

    #[test]
    fn alg_none_fails() {
        let none = with(header(), "alg", json!("none"));
        let signed = token(&none, &claims());
        assert!(matches!(rejection(&signed), Rejection::Algorithm(alg) if alg == "\"none\""));
        let (input, _) = signed.rsplit_once('.').unwrap();
        let unsigned = format!("{input}.");
        assert!(matches!(rejection(&unsigned), Rejection::Algorithm(_)));
        let hs256 = token(&with(header(), "alg", json!("HS256")), &claims());
        assert!(matches!(rejection(&hs256), Rejection::Algorithm(_)));
    }

    #[test]
    fn a_malformed_token_fails() {
        let good = token(&header(), &claims());
        let [h, p, s] = split_jws(&good).unwrap();
        let array = URL_SAFE_NO_PAD.encode("[]");
        for bad in [
            String::new(),
            format!("{h}.{p}"),
            format!("{good}.{s}"),
            format!("{h}=.{p}.{s}"),
            format!("{array}.{p}.{s}"),
            format!("{h}.{p}.{s}!"),
            signed(&format!("{h}.{array}")),
            signed(&format!("{h}.bm90IGpzb24")),
        ] {
            assert!(
                matches!(check(&bad), Err(JwsError::Malformed(_))),
                "{bad}: {:?}",
                check(&bad)
            );
        }
    }
}
