//! Every public request enters here: forwarding headers are settled once, the
//! request goes to its route, errors become responses in one place, and the
//! response is wrapped for the access log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::Either;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::access_log::{LoggedBody, PendingLog, RequestRecord};
use crate::acme::Acme;
use crate::acme_webroot::{self, Webroot};
use crate::assets_cache::AssetsCache;
use crate::body::{self, ProxyBody};
use crate::compress;
use crate::config::Proto;
use crate::error::{Answer, DownstreamError, ProxyError};
use crate::error_pages::{self, ErrorPages};
use crate::headers::{self, HostProblem, ViaId};
use crate::idle::InFlight;
use crate::metrics::{ErrorLabels, Metrics};
use crate::oidc::{Oidc, Verdict};
use crate::passthrough::Passthrough;
use crate::redirect;
use crate::routes::{Destination, Routes};

/// [`Router::handle`]'s answer.
#[allow(
    clippy::large_enum_variant,
    reason = "the answer given at once is held inline: boxing it would cost the cached documents an allocation"
)]
pub(crate) enum Handled {
    Now(Response<LoggedBody>),
    Later(Pin<Box<dyn Future<Output = Response<LoggedBody>> + Send>>),
}

/// [`Router::decide`]'s answer.
#[allow(
    clippy::large_enum_variant,
    reason = "lives on the stack for the moment of the decision: boxing the answer would cost the cached documents an allocation"
)]
enum Decision {
    /// Answered or refused without waiting.
    Now(Result<Response<ProxyBody>, ProxyError>),
    /// GitLab's, not an OIDC document: the pass-through.
    PassToGitlab,
    /// Anything else (challenges, redirects, other services, a cold document):
    /// [`Router::route`] in full.
    Route,
}

/// What a request's answer needs once it is known.
struct Done {
    pending: PendingLog,
    /// The client reads HTML: `--error-pages` may answer it.
    reads_html: bool,
    /// The scheme the client used, as settled: HSTS is for https only.
    proto: Proto,
}

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    /// The client: the TCP peer, or the address in its PROXY header.
    pub peer: SocketAddr,
    /// A PROXY header was read: `peer` is the load balancer's client, whose own
    /// forwarding headers are never believed (it may be inside a trusted range).
    pub proxied: bool,
    /// The scheme clients used to reach this listener, as GitLab should see it.
    pub proto: Proto,
    pub kind: ListenerKind,
    /// This listener's own address: the `Host` of last resort for HTTP/1.0.
    pub local: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    Plain,
    Tls,
    /// `--oidc-listen`: the OIDC documents and nothing else, plain or TLS.
    Oidc,
}

impl ListenerKind {
    /// The access log's and the request metrics' `listener`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ListenerKind::Plain | ListenerKind::Tls => "main",
            ListenerKind::Oidc => "oidc",
        }
    }
}

pub(crate) struct RouterSettings {
    pub trusted_proxies: Vec<IpNet>,
    /// `--redirect-http`: where plain-listener requests are sent.
    pub redirect: Option<redirect::Target>,
    /// `--hsts`: the header value for responses to https requests.
    pub hsts: Option<HeaderValue>,
    pub compression: bool,
    /// `Host` for HTTP/1.0 requests without one: `--external-url`'s host, else
    /// the listener's address.
    pub default_host: Option<HeaderValue>,
    /// This process's name in `Via`: a request that carries it has looped.
    pub via: ViaId,
    /// `--error-pages`: HTML for the proxy's own 502/503/504, to browsers.
    pub error_pages: Option<ErrorPages>,
    /// `--acme-webroot`: challenge files on the plain listener.
    pub acme_webroot: Option<Webroot>,
    /// `--acme-domain`: HTTP-01 answers on the plain listener.
    pub acme: Option<Arc<Acme>>,
}

pub(crate) struct Router {
    oidc: Oidc,
    passthrough: Passthrough,
    /// `--route` hosts and KAS: the services besides GitLab.
    routes: Routes,
    settings: RouterSettings,
    metrics: Arc<Metrics>,
    /// `--assets-cache-size`: GitLab's `/assets/` answers kept in memory.
    assets: Option<AssetsCache>,
}

impl Router {
    pub(crate) fn new(
        oidc: Oidc,
        (passthrough, routes): (Passthrough, Routes),
        settings: RouterSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Router {
            oidc,
            passthrough,
            routes,
            settings,
            metrics,
            assets: None,
        }
    }

    /// Puts `cache` between the compression and the pass-through.
    pub(crate) fn with_assets_cache(mut self, cache: Option<AssetsCache>) -> Self {
        self.assets = cache;
        self
    }

    /// To GitLab, through the `/assets/` cache when it is on. The cache's
    /// future is boxed: inline, its ~3 KB would be set up and moved for every
    /// request, those it never looks at too. Not an `async fn`, nor are the
    /// two below: each kept the request in its state once more.
    fn forward(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + '_ {
        match &self.assets {
            Some(cache) if AssetsCache::covers(&req) => Either::Left(Box::pin(cache.handle(req, &self.passthrough))),
            _ => Either::Right(self.passthrough.forward(req)),
        }
    }

    /// A request's answer: at once when nothing needs waiting for (a held
    /// OIDC document, a refusal), else a boxed continuation. So the cached
    /// documents never build, move or allocate the pass-through's futures, and
    /// a connection's slot for the request in flight stays small.
    pub(crate) fn handle(self: &Arc<Self>, mut req: Request<Incoming>, conn: ConnInfo, in_flight: InFlight) -> Handled {
        let s = &self.settings;
        let trusted: &[IpNet] = if conn.proxied { &[] } else { &s.trusted_proxies };
        // Read only: the forwarding headers are rewritten for what goes on (`forward_as`).
        let forwarded = headers::forwarded(req.headers(), conn.peer.ip(), trusted, conn.proto);
        let record = RequestRecord::new(
            req.method(),
            req.uri(),
            req.version(),
            forwarded.client,
            conn.kind.label(),
        );
        let done = Done {
            pending: PendingLog::new(record, self.metrics.clone(), in_flight),
            // Read before the request is handed on: a browser may get GitLab's page.
            reads_html: s.error_pages.is_some() && error_pages::accepts_html(req.headers()),
            proto: forwarded.proto,
        };
        // Loops first, the documents held in memory included: the refresher's
        // own fetch, come back through a looping --upstream, must not be
        // answered with the copy it is refreshing (it would never age).
        let result = if headers::via_names(req.headers(), &s.via) {
            Err(ProxyError::Downstream(DownstreamError::Loop))
        } else if matches!(*req.method(), Method::CONNECT | Method::TRACE) {
            Err(ProxyError::Downstream(DownstreamError::MethodNotAllowed))
        } else if let Err(problem) = self.settle_host(&mut req, &conn) {
            Err(ProxyError::Downstream(problem))
        } else {
            match self.decide(&req, &conn, done.pending.record().start) {
                Decision::Now(result) => result,
                // One box holds the whole pass-through: routed already, nothing
                // is decided twice and no future is moved into another box.
                Decision::PassToGitlab => {
                    let router = Arc::clone(self);
                    let req = self.forward_as(req, &conn);
                    return Handled::Later(Box::pin(async move {
                        let result = router.pass_to_gitlab(req).await;
                        router.finish(result, done)
                    }));
                }
                Decision::Route => {
                    let router = Arc::clone(self);
                    return Handled::Later(Box::pin(async move {
                        let result = router.route(req, &conn, done.proto).await;
                        router.finish(result, done)
                    }));
                }
            }
        };
        Handled::Now(self.finish(result, done))
    }

    /// Where a request goes, told without waiting: nearly all are GitLab's
    /// (passed through) or a held OIDC document (answered now).
    fn decide(&self, req: &Request<Incoming>, conn: &ConnInfo, arrived: std::time::Instant) -> Decision {
        let s = &self.settings;
        if conn.kind == ListenerKind::Plain && (s.acme.is_some() || s.acme_webroot.is_some() || s.redirect.is_some()) {
            // Challenges and redirects come first there: routed in full.
            return Decision::Route;
        }
        if conn.kind != ListenerKind::Oidc && !matches!(self.routes.pick(req.headers(), req.uri()), Destination::Gitlab)
        {
            return Decision::Route;
        }
        match self.oidc.answer_now(req, tokio::time::Instant::from_std(arrived)) {
            Verdict::Answer(resp) => Decision::Now(Ok(resp)),
            // Not held yet: the route waits for the first copy.
            Verdict::Cold(_) => Decision::Route,
            Verdict::NotOurs if conn.kind == ListenerKind::Oidc => {
                Decision::Now(Err(ProxyError::Downstream(DownstreamError::NotOidc)))
            }
            Verdict::NotOurs => Decision::PassToGitlab,
        }
    }

    /// The response as sent: errors answered, HSTS added, the body wrapped
    /// for the access log.
    fn finish(&self, result: Result<Response<ProxyBody>, ProxyError>, done: Done) -> Response<LoggedBody> {
        let Done {
            pending,
            reads_html,
            proto,
        } = done;
        let mut resp = result.unwrap_or_else(|err| self.error_response(err, pending.record(), reads_html));
        if let Some(hsts) = &self.settings.hsts
            && proto == Proto::Https
        {
            resp.headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        let status = resp.status();
        resp.map(|body: ProxyBody| pending.into_body(body, status))
    }

    /// A request with a settled `Host`, to its answer: an ACME challenge file,
    /// the https redirect, another service, the OIDC documents, or GitLab.
    async fn route(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        proto: Proto,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let s = &self.settings;
        if conn.kind == ListenerKind::Plain
            && let Some(acme) = &s.acme
            && let Some(answer) = acme_webroot::respond_with(&req, |token| acme.key_authorization(token))
        {
            return Ok(answer);
        }
        if conn.kind == ListenerKind::Plain
            && let Some(webroot) = &s.acme_webroot
            && let Some(answer) = Box::pin(webroot.respond(&req)).await
        {
            return Ok(answer);
        }
        // The OIDC listener serves the documents alone, whatever the host.
        let destination = match conn.kind {
            ListenerKind::Oidc => Destination::Gitlab,
            _ => self.routes.pick(req.headers(), req.uri()),
        };
        if let Some(target) = &s.redirect
            && conn.kind == ListenerKind::Plain
            && proto == Proto::Http
        {
            // Another service keeps its own host: --external-url names GitLab's.
            return Ok(match destination {
                Destination::Gitlab => target.respond(&req),
                _ => target.for_any_host().respond(&req),
            });
        }
        // The pass-through's futures are boxed: held inline, their kilobytes
        // would be set up and moved for every request, the cached answers too.
        match destination {
            Destination::Service(to) => Box::pin(to.forward(self.forward_as(req, conn))).await,
            Destination::Kas { to, uri } => {
                let mut req = self.forward_as(req, conn);
                *req.uri_mut() = uri;
                Box::pin(to.forward(req)).await
            }
            Destination::Gitlab => self.to_gitlab(req, conn).await,
        }
    }

    /// The request with the forwarding headers GitLab and the other services
    /// are to see (`X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`).
    fn forward_as(&self, mut req: Request<Incoming>, conn: &ConnInfo) -> Request<Incoming> {
        let trusted: &[IpNet] = if conn.proxied {
            &[]
        } else {
            &self.settings.trusted_proxies
        };
        headers::apply_forwarding(req.headers_mut(), conn.peer.ip(), trusted, conn.proto);
        req
    }

    /// GitLab's own requests: the OIDC documents from the cache, the rest
    /// passed through (compressed like omnibus nginx does).
    async fn to_gitlab(&self, req: Request<Incoming>, conn: &ConnInfo) -> Result<Response<ProxyBody>, ProxyError> {
        if let Some(answer) = self.oidc.handle(&req).await {
            return Ok(answer);
        }
        if conn.kind == ListenerKind::Oidc {
            return Err(ProxyError::Downstream(DownstreamError::NotOidc));
        }
        Box::pin(self.pass_to_gitlab(self.forward_as(req, conn))).await
    }

    /// Everything of GitLab's but the OIDC documents: compressed like omnibus nginx does.
    fn pass_to_gitlab(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + '_ {
        let compression = self.settings.compression.then(|| {
            // nginx's gzip_http_version 1.1: an HTTP/1.0 client gets identity.
            let choice = (req.version() != Version::HTTP_10)
                .then(|| compress::negotiate(req.headers()))
                .flatten();
            (req.method().clone(), choice)
        });
        self.forward(req).map(move |forwarded| match compression {
            Some((method, choice)) => forwarded.map(|resp| compress::apply(&method, choice, resp)),
            None => forwarded,
        })
    }

    fn settle_host(&self, req: &mut Request<Incoming>, conn: &ConnInfo) -> Result<(), DownstreamError> {
        // Only an HTTP/1.0 request without Host needs it: made then, not per request.
        let default = || {
            let fallback =
                || HeaderValue::from_str(&conn.local.to_string()).expect("an address is a valid header value");
            self.settings.default_host.clone().unwrap_or_else(fallback)
        };
        // Taken out and put back, so the headers can be changed without a copy of the URI.
        let (version, uri) = (req.version(), std::mem::take(req.uri_mut()));
        let settled = headers::settle_host(version, &uri, req.headers_mut(), default);
        *req.uri_mut() = uri;
        settled.map_err(|p| match p {
            HostProblem::Target => DownstreamError::BadTarget,
            HostProblem::Host => DownstreamError::BadHost,
        })
    }

    fn error_response(&self, err: ProxyError, record: &RequestRecord, reads_html: bool) -> Response<ProxyBody> {
        let answer = err.answer();
        match &err {
            ProxyError::Upstream(_) => {
                self.metrics
                    .upstream_errors
                    .get_or_create(&ErrorLabels { reason: answer.label })
                    .inc();
                tracing::warn!(
                    target: "upstream",
                    reason = answer.label,
                    method = %record.method,
                    path = record.path(),
                    error = %err,
                    "request to GitLab failed"
                );
            }
            ProxyError::Downstream(DownstreamError::Loop) => {
                // A misconfiguration, not a client's mistake: the operator must see it.
                tracing::warn!(method = %record.method, path = record.path(), "request came back to this proxy: --upstream leads to itself");
            }
            ProxyError::Downstream(_) => {
                tracing::debug!(method = %record.method, path = record.path(), error = %err, "request refused");
            }
        }
        let page = self
            .settings
            .error_pages
            .as_ref()
            .filter(|_| reads_html)
            .and_then(|pages| pages.page(answer.status));
        let mut resp = error_response(answer);
        if let Some(page) = page {
            *resp.body_mut() = body::full(page);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
        }
        if let ProxyError::Downstream(_) = err {
            // What is left of a refused request (an unread body) is not read as
            // the next one: the connection ends with this answer, as nginx's does.
            // (HTTP/2 drops the header; its streams end on their own.)
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The short plain-text answer for a refused or failed request.
fn error_response(answer: Answer) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(answer.body));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if answer.status == StatusCode::SERVICE_UNAVAILABLE {
        // The budget frees up as requests end: worth another try soon.
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if answer.status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{DownstreamError, UpstreamError};

    #[test]
    fn error_responses_are_plain_text_and_never_cached() {
        let resp = error_response(ProxyError::from(UpstreamError::ConnectTimeout).answer());
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert!(resp.headers().get(header::ALLOW).is_none());
        let resp = error_response(ProxyError::from(DownstreamError::MethodNotAllowed).answer());
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(resp.headers()[header::ALLOW].to_str().unwrap().contains("GET"));
    }
}
