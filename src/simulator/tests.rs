//! Real sockets on 127.0.0.1, hyper-util's legacy client; the keys are the fixed
//! embedded ones, checked with `jsonwebtoken` and `rsa`, never with ring.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::Digest;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::keys::{CI_KEY_BITS, OIDC_KEY_BITS, thumbprint};
use super::*;

struct Running {
    sim: Arc<SimulatedGitLab>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A simulator on an ephemeral port; `external_url` None = `http://<its address>`.
async fn start(profile: Profile, external_url: Option<&str>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = SimulatedGitLab::new(SimConfig {
        profile,
        external_url: external_url.map_or_else(|| format!("http://{addr}"), str::to_owned),
        token_issuer: None,
    })
    .unwrap();
    let task = sim.serve(listener);
    Running { sim, addr, task }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn kids(&self) -> Vec<String> {
        self.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    }
}

async fn try_send(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
    // A fresh client each time: no pooled connection survives a fault.
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("{e:?}"))?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

async fn get(run: &Running, path: &str) -> Answer {
    send(run, Method::GET, path, &[]).await
}

async fn send(run: &Running, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    try_send(run.addr, method, path, headers).await.unwrap()
}

fn object_keys(value: &Value) -> Vec<&str> {
    value.as_object().unwrap().keys().map(String::as_str).collect()
}

const KEYS: &str = "/oauth/discovery/keys";
const JWKS: &str = "/-/jwks";
const DISCOVERY: &str = "/.well-known/openid-configuration";

#[test]
fn profile_names_parse_and_print() {
    use clap::ValueEnum;
    for (profile, name) in Profile::ALL.into_iter().zip(["14.4", "16.6", "16.8", "17.0"]) {
        assert_eq!(profile.to_string(), name);
        assert_eq!(name.parse::<Profile>().unwrap(), profile);
        assert_eq!(<Profile as ValueEnum>::from_str(name, false).unwrap(), profile);
    }
    assert!("15.0".parse::<Profile>().is_err());
}

#[test]
fn rejects_unusable_external_urls() {
    for url in ["ftp://gitlab.example.com", "gitlab.example.com", "http://", "not a url"] {
        let config = SimConfig {
            profile: Profile::V17_0,
            external_url: url.to_owned(),
            token_issuer: None,
        };
        assert!(SimulatedGitLab::new(config).is_err(), "{url}");
    }
}

#[tokio::test]
async fn key_sets_per_profile() {
    let runs = [
        (Profile::V14_4, false, Some(true), "max-age=0, private, must-revalidate"),
        (Profile::V16_6, true, Some(true), "max-age=0, private, must-revalidate"),
        (
            Profile::V16_8,
            true,
            Some(true),
            "max-age=86400, public, must-revalidate, no-transform=true",
        ),
        (
            Profile::V17_0,
            true,
            None,
            "max-age=86400, public, must-revalidate, no-transform=true",
        ),
    ];
    for (profile, keys_have_ci, jwks_has_ci, cache_control) in runs {
        let run = start(profile, None).await;
        let (oidc, ci) = (run.sim.oidc_kid(), run.sim.ci_kid());
        assert_ne!(oidc, ci);
        let expect = |with_ci: bool| {
            let mut kids = vec![oidc.clone()];
            if with_ci {
                kids.push(ci.clone());
            }
            kids
        };

        let keys = get(&run, KEYS).await;
        assert_eq!(keys.status, StatusCode::OK, "{profile}");
        assert_eq!(keys.kids(), expect(keys_have_ci), "{profile} keys");
        assert_eq!(keys.header("content-type"), "application/json; charset=utf-8");
        assert_eq!(keys.header("cache-control"), cache_control, "{profile}");

        let jwks = get(&run, JWKS).await;
        match jwks_has_ci {
            Some(with_ci) => {
                assert_eq!(jwks.status, StatusCode::OK, "{profile}");
                assert_eq!(jwks.kids(), expect(with_ci), "{profile} jwks");
                assert_eq!(jwks.header("cache-control"), cache_control, "{profile}");
            }
            None => {
                assert_eq!(jwks.status, StatusCode::NOT_FOUND, "{profile}");
                assert!(jwks.header("content-type").starts_with("text/html"));
                assert!(String::from_utf8_lossy(&jwks.body).contains("<html"));
            }
        }

        let discovery = get(&run, DISCOVERY).await;
        assert_eq!(
            discovery.header("cache-control"),
            "max-age=0, private, must-revalidate",
            "{profile}: discovery is never cacheable"
        );
    }
}

#[tokio::test]
async fn jwk_members_and_kid_thumbprint() {
    let run = start(Profile::V16_6, None).await;
    let keys = get(&run, KEYS).await;
    let body = keys.json();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    for key in keys {
        assert_eq!(object_keys(key), ["kty", "kid", "e", "n", "use", "alg"]);
        assert_eq!(key["kty"], "RSA");
        assert_eq!(key["e"], "AQAB");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "RS256");
        let n = key["n"].as_str().unwrap();
        let modulus = URL_SAFE_NO_PAD.decode(n).unwrap();
        assert_eq!(modulus.len(), OIDC_KEY_BITS / 8, "RSA 2048");
        // RFC 7638, recomputed independently of the simulator's helper.
        let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()));
        assert_eq!(key["kid"], kid.as_str());
        assert_eq!(kid.len(), 43);
    }
    assert_eq!(keys[0]["kid"], run.sim.oidc_kid().as_str());
    assert_eq!(keys[1]["kid"], run.sim.ci_kid().as_str());
    assert_eq!(
        URL_SAFE_NO_PAD.decode(keys[1]["n"].as_str().unwrap()).unwrap().len(),
        CI_KEY_BITS / 8
    );
}

#[tokio::test]
async fn discovery_order_and_request_derived_urls() {
    let run = start(Profile::V17_0, Some("https://gitlab.example.com/gitlab/")).await;
    let path = format!("/gitlab{DISCOVERY}");

    let forged = send(&run, Method::GET, &path, &[("x-forwarded-host", "evil.example")]).await;
    assert_eq!(forged.status, StatusCode::OK);
    assert!(!forged.body.contains(&b' '), "compact JSON");
    let doc = forged.json();
    assert_eq!(
        object_keys(&doc),
        [
            "issuer",
            "authorization_endpoint",
            "token_endpoint",
            "revocation_endpoint",
            "introspection_endpoint",
            "userinfo_endpoint",
            "jwks_uri",
            "scopes_supported",
            "response_types_supported",
            "response_modes_supported",
            "grant_types_supported",
            "token_endpoint_auth_methods_supported",
            "subject_types_supported",
            "id_token_signing_alg_values_supported",
            "claim_types_supported",
            "claims_supported",
            "code_challenge_methods_supported",
        ]
    );
    assert_eq!(doc["issuer"], "https://gitlab.example.com/gitlab");
    for (member, endpoint) in [
        ("authorization_endpoint", "/oauth/authorize"),
        ("token_endpoint", "/oauth/token"),
        ("revocation_endpoint", "/oauth/revoke"),
        ("introspection_endpoint", "/oauth/introspect"),
        ("userinfo_endpoint", "/oauth/userinfo"),
        ("jwks_uri", "/oauth/discovery/keys"),
    ] {
        assert_eq!(doc[member], format!("https://evil.example/gitlab{endpoint}"));
    }
    assert_eq!(doc["response_types_supported"], json!(["code"]));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["plain", "S256"]));
    assert!(forged.headers.get(header::SET_COOKIE).is_none());

    // Host alone, and X-Forwarded-Proto; Rails takes the last X-Forwarded-Host.
    let plain = send(&run, Method::GET, &path, &[("x-forwarded-proto", "http")]).await;
    assert_eq!(
        plain.json()["jwks_uri"],
        format!("http://{}/gitlab/oauth/discovery/keys", run.addr)
    );
    let chained = send(
        &run,
        Method::GET,
        &path,
        &[("x-forwarded-host", "a.example, b.example")],
    )
    .await;
    assert_eq!(chained.json()["token_endpoint"], "https://b.example/gitlab/oauth/token");
    // Different bodies, different validators.
    assert_ne!(forged.header("etag"), plain.header("etag"));

    // Outside the relative URL root there is no GitLab.
    assert_eq!(get(&run, DISCOVERY).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&run, "/gitlabx/-/health").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&run, "/gitlab/-/jwks").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&run, &format!("/gitlab{KEYS}")).await.kids().len(), 2);
}

#[tokio::test]
async fn legacy_discovery_on_14_4() {
    let run = start(Profile::V14_4, None).await;
    let answer = get(&run, DISCOVERY).await;
    let doc = answer.json();
    assert_eq!(doc["response_types_supported"], json!(["code", "token"]));
    assert!(
        doc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("implicit"))
    );
    assert!(doc.get("code_challenge_methods_supported").is_none());
    assert_eq!(doc["issuer"], format!("http://{}", run.addr));
    let cookie = answer.header("set-cookie");
    assert!(cookie.starts_with("_gitlab_session="), "{cookie}");
    assert!(cookie.ends_with("; path=/; HttpOnly"), "{cookie}");
    // Only discovery sets it.
    assert!(get(&run, KEYS).await.headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn minted_token_verifies_against_served_jwks() {
    let run = start(Profile::V16_6, None).await;
    let token = run.sim.mint_ci_token("https://sts.amazonaws.com");

    let header_json = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(header_json).unwrap(),
        format!(r#"{{"kid":"{}","typ":"JWT","alg":"RS256"}}"#, run.sim.ci_kid())
    );

    let jwks = get(&run, JWKS).await.json();
    let kid = jsonwebtoken::decode_header(&token).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's kid is served");
    let key = DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
    let issuer = format!("http://{}", run.addr);
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&issuer]);
    validation.set_audience(&["https://sts.amazonaws.com"]);
    let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
    let claims = data.claims;
    assert_eq!(
        object_keys(&claims),
        [
            "namespace_id",
            "namespace_path",
            "project_id",
            "project_path",
            "user_id",
            "user_login",
            "user_email",
            "pipeline_id",
            "pipeline_source",
            "job_id",
            "ref",
            "ref_type",
            "ref_path",
            "ref_protected",
            "runner_id",
            "runner_environment",
            "sha",
            "project_visibility",
            "ci_config_ref_uri",
            "ci_config_sha",
            "jti",
            "iss",
            "iat",
            "nbf",
            "exp",
            "sub",
            "aud",
        ]
    );
    assert_eq!(
        claims["sub"],
        "project_path:my-group/my-project:ref_type:branch:ref:main"
    );
    assert!(claims["runner_id"].is_u64());
    assert!(claims["project_id"].is_string());
    let iat = claims["iat"].as_u64().unwrap();
    assert_eq!(claims["nbf"].as_u64().unwrap(), iat - 5);
    assert_eq!(claims["exp"].as_u64().unwrap(), iat + 3600);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);

    // The wrong audience or issuer is refused.
    let mut wrong = Validation::new(Algorithm::RS256);
    wrong.set_audience(&["https://vault.example.com"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &key, &wrong).is_err());
    let mut wrong = Validation::new(Algorithm::RS256);
    wrong.set_issuer(&[format!("{issuer}/gitlab")]);
    wrong.set_audience(&["https://sts.amazonaws.com"]);
    assert!(jsonwebtoken::decode::<Value>(&token, &key, &wrong).is_err());
}

#[test]
fn token_issuer_drops_the_relative_root_unless_configured() {
    let config = |token_issuer: Option<&str>| SimConfig {
        profile: Profile::V17_0,
        external_url: "https://example.com/gitlab".to_owned(),
        token_issuer: token_issuer.map(str::to_owned),
    };
    let iss = |sim: &SimulatedGitLab| {
        let token = sim.mint_ci_token("aud");
        jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
            .unwrap()
            .claims["iss"]
            .clone()
    };
    let legacy = SimulatedGitLab::new(config(None)).unwrap();
    assert_eq!(legacy.issuer(), "https://example.com/gitlab");
    assert_eq!(iss(&legacy), "https://example.com");
    let fixed = SimulatedGitLab::new(config(Some("https://example.com/gitlab"))).unwrap();
    assert_eq!(iss(&fixed), "https://example.com/gitlab");
    let claims = jsonwebtoken::dangerous::insecure_decode::<Value>(fixed.mint_ci_token("aud"))
        .unwrap()
        .claims;
    assert_eq!(
        claims["ci_config_ref_uri"],
        "example.com/gitlab/my-group/my-project//.gitlab-ci.yml@refs/heads/main"
    );
}

#[tokio::test]
async fn etag_304_and_head() {
    let run = start(Profile::V16_8, None).await;
    let first = get(&run, KEYS).await;
    let etag = first.header("etag").to_owned();
    let digest = sha2::Sha256::digest(&first.body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(etag, format!("W/\"{}\"", &hex[..32]));

    for tag in [etag.as_str(), etag.trim_start_matches("W/"), "\"nope\", W/\"x\"", "*"] {
        let again = send(&run, Method::GET, KEYS, &[("if-none-match", tag)]).await;
        if tag.contains("nope") {
            assert_eq!(again.status, StatusCode::OK);
        } else {
            assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{tag}");
            assert!(again.body.is_empty());
            assert_eq!(again.header("etag"), etag);
            assert_eq!(again.header("cache-control"), Profile::V16_8.keys_cache_control());
        }
    }

    let head = send(&run, Method::HEAD, KEYS, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), first.body.len().to_string());
    assert_eq!(head.header("etag"), etag);
    assert_eq!(head.header("content-type"), "application/json; charset=utf-8");

    for name in ["x-request-id", "x-runtime"] {
        assert!(!first.header(name).is_empty(), "{name}");
    }
    assert_eq!(first.header("x-content-type-options"), "nosniff");
    assert_eq!(first.header("x-frame-options"), "SAMEORIGIN");
}

#[tokio::test]
async fn cors_on_discovery_and_oauth_keys() {
    let run = start(Profile::V16_6, None).await;
    for path in [DISCOVERY, KEYS] {
        let without = get(&run, path).await;
        assert_eq!(without.header("vary"), "Origin");
        assert!(without.headers.get("access-control-allow-origin").is_none());
        let with = send(&run, Method::GET, path, &[("origin", "https://a.example")]).await;
        assert_eq!(with.header("vary"), "Origin");
        assert_eq!(with.header("access-control-allow-origin"), "*");
        assert_eq!(with.header("access-control-allow-methods"), "GET, HEAD");
    }
    let preflight = send(
        &run,
        Method::OPTIONS,
        KEYS,
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(preflight.status, StatusCode::OK);
    assert_eq!(preflight.header("access-control-allow-origin"), "*");
    let post = send(&run, Method::POST, KEYS, &[]).await;
    assert_eq!(post.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn faults_hit_the_named_document_only() {
    let run = start(Profile::V16_6, None).await;
    let normal = get(&run, KEYS).await;

    run.sim.set_fault(SimDoc::OauthKeys, Fault::Status(500));
    let failed = get(&run, KEYS).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(failed.header("content-type").starts_with("text/html"));
    assert!(failed.headers.get("etag").is_none());
    assert_eq!(get(&run, JWKS).await.status, StatusCode::OK);
    assert_eq!(get(&run, DISCOVERY).await.status, StatusCode::OK);

    run.sim.set_fault(SimDoc::OauthKeys, Fault::Truncated);
    let truncated = get(&run, KEYS).await;
    assert_eq!(truncated.status, StatusCode::OK);
    assert_eq!(truncated.header("content-type"), "application/json; charset=utf-8");
    assert_eq!(truncated.body, normal.body.slice(..normal.body.len() / 2));
    assert!(serde_json::from_slice::<Value>(&truncated.body).is_err());

    run.sim.set_fault(SimDoc::OauthKeys, Fault::HangUp);
    let hung = try_send(run.addr, Method::GET, KEYS, &[]).await;
    assert!(hung.is_err(), "expected a closed connection");
    assert_eq!(get(&run, JWKS).await.status, StatusCode::OK);

    run.sim.set_fault(SimDoc::Jwks, Fault::PrivateKeyMembers);
    let leaked = get(&run, JWKS).await.json();
    for key in leaked["keys"].as_array().unwrap() {
        for member in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(key[member].is_string(), "{member}");
        }
    }

    run.sim.set_fault(SimDoc::Jwks, Fault::EmptyKeys);
    assert_eq!(get(&run, JWKS).await.body, r#"{"keys":[]}"#);

    run.sim.set_fault(SimDoc::Discovery, Fault::NotAnObject);
    assert_eq!(get(&run, DISCOVERY).await.body, "[]");

    run.sim.set_fault(SimDoc::Discovery, Fault::Oversized);
    let big = get(&run, DISCOVERY).await;
    assert!(big.body.len() > 1024 * 1024);
    assert_eq!(big.json()["jwks_uri"], format!("http://{}{KEYS}", run.addr));

    run.sim.set_fault(SimDoc::Discovery, Fault::SignInPage);
    let page = get(&run, DISCOVERY).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&page.body).contains("Sign in"));

    run.sim.set_fault(SimDoc::Discovery, Fault::Status(302));
    let redirect = get(&run, DISCOVERY).await;
    assert_eq!(redirect.status, StatusCode::FOUND);
    assert_eq!(
        redirect.header("location"),
        format!("http://{}/users/sign_in", run.addr)
    );

    run.sim
        .set_fault(SimDoc::OauthKeys, Fault::Delay(Duration::from_millis(150)));
    let started = Instant::now();
    let slow = get(&run, KEYS).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(slow.body, normal.body);

    for doc in SimDoc::ALL {
        run.sim.set_fault(doc, Fault::None);
    }
    assert_eq!(get(&run, KEYS).await.body, normal.body);
}

#[tokio::test]
async fn hits_count_every_arrival() {
    let run = start(Profile::V17_0, None).await;
    let etag = get(&run, KEYS).await.header("etag").to_owned();
    send(&run, Method::GET, KEYS, &[("if-none-match", &etag)]).await;
    send(&run, Method::HEAD, KEYS, &[]).await;
    get(&run, "/oauth/discovery/keys?x=1").await;
    run.sim.set_fault(SimDoc::OauthKeys, Fault::HangUp);
    let _ = try_send(run.addr, Method::GET, KEYS, &[]).await;
    get(&run, JWKS).await; // a 404 on 17.0, still a hit
    get(&run, "/-/health").await;

    assert_eq!(run.sim.hits(SimDoc::OauthKeys), 5);
    assert_eq!(run.sim.hits(SimDoc::Jwks), 1);
    assert_eq!(run.sim.hits(SimDoc::Discovery), 0);
    run.sim.reset_hits();
    assert!(SimDoc::ALL.iter().all(|d| run.sim.hits(*d) == 0));
}

#[tokio::test]
async fn rotate_ci_key_replaces_the_key_at_once() {
    let run = start(Profile::V16_8, None).await;
    let other = start(Profile::V16_8, None).await;
    let initial = run.sim.ci_kid();
    let mut seen = vec![initial.clone()];
    for _ in 0..CI_KEY_POOL {
        let before = get(&run, KEYS).await;
        let new = run.sim.rotate_ci_key();
        assert_ne!(&new, seen.last().unwrap(), "every rotation changes the kid");
        assert_eq!(run.sim.ci_kid(), new);
        let after = get(&run, KEYS).await;
        assert_eq!(after.kids(), [run.sim.oidc_kid(), new.clone()]);
        assert_ne!(before.header("etag"), after.header("etag"));
        let token = run.sim.mint_ci_token("aud");
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().kid, Some(new.clone()));
        let jwk = &after.json()["keys"][1];
        let key = DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["aud"]);
        jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
        seen.push(new);
    }
    // A full cycle visits every key of the pool once, then wraps around.
    assert_eq!(seen.last(), Some(&initial));
    assert_eq!(seen[..CI_KEY_POOL].iter().collect::<HashSet<_>>().len(), CI_KEY_POOL);
    assert_eq!(other.sim.ci_kid(), initial, "rotation is per instance");
}

#[tokio::test]
async fn other_routes() {
    let run = start(Profile::V16_6, None).await;
    let health = get(&run, "/-/health").await;
    assert_eq!(
        (health.status, health.body.as_ref()),
        (StatusCode::OK, &b"GitLab OK"[..])
    );
    for path in ["/-/readiness", "/-/liveness?all=1"] {
        let probe = get(&run, path).await;
        assert_eq!(probe.status, StatusCode::OK);
        assert_eq!(probe.json(), json!({"status": "ok"}));
    }
    let home = get(&run, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.header("content-type").starts_with("text/html"));
    let missing = get(&run, "/api/v4/projects").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.header("content-type").starts_with("text/html"));
    assert_eq!(get(&run, "/oauth/discovery/keys/").await.kids().len(), 2);
    assert_eq!(
        get(&run, "/.well-known/openid-configuration?foo=bar").await.status,
        StatusCode::OK
    );
}

#[test]
fn embedded_keys_load_and_sign() {
    let pool = keys::pool().unwrap();
    let all: Vec<&KeyMaterial> = std::iter::once(&pool.oidc)
        .chain((0..CI_KEY_POOL).map(|i| pool.ci(i)))
        .collect();
    let kids: HashSet<&str> = all.iter().map(|k| k.kid()).collect();
    assert_eq!(kids.len(), CI_KEY_POOL + 1, "distinct kids");
    for key in all {
        let jwk = key.public_jwk();
        let (n, e) = (jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap());
        assert_eq!(key.kid(), thumbprint(e, n));
        let message = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZW1vIn0";
        let signature = key.sign(message).unwrap();
        let decoding = DecodingKey::from_rsa_components(n, e).unwrap();
        assert!(jsonwebtoken::crypto::verify(&signature, message, &decoding, Algorithm::RS256).unwrap());
        assert!(!jsonwebtoken::crypto::verify(&signature, b"other", &decoding, Algorithm::RS256).unwrap());
        check_private_jwk(key.private_jwk());
    }
}

/// The leaked private members are a consistent RSA 2048 key (checked by `rsa`).
fn check_private_jwk(jwk: &Value) {
    let int = |name: &str| rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap());
    let key = rsa::RsaPrivateKey::from_components(int("n"), int("e"), int("d"), vec![int("p"), int("q")]).unwrap();
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    assert_eq!(key.size() * 8, CI_KEY_BITS);
    assert_eq!(key.dp(), Some(&int("dp")));
    assert_eq!(key.dq(), Some(&int("dq")));
    assert_eq!(key.crt_coefficient(), Some(int("qi")));
    assert_eq!(
        object_keys(jwk),
        ["kty", "kid", "e", "n", "d", "p", "q", "dp", "dq", "qi", "use", "alg"]
    );
}

#[tokio::test]
async fn serves_on_a_unix_socket_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workhorse.sock");
    let sim = SimulatedGitLab::new(SimConfig {
        profile: Profile::V17_0,
        external_url: "https://gitlab.example.com".to_owned(),
        token_issuer: None,
    })
    .unwrap();
    let task = sim.serve_unix(UnixListener::bind(&path).unwrap());
    let mut stream = UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /-/jwks HTTP/1.1\r\nHost: gitlab.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 404 "), "{out}");
    assert_eq!(sim.hits(SimDoc::Jwks), 1);
    task.abort();
}

/// One free worker of three (two busy with users), 100 ms each: concurrent
/// requests finish one per service time, in turn.
#[tokio::test]
async fn rails_workers_queue_requests_beyond_the_free_ones() {
    let run = start(Profile::V17_0, None).await;
    let service_time = Duration::from_millis(100);
    let settings = RailsSettings {
        workers: 3,
        busy: 2,
        service_time,
    };
    run.sim.set_rails(Some(settings));
    assert_eq!(run.sim.rails(), Some(settings));
    let started = Instant::now();
    let requests = (0..3).map(|_| {
        let addr = run.addr;
        tokio::spawn(async move {
            try_send(addr, Method::GET, "/-/health", &[]).await.unwrap();
            started.elapsed()
        })
    });
    let mut finished = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        finished.push(request.await.unwrap());
    }
    finished.sort();
    for (turn, elapsed) in finished.iter().enumerate() {
        let floor = service_time * (turn as u32 + 1);
        assert!(
            *elapsed >= floor,
            "request {turn} after {elapsed:?}, before its turn {floor:?}"
        );
    }
}

/// A client that gives up does not take its request back from Rails: the
/// next one still waits for it.
#[tokio::test]
async fn an_abandoned_request_still_holds_its_worker() {
    let run = start(Profile::V16_6, None).await;
    let service_time = Duration::from_millis(100);
    run.sim.set_rails(Some(RailsSettings {
        workers: 1,
        busy: 0,
        service_time,
    }));
    let started = Instant::now();
    let addr = run.addr;
    let abandoned = tokio::spawn(async move { try_send(addr, Method::GET, KEYS, &[]).await });
    // The test's runtime has one thread: once the hit shows, the request is queued.
    while run.sim.hits(SimDoc::OauthKeys) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    abandoned.abort();
    assert!(
        abandoned.await.is_err_and(|e| e.is_cancelled()),
        "answered before its service time"
    );
    get(&run, KEYS).await;
    assert!(started.elapsed() >= service_time * 2, "{:?}", started.elapsed());
    assert_eq!(run.sim.hits(SimDoc::OauthKeys), 2);
    run.sim.set_rails(None);
    assert_eq!(run.sim.rails(), None);
}
