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
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::config::{ExportSettings, ExportTarget, Issuer};
use crate::error::DocError;
use crate::metrics::Metrics;
use crate::oidc::cache::{Cache, RefreshReport};
use crate::oidc::{discovery, jwks};

use dir::DirTarget;
use s3::S3Target;

/// Where discovery and the key sets go, relative to the issuer's root.
const DISCOVERY: &str = ".well-known/openid-configuration";
const OAUTH_KEYS: &str = "oauth/discovery/keys";
/// Which keys were dropped when: the grace survives between runs.
const STATE: &str = ".gitlab-oidc-proxy-export.json";

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
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

/// How the copy fared, for the admin listener's `/status`.
#[derive(Default)]
pub(crate) struct Status {
    to: String,
    issuer: String,
    passes: Mutex<Passes>,
}

/// Unix seconds throughout.
#[derive(Default, Clone)]
struct Passes {
    last_attempt: Option<u64>,
    last_success: Option<u64>,
    /// The last pass that wrote anything, and what.
    last_written: Option<(u64, Vec<String>)>,
    last_error: Option<String>,
    consecutive_failures: u32,
}

impl Status {
    pub(crate) fn to_json(&self) -> Value {
        let p = self.passes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "to": self.to,
            "issuer": self.issuer,
            "last_attempt": p.last_attempt,
            "last_success": p.last_success,
            "last_written": p.last_written.as_ref().map(|(at, _)| at),
            "written": p.last_written.map(|(_, names)| names),
            "consecutive_failures": p.consecutive_failures,
            "error": p.last_error,
        })
    }

    fn record(&self, now: u64, outcome: &Result<Vec<String>, ExportError>) {
        let mut p = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        p.last_attempt = Some(now);
        match outcome {
            Ok(written) => {
                p.last_success = Some(now);
                p.last_error = None;
                p.consecutive_failures = 0;
                if !written.is_empty() {
                    p.last_written = Some((now, written.clone()));
                }
            }
            Err(e) => {
                p.last_error = Some(e.to_string());
                p.consecutive_failures = p.consecutive_failures.saturating_add(1);
            }
        }
    }
}

impl Exporter {
    /// `grace` is `--max-age`: how long dropped keys stay, and the objects' max-age.
    pub(crate) fn new(
        settings: &ExportSettings,
        jwks_path: &str,
        grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let jwks_path = jwks_path.trim_start_matches('/').to_owned();
        if [STATE, DISCOVERY].contains(&jwks_path.as_str()) {
            return Err(format!(
                "--jwks-path /{jwks_path} would overwrite the export's own {jwks_path}"
            ));
        }
        let target = match &settings.target {
            ExportTarget::Dir(root) => Target::Dir(DirTarget::new(root.clone())),
            ExportTarget::S3 { bucket, prefix } => Target::S3(S3Target::new(bucket, prefix, grace)?),
        };
        let status = Arc::new(Status {
            to: target.describe(),
            issuer: settings.issuer.url.clone(),
            passes: Mutex::default(),
        });
        metrics.zero_export_series(&status.to);
        Ok(Exporter {
            target,
            issuer: settings.issuer.clone(),
            jwks_path,
            grace,
            status,
            metrics,
        })
    }

    pub(crate) fn describe(&self) -> String {
        self.target.describe()
    }

    pub(crate) fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// One pass, logged, counted and recorded; `gitlab` is how the refresh
    /// before it went, when this pass made one.
    async fn attempt(&self, cache: &Cache, gitlab: Option<&RefreshReport>) -> Result<Vec<String>, ExportError> {
        let now = SystemTime::now();
        let outcome = self.pass(cache, now).await;
        let to = &self.status.to;
        match &outcome {
            Ok(written) if written.is_empty() => tracing::debug!(target: "export", to, "copy unchanged"),
            Ok(written) => tracing::info!(target: "export", to, written = ?written, "copy written"),
            Err(e) => tracing::warn!(
                target: "export",
                to,
                error = %e,
                gitlab_error = gitlab.and_then(|r| r.discovery.as_ref().err().or(r.keys.as_ref().err())).map(ToString::to_string),
                "export failed; the copy stays as it was"
            ),
        }
        let label = match &outcome {
            Ok(written) if written.is_empty() => "unchanged",
            Ok(_) => "written",
            Err(_) => "failed",
        };
        // /status first: whoever sees the count sees the status too.
        self.status.record(secs(now), &outcome);
        self.metrics.count_export(to, label, secs(now));
        outcome
    }

    /// Writes what changed since the copy was last written, from the cache's
    /// current documents; returns the names written.
    pub(crate) async fn pass(&self, cache: &Cache, now: SystemTime) -> Result<Vec<String>, ExportError> {
        let (Some(discovery), Some(keys)) = (cache.discovery(), cache.keys()) else {
            return Err(ExportError::NoDocuments);
        };
        let current = jwks::parse(&keys.doc.body).map_err(|_: DocError| ExportError::NoDocuments)?;
        let (held, from_state) = self.held().await?;
        let state = State {
            keys: remember(held.keys.clone(), &current, secs(now), self.grace.as_secs()),
            max_age: Some(self.grace.as_secs()),
        };
        let mut merged = current.clone();
        merged.extend(
            state
                .keys
                .values()
                .filter(|r| r.dropped_at.is_some())
                .map(|r| r.jwk.clone()),
        );
        let key_set = jwks::publish(&merged);
        let document = discovery::publish(&discovery.source, &self.issuer, &format!("/{}", self.jwks_path));

        // The objects' Cache-Control carries --max-age: a new one rewrites them all.
        let rewrite = held.max_age != state.max_age;
        let mut written = Vec::new();
        // Keys first: the discovery document may name them only once they are there.
        for name in [OAUTH_KEYS, self.jwks_path.as_str()] {
            self.put_if_changed(name, &key_set, rewrite, &mut written).await?;
        }
        self.put_if_changed(DISCOVERY, &document, rewrite, &mut written).await?;
        if state != held || !from_state {
            self.put(STATE, state_json(&state)).await?;
            written.push(STATE.to_owned());
        }
        Ok(written)
    }

    async fn put_if_changed(
        &self,
        name: &str,
        body: &[u8],
        rewrite: bool,
        written: &mut Vec<String>,
    ) -> Result<(), ExportError> {
        let existing = self
            .target
            .get(name)
            .await
            .map_err(|e| self.error("reading", name, e))?;
        if rewrite || existing.as_deref() != Some(body) {
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

    /// The state kept beside the copy, and whether there was a usable one. Without
    /// one (a first run, a copy kept by hand before, a state lost), the keys of the
    /// copy's key set count as held, so a key GitLab dropped keeps its grace.
    async fn held(&self) -> Result<(State, bool), ExportError> {
        let body = self
            .target
            .get(STATE)
            .await
            .map_err(|e| self.error("reading", STATE, e))?;
        if let Some(state) = body.as_deref().and_then(parse_state) {
            return Ok((state, true));
        }
        if body.is_some() {
            tracing::warn!(target: "export", to = %self.describe(), "the export's state is unreadable; the copy's key set stands in for it");
        }
        let copied = self
            .target
            .get(OAUTH_KEYS)
            .await
            .map_err(|e| self.error("reading", OAUTH_KEYS, e))?;
        let keys = copied
            .and_then(|body| jwks::parse(&body).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|jwk| {
                let kid = jwks::kid(&jwk).to_owned();
                (kid, Remembered { jwk, dropped_at: None })
            })
            .collect();
        Ok((State { keys, max_age: None }, false))
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

/// What is kept beside the copy.
#[derive(Debug, Clone, PartialEq, Default)]
struct State {
    keys: BTreeMap<String, Remembered>,
    /// The `--max-age` the objects were written with (their Cache-Control).
    max_age: Option<u64>,
}

fn state_json(state: &State) -> Vec<u8> {
    let keys: Vec<Value> = state
        .keys
        .iter()
        .map(|(kid, r)| json!({"kid": kid, "dropped_at": r.dropped_at, "jwk": r.jwk}))
        .collect();
    let mut out = serde_json::to_vec_pretty(&json!({"version": 1, "max_age": state.max_age, "keys": keys}))
        .expect("JSON serializes");
    out.push(b'\n');
    out
}

fn parse_state(body: &[u8]) -> Option<State> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let mut keys = BTreeMap::new();
    for key in value.get("keys")?.as_array()? {
        let jwk: Map<String, Value> = key.get("jwk")?.as_object()?.clone();
        // The state is read back into a published key set: the same checks as GitLab's.
        let checked = jwks::parse(&jwks::publish(std::slice::from_ref(&jwk))).ok()?;
        let dropped_at = key.get("dropped_at").and_then(Value::as_u64);
        keys.insert(
            key.get("kid")?.as_str()?.to_owned(),
            Remembered {
                jwk: checked.into_iter().next()?,
                dropped_at,
            },
        );
    }
    let max_age = value.get("max_age").and_then(Value::as_u64);
    Some(State { keys, max_age })
}

/// `export --once`, or until the process ends: refresh, then write what changed;
/// failures are retried with doubling waits up to `refresh`. Returns the exit
/// status for `--once` (0 written or unchanged, 1 failed).
pub(crate) async fn run(cache: Arc<Cache>, exporter: Exporter, refresh: Duration, once: bool) -> u8 {
    let mut retry = Retry::new(refresh);
    loop {
        let report = cache.refresh().await;
        let outcome = exporter.attempt(&cache, Some(&report)).await;
        // Each run says what it did (a cron mail, a job log); `serve` says only changes.
        if outcome.as_ref().is_ok_and(Vec::is_empty) {
            tracing::info!(target: "export", to = %exporter.describe(), "copy unchanged");
        }
        if once {
            return u8::from(outcome.is_err());
        }
        tokio::time::sleep(retry.after(outcome.is_ok())).await;
    }
}

/// `serve --export-to`: a pass each time the proxy's refresher publishes (and
/// every `refresh`, so dropped keys leave the copy on time), from the documents
/// the proxy serves. Never affects serving; runs until aborted.
pub(crate) async fn follow(cache: Arc<Cache>, exporter: Exporter, refresh: Duration) {
    let mut published = cache.subscribe();
    let mut retry = Retry::new(refresh);
    loop {
        // Nothing to copy before the first documents: not a failure of the copy.
        let wait = if cache.warm() {
            retry.after(exporter.attempt(&cache, None).await.is_ok())
        } else {
            refresh
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = published.changed() => {}
        }
    }
}

/// The wait before the next pass: `refresh` after a success, doubling from 1 s
/// (up to `refresh`) after failures.
struct Retry {
    refresh: Duration,
    backoff: Duration,
}

impl Retry {
    fn new(refresh: Duration) -> Self {
        Retry {
            refresh,
            backoff: Duration::from_secs(1),
        }
    }

    fn after(&mut self, ok: bool) -> Duration {
        if ok {
            self.backoff = Duration::from_secs(1);
            self.refresh
        } else {
            let wait = self.backoff.min(self.refresh);
            self.backoff = (self.backoff * 2).min(self.refresh);
            wait
        }
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
    fn a_jwks_path_naming_the_exports_own_files_is_refused() {
        let settings = ExportSettings {
            target: ExportTarget::Dir("/srv/oidc".into()),
            issuer: Issuer::parse("https://oidc.example.com").unwrap(),
        };
        let new = |path: &str| Exporter::new(&settings, path, Duration::from_secs(60), Arc::new(Metrics::new()));
        for taken in ["/.gitlab-oidc-proxy-export.json", "/.well-known/openid-configuration"] {
            assert!(new(taken).err().unwrap().contains("would overwrite"), "{taken}");
        }
        assert!(new("/-/jwks").is_ok());
    }

    #[test]
    fn retries_double_up_to_the_refresh_then_reset() {
        let mut retry = Retry::new(Duration::from_secs(5));
        let waits: Vec<u64> = [false, false, false, false, true, false]
            .into_iter()
            .map(|ok| retry.after(ok).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5, 1]);
    }

    #[test]
    fn status_keeps_the_last_success_through_failures() {
        let status = Status::default();
        status.record(10, &Ok(vec!["oauth/discovery/keys".into()]));
        status.record(20, &Ok(vec![]));
        status.record(30, &Err(ExportError::NoDocuments));
        status.record(40, &Err(ExportError::NoDocuments));
        let json = status.to_json();
        assert_eq!(json["last_attempt"], 40);
        assert_eq!(json["last_success"], 20);
        assert_eq!(json["last_written"], 10);
        assert_eq!(json["written"], json!(["oauth/discovery/keys"]));
        assert_eq!(json["consecutive_failures"], 2);
        assert_eq!(json["error"], "no valid OIDC documents from GitLab yet");
        status.record(50, &Ok(vec![]));
        assert_eq!(status.to_json()["error"], Value::Null);
        assert_eq!(status.to_json()["consecutive_failures"], 0);
    }

    #[test]
    fn state_round_trips_and_refuses_private_members() {
        let keys = remember(BTreeMap::new(), &[key("a")], 5, 10);
        let keys = remember(keys, &[key("b")], 6, 10);
        let state = State {
            keys,
            max_age: Some(10),
        };
        assert_eq!(parse_state(&state_json(&state)), Some(state));
        // A state from before max_age was kept: read, max_age unknown.
        let old = br#"{"version":1,"keys":[]}"#;
        assert_eq!(parse_state(old), Some(State::default()));
        let private =
            br#"{"version":1,"keys":[{"kid":"a","dropped_at":null,"jwk":{"kty":"RSA","kid":"a","d":"secret"}}]}"#;
        assert_eq!(parse_state(private), None);
        assert_eq!(parse_state(b"not json"), None);
    }
}
