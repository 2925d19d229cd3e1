//! Target `jwks`: the input is up to three key sets, one per line (as
//! `/oauth/discovery/keys` and `/-/jwks` answer). Each goes through `parse`, the accepted
//! ones through `merge`, the union through `publish`. Asserted:
//!
//! - an accepted set holds every key of the input, each an object with a non-empty
//!   string `kty` and `kid` and no private member;
//! - a refusal's message never depends on a private member's value (the secret);
//! - the union holds each `kid` once, the first key seen with it, in first-seen order,
//!   and every `kid` of the inputs; it is refused exactly when it holds no RSA key, or
//!   more than 100 RSA or 100 EC keys;
//! - the published set parses back to the same keys, and merging that alone changes
//!   nothing.

use std::collections::HashSet;

use serde_json::Value;

use crate::oidc::jwks::{Jwk, kid, merge, parse, publish};

/// As in `oidc::jwks`: members only a private key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

pub fn run(data: &[u8]) {
    let mut sets = Vec::new();
    for body in data.split(|&b| b == b'\n').take(3) {
        match parse(body) {
            Ok(keys) => {
                check_parsed(body, &keys);
                sets.push(keys);
            }
            Err(_) => check_secret_free(body),
        }
    }
    let merged = merge(&sets);
    let union = union_by_kid(&sets);
    let count = |kty: &str| {
        union
            .iter()
            .filter(|k| k.get("kty").and_then(Value::as_str) == Some(kty))
            .count()
    };
    let refused = count("RSA") == 0 || count("RSA") > 100 || count("EC") > 100;
    assert_eq!(merged.is_err(), refused, "{merged:?}");
    let Ok(merged) = merged else {
        return;
    };
    assert_eq!(merged, union, "the union by kid, first seen first");
    let again = parse(&publish(&merged)).expect("the published set parses");
    assert_eq!(again, merged, "published as merged");
    assert_eq!(merge(&[again]).expect("merges again"), merged, "merging is idempotent");
}

fn check_parsed(body: &[u8], keys: &[Jwk]) {
    let value: Value = serde_json::from_slice(body).expect("an accepted set is JSON");
    assert_eq!(
        Some(keys.len()),
        value["keys"].as_array().map(Vec::len),
        "every key kept"
    );
    for key in keys {
        for member in ["kty", "kid"] {
            assert!(key.get(member).and_then(Value::as_str).is_some_and(|s| !s.is_empty()));
        }
        assert!(PRIVATE_MEMBERS.iter().all(|m| !key.contains_key(*m)), "{key:?}");
    }
}

/// The oracle for `merge`: keys by `kid`, the first seen wins, in first-seen order.
fn union_by_kid(sets: &[Vec<Jwk>]) -> Vec<Jwk> {
    let mut seen = HashSet::new();
    sets.iter()
        .flatten()
        .filter(|key| seen.insert(kid(key).to_owned()))
        .cloned()
        .collect()
}

/// The same set with every private member's value replaced by one of two others must
/// be refused with the same message: the message cannot carry the secret.
fn check_secret_free(body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let with_secret = |secret: &str| {
        let mut value = value.clone();
        if let Some(keys) = value.get_mut("keys").and_then(Value::as_array_mut) {
            for key in keys.iter_mut().filter_map(Value::as_object_mut) {
                for (name, v) in key.iter_mut() {
                    if PRIVATE_MEMBERS.contains(&name.as_str()) {
                        *v = Value::String(secret.to_owned());
                    }
                }
            }
        }
        let body = serde_json::to_vec(&value).expect("a JSON value serializes");
        parse(&body).map(|_| ()).map_err(|e| e.to_string())
    };
    let (a, b) = (with_secret("SECRET-A"), with_secret("SECRET-B"));
    assert_eq!(a.is_err(), b.is_err());
    if let (Err(a), Err(b)) = (a, b) {
        assert_eq!(a, b, "the message depends on a private member's value");
    }
}
