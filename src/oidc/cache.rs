//! The two documents in memory. Only the refresher talks to GitLab: clients
//! read the last good copy (never waiting once one exists), and on a cold
//! cache they wait for the one fetch in flight. A bad answer never replaces a
//! good copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::discovery;
use super::fetch::{Fetcher, Origin};
use super::jwks;
use super::style::Style;
use crate::compress::{self, Encoding};
use crate::config::{DISCOVERY_SUFFIX, Issuer, OidcSettings};
use crate::error::DocError;
use crate::metrics::{DocumentLabel, Metrics, OutcomeLabels};

/// A document as served: body, strong ETag, and when GitLab last confirmed it,
/// with compressed copies and each copy's response headers made once here
/// rather than per request.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub body: Bytes,
    pub etag: HeaderValue,
    pub head: HeaderMap,
    pub fetched_at: Instant,
    pub encoded: Arc<[Encoded]>,
}

/// A compressed copy: a representation of its own, so its own ETag.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub encoding: Encoding,
    pub body: Bytes,
    pub etag: HeaderValue,
    pub head: HeaderMap,
}

/// What one request is sent: a body, its tag and its 200's headers.
#[derive(Debug, PartialEq)]
pub(crate) struct Representation<'a> {
    pub body: &'a Bytes,
    pub etag: &'a HeaderValue,
    pub head: &'a HeaderMap,
    pub encoding: Option<Encoding>,
}

impl Published {
    pub(crate) fn new(body: Vec<u8>, fetched_at: Instant, style: &Style) -> Self {
        // Derived from the body alone: every replica computes the same tag.
        let digest = ring::digest::digest(&ring::digest::SHA256, &body);
        let hex: String = digest.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
        let tag =
            |suffix: &str| HeaderValue::from_str(&format!("\"{hex}{suffix}\"")).expect("hex is a valid header value");
        let encoded = Encoding::ALL
            .iter()
            .filter_map(|&encoding| {
                let copy = compress::encode_all(encoding, &body);
                // A copy that saves nothing is not worth a Vary-split cache entry.
                (copy.len() < body.len()).then(|| {
                    let etag = tag(&format!("-{}", encoding.as_str()));
                    Encoded {
                        encoding,
                        head: style.head(copy.len(), &etag, Some(encoding)),
                        body: copy,
                        etag,
                    }
                })
            })
            .collect();
        let etag = tag("");
        Published {
            head: style.head(body.len(), &etag, None),
            body: Bytes::from(body),
            etag,
            fetched_at,
            encoded,
        }
    }

    /// As `new`, keeping `previous`'s copies when the body is the same: a
    /// refresh that changes nothing compresses nothing (brotli 11 and zstd 22
    /// on the thread that refreshes, every `--refresh`).
    pub(crate) fn renewed(body: Vec<u8>, fetched_at: Instant, style: &Style, previous: Option<&Published>) -> Self {
        match previous {
            Some(old) if old.body == body => Published {
                fetched_at,
                ..old.clone()
            },
            _ => Published::new(body, fetched_at, style),
        }
    }

    /// What to send for a negotiated encoding: that copy when held, else the document.
    pub(crate) fn representation(&self, choice: Option<Encoding>) -> Representation<'_> {
        match choice.and_then(|c| self.encoded.iter().find(|e| e.encoding == c)) {
            Some(e) => Representation {
                body: &e.body,
                etag: &e.etag,
                head: &e.head,
                encoding: Some(e.encoding),
            },
            None => Representation {
                body: &self.body,
                etag: &self.etag,
                head: &self.head,
                encoding: None,
            },
        }
    }
}

#[derive(Debug)]
pub(crate) struct DiscoveryState {
    /// GitLab's own issuer, from its document.
    pub issuer: Issuer,
    /// The document per published issuer: (discovery path, document).
    pub by_path: Vec<(String, Published)>,
    /// GitLab's document as validated, for copies under other issuers (export).
    pub source: Arc<Map<String, Value>>,
}

impl DiscoveryState {
    /// When GitLab last confirmed the document (all issuers' copies are made at once).
    pub(crate) fn fetched_at(&self) -> Option<Instant> {
        self.by_path.first().map(|(_, p)| p.fetched_at)
    }
}

#[derive(Debug)]
pub(crate) struct KeysState {
    pub doc: Published,
    pub kids: Vec<String>,
}

/// The outcome of one refresh, for logs and `POST /refresh`.
#[derive(Debug, Clone)]
pub(crate) struct RefreshReport {
    pub discovery: Result<(), DocError>,
    pub keys: Result<(), DocError>,
}

impl RefreshReport {
    pub(crate) fn ok(&self) -> bool {
        self.discovery.is_ok() && self.keys.is_ok()
    }
}

pub(crate) struct Cache {
    settings: OidcSettings,
    /// How the documents are answered; their headers are made at publication.
    style: Style,
    fetcher: Fetcher,
    /// Used for `Host` until GitLab's issuer is known.
    upstream_host: String,
    discovery: watch::Sender<Option<Arc<DiscoveryState>>>,
    keys: watch::Sender<Option<Arc<KeysState>>>,
    /// One refresh at a time, whoever asks (timer, cold client, admin).
    refreshing: tokio::sync::Mutex<()>,
    /// How many refreshes have started, and the last one's number and report:
    /// who waited for the lock while a later refresh ran gets that one's report.
    started: AtomicU64,
    last: Mutex<Option<(u64, RefreshReport)>>,
    poke_tx: mpsc::Sender<()>,
    poke_rx: Mutex<Option<mpsc::Receiver<()>>>,
    metrics: Arc<Metrics>,
}

/// See [`Cache::subscribe`].
pub(crate) struct Publications {
    discovery: watch::Receiver<Option<Arc<DiscoveryState>>>,
    keys: watch::Receiver<Option<Arc<KeysState>>>,
}

impl Publications {
    /// Resolves once either document was published since the last call.
    pub(crate) async fn changed(&mut self) {
        // The senders live in the cache, which outlives its subscribers: an
        // error cannot happen, and must not turn into a busy loop if it did.
        tokio::select! {
            Ok(()) = self.discovery.changed() => {}
            Ok(()) = self.keys.changed() => {}
            else => std::future::pending().await,
        }
        self.discovery.mark_unchanged();
        self.keys.mark_unchanged();
    }
}

/// Never refetch more often than this, however often cold clients ask.
const MIN_GAP: Duration = Duration::from_secs(1);

impl Cache {
    pub(crate) fn new(
        settings: OidcSettings,
        fetcher: Fetcher,
        upstream_host: String,
        metrics: Arc<Metrics>,
        style: Style,
    ) -> Arc<Self> {
        let (poke_tx, poke_rx) = mpsc::channel(1);
        Arc::new(Cache {
            settings,
            style,
            fetcher,
            upstream_host,
            discovery: watch::Sender::new(None),
            keys: watch::Sender::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            started: AtomicU64::new(0),
            last: Mutex::new(None),
            poke_tx,
            poke_rx: Mutex::new(Some(poke_rx)),
            metrics,
        })
    }

    pub(crate) fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    pub(crate) fn style(&self) -> &Style {
        &self.style
    }

    pub(crate) fn discovery(&self) -> Option<Arc<DiscoveryState>> {
        self.discovery.borrow().clone()
    }

    pub(crate) fn keys(&self) -> Option<Arc<KeysState>> {
        self.keys.borrow().clone()
    }

    /// Wakes on each publication of either document (every refresh that validated).
    pub(crate) fn subscribe(&self) -> Publications {
        Publications {
            discovery: self.discovery.subscribe(),
            keys: self.keys.subscribe(),
        }
    }

    /// Both documents held: the proxy is ready.
    pub(crate) fn warm(&self) -> bool {
        self.discovery.borrow().is_some() && self.keys.borrow().is_some()
    }

    /// Both documents held and young enough to serve (within `--stale-if-error`).
    pub(crate) fn servable(&self) -> bool {
        let young = |at: Instant| at.elapsed() <= self.settings.stale_if_error;
        let discovery = self.discovery().is_some_and(|d| d.fetched_at().is_some_and(young));
        discovery && self.keys().is_some_and(|k| young(k.doc.fetched_at))
    }

    /// Waits (bounded) for a first discovery document, asking for a fetch.
    pub(crate) async fn wait_discovery(&self) -> Option<Arc<DiscoveryState>> {
        self.wait(&self.discovery).await
    }

    pub(crate) async fn wait_keys(&self) -> Option<Arc<KeysState>> {
        self.wait(&self.keys).await
    }

    async fn wait<T>(&self, slot: &watch::Sender<Option<Arc<T>>>) -> Option<Arc<T>> {
        // Nearly always held: answered without a receiver of its own, and the
        // waiting (a timer, a receiver) boxed so that it costs nothing then.
        if let Some(held) = slot.borrow().clone() {
            return Some(held);
        }
        Box::pin(self.wait_first(slot)).await
    }

    /// Until the first copy is held: asks the refresher for it, waits a fetch's time.
    async fn wait_first<T>(&self, slot: &watch::Sender<Option<Arc<T>>>) -> Option<Arc<T>> {
        let mut rx = slot.subscribe();
        if let Some(held) = rx.borrow_and_update().clone() {
            return Some(held);
        }
        // Coalesced: the channel holds one request, and the refresher runs one fetch at a time.
        let _ = self.poke_tx.try_send(());
        // Until GitLab's relative URL root is known, a refresh fetches discovery
        // and then the keys: the fetch in flight may take two timeouts.
        let steps = if self.root_known() { 1 } else { 2 };
        let waited = tokio::time::timeout(self.settings.upstream_timeout * steps, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(held)) => held.clone(),
            _ => None,
        }
    }

    /// Refetches both documents now; publishes what validates. Callers that
    /// queue behind a refresh share the next one: a burst makes at most two
    /// fetches per document. A refresh that began before the call is never
    /// taken as its answer: it may predate the key rotation being asked about.
    pub(crate) async fn refresh(&self) -> RefreshReport {
        let asked_after = self.started.load(Ordering::SeqCst);
        let _one_at_a_time = self.refreshing.lock().await;
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((number, report)) = last.filter(|(number, _)| *number > asked_after) {
            tracing::debug!(target: "oidc", number, "shared a refresh that began after the call");
            return report;
        }
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        // Key paths sit under GitLab's relative URL root, which discovery tells
        // when it is not configured: then discovery goes first.
        let report = if self.root_known() {
            let (discovery, keys) = tokio::join!(self.refresh_discovery(), self.refresh_keys());
            RefreshReport { discovery, keys }
        } else {
            let discovery = self.refresh_discovery().await;
            RefreshReport {
                discovery,
                keys: self.refresh_keys().await,
            }
        };
        for (document, result) in [("discovery", &report.discovery), ("keys", &report.keys)] {
            let outcome = if result.is_ok() { "published" } else { "failed" };
            self.metrics
                .oidc_refreshes
                .get_or_create(&OutcomeLabels { document, outcome })
                .inc();
        }
        self.update_gauges();
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((number, report.clone()));
        report
    }

    /// Runs forever: primes at once, then refreshes every `--refresh`, sooner
    /// (with backoff) while a document is missing or when a cold client asks.
    pub(crate) async fn run_refresher(self: Arc<Self>) {
        let Some(mut pokes) = self.poke_rx.lock().ok().and_then(|mut rx| rx.take()) else {
            return;
        };
        let mut backoff = MIN_GAP;
        loop {
            // Its own task: should a refresh ever panic, the refresher lives on
            // and retries, instead of leaving the documents to go stale.
            let refreshing = tokio::spawn({
                let cache = self.clone();
                async move { cache.refresh().await.ok() }
            });
            let ok = refreshing.await.unwrap_or_else(|e| {
                tracing::error!(target: "oidc", error = %e, "refresh failed unexpectedly; retrying");
                false
            });
            while pokes.try_recv().is_ok() {}
            let delay = if ok {
                backoff = MIN_GAP;
                self.settings.refresh
            } else {
                let d = backoff;
                backoff = (backoff * 2).min(self.settings.refresh);
                d
            };
            let earliest = Instant::now() + MIN_GAP.min(delay);
            let deadline = Instant::now() + delay;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    Some(()) = pokes.recv() => {
                        if !self.warm() {
                            tokio::time::sleep_until(earliest).await;
                            break;
                        }
                    }
                }
            }
        }
    }

    fn root_known(&self) -> bool {
        self.settings.external_url.is_some() || self.discovery.borrow().is_some()
    }

    /// GitLab's relative URL root and the origin to ask as.
    fn gitlab_location(&self) -> (String, Origin) {
        let issuer = self
            .settings
            .external_url
            .clone()
            .or_else(|| self.discovery().map(|d| d.issuer.clone()));
        match issuer {
            Some(i) => (
                i.path.clone(),
                Origin {
                    host: i.host.clone(),
                    https: i.https,
                },
            ),
            None => (
                String::new(),
                Origin {
                    host: self.upstream_host.clone(),
                    https: false,
                },
            ),
        }
    }

    async fn fetch_checked<T>(
        &self,
        source: &'static str,
        path: &str,
        origin: &Origin,
        check: impl FnOnce(&[u8]) -> Result<T, DocError>,
    ) -> Result<T, DocError> {
        let result = match self.fetcher.get(path, origin).await {
            Ok(body) => check(&body),
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        self.metrics
            .oidc_fetches
            .get_or_create(&OutcomeLabels {
                document: source,
                outcome,
            })
            .inc();
        if let Err(e) = &result
            && !matches!(e, DocError::NotFound)
        {
            tracing::warn!(target: "oidc", document = source, path, error = %e, "GitLab answer refused; keeping the last good copy");
        }
        result
    }

    async fn refresh_discovery(&self) -> Result<(), DocError> {
        let (root, origin) = self.gitlab_location();
        let path = format!("{root}{}", DISCOVERY_SUFFIX);
        let (doc, issuer) = self
            .fetch_checked("discovery", &path, &origin, discovery::validate)
            .await?;
        if let Some(configured) = &self.settings.external_url
            && configured.url != issuer.url
        {
            tracing::warn!(target: "oidc", configured = %configured.url, gitlab = %issuer.url, "GitLab's issuer differs from --external-url; publishing GitLab's");
        }
        let now = Instant::now();
        let jwks_path = &self.settings.jwks_path;
        let old = self.discovery();
        let held = old.as_ref().map_or(&[][..], |o| &o.by_path[..]);
        let publish = |issuer: &Issuer| {
            let body = discovery::publish(&doc, issuer, jwks_path);
            let path = issuer.discovery_path();
            let previous = held.iter().find(|(p, _)| *p == path).map(|(_, d)| d);
            Published::renewed(body, now, &self.style, previous)
        };
        let mut by_path = vec![(issuer.discovery_path(), publish(&issuer))];
        for extra in &self.settings.extra_issuers {
            if extra.discovery_path() == issuer.discovery_path() && extra.url != issuer.url {
                // Routing is by path: two issuers on one path cannot both be served.
                tracing::warn!(target: "oidc", issuer = %extra.url, gitlab = %issuer.url, "--issuer has the same path as GitLab's issuer; GitLab's is published there");
            }
            if !by_path.iter().any(|(p, _)| *p == extra.discovery_path()) {
                by_path.push((extra.discovery_path(), publish(extra)));
            }
        }
        let changed = old.is_none_or(|old| {
            old.by_path
                .iter()
                .map(|(_, d)| &d.body)
                .ne(by_path.iter().map(|(_, d)| &d.body))
        });
        if changed {
            tracing::info!(target: "oidc", issuer = %issuer.url, "discovery document published");
        }
        self.discovery.send_replace(Some(Arc::new(DiscoveryState {
            issuer,
            by_path,
            source: Arc::new(doc),
        })));
        Ok(())
    }

    async fn refresh_keys(&self) -> Result<(), DocError> {
        let (root, origin) = self.gitlab_location();
        let (oauth_path, jwks_path) = (format!("{root}/oauth/discovery/keys"), format!("{root}/-/jwks"));
        let (oauth, ci) = tokio::join!(
            self.fetch_checked("oauth_keys", &oauth_path, &origin, jwks::parse),
            self.fetch_checked("jwks", &jwks_path, &origin, jwks::parse),
        );
        // 404 means "this version has no such endpoint" (17.0 removed /-/jwks);
        // any other failure could hide the CI key, so nothing is published.
        let mut sets = Vec::new();
        for result in [oauth, ci] {
            match result {
                Ok(set) => sets.push(set),
                Err(DocError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if sets.is_empty() {
            let e = DocError::Invalid("both /oauth/discovery/keys and /-/jwks answered 404".into());
            tracing::warn!(target: "oidc", error = %e, "no key set; keeping the last good copy");
            return Err(e);
        }
        let merged = jwks::merge(&sets).inspect_err(|e| {
            tracing::warn!(target: "oidc", error = %e, "key set refused; keeping the last good copy");
        })?;
        let kids: Vec<String> = merged.iter().map(|k| jwks::kid(k).to_owned()).collect();
        let old = self.keys();
        let doc = Published::renewed(
            jwks::publish(&merged),
            Instant::now(),
            &self.style,
            old.as_ref().map(|o| &o.doc),
        );
        if old.is_none_or(|old| old.doc.body != doc.body) {
            tracing::info!(target: "oidc", kids = ?kids, "key set published");
        }
        self.keys.send_replace(Some(Arc::new(KeysState { doc, kids })));
        Ok(())
    }

    /// Document ages and key count, for the metrics endpoint.
    pub(crate) fn update_gauges(&self) {
        let age = |at: Option<Instant>| at.map(|t| t.elapsed().as_secs_f64()).unwrap_or(-1.0);
        let discovery_at = self.discovery().and_then(|d| d.fetched_at());
        let keys = self.keys();
        self.metrics
            .oidc_age
            .get_or_create(&DocumentLabel { document: "discovery" })
            .set(age(discovery_at));
        self.metrics
            .oidc_age
            .get_or_create(&DocumentLabel { document: "keys" })
            .set(age(keys.as_ref().map(|k| k.doc.fetched_at)));
        self.metrics
            .oidc_keys
            .set(keys.map(|k| k.kids.len() as i64).unwrap_or(0));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::{Config, UpstreamTarget, parse_upstream};
    use crate::headers::ViaId;
    use crate::simulator::{Fault, Profile, SimConfig, SimDoc, SimulatedGitLab};
    use crate::upstream::{Upstream, UpstreamSettings};

    const EXTERNAL: &str = "https://gitlab.example.com";

    /// The simulated GitLab on a loopback port, misbehaving as `faults` say.
    async fn gitlab(profile: Profile, faults: &[(SimDoc, Fault)]) -> (Arc<SimulatedGitLab>, SocketAddr) {
        let config = SimConfig {
            profile,
            external_url: EXTERNAL.to_owned(),
            token_issuer: None,
        };
        let gitlab = SimulatedGitLab::new(config).unwrap();
        for (doc, fault) in faults {
            gitlab.set_fault(*doc, fault.clone());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server task ends with the test's runtime.
        let _task = gitlab.serve(listener);
        (gitlab, addr)
    }

    /// A cache fetching from `addr` with the default settings, `edit`ed.
    fn cache(addr: SocketAddr, edit: impl FnOnce(&mut OidcSettings)) -> Arc<Cache> {
        let target: UpstreamTarget = parse_upstream(&format!("http://{addr}")).unwrap();
        let mut settings = Config::new(target.clone()).oidc;
        edit(&mut settings);
        let upstream = Upstream::new(
            &UpstreamSettings {
                target: target.clone(),
                extra_ca: None,
                connect_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(10),
                via: ViaId::new("cache-test".into()),
            },
            None,
        )
        .unwrap();
        let fetcher = Fetcher::new(Arc::new(upstream), settings.upstream_timeout);
        let style = Style::new(settings.max_age, true);
        Cache::new(settings, fetcher, target.host(), Arc::new(Metrics::new()), style)
    }

    /// No test may hang.
    async fn bounded<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("over 20 s")
    }

    #[tokio::test]
    async fn a_cold_client_waits_for_the_refreshers_first_fetch() {
        bounded(async {
            let (gitlab, addr) = gitlab(Profile::V14_4, &[]).await;
            let cache = cache(addr, |_| {});
            assert!(!cache.warm() && !cache.servable());
            assert!(cache.discovery().is_none() && cache.keys().is_none());
            tokio::spawn(cache.clone().run_refresher());
            let discovery = cache.wait_discovery().await.expect("discovery after the first fetch");
            assert_eq!(discovery.issuer.url, EXTERNAL);
            let keys = cache.wait_keys().await.expect("keys after the first fetch");
            // 14.4: the union of both key endpoints holds the CI key.
            assert!(keys.kids.contains(&gitlab.ci_kid()), "{:?}", keys.kids);
            assert!(keys.kids.contains(&gitlab.oidc_kid()), "{:?}", keys.kids);
            assert!(cache.warm() && cache.servable());
        })
        .await
    }

    #[tokio::test]
    async fn a_cold_wait_gives_up_after_the_upstream_timeout() {
        bounded(async {
            let slow = Fault::Delay(Duration::from_secs(30));
            let faults: Vec<(SimDoc, Fault)> = SimDoc::ALL.iter().map(|d| (*d, slow.clone())).collect();
            let (_gitlab, addr) = gitlab(Profile::V16_8, &faults).await;
            let cache = cache(addr, |s| {
                s.upstream_timeout = Duration::from_millis(200);
                s.external_url = Some(Issuer::parse(EXTERNAL).unwrap());
            });
            tokio::spawn(cache.clone().run_refresher());
            assert!(cache.wait_discovery().await.is_none());
            assert!(cache.wait_keys().await.is_none());
            assert!(!cache.warm());
        })
        .await
    }

    #[tokio::test]
    async fn a_bad_answer_never_replaces_a_good_copy() {
        bounded(async {
            let (gitlab, addr) = gitlab(Profile::V16_8, &[]).await;
            let cache = cache(addr, |_| {});
            assert!(cache.refresh().await.ok());
            let (discovery, keys) = (cache.discovery().unwrap(), cache.keys().unwrap());

            // One key endpoint failing: the key set is not replaced (the CI key
            // could be the one missing); discovery still is.
            gitlab.set_fault(SimDoc::Jwks, Fault::Status(500));
            let report = cache.refresh().await;
            assert!(report.discovery.is_ok() && report.keys.is_err(), "{report:?}");
            assert!(Arc::ptr_eq(&keys, &cache.keys().unwrap()), "the key set was replaced");
            assert!(
                !Arc::ptr_eq(&discovery, &cache.discovery().unwrap()),
                "discovery was not refreshed"
            );

            // A 404 is "no such endpoint": the other set alone is published.
            gitlab.set_fault(SimDoc::Jwks, Fault::Status(404));
            assert!(cache.refresh().await.ok());
            assert!(!Arc::ptr_eq(&keys, &cache.keys().unwrap()));

            // Every bad discovery answer is refused; the good copy stays.
            let held = cache.discovery().unwrap();
            for fault in [
                Fault::SignInPage,
                Fault::Truncated,
                Fault::NotAnObject,
                Fault::Oversized,
            ] {
                gitlab.set_fault(SimDoc::Discovery, fault.clone());
                let report = cache.refresh().await;
                assert!(report.discovery.is_err(), "{fault:?}: {report:?}");
                assert!(
                    Arc::ptr_eq(&held, &cache.discovery().unwrap()),
                    "{fault:?} replaced discovery"
                );
            }
            // Both key endpoints 404: nothing to publish, the last set stays.
            gitlab.set_fault(SimDoc::OauthKeys, Fault::Status(404));
            let held = cache.keys().unwrap();
            assert!(cache.refresh().await.keys.is_err());
            assert!(Arc::ptr_eq(&held, &cache.keys().unwrap()));
        })
        .await
    }

    #[tokio::test]
    async fn a_burst_of_refreshes_shares_fetches() {
        bounded(async {
            let slow = Fault::Delay(Duration::from_millis(200));
            let faults: Vec<(SimDoc, Fault)> = SimDoc::ALL.iter().map(|d| (*d, slow.clone())).collect();
            let (gitlab, addr) = gitlab(Profile::V16_8, &faults).await;
            let cache = cache(addr, |_| {});
            let burst: Vec<_> = (0..20)
                .map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(async move { cache.refresh().await })
                })
                .collect();
            for refresh in burst {
                assert!(refresh.await.unwrap().ok());
            }
            // The first refresh, and one more for everyone who queued behind it.
            for doc in SimDoc::ALL {
                let hits = gitlab.hits(doc);
                assert!((1..=2).contains(&hits), "{doc:?} fetched {hits} times");
            }
        })
        .await
    }

    #[tokio::test]
    async fn copies_expire_after_stale_if_error() {
        bounded(async {
            let (_gitlab, addr) = gitlab(Profile::V16_8, &[]).await;
            let cache = cache(addr, |s| s.stale_if_error = Duration::from_millis(1));
            assert!(cache.refresh().await.ok());
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Held, but too old to serve.
            assert!(cache.warm() && !cache.servable());
        })
        .await
    }

    fn decode(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        match encoding {
            Encoding::Gzip => {
                flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap();
            }
            Encoding::Br => {
                brotli::Decompressor::new(data, 4096).read_to_end(&mut out).unwrap();
            }
            Encoding::Zstd => out = zstd::decode_all(data).unwrap(),
        }
        out
    }

    #[test]
    fn a_refresh_that_changes_nothing_keeps_the_copies() {
        let body =
            br#"{"keys":[{"kid":"a","kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWh","e":"AQAB"}]}"#
                .repeat(4);
        let style = Style::new(Duration::from_secs(60), true);
        let first = Published::new(body.clone(), Instant::now(), &style);
        let later = Instant::now() + Duration::from_secs(60);
        let same = Published::renewed(body.clone(), later, &style, Some(&first));
        assert!(Arc::ptr_eq(&same.encoded, &first.encoded), "compressed again");
        assert_eq!(
            (same.fetched_at, &same.etag, &same.body),
            (later, &first.etag, &first.body)
        );
        let mut changed_body = body.clone();
        changed_body[10] = b'b';
        let changed = Published::renewed(changed_body.clone(), later, &style, Some(&first));
        assert!(!Arc::ptr_eq(&changed.encoded, &first.encoded));
        let made = Published::new(changed_body, later, &style);
        assert_eq!((&changed.etag, &changed.body), (&made.etag, &made.body));
        let fresh = Published::renewed(body, later, &style, None);
        assert_eq!(fresh.etag, first.etag);
    }

    #[test]
    fn etags_come_from_the_body_and_each_encoding_has_its_own() {
        let body = br#"{"keys":[{"kid":"a","kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB"}]}"#;
        let now = Instant::now();
        let style = Style::new(Duration::from_secs(60), true);
        let (a, b) = (
            Published::new(body.to_vec(), now, &style),
            Published::new(body.to_vec(), now, &style),
        );
        assert_eq!(a.etag, b.etag, "the same body, the same tag on every replica");
        let other = Published::new(body.iter().rev().copied().collect(), now, &style);
        assert_ne!(a.etag, other.etag);
        let tag = a.etag.to_str().unwrap();
        assert!(
            tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"),
            "{tag}"
        );

        let mut tags = vec![a.etag.clone()];
        for encoding in Encoding::ALL {
            let rep = a.representation(Some(encoding));
            let (sent, etag) = (rep.body, rep.etag);
            assert_eq!(rep.encoding, Some(encoding));
            assert_eq!(rep.head[http::header::CONTENT_LENGTH], sent.len().to_string().as_str());
            assert_eq!(rep.head[http::header::CONTENT_ENCODING], encoding.as_str());
            assert_eq!(&rep.head[http::header::ETAG], etag);
            assert!(sent.len() < a.body.len(), "{encoding:?} saves nothing");
            assert_eq!(decode(encoding, sent), a.body, "{encoding:?}");
            assert!(!tags.contains(etag), "{encoding:?} shares a tag");
            tags.push(etag.clone());
        }
        let identity = a.representation(None);
        assert_eq!(
            (identity.body, identity.etag, identity.encoding),
            (&a.body, &a.etag, None)
        );
        assert!(!identity.head.contains_key(http::header::CONTENT_ENCODING));

        // A body too small to gain from compression has no encoded copies.
        let tiny = Published::new(b"{}".to_vec(), now, &style);
        assert!(tiny.encoded.is_empty());
        assert_eq!(tiny.representation(Some(Encoding::Br)), tiny.representation(None));
    }
}
