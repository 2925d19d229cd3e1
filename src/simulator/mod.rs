//! A faithful simulated GitLab: the OIDC discovery document, the two key sets and
//! CI ID tokens, as each GitLab generation serves them (one [`Profile`] per row of
//! the reference's first table), plus switchable faults.
//!
//! Used by the `demo` subcommand and by the integration tests. Nothing here
//! panics on a request; only [`SimulatedGitLab::new`] can fail.
//!
//! What it serves, all below the external URL's path (the relative URL root):
//! - `/.well-known/openid-configuration`: the discovery document. `issuer` is the
//!   external URL; every other URL takes its host from the request
//!   (`X-Forwarded-Host`, else `Host`) and its scheme from `X-Forwarded-Proto`,
//!   else the external URL's. This is the cache-poisoning hazard the proxy must
//!   defend against, kept on purpose.
//! - `/oauth/discovery/keys` and `/-/jwks`: the key sets (`/-/jwks` is 404 on 17.0).
//! - `/-/health`, `/-/readiness`, `/-/liveness`, `/`; anything else is 404.
//!
//! Keys: fixed RSA 2048 demo keys embedded in the binary (see [`OIDC_KEY_BITS`]
//! and [`CI_KEY_BITS`]). They are public and sign nothing real: never trust a
//! token of this simulator outside a demo or a test. The OIDC key and the initial
//! CI key are the same in every instance; [`SimulatedGitLab::rotate_ci_key`]
//! moves one instance's CI key along a pool of [`CI_KEY_POOL`], wrapping around.

mod keys;
mod rails;
mod server;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use keys::CI_KEY_POOL;
use keys::{KeyMaterial, KeyPool, b64url};
use rails::RailsPool;
pub use rails::RailsSettings;

/// Which GitLab generation to imitate (reference section 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// GitLab <= 14.4: `/oauth/discovery/keys` lacks the CI key; `/-/jwks` has both.
    V14_4,
    /// GitLab 14.5 - 16.6: both sets hold both keys, uncacheable.
    V16_6,
    /// GitLab 16.8+: as 16.6, with a day-long public cache lifetime on the keys.
    V16_8,
    /// GitLab >= 17.0: as 16.8, and `/-/jwks` is gone (404).
    V17_0,
}

impl Profile {
    pub const ALL: [Profile; 4] = [Profile::V14_4, Profile::V16_6, Profile::V16_8, Profile::V17_0];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::V14_4 => "14.4",
            Profile::V16_6 => "16.6",
            Profile::V16_8 => "16.8",
            Profile::V17_0 => "17.0",
        }
    }

    /// Does `/oauth/discovery/keys` publish the CI key?
    pub fn oauth_keys_include_ci(self) -> bool {
        self != Profile::V14_4
    }

    /// Is `/-/jwks` served at all?
    pub fn serves_jwks(self) -> bool {
        self != Profile::V17_0
    }

    /// `Cache-Control` of both key sets.
    pub fn keys_cache_control(self) -> &'static str {
        match self {
            Profile::V14_4 | Profile::V16_6 => "max-age=0, private, must-revalidate",
            Profile::V16_8 | Profile::V17_0 => "max-age=86400, public, must-revalidate, no-transform=true",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s.trim())
            .ok_or_else(|| format!("unknown GitLab profile {s:?} (expected 14.4, 16.6, 16.8 or 17.0)"))
    }
}

impl clap::ValueEnum for Profile {
    fn value_variants<'a>() -> &'a [Self] {
        &Profile::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Profile::V14_4 => "GitLab <= 14.4: the OIDC key set lacks the CI key",
            Profile::V16_6 => "GitLab 14.5 - 16.6: both keys, uncacheable",
            Profile::V16_8 => "GitLab 16.8+: both keys, public for a day",
            Profile::V17_0 => "GitLab >= 17.0: /-/jwks is gone",
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

/// How to set the simulated GitLab up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub profile: Profile,
    /// GitLab's external_url, e.g. "http://127.0.0.1:8080" or
    /// "https://example.com/gitlab" (relative URL root = its path). The discovery
    /// `issuer`.
    pub external_url: String,
    /// The `iss` put in CI ID tokens. None = external URL without its path (GitLab
    /// < 18.1 behaviour, reference section 4).
    pub token_issuer: Option<String>,
}

/// The three documents the proxy cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimDoc {
    Discovery,
    OauthKeys,
    Jwks,
}

impl SimDoc {
    pub const ALL: [SimDoc; 3] = [SimDoc::Discovery, SimDoc::OauthKeys, SimDoc::Jwks];

    /// The path below the relative URL root.
    pub fn path(self) -> &'static str {
        match self {
            SimDoc::Discovery => "/.well-known/openid-configuration",
            SimDoc::OauthKeys => "/oauth/discovery/keys",
            SimDoc::Jwks => "/-/jwks",
        }
    }

    fn index(self) -> usize {
        match self {
            SimDoc::Discovery => 0,
            SimDoc::OauthKeys => 1,
            SimDoc::Jwks => 2,
        }
    }

    fn is_key_set(self) -> bool {
        self != SimDoc::Discovery
    }
}

/// A misbehaviour of one document, from [`SimulatedGitLab::set_fault`] on.
///
/// Faults that alter the document's content (`Truncated`, `Oversized`,
/// `PrivateKeyMembers`, `EmptyKeys`) need a document: on `/-/jwks` of profile
/// 17.0 the 404 stays a 404. The key-set faults (`PrivateKeyMembers`,
/// `EmptyKeys`) leave the discovery document as it is. The others replace
/// whatever would have been answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// That status with a small HTML body (a 3xx also gets a `Location` to the
    /// sign-in page; a status hyper cannot send as a final answer, i.e. not in
    /// 200..=999, becomes 500).
    Status(u16),
    /// Answers correctly, but only after the delay.
    Delay(Duration),
    /// 200 `text/html`: GitLab's sign-in page (what a client following the
    /// redirect of an authentication-protected GitLab sees).
    SignInPage,
    /// 200 `application/json`, the real body cut in half.
    Truncated,
    /// 200 `application/json`, the real document with an extra member making
    /// it a syntactically valid JSON body over 1 MiB.
    Oversized,
    /// (key sets) the keys include the private members d, p, q, dp, dq, qi.
    PrivateKeyMembers,
    /// 200 `application/json` body `[]`.
    NotAnObject,
    /// (key sets) `{"keys":[]}`.
    EmptyKeys,
    /// Close the connection without answering.
    HangUp,
}

/// The simulated GitLab's shared state; use it behind the `Arc` that
/// [`SimulatedGitLab::new`] returns.
pub struct SimulatedGitLab {
    profile: Profile,
    /// `http` or `https`.
    scheme: String,
    /// host[:port] of the external URL.
    authority: String,
    /// Relative URL root: "" or "/gitlab" (no trailing slash).
    root: String,
    /// The discovery `issuer`: the external URL without a trailing slash.
    issuer: String,
    token_issuer: String,
    keys: &'static KeyPool,
    /// Position of the current CI key in the pool's rotation order.
    ci_index: AtomicUsize,
    hits: [AtomicUsize; 3],
    faults: Mutex<[Fault; 3]>,
    jobs: AtomicU64,
    /// None: every request is answered at once.
    rails: Mutex<Option<Arc<RailsPool>>>,
}

impl fmt::Debug for SimulatedGitLab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulatedGitLab")
            .field("profile", &self.profile)
            .field("issuer", &self.issuer)
            .field("token_issuer", &self.token_issuer)
            .finish_non_exhaustive()
    }
}

// Fixed, realistic identity of the job the CI tokens are minted for.
const NAMESPACE_ID: &str = "42";
const NAMESPACE_PATH: &str = "my-group";
const PROJECT_ID: &str = "123";
const PROJECT_PATH: &str = "my-group/my-project";
const USER_ID: &str = "7";
const USER_LOGIN: &str = "jane.doe";
const USER_EMAIL: &str = "jane.doe@example.com";
const PIPELINE_ID: &str = "4567";
const FIRST_JOB_ID: u64 = 89012;
const RUNNER_ID: u64 = 17;
const SHA: &str = "714a629c0b401fdce83e847fc9589983fc6f46bc";
const REF: &str = "main";

/// Why a simulated GitLab cannot be set up.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SimError {
    #[error("external URL {url:?}: {reason}")]
    ExternalUrl { url: String, reason: &'static str },
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
}

impl SimulatedGitLab {
    /// Parses the external URL and takes the process-wide keys (the first call in
    /// a process parses the embedded ones, in milliseconds).
    pub fn new(config: SimConfig) -> Result<Arc<Self>, SimError> {
        let url = config.external_url.trim();
        let bad = |reason: &'static str| SimError::ExternalUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => s.to_ascii_lowercase(),
            _ => return Err(bad("the scheme must be http or https")),
        };
        let authority = match uri.authority() {
            Some(a) if !a.host().is_empty() && !a.as_str().contains('@') => a.as_str().to_owned(),
            _ => return Err(bad("needs a host and no user info")),
        };
        if uri.query().is_some() {
            return Err(bad("must not have a query"));
        }
        let root = uri.path().trim_end_matches('/').to_owned();
        let origin = format!("{scheme}://{authority}");
        let issuer = format!("{origin}{root}");
        let token_issuer = config.token_issuer.unwrap_or_else(|| origin.clone());

        let keys = keys::pool()?;
        Ok(Arc::new(SimulatedGitLab {
            profile: config.profile,
            scheme,
            authority,
            root,
            issuer,
            token_issuer,
            keys,
            ci_index: AtomicUsize::new(0),
            hits: Default::default(),
            faults: Mutex::new(Default::default()),
            jobs: AtomicU64::new(FIRST_JOB_ID),
            rails: Mutex::new(None),
        }))
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The discovery `issuer` (the external URL, relative root included).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `iss` of minted CI tokens.
    pub fn token_issuer(&self) -> &str {
        &self.token_issuer
    }

    pub fn ci_kid(&self) -> String {
        self.ci_key().kid().to_owned()
    }

    pub fn oidc_kid(&self) -> String {
        self.keys.oidc.kid().to_owned()
    }

    /// A CI ID token (JWT, RS256, header `{"kid","typ":"JWT","alg":"RS256"}` in
    /// that order) with the claims of reference section 4, signed by the current
    /// CI key. `exp = iat + 3600`, `nbf = iat - 5`.
    pub fn mint_ci_token(&self, aud: &str) -> String {
        self.mint_ci_token_with(aud, |_, _| {})
    }

    /// As [`mint_ci_token`](Self::mint_ci_token), with the header and the claims
    /// edited before signing (a missing `aud`, an expired `exp`, another `kid`).
    pub fn mint_ci_token_with(&self, aud: &str, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
        let key = self.ci_key();
        let iat = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut header = json!({"kid": key.kid(), "typ": "JWT", "alg": "RS256"});
        let mut claims = self.ci_claims(aud, iat);
        edit(&mut header, &mut claims);
        let message = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).unwrap_or_default()),
            b64url(&serde_json::to_vec(&claims).unwrap_or_default()),
        );
        match key.sign(message.as_bytes()) {
            Ok(signature) => format!("{message}.{signature}"),
            // Unreachable: every key proved it can sign when it was made.
            Err(e) => {
                tracing::error!(error = %e, "simulated GitLab: signing a CI token failed");
                String::new()
            }
        }
    }

    fn ci_claims(&self, aud: &str, iat: u64) -> Value {
        let job_id = self.jobs.fetch_add(1, Ordering::Relaxed);
        let ref_path = format!("refs/heads/{REF}");
        // GitLab builds it from its configured host (no scheme) and relative root.
        let ci_config_ref_uri = format!(
            "{}{}/{PROJECT_PATH}//.gitlab-ci.yml@{ref_path}",
            self.authority, self.root
        );
        json!({
            "namespace_id": NAMESPACE_ID,
            "namespace_path": NAMESPACE_PATH,
            "project_id": PROJECT_ID,
            "project_path": PROJECT_PATH,
            "user_id": USER_ID,
            "user_login": USER_LOGIN,
            "user_email": USER_EMAIL,
            "pipeline_id": PIPELINE_ID,
            "pipeline_source": "push",
            "job_id": job_id.to_string(),
            "ref": REF,
            "ref_type": "branch",
            "ref_path": ref_path,
            "ref_protected": "true",
            "runner_id": RUNNER_ID,
            "runner_environment": "self-hosted",
            "sha": SHA,
            "project_visibility": "private",
            "ci_config_ref_uri": ci_config_ref_uri,
            "ci_config_sha": SHA,
            "jti": random_uuid(),
            "iss": self.token_issuer,
            "iat": iat,
            "nbf": iat.saturating_sub(5),
            "exp": iat + 3600,
            "sub": format!("project_path:{PROJECT_PATH}:ref_type:branch:ref:{REF}"),
            "aud": aud,
        })
    }

    /// Requests that arrived so far for one document (whatever the method or
    /// the outcome: faults, 304s and 404s count too).
    pub fn hits(&self, doc: SimDoc) -> usize {
        self.hits[doc.index()].load(Ordering::SeqCst)
    }

    pub fn reset_hits(&self) {
        for hits in &self.hits {
            hits.store(0, Ordering::SeqCst);
        }
    }

    /// Makes one document misbehave from now on (`Fault::None` restores it).
    pub fn set_fault(&self, doc: SimDoc, fault: Fault) {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)[doc.index()] = fault;
    }

    pub fn fault(&self, doc: SimDoc) -> Fault {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)[doc.index()].clone()
    }

    /// Replaces the CI signing key with the next of the [`CI_KEY_POOL`] fixed
    /// keys, as an admin rotation does (no overlap: the old key disappears at
    /// once); returns the new kid. The kid always changes, but once past the last
    /// key of the pool the rotation wraps around to the first, so kids recur.
    pub fn rotate_ci_key(&self) -> String {
        let next = |i: usize| (i + 1) % CI_KEY_POOL;
        let previous = self
            .ci_index
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |i| Some(next(i)))
            .unwrap_or_else(|unchanged| unchanged); // never: the update always applies
        self.keys.ci(next(previous)).kid().to_owned()
    }

    /// Answers every later request from a bounded pool of Rails workers with a
    /// service time (None: at once, the default).
    pub fn set_rails(&self, settings: Option<RailsSettings>) {
        *self.rails.lock().unwrap_or_else(PoisonError::into_inner) = settings.map(|s| Arc::new(RailsPool::new(s)));
    }

    pub fn rails(&self) -> Option<RailsSettings> {
        self.rails_pool().map(|pool| pool.settings())
    }

    fn rails_pool(&self) -> Option<Arc<RailsPool>> {
        self.rails.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn ci_key(&self) -> &'static KeyMaterial {
        self.keys.ci(self.ci_index.load(Ordering::SeqCst))
    }

    fn record_hit(&self, doc: SimDoc) {
        self.hits[doc.index()].fetch_add(1, Ordering::SeqCst);
    }

    /// The keys a key set lists on this profile (OIDC first, then CI), or None
    /// when the document does not exist (404).
    fn key_set_keys(&self, doc: SimDoc) -> Option<Vec<&'static KeyMaterial>> {
        let with_ci = match doc {
            SimDoc::Discovery => return None,
            SimDoc::OauthKeys => self.profile.oauth_keys_include_ci(),
            SimDoc::Jwks if !self.profile.serves_jwks() => return None,
            SimDoc::Jwks => true,
        };
        let mut keys = vec![&self.keys.oidc];
        if with_ci {
            keys.push(self.ci_key());
        }
        Some(keys)
    }

    /// The discovery document for a request whose URLs are based on `base`
    /// (scheme://host plus the relative root).
    fn discovery_document(&self, base: &str) -> Value {
        let legacy = self.profile == Profile::V14_4;
        let mut doc = json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{base}/oauth/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "revocation_endpoint": format!("{base}/oauth/revoke"),
            "introspection_endpoint": format!("{base}/oauth/introspect"),
            "userinfo_endpoint": format!("{base}/oauth/userinfo"),
            "jwks_uri": format!("{base}/oauth/discovery/keys"),
            "scopes_supported": ["api", "read_api", "read_user", "openid", "profile", "email"],
            "response_types_supported": if legacy { json!(["code", "token"]) } else { json!(["code"]) },
            "response_modes_supported": ["query", "fragment", "form_post"],
            "grant_types_supported": if legacy {
                json!(["authorization_code", "implicit", "password", "client_credentials", "refresh_token"])
            } else {
                json!(["authorization_code", "password", "client_credentials", "device_code", "refresh_token"])
            },
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claim_types_supported": ["normal"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "sub_legacy", "name", "nickname",
                "preferred_username", "email", "email_verified", "website", "profile",
                "picture", "groups", "groups_direct",
            ],
        });
        if !legacy && let Value::Object(members) = &mut doc {
            members.insert("code_challenge_methods_supported".to_owned(), json!(["plain", "S256"]));
        }
        doc
    }
}

/// `N` bytes from the OS random generator. Should it ever fail (then TLS fails
/// too), the bytes are zero and an error is logged: they only make ids unique.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        tracing::error!("simulated GitLab: the OS random generator failed; using zeros");
        bytes = [0; N];
    }
    bytes
}

/// A random version 4 UUID, as GitLab's `jti`.
fn random_uuid() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
