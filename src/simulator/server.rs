//! The simulated GitLab's HTTP side: routing, documents, headers and faults.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{Fault, Profile, SimDoc, SimulatedGitLab, random_bytes};
use crate::body::{ProxyBody, empty, full};

impl SimulatedGitLab {
    /// Serves HTTP/1.1 on `listener` until the returned handle is aborted
    /// (aborting also ends every open connection).
    pub fn serve(self: &Arc<Self>, listener: TcpListener) -> JoinHandle<()> {
        self.serve_on(listener)
    }

    /// As [`serve`](Self::serve), on a unix socket (as Workhorse listens on omnibus).
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) -> JoinHandle<()> {
        self.serve_on(listener)
    }

    fn serve_on<L: Accept>(self: &Arc<Self>, listener: L) -> JoinHandle<()> {
        let sim = Arc::clone(self);
        tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept_io() => match accepted {
                        Ok(io) => {
                            let sim = Arc::clone(&sim);
                            connections.spawn(async move {
                                let svc = service_fn(move |req| {
                                    handle(Arc::clone(&sim), req)
                                });
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(io), svc)
                                    .await;
                            });
                        }
                        Err(e) => {
                            // Out of descriptors and the like: do not spin.
                            tracing::debug!(error = %e, "simulated GitLab: accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    },
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        })
    }
}

/// A listener the simulator can serve on.
trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept_io(&self) -> io::Result<TcpStream> {
        let (stream, _) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    async fn accept_io(&self) -> io::Result<UnixStream> {
        Ok(self.accept().await?.0)
    }
}

const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const UNCACHEABLE: &str = "max-age=0, private, must-revalidate";
/// `Fault::Oversized` makes bodies at least this big (1 MiB and a bit).
pub(super) const OVERSIZED_MIN: usize = 1024 * 1024 + 64 * 1024;

/// Returned by the service to make hyper drop the connection without an answer.
#[derive(Debug)]
pub(super) struct HangUp;

impl fmt::Display for HangUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated GitLab hangs up (fault)")
    }
}

impl std::error::Error for HangUp {}

/// What to answer, before the headers common to every response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Reply {
            status,
            headers,
            body: body.into(),
        }
    }

    fn header(mut self, name: HeaderName, value: &str) -> Reply {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }
}

enum Route {
    Doc(SimDoc),
    Health,
    Probe,
    Home,
    NotFound,
}

fn route(sim: &SimulatedGitLab, path: &str) -> Route {
    let rel = if sim.root.is_empty() {
        path
    } else {
        match path.strip_prefix(sim.root.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            // Outside the relative URL root GitLab does not exist.
            _ => return Route::NotFound,
        }
    };
    // Rails route recognition ignores one trailing slash.
    let rel = match rel.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => rel,
    };
    match rel {
        "" | "/" => Route::Home,
        "/-/health" => Route::Health,
        "/-/readiness" | "/-/liveness" => Route::Probe,
        p => SimDoc::ALL
            .into_iter()
            .find(|doc| doc.path() == p)
            .map_or(Route::NotFound, Route::Doc),
    }
}

pub(super) async fn handle<B>(sim: Arc<SimulatedGitLab>, req: Request<B>) -> Result<Response<ProxyBody>, HangUp> {
    let started = Instant::now();
    let method = req.method().clone();
    let readable = method == Method::GET || method == Method::HEAD;
    let route = route(&sim, req.uri().path());
    if let Route::Doc(doc) = route {
        sim.record_hit(doc);
    }
    // Every request Rails answers waits for a worker; what the proxy serves
    // from memory never arrives here.
    if let Some(rails) = sim.rails_pool() {
        rails.serve().await;
    }
    let reply = match route {
        Route::Doc(doc) => match sim.fault(doc) {
            Fault::HangUp => {
                tracing::debug!(?doc, "simulated GitLab: hanging up (fault)");
                return Err(HangUp);
            }
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                document(&sim, doc, &req, &Fault::None)
            }
            fault => document(&sim, doc, &req, &fault),
        },
        Route::Health if readable => Reply::new(StatusCode::OK, "text/plain", "GitLab OK"),
        Route::Probe if readable => Reply::new(StatusCode::OK, JSON, r#"{"status":"ok"}"#),
        Route::Home if readable => home_page(&sim),
        _ => not_found(),
    };
    tracing::debug!(
        %method,
        path = req.uri().path(),
        status = reply.status.as_u16(),
        "simulated GitLab"
    );
    Ok(finish(reply, &method, started))
}

/// One of the three documents, CORS included, with `fault` applied (HangUp and
/// Delay are handled by the caller).
fn document<B>(sim: &SimulatedGitLab, doc: SimDoc, req: &Request<B>, fault: &Fault) -> Reply {
    // GitLab's Rack::Cors covers discovery and /oauth/discovery/keys, not /-/jwks.
    let cors = doc != SimDoc::Jwks;
    let origin = req.headers().contains_key(header::ORIGIN);
    let mut reply = match *req.method() {
        Method::GET | Method::HEAD => document_body(sim, doc, req, fault),
        Method::OPTIONS if cors && origin && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) => {
            let mut reply = Reply::new(StatusCode::OK, "text/plain", Bytes::new());
            reply.headers.remove(header::CONTENT_TYPE);
            reply = reply.header(header::ACCESS_CONTROL_MAX_AGE, "7200");
            if let Some(asked) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
                reply
                    .headers
                    .insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
            }
            reply
        }
        _ => not_found(),
    };
    if cors {
        reply.headers.append(header::VARY, HeaderValue::from_static("Origin"));
        if origin {
            reply = reply
                .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")
                .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD");
        }
    }
    reply
}

fn document_body<B>(sim: &SimulatedGitLab, doc: SimDoc, req: &Request<B>, fault: &Fault) -> Reply {
    match fault {
        Fault::Status(code) => return error_page(sim, *code),
        Fault::SignInPage => return sign_in_page(sim),
        Fault::NotAnObject => return json_reply(sim, doc, req, Bytes::from_static(b"[]")),
        _ => {}
    }
    let value = if doc.is_key_set() {
        let Some(keys) = sim.key_set_keys(doc) else {
            return not_found();
        };
        let jwks: Vec<Value> = match fault {
            Fault::EmptyKeys => Vec::new(),
            Fault::PrivateKeyMembers => keys.iter().map(|k| k.private_jwk().clone()).collect(),
            _ => keys.iter().map(|k| k.public_jwk().clone()).collect(),
        };
        json!({ "keys": jwks })
    } else {
        sim.discovery_document(&request_base(sim, req))
    };
    let body = match fault {
        Fault::Truncated => {
            let mut body = to_json(&value);
            body.truncate(body.len() / 2);
            body
        }
        Fault::Oversized => oversized(value),
        _ => to_json(&value),
    };
    json_reply(sim, doc, req, body.into())
}

fn to_json(value: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail (all keys are strings).
    serde_json::to_vec(value).unwrap_or_default()
}

/// The document plus an `x_padding` member big enough to pass 1 MiB.
fn oversized(mut value: Value) -> Vec<u8> {
    let line = "0123456789abcdef".repeat(64);
    let count = OVERSIZED_MIN / (line.len() + 3) + 1;
    let padding = Value::Array(vec![Value::String(line); count]);
    match &mut value {
        Value::Object(members) => {
            members.insert("x_padding".to_owned(), padding);
        }
        other => *other = json!({ "x_padding": padding }),
    }
    to_json(&value)
}

/// A 200 JSON document with GitLab's caching headers, or the 304 that a
/// matching `If-None-Match` gets instead (Rack::ETag and Rack::ConditionalGet).
fn json_reply<B>(sim: &SimulatedGitLab, doc: SimDoc, req: &Request<B>, body: Bytes) -> Reply {
    let cache_control = match doc {
        SimDoc::Discovery => UNCACHEABLE,
        SimDoc::OauthKeys | SimDoc::Jwks => sim.profile.keys_cache_control(),
    };
    let etag = weak_etag(&body);
    let mut reply = Reply::new(StatusCode::OK, JSON, body)
        .header(header::CACHE_CONTROL, cache_control)
        .header(header::ETAG, &etag);
    if doc == SimDoc::Discovery && sim.profile == Profile::V14_4 {
        reply = reply.header(header::SET_COOKIE, &session_cookie(sim));
    }
    if if_none_match(req.headers(), &etag) {
        reply.status = StatusCode::NOT_MODIFIED;
        reply.headers.remove(header::CONTENT_TYPE);
        reply.body = Bytes::new();
    }
    reply
}

/// `W/"<first 32 hex chars of sha256(body)>"`.
pub(super) fn weak_etag(body: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("W/\"{hex}\"")
}

fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let ours = opaque(etag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || opaque(tag) == ours)
}

/// scheme://host plus the relative root, as Rails derives it from the request:
/// host from `X-Forwarded-Host` (its last entry), else `Host`; scheme from
/// `X-Forwarded-Proto` (its first entry, http or https), else the external URL's.
fn request_base<B>(sim: &SimulatedGitLab, req: &Request<B>) -> String {
    let headers = req.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let scheme = text("x-forwarded-proto")
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == "http" || v == "https")
        .unwrap_or_else(|| sim.scheme.clone());
    let forwarded_host = text("x-forwarded-host")
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let host = forwarded_host
        .or_else(|| text("host"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or(&sim.authority);
    format!("{scheme}://{host}{}", sim.root)
}

fn session_cookie(sim: &SimulatedGitLab) -> String {
    let id: [u8; 16] = random_bytes();
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let path = if sim.root.is_empty() { "/" } else { &sim.root };
    let secure = if sim.scheme == "https" { "; secure" } else { "" };
    format!("_gitlab_session={id}; path={path}{secure}; HttpOnly")
}

fn error_page(sim: &SimulatedGitLab, code: u16) -> Reply {
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| !s.is_informational())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    if status.is_redirection() {
        let location = format!("{}/users/sign_in", sim.issuer);
        let body = format!("<html><body>You are being <a href=\"{location}\">redirected</a>.</body></html>");
        return Reply::new(status, HTML, body)
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::LOCATION, &location);
    }
    let body = format!(
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>{reason} ({code})</title></head>\n\
         <body><h1>{code}</h1><p>{reason}</p><p>GitLab</p></body>\n</html>\n"
    );
    Reply::new(status, HTML, body).header(header::CACHE_CONTROL, "no-cache")
}

fn not_found() -> Reply {
    Reply::new(
        StatusCode::NOT_FOUND,
        HTML,
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>Not Found (404)</title></head>\n\
         <body><h1>404</h1><h3>Page Not Found</h3>\
         <p>Make sure the address is correct and the page hasn't moved.</p></body>\n</html>\n",
    )
    .header(header::CACHE_CONTROL, "no-cache")
}

fn sign_in_page(sim: &SimulatedGitLab) -> Reply {
    let root = &sim.root;
    let body = format!(
        "<!DOCTYPE html>\n<html class=\"devise-layout-html\" lang=\"en\">\n<head>\
         <meta charset=\"utf-8\"><title>Sign in \u{b7} GitLab</title></head>\n<body>\
         <form class=\"new_user gl-show-field-errors\" id=\"new_user\" action=\"{root}/users/sign_in\" \
         accept-charset=\"UTF-8\" method=\"post\">\
         <input type=\"hidden\" name=\"authenticity_token\" value=\"simulated\" autocomplete=\"off\" />\
         <label for=\"user_login\">Username or email</label>\
         <input class=\"form-control\" type=\"text\" name=\"user[login]\" id=\"user_login\" />\
         <label for=\"user_password\">Password</label>\
         <input class=\"form-control\" type=\"password\" name=\"user[password]\" id=\"user_password\" />\
         <button type=\"submit\">Sign in</button></form>\n</body>\n</html>\n"
    );
    Reply::new(StatusCode::OK, HTML, body)
        .header(header::CACHE_CONTROL, UNCACHEABLE)
        .header(header::SET_COOKIE, &session_cookie(sim))
}

fn home_page(sim: &SimulatedGitLab) -> Reply {
    let body = format!(
        "<!DOCTYPE html>\n<html>\n<head><meta charset=\"utf-8\"><title>GitLab</title></head>\n\
         <body><h1>GitLab</h1><p>Simulated GitLab {} at {}</p></body>\n</html>\n",
        sim.profile, sim.issuer
    );
    Reply::new(StatusCode::OK, HTML, body).header(header::CACHE_CONTROL, UNCACHEABLE)
}

/// Adds the headers every GitLab response carries and drops the body where
/// HTTP says there is none (HEAD keeps the GET's `Content-Length`).
fn finish(reply: Reply, method: &Method, started: Instant) -> Response<ProxyBody> {
    let Reply {
        status,
        mut headers,
        body,
    } = reply;
    let request_id = request_id();
    let common = [
        ("x-request-id", request_id.clone()),
        ("x-runtime", format!("{:.6}", started.elapsed().as_secs_f64())),
        (
            "x-gitlab-meta",
            format!(r#"{{"correlation_id":"{request_id}","version":"1"}}"#),
        ),
        ("x-content-type-options", "nosniff".to_owned()),
        ("x-frame-options", "SAMEORIGIN".to_owned()),
    ];
    for (name, value) in common {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let bodiless = status == StatusCode::NOT_MODIFIED || status == StatusCode::NO_CONTENT;
    let body = if bodiless {
        empty()
    } else if *method == Method::HEAD {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        empty()
    } else {
        full(body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A ULID-shaped correlation id (26 Crockford base32 characters).
fn request_id() -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    // 256 is a multiple of 32: taking each byte modulo 32 keeps the draw uniform.
    let bytes: [u8; 26] = random_bytes();
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}
