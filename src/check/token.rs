//! Step 5: a CI ID token checked as STS checks it: its `kid` in the key set,
//! the RS256 signature (ring, the provider rustls uses), `iss`, `aud`, the
//! times and GitLab's `sub` form. The token itself is never printed: only its
//! claims, which carry no secret.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde_json::{Map, Value, json};

use super::report::Step;
use crate::oidc::jwks::{self, Jwk};

/// Clock difference tolerated on `nbf` and `iat`.
const SKEW: u64 = 60;

/// A token split and decoded; the signature is checked later against a key.
pub(super) struct Decoded {
    pub header: Map<String, Value>,
    pub claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

/// Header and claims only: the signature would make the token whole again.
impl std::fmt::Debug for Decoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("header", &self.header)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl Decoded {
    pub(super) fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }
}

/// The three parts of a compact JWS, decoded; why not, in one line that never
/// quotes the token.
pub(super) fn decode(token: &str) -> Result<Decoded, String> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(format!(
            "not a JWT: {} dot-separated parts, not 3 (give the job's ID token, e.g. $AWS_ID_TOKEN)",
            parts.len()
        ));
    };
    let object = |part: &str, what: &str| -> Result<Map<String, Value>, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| format!("the token's {what} is not base64url"))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            _ => Err(format!("the token's {what} is not a JSON object")),
        }
    };
    Ok(Decoded {
        header: object(header, "header")?,
        claims: object(claims, "claims")?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| "the token's signature is not base64url".to_owned())?,
    })
}

/// What to check the token against.
pub(super) struct Expect<'a> {
    pub issuer: &'a str,
    pub audience: Option<&'a str>,
    pub now: SystemTime,
}

/// Step 5 against the key set's `keys`; whether the `kid` was found there.
pub(super) fn judge(step: &mut Step, token: &Decoded, keys: &[Jwk], expect: &Expect<'_>) -> bool {
    let alg = token.header.get("alg").and_then(Value::as_str).unwrap_or("(none)");
    let kid = token.kid().unwrap_or("(none)");
    step.saw(format!("header: alg {alg}, kid {kid}"));
    if alg != "RS256" {
        step.fail(format!("alg is {alg}, not RS256"), "use a GitLab ID token (id_tokens:)");
    }
    let found = keys.iter().find(|k| jwks::kid(k) == kid);
    match found {
        None => step.fail(
            format!("kid {kid} is not in the key set that jwks_uri names"),
            "put gitlab-oidc-proxy in front: its jwks_uri names a key set with the CI key",
        ),
        Some(key) if alg == "RS256" => match verify(token, key) {
            Ok(()) => step.saw("RS256 signature valid"),
            Err(why) => step.fail(
                format!("the signature does not verify: {why}"),
                "the token was not signed by this issuer's key (wrong GitLab, or a key rotated since)",
            ),
        },
        Some(_) => {}
    }
    judge_claims(step, &token.claims, expect);
    found.is_some()
}

/// RS256 over the first two parts, with the key's `n` and `e`.
fn verify(token: &Decoded, key: &Jwk) -> Result<(), String> {
    let component = |name: &str| {
        key.get(name)
            .and_then(Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or_else(|| format!("the key has no usable `{name}`"))
    };
    let public = RsaPublicKeyComponents {
        n: component("n")?,
        e: component("e")?,
    };
    public
        .verify(
            &RSA_PKCS1_2048_8192_SHA256,
            token.signing_input.as_bytes(),
            &token.signature,
        )
        .map_err(|_| "RS256 signature mismatch".to_owned())
}

fn judge_claims(step: &mut Step, claims: &Map<String, Value>, expect: &Expect<'_>) {
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or_default();
    step.saw(format!("iss: {iss}"));
    if iss != expect.issuer {
        step.fail(
            format!("iss {iss:?} is not the issuer {:?}", expect.issuer),
            "check the token against its own iss, and make the discovery issuer equal it \
             (relative URL root before GitLab 18.1: publish it with the proxy's --issuer)",
        );
    }
    if !iss.starts_with("https://") {
        step.fail(
            format!("iss {iss:?} is not https"),
            "set GitLab's external_url to https",
        );
    }
    judge_audience(step, claims.get("aud"), expect.audience);
    judge_times(step, claims, expect.now);
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    step.saw(format!("sub: {sub}"));
    if !gitlab_sub(sub) {
        step.warn(
            format!("sub {sub:?} is not GitLab's project_path:…:ref_type:…:ref:… form"),
            "match the trust policy's sub condition to the sub shown here",
        );
    }
}

fn judge_audience(step: &mut Step, aud: Option<&Value>, expected: Option<&str>) {
    let auds: Vec<&str> = match aud {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if auds.is_empty() {
        step.fail(
            "the token has no aud; STS requires one",
            "give the job an ID token with an audience: id_tokens: { AWS_ID_TOKEN: { aud: sts.amazonaws.com } }",
        );
        return;
    }
    step.saw(format!("aud: {}", auds.join(", ")));
    if let Some(expected) = expected
        && !auds.contains(&expected)
    {
        step.fail(
            format!("aud {} does not include {expected}", auds.join(", ")),
            format!("set the job's id_tokens aud to {expected} (the IAM provider's audience)"),
        );
    }
}

fn judge_times(step: &mut Step, claims: &Map<String, Value>, now: SystemTime) {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let time = |name: &str| claims.get(name).and_then(Value::as_u64);
    match time("exp") {
        None => step.fail("the token has no exp", "use a GitLab ID token (id_tokens:)"),
        Some(exp) if exp <= now => step.fail(
            format!("the token expired {} s ago", now - exp),
            "use a fresh token: an ID token lives as long as its job's timeout",
        ),
        Some(exp) => step.saw(format!("expires in {} s", exp - now)),
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = time(name)
            && t > now + SKEW
        {
            step.fail(
                format!("{name} is {} s in the future", t - now),
                "fix the clock of the GitLab host (or of this one)",
            );
        }
    }
}

/// `project_path:<group/project>:ref_type:<branch|tag>:ref:<name>`.
fn gitlab_sub(sub: &str) -> bool {
    let Some(rest) = sub.strip_prefix("project_path:") else {
        return false;
    };
    let Some((project, rest)) = rest.split_once(":ref_type:") else {
        return false;
    };
    let Some((ref_type, name)) = rest.split_once(":ref:") else {
        return false;
    };
    !project.is_empty() && !ref_type.is_empty() && !name.is_empty()
}

/// The claims IAM conditions can use, keyed as IAM names them, and every claim for reference.
pub(super) fn claims_report(claims: &Map<String, Value>, issuer: &str) -> Value {
    let provider = issuer.trim_start_matches("https://");
    json!({
        "iam_condition_keys": {
            format!("{provider}:aud"): claims.get("aud"),
            format!("{provider}:sub"): claims.get("sub"),
        },
        "claims": claims,
    })
}

/// A role trust policy admitting this token's `sub` and `aud`.
pub(super) fn trust_policy(claims: &Map<String, Value>, issuer: &str, audience: Option<&str>) -> Value {
    let provider = issuer.trim_start_matches("https://");
    let aud = audience
        .map(str::to_owned)
        .or_else(|| match claims.get("aud") {
            Some(Value::String(a)) => Some(a.clone()),
            Some(Value::Array(list)) => list.first().and_then(Value::as_str).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| "sts.amazonaws.com".to_owned());
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": format!("arn:aws:iam::ACCOUNT_ID:oidc-provider/{provider}")},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                format!("{provider}:aud"): aud,
                format!("{provider}:sub"): sub,
            }},
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitlab_sub_form() {
        assert!(gitlab_sub("project_path:group/project:ref_type:branch:ref:main"));
        assert!(gitlab_sub("project_path:a/b/c:ref_type:tag:ref:v1.2:rc"));
        for bad in [
            "",
            "repo:org/x:ref:refs/heads/main",
            "project_path::ref_type:branch:ref:main",
            "project_path:g/p:ref_type:branch",
            "project_path:g/p:ref_type::ref:main",
            "project_path:g/p:ref_type:branch:ref:",
        ] {
            assert!(!gitlab_sub(bad), "{bad}");
        }
    }

    fn part(v: Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn decoding_refuses_what_is_not_a_jws_without_quoting_it() {
        assert!(decode("abc").unwrap_err().contains("1 dot-separated parts"));
        let e = decode("x.y.z").unwrap_err();
        assert_eq!(e, "the token's header is not base64url");
        let token = format!("{}.{}.c2ln", part(json!({"alg":"RS256"})), part(json!([1])));
        assert_eq!(decode(&token).err().unwrap(), "the token's claims is not a JSON object");
        let token = format!(
            "{}.{}.c2ln",
            part(json!({"alg":"RS256","kid":"k"})),
            part(json!({"aud":"a"}))
        );
        assert_eq!(decode(&token).unwrap().kid(), Some("k"));
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn problems(c: Value, audience: Option<&str>) -> Vec<String> {
        let mut step = Step::new(5, "token");
        let expect = Expect {
            issuer: "https://gitlab.example.com",
            audience,
            now: UNIX_EPOCH + std::time::Duration::from_secs(10_000),
        };
        judge_claims(&mut step, &claims(c), &expect);
        step.problems
    }

    #[test]
    fn claims_as_sts_reads_them() {
        let good = json!({"iss":"https://gitlab.example.com","aud":"sts.amazonaws.com","exp":13_600,"nbf":9_995,
            "iat":10_000,"sub":"project_path:g/p:ref_type:branch:ref:main"});
        assert_eq!(problems(good.clone(), Some("sts.amazonaws.com")), Vec::<String>::new());
        let mut no_aud = good.clone();
        no_aud.as_object_mut().unwrap().remove("aud");
        assert_eq!(problems(no_aud, None), ["the token has no aud; STS requires one"]);
        assert_eq!(
            problems(good.clone(), Some("other")),
            ["aud sts.amazonaws.com does not include other"]
        );
        let mut expired = good.clone();
        expired["exp"] = json!(9_000);
        assert_eq!(problems(expired, None), ["the token expired 1000 s ago"]);
        let mut future = good.clone();
        future["nbf"] = json!(20_000);
        assert_eq!(problems(future, None), ["nbf is 10000 s in the future"]);
        let mut other_iss = good.clone();
        other_iss["iss"] = json!("http://gitlab.internal");
        assert_eq!(
            problems(other_iss, None),
            [
                "iss \"http://gitlab.internal\" is not the issuer \"https://gitlab.example.com\"",
                "iss \"http://gitlab.internal\" is not https"
            ]
        );
    }

    #[test]
    fn trust_policy_for_sub_and_aud() {
        let c = claims(json!({"aud":["a1","a2"],"sub":"project_path:g/p:ref_type:branch:ref:main"}));
        let policy = trust_policy(&c, "https://gitlab.example.com/gitlab", None);
        let condition = &policy["Statement"][0]["Condition"]["StringEquals"];
        assert_eq!(condition["gitlab.example.com/gitlab:aud"], "a1");
        assert_eq!(
            condition["gitlab.example.com/gitlab:sub"],
            "project_path:g/p:ref_type:branch:ref:main"
        );
        assert_eq!(
            policy["Statement"][0]["Principal"]["Federated"],
            "arn:aws:iam::ACCOUNT_ID:oidc-provider/gitlab.example.com/gitlab"
        );
        let policy = trust_policy(&c, "https://gitlab.example.com", Some("a2"));
        assert_eq!(
            policy["Statement"][0]["Condition"]["StringEquals"]["gitlab.example.com:aud"],
            "a2"
        );
    }
}
