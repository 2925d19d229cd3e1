//! Target `discovery`: the input is GitLab's discovery document. Whatever `validate`
//! accepts is published for its own issuer and for another one (a relative-root
//! install's `--issuer`), and each published document must:
//!
//! - validate again, naming the issuer it was published for;
//! - have `jwks_uri` = `{issuer}{jwks_path}`, exactly;
//! - keep every member, in GitLab's order, with only absolute http(s) URL strings
//!   changed, and those only moved to the issuer's origin (path, query kept);
//! - come out byte for byte the same when published once more (idempotent).

use serde_json::{Map, Value};

use crate::config::Issuer;
use crate::oidc::discovery::{publish, validate};

/// An issuer other than GitLab's, with a path, as `--issuer` would give.
const OTHER_ISSUER: &str = "https://proxy.example:8443/gitlab";

pub fn run(data: &[u8]) {
    let Ok((doc, own)) = validate(data) else {
        return;
    };
    check_issuer(&own);
    let gitlab_issuer = doc["issuer"].as_str().expect("validate checked `issuer` is a string");
    assert_eq!(Issuer::parse(gitlab_issuer).ok().as_ref(), Some(&own));
    let other = Issuer::parse(OTHER_ISSUER).expect("a valid issuer");
    for (issuer, jwks_path) in [(&own, "/-/jwks"), (&other, "/oauth/ci/keys")] {
        let out = publish(&doc, issuer, jwks_path);
        check_published(&doc, issuer, jwks_path, &out);
    }
}

/// What `Issuer::parse` promises: `url` = `origin` + `path`, no trailing slash, and
/// parsing `url` again gives the same issuer.
fn check_issuer(issuer: &Issuer) {
    assert_eq!(issuer.url, format!("{}{}", issuer.origin, issuer.path));
    assert!(issuer.path.is_empty() || issuer.path.starts_with('/'), "{issuer:?}");
    assert!(!issuer.url.ends_with('/'), "{issuer:?}");
    assert_eq!(Issuer::parse(&issuer.url).as_ref(), Ok(issuer), "parsing the url again");
}

fn check_published(doc: &Map<String, Value>, issuer: &Issuer, jwks_path: &str, out: &[u8]) {
    let (again, again_issuer) = validate(out).expect("a published document validates");
    assert_eq!(&again_issuer, issuer, "published for this issuer");
    assert_eq!(again["jwks_uri"], format!("{}{jwks_path}", issuer.url));
    assert!(again.keys().eq(doc.keys()), "members and their order kept");
    for (name, before) in doc {
        let after = &again[name];
        match name.as_str() {
            "jwks_uri" => {}
            // Kept as GitLab wrote it when it names this issuer, else the issuer's URL.
            "issuer" => assert!(after == before || *after == issuer.url, "issuer {before} -> {after}"),
            _ => check_member(before, after, &issuer.origin),
        }
    }
    assert_eq!(publish(&again, issuer, jwks_path), out, "publishing is idempotent");
}

/// A member other than `issuer` and `jwks_uri`: unchanged, or an absolute http(s) URL
/// moved to `origin` with the rest (path, query, fragment) kept.
fn check_member(before: &Value, after: &Value, origin: &str) {
    if before == after {
        return;
    }
    let (Value::String(before), Value::String(after)) = (before, after) else {
        panic!("only strings change: {before} -> {after}");
    };
    assert!(
        before.starts_with("https://") || before.starts_with("http://"),
        "only URLs change: {before:?} -> {after:?}"
    );
    let rest = after.strip_prefix(origin).expect("moved to the issuer's origin");
    assert!(before.ends_with(rest), "path kept: {before:?} -> {after:?}");
    assert!(rest.is_empty() || rest.starts_with(['/', '?', '#']), "{after:?}");
}
