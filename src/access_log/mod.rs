//! One access-log line per request, written when the response body has been
//! sent (or abandoned), so bytes and duration are the real ones.
//!
//! Only method, path (never the query string), status, bytes, duration, client
//! address and protocol are logged: no header, so no `Authorization`, `Cookie`,
//! `PRIVATE-TOKEN` or `JOB-TOKEN` can reach the log.
//!
//! The line is made here (`line`), not by `tracing`'s formatter (per request
//! that cost more than the cached answer itself), and goes to the log's
//! buffer (`log_writer`). `RUST_LOG`'s filter on the `access` target still decides.

mod line;

use std::cell::Cell;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};

use crate::body::ProxyBody;
use crate::config::LogFormat;
use crate::error::BoxError;
use crate::idle::InFlight;
use crate::log_writer;
use crate::metrics::Metrics;

pub(crate) use line::Line;

/// The access lines' format (`--log-format`) and whether `RUST_LOG` lets them
/// through: decided once, when logging starts. Until then (tests that log
/// nothing): text, and the filter is asked per line.
static SETTINGS: std::sync::OnceLock<(LogFormat, bool)> = std::sync::OnceLock::new();

/// Call once the log filter is installed: no span ever enters the decision,
/// so the filter's answer for the access target holds for the whole run.
pub(crate) fn configure(format: LogFormat) {
    let _ = SETTINGS.set((format, enabled()));
}

fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

thread_local! {
    /// Set on a serving thread whose remaining requests the shutdown is about
    /// to drop (the grace period over): they are logged `shutdown`, not as
    /// the client's doing.
    static CUT: Cell<bool> = const { Cell::new(false) };
}

/// What this thread drops from now on, the shutdown cut.
pub(crate) fn cut_by_shutdown() {
    CUT.with(|cut| cut.set(true));
}

fn was_cut() -> bool {
    CUT.with(Cell::get)
}

/// What is known about a request when it arrives.
pub(crate) struct RequestRecord {
    pub method: Method,
    /// Path only is ever shown: the query string may carry `private_token=`.
    target: Option<http::uri::PathAndQuery>,
    pub version: Version,
    pub client: IpAddr,
    /// Which listener answered: `main` or `oidc`.
    pub listener: &'static str,
    pub start: Instant,
}

impl RequestRecord {
    pub(crate) fn new(
        method: &Method,
        uri: &http::Uri,
        version: Version,
        client: IpAddr,
        listener: &'static str,
    ) -> Self {
        RequestRecord {
            method: method.clone(),
            // A reference count, not a copy.
            target: uri.path_and_query().cloned(),
            version,
            client,
            listener,
            start: Instant::now(),
        }
    }
}

/// Wraps a response body; logs and records metrics once, when it ends or is dropped.
/// Small (hyper moves a response several times): what is logged is boxed,
/// once per request, when it arrives (`PendingLog`).
pub(crate) struct LoggedBody {
    inner: ProxyBody,
    log: Box<Log>,
}

/// A request's record and what its answer did, for its line and metrics.
struct Log {
    record: RequestRecord,
    status: u16,
    bytes: u64,
    outcome: &'static str,
    metrics: Arc<Metrics>,
    /// The connection's count of requests in flight, ended with this line's
    /// clock read (a read per request fewer).
    in_flight: Option<InFlight>,
}

impl Log {
    /// The line and the metrics, then the end of the request on its connection.
    fn emit(&mut self, bytes: u64, outcome: &'static str) {
        let end = self.record.emit(self.status, bytes, outcome, &self.metrics);
        if let Some(in_flight) = self.in_flight.take() {
            in_flight.end_at(end);
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.log.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => self.log.outcome = "upstream_body_error",
            Poll::Ready(None) => self.log.outcome = "complete",
            Poll::Pending => {}
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // hyper drops a body it knows is empty (HEAD, 204, 304) without polling it.
        let log = &mut *self.log;
        if log.outcome == "aborted" && self.inner.is_end_stream() {
            log.outcome = "complete";
        } else if log.outcome == "aborted" && was_cut() {
            log.outcome = "shutdown";
        }
        log.emit(log.bytes, log.outcome);
    }
}

impl RequestRecord {
    /// The request's path, without its query string.
    pub(crate) fn path(&self) -> &str {
        self.target.as_ref().map_or("/", |t| t.path())
    }

    /// The access line and the request metrics: once per request, from here
    /// only. Returns the request's end, as read for its duration.
    fn emit(&self, status: u16, bytes: u64, outcome: &'static str, metrics: &Metrics) -> Instant {
        let end = Instant::now();
        let elapsed = end.saturating_duration_since(self.start);
        metrics.request_counters.get(&self.method, status, self.listener).inc();
        metrics.request_duration.observe(elapsed.as_secs_f64());
        metrics.response_bytes.inc_by(bytes);
        let (format, on) = SETTINGS.get().copied().unwrap_or_else(|| (LogFormat::Text, enabled()));
        if !on {
            return end;
        }
        let line = Line {
            client: self.client,
            method: &self.method,
            path: self.path(),
            version: self.version,
            status,
            bytes,
            listener: self.listener,
            duration_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            outcome,
        };
        log_writer::stderr().append(|buf| line.write(format, std::time::SystemTime::now(), buf));
        end
    }
}

/// Holds a request's record until a response exists. If the client goes away
/// first (hyper drops the handler), the request is still logged: status 499
/// (nginx's "client closed request"), outcome `client_gone`.
pub(crate) struct PendingLog {
    log: Option<Box<Log>>,
}

impl PendingLog {
    pub(crate) fn new(record: RequestRecord, metrics: Arc<Metrics>, in_flight: InFlight) -> Self {
        let log = Log {
            record,
            // Until a response exists: what its drop logs (below), as nginx
            // logs a closed request.
            status: 499,
            bytes: 0,
            outcome: "client_gone",
            metrics,
            in_flight: Some(in_flight),
        };
        PendingLog {
            log: Some(Box::new(log)),
        }
    }

    pub(crate) fn record(&self) -> &RequestRecord {
        &self.log.as_ref().expect("taken only by into_body").record
    }

    /// The response is ready: its body carries the record from here on.
    pub(crate) fn into_body(mut self, inner: ProxyBody, status: StatusCode) -> LoggedBody {
        let mut log = self.log.take().expect("taken once");
        log.status = status.as_u16();
        log.outcome = "aborted";
        LoggedBody { inner, log }
    }
}

impl Drop for PendingLog {
    fn drop(&mut self) {
        if let Some(mut log) = self.log.take() {
            // No answer went out.
            let outcome = if was_cut() { "shutdown" } else { log.outcome };
            log.emit(0, outcome);
        }
    }
}
