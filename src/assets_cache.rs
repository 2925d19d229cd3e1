//! The in-memory cache of GitLab's `/assets/` responses, in place of omnibus
//! nginx's `proxy_cache gitlab` on `location /assets`.
//!
//! It sits between the router's compression and the pass-through: it keeps
//! GitLab's responses as they came, so our own gzip applies to hits as to misses.
//! The first response streams to its client while a copy is taken (never held
//! back), and goes in only if its body ended cleanly. Concurrent misses for one
//! key wait for that one fetch instead of each asking GitLab.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use tokio::sync::watch;

use crate::body::{self, ProxyBody};
use crate::compress;
use crate::config::AssetsCacheSettings;
use crate::error::{BoxError, ProxyError};
use crate::headers;
use crate::metrics::{CauseLabel, Metrics, OutcomeOnly};
use crate::passthrough::Passthrough;

/// The paths cached, as omnibus nginx's `location /assets`.
const PREFIX: &str = "/assets/";
/// Longest wait for another request's fill of the same key (nginx's
/// `proxy_cache_lock_timeout`); then the waiter asks GitLab itself.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// No entry lives longer, whatever max-age says (GitLab sends a year).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Bookkeeping per entry beyond its body, headers and key (moka's node, the maps).
const ENTRY_OVERHEAD: usize = 256;
/// URIs whose `Vary` names are remembered (a few hundred bytes each).
const VARY_URIS: u64 = 16_384;
/// Never stored: `Age` is recomputed on each hit; `X-Request-Id` names the one
/// request to GitLab that filled the entry, not the requests answered from it.
const NOT_STORED: [HeaderName; 3] = [header::AGE, header::SET_COOKIE, HeaderName::from_static("x-request-id")];
/// What a `304` carries of the stored headers (RFC 9110 §15.4.5).
const NOT_MODIFIED_HEADERS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

// ------------------------------------------------------------------ policy

/// What `Cache-Control` says, as far as a shared cache cares.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub public: bool,
    pub private: bool,
    pub no_store: bool,
    pub no_cache: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Every `Cache-Control` field. A max-age without a valid number counts as 0
    /// (not cacheable), and the smaller of two wins.
    pub(crate) fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for directive in value.as_bytes().split(|&b| b == b',') {
                let (name, arg) = match directive.iter().position(|&b| b == b'=') {
                    Some(eq) => (directive[..eq].trim_ascii(), Some(directive[eq + 1..].trim_ascii())),
                    None => (directive.trim_ascii(), None),
                };
                let smaller = |old: Option<u64>| Some(old.map_or(u64::MAX, |o| o).min(delta_seconds(arg)));
                match name.to_ascii_lowercase().as_slice() {
                    b"public" => cc.public = true,
                    b"private" => cc.private = true,
                    b"no-store" => cc.no_store = true,
                    b"no-cache" => cc.no_cache = true,
                    b"max-age" => cc.max_age = smaller(cc.max_age),
                    b"s-maxage" => cc.s_maxage = smaller(cc.s_maxage),
                    _ => {}
                }
            }
        }
        cc
    }

    /// How long a shared cache may keep the response: s-maxage, else max-age, when
    /// `public` and none of `private`, `no-store`, `no-cache`.
    pub(crate) fn shared_lifetime(&self) -> Option<Duration> {
        if !self.public || self.private || self.no_store || self.no_cache {
            return None;
        }
        let secs = self.s_maxage.or(self.max_age)?;
        (secs > 0).then(|| Duration::from_secs(secs).min(MAX_TTL))
    }
}

/// RFC 9111 delta-seconds, quoted or not; anything else is 0.
fn delta_seconds(arg: Option<&[u8]>) -> u64 {
    let arg = arg.unwrap_or_default();
    let arg = arg
        .strip_prefix(b"\"")
        .and_then(|a| a.strip_suffix(b"\""))
        .unwrap_or(arg);
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    arg.iter()
        .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
}

/// The request headers a response varies on, lower-case, sorted, once each;
/// `None` for `Vary: *` or a name that is no header name (never cached).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        for field in value.as_bytes().split(|&b| b == b',') {
            let field = field.trim_ascii();
            if field.is_empty() {
                continue;
            }
            if field == b"*" {
                return None;
            }
            names.push(HeaderName::from_bytes(field).ok()?);
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// A request's key for `uri`: the URI, then for each name in `vary` that header's
/// values (escaped, so distinct values stay distinct). `Accept-Encoding` is reduced
/// to the codings it accepts, so the many ways browsers spell it share entries.
pub(crate) fn variant_key(uri: &str, vary: &[HeaderName], request: &HeaderMap) -> String {
    let mut key = uri.to_owned();
    for name in vary {
        key.push('\n');
        key.push_str(name.as_str());
        key.push(':');
        if name == header::ACCEPT_ENCODING {
            for coding in ["gzip", "br", "zstd"] {
                if compress::accepts(request, coding.as_bytes()) {
                    key.push_str(coding);
                    key.push(' ');
                }
            }
        } else {
            for (i, value) in request.get_all(name).iter().enumerate() {
                if i > 0 {
                    key.push_str(", ");
                }
                let _ = write!(key, "{}", value.as_bytes().escape_ascii());
            }
        }
    }
    key
}

/// Whether the stored response answers the request's conditions with `304`:
/// `If-None-Match` when sent (weak comparison, a list, `*`), else
/// `If-Modified-Since` against `Last-Modified`.
pub(crate) fn not_modified(request: &HeaderMap, stored: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let ours = stored.get(header::ETAG).and_then(|e| opaque_tag(e.as_bytes()));
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .any(|value| list_matches(value.as_bytes(), ours));
    }
    let date = |v: &HeaderValue| v.to_str().ok().and_then(|s| httpdate::parse_http_date(s).ok());
    match (
        request.get(header::IF_MODIFIED_SINCE).and_then(date),
        stored.get(header::LAST_MODIFIED).and_then(date),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The opaque part of an entity tag, `W/` or not (weak comparison ignores it).
fn opaque_tag(etag: &[u8]) -> Option<&[u8]> {
    let etag = etag.trim_ascii();
    let etag = etag.strip_prefix(b"W/").unwrap_or(etag);
    etag.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// Whether an `If-None-Match` field lists `ours` (or is `*`). Tags may hold commas,
/// so the list is read tag by tag; a malformed rest matches nothing.
fn list_matches(mut rest: &[u8], ours: Option<&[u8]>) -> bool {
    loop {
        rest = rest.trim_ascii_start();
        if let [b',', tail @ ..] = rest {
            rest = tail;
            continue;
        }
        if rest.is_empty() {
            return false;
        }
        if rest[0] == b'*' {
            return true;
        }
        let tagged = rest.strip_prefix(b"W/").unwrap_or(rest);
        let Some(open) = tagged.strip_prefix(b"\"") else {
            return false;
        };
        let Some(end) = open.iter().position(|&b| b == b'"') else {
            return false;
        };
        if ours == Some(&open[..end]) {
            return true;
        }
        rest = &open[end + 1..];
    }
}

/// Whether a request may be answered from the cache (and fill it): GET or HEAD,
/// without credentials (`Authorization`), a `Range` or a body.
pub(crate) fn cacheable_request<B: Body>(req: &Request<B>) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.headers().contains_key(header::AUTHORIZATION)
        && !req.headers().contains_key(header::RANGE)
        && req.body().is_end_stream()
}

/// What the cache keeps of a response it may store.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Storable {
    /// From now until it expires (its max-age less the `Age` GitLab gave).
    pub ttl: Duration,
    pub age: u64,
    pub vary: Vec<HeaderName>,
}

/// A response the cache may keep: `200`, `Cache-Control: public` with a positive
/// max-age or s-maxage and none of `private`, `no-store`, `no-cache`; no
/// `Set-Cookie`, no `Vary: *`, one known content coding, and a `Content-Length`
/// (when given) within `max_entry`.
pub(crate) fn storable(status: StatusCode, headers: &HeaderMap, max_entry: u64) -> Option<Storable> {
    if status != StatusCode::OK
        || headers.contains_key(header::SET_COOKIE)
        || headers.contains_key(header::CONTENT_RANGE)
        || headers.get_all(header::CONTENT_ENCODING).iter().count() > 1
        || headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|c| !known_coding(c.as_bytes()))
        || content_length(headers).is_some_and(|n| n > max_entry)
    {
        return None;
    }
    let lifetime = CacheControl::parse(headers).shared_lifetime()?;
    let vary = vary_names(headers)?;
    let age = headers
        .get(header::AGE)
        .map_or(0, |a| delta_seconds(Some(a.as_bytes())));
    let ttl = lifetime
        .checked_sub(Duration::from_secs(age))
        .filter(|t| !t.is_zero())?;
    Some(Storable { ttl, age, vary })
}

/// Codings a hit can be checked against the client's `Accept-Encoding` for.
fn known_coding(coding: &[u8]) -> bool {
    let coding = coding.trim_ascii();
    ["identity", "gzip", "x-gzip", "br", "zstd"]
        .iter()
        .any(|c| coding.eq_ignore_ascii_case(c.as_bytes()))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

// ------------------------------------------------------------------ entries

/// One stored response: GitLab's end-to-end headers and the whole body.
pub(crate) struct Entry {
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    age: u64,
    ttl: Duration,
    /// Bytes it holds, as the cache's bound counts them.
    weight: u32,
}

impl Entry {
    fn new(mut headers: HeaderMap, body: Bytes, plan: &Storable, key_len: usize) -> Entry {
        let fields = headers::Fields::of(&headers);
        headers::strip_hop_by_hop(&mut headers, fields);
        for name in NOT_STORED {
            headers.remove(name);
        }
        // Own bytes: a value may be a slice of a connection's read buffer.
        headers::own_values(&mut headers);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let header_bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        let weight = body.len() + header_bytes + key_len + ENTRY_OVERHEAD;
        Entry {
            headers,
            body,
            stored: Instant::now(),
            age: plan.age,
            ttl: plan.ttl,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    /// Whether this response may go to a client with these request headers (a gzip
    /// body never to one that did not accept gzip, Vary or not).
    fn acceptable(&self, request: &HeaderMap) -> bool {
        self.headers
            .get(header::CONTENT_ENCODING)
            .is_none_or(|c| compress::accepts(request, c.as_bytes()))
    }

    /// The answer to `req` from memory: `304` when its conditions say so, else the
    /// stored response (without its body for HEAD), with `Age`.
    fn respond<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        let age = HeaderValue::from(self.age.saturating_add(self.stored.elapsed().as_secs()));
        let mut resp = if not_modified(req.headers(), &self.headers) {
            not_modified_response(&self.headers)
        } else {
            let body = if req.method() == Method::HEAD {
                body::empty()
            } else {
                body::full(self.body.clone())
            };
            let mut resp = Response::new(body);
            *resp.headers_mut() = self.headers.clone();
            resp
        };
        resp.headers_mut().insert(header::AGE, age);
        *resp.version_mut() = req.version();
        resp
    }
}

/// A `304` for a response with these headers.
fn not_modified_response(stored: &HeaderMap) -> Response<ProxyBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    for name in NOT_MODIFIED_HEADERS {
        for value in stored.get_all(&name) {
            resp.headers_mut().append(name.clone(), value.clone());
        }
    }
    resp
}

/// Each entry expires after its own max-age.
struct MaxAge;

impl Expiry<String, Arc<Entry>> for MaxAge {
    fn expire_after_create(&self, _: &String, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(&self, _: &String, entry: &Arc<Entry>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(entry.ttl)
    }
}

// ------------------------------------------------------------------ the cache

type Fills = Arc<Mutex<HashMap<String, watch::Receiver<()>>>>;

/// The cache; clones share it.
#[derive(Clone)]
pub(crate) struct AssetsCache {
    entries: Cache<String, Arc<Entry>>,
    /// Per URI, the request headers its last stored response varied on: a
    /// request's key must be known before GitLab is asked.
    vary: Cache<String, Arc<[HeaderName]>>,
    /// Keys being fetched; a waiter's receiver ends when the fill is over.
    fills: Fills,
    max_entry: u64,
    metrics: Arc<Metrics>,
}

/// What a lookup found.
enum Found {
    Hit(Response<ProxyBody>),
    /// An entry in a coding this client does not accept.
    Unacceptable,
    Nothing,
}

enum Join {
    Lead(FillGuard),
    /// Nothing under way, and not to lead.
    Alone,
    Wait(watch::Receiver<()>),
}

impl AssetsCache {
    /// The cache, or None when `size` is 0 (off).
    pub(crate) fn new(settings: AssetsCacheSettings, metrics: Arc<Metrics>) -> Option<AssetsCache> {
        if settings.size == 0 {
            return None;
        }
        metrics.zero_assets_cache_series();
        let counted = metrics.clone();
        let entries = Cache::builder()
            .max_capacity(settings.size)
            .weigher(|_: &String, entry: &Arc<Entry>| entry.weight)
            .expire_after(MaxAge)
            .eviction_listener(move |_, entry: Arc<Entry>, cause| {
                counted.assets_cache_bytes.dec_by(i64::from(entry.weight));
                let cause = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Expired => "expired",
                    RemovalCause::Replaced | RemovalCause::Explicit => return,
                };
                counted
                    .assets_cache_evictions
                    .get_or_create(&CauseLabel { cause })
                    .inc();
            })
            .build();
        Some(AssetsCache {
            entries,
            vary: Cache::builder().max_capacity(VARY_URIS).build(),
            fills: Arc::default(),
            // moka weighs entries in u32: a bigger one would be undercounted.
            max_entry: settings.max_entry.min(u64::from(u32::MAX) / 2),
            metrics,
        })
    }

    /// Whether `req` is one for the cache to look at (under `/assets/`).
    pub(crate) fn covers<B>(req: &Request<B>) -> bool {
        req.uri().path().starts_with(PREFIX)
    }

    /// Answers a request on its way to GitLab: from memory when it can, else
    /// through `passthrough`, keeping a copy of a storable answer.
    pub(crate) async fn handle(
        &self,
        req: Request<Incoming>,
        passthrough: &Passthrough,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !Self::covers(&req) {
            return passthrough.forward(req).await;
        }
        if !cacheable_request(&req) {
            self.count("bypass");
            return passthrough.forward(req).await;
        }
        let uri = req.uri().path_and_query().map_or(PREFIX, |pq| pq.as_str()).to_owned();
        let mut lead = None;
        for first in [true, false] {
            let (key, found) = self.find(&uri, &req).await;
            match found {
                Found::Hit(resp) => {
                    self.count("hit");
                    return Ok(resp);
                }
                Found::Unacceptable => {
                    self.count("bypass");
                    return passthrough.forward(req).await;
                }
                Found::Nothing => {}
            }
            // One fetch per key at a time (HEAD, with no body to store, never
            // leads one); a request that waited once goes to GitLab itself.
            if !first {
                break;
            }
            match self.join(&key, req.method() == Method::GET) {
                Join::Lead(guard) => {
                    lead = Some(guard);
                    break;
                }
                Join::Alone => break,
                Join::Wait(mut done) => {
                    let _ = tokio::time::timeout(JOIN_WAIT, done.changed()).await;
                }
            }
        }
        self.count("miss");
        self.fetch(req, passthrough, uri, lead).await
    }

    /// The request's key with the `Vary` names known for `uri`, and its entry.
    async fn find<B>(&self, uri: &str, req: &Request<B>) -> (String, Found) {
        let vary = self.vary.get(uri).await.unwrap_or_else(|| Arc::from([]));
        let key = variant_key(uri, &vary, req.headers());
        let found = match self.entries.get(&key).await {
            Some(entry) if entry.acceptable(req.headers()) => Found::Hit(entry.respond(req)),
            Some(_) => Found::Unacceptable,
            None => Found::Nothing,
        };
        (key, found)
    }

    /// Waits for the fetch of `key` under way, or leads one when `may_lead`.
    fn join(&self, key: &str, may_lead: bool) -> Join {
        let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = fills.get(key) {
            return Join::Wait(done.clone());
        }
        if !may_lead {
            return Join::Alone;
        }
        let (tx, rx) = watch::channel(());
        fills.insert(key.to_owned(), rx);
        Join::Lead(FillGuard {
            key: key.to_owned(),
            fills: self.fills.clone(),
            _done: tx,
        })
    }

    /// GitLab's answer, streamed; a storable one through a [`TeeBody`] that keeps
    /// a copy. `lead` (the waiters' signal) ends with the fill. As with nginx's
    /// `proxy_cache`, GitLab is asked for the whole response (a browser
    /// revalidating its copy can fill the cache too) and the client's conditions
    /// are answered here.
    async fn fetch(
        &self,
        mut req: Request<Incoming>,
        passthrough: &Passthrough,
        uri: String,
        lead: Option<FillGuard>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // Only a GET's answer has the body to store (a HEAD's never does).
        if req.method() != Method::GET {
            return passthrough.forward(req).await;
        }
        let request_headers = req.headers().clone();
        req.headers_mut().remove(header::IF_NONE_MATCH);
        req.headers_mut().remove(header::IF_MODIFIED_SINCE);
        let resp = passthrough.forward(req).await?;
        let Some(plan) = storable(resp.status(), resp.headers(), self.max_entry) else {
            return Ok(resp);
        };
        let key = variant_key(&uri, &plan.vary, &request_headers);
        let (parts, inner) = resp.into_parts();
        let expected = content_length(&parts.headers);
        let fill = Fill {
            cache: self.clone(),
            uri,
            key,
            headers: parts.headers.clone(),
            plan,
            // Within max_entry: storable checked it.
            copy: BytesMut::with_capacity(expected.map_or(0, |n| usize::try_from(n).unwrap_or(0))),
            expected,
            _lead: lead,
        };
        let tee = TeeBody {
            inner,
            fill: Some(fill),
        };
        if not_modified(&request_headers, &parts.headers) {
            // The client has it: the body fills the cache without it.
            tokio::spawn(tee.drain());
            let mut resp = not_modified_response(&parts.headers);
            *resp.version_mut() = parts.version;
            return Ok(resp);
        }
        Ok(Response::from_parts(parts, body::boxed(tee)))
    }

    async fn store(&self, uri: String, vary: Vec<HeaderName>, key: String, entry: Arc<Entry>) {
        self.vary.insert(uri, Arc::from(vary)).await;
        // The eviction listener takes it off again, also for an entry refused as too big.
        self.metrics.assets_cache_bytes.inc_by(i64::from(entry.weight));
        self.entries.insert(key, entry).await;
        // moka bounds its size in deferred housekeeping: run it now, so that the
        // bytes held never run far past --assets-cache-size (inserts are misses only).
        self.entries.run_pending_tasks().await;
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .assets_cache_requests
            .get_or_create(&OutcomeOnly { outcome })
            .inc();
    }
}

/// Held by the request that fetches a key; dropping it (stored, abandoned or
/// failed) lets the waiters go.
struct FillGuard {
    key: String,
    fills: Fills,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        self.fills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// The copy of a response being taken, and where it goes.
struct Fill {
    cache: AssetsCache,
    uri: String,
    key: String,
    headers: HeaderMap,
    plan: Storable,
    copy: BytesMut,
    expected: Option<u64>,
    _lead: Option<FillGuard>,
}

impl Fill {
    /// Adds a frame to the copy; false once it outgrows `--assets-cache-max-entry`.
    fn keep(&mut self, data: &Bytes) -> bool {
        let total = self.copy.len().saturating_add(data.len());
        if u64::try_from(total).unwrap_or(u64::MAX) > self.cache.max_entry {
            return false;
        }
        self.copy.extend_from_slice(data);
        true
    }

    /// The body ended cleanly: the entry goes in off the response's path (inserting
    /// awaits), then the waiters are let go. A body shorter than its length is not
    /// whole and stays out.
    fn finish(self) {
        let Fill {
            cache,
            uri,
            key,
            headers,
            plan,
            copy,
            expected,
            _lead,
        } = self;
        if expected.is_some_and(|n| Some(n) != u64::try_from(copy.len()).ok()) {
            return;
        }
        // A chunked body's buffer may have grown past its length: hold only the bytes.
        let body = if copy.capacity() > copy.len() {
            Bytes::copy_from_slice(&copy)
        } else {
            copy.freeze()
        };
        let entry = Arc::new(Entry::new(headers, body, &plan, key.len()));
        tokio::spawn(async move {
            cache.store(uri, plan.vary, key, entry).await;
            drop(_lead);
        });
    }
}

/// Forwards every frame of GitLab's body as it comes and keeps a copy. The copy
/// is dropped past max-entry, on trailers (a hit would lose them), on an error,
/// and with the body when the client goes away: only a clean end stores it.
struct TeeBody {
    inner: ProxyBody,
    fill: Option<Fill>,
}

impl TeeBody {
    /// Reads the body to its end for the copy alone, no further than the copy goes.
    async fn drain(mut self) {
        while self.fill.is_some() {
            match std::future::poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                let kept = match (frame.data_ref(), this.fill.as_mut()) {
                    (Some(data), Some(fill)) => fill.keep(data),
                    (None, _) => false,
                    (Some(_), None) => true,
                };
                if !kept {
                    this.fill = None;
                } else if this.inner.is_end_stream()
                    && let Some(fill) = this.fill.take()
                {
                    // hyper stops polling a body that says it has ended.
                    fill.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => this.fill = None,
            Poll::Ready(None) => {
                if let Some(fill) = this.fill.take() {
                    fill.finish();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        h
    }

    fn lifetime(cache_control: &str) -> Option<u64> {
        CacheControl::parse(&headers(&[("cache-control", cache_control)]))
            .shared_lifetime()
            .map(|d| d.as_secs())
    }

    #[test]
    fn lifetime_needs_public_and_a_positive_max_age() {
        assert_eq!(lifetime("public, max-age=31536000"), Some(31_536_000));
        assert_eq!(lifetime("max-age=60, PUBLIC"), Some(60));
        assert_eq!(lifetime("public, max-age=\"60\""), Some(60));
        assert_eq!(lifetime("public, max-age=60, s-maxage=5"), Some(5));
        assert_eq!(lifetime("public, s-maxage=5"), Some(5));
        assert_eq!(
            lifetime("public, max-age=99999999999999999999999"),
            Some(MAX_TTL.as_secs())
        );
        for refused in [
            "max-age=60",
            "public",
            "public, max-age=0",
            "public, max-age=",
            "public, max-age=-1",
            "public, max-age=6x",
            "public, max-age=60, private",
            "public, max-age=60, no-store",
            "public, max-age=60, no-cache",
            "public, max-age=60, no-cache=\"set-cookie\"",
            "public, max-age=60, max-age=0",
            "private, max-age=60",
        ] {
            assert_eq!(lifetime(refused), None, "{refused}");
        }
    }

    #[test]
    fn storable_responses() {
        let ok = headers(&[("cache-control", "public, max-age=100"), ("content-length", "10")]);
        let plan = storable(StatusCode::OK, &ok, 10).unwrap();
        assert_eq!((plan.ttl, plan.age), (Duration::from_secs(100), 0));
        assert!(storable(StatusCode::OK, &ok, 9).is_none(), "over max-entry");
        assert!(storable(StatusCode::NOT_FOUND, &ok, 10).is_none());
        let aged = headers(&[("cache-control", "public, max-age=100"), ("age", "40")]);
        assert_eq!(
            storable(StatusCode::OK, &aged, 10).unwrap().ttl,
            Duration::from_secs(60)
        );
        let stale = headers(&[("cache-control", "public, max-age=100"), ("age", "100")]);
        assert!(storable(StatusCode::OK, &stale, 10).is_none());
        for (name, value) in [
            ("set-cookie", "a=b"),
            ("vary", "*"),
            ("vary", "Accept-Encoding, *"),
            ("content-encoding", "deflate"),
            ("content-range", "bytes 0-1/2"),
        ] {
            let mut h = ok.clone();
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
            assert!(storable(StatusCode::OK, &h, 10).is_none(), "{name}: {value}");
        }
        let mut gz = ok.clone();
        gz.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        gz.insert(header::VARY, "Origin, accept-encoding".parse().unwrap());
        assert_eq!(
            storable(StatusCode::OK, &gz, 10).unwrap().vary,
            [header::ACCEPT_ENCODING, header::ORIGIN]
        );
    }

    #[test]
    fn vary_key_holds_the_named_request_headers() {
        let vary = vary_names(&headers(&[("vary", "Origin"), ("vary", "accept-encoding, ORIGIN")])).unwrap();
        assert_eq!(vary, [header::ACCEPT_ENCODING, header::ORIGIN]);
        let key = |pairs: &[(&str, &str)]| variant_key("/assets/a.js", &vary, &headers(pairs));
        // Accept-Encoding reduced to what it accepts: spellings of one set share a key.
        assert_eq!(
            key(&[("accept-encoding", "gzip, deflate, br")]),
            key(&[("accept-encoding", "br;q=0.5, GZIP")])
        );
        assert_ne!(key(&[("accept-encoding", "gzip")]), key(&[]));
        assert_ne!(
            key(&[("accept-encoding", "gzip")]),
            key(&[("accept-encoding", "gzip;q=0")])
        );
        assert_ne!(key(&[("origin", "https://a")]), key(&[("origin", "https://b")]));
        assert_eq!(
            variant_key("/assets/a.js", &[], &headers(&[("origin", "x")])),
            "/assets/a.js"
        );
    }

    fn conditional(request: &[(&str, &str)], stored: &[(&str, &str)]) -> bool {
        not_modified(&headers(request), &headers(stored))
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        let strong = [("etag", "\"abc\"")];
        let weak = [("etag", "W/\"abc\"")];
        for inm in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "\"x,y\",W/\"abc\"", "*"] {
            assert!(conditional(&[("if-none-match", inm)], &strong), "{inm}");
            assert!(conditional(&[("if-none-match", inm)], &weak), "{inm}");
        }
        for inm in ["\"abcd\"", "abc", "\"x\", abc", "\"ab", ""] {
            assert!(!conditional(&[("if-none-match", inm)], &strong), "{inm}");
        }
        assert!(!conditional(&[("if-none-match", "\"abc\"")], &[]));
        assert!(conditional(&[("if-none-match", "*")], &[]));
    }

    #[test]
    fn if_modified_since_only_without_if_none_match() {
        let stored = [("etag", "\"abc\""), ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")];
        assert!(conditional(
            &[("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")],
            &stored
        ));
        assert!(conditional(
            &[("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")],
            &stored
        ));
        assert!(!conditional(
            &[("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT")],
            &stored
        ));
        assert!(!conditional(&[("if-modified-since", "yesterday")], &stored));
        // If-None-Match decides when both are sent.
        assert!(!conditional(
            &[
                ("if-none-match", "\"other\""),
                ("if-modified-since", "Wed, 02 Dec 2026 10:00:00 GMT")
            ],
            &stored
        ));
    }

    #[test]
    fn only_plain_get_and_head_use_the_cache() {
        let req = |method: Method, pairs: &[(&str, &str)]| {
            let mut r = Request::builder().method(method).uri("/assets/a.js");
            for (n, v) in pairs {
                r = r.header(*n, *v);
            }
            r.body(http_body_util::Empty::<Bytes>::new()).unwrap()
        };
        assert!(cacheable_request(&req(Method::GET, &[])));
        assert!(cacheable_request(&req(Method::HEAD, &[("cookie", "a=b")])));
        assert!(!cacheable_request(&req(Method::POST, &[])));
        assert!(!cacheable_request(&req(Method::GET, &[("authorization", "Bearer x")])));
        assert!(!cacheable_request(&req(Method::GET, &[("range", "bytes=0-1")])));
        let with_body = Request::get("/assets/a.js")
            .body(http_body_util::Full::new(Bytes::from_static(b"x")))
            .unwrap();
        assert!(!cacheable_request(&with_body));
    }

    #[test]
    fn entries_keep_end_to_end_headers_only() {
        let plan = Storable {
            ttl: Duration::from_secs(60),
            age: 5,
            vary: Vec::new(),
        };
        let stored = headers(&[
            ("cache-control", "public, max-age=60"),
            ("etag", "\"e\""),
            ("age", "5"),
            ("x-request-id", "01J"),
            ("keep-alive", "timeout=5"),
            ("content-type", "application/javascript"),
        ]);
        let entry = Entry::new(stored, Bytes::from_static(b"body"), &plan, 10);
        let names: Vec<&str> = entry.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["cache-control", "etag", "content-type", "content-length"]);
        assert!(entry.weight as usize >= 4 + ENTRY_OVERHEAD);

        let get = Request::get("/assets/a.js").body(()).unwrap();
        let resp = entry.respond(&get);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::AGE], "5");
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "4");
        let revalidate = Request::get("/assets/a.js")
            .header("if-none-match", "W/\"e\"")
            .body(())
            .unwrap();
        let resp = entry.respond(&revalidate);
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(resp.headers()[header::ETAG], "\"e\"");
        assert!(resp.headers().get(header::CONTENT_TYPE).is_none());

        let mut gz = headers(&[("content-encoding", "gzip")]);
        gz.insert(header::CACHE_CONTROL, "public, max-age=60".parse().unwrap());
        let entry = Entry::new(gz, Bytes::new(), &plan, 0);
        assert!(entry.acceptable(&headers(&[("accept-encoding", "gzip, br")])));
        assert!(!entry.acceptable(&headers(&[("accept-encoding", "br")])));
        assert!(!entry.acceptable(&HeaderMap::new()));
    }
}
