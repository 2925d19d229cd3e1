//! The key set: GitLab's `/oauth/discovery/keys` and `/-/jwks` checked one by
//! one, then united by `kid` in upstream order, so the CI signing key is held
//! on every GitLab version.

use serde_json::{Map, Value};

use crate::error::DocError;

/// Members that only a private key has (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
const MAX_RSA: usize = 100;
const MAX_EC: usize = 100;

pub(crate) type Jwk = Map<String, Value>;

/// One upstream key set, each key checked.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Jwk>, DocError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| DocError::NotJson(e.to_string()))?;
    let Some(keys) = value.get("keys").and_then(Value::as_array) else {
        return Err(DocError::Invalid("key set is not an object with a `keys` list".into()));
    };
    // GitLab always has a signing key; an empty set is a broken answer, and
    // uniting it would silently drop that endpoint's keys (the CI key on 14.4).
    if keys.is_empty() {
        return Err(DocError::Invalid("key set is empty".into()));
    }
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let Value::Object(key) = key else {
                return Err(DocError::Invalid(format!("key {i} is not an object")));
            };
            for member in ["kty", "kid"] {
                let text = key.get(member).and_then(Value::as_str).unwrap_or_default();
                if text.is_empty() {
                    return Err(DocError::Invalid(format!("key {i} lacks `{member}`")));
                }
            }
            if let Some(private) = PRIVATE_MEMBERS.iter().find(|m| key.contains_key(**m)) {
                // Never name the value: it is a secret.
                return Err(DocError::Invalid(format!("key {i} has the private member `{private}`")));
            }
            Ok(key.clone())
        })
        .collect()
}

pub(crate) fn kid(key: &Jwk) -> &str {
    key.get("kid").and_then(Value::as_str).unwrap_or_default()
}

/// The union by `kid`, first occurrence first, then the limits consumers impose
/// (AWS STS: at most 100 RSA keys) and at least one RSA key to verify with.
pub(crate) fn merge(sets: &[Vec<Jwk>]) -> Result<Vec<Jwk>, DocError> {
    let mut merged: Vec<Jwk> = Vec::new();
    for key in sets.iter().flatten() {
        if !merged.iter().any(|k| kid(k) == kid(key)) {
            merged.push(key.clone());
        }
    }
    let count = |kty: &str| {
        merged
            .iter()
            .filter(|k| k.get("kty").and_then(Value::as_str) == Some(kty))
            .count()
    };
    let (rsa, ec) = (count("RSA"), count("EC"));
    if rsa == 0 {
        return Err(DocError::Invalid("key set holds no RSA key".into()));
    }
    if rsa > MAX_RSA || ec > MAX_EC {
        return Err(DocError::Invalid(format!(
            "key set holds {rsa} RSA and {ec} EC keys; at most {MAX_RSA} and {MAX_EC}"
        )));
    }
    Ok(merged)
}

pub(crate) fn publish(keys: &[Jwk]) -> Vec<u8> {
    let keys = keys.iter().cloned().map(Value::Object).collect();
    let mut set = Map::new();
    set.insert("keys".into(), Value::Array(keys));
    serde_json::to_vec(&Value::Object(set)).expect("a JSON map always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> String {
        format!(r#"{{"kty":"RSA","kid":"{kid}","e":"AQAB","n":"n-{kid}","use":"sig","alg":"RS256"}}"#)
    }

    fn set(kids: &[&str]) -> String {
        format!(
            r#"{{"keys":[{}]}}"#,
            kids.iter().map(|k| key(k)).collect::<Vec<_>>().join(",")
        )
    }

    #[test]
    fn union_keeps_upstream_order_and_members() {
        // GitLab 14.4: /oauth/discovery/keys lacks the CI key, /-/jwks has both.
        let oauth = parse(set(&["oidc"]).as_bytes()).unwrap();
        let jwks = parse(set(&["oidc", "ci"]).as_bytes()).unwrap();
        let merged = merge(&[oauth, jwks]).unwrap();
        assert_eq!(merged.iter().map(kid).collect::<Vec<_>>(), ["oidc", "ci"]);
        assert_eq!(
            String::from_utf8(publish(&merged)).unwrap(),
            set(&["oidc", "ci"]),
            "members and order kept"
        );
    }

    #[test]
    fn one_source_is_enough() {
        let keys = parse(set(&["oidc", "ci"]).as_bytes()).unwrap();
        assert_eq!(merge(&[keys]).unwrap().len(), 2);
    }

    #[test]
    fn private_members_are_refused_without_echoing_them() {
        for member in PRIVATE_MEMBERS {
            let body = set(&["a"]).replace(r#""e":"AQAB""#, &format!(r#""e":"AQAB","{member}":"SECRETVALUE""#));
            let err = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(&format!("`{member}`")), "{err}");
            assert!(!err.contains("SECRETVALUE"));
        }
    }

    #[test]
    fn malformed_sets_are_refused() {
        for (body, want) in [
            ("[]", "`keys` list"),
            (r#"{"keys":[]}"#, "empty"),
            (r#"{"keys":{}}"#, "`keys` list"),
            (r#"{"keys":[1]}"#, "not an object"),
            (r#"{"keys":[{"kty":"RSA"}]}"#, "lacks `kid`"),
            (r#"{"keys":[{"kid":"x"}]}"#, "lacks `kty`"),
            (r#"{"keys":[{"kid":"","kty":"RSA"}]}"#, "lacks `kid`"),
            (r#"{"keys":[{"kid":"x","kty":"RSA"}"#, "not JSON"),
        ] {
            let err = parse(body.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{body}: {err}");
        }
    }

    #[test]
    fn limits() {
        assert!(merge(&[vec![]]).unwrap_err().to_string().contains("no RSA key"));
        let ec_only = parse(br#"{"keys":[{"kty":"EC","kid":"e"}]}"#).unwrap();
        assert!(merge(&[ec_only]).is_err());
        let kids: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
        let many = parse(set(&kids.iter().map(String::as_str).collect::<Vec<_>>()).as_bytes()).unwrap();
        assert!(
            merge(std::slice::from_ref(&many))
                .unwrap_err()
                .to_string()
                .contains("101 RSA")
        );
        assert_eq!(merge(&[many[..100].to_vec()]).unwrap().len(), 100);
    }
}
