//! The STS-like verifier: what AWS STS does with a web identity token, as a
//! client of the issuer. Discovery at the issuer, `jwks_uri`, the key by `kid`,
//! then the RS256 signature (ring), `iss`, `aud`, `exp` and `nbf`. Like STS it
//! keeps each document only as its `Cache-Control` allows, and gives up on a
//! fetch after 5 s.

use std::sync::Arc;
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

use super::sts_cache::{StsCache, lifetime};

/// STS's limit for each answer of the identity provider.
pub(super) const FETCH_LIMIT: Duration = Duration::from_secs(5);

/// The audience the demo's tokens carry, as an AWS role's trust policy expects.
pub(super) const AUDIENCE: &str = "sts.amazonaws.com";

/// What one verification saw.
pub(super) struct Verification {
    pub(super) result: Result<(), VerifyError>,
    pub(super) elapsed: Duration,
    pub(super) discovery_cache_control: String,
    pub(super) keys_cache_control: String,
    /// Documents fetched from the issuer, and taken from STS's cache instead.
    pub(super) fetched: usize,
    pub(super) from_cache: usize,
}

/// Why a verification failed, as the table counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// A fetch had no answer within [`FETCH_LIMIT`].
    Timeout,
    /// The key set at `jwks_uri` lacks the token's `kid` (GitLab 14.4 and before).
    UnknownKid,
    Other,
}

/// Why one verification failed, as the demo's table prints it.
#[derive(Debug, thiserror::Error)]
pub(super) enum VerifyError {
    #[error("Couldn't retrieve verification key from your identity provider (no answer from {url} within 5 s)")]
    Timeout { url: String },
    #[error("{url}: {failure}")]
    Fetch { url: String, failure: FetchFailure },
    #[error("discovery issuer {found} is not the token's {issuer}")]
    IssuerMismatch { found: String, issuer: String },
    #[error("discovery has no jwks_uri")]
    NoJwksUri,
    #[error(transparent)]
    Jws(#[from] JwsError),
}

/// Why fetching one document failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchFailure {
    #[error("status {0}")]
    Status(http::StatusCode),
    #[error("not JSON ({0})")]
    NotJson(serde_json::Error),
    #[error("{0}")]
    Transport(Box<dyn std::error::Error + Send + Sync>),
}

impl VerifyError {
    pub(super) fn cause(&self) -> Cause {
        match self {
            VerifyError::Timeout { .. } => Cause::Timeout,
            VerifyError::Jws(JwsError::UnknownKid { .. }) => Cause::UnknownKid,
            _ => Cause::Other,
        }
    }
}

/// One STS: an HTTP client and the documents it keeps.
struct Sts {
    client: Client<HttpConnector, Empty<Bytes>>,
    cache: StsCache,
}

/// Verifies each token in parallel against the issuer's documents at `base`,
/// with a fresh STS (empty cache); the jobs start evenly spread over `spread`,
/// as a pipeline's jobs reach their `assume-role` step.
pub(super) async fn run_jobs(base: &str, issuer: &str, tokens: &[String], spread: Duration) -> Vec<Verification> {
    let sts = Arc::new(Sts {
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        cache: StsCache::default(),
    });
    let count = u32::try_from(tokens.len()).unwrap_or(u32::MAX).max(1);
    let jobs = tokens.iter().zip(0..).map(|(token, i)| {
        let (sts, base, issuer, token) = (sts.clone(), base.to_owned(), issuer.to_owned(), token.clone());
        let start = spread * i / count;
        tokio::spawn(async move {
            tokio::time::sleep(start).await;
            verify(&sts, &base, &issuer, &token).await
        })
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
/// `jwks_uri`, the key by `kid`, then signature, `iss`, `aud`, `exp` and `nbf`.
async fn verify(sts: &Sts, base: &str, issuer: &str, token: &str) -> Verification {
    let started = Instant::now();
    let mut seen = Verification {
        result: Ok(()),
        elapsed: Duration::ZERO,
        discovery_cache_control: String::new(),
        keys_cache_control: String::new(),
        fetched: 0,
        from_cache: 0,
    };
    seen.result = async {
        let (discovery, cc) = sts
            .document(&format!("{base}/.well-known/openid-configuration"), &mut seen)
            .await?;
        seen.discovery_cache_control = cc;
        if discovery["issuer"] != issuer {
            return Err(VerifyError::IssuerMismatch {
                found: discovery["issuer"].to_string(),
                issuer: issuer.to_owned(),
            });
        }
        let jwks_uri = discovery["jwks_uri"].as_str().ok_or(VerifyError::NoJwksUri)?;
        let (keys, cc) = sts.document(jwks_uri, &mut seen).await?;
        seen.keys_cache_control = cc;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let expected = Expected {
            issuer,
            audience: AUDIENCE,
            now,
        };
        verify_jws(token, &keys, jwks_uri, &expected)?;
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
pub(super) enum JwsError {
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
pub(super) enum Rejection {
    #[error("alg {0} is not RS256")]
    Algorithm(String),
    #[error("critical header extension {0} is not understood")]
    Critical(String),
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
    // RFC 7515 4.1.11: extensions this verifier does not know must be refused.
    if !header["crit"].is_null() {
        return Err(Rejection::Critical(header["crit"].to_string()).into());
    }
    let kid = header["kid"].as_str().ok_or(JwsError::NoKid)?;
    // Only a key published for RS256 signatures may verify one.
    let usable = |k: &Value| {
        k["kid"] == kid
            && k["kty"] == "RSA"
            && (k["use"].is_null() || k["use"] == "sig")
            && (k["alg"].is_null() || k["alg"] == "RS256")
    };
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| usable(k)))
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

impl Sts {
    /// A document and its `Cache-Control`: from the cache while it may be
    /// kept, else fetched (and kept if its headers allow).
    async fn document(&self, url: &str, seen: &mut Verification) -> Result<(Value, String), VerifyError> {
        if let Some(kept) = self.cache.get(url) {
            seen.from_cache += 1;
            return Ok((kept.value, kept.cache_control));
        }
        seen.fetched += 1;
        let timeout = || VerifyError::Timeout { url: url.to_owned() };
        // The limit covers the whole answer, body included.
        let (json, cache_control, pragma) = tokio::time::timeout(FETCH_LIMIT, self.get_json(url))
            .await
            .map_err(|_| timeout())??;
        if let Some(lifetime) = lifetime(cache_control.as_deref(), pragma.as_deref()) {
            self.cache
                .put(url, &json, cache_control.as_deref().unwrap_or_default(), lifetime);
        }
        Ok((json, cache_control.unwrap_or_else(|| "(none)".to_owned())))
    }

    /// The JSON at `url`, its `Cache-Control` and its `Pragma`.
    async fn get_json(&self, url: &str) -> Result<(Value, Option<String>, Option<String>), VerifyError> {
        let failed = |failure| VerifyError::Fetch {
            url: url.to_owned(),
            failure,
        };
        let transport = |e: Box<dyn std::error::Error + Send + Sync>| failed(FetchFailure::Transport(e));
        let req = Request::get(url).body(Empty::new()).map_err(|e| transport(e.into()))?;
        let resp = self.client.request(req).await.map_err(|e| transport(e.into()))?;
        let status = resp.status();
        let text = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (cache_control, pragma) = (text(header::CACHE_CONTROL), text(header::PRAGMA));
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(e.into()))?
            .to_bytes();
        if !status.is_success() {
            return Err(failed(FetchFailure::Status(status)));
        }
        let json = serde_json::from_slice(&body).map_err(|e| failed(FetchFailure::NotJson(e)))?;
        Ok((json, cache_control, pragma))
    }
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
    const PRIVATE_JWK: &str = include_str!("../simulator/keys/ci-0.json");

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

    #[test]
    fn critical_extensions_are_refused() {
        let header = with(header(), "crit", json!(["b64"]));
        assert!(matches!(rejection(&token(&header, &claims())), Rejection::Critical(_)));
    }

    #[test]
    fn only_a_signing_rs256_key_verifies() {
        for (member, value) in [("use", "enc"), ("alg", "RS512"), ("kty", "oct")] {
            let mut keys = key_set();
            keys["keys"][1][member] = json!(value);
            let expected = Expected {
                issuer: ISSUER,
                audience: AUDIENCE,
                now: NOW,
            };
            let err = verify_jws(&token(&header(), &claims()), &keys, JWKS_URI, &expected).unwrap_err();
            assert!(matches!(err, JwsError::UnknownKid { .. }), "{member}={value}: {err}");
        }
    }
}
