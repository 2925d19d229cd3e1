//! Steps 2 and 3's content half: the discovery document as STS reads it, and
//! the key set its `jwks_uri` names, with the checks the proxy applies to
//! GitLab's own answers.

use http::Uri;
use serde_json::{Map, Value};

use super::report::Step;
use crate::oidc::{discovery, jwks};

/// Step 2: returns `jwks_uri` when the document is usable.
pub(super) fn judge_discovery(step: &mut Step, issuer: &str, body: &[u8]) -> Option<Uri> {
    let (doc, _) = match discovery::validate(body) {
        Ok(parsed) => parsed,
        Err(e) => {
            step.fail(
                format!("the discovery document is refused: {e}"),
                "serve GitLab's discovery document unchanged (STS needs issuer, jwks_uri, \
                 response_types_supported, subject_types_supported, id_token_signing_alg_values_supported)",
            );
            return None;
        }
    };
    let served = doc["issuer"].as_str().unwrap_or_default();
    step.saw(format!("issuer: {served}"));
    if issuer.ends_with('/') {
        step.fail(
            format!("the issuer URL {issuer} ends with a slash"),
            "name the issuer without a trailing slash, as GitLab does, in IAM and in the tokens",
        );
    }
    if served != issuer {
        step.fail(
            format!("the document's issuer {served:?} is not byte-identical to {issuer:?}"),
            "make GitLab's external_url (or the proxy's --external-url/--issuer) exactly the tokens' iss",
        );
    }
    let algs = string_list(&doc, "id_token_signing_alg_values_supported");
    step.saw(format!("id_token_signing_alg_values_supported: {}", algs.join(", ")));
    if !algs.iter().any(|a| a == "RS256") {
        step.fail(
            "RS256 is not among id_token_signing_alg_values_supported",
            "serve GitLab's document (GitLab signs ID tokens with RS256)",
        );
    }
    let jwks_uri = doc["jwks_uri"].as_str().unwrap_or_default();
    step.saw(format!("jwks_uri: {jwks_uri}"));
    let Ok(uri) = jwks_uri.parse::<Uri>() else {
        step.fail(format!("jwks_uri {jwks_uri:?} is not a URL"), "serve a valid jwks_uri");
        return None;
    };
    if uri.scheme_str() != Some("https") {
        step.fail(
            format!("jwks_uri {jwks_uri} is not https"),
            "serve the key set over https (GitLab builds it from the request: set X-Forwarded-Proto https)",
        );
    }
    Some(uri)
}

fn string_list(doc: &Map<String, Value>, member: &str) -> Vec<String> {
    doc.get(member)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Step 3: the key set's keys, when it is usable.
pub(super) fn judge_keys(step: &mut Step, body: &[u8]) -> Option<Vec<jwks::Jwk>> {
    let checked = jwks::parse(body).and_then(|keys| jwks::merge(&[keys]));
    match checked {
        Ok(keys) => {
            let kids: Vec<&str> = keys.iter().map(jwks::kid).collect();
            step.saw(format!("{} keys: {}", keys.len(), kids.join(", ")));
            Some(keys)
        }
        Err(e) => {
            step.fail(
                format!("the key set is refused: {e}"),
                "serve GitLab's public keys only, at most 100 RSA keys",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://gitlab.example.com";

    fn doc(issuer: &str, algs: &str, jwks_uri: &str) -> Vec<u8> {
        format!(
            r#"{{"issuer":"{issuer}","jwks_uri":"{jwks_uri}","response_types_supported":["code"],
            "subject_types_supported":["public"],"id_token_signing_alg_values_supported":[{algs}]}}"#
        )
        .into_bytes()
    }

    fn problems(issuer: &str, body: &[u8]) -> Vec<String> {
        let mut step = Step::new(2, "document");
        judge_discovery(&mut step, issuer, body);
        step.problems
    }

    #[test]
    fn discovery() {
        let good = doc(ISSUER, r#""RS256""#, "https://gitlab.example.com/oauth/discovery/keys");
        assert_eq!(problems(ISSUER, &good), Vec::<String>::new());
        assert_eq!(
            problems("https://gitlab.example.com/", &good),
            [
                "the issuer URL https://gitlab.example.com/ ends with a slash",
                "the document's issuer \"https://gitlab.example.com\" is not byte-identical to \"https://gitlab.example.com/\""
            ]
        );
        assert_eq!(
            problems(ISSUER, &doc(ISSUER, r#""ES256""#, "https://gitlab.example.com/-/jwks")),
            ["RS256 is not among id_token_signing_alg_values_supported"]
        );
        assert_eq!(
            problems(ISSUER, &doc(ISSUER, r#""RS256""#, "http://gitlab.example.com/-/jwks")),
            ["jwks_uri http://gitlab.example.com/-/jwks is not https"]
        );
        assert!(problems(ISSUER, br#"{"issuer":"https://gitlab.example.com"}"#)[0].contains("lacks `jwks_uri`"));
        assert!(problems(ISSUER, b"<html>")[0].contains("refused"));
    }

    #[test]
    fn keys() {
        let mut step = Step::new(3, "keys");
        let keys = judge_keys(&mut step, br#"{"keys":[{"kty":"RSA","kid":"a","n":"x","e":"AQAB"}]}"#);
        assert_eq!(keys.map(|k| k.len()), Some(1));
        assert_eq!(step.evidence, ["1 keys: a"]);
        let mut step = Step::new(3, "keys");
        assert!(judge_keys(&mut step, br#"{"keys":[{"kty":"RSA","kid":"a","d":"secret"}]}"#).is_none());
        assert!(step.problems[0].contains("private member `d`"), "{:?}", step.problems);
        assert!(!step.problems[0].contains("secret"));
        let many: Vec<String> = (0..101)
            .map(|i| format!(r#"{{"kty":"RSA","kid":"k{i}","n":"x","e":"AQAB"}}"#))
            .collect();
        let mut step = Step::new(3, "keys");
        assert!(judge_keys(&mut step, format!(r#"{{"keys":[{}]}}"#, many.join(",")).as_bytes()).is_none());
        assert!(step.failed());
    }
}
