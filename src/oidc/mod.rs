//! OIDC discovery and the CI key set, answered from memory.
//!
//! `Oidc::route` decides which requests are ours (by path only, never by `Host`);
//! `cache` holds the documents and refreshes them; `respond` builds the
//! cacheable answers. Everything else passes through to GitLab.

pub(crate) mod cache;
pub(crate) mod discovery;
pub(crate) mod fetch;
pub(crate) mod jwks;
pub(crate) mod respond;
pub(crate) mod style;

use http::{Method, Request, Response};
use std::sync::Arc;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::DISCOVERY_SUFFIX;
use crate::metrics::{Metrics, ServedLabels};
use cache::{Cache, DiscoveryState, Published};
use prometheus_client::metrics::counter::Counter;

/// Key-set paths GitLab has had; all are answered with the united set.
const KEY_PATHS: [&str; 2] = ["/oauth/discovery/keys", "/-/jwks"];

/// What [`Oidc::answer_now`] makes of a request.
pub(crate) enum Verdict {
    /// Not a document this proxy publishes: GitLab's to answer.
    NotOurs,
    /// Answered from memory.
    Answer(Response<ProxyBody>),
    /// Ours, but no copy is held yet: [`Oidc::handle`] waits for the first.
    Cold(Document),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Document {
    Discovery,
    Keys,
}

impl Document {
    fn label(self) -> &'static str {
        match self {
            Document::Discovery => "discovery",
            Document::Keys => "keys",
        }
    }
}

/// The states a document is served in, as `oidc_responses_total` labels them.
const STATES: [&str; 3] = ["fresh", "stale", "unavailable"];

pub(crate) struct Oidc {
    cache: Arc<Cache>,
    /// `oidc_responses_total` per document (discovery, keys) and state: held, not looked up.
    served: [[Counter; 3]; 2],
}

impl Oidc {
    pub(crate) fn new(cache: Arc<Cache>, metrics: Arc<Metrics>) -> Self {
        let served = [Document::Discovery, Document::Keys].map(|document| {
            STATES.map(|state| {
                metrics
                    .oidc_served
                    .get_or_create(&ServedLabels {
                        document: document.label(),
                        state,
                    })
                    .clone()
            })
        });
        Oidc { cache, served }
    }

    /// The answer for a request that is ours, or None to pass it through;
    /// waits (bounded) for a first copy when none is held yet.
    pub(crate) async fn handle<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let document = match self.answer_now(req, Instant::now()) {
            Verdict::NotOurs => return None,
            Verdict::Answer(resp) => return Some(resp),
            Verdict::Cold(document) => document,
        };
        let path = req.uri().path();
        let (discovery, keys);
        let held = match document {
            Document::Discovery => {
                discovery = self.cache.wait_discovery().await;
                match &discovery {
                    // Known now, and this path is not one of ours: GitLab's to answer.
                    Some(state) => Some(&state.by_path.iter().find(|(p, _)| p == path)?.1),
                    None => None,
                }
            }
            Document::Keys => {
                keys = self.cache.wait_keys().await;
                keys.as_ref().map(|k| &k.doc)
            }
        };
        Some(self.answer(document, req, held, Instant::now()))
    }

    /// What can be said of a request without waiting: nearly always the answer
    /// from memory, or that it is GitLab's. `now`: when the request arrived (a
    /// clock read already made, for its log line).
    pub(crate) fn answer_now<B>(&self, req: &Request<B>, now: Instant) -> Verdict {
        let path = req.uri().path();
        // The hot path: nearly every request is GitLab's; tell with no locks.
        if !self.may_route(path) {
            return Verdict::NotOurs;
        }
        // Borrowed once for the routing and the answer.
        let discovery = self.cache.discovery();
        let Some(document) = self.route(path, discovery.as_deref()) else {
            return Verdict::NotOurs;
        };
        if document == Document::Discovery
            && let Some(state) = &discovery
            && !state.by_path.iter().any(|(p, _)| p == path)
        {
            // Another `.well-known` path than ours: GitLab's to answer, whatever the method.
            return Verdict::NotOurs;
        }
        match *req.method() {
            Method::GET | Method::HEAD => {}
            Method::OPTIONS => return Verdict::Answer(respond::preflight(req.headers())),
            _ => return Verdict::Answer(respond::method_not_allowed()),
        }
        // The states are held, the document borrowed: no copy of it per request.
        let keys;
        let held = match document {
            Document::Discovery => discovery
                .as_ref()
                .and_then(|state| state.by_path.iter().find(|(p, _)| p == path))
                .map(|(_, doc)| doc),
            Document::Keys => {
                keys = self.cache.keys();
                keys.as_ref().map(|k| &k.doc)
            }
        };
        match held {
            Some(doc) => Verdict::Answer(self.answer(document, req, Some(doc), now)),
            None => Verdict::Cold(document),
        }
    }

    /// The document's answer (503 when none may be served), counted by state.
    fn answer<B>(
        &self,
        document: Document,
        req: &Request<B>,
        held: Option<&Published>,
        now: Instant,
    ) -> Response<ProxyBody> {
        let settings = self.cache.settings();
        let age = held.map(|doc| now.saturating_duration_since(doc.fetched_at));
        let state = match age {
            None => "unavailable",
            Some(age) if age > settings.stale_if_error => "unavailable",
            // One missed refresh cycle (plus its fetch time) is still fresh.
            Some(age) if age <= settings.refresh + settings.upstream_timeout * 2 => "fresh",
            Some(_) => "stale",
        };
        let row = usize::from(document == Document::Keys);
        if let Some(counter) = STATES.iter().position(|s| *s == state) {
            self.served[row][counter].inc();
        }
        // Made last, so that it is built where it is returned (a response is
        // ~150 bytes, moved by a call each time it is passed on).
        match held {
            Some(doc) if state != "unavailable" => {
                respond::document(req.method(), req.headers(), doc, self.cache.style())
            }
            Some(_) => respond::unavailable(document.label(), None),
            None => respond::unavailable(document.label(), Some(settings.upstream_timeout)),
        }
    }

    /// Whether the path ends as one of the documents' paths does (`route` may
    /// then say which); a string compare or four, no lock.
    fn may_route(&self, path: &str) -> bool {
        let names = [
            DISCOVERY_SUFFIX,
            KEY_PATHS[0],
            KEY_PATHS[1],
            self.cache.settings().jwks_path.as_str(),
        ];
        names.iter().any(|name| path.ends_with(name))
    }

    /// Which document a path asks for. Paths only: `Host` and `X-Forwarded-Host`
    /// never change what is served.
    fn route(&self, path: &str, known: Option<&DiscoveryState>) -> Option<Document> {
        let settings = self.cache.settings();
        let roots = || {
            let configured = settings
                .external_url
                .iter()
                .chain(&settings.extra_issuers)
                .map(|i| i.path.as_str());
            std::iter::once("")
                .chain(configured)
                .chain(known.iter().map(|d| d.issuer.path.as_str()))
        };
        let key_names = || {
            KEY_PATHS
                .iter()
                .copied()
                .chain(std::iter::once(settings.jwks_path.as_str()))
        };
        if roots().any(|root| {
            path.strip_prefix(root)
                .is_some_and(|rest| key_names().any(|name| rest == name))
        }) {
            return Some(Document::Keys);
        }
        // Discovery lives at the root, under `--external-url`/`--issuer`, or under
        // the issuer GitLab named; `handle` passes on the ones not published.
        let discovery_prefix = path.strip_suffix(DISCOVERY_SUFFIX)?;
        roots()
            .any(|root| root == discovery_prefix)
            .then_some(Document::Discovery)
    }
}
