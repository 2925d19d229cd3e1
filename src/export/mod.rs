//! A static copy of the OIDC documents under another issuer (GitLab 18.1's
//! custom CI issuer URL: a public bucket or web root that AWS STS can reach
//! when GitLab cannot be). Fed by the same cache the proxy serves from, so a
//! bad GitLab answer never reaches the copy.
//!
//! One pass writes only what changed, the key set before discovery (a reader
//! never sees a `jwks_uri` whose keys are not there yet), and keeps a key that
//! GitLab dropped for `--max-age` more: a token signed just before a rotation
//! still verifies against a copy a consumer fetched since. When each key was
//! dropped is kept beside the copy (`STATE`), so separate `--once` runs keep
//! the grace too.

mod dir;
mod s3;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::config::Issuer;
use crate::error::DocError;
use crate::oidc::cache::Cache;
use crate::oidc::{discovery, jwks};

use dir::DirTarget;
use s3::S3Target;

/// Where discovery and the key sets go, relative to the issuer's root.
const DISCOVERY: &str = ".well-known/openid-configuration";
const OAUTH_KEYS: &str = "oauth/discovery/keys";
/// Which keys were dropped when: the grace survives between runs.
const STATE: &str = ".gitlab-oidc-proxy-export.json";

/// Where the copy goes (`--to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl ExportTarget {
    /// `--to`: `s3://BUCKET[/PREFIX]`, or a directory path.
    pub fn parse(s: &str) -> Result<ExportTarget, String> {
        if s.is_empty() {
            return Err("empty".into());
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{s}: no bucket name"));
            }
            return Ok(ExportTarget::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if s.contains("://") {
            return Err(format!("{s}: a directory or s3://BUCKET/PREFIX"));
        }
        Ok(ExportTarget::Dir(PathBuf::from(s)))
    }
}

/// The store behind `--to`.
enum Target {
    Dir(DirTarget),
    S3(S3Target),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Dir(t) => t.describe(),
            Target::S3(t) => t.describe(),
        }
    }

    async fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Target::Dir(t) => t.get(name).await,
            Target::S3(t) => t.get(name).await,
        }
    }

    async fn put(&self, name: &str, body: Vec<u8>) -> std::io::Result<()> {
        match self {
            Target::Dir(t) => t.put(name, body).await,
            Target::S3(t) => t.put(name, body).await,
        }
    }
}

/// What to export, and as whom.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub target: ExportTarget,
    /// The issuer the copy is published under (`--issuer`).
    pub issuer: Issuer,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("no valid OIDC documents from GitLab yet")]
    NoDocuments,
    #[error("{what} {name} in {target}: {source}")]
    Target {
        what: &'static str,
        name: String,
        target: String,
        source: std::io::Error,
    },
}

/// One key as the state remembers it: its JWK, and when GitLab stopped listing it.
#[derive(Debug, Clone, PartialEq)]
struct Remembered {
    jwk: jwks::Jwk,
    dropped_at: Option<u64>,
}

pub(crate) struct Exporter {
    target: Target,
    issuer: Issuer,
    jwks_path: String,
    grace: Duration,
}

impl Exporter {
    /// `grace` is `--max-age`: how long dropped keys stay, and the objects' max-age.
    pub(crate) fn new(settings: &ExportSettings, jwks_path: &str, grace: Duration) -> Result<Self, String> {
        let target = match &settings.target {
            ExportTarget::Dir(root) => Target::Dir(DirTarget::new(root.clone())),
            ExportTarget::S3 { bucket, prefix } => Target::S3(S3Target::new(bucket, prefix, grace)?),
        };
        Ok(Exporter {
            target,
            issuer: settings.issuer.clone(),
            jwks_path: jwks_path.trim_start_matches('/').to_owned(),
            grace,
        })
    }

    pub(crate) fn describe(&self) -> String {
        self.target.describe()
    }

    /// Writes what changed since the copy was last written, from the cache's
    /// current documents; returns the names written.
    pub(crate) async fn pass(&self, cache: &Cache, now: SystemTime) -> Result<Vec<String>, ExportError> {
        let (Some(discovery), Some(keys)) = (cache.discovery(), cache.keys()) else {
            return Err(ExportError::NoDocuments);
        };
        let current = jwks::parse(&keys.doc.body).map_err(|_: DocError| ExportError::NoDocuments)?;
        let held = self.read_state().await?;
        let remembered = remember(held.clone(), &current, secs(now), self.grace.as_secs());
        let mut merged = current.clone();
        merged.extend(
            remembered
                .values()
                .filter(|r| r.dropped_at.is_some())
                .map(|r| r.jwk.clone()),
        );
        let key_set = jwks::publish(&merged);
        let document = discovery::publish(&discovery.source, &self.issuer, &format!("/{}", self.jwks_path));

        let mut written = Vec::new();
        // Keys first: the discovery document may name them only once they are there.
        for name in [OAUTH_KEYS, self.jwks_path.as_str()] {
            self.put_if_changed(name, &key_set, &mut written).await?;
        }
        self.put_if_changed(DISCOVERY, &document, &mut written).await?;
        if remembered != held {
            self.put(STATE, state_json(&remembered)).await?;
            written.push(STATE.to_owned());
        }
        Ok(written)
    }

    async fn put_if_changed(&self, name: &str, body: &[u8], written: &mut Vec<String>) -> Result<(), ExportError> {
        let existing = self
            .target
            .get(name)
            .await
            .map_err(|e| self.error("reading", name, e))?;
        if existing.as_deref() != Some(body) {
            self.put(name, body.to_vec()).await?;
            written.push(name.to_owned());
        }
        Ok(())
    }

    async fn put(&self, name: &str, body: Vec<u8>) -> Result<(), ExportError> {
        self.target
            .put(name, body)
            .await
            .map_err(|e| self.error("writing", name, e))
    }

    fn error(&self, what: &'static str, name: &str, source: std::io::Error) -> ExportError {
        ExportError::Target {
            what,
            name: name.to_owned(),
            target: self.describe(),
            source,
        }
    }

    /// The remembered keys; a missing or unreadable state starts afresh (with a
    /// warning for the latter: the grace of keys dropped before is lost).
    async fn read_state(&self) -> Result<BTreeMap<String, Remembered>, ExportError> {
        let Some(body) = self
            .target
            .get(STATE)
            .await
            .map_err(|e| self.error("reading", STATE, e))?
        else {
            return Ok(BTreeMap::new());
        };
        parse_state(&body).ok_or(()).or_else(|()| {
            tracing::warn!(target: "export", target_dir = %self.describe(), "the export's state is unreadable; starting afresh");
            Ok(BTreeMap::new())
        })
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The state after this pass: every current key (not dropped), every key
/// dropped less than `grace` ago (dropped now if it just went).
fn remember(
    mut held: BTreeMap<String, Remembered>,
    current: &[jwks::Jwk],
    now: u64,
    grace: u64,
) -> BTreeMap<String, Remembered> {
    for r in held.values_mut() {
        r.dropped_at.get_or_insert(now);
    }
    for key in current {
        held.insert(
            jwks::kid(key).to_owned(),
            Remembered {
                jwk: key.clone(),
                dropped_at: None,
            },
        );
    }
    held.retain(|_, r| r.dropped_at.is_none_or(|at| now < at.saturating_add(grace)));
    held
}

fn state_json(remembered: &BTreeMap<String, Remembered>) -> Vec<u8> {
    let keys: Vec<Value> = remembered
        .iter()
        .map(|(kid, r)| json!({"kid": kid, "dropped_at": r.dropped_at, "jwk": r.jwk}))
        .collect();
    let mut out = serde_json::to_vec_pretty(&json!({"version": 1, "keys": keys})).expect("JSON serializes");
    out.push(b'\n');
    out
}

fn parse_state(body: &[u8]) -> Option<BTreeMap<String, Remembered>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut out = BTreeMap::new();
    for key in value.get("keys")?.as_array()? {
        let jwk: Map<String, Value> = key.get("jwk")?.as_object()?.clone();
        // The state is read back into a published key set: the same checks as GitLab's.
        let checked = jwks::parse(&jwks::publish(std::slice::from_ref(&jwk))).ok()?;
        let dropped_at = key.get("dropped_at").and_then(Value::as_u64);
        out.insert(
            key.get("kid")?.as_str()?.to_owned(),
            Remembered {
                jwk: checked.into_iter().next()?,
                dropped_at,
            },
        );
    }
    Some(out)
}

/// `export --once`, or until the process ends: refresh, then write what changed;
/// failures are retried with doubling waits up to `refresh`. Returns the exit
/// status for `--once` (0 written or unchanged, 1 failed).
pub(crate) async fn run(cache: Arc<Cache>, exporter: Exporter, refresh: Duration, once: bool) -> u8 {
    let mut backoff = Duration::from_secs(1);
    loop {
        let report = cache.refresh().await;
        let outcome = exporter.pass(&cache, SystemTime::now()).await;
        match &outcome {
            Ok(written) if written.is_empty() => {
                tracing::info!(target: "export", to = %exporter.describe(), "copy unchanged")
            }
            Ok(written) => {
                tracing::info!(target: "export", to = %exporter.describe(), written = ?written, "copy written")
            }
            Err(e) => tracing::warn!(
                target: "export",
                to = %exporter.describe(),
                error = %e,
                gitlab_ok = report.ok(),
                "export failed; the copy stays as it was"
            ),
        }
        if once {
            return u8::from(outcome.is_err());
        }
        let wait = if outcome.is_ok() {
            backoff = Duration::from_secs(1);
            refresh
        } else {
            let wait = backoff.min(refresh);
            backoff = (backoff * 2).min(refresh);
            wait
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str) -> jwks::Jwk {
        serde_json::from_str(&format!(r#"{{"kty":"RSA","kid":"{kid}","e":"AQAB","n":"n{kid}"}}"#)).unwrap()
    }

    fn kids(state: &BTreeMap<String, Remembered>) -> Vec<(&str, Option<u64>)> {
        state.iter().map(|(k, r)| (k.as_str(), r.dropped_at)).collect()
    }

    #[test]
    fn a_dropped_key_stays_for_the_grace_then_goes() {
        let grace = 3600;
        let first = remember(BTreeMap::new(), &[key("a"), key("b")], 1000, grace);
        assert_eq!(kids(&first), [("a", None), ("b", None)]);
        // b rotated out at 2000: kept, marked.
        let second = remember(first, &[key("a"), key("c")], 2000, grace);
        assert_eq!(kids(&second), [("a", None), ("b", Some(2000)), ("c", None)]);
        // Later passes keep the first drop time.
        let third = remember(second, &[key("a"), key("c")], 4000, grace);
        assert_eq!(kids(&third), [("a", None), ("b", Some(2000)), ("c", None)]);
        // Gone once the grace has passed.
        let fourth = remember(third.clone(), &[key("a"), key("c")], 2000 + grace, grace);
        assert_eq!(kids(&fourth), [("a", None), ("c", None)]);
        // A key that comes back is current again.
        let back = remember(third, &[key("b")], 4001, grace);
        assert_eq!(kids(&back), [("a", Some(4001)), ("b", None), ("c", Some(4001))]);
    }

    #[test]
    fn state_round_trips_and_refuses_private_members() {
        let state = remember(BTreeMap::new(), &[key("a")], 5, 10);
        let state = remember(state, &[key("b")], 6, 10);
        assert_eq!(parse_state(&state_json(&state)), Some(state));
        let private =
            br#"{"version":1,"keys":[{"kid":"a","dropped_at":null,"jwk":{"kty":"RSA","kid":"a","d":"secret"}}]}"#;
        assert_eq!(parse_state(private), None);
        assert_eq!(parse_state(b"not json"), None);
    }

    #[test]
    fn targets() {
        assert!(matches!(ExportTarget::parse("/srv/www/oidc"), Ok(ExportTarget::Dir(_))));
        assert!(ExportTarget::parse("").is_err());
        assert_eq!(
            ExportTarget::parse("s3://bucket/pre/fix/"),
            Ok(ExportTarget::S3 {
                bucket: "bucket".into(),
                prefix: "pre/fix".into()
            })
        );
        assert_eq!(
            ExportTarget::parse("s3://bucket"),
            Ok(ExportTarget::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            })
        );
        assert!(ExportTarget::parse("s3:///x").is_err());
        assert!(ExportTarget::parse("gs://bucket").is_err());
    }
}
