//! The admin listener: health, readiness, metrics and a manual refresh of the
//! OIDC documents, on its own address so none of it is reachable through the
//! public listener.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{self, ProxyBody};
use crate::config::AdminRefresh;
use crate::export;
use crate::metrics::Metrics;
use crate::oidc::cache::Cache;

pub(crate) struct Admin {
    pub metrics: Arc<Metrics>,
    pub cache: Arc<Cache>,
    /// Fires when the proxy starts draining: readiness turns 503 so load
    /// balancers stop sending new work while in-flight requests finish.
    pub draining: CancellationToken,
    /// `--admin-refresh`: who may make the proxy call GitLab.
    pub refresh_from: AdminRefresh,
    /// `--export-to`: how the kept copy fares.
    pub export: Option<Arc<export::Status>>,
}

impl Admin {
    pub(crate) async fn handle(&self, req: &Request<Incoming>, peer: IpAddr) -> Response<ProxyBody> {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        match (req.method(), req.uri().path()) {
            (_, "/healthz") if get => text(StatusCode::OK, "ok\n"),
            (_, "/readyz") if get => self.readiness(),
            (_, "/status") if get => self.status(),
            (_, "/metrics") if get => {
                self.cache.update_gauges();
                let mut resp = Response::new(body::full(self.metrics.encode()));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                resp
            }
            (&Method::POST, "/refresh") if !self.refresh_from.allows(peer) => text(
                StatusCode::FORBIDDEN,
                "refresh is answered to loopback peers only (--admin-refresh any allows others)\n",
            ),
            // A web page may POST text/plain cross-origin without asking; JSON
            // needs a preflight, which this listener never grants.
            (&Method::POST, "/refresh") if !is_json(req.headers()) => text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send Content-Type: application/json\n",
            ),
            (&Method::POST, "/refresh") => self.refresh().await,
            (_, "/healthz" | "/readyz" | "/metrics" | "/status") => not_allowed("GET, HEAD"),
            (_, "/refresh") => not_allowed("POST"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// Ready while both OIDC documents are held and within `--stale-if-error`,
    /// until draining starts.
    fn readiness(&self) -> Response<ProxyBody> {
        if self.draining.is_cancelled() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        } else if !self.cache.servable() {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no servable OIDC documents from GitLab\n",
            )
        } else {
            text(StatusCode::OK, "ready\n")
        }
    }

    /// What is held and how the copy fares, as JSON: for people and scripts,
    /// not for probes (readiness never depends on the copy).
    fn status(&self) -> Response<ProxyBody> {
        let mut body = self.held();
        body["ready"] = json!(!self.draining.is_cancelled() && self.cache.servable());
        body["draining"] = json!(self.draining.is_cancelled());
        body["export"] = self.export.as_ref().map_or(Value::Null, |s| s.to_json());
        json_response(StatusCode::OK, &body)
    }

    /// Refetches both documents now (after a key rotation) and reports what is held.
    async fn refresh(&self) -> Response<ProxyBody> {
        let report = self.cache.refresh().await;
        let mut body = self.held();
        body["discovery"]["refreshed"] = json!(report.discovery.is_ok());
        body["discovery"]["error"] = json!(report.discovery.as_ref().err().map(ToString::to_string));
        body["keys"]["refreshed"] = json!(report.keys.is_ok());
        body["keys"]["error"] = json!(report.keys.as_ref().err().map(ToString::to_string));
        let status = if report.ok() {
            StatusCode::OK
        } else {
            StatusCode::BAD_GATEWAY
        };
        json_response(status, &body)
    }

    /// The documents held: issuer, published paths, key ids, ages in seconds.
    fn held(&self) -> Value {
        let age = |at: tokio::time::Instant| (at.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let discovery = self.cache.discovery();
        let keys = self.cache.keys();
        json!({
            "discovery": {
                "issuer": discovery.as_ref().map(|d| d.issuer.url.clone()),
                "published_paths": discovery.as_ref().map(|d| d.by_path.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>()),
                "age_seconds": discovery.as_ref().and_then(|d| d.fetched_at()).map(age),
            },
            "keys": {
                "kids": keys.as_ref().map(|k| k.kids.clone()),
                "age_seconds": keys.as_ref().map(|k| age(k.doc.fetched_at)),
            },
        })
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(format!("{body:#}\n")));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// `Content-Type: application/json`, parameters allowed.
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

use body::text_response as text;

fn not_allowed(allow: &'static str) -> Response<ProxyBody> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Serves until aborted; admin connections are not part of the drain.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.handle(&req, peer.ip()).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
