//! OIDC discovery and the CI key set, through the real proxy binary in front of
//! the simulated GitLab (every profile of the reference). Tokens are checked the
//! way an OIDC consumer (AWS STS, go-oidc) does it: discovery, then `jwks_uri`,
//! then the key by the token's `kid`, verified with `jsonwebtoken` (RS256, `iss`,
//! `aud`; a dev-dependency on RustCrypto, independent of the ring the simulator
//! signs with), never with code of the proxy.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gitlab_oidc_proxy::simulator::{Fault, Profile, SimConfig, SimDoc, SimulatedGitLab};
use http::{HeaderMap, Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// GitLab's external URL in most tests: not the proxy's address, so a consumer's
/// URLs are followed by asking the proxy for their path.
const EXTERNAL: &str = "https://gitlab.example.com";
const EXTERNAL_HOST: &str = "gitlab.example.com";
const DISCOVERY: &str = "/.well-known/openid-configuration";
const OAUTH_KEYS: &str = "/oauth/discovery/keys";
const JWKS: &str = "/-/jwks";
const KEY_PATHS: [&str; 2] = [OAUTH_KEYS, JWKS];
const AUD: &str = "sts.amazonaws.com";
/// Longest wait for any single exchange.
const LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- simulated GitLab

struct Sim {
    gitlab: Arc<SimulatedGitLab>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sim {
    async fn start(profile: Profile, external_url: &str) -> Sim {
        Sim::start_with(profile, external_url, &[]).await
    }

    /// A simulator on an ephemeral port, misbehaving as `faults` say from its first request.
    async fn start_with(profile: Profile, external_url: &str, faults: &[(SimDoc, Fault)]) -> Sim {
        let config = SimConfig {
            profile,
            external_url: external_url.to_owned(),
            token_issuer: None,
        };
        let gitlab = SimulatedGitLab::new(config).unwrap();
        for (doc, fault) in faults {
            gitlab.set_fault(*doc, fault.clone());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = gitlab.serve(listener);
        Sim { gitlab, addr, task }
    }

    fn upstream(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> [usize; 3] {
        SimDoc::ALL.map(|doc| self.gitlab.hits(doc))
    }

    fn clear_faults(&self) {
        for doc in SimDoc::ALL {
            self.gitlab.set_fault(doc, Fault::None);
        }
    }

    /// A document straight from the simulator, asked as a client of the external URL's host.
    async fn direct(&self, path: &str) -> Answer {
        send(
            Method::GET,
            &format!("{}{path}", self.upstream()),
            &[("host", EXTERNAL_HOST)],
        )
        .await
    }
}

/// Starts the proxy off the runtime's threads (`Proxy::start` blocks until it listens).
async fn start_proxy(sim: &Sim, args: &[&str]) -> Proxy {
    let upstream = sim.upstream();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(&upstream, &args)
    })
    .await
    .unwrap()
}

// ---------------------------------------------------------------- HTTP

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    elapsed: Duration,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn kids(&self) -> Vec<String> {
        kids(&self.json())
    }
}

fn kids(set: &Value) -> Vec<String> {
    set["keys"]
        .as_array()
        .expect("a `keys` list")
        .iter()
        .map(|k| k["kid"].as_str().expect("a kid").to_owned())
        .collect()
}

async fn try_send(method: Method, url: &str, headers: &[(&str, &str)]) -> Result<Answer, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let started = Instant::now();
    // A fresh client (and connection) per request: nothing pooled survives a fault.
    let exchange = async {
        let resp = client()
            .request(req.body(empty()).unwrap())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
            elapsed: started.elapsed(),
        })
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .map_err(|_| format!("no answer from {url} in {LIMIT:?}"))?
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Answer {
    try_send(method, url, headers).await.unwrap()
}

async fn get(url: &str) -> Answer {
    send(Method::GET, url, &[]).await
}

async fn refresh(proxy: &Proxy) -> Answer {
    send(
        Method::POST,
        &proxy.admin_url("/refresh"),
        &[("content-type", "application/json")],
    )
    .await
}

/// The value of one series in the OpenMetrics text (0 when absent, but the metric
/// itself must be declared: a renamed metric fails rather than reading 0).
fn metric(text: &str, series: &str) -> u64 {
    metric_value_or_zero(text, series) as u64
}

fn fetch_series(document: &str, outcome: &str) -> String {
    format!(r#"gitlab_oidc_proxy_oidc_upstream_fetches_total{{document="{document}",outcome="{outcome}"}}"#)
}

fn served_series(document: &str, state: &str) -> String {
    format!(r#"gitlab_oidc_proxy_oidc_responses_total{{document="{document}",state="{state}"}}"#)
}

/// JSON log lines at WARN or ERROR about `document` whose `error` field contains `needle`.
fn warnings_naming(logs: &str, document: &str, needle: &str) -> usize {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["level"] == "WARN" || v["level"] == "ERROR")
        .filter(|v| v["document"] == document)
        .filter(|v| v["error"].as_str().is_some_and(|e| e.contains(needle)))
        .count()
}

// ---------------------------------------------------------------- a consumer

/// What a consumer saw following discovery.
struct Followed {
    discovery: Value,
    jwks_uri: String,
    jwks: Value,
}

/// Discovery at `{base}{discovery_path}`, then the path of its `jwks_uri` asked of
/// `base` too (the test cannot resolve the issuer's host), each with `host` if given.
async fn follow(base: &str, discovery_path: &str, host: Option<&str>) -> Followed {
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    let disc = send(Method::GET, &format!("{base}{discovery_path}"), &headers).await;
    assert_eq!(
        disc.status,
        StatusCode::OK,
        "discovery at {base}{discovery_path}: {}",
        disc.text()
    );
    let discovery = disc.json();
    let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri").to_owned();
    let jwks_path = jwks_uri
        .parse::<http::Uri>()
        .expect("jwks_uri is a URL")
        .path()
        .to_owned();
    let keys = send(Method::GET, &format!("{base}{jwks_path}"), &headers).await;
    assert_eq!(
        keys.status,
        StatusCode::OK,
        "key set at {base}{jwks_path}: {}",
        keys.text()
    );
    Followed {
        discovery,
        jwks_uri,
        jwks: keys.json(),
    }
}

/// RS256 signature, `iss` and `aud` of `token` against the key named by its `kid`.
fn verify(token: &str, issuer: &str, jwks: &Value) -> Result<Value, String> {
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("the token has no kid")?;
    let jwk = jwks["keys"]
        .as_array()
        .ok_or("the key set has no `keys` list")?
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} is not in the key set"))?;
    let (n, e) = (jwk["n"].as_str().ok_or("no n")?, jwk["e"].as_str().ok_or("no e")?);
    let key = DecodingKey::from_rsa_components(n, e).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[AUD]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| e.to_string())
}

/// Follows discovery through the proxy and verifies `token` with what it finds.
async fn verify_through(proxy: &Proxy, discovery_path: &str, token: &str) -> Result<Value, String> {
    let seen = follow(&format!("http://{}", proxy.addr), discovery_path, None).await;
    let issuer = seen.discovery["issuer"].as_str().expect("issuer");
    verify(token, issuer, &seen.jwks)
}

// ---------------------------------------------------------------- every profile

/// A CI token verifies by following discovery through the proxy; the documents
/// served are GitLab's, with `jwks_uri` (only) rewritten and the keys united.
async fn token_verifies_through_proxy(profile: Profile) {
    let sim = Sim::start(profile, EXTERNAL).await;
    let proxy = start_proxy(&sim, &[]).await;
    let token = sim.gitlab.mint_ci_token(AUD);

    let seen = follow(&format!("http://{}", proxy.addr), DISCOVERY, None).await;
    assert_eq!(seen.discovery["issuer"], EXTERNAL);
    assert_eq!(seen.jwks_uri, "https://gitlab.example.com/-/jwks");
    let claims = verify(&token, EXTERNAL, &seen.jwks).unwrap_or_else(|e| panic!("{profile}: {e}"));
    assert_eq!(claims["iss"], EXTERNAL);
    assert_eq!(claims["aud"], AUD);
    assert_eq!(
        kids(&seen.jwks),
        [sim.gitlab.oidc_kid(), sim.gitlab.ci_kid()],
        "{profile}"
    );

    // Discovery: GitLab's own document (as served to a client of its host), only
    // `jwks_uri` rewritten; members, order and every other URL as they were.
    let direct = sim.direct(DISCOVERY).await;
    assert_eq!(direct.status, StatusCode::OK);
    let gitlab_jwks_uri = r#""jwks_uri":"https://gitlab.example.com/oauth/discovery/keys""#;
    assert!(direct.text().contains(gitlab_jwks_uri), "{}", direct.text());
    let expected = direct
        .text()
        .replace(gitlab_jwks_uri, r#""jwks_uri":"https://gitlab.example.com/-/jwks""#);
    let served = get(&proxy.url(DISCOVERY)).await;
    assert_eq!(
        served.text(),
        expected,
        "{profile}: discovery differs from GitLab's beyond jwks_uri"
    );

    // Key set: the union, in upstream order, members untouched: byte for byte the
    // upstream set that holds both keys.
    let complete = if profile.serves_jwks() { JWKS } else { OAUTH_KEYS };
    let upstream_set = sim.direct(complete).await;
    assert_eq!(upstream_set.kids(), [sim.gitlab.oidc_kid(), sim.gitlab.ci_kid()]);
    for path in KEY_PATHS {
        let served = get(&proxy.url(path)).await;
        assert_eq!(served.status, StatusCode::OK, "{profile} {path}");
        assert_eq!(served.body, upstream_set.body, "{profile} {path}");
    }

    // The same flow straight against GitLab: broken on <= 14.4 only.
    let straight = follow(&sim.upstream(), DISCOVERY, Some(EXTERNAL_HOST)).await;
    assert_eq!(straight.jwks_uri, "https://gitlab.example.com/oauth/discovery/keys");
    let result = verify(&token, EXTERNAL, &straight.jwks);
    if profile == Profile::V14_4 {
        let err = result.expect_err("GitLab 14.4's discovery must not lead to the CI key");
        assert!(err.contains("is not in the key set"), "{err}");
    } else {
        result.unwrap_or_else(|e| panic!("{profile} straight: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_verifies_through_proxy_14_4() {
    token_verifies_through_proxy(Profile::V14_4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_verifies_through_proxy_16_6() {
    token_verifies_through_proxy(Profile::V16_6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_verifies_through_proxy_16_8() {
    token_verifies_through_proxy(Profile::V16_8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_verifies_through_proxy_17_0() {
    token_verifies_through_proxy(Profile::V17_0).await;
}

// ---------------------------------------------------------------- headers

fn assert_cacheable(a: &Answer, max_age: u64, what: &str) {
    assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.text());
    assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
    let cache_control: Vec<&str> = a
        .headers
        .get_all("cache-control")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(cache_control, [format!("public, max-age={max_age}")], "{what}");
    for forbidden in ["no-cache", "no-store", "private", "max-age=0,"] {
        assert!(
            !format!("{},", cache_control[0]).contains(forbidden),
            "{what}: {cache_control:?}"
        );
    }
    for never in ["pragma", "set-cookie", "expires"] {
        assert!(a.headers.get(never).is_none(), "{what}: {never} {:?}", a.headers);
    }
    let etag = a.header("etag").unwrap_or_else(|| panic!("{what}: no ETag"));
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "{what}: not a strong ETag: {etag}"
    );
    assert_eq!(a.header("access-control-allow-origin"), Some("*"), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_headers_are_cacheable_and_safe() {
    let sim = Sim::start(Profile::V14_4, EXTERNAL).await;
    // 14.4 sends discovery uncacheable and with a session cookie: the hazard is there.
    let direct = sim.direct(DISCOVERY).await;
    assert!(
        direct
            .header("set-cookie")
            .is_some_and(|c| c.contains("_gitlab_session"))
    );
    assert_eq!(
        direct.header("cache-control"),
        Some("max-age=0, private, must-revalidate")
    );

    let proxy = start_proxy(&sim, &["--refresh", "1h"]).await;
    let other = start_proxy(&sim, &["--refresh", "1h", "--max-age", "10m"]).await;
    for p in [&proxy, &other] {
        for path in [DISCOVERY, JWKS] {
            assert_eq!(get(&p.url(path)).await.status, StatusCode::OK);
        }
    }
    let hits = sim.hits();

    for path in [DISCOVERY, OAUTH_KEYS, JWKS] {
        let url = proxy.url(path);
        let a = get(&url).await;
        assert_cacheable(&a, 3600, path);
        let etag = a.header("etag").unwrap().to_owned();

        // A second process in front of the same GitLab: same body, same tag.
        let b = get(&other.url(path)).await;
        assert_cacheable(&b, 600, path);
        assert_eq!(b.body, a.body, "{path}");
        assert_eq!(b.header("etag"), Some(etag.as_str()), "{path}");

        assert_revalidation(&url, path, &a, &etag).await;
        assert_head_and_preflight(&url, path, &a, &etag).await;
        assert_other_methods_refused(&url, path).await;
        assert_h2c_and_cache_busting(&url, path, &a, &etag).await;
    }
    assert_eq!(
        sim.hits(),
        hits,
        "requests reached GitLab (hits per discovery, oauth keys, jwks)"
    );
}

/// `If-None-Match` with the tag (strong, weak or in a list) gets 304; another tag the body.
async fn assert_revalidation(url: &str, path: &str, a: &Answer, etag: &str) {
    for tag in [etag.to_owned(), format!("W/{etag}"), format!("\"nope\", {etag}")] {
        let c = send(Method::GET, url, &[("if-none-match", &tag)]).await;
        assert_eq!(c.status, StatusCode::NOT_MODIFIED, "{path} If-None-Match {tag}");
        assert_eq!(c.header("etag"), Some(etag), "{path}");
        assert_eq!(c.header("cache-control"), Some("public, max-age=3600"), "{path}");
        assert!(c.body.is_empty() && c.header("set-cookie").is_none(), "{path}");
    }
    let stale = send(Method::GET, url, &[("if-none-match", "\"0123\"")]).await;
    assert_cacheable(&stale, 3600, path);
    assert_eq!(stale.body, a.body);
}

/// HEAD gets GET's headers without the body; a CORS preflight gets 204 allowing GET and HEAD.
async fn assert_head_and_preflight(url: &str, path: &str, a: &Answer, etag: &str) {
    let head = send(Method::HEAD, url, &[]).await;
    assert_cacheable(&head, 3600, &format!("HEAD {path}"));
    assert!(head.body.is_empty(), "HEAD {path} has a body");
    assert_eq!(head.header("etag"), Some(etag));
    assert_eq!(head.header("content-length"), Some(a.body.len().to_string().as_str()));

    let preflight = send(
        Method::OPTIONS,
        url,
        &[
            ("origin", "https://console.example.org"),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT, "OPTIONS {path}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    let methods = preflight.header("access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("GET") && methods.contains("HEAD"), "{methods}");
    assert!(preflight.body.is_empty());
}

async fn assert_other_methods_refused(url: &str, path: &str) {
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
        let refused = send(method.clone(), url, &[]).await;
        assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let allow = refused.header("allow").unwrap_or_default();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{method} {path}: Allow {allow}"
        );
        assert!(!allow.contains(method.as_str()), "{allow}");
    }
}

async fn assert_h2c_and_cache_busting(url: &str, path: &str, a: &Answer, etag: &str) {
    // HTTP/2 clients (h2c) get the same.
    let h2 = h2c_client().get(url.parse().unwrap()).await.unwrap();
    assert_eq!(h2.version(), http::Version::HTTP_2);
    assert_eq!(h2.headers()["etag"], etag);
    assert_eq!(h2.headers()["cache-control"], "public, max-age=3600");
    assert_eq!(body_bytes(h2).await, a.body, "h2c {path}");

    // Cache busting: same body, and GitLab never hears of it.
    for query in ["?x=123", "?x=124&_=1", "?"] {
        let busted = get(&format!("{url}{query}")).await;
        assert_cacheable(&busted, 3600, &format!("{path}{query}"));
        assert_eq!(busted.body, a.body, "{path}{query}");
    }
}

// ---------------------------------------------------------------- key paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_set_at_every_path_including_jwks_path() {
    for profile in [Profile::V14_4, Profile::V17_0] {
        let sim = Sim::start(profile, EXTERNAL).await;
        if profile == Profile::V17_0 {
            assert_eq!(sim.direct(JWKS).await.status, StatusCode::NOT_FOUND);
        } else {
            // 14.4: GitLab's discovery set lacks the CI key.
            assert_eq!(sim.direct(OAUTH_KEYS).await.kids(), [sim.gitlab.oidc_kid()]);
        }
        let proxy = start_proxy(&sim, &["--jwks-path", "/oauth/ci/keys"]).await;
        let discovery = get(&proxy.url(DISCOVERY)).await.json();
        assert_eq!(
            discovery["jwks_uri"], "https://gitlab.example.com/oauth/ci/keys",
            "{profile}"
        );
        let union = [sim.gitlab.oidc_kid(), sim.gitlab.ci_kid()];
        let first = get(&proxy.url("/oauth/ci/keys")).await;
        assert_cacheable(&first, 3600, "/oauth/ci/keys");
        assert_eq!(first.kids(), union, "{profile}");
        for path in KEY_PATHS {
            let other = get(&proxy.url(path)).await;
            assert_eq!(other.status, StatusCode::OK, "{profile} {path}");
            assert_eq!(other.body, first.body, "{profile} {path}");
        }
        let token = sim.gitlab.mint_ci_token(AUD);
        verify_through(&proxy, DISCOVERY, &token)
            .await
            .unwrap_or_else(|e| panic!("{profile}: {e}"));
    }
}

// ---------------------------------------------------------------- forged hosts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_host_headers_change_nothing() {
    let forged: &[(&str, &str)] = &[
        ("host", "evil.example"),
        ("x-forwarded-host", "evil.example:8443"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "host=evil.example;proto=http"),
    ];
    let sim = Sim::start(Profile::V16_8, EXTERNAL).await;
    let mut served: Vec<(Bytes, Bytes)> = Vec::new();
    // Untrusted and trusted peers alike: the documents never depend on a request.
    for trusted in [&[][..], &["--trusted-proxies", "127.0.0.1"][..]] {
        let proxy = start_proxy(&sim, trusted).await;
        // The very first requests are forged: the cache is filled while they wait.
        let (d_url, k_url) = (proxy.url(DISCOVERY), proxy.url(JWKS));
        let (d, k) = tokio::join!(send(Method::GET, &d_url, forged), send(Method::GET, &k_url, forged));
        assert_eq!((d.status, k.status), (StatusCode::OK, StatusCode::OK), "{trusted:?}");
        let clean_d = get(&proxy.url(DISCOVERY)).await;
        let clean_k = get(&proxy.url(JWKS)).await;
        assert_eq!(d.body, clean_d.body, "{trusted:?}");
        assert_eq!(k.body, clean_k.body, "{trusted:?}");
        for path in [DISCOVERY, OAUTH_KEYS, JWKS] {
            let again = send(Method::GET, &proxy.url(path), forged).await;
            let clean = if path == DISCOVERY { &clean_d } else { &clean_k };
            assert_eq!(again.body, clean.body, "{trusted:?} {path} forged after warm-up");
            assert_eq!(again.header("etag"), clean.header("etag"));
        }
        let text = clean_d.text();
        assert!(!text.contains("evil"), "{text}");
        let discovery = clean_d.json();
        for (name, value) in discovery.as_object().unwrap() {
            if let Some(url) = value.as_str().filter(|v| v.contains("://")) {
                let on_issuer = url == EXTERNAL || url.starts_with("https://gitlab.example.com/");
                assert!(on_issuer, "{name}: {url}");
            }
        }
        served.push((clean_d.body, clean_k.body));
    }
    assert_eq!(served[0], served[1], "two proxies serve different documents");
}

// ---------------------------------------------------------------- relative URL root

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_url_root_publishes_both_issuers() {
    let sim = Sim::start(Profile::V14_4, "https://gitlab.example.com/gitlab").await;
    assert_eq!(sim.gitlab.token_issuer(), EXTERNAL);
    let proxy = start_proxy(
        &sim,
        &[
            "--external-url",
            "https://gitlab.example.com/gitlab",
            "--issuer",
            "https://gitlab.example.com",
        ],
    )
    .await;

    let rooted = get(&proxy.url("/gitlab/.well-known/openid-configuration")).await;
    assert_cacheable(&rooted, 3600, "/gitlab discovery");
    let rooted_doc = rooted.json();
    assert_eq!(rooted_doc["issuer"], "https://gitlab.example.com/gitlab");
    assert_eq!(rooted_doc["jwks_uri"], "https://gitlab.example.com/gitlab/-/jwks");
    // GitLab's document, jwks_uri aside.
    let direct = sim.direct("/gitlab/.well-known/openid-configuration").await;
    assert_eq!(direct.status, StatusCode::OK);
    assert_eq!(
        rooted.text(),
        direct.text().replace(
            r#""jwks_uri":"https://gitlab.example.com/gitlab/oauth/discovery/keys""#,
            r#""jwks_uri":"https://gitlab.example.com/gitlab/-/jwks""#
        )
    );

    let top = get(&proxy.url(DISCOVERY)).await;
    assert_cacheable(&top, 3600, "/ discovery");
    let top_doc = top.json();
    assert_eq!(top_doc["issuer"], EXTERNAL);
    assert_eq!(top_doc["jwks_uri"], "https://gitlab.example.com/-/jwks");
    assert_eq!(
        top_doc["token_endpoint"],
        "https://gitlab.example.com/gitlab/oauth/token"
    );
    let rooted_members: Vec<&String> = rooted_doc.as_object().unwrap().keys().collect();
    let top_members: Vec<&String> = top_doc.as_object().unwrap().keys().collect();
    assert_eq!(top_members, rooted_members);

    let union = [sim.gitlab.oidc_kid(), sim.gitlab.ci_kid()];
    for path in ["/gitlab/-/jwks", "/gitlab/oauth/discovery/keys", JWKS, OAUTH_KEYS] {
        let keys = get(&proxy.url(path)).await;
        assert_eq!(keys.status, StatusCode::OK, "{path}");
        assert_eq!(keys.kids(), union, "{path}");
    }

    // A token with GitLab < 18.1's `iss` (no relative root) verifies via the top issuer...
    let token = sim.gitlab.mint_ci_token(AUD);
    let claims = verify_through(&proxy, DISCOVERY, &token).await.unwrap();
    assert_eq!(claims["iss"], EXTERNAL);
    // ... and not via GitLab's own issuer, whose string differs (GitLab issue 429159).
    let err = verify_through(&proxy, "/gitlab/.well-known/openid-configuration", &token)
        .await
        .expect_err("iss differs from the rooted issuer");
    assert!(err.contains("Issuer"), "{err}");

    let health = get(&proxy.url("/gitlab/-/health")).await;
    assert_eq!((health.status, health.text().as_str()), (StatusCode::OK, "GitLab OK"));
}

// ---------------------------------------------------------------- cold cache

/// A TCP relay to `to` that holds every connection, unanswered, until `open` says
/// true: GitLab slow for exactly as long as a test needs, however slow the machine.
async fn gate(to: SocketAddr) -> (String, tokio::sync::watch::Sender<bool>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}", listener.local_addr().unwrap());
    let (open, is_open) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut is_open = is_open.clone();
            tokio::spawn(async move {
                if is_open.wait_for(|open| *open).await.is_err() {
                    return;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    });
    (target, open, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_cache_coalesces_500_concurrent_requests() {
    let sim = Sim::start(Profile::V16_8, EXTERNAL).await;
    // GitLab is held until the requests are in: every one of them meets a cold cache.
    let (gated, open, _gate) = gate(sim.addr).await;
    let proxy =
        tokio::task::spawn_blocking(move || Proxy::start(&gated, &["--refresh", "1h", "--upstream-timeout", "8s"]))
            .await
            .unwrap();

    let client = client();
    let mut requests = JoinSet::new();
    for i in 0..500 {
        let path = [DISCOVERY, OAUTH_KEYS, JWKS][i % 3];
        let uri: http::Uri = proxy.url(path).parse().unwrap();
        let client = client.clone();
        requests.spawn(async move {
            let resp = tokio::time::timeout(LIMIT, client.get(uri)).await;
            let resp = resp.expect("no answer in time").expect("request failed");
            let status = resp.status();
            (path, status, body_bytes(resp).await)
        });
    }
    // Wait until many requests are at the proxy (one connection each), none answered.
    let proxy_ref = &proxy;
    let arrived = wait_until(LIMIT, || async move {
        metric_value(&proxy_ref.metrics().await, "gitlab_oidc_proxy_open_connections").is_some_and(|n| n >= 100.0)
    })
    .await;
    assert!(
        arrived,
        "the requests never reached the proxy:\n{}",
        proxy.metrics().await
    );
    assert!(requests.try_join_next().is_none(), "answered before GitLab was");
    assert_eq!(sim.hits(), [0, 0, 0], "the gate let a fetch through");
    open.send(true).unwrap();

    let mut bodies: Vec<(&str, Bytes)> = Vec::new();
    while let Some(done) = requests.join_next().await {
        let (path, status, body) = done.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&body));
        bodies.push((path, body));
    }
    assert_eq!(bodies.len(), 500);
    let discovery = &bodies.iter().find(|(p, _)| *p == DISCOVERY).unwrap().1;
    let keys = &bodies.iter().find(|(p, _)| *p != DISCOVERY).unwrap().1;
    for (path, body) in &bodies {
        assert_eq!(body, if *path == DISCOVERY { discovery } else { keys }, "{path}");
    }
    assert_eq!(
        sim.hits(),
        [1, 1, 1],
        "fetches of discovery, /oauth/discovery/keys, /-/jwks"
    );
}

// ---------------------------------------------------------------- GitLab failing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_then_503() {
    let sim = Sim::start(Profile::V16_8, EXTERNAL).await;
    let proxy = start_proxy(
        &sim,
        &[
            "--refresh",
            "200ms",
            "--upstream-timeout",
            "300ms",
            "--stale-if-error",
            "2s",
        ],
    )
    .await;
    let good: Vec<Answer> = vec![get(&proxy.url(DISCOVERY)).await, get(&proxy.url(JWKS)).await];
    for a in &good {
        assert_eq!(a.status, StatusCode::OK);
    }

    for doc in SimDoc::ALL {
        sim.gitlab.set_fault(doc, Fault::Status(500));
    }
    let failing_since = Instant::now();
    // The last good copies are served (stale) until stale-if-error passes, then 503.
    let mut unavailable_after: [Option<Duration>; 2] = [None, None];
    let deadline = failing_since + Duration::from_secs(8);
    while unavailable_after.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "still 200 after {:?}",
            failing_since.elapsed()
        );
        for (i, path) in [DISCOVERY, JWKS].into_iter().enumerate() {
            let a = get(&proxy.url(path)).await;
            if a.status == StatusCode::OK {
                assert!(unavailable_after[i].is_none(), "{path}: 200 again after a 503");
                assert_eq!(a.body, good[i].body, "{path}: a different body while GitLab fails");
                assert_eq!(a.header("cache-control"), Some("public, max-age=3600"));
                continue;
            }
            assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {}", a.text());
            assert_eq!(a.header("cache-control"), Some("no-store"), "{path}");
            assert_eq!(a.header("content-type"), Some("application/json"), "{path}");
            assert!(a.json()["error"].is_string(), "{path}: {}", a.text());
            assert!(a.header("etag").is_none());
            unavailable_after[i].get_or_insert(failing_since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not before stale-if-error less one refresh interval (and some scheduling slack).
    for (path, after) in [DISCOVERY, JWKS].into_iter().zip(unavailable_after) {
        let after = after.unwrap();
        assert!(after >= Duration::from_millis(1200), "{path}: 503 after only {after:?}");
    }
    let metrics = proxy.metrics().await;
    for document in ["discovery", "keys"] {
        assert!(
            metric(&metrics, &served_series(document, "stale")) > 0,
            "{document}:\n{metrics}"
        );
        assert!(
            metric(&metrics, &served_series(document, "unavailable")) > 0,
            "{document}"
        );
    }
    assert!(metric(&metrics, &fetch_series("jwks", "bad_status")) > 0, "{metrics}");
    // Nothing servable: the replica says so, so a load balancer can route around it.
    assert_eq!(
        get(&proxy.admin_url("/readyz")).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // GitLab back: the documents come back.
    sim.clear_faults();
    let back = wait_until(LIMIT, || async {
        let d = get(&proxy.url(DISCOVERY)).await;
        let k = get(&proxy.url(JWKS)).await;
        d.status == StatusCode::OK && k.status == StatusCode::OK
    })
    .await;
    assert!(back, "documents not served again after GitLab recovered");
    assert_eq!(get(&proxy.url(DISCOVERY)).await.body, good[0].body);
    assert_eq!(get(&proxy.url(JWKS)).await.body, good[1].body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_and_failing_is_503_until_gitlab_answers() {
    for fault in [Fault::Status(500), Fault::Delay(Duration::from_secs(5))] {
        let faults: Vec<(SimDoc, Fault)> = SimDoc::ALL.iter().map(|d| (*d, fault.clone())).collect();
        let sim = Sim::start_with(Profile::V16_8, EXTERNAL, &faults).await;
        let proxy = start_proxy(&sim, &["--upstream-timeout", "500ms"]).await;

        let (d_url, k_url) = (proxy.url(DISCOVERY), proxy.url(JWKS));
        let (d, k) = tokio::join!(get(&d_url), get(&k_url));
        for (path, a) in [(DISCOVERY, &d), (JWKS, &k)] {
            assert_eq!(
                a.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{fault:?} {path}: {}",
                a.text()
            );
            // Within the wait the README gives (two --upstream-timeouts on a first
            // start), so well before the slow GitLab's 5 s answer: not waiting for it.
            assert!(
                a.elapsed < Duration::from_secs(5),
                "{fault:?} {path}: 503 after {:?}",
                a.elapsed
            );
            let retry_after: u64 = a.header("retry-after").expect("Retry-After").parse().unwrap();
            assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
            assert_eq!(a.header("cache-control"), Some("no-store"));
            assert!(a.json()["error"].is_string(), "{}", a.text());
        }
        let ready = get(&proxy.admin_url("/readyz")).await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{fault:?}");

        sim.clear_faults();
        let recovered = wait_until(LIMIT, || async {
            let d = get(&proxy.url(DISCOVERY)).await;
            let k = get(&proxy.url(JWKS)).await;
            let r = get(&proxy.admin_url("/readyz")).await;
            [d.status, k.status, r.status] == [StatusCode::OK; 3]
        })
        .await;
        assert!(recovered, "{fault:?}: not served after GitLab recovered");
    }
}

// ---------------------------------------------------------------- bad upstream bodies

/// What the proxy should report for a fault: fetch outcome label and a piece of the error.
fn expected_rejection(fault: &Fault) -> (&'static str, Option<&'static str>) {
    match fault {
        Fault::SignInPage | Fault::Truncated => ("not_json", Some("not JSON")),
        Fault::Oversized => ("too_large", Some("1 MiB")),
        Fault::NotAnObject => ("invalid", Some("object")),
        Fault::PrivateKeyMembers => ("invalid", Some("private member")),
        Fault::EmptyKeys => ("invalid", None),
        Fault::Status(_) => ("bad_status", Some("status 500")),
        Fault::Delay(_) => ("timeout", Some("timeout")),
        Fault::HangUp => ("upstream_error", Some("upstream")),
        Fault::None => unreachable!(),
    }
}

/// Every (document, fault) pair: document faults on all three, key-set faults on the two sets.
fn bad_cases() -> Vec<(SimDoc, Fault)> {
    let any = [
        Fault::SignInPage,
        Fault::Truncated,
        Fault::Oversized,
        Fault::NotAnObject,
        Fault::Status(500),
        Fault::Delay(Duration::from_millis(1500)),
        Fault::HangUp,
    ];
    let keys_only = [Fault::PrivateKeyMembers, Fault::EmptyKeys];
    let mut cases = Vec::new();
    for doc in SimDoc::ALL {
        for fault in any.iter().chain(if doc == SimDoc::Discovery {
            &[][..]
        } else {
            &keys_only[..]
        }) {
            cases.push((doc, fault.clone()));
        }
    }
    cases
}

fn fetch_label(doc: SimDoc) -> &'static str {
    match doc {
        SimDoc::Discovery => "discovery",
        SimDoc::OauthKeys => "oauth_keys",
        SimDoc::Jwks => "jwks",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_bodies_never_replace_good_ones() {
    // 14.4: all three documents exist and the CI key is only in /-/jwks.
    let sim = Sim::start(Profile::V14_4, EXTERNAL).await;
    let proxy = start_proxy(&sim, &["--upstream-timeout", "500ms", "--refresh", "1h"]).await;
    let good_d = get(&proxy.url(DISCOVERY)).await;
    let good_k = get(&proxy.url(JWKS)).await;
    assert_eq!((good_d.status, good_k.status), (StatusCode::OK, StatusCode::OK));
    let warm = refresh(&proxy).await;
    assert_eq!(warm.status, StatusCode::OK, "{}", warm.text());
    let union = [sim.gitlab.oidc_kid(), sim.gitlab.ci_kid()];
    assert_eq!(warm.json()["keys"]["kids"], serde_json::json!(union));

    let mut failures: Vec<String> = Vec::new();
    for (doc, fault) in bad_cases() {
        let case = format!("{fault:?} on {}", doc.path());
        let (outcome, needle) = expected_rejection(&fault);
        let series = fetch_series(fetch_label(doc), outcome);
        let counted_before = metric(&proxy.metrics().await, &series);
        let needle_for_log = needle.unwrap_or("");
        let logged_before = warnings_naming(&proxy.logs(), fetch_label(doc), needle_for_log);

        sim.gitlab.set_fault(doc, fault.clone());
        let report = refresh(&proxy).await;
        let section = if doc == SimDoc::Discovery { "discovery" } else { "keys" };
        if report.status != StatusCode::BAD_GATEWAY {
            failures.push(format!(
                "{case}: POST /refresh {} (want 502): {}",
                report.status,
                report.text()
            ));
        } else {
            let json = report.json();
            let error = json[section]["error"].as_str().unwrap_or_default();
            if json[section]["refreshed"] != false || error.is_empty() {
                failures.push(format!("{case}: report does not name an error: {json}"));
            } else if needle.is_some_and(|n| !error.contains(n)) {
                failures.push(format!("{case}: report error {error:?} lacks {needle:?}"));
            }
        }

        for (path, good) in [(DISCOVERY, &good_d), (JWKS, &good_k), (OAUTH_KEYS, &good_k)] {
            let now = get(&proxy.url(path)).await;
            if now.status != StatusCode::OK || now.body != good.body || now.header("etag") != good.header("etag") {
                failures.push(format!("{case}: {path} changed: {} {}", now.status, now.text()));
            }
        }

        let counted = metric(&proxy.metrics().await, &series);
        if counted != counted_before + 1 {
            failures.push(format!("{case}: {series} went {counted_before} -> {counted}"));
        }
        let logged = wait_until(Duration::from_secs(2), || async {
            warnings_naming(&proxy.logs(), fetch_label(doc), needle_for_log) > logged_before
        })
        .await;
        if !logged {
            failures.push(format!(
                "{case}: no new WARN log line with document {:?} and an `error` containing {needle_for_log:?}",
                fetch_label(doc)
            ));
        }

        sim.gitlab.set_fault(doc, Fault::None);
        let restored = refresh(&proxy).await;
        if restored.status != StatusCode::OK {
            failures.push(format!("{case}: refresh after clearing the fault: {}", restored.text()));
        }
    }
    // After everything, still the same documents.
    assert_eq!(get(&proxy.url(DISCOVERY)).await.body, good_d.body);
    assert_eq!(get(&proxy.url(JWKS)).await.body, good_k.body);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_bodies_are_never_published_on_a_cold_start() {
    let mut starts = JoinSet::new();
    for (doc, fault) in bad_cases() {
        starts.spawn(async move {
            let sim = Sim::start_with(Profile::V14_4, EXTERNAL, &[(doc, fault.clone())]).await;
            let proxy = start_proxy(&sim, &["--upstream-timeout", "500ms"]).await;
            let path = if doc == SimDoc::Discovery { DISCOVERY } else { JWKS };
            let a = get(&proxy.url(path)).await;
            let ready = get(&proxy.admin_url("/readyz")).await;
            let unpublished = a.status == StatusCode::SERVICE_UNAVAILABLE
                && a.header("cache-control") == Some("no-store")
                && ready.status == StatusCode::SERVICE_UNAVAILABLE;
            (!unpublished).then(|| {
                format!(
                    "{fault:?} on {}: {path} {} {} (readyz {})",
                    doc.path(),
                    a.status,
                    a.text(),
                    ready.status
                )
            })
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = starts.join_next().await {
        failures.extend(done.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} published:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- rotation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_published_by_refresh() {
    let sim = Sim::start(Profile::V14_4, EXTERNAL).await;
    let proxy = start_proxy(&sim, &["--refresh", "1h"]).await;
    let old_kid = sim.gitlab.ci_kid();
    let old_token = sim.gitlab.mint_ci_token(AUD);
    verify_through(&proxy, DISCOVERY, &old_token).await.unwrap();

    let new_kid = sim.gitlab.rotate_ci_key();
    assert_ne!(new_kid, old_kid);
    let report = refresh(&proxy).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text());
    assert_eq!(report.header("content-type"), Some("application/json"));
    let json = report.json();
    assert_eq!(json["keys"]["refreshed"], true);
    assert_eq!(
        json["keys"]["kids"],
        serde_json::json!([sim.gitlab.oidc_kid(), new_kid])
    );
    assert_eq!(json["discovery"]["refreshed"], true);
    // /status tells the same without calling GitLab; no copy kept here.
    let status = get(&proxy.admin_url("/status")).await;
    assert_eq!(status.status, StatusCode::OK);
    let status = status.json();
    assert_eq!(status["keys"]["kids"], json["keys"]["kids"]);
    assert_eq!(status["discovery"]["issuer"], EXTERNAL);
    assert_eq!(
        (&status["ready"], &status["export"]),
        (&Value::Bool(true), &Value::Null)
    );
    assert_eq!(
        send(Method::POST, &proxy.admin_url("/status"), &[]).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let token = sim.gitlab.mint_ci_token(AUD);
    verify_through(&proxy, DISCOVERY, &token).await.unwrap();
    // No overlap in GitLab, none in the proxy.
    let err = verify_through(&proxy, DISCOVERY, &old_token).await.unwrap_err();
    assert!(err.contains("not in the key set"), "{err}");
}

/// A key rotated in GitLab is published by the background refresher on its own,
/// with no `POST /refresh`: the next `--refresh` picks it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_published_by_the_refresher_alone() {
    let sim = Sim::start(Profile::V14_4, EXTERNAL).await;
    let proxy = start_proxy(&sim, &["--refresh", "300ms"]).await;
    let old_token = sim.gitlab.mint_ci_token(AUD);
    verify_through(&proxy, DISCOVERY, &old_token).await.unwrap();

    let new_kid = sim.gitlab.rotate_ci_key();
    let status_url = proxy.admin_url("/status");
    let expected = serde_json::json!([sim.gitlab.oidc_kid(), new_kid]);
    let published = wait_until(LIMIT, || {
        let (status_url, expected) = (&status_url, &expected);
        async move { get(status_url).await.json()["keys"]["kids"] == *expected }
    })
    .await;
    assert!(
        published,
        "the rotation was not published in {LIMIT:?}:\n{}",
        proxy.logs()
    );
    let token = sim.gitlab.mint_ci_token(AUD);
    verify_through(&proxy, DISCOVERY, &token).await.unwrap();
    let err = verify_through(&proxy, DISCOVERY, &old_token).await.unwrap_err();
    assert!(err.contains("not in the key set"), "{err}");
    // The refresh is counted once both documents are done, after the key set is
    // published: waited for, not raced.
    let proxy = &proxy;
    let counted = wait_until(LIMIT, || async move {
        let metrics = proxy.metrics().await;
        metric(
            &metrics,
            r#"gitlab_oidc_proxy_oidc_refreshes_total{document="keys",outcome="published"}"#,
        ) >= 2
    })
    .await;
    assert!(counted, "{}", proxy.metrics().await);
}

// ---------------------------------------------------------------- everything else

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_else_passes_through() {
    let sim = Sim::start(Profile::V16_8, EXTERNAL).await;
    // GitLab slow to answer the documents: a look-alike path must not wait for them.
    for doc in SimDoc::ALL {
        sim.gitlab.set_fault(doc, Fault::Delay(Duration::from_secs(5)));
    }
    let proxy = start_proxy(&sim, &["--upstream-timeout", "8s"]).await;
    let early = get(&proxy.url("/group/project/.well-known/openid-configuration")).await;
    assert_eq!(early.status, StatusCode::NOT_FOUND);
    // Answered while the documents were still on their way (not ready yet): it
    // did not wait for them.
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the look-alike waited for the OIDC fetch"
    );
    sim.clear_faults();
    assert_eq!(get(&proxy.url(DISCOVERY)).await.status, StatusCode::OK);

    let health = get(&proxy.url("/-/health")).await;
    assert_eq!((health.status, health.text().as_str()), (StatusCode::OK, "GitLab OK"));
    let home = get(&proxy.url("/")).await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.text().contains("Simulated GitLab 16.8"), "{}", home.text());
    assert!(
        home.header("x-request-id").is_some(),
        "GitLab's own headers come through"
    );
    let readiness = get(&proxy.url("/-/readiness")).await;
    assert_eq!(readiness.status, StatusCode::OK);
    // Not ours: GitLab answers (its 404 page), whatever the path resembles.
    for path in [
        "/explore",
        "/oauth/discovery/keys/extra",
        "/other/.well-known/openid-configuration",
        "/.well-known/webfinger",
    ] {
        let a = get(&proxy.url(path)).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}");
        assert!(a.text().contains("Page Not Found"), "{path}: {}", a.text());
    }
    let posted = send(Method::POST, &proxy.url("/-/health"), &[]).await;
    assert_eq!(posted.status, StatusCode::NOT_FOUND, "GitLab's answer to POST");
}

/// A burst of `POST /refresh` joins the refresh in flight: one fetch per document
/// for the burst. A browser's cross-origin `text/plain` POST (no preflight) is
/// refused with 415 and fetches nothing.
#[tokio::test]
async fn refresh_bursts_join_and_need_json() {
    let sim = Sim::start(Profile::V16_6, EXTERNAL).await;
    let proxy = start_proxy(&sim, &["--refresh", "1h"]).await;
    for path in [DISCOVERY, JWKS] {
        assert_eq!(get(&proxy.url(path)).await.status, StatusCode::OK);
    }
    let before = sim.hits();
    for headers in [
        &[][..],
        &[("content-type", "text/plain")],
        &[("content-type", "application/jsonp")],
    ] {
        let answer = send(Method::POST, &proxy.admin_url("/refresh"), headers).await;
        assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{headers:?}");
    }
    assert_eq!(sim.hits(), before, "a refused refresh fetched");

    // A slow GitLab, so that all 50 calls arrive while the first refresh runs.
    for doc in SimDoc::ALL {
        sim.gitlab.set_fault(doc, Fault::Delay(Duration::from_millis(1500)));
    }
    let burst = (0..50).map(|_| {
        let url = proxy.admin_url("/refresh");
        tokio::spawn(async move {
            let json = [("content-type", "application/json; charset=utf-8")];
            send(Method::POST, &url, &json).await.status
        })
    });
    for call in futures_util::future::join_all(burst).await {
        assert_eq!(call.unwrap(), StatusCode::OK);
    }
    let fetched: Vec<usize> = sim
        .hits()
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect();
    // discovery, /oauth/discovery/keys, /-/jwks: the first call starts a refresh;
    // the 49 that asked while it ran share the next one.
    assert!(
        fetched.iter().all(|&n| (1..=2).contains(&n)),
        "fetches per document for 50 calls: {fetched:?}"
    );
}
