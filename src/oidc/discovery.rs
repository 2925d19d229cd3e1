//! The discovery document: validated as GitLab sent it, then published per
//! issuer with `jwks_uri` pointing at our key endpoint and every endpoint URL
//! on the issuer's origin, so nothing in it depends on a request's `Host`.

use serde_json::{Map, Value};

use crate::config::Issuer;
use crate::error::DocError;

/// Members a consumer such as AWS STS requires.
const REQUIRED: [&str; 5] = [
    "issuer",
    "jwks_uri",
    "response_types_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
];

/// Checks GitLab's document; returns it (key order kept) and its issuer.
pub(crate) fn validate(body: &[u8]) -> Result<(Map<String, Value>, Issuer), DocError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| DocError::NotJson(e.to_string()))?;
    let Value::Object(doc) = value else {
        return Err(DocError::Invalid("discovery document is not a JSON object".into()));
    };
    for member in REQUIRED {
        if !doc.contains_key(member) {
            return Err(DocError::Invalid(format!("discovery document lacks `{member}`")));
        }
    }
    for member in ["issuer", "jwks_uri"] {
        if !doc[member].is_string() {
            return Err(DocError::Invalid(format!("`{member}` is not a string")));
        }
    }
    for member in &REQUIRED[2..] {
        if !doc[*member]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_string))
        {
            return Err(DocError::Invalid(format!("`{member}` is not a list of strings")));
        }
    }
    let issuer = Issuer::parse(doc["issuer"].as_str().unwrap_or_default())
        .map_err(|e| DocError::Invalid(format!("`issuer`: {e}")))?;
    Ok((doc, issuer))
}

/// The document as served for `issuer`: `issuer` set to it, `jwks_uri` to
/// `{issuer}{jwks_path}`, every other absolute http(s) URL moved to its origin.
/// Every other member, and the member order, stay as GitLab sent them.
pub(crate) fn publish(doc: &Map<String, Value>, issuer: &Issuer, jwks_path: &str) -> Vec<u8> {
    let mut out = doc.clone();
    for (name, value) in out.iter_mut() {
        match name.as_str() {
            // GitLab's own issuer stays byte for byte as GitLab sent it: consumers
            // compare it with the tokens' `iss` exactly.
            "issuer" if value.as_str().and_then(|v| Issuer::parse(v).ok()).as_ref() == Some(issuer) => {}
            "issuer" => *value = Value::String(issuer.url.clone()),
            "jwks_uri" => *value = Value::String(format!("{}{jwks_path}", issuer.url)),
            _ => {
                if let Value::String(s) = value
                    && let Some(moved) = with_origin(s, &issuer.origin)
                {
                    *s = moved;
                }
            }
        }
    }
    serde_json::to_vec(&Value::Object(out)).expect("a JSON map always serializes")
}

/// `https://any.host:1/p?q` → `{origin}/p?q`; None for anything not an absolute http(s) URL.
fn with_origin(url: &str, origin: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let path_start = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if path_start == 0 {
        return None;
    }
    Some(format!("{origin}{}", &rest[path_start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITLAB_17: &str = r#"{"issuer":"https://gitlab.example.com","authorization_endpoint":"https://evil.example/oauth/authorize","token_endpoint":"https://gitlab.example.com/oauth/token","revocation_endpoint":"https://gitlab.example.com/oauth/revoke","introspection_endpoint":"https://gitlab.example.com/oauth/introspect","userinfo_endpoint":"https://gitlab.example.com/oauth/userinfo","jwks_uri":"https://evil.example:8443/oauth/discovery/keys","scopes_supported":["api","openid"],"response_types_supported":["code"],"response_modes_supported":["query","fragment","form_post"],"grant_types_supported":["authorization_code"],"token_endpoint_auth_methods_supported":["client_secret_basic"],"subject_types_supported":["public"],"id_token_signing_alg_values_supported":["RS256"],"claim_types_supported":["normal"],"claims_supported":["iss","sub"],"code_challenge_methods_supported":["plain","S256"]}"#;

    #[test]
    fn publish_rewrites_only_urls_and_keeps_order() {
        let (doc, issuer) = validate(GITLAB_17.as_bytes()).unwrap();
        assert_eq!(issuer.url, "https://gitlab.example.com");
        let out = String::from_utf8(publish(&doc, &issuer, "/-/jwks")).unwrap();
        let expected = GITLAB_17
            .replace(
                "https://evil.example/oauth/authorize",
                "https://gitlab.example.com/oauth/authorize",
            )
            .replace(
                "https://evil.example:8443/oauth/discovery/keys",
                "https://gitlab.example.com/-/jwks",
            );
        assert_eq!(out, expected);
    }

    #[test]
    fn publish_for_another_issuer() {
        let (doc, _) = validate(
            GITLAB_17
                .replace("https://gitlab.example.com\"", "https://gitlab.example.com/gitlab\"")
                .as_bytes(),
        )
        .unwrap();
        let other = Issuer::parse("https://gitlab.example.com").unwrap();
        let out: Value = serde_json::from_slice(&publish(&doc, &other, "/-/jwks")).unwrap();
        assert_eq!(out["issuer"], "https://gitlab.example.com");
        assert_eq!(out["jwks_uri"], "https://gitlab.example.com/-/jwks");
        assert_eq!(out["token_endpoint"], "https://gitlab.example.com/oauth/token");
        assert_eq!(out["scopes_supported"], serde_json::json!(["api", "openid"]));
    }

    #[test]
    fn gitlab_issuer_is_kept_byte_for_byte() {
        let body = GITLAB_17.replace(
            r#""issuer":"https://gitlab.example.com""#,
            r#""issuer":"https://gitlab.example.com/""#,
        );
        let (doc, issuer) = validate(body.as_bytes()).unwrap();
        let out: Value = serde_json::from_slice(&publish(&doc, &issuer, "/-/jwks")).unwrap();
        assert_eq!(
            out["issuer"], "https://gitlab.example.com/",
            "as GitLab sent it, trailing slash and all"
        );
        assert_eq!(out["jwks_uri"], "https://gitlab.example.com/-/jwks");
    }

    #[test]
    fn with_origin_cases() {
        let o = "https://g.example";
        assert_eq!(
            with_origin("http://h:1/a/b?c=d", o).as_deref(),
            Some("https://g.example/a/b?c=d")
        );
        assert_eq!(with_origin("https://h", o).as_deref(), Some("https://g.example"));
        assert_eq!(with_origin("https://h?x", o).as_deref(), Some("https://g.example?x"));
        assert_eq!(with_origin("public", o), None);
        assert_eq!(with_origin("https:///nohost", o), None);
        assert_eq!(with_origin("urn:x", o), None);
    }

    #[test]
    fn rejects_bad_documents() {
        let cases: [(&str, &str); 7] = [
            ("<html>sign in</html>", "not JSON"),
            (r#"{"issuer":"https://g""#, "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"issuer":"https://g"}"#, "lacks `jwks_uri`"),
            (
                &GITLAB_17.replace(
                    r#""subject_types_supported":["public"]"#,
                    r#""subject_types_supported":[]"#,
                ),
                "subject_types_supported",
            ),
            (
                &GITLAB_17.replace(r#""issuer":"https://gitlab.example.com""#, r#""issuer":7"#),
                "`issuer` is not a string",
            ),
            (
                &GITLAB_17.replace(r#""issuer":"https://gitlab.example.com""#, r#""issuer":"gitlab""#),
                "`issuer`",
            ),
        ];
        for (body, want) in cases {
            let err = validate(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }
}
