//! Prometheus metrics. Labels are bounded: methods outside the standard set
//! count as `other`, statuses are three digits.

use std::sync::atomic::AtomicU64;

use http::Method;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub method: &'static str,
    pub status: u16,
    /// `main` (the public listeners) or `oidc` (`--oidc-listen`).
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub reason: &'static str,
}

/// Fetches: `discovery`, `oauth_keys` (/oauth/discovery/keys) or `jwks` (/-/jwks);
/// refreshes: `discovery` or `keys`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub document: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ServedLabels {
    pub document: &'static str,
    /// `fresh`, `stale` (GitLab failing, last good copy served) or `unavailable` (503).
    pub state: &'static str,
}

/// A served certificate: its listener (`main` for `--tls-listen`, or `oidc`),
/// and for a `--tls-cert-dir` pair the name its files carry (empty for the
/// others, which then have no `name` label, as before the directory existed).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(crate) struct CertLabel {
    pub listener: &'static str,
    pub name: String,
}

impl EncodeLabelSet for CertLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("listener", self.listener).encode(encoder.encode_label())?;
        if !self.name.is_empty() {
            ("name", self.name.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DocumentLabel {
    pub document: &'static str,
}

/// `--export-to`'s passes: `written`, `unchanged` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ExportLabels {
    pub to: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TargetLabel {
    pub to: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    /// `http_requests_total`, each series looked up once and then held.
    pub request_counters: RequestCounters,
    pub request_duration: Histogram,
    pub response_bytes: Counter,
    pub upstream_errors: Family<ErrorLabels, Counter>,
    pub upstream_connections: Gauge,
    pub upstream_refusals: Counter,
    pub open_connections: Gauge,
    pub parked_connections: Gauge,
    pub open_tunnels: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub tunnel_bytes: Counter<u64, AtomicU64>,
    pub oidc_served: Family<ServedLabels, Counter>,
    pub oidc_fetches: Family<OutcomeLabels, Counter>,
    pub oidc_refreshes: Family<OutcomeLabels, Counter>,
    pub oidc_age: Family<DocumentLabel, Gauge<f64, AtomicU64>>,
    pub oidc_keys: Gauge,
    /// Certificate reloads: `ok` or `refused` (the last good pair stays).
    pub tls_reloads: Family<OutcomeOnly, Counter>,
    /// Unix time of the earliest notAfter on each served chain.
    pub tls_expiry: Family<CertLabel, Gauge>,
    pub tls_handshake_failures: Family<ErrorLabels, Counter>,
    pub proxy_protocol_rejected: Family<ErrorLabels, Counter>,
    /// Series only where a copy is kept (`--export-to`): none to alert on otherwise.
    pub export_passes: Family<ExportLabels, Counter>,
    pub export_last_success: Family<TargetLabel, Gauge>,
    /// `/assets/` requests by what the cache did: `hit`, `miss` or `bypass`.
    pub assets_cache_requests: Family<OutcomeOnly, Counter>,
    pub assets_cache_bytes: Gauge,
    /// Entries the cache let go of itself: `size` or `expired`.
    pub assets_cache_evictions: Family<CauseLabel, Counter>,
    /// `--acme-domain`: orders, `ok` or `failed` (the held pair keeps serving).
    pub acme_orders: Family<OutcomeOnly, Counter>,
}

/// Methods with a label of their own, then `other` ([`method_index`]).
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "other",
];
const LISTENER_LABELS: [&str; 2] = ["main", "oidc"];
/// Statuses 100..=599 get a held counter; others (rare) are looked up each time.
const STATUSES: std::ops::RangeInclusive<u16> = 100..=599;

/// `http_requests_total`'s counters, each resolved from the family on first use
/// and then held: a request costs an index, not a hash and a lock. A series
/// still appears only once a request has been counted in it.
pub(crate) struct RequestCounters {
    family: Family<RequestLabels, Counter>,
    held: Box<[std::sync::OnceLock<Counter>]>,
}

impl RequestCounters {
    fn new(family: Family<RequestLabels, Counter>) -> Self {
        let slots = METHOD_LABELS.len() * LISTENER_LABELS.len() * STATUSES.len();
        RequestCounters {
            family,
            held: (0..slots).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    /// The counter of (method, status, listener); `listener` is `main` or `oidc`.
    pub(crate) fn get(&self, method: &Method, status: u16, listener: &'static str) -> Counter {
        let m = method_index(method);
        let labels = || RequestLabels {
            method: METHOD_LABELS[m],
            status,
            listener,
        };
        let l = LISTENER_LABELS.iter().position(|l| *l == listener);
        match (l, STATUSES.contains(&status)) {
            (Some(l), true) => {
                let s = usize::from(status - STATUSES.start());
                let slot = (m * LISTENER_LABELS.len() + l) * STATUSES.len() + s;
                self.held[slot]
                    .get_or_init(|| self.family.get_or_create(&labels()).clone())
                    .clone()
            }
            _ => self.family.get_or_create(&labels()).clone(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabel {
    pub cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeOnly {
    pub outcome: &'static str,
}

/// A metric's name (after the `gitlab_oidc_proxy_` prefix; the encoder adds `_total` to
/// counters) and its help text.
type Described = (&'static str, &'static str);

const REQUESTS: Described = ("http_requests", "Requests answered, by method and status");
const LOG_LINES_DROPPED: Described = (
    "log_lines_dropped",
    "Log lines (access lines included) dropped because stderr did not take them",
);
const REQUEST_DURATION: Described = (
    "http_request_duration_seconds",
    "Time from request to the end of the response body",
);
const RESPONSE_BYTES: Described = ("http_response_body_bytes", "Response body bytes sent to clients");
const UPSTREAM_ERRORS: Described = ("upstream_errors", "Requests that failed because of GitLab, by reason");
const UPSTREAM_CONNECTIONS: Described = (
    "upstream_connections",
    "Connections open to GitLab (busy or idle in the pool; the OIDC refresher's aside)",
);
const UPSTREAM_REFUSALS: Described = (
    "upstream_connection_refusals",
    "Requests answered 503 because --max-upstream-connections stayed reached",
);
const OPEN_CONNECTIONS: Described = ("open_connections", "Client connections open on the public listener");
const PARKED_CONNECTIONS: Described = (
    "parked_connections",
    "Open client connections idle and parked (held without hyper's buffers)",
);
const OPEN_TUNNELS: Described = ("open_upgraded_connections", "Upgraded connections (websockets) open");
const TUNNEL_BYTES: Described = (
    "upgraded_bytes",
    "Bytes relayed on upgraded connections, both directions",
);
const OIDC_SERVED: Described = (
    "oidc_responses",
    "OIDC documents answered from memory, by document and state",
);
const OIDC_FETCHES: Described = (
    "oidc_upstream_fetches",
    "Fetches of OIDC documents from GitLab, by document and outcome",
);
const OIDC_REFRESHES: Described = ("oidc_refreshes", "Refreshes of the held documents, by outcome");
const OIDC_AGE: Described = (
    "oidc_document_age_seconds",
    "Seconds since GitLab last confirmed the held document (-1: none held)",
);
const OIDC_KEYS: Described = ("oidc_keys", "Keys in the held key set");
const TLS_RELOADS: Described = (
    "tls_reloads",
    "Certificate reloads (SIGHUP or changed files), by outcome",
);
const TLS_EXPIRY: Described = (
    "tls_certificate_expiry_timestamp_seconds",
    "Unix time at which the first certificate of the served chain expires, by listener (and name, for a --tls-cert-dir pair)",
);
const ACME_ORDERS: Described = (
    "acme_orders",
    "ACME certificate orders (--acme-domain), by outcome (ok or failed)",
);
const TLS_HANDSHAKE_FAILURES: Described = (
    "tls_handshake_failures",
    "TLS handshakes that failed, by reason (timeout or error)",
);
const EXPORT_PASSES: Described = (
    "export_passes",
    "Passes over the exported copy (--export-to), by target and outcome (written, unchanged, failed)",
);
const EXPORT_LAST_SUCCESS: Described = (
    "export_last_success_timestamp_seconds",
    "Unix time of the last pass that left the copy in sync with the served documents (0: none yet)",
);
const ASSETS_CACHE_REQUESTS: Described = (
    "assets_cache_requests",
    "Requests for /assets/ by what the in-memory cache did: hit (answered from memory), miss (sent to GitLab), bypass (not for the cache: Authorization, Range, ...)",
);
const ASSETS_CACHE_BYTES: Described = (
    "assets_cache_bytes",
    "Bytes held by the /assets/ cache (bodies and headers)",
);
const ASSETS_CACHE_EVICTIONS: Described = (
    "assets_cache_evictions",
    "Entries the /assets/ cache dropped, by cause (size: room for newer ones; expired: past max-age)",
);
const PROXY_PROTOCOL_REJECTED: Described = (
    "proxy_protocol_rejected",
    "Connections closed for want of a valid PROXY header from a trusted peer, by reason",
);

/// Every `reason` an upstream error is counted under (error.rs's tests keep
/// this list and the labels in step).
pub(crate) const UPSTREAM_ERROR_REASONS: [&str; 7] = [
    "connect_failed",
    "connect_timeout",
    "response_timeout",
    "send_timeout",
    "upstream_failed",
    "upstream_framing",
    "upstream_busy",
];

const EXPORT_OUTCOMES: [&str; 3] = ["written", "unchanged", "failed"];

impl Metrics {
    pub(crate) fn new() -> Self {
        let metrics = Self::registered();
        metrics.zero_known_series();
        metrics
    }

    /// Series an alert counts the first increase of exist at 0 from the start:
    /// `increase()` cannot see a series' first sample as an increase.
    fn zero_known_series(&self) {
        for reason in UPSTREAM_ERROR_REASONS {
            let _ = self.upstream_errors.get_or_create(&ErrorLabels { reason });
        }
        for document in ["discovery", "keys"] {
            for state in ["fresh", "stale", "unavailable"] {
                let _ = self.oidc_served.get_or_create(&ServedLabels { document, state });
            }
            for outcome in ["published", "failed"] {
                let _ = self.oidc_refreshes.get_or_create(&OutcomeLabels { document, outcome });
            }
        }
        for outcome in ["ok", "refused"] {
            let _ = self.tls_reloads.get_or_create(&OutcomeOnly { outcome });
        }
    }

    /// A copy is kept at `to`: its series exist from the start, the last success at 0.
    pub(crate) fn zero_export_series(&self, to: &str) {
        for outcome in EXPORT_OUTCOMES {
            let _ = self.export_passes.get_or_create(&ExportLabels {
                to: to.to_owned(),
                outcome,
            });
        }
        let _ = self
            .export_last_success
            .get_or_create(&TargetLabel { to: to.to_owned() });
    }

    /// The `/assets/` cache is on: its series exist from the start.
    pub(crate) fn zero_assets_cache_series(&self) {
        for outcome in ["hit", "miss", "bypass"] {
            let _ = self.assets_cache_requests.get_or_create(&OutcomeOnly { outcome });
        }
        for cause in ["size", "expired"] {
            let _ = self.assets_cache_evictions.get_or_create(&CauseLabel { cause });
        }
    }

    /// One pass over the copy at `to`, at unix time `now`.
    pub(crate) fn count_export(&self, to: &str, outcome: &'static str, now: u64) {
        self.export_passes
            .get_or_create(&ExportLabels {
                to: to.to_owned(),
                outcome,
            })
            .inc();
        if outcome != "failed" {
            self.export_last_success
                .get_or_create(&TargetLabel { to: to.to_owned() })
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }

    fn registered() -> Self {
        let mut r = Registry::with_prefix("gitlab_oidc_proxy");
        let buckets = [0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];
        // Field order is registration order, which is the order /metrics lists them in.
        Metrics {
            request_counters: RequestCounters::new(register(&mut r, REQUESTS, Family::default())),
            request_duration: register(&mut r, REQUEST_DURATION, Histogram::new(buckets)),
            response_bytes: register(&mut r, RESPONSE_BYTES, Counter::default()),
            upstream_errors: register(&mut r, UPSTREAM_ERRORS, Family::default()),
            upstream_connections: register(&mut r, UPSTREAM_CONNECTIONS, Gauge::default()),
            upstream_refusals: register(&mut r, UPSTREAM_REFUSALS, Counter::default()),
            open_connections: register(&mut r, OPEN_CONNECTIONS, Gauge::default()),
            parked_connections: register(&mut r, PARKED_CONNECTIONS, Gauge::default()),
            open_tunnels: register(&mut r, OPEN_TUNNELS, Gauge::default()),
            tunnel_bytes: register(&mut r, TUNNEL_BYTES, Counter::default()),
            oidc_served: register(&mut r, OIDC_SERVED, Family::default()),
            oidc_fetches: register(&mut r, OIDC_FETCHES, Family::default()),
            oidc_refreshes: register(&mut r, OIDC_REFRESHES, Family::default()),
            oidc_age: register(&mut r, OIDC_AGE, Family::default()),
            oidc_keys: register(&mut r, OIDC_KEYS, Gauge::default()),
            tls_reloads: register(&mut r, TLS_RELOADS, Family::default()),
            tls_expiry: register(&mut r, TLS_EXPIRY, Family::default()),
            tls_handshake_failures: register(&mut r, TLS_HANDSHAKE_FAILURES, Family::default()),
            proxy_protocol_rejected: register(&mut r, PROXY_PROTOCOL_REJECTED, Family::default()),
            export_passes: register(&mut r, EXPORT_PASSES, Family::default()),
            export_last_success: register(&mut r, EXPORT_LAST_SUCCESS, Family::default()),
            assets_cache_requests: register(&mut r, ASSETS_CACHE_REQUESTS, Family::default()),
            assets_cache_bytes: register(&mut r, ASSETS_CACHE_BYTES, Gauge::default()),
            assets_cache_evictions: register(&mut r, ASSETS_CACHE_EVICTIONS, Family::default()),
            acme_orders: register(&mut r, ACME_ORDERS, Family::default()),
            registry: {
                // Shared with the log's writer, which counts into it.
                register(&mut r, LOG_LINES_DROPPED, crate::log_writer::dropped_lines());
                r
            },
        }
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers `metric` and returns the handle the proxy updates: clones of a metric share
/// its value, so the registry's copy sees every update.
fn register<M: Metric + Clone>(registry: &mut Registry, (name, help): Described, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The method's label's place in [`METHOD_LABELS`]: a fixed set, so a client
/// inventing methods cannot grow the series.
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters() {
        let m = Metrics::new();
        m.request_counters.get(&Method::GET, 502, "main").inc();
        m.upstream_errors
            .get_or_create(&ErrorLabels {
                reason: "connect_failed",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(r#"gitlab_oidc_proxy_http_requests_total{method="GET",status="502",listener="main"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gitlab_oidc_proxy_upstream_errors_total{reason="connect_failed"} 1"#),
            "{text}"
        );
        assert!(text.contains("# EOF"));
    }

    const EXPECTED_RENDERING: &str = r#"# HELP gitlab_oidc_proxy_http_requests Requests answered, by method and status.
# TYPE gitlab_oidc_proxy_http_requests counter
gitlab_oidc_proxy_http_requests_total{method="GET",status="200",listener="main"} 1
# HELP gitlab_oidc_proxy_http_request_duration_seconds Time from request to the end of the response body.
# TYPE gitlab_oidc_proxy_http_request_duration_seconds histogram
gitlab_oidc_proxy_http_request_duration_seconds_sum 0.0
gitlab_oidc_proxy_http_request_duration_seconds_count 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="0.005"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="0.025"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="0.1"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="0.5"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="1.0"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="5.0"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="30.0"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="60.0"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="300.0"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="3600.0"} 0
gitlab_oidc_proxy_http_request_duration_seconds_bucket{le="+Inf"} 0
# HELP gitlab_oidc_proxy_http_response_body_bytes Response body bytes sent to clients.
# TYPE gitlab_oidc_proxy_http_response_body_bytes counter
gitlab_oidc_proxy_http_response_body_bytes_total 0
# HELP gitlab_oidc_proxy_upstream_errors Requests that failed because of GitLab, by reason.
# TYPE gitlab_oidc_proxy_upstream_errors counter
gitlab_oidc_proxy_upstream_errors_total{reason="r"} 1
# HELP gitlab_oidc_proxy_upstream_connections Connections open to GitLab (busy or idle in the pool; the OIDC refresher's aside).
# TYPE gitlab_oidc_proxy_upstream_connections gauge
gitlab_oidc_proxy_upstream_connections 0
# HELP gitlab_oidc_proxy_upstream_connection_refusals Requests answered 503 because --max-upstream-connections stayed reached.
# TYPE gitlab_oidc_proxy_upstream_connection_refusals counter
gitlab_oidc_proxy_upstream_connection_refusals_total 0
# HELP gitlab_oidc_proxy_open_connections Client connections open on the public listener.
# TYPE gitlab_oidc_proxy_open_connections gauge
gitlab_oidc_proxy_open_connections 0
# HELP gitlab_oidc_proxy_parked_connections Open client connections idle and parked (held without hyper's buffers).
# TYPE gitlab_oidc_proxy_parked_connections gauge
gitlab_oidc_proxy_parked_connections 0
# HELP gitlab_oidc_proxy_open_upgraded_connections Upgraded connections (websockets) open.
# TYPE gitlab_oidc_proxy_open_upgraded_connections gauge
gitlab_oidc_proxy_open_upgraded_connections 0
# HELP gitlab_oidc_proxy_upgraded_bytes Bytes relayed on upgraded connections, both directions.
# TYPE gitlab_oidc_proxy_upgraded_bytes counter
gitlab_oidc_proxy_upgraded_bytes_total 0
# HELP gitlab_oidc_proxy_oidc_responses OIDC documents answered from memory, by document and state.
# TYPE gitlab_oidc_proxy_oidc_responses counter
gitlab_oidc_proxy_oidc_responses_total{document="d",state="s"} 1
# HELP gitlab_oidc_proxy_oidc_upstream_fetches Fetches of OIDC documents from GitLab, by document and outcome.
# TYPE gitlab_oidc_proxy_oidc_upstream_fetches counter
gitlab_oidc_proxy_oidc_upstream_fetches_total{document="d",outcome="o"} 1
# HELP gitlab_oidc_proxy_oidc_refreshes Refreshes of the held documents, by outcome.
# TYPE gitlab_oidc_proxy_oidc_refreshes counter
gitlab_oidc_proxy_oidc_refreshes_total{document="d",outcome="o"} 1
# HELP gitlab_oidc_proxy_oidc_document_age_seconds Seconds since GitLab last confirmed the held document (-1: none held).
# TYPE gitlab_oidc_proxy_oidc_document_age_seconds gauge
gitlab_oidc_proxy_oidc_document_age_seconds{document="d"} 1.5
# HELP gitlab_oidc_proxy_oidc_keys Keys in the held key set.
# TYPE gitlab_oidc_proxy_oidc_keys gauge
gitlab_oidc_proxy_oidc_keys 0
# HELP gitlab_oidc_proxy_tls_reloads Certificate reloads (SIGHUP or changed files), by outcome.
# TYPE gitlab_oidc_proxy_tls_reloads counter
gitlab_oidc_proxy_tls_reloads_total{outcome="o"} 1
# HELP gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds Unix time at which the first certificate of the served chain expires, by listener (and name, for a --tls-cert-dir pair).
# TYPE gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds gauge
gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds{listener="l"} 7
# HELP gitlab_oidc_proxy_tls_handshake_failures TLS handshakes that failed, by reason (timeout or error).
# TYPE gitlab_oidc_proxy_tls_handshake_failures counter
gitlab_oidc_proxy_tls_handshake_failures_total{reason="r"} 1
# HELP gitlab_oidc_proxy_proxy_protocol_rejected Connections closed for want of a valid PROXY header from a trusted peer, by reason.
# TYPE gitlab_oidc_proxy_proxy_protocol_rejected counter
gitlab_oidc_proxy_proxy_protocol_rejected_total{reason="r"} 1
# HELP gitlab_oidc_proxy_export_passes Passes over the exported copy (--export-to), by target and outcome (written, unchanged, failed).
# TYPE gitlab_oidc_proxy_export_passes counter
gitlab_oidc_proxy_export_passes_total{to="t",outcome="written"} 1
# HELP gitlab_oidc_proxy_export_last_success_timestamp_seconds Unix time of the last pass that left the copy in sync with the served documents (0: none yet).
# TYPE gitlab_oidc_proxy_export_last_success_timestamp_seconds gauge
gitlab_oidc_proxy_export_last_success_timestamp_seconds{to="t"} 9
# HELP gitlab_oidc_proxy_assets_cache_requests Requests for /assets/ by what the in-memory cache did: hit (answered from memory), miss (sent to GitLab), bypass (not for the cache: Authorization, Range, ...).
# TYPE gitlab_oidc_proxy_assets_cache_requests counter
gitlab_oidc_proxy_assets_cache_requests_total{outcome="hit"} 1
# HELP gitlab_oidc_proxy_assets_cache_bytes Bytes held by the /assets/ cache (bodies and headers).
# TYPE gitlab_oidc_proxy_assets_cache_bytes gauge
gitlab_oidc_proxy_assets_cache_bytes 0
# HELP gitlab_oidc_proxy_assets_cache_evictions Entries the /assets/ cache dropped, by cause (size: room for newer ones; expired: past max-age).
# TYPE gitlab_oidc_proxy_assets_cache_evictions counter
gitlab_oidc_proxy_assets_cache_evictions_total{cause="size"} 1
# HELP gitlab_oidc_proxy_log_lines_dropped Log lines (access lines included) dropped because stderr did not take them.
# TYPE gitlab_oidc_proxy_log_lines_dropped counter
gitlab_oidc_proxy_log_lines_dropped_total 0
# EOF"#;

    /// Every metric as a scraper sees it, each family with one series so its labels show.
    fn rendered_shape() -> Vec<String> {
        let m = Metrics::registered();
        let error = ErrorLabels { reason: "r" };
        let outcome = OutcomeLabels {
            document: "d",
            outcome: "o",
        };
        m.request_counters.get(&Method::GET, 200, "main").inc();
        m.upstream_errors.get_or_create(&error).inc();
        m.oidc_served
            .get_or_create(&ServedLabels {
                document: "d",
                state: "s",
            })
            .inc();
        m.oidc_fetches.get_or_create(&outcome).inc();
        m.oidc_refreshes.get_or_create(&outcome).inc();
        m.oidc_age.get_or_create(&DocumentLabel { document: "d" }).set(1.5);
        m.tls_reloads.get_or_create(&OutcomeOnly { outcome: "o" }).inc();
        m.tls_expiry
            .get_or_create(&CertLabel {
                listener: "l",
                name: String::new(),
            })
            .set(7);
        m.tls_handshake_failures.get_or_create(&error).inc();
        m.proxy_protocol_rejected.get_or_create(&error).inc();
        m.count_export("t", "written", 9);
        m.assets_cache_requests
            .get_or_create(&OutcomeOnly { outcome: "hit" })
            .inc();
        m.assets_cache_evictions
            .get_or_create(&CauseLabel { cause: "size" })
            .inc();
        m.encode().lines().map(str::to_owned).collect()
    }

    #[test]
    fn names_help_types_and_labels_are_stable() {
        // Dashboards and alerts depend on these: a change here must be deliberate.
        let shape = rendered_shape();
        let expected: Vec<&str> = EXPECTED_RENDERING.lines().collect();
        assert_eq!(shape, expected, "rendered:\n{}", shape.join("\n"));
    }

    #[test]
    fn series_alerts_count_start_at_zero() {
        let text = Metrics::new().encode();
        let zeroed = [
            r#"gitlab_oidc_proxy_upstream_errors_total{reason="upstream_busy"} 0"#,
            r#"gitlab_oidc_proxy_oidc_responses_total{document="keys",state="unavailable"} 0"#,
            r#"gitlab_oidc_proxy_oidc_responses_total{document="discovery",state="stale"} 0"#,
            r#"gitlab_oidc_proxy_oidc_refreshes_total{document="discovery",outcome="failed"} 0"#,
            r#"gitlab_oidc_proxy_tls_reloads_total{outcome="refused"} 0"#,
        ];
        for series in zeroed {
            assert!(text.lines().any(|l| l == series), "{series} missing:\n{text}");
        }
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("gitlab_oidc_proxy_upstream_errors_total{"), 7);
        assert_eq!(count("gitlab_oidc_proxy_oidc_responses_total{"), 6);
        assert_eq!(count("gitlab_oidc_proxy_oidc_refreshes_total{"), 4);
        // Requests are labelled by status: nothing to know in advance.
        assert_eq!(count("gitlab_oidc_proxy_http_requests_total{"), 0);
        // No copy kept, no export series: an alert on them cannot fire.
        assert_eq!(count("gitlab_oidc_proxy_export_"), 0);
        assert_eq!(count("gitlab_oidc_proxy_assets_cache_requests_total{"), 0);
        let m = Metrics::new();
        m.zero_assets_cache_series();
        let text = m.encode();
        for series in [
            r#"gitlab_oidc_proxy_assets_cache_requests_total{outcome="miss"} 0"#,
            r#"gitlab_oidc_proxy_assets_cache_evictions_total{cause="expired"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn a_kept_copy_has_its_series_from_the_start_and_a_failure_keeps_the_last_success() {
        let m = Metrics::new();
        m.zero_export_series("s3://b/p");
        let text = m.encode();
        for series in [
            r#"gitlab_oidc_proxy_export_passes_total{to="s3://b/p",outcome="failed"} 0"#,
            r#"gitlab_oidc_proxy_export_last_success_timestamp_seconds{to="s3://b/p"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing:\n{text}");
        }
        m.count_export("s3://b/p", "unchanged", 100);
        m.count_export("s3://b/p", "failed", 200);
        let text = m.encode();
        for series in [
            r#"gitlab_oidc_proxy_export_passes_total{to="s3://b/p",outcome="unchanged"} 1"#,
            r#"gitlab_oidc_proxy_export_passes_total{to="s3://b/p",outcome="failed"} 1"#,
            r#"gitlab_oidc_proxy_export_last_success_timestamp_seconds{to="s3://b/p"} 100"#,
        ] {
            assert!(text.lines().any(|l| l == series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn held_request_counters_are_the_family_series() {
        let m = Metrics::new();
        let series = |text: &str, line: &str| text.lines().find(|l| l.starts_with(line)).map(str::to_owned);
        assert_eq!(
            series(&m.encode(), "gitlab_oidc_proxy_http_requests_total{"),
            None,
            "none before a request"
        );
        let ext = Method::from_bytes(b"PROPFIND").unwrap();
        for (method, status, listener) in [
            (&Method::GET, 200, "main"),
            (&Method::GET, 200, "main"),
            (&Method::GET, 200, "oidc"),
            (&Method::HEAD, 599, "main"),
            (&ext, 100, "main"),
            // Outside the held range: looked up each time, counted all the same.
            (&Method::GET, 999, "main"),
            (&Method::GET, 999, "main"),
        ] {
            m.request_counters.get(method, status, listener).inc();
        }
        let text = m.encode();
        for (labels, value) in [
            (r#"method="GET",status="200",listener="main""#, 2),
            (r#"method="GET",status="200",listener="oidc""#, 1),
            (r#"method="HEAD",status="599",listener="main""#, 1),
            (r#"method="other",status="100",listener="main""#, 1),
            (r#"method="GET",status="999",listener="main""#, 2),
        ] {
            let line = format!("gitlab_oidc_proxy_http_requests_total{{{labels}}} {value}");
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(
            text.matches("gitlab_oidc_proxy_http_requests_total{").count(),
            5,
            "{text}"
        );
    }

    #[test]
    fn unknown_methods_share_a_label() {
        let method_label = |m: &Method| METHOD_LABELS[method_index(m)];
        assert_eq!(method_label(&Method::from_bytes(b"PROPFIND").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"X-RANDOM-1").unwrap()), "other");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for standard in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::CONNECT,
            Method::TRACE,
        ] {
            assert_eq!(method_label(&standard), standard.as_str());
        }
    }
}
