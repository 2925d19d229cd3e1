//! What the proxy runs with, as values: the core types (`Proto`, `Issuer`, the
//! upstream target, durations) and their parsers, and the [`Config`] that
//! [`crate::app`] starts from.
//!
//! No argv is parsed here: `cli.rs` (the binary's front end) parses flags and
//! `GITLAB_OIDC_PROXY_*` variables into a `Config` with these parsers, and the
//! demo builds one directly. (`Proto` and `LogFormat` derive clap's `ValueEnum`
//! only to list their values in `--help`.)

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// Where every issuer's discovery document lives, below the issuer URL (OpenID
/// Connect Discovery 1.0 section 4).
pub(crate) const DISCOVERY_SUFFIX: &str = "/.well-known/openid-configuration";

/// A value that cannot be used, said in one line that names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("empty duration")]
    EmptyDuration,
    #[error("'{0}' is not a number of seconds")]
    NotSeconds(String),
    #[error("'{input}' is not a duration ({reason}); use e.g. 30, 500ms, 30s, 5m, 1h")]
    NotDuration { input: String, reason: String },
    #[error("'{0}' is longer than 30 years")]
    TooLong(String),
    #[error("must be above zero")]
    NotPositive,
    #[error("'{0}' is not a CIDR or IP address")]
    NotCidr(String),
    #[error("'{0}' is not an absolute path like /-/jwks")]
    NotAbsolutePath(String),
    #[error("'{0}' has an empty, '.' or '..' segment; name the path as clients will ask for it")]
    PathSegment(String),
    #[error("'{0}': a unix socket path must be absolute, e.g. unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket")]
    RelativeSocket(String),
    #[error("'{input}' is not a URL ({reason})")]
    NotUrl { input: String, reason: String },
    #[error("'{0}' has no host; use http://host:port, https://host:port or unix:/path")]
    UpstreamWithoutHost(String),
    #[error("the upstream URL must not carry credentials")]
    UpstreamCredentials,
    #[error("'{0}': the upstream URL takes no path or query; requests keep their own path")]
    UpstreamPath(String),
    #[error("'{0}': the port is not a number from 0 to 65535")]
    BadPort(String),
    #[error("'{0}': scheme must be http, https or unix")]
    UpstreamScheme(String),
    #[error("'{0}': an issuer is an http or https URL")]
    IssuerScheme(String),
    #[error("'{0}' has no host")]
    IssuerWithoutHost(String),
    #[error("'{0}': an issuer carries no credentials")]
    IssuerCredentials(String),
    #[error("'{0}': an issuer has no query or fragment")]
    IssuerQuery(String),
    #[error("'{0}' is not HOST=UPSTREAM, e.g. registry.example.com=http://127.0.0.1:5000")]
    NotRoute(String),
    #[error("'{0}' is not a host name (letters, digits, '-' and '.', no port; '*.' first for every subdomain)")]
    RouteHost(String),
    #[error("route {host}: {source}")]
    RouteUpstream { host: String, source: Box<ValueError> },
    #[error("'{input}' is not a size ({reason}); use e.g. 0, 8MiB, 256MiB, 1GB")]
    NotByteSize { input: String, reason: String },
}

/// Settings that are each valid alone but not together: exit 2 at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("issuers {first} and {second} share the path '{path}'; the proxy tells issuers apart by path only")]
    IssuersSharePath {
        first: String,
        second: String,
        path: String,
    },
    #[error("--jwks-path {0} is a discovery path")]
    JwksPathIsDiscovery(String),
    #[error("--redirect-http with --forwarded-proto https: the plain listener would be https already")]
    RedirectBehindHttps,
    #[error("--proxy-protocol needs --trusted-proxies naming the load balancers allowed to send it")]
    ProxyProtocolWithoutTrust,
    #[error("--upstream {upstream} is this proxy's own listener {listener}: it would forward every request to itself")]
    UpstreamIsSelf { upstream: String, listener: SocketAddr },
    #[error("--route {0} is named twice")]
    RouteTwice(String),
    #[error("--route {0} is GitLab's own host (--external-url); GitLab's requests go to --upstream")]
    RouteIsGitlab(String),
    #[error("the demo listens on loopback addresses only, not {0}: its signing keys are public")]
    DemoNotLoopback(SocketAddr),
    #[error("--gitlab-busy {busy} leaves none of --gitlab-workers {workers} for CI: give fewer busy workers")]
    DemoNoFreeWorker { busy: u32, workers: u32 },
}

/// Where the copy goes (`--to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportTarget {
    Dir(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl ExportTarget {
    /// `--to`: `s3://BUCKET[/PREFIX]`, or a directory path.
    pub fn parse(s: &str) -> Result<ExportTarget, String> {
        if s.is_empty() {
            return Err("empty".into());
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{s}: no bucket name"));
            }
            return Ok(ExportTarget::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if s.contains("://") {
            return Err(format!("{s}: a directory or s3://BUCKET/PREFIX"));
        }
        Ok(ExportTarget::Dir(PathBuf::from(s)))
    }
}

/// What to export, and as whom.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub target: ExportTarget,
    /// The issuer the copy is published under (`--issuer`).
    pub issuer: Issuer,
}

/// Everything `serve` runs with. [`Config::new`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub upstream: UpstreamTarget,
    /// Extra PEM CA bundle trusted for an https upstream.
    pub upstream_ca: Option<PathBuf>,
    pub listen: SocketAddr,
    /// `--oidc-listen`: a listener that serves the OIDC documents and nothing else.
    pub oidc_listen: Option<SocketAddr>,
    pub admin_listen: SocketAddr,
    /// Who may `POST /refresh` on the admin listener.
    pub admin_refresh: AdminRefresh,
    /// Peers whose X-Forwarded-For and X-Forwarded-Proto are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// X-Forwarded-Proto for requests on the plain listener.
    pub forwarded_proto: Proto,
    pub header_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest silence between two reads of a client's request body (then 408).
    pub client_body_timeout: Duration,
    pub upgrade_idle_timeout: Duration,
    /// Connections open to GitLab at once, idle pooled ones included.
    pub max_upstream_connections: u32,
    /// `--threads`: serving threads; 0: one per core.
    pub threads: usize,
    pub shutdown_grace: Duration,
    pub compression: bool,
    pub proxy_protocol: bool,
    pub tls: TlsConfig,
    pub oidc: OidcSettings,
    /// `--export-to` and `--export-issuer`: a copy of the documents kept in sync.
    pub export: Option<ExportSettings>,
    /// What omnibus nginx also did: other services, KAS, error pages, ACME files.
    pub services: ServicesConfig,
    /// `--assets-cache-size` and `--assets-cache-max-entry`.
    pub assets_cache: AssetsCacheSettings,
}

/// The rest of what omnibus nginx fronted besides GitLab itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicesConfig {
    /// `--route`: requests for these hosts go to their own upstream.
    pub routes: Vec<Route>,
    /// `--kas-upstream`: the agent's websocket path `/-/kubernetes-agent/`.
    pub kas: Option<UpstreamTarget>,
    /// `--kas-k8s-proxy-upstream`: `/-/kubernetes-agent/k8s-proxy/`.
    pub kas_k8s_proxy: Option<UpstreamTarget>,
    /// `--error-pages`: GitLab's 502.html and 503.html.
    pub error_pages: Option<PathBuf>,
    /// `--acme-webroot`: certbot's `--webroot` directory.
    pub acme_webroot: Option<PathBuf>,
}

/// `--route HOST=UPSTREAM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub host: HostPattern,
    pub upstream: UpstreamTarget,
}

/// A route's host: one name, or (`*.pages.example.com`) every name below one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.pages.example.com`.
    Below(String),
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(host) => f.write_str(host),
            HostPattern::Below(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// `HOST=UPSTREAM`; the host is kept lowercase, as requests' hosts are compared.
pub fn parse_route(s: &str) -> Result<Route, ValueError> {
    let (host, upstream) = s.split_once('=').ok_or_else(|| ValueError::NotRoute(s.to_owned()))?;
    let host = host.trim().to_ascii_lowercase();
    let (below, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host.as_str()),
    };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        return Err(ValueError::RouteHost(host));
    }
    let upstream = parse_upstream(upstream.trim()).map_err(|e| ValueError::RouteUpstream {
        host: host.clone(),
        source: Box::new(e),
    })?;
    let host = if below {
        HostPattern::Below(format!(".{name}"))
    } else {
        HostPattern::Exact(name.to_owned())
    };
    Ok(Route { host, upstream })
}

/// The in-memory cache of GitLab's `/assets/` responses (omnibus nginx's
/// `proxy_cache gitlab`), in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssetsCacheSettings {
    /// Bytes held at most, bodies and headers; 0 turns the cache off.
    pub size: u64,
    /// Larger responses pass through uncached.
    pub max_entry: u64,
}

/// `--admin-refresh`: which peers the admin listener's `POST /refresh` answers.
/// Probes and scrapers reach the admin port from outside a pod; a refresh
/// makes the proxy call GitLab, so by default only the host itself may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdminRefresh {
    Loopback,
    Any,
}

impl AdminRefresh {
    /// Whether a refresh from `peer` is answered.
    pub(crate) fn allows(self, peer: IpAddr) -> bool {
        match self {
            AdminRefresh::Any => true,
            AdminRefresh::Loopback => peer.to_canonical().is_loopback(),
        }
    }
}

/// TLS termination (`--tls-*`, `--redirect-http`, `--hsts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub listen: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `--tls-cert-dir`: `<host>.crt`/`<host>.key` pairs picked by SNI.
    pub cert_dir: Option<PathBuf>,
    /// `--oidc-tls-cert`/`--oidc-tls-key`: TLS on `--oidc-listen`, with the same
    /// checks and reloads as the main pair.
    pub oidc_cert: Option<PathBuf>,
    pub oidc_key: Option<PathBuf>,
    pub strict_chain: bool,
    /// 0 = no polling; SIGHUP still reloads.
    pub watch_interval: Duration,
    pub handshake_timeout: Duration,
    pub redirect_http: bool,
    /// Strict-Transport-Security max-age in seconds.
    pub hsts: Option<u64>,
    /// `--acme-*`: certificates obtained and renewed over ACME.
    pub acme: Option<AcmeSettings>,
}

/// `--acme-domain` and the options that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The names of the one certificate ordered (its SANs), lower case.
    pub domains: Vec<String>,
    pub directory: String,
    /// `mailto:` URI, if any.
    pub contact: Option<String>,
    /// Account key and certificates.
    pub cache: PathBuf,
    /// Extra roots to trust for the ACME server's own TLS.
    pub ca: Option<PathBuf>,
    pub challenge: AcmeChallenge,
}

/// Which challenge the proxy answers (RFC 8555 §8.3, RFC 8737).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// On the TLS listener (port 443 for a public CA).
    TlsAlpn01,
    /// On the plain listener (port 80 for a public CA).
    Http01,
}

/// The OIDC documents the proxy answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// Where the rewritten `jwks_uri` points, under the issuer.
    pub jwks_path: String,
    /// GitLab's external URL, when configured: where to fetch discovery, as whom.
    pub external_url: Option<Issuer>,
    /// More issuers to publish the document for (`--issuer`).
    pub extra_issuers: Vec<Issuer>,
    pub max_age: Duration,
    pub refresh: Duration,
    pub upstream_timeout: Duration,
    pub stale_if_error: Duration,
}

impl Config {
    /// The defaults `--help` documents, in front of `upstream`.
    pub fn new(upstream: UpstreamTarget) -> Config {
        let secs = Duration::from_secs;
        Config {
            upstream,
            upstream_ca: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            oidc_listen: None,
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_refresh: AdminRefresh::Loopback,
            trusted_proxies: Vec::new(),
            forwarded_proto: Proto::Http,
            header_timeout: secs(30),
            connect_timeout: secs(10),
            idle_timeout: secs(3600),
            client_body_timeout: secs(60),
            upgrade_idle_timeout: secs(3600),
            max_upstream_connections: 1024,
            threads: 0,
            shutdown_grace: secs(30),
            compression: true,
            proxy_protocol: false,
            tls: TlsConfig {
                listen: None,
                cert: None,
                key: None,
                cert_dir: None,
                oidc_cert: None,
                oidc_key: None,
                strict_chain: false,
                watch_interval: secs(5),
                handshake_timeout: secs(10),
                redirect_http: false,
                hsts: None,
                acme: None,
            },
            oidc: OidcSettings {
                jwks_path: "/-/jwks".to_owned(),
                external_url: None,
                extra_issuers: Vec::new(),
                max_age: secs(3600),
                refresh: secs(60),
                upstream_timeout: secs(3),
                stale_if_error: secs(24 * 3600),
            },
            export: None,
            services: ServicesConfig::default(),
            assets_cache: AssetsCacheSettings {
                size: 256 * 1024 * 1024,
                max_entry: 8 * 1024 * 1024,
            },
        }
    }

    /// The checks that need more than one setting.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        self.oidc.check()?;
        if self.tls.redirect_http && self.forwarded_proto == Proto::Https {
            return Err(ConfigError::RedirectBehindHttps);
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(ConfigError::ProxyProtocolWithoutTrust);
        }
        self.check_routes()
    }

    /// One upstream per host, and never GitLab's own: its requests (and the
    /// OIDC answers) would silently go elsewhere.
    fn check_routes(&self) -> Result<(), ConfigError> {
        let gitlab = self.oidc.external_url.as_ref().and_then(|u| {
            let authority = u.host.parse::<http::uri::Authority>().ok()?;
            Some(authority.host().to_ascii_lowercase())
        });
        let mut seen = std::collections::HashSet::new();
        for route in &self.services.routes {
            if !seen.insert(&route.host) {
                return Err(ConfigError::RouteTwice(route.host.to_string()));
            }
            if let (HostPattern::Exact(host), Some(gitlab)) = (&route.host, &gitlab)
                && host == gitlab
            {
                return Err(ConfigError::RouteIsGitlab(host.clone()));
            }
        }
        Ok(())
    }
}

impl OidcSettings {
    /// Issuers are told apart by path alone (never by `Host`): two on one path
    /// could not both be served, so that is refused at start.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&Issuer> = Vec::new();
        for issuer in self.external_url.iter().chain(&self.extra_issuers) {
            if let Some(other) = seen.iter().find(|o| o.path == issuer.path && o.url != issuer.url) {
                return Err(ConfigError::IssuersSharePath {
                    first: other.url.clone(),
                    second: issuer.url.clone(),
                    path: issuer.path.clone(),
                });
            }
            seen.push(issuer);
        }
        if self.jwks_path.ends_with(DISCOVERY_SUFFIX) {
            return Err(ConfigError::JwksPathIsDiscovery(self.jwks_path.clone()));
        }
        Ok(())
    }

    /// Hosts of the https issuers: the served certificate must be valid for each.
    pub(crate) fn https_hosts(&self) -> Vec<String> {
        self.external_url
            .iter()
            .chain(&self.extra_issuers)
            .filter(|i| i.https)
            .filter_map(|i| i.host.parse::<http::uri::Authority>().ok())
            .map(|a| a.host().trim_start_matches('[').trim_end_matches(']').to_owned())
            .collect()
    }
}

/// Where requests go. Parsed once; the passthrough builds request URIs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Http { authority: http::uri::Authority },
    Https { authority: http::uri::Authority },
    Unix { path: PathBuf },
}

impl UpstreamTarget {
    /// The `Host` the proxy's own requests (the OIDC fetches) carry.
    pub(crate) fn host(&self) -> String {
        match self {
            UpstreamTarget::Http { authority } | UpstreamTarget::Https { authority } => authority.to_string(),
            UpstreamTarget::Unix { .. } => "localhost".to_owned(),
        }
    }
}

impl std::fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamTarget::Http { authority } => write!(f, "http://{authority}"),
            UpstreamTarget::Https { authority } => write!(f, "https://{authority}"),
            UpstreamTarget::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An issuer URL as published: http(s), a host, an optional path (the relative
/// URL root), nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    /// As published: no trailing slash, e.g. `https://example.com/gitlab`.
    pub url: String,
    /// `scheme://authority`.
    pub origin: String,
    /// The relative URL root: `""` or e.g. `/gitlab`.
    pub path: String,
    pub host: String,
    pub https: bool,
}

impl Issuer {
    pub fn parse(s: &str) -> Result<Issuer, ValueError> {
        let trimmed = s.trim().trim_end_matches('/');
        let uri: http::Uri = trimmed.parse().map_err(|e: http::uri::InvalidUri| ValueError::NotUrl {
            input: s.to_owned(),
            reason: e.to_string(),
        })?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(ValueError::IssuerScheme(s.to_owned())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ValueError::IssuerWithoutHost(s.to_owned()))?;
        if authority.as_str().contains('@') {
            return Err(ValueError::IssuerCredentials(s.to_owned()));
        }
        if uri.query().is_some() || trimmed.contains('#') {
            return Err(ValueError::IssuerQuery(s.to_owned()));
        }
        let origin = format!("{}://{}", uri.scheme_str().unwrap_or("https"), authority);
        let path = uri.path().trim_end_matches('/').to_owned();
        Ok(Issuer {
            url: format!("{origin}{path}"),
            origin,
            path,
            host: authority.as_str().to_owned(),
            https,
        })
    }

    /// Where this issuer's discovery document lives on the proxy.
    pub(crate) fn discovery_path(&self) -> String {
        format!("{}{DISCOVERY_SUFFIX}", self.path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Http,
    Https,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Plain seconds (`30`, `0.5`) or a unit suffix (`500ms`, `30s`, `5m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, ValueError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ValueError::EmptyDuration);
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| ValueError::NotSeconds(s.to_owned()));
    }
    let d = humantime::parse_duration(s).map_err(|e| ValueError::NotDuration {
        input: s.to_owned(),
        reason: e.to_string(),
    })?;
    if d <= MAX_DURATION {
        Ok(d)
    } else {
        Err(ValueError::TooLong(s.to_owned()))
    }
}

/// A number of bytes: `0`, `8388608`, `8MiB`, `256 MiB`, `1GB` (SI units are powers
/// of 1000, `KiB`/`MiB`/`GiB` of 1024).
pub fn parse_byte_size(s: &str) -> Result<u64, ValueError> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|reason| ValueError::NotByteSize {
            input: s.to_owned(),
            reason,
        })
}

/// Far beyond any useful timeout, and far from overflowing a clock.
const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// `--trusted-proxies`: a comma-separated list, possibly empty.
pub fn parse_cidr_list(s: &str) -> Result<Vec<IpNet>, ValueError> {
    s.split(',').filter(|p| !p.trim().is_empty()).map(parse_cidr).collect()
}

/// A duration above zero (a zero refresh interval would spin).
pub fn parse_positive_duration(s: &str) -> Result<Duration, ValueError> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err(ValueError::NotPositive)
        } else {
            Ok(d)
        }
    })
}

/// An absolute path without query or fragment.
pub fn parse_jwks_path(s: &str) -> Result<String, ValueError> {
    let path = s.trim_end_matches('/');
    let valid = path.starts_with('/')
        && !path.contains(['?', '#'])
        && path.parse::<http::uri::PathAndQuery>().is_ok_and(|p| p.path() == path);
    if !valid {
        return Err(ValueError::NotAbsolutePath(s.to_owned()));
    }
    // Clients normalise these away; an export would write outside its target.
    if path.split('/').skip(1).any(|seg| matches!(seg, "" | "." | "..")) {
        return Err(ValueError::PathSegment(s.to_owned()));
    }
    Ok(path.to_owned())
}

/// `http://host[:port]`, `https://host[:port]` or `unix:/absolute/path`. No path,
/// query or credentials: the proxy forwards the client's path as it came.
pub fn parse_upstream(s: &str) -> Result<UpstreamTarget, ValueError> {
    if let Some(path) = s.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(ValueError::RelativeSocket(s.to_owned()));
        }
        return Ok(UpstreamTarget::Unix {
            path: PathBuf::from(path),
        });
    }
    let uri: http::Uri = s.parse().map_err(|e: http::uri::InvalidUri| ValueError::NotUrl {
        input: s.to_owned(),
        reason: e.to_string(),
    })?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ValueError::UpstreamWithoutHost(s.to_owned()))?;
    if authority.as_str().contains('@') {
        return Err(ValueError::UpstreamCredentials);
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
    {
        return Err(ValueError::UpstreamPath(s.to_owned()));
    }
    let after_host = authority.as_str().rsplit(']').next().unwrap_or_default();
    if after_host.contains(':') && authority.port_u16().is_none() {
        return Err(ValueError::BadPort(s.to_owned()));
    }
    match uri.scheme_str() {
        Some("http") => Ok(UpstreamTarget::Http { authority }),
        Some("https") => Ok(UpstreamTarget::Https { authority }),
        _ => Err(ValueError::UpstreamScheme(s.to_owned())),
    }
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.1`).
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, ValueError> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| ValueError::NotCidr(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_a_host_or_every_host_below_one() {
        let route = parse_route("Registry.Example.com=http://127.0.0.1:5000").unwrap();
        assert_eq!(route.host, HostPattern::Exact("registry.example.com".into()));
        assert_eq!(route.upstream, parse_upstream("http://127.0.0.1:5000").unwrap());
        let pages = parse_route("*.pages.example.com=unix:/var/opt/gitlab/pages.sock").unwrap();
        assert_eq!(pages.host, HostPattern::Below(".pages.example.com".into()));
        assert_eq!(pages.host.to_string(), "*.pages.example.com");
        for bad in [
            "registry.example.com",
            "=http://127.0.0.1:1",
            "a..b=http://127.0.0.1:1",
            "host:5050=http://127.0.0.1:1",
            "*=http://127.0.0.1:1",
            "a.*.b=http://127.0.0.1:1",
            "a_b=http://127.0.0.1:1",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
        let err = parse_route("r.example.com=ftp://x").unwrap_err().to_string();
        assert!(err.starts_with("route r.example.com: "), "{err}");
    }

    #[test]
    fn a_route_for_gitlabs_own_host_or_a_host_twice_is_refused() {
        let mut config = Config::new(parse_upstream("http://127.0.0.1:8181").unwrap());
        config.oidc.external_url = Some(Issuer::parse("https://GitLab.example.com").unwrap());
        config.services.routes = vec![parse_route("gitlab.example.com=http://127.0.0.1:5000").unwrap()];
        assert_eq!(
            config.check(),
            Err(ConfigError::RouteIsGitlab("gitlab.example.com".into()))
        );
        config.services.routes = vec![
            parse_route("r.example.com=http://127.0.0.1:5000").unwrap(),
            parse_route("R.example.com=http://127.0.0.1:5001").unwrap(),
        ];
        assert_eq!(config.check(), Err(ConfigError::RouteTwice("r.example.com".into())));
        config.services.routes.pop();
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn admin_refresh_loopback_means_the_host_itself() {
        let loopback = AdminRefresh::Loopback;
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(loopback.allows(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.1.2.3", "0.0.0.0", "::", "fe80::1", "::ffff:10.0.0.1", "192.168.0.1"] {
            assert!(!loopback.allows(ip.parse().unwrap()), "{ip}");
            assert!(AdminRefresh::Any.allows(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("1.2.3").is_err());
        assert!(parse_duration("99999999999").is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("0"), Ok(0));
        assert_eq!(parse_byte_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_byte_size("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        for bad in ["", "-1", "lots", "5 parsecs"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            parse_upstream("http://127.0.0.1:8181"),
            Ok(UpstreamTarget::Http {
                authority: "127.0.0.1:8181".parse().unwrap()
            })
        );
        assert_eq!(
            parse_upstream("https://gitlab.internal"),
            Ok(UpstreamTarget::Https {
                authority: "gitlab.internal".parse().unwrap()
            })
        );
        assert_eq!(
            parse_upstream("http://h:1/"),
            Ok(UpstreamTarget::Http {
                authority: "h:1".parse().unwrap()
            })
        );
        assert_eq!(
            parse_upstream("unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket"),
            Ok(UpstreamTarget::Unix {
                path: "/var/opt/gitlab/gitlab-workhorse/sockets/socket".into()
            })
        );
        assert_eq!(
            parse_upstream("unix:///run/s"),
            Ok(UpstreamTarget::Unix { path: "/run/s".into() })
        );
        assert!(parse_upstream("unix:relative/sock").is_err());
        assert!(parse_upstream("ftp://h:1").is_err());
        assert!(parse_upstream("h:1").is_err());
        assert!(
            parse_upstream("http://u:secret@h:1")
                .unwrap_err()
                .to_string()
                .contains("credentials")
        );
        assert!(parse_upstream("http://h:1/gitlab").is_err());
        assert!(parse_upstream("http://h:1/?a=b").is_err());
        assert!(parse_upstream("").is_err());
    }

    #[test]
    fn jwks_paths() {
        assert_eq!(parse_jwks_path("/-/jwks"), Ok("/-/jwks".into()));
        assert_eq!(parse_jwks_path("/oauth/ci/keys/"), Ok("/oauth/ci/keys".into()));
        for bad in ["jwks", "/a?b", "/a#b", "/", "", "/a b"] {
            assert!(parse_jwks_path(bad).is_err(), "{bad}");
        }
        for bad in ["/../../escaped", "/a/./b", "//a", "/a//b", "/a/.."] {
            assert_eq!(parse_jwks_path(bad), Err(ValueError::PathSegment(bad.into())), "{bad}");
        }
        assert!(parse_positive_duration("0").is_err());
        assert_eq!(parse_positive_duration("1"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn cidr_lists_and_limits() {
        assert_eq!(parse_cidr_list(""), Ok(vec![]));
        assert_eq!(
            parse_cidr_list("10.0.0.0/8, ::1"),
            Ok(vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
        );
        assert!(parse_cidr_list("10.0.0.0/8,bogus").is_err());
        assert!(parse_duration("10000000000000000000s").is_err());
        assert!(parse_upstream("http://gitlab:99999").is_err());
        for zero in ["0", "0s", "0ms"] {
            assert!(parse_positive_duration(zero).is_err(), "{zero}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.1.2.3/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr("192.0.2.1"), Ok("192.0.2.1/32".parse().unwrap()));
        assert_eq!(parse_cidr(" ::1 "), Ok("::1/128".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }

    #[test]
    fn issuers_parse() {
        let i = Issuer::parse("https://example.com/gitlab/").unwrap();
        assert_eq!(i.url, "https://example.com/gitlab");
        assert_eq!(i.origin, "https://example.com");
        assert_eq!(i.path, "/gitlab");
        assert_eq!(i.discovery_path(), "/gitlab/.well-known/openid-configuration");
        assert!(i.https);
        let j = Issuer::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (j.url.as_str(), j.path.as_str(), j.host.as_str()),
            ("http://127.0.0.1:8080", "", "127.0.0.1:8080")
        );
        assert_eq!(j.discovery_path(), "/.well-known/openid-configuration");
        for bad in [
            "ftp://x",
            "example.com",
            "https://u:p@x",
            "https://x/?a=1",
            "https://x/#f",
            "",
        ] {
            assert!(Issuer::parse(bad).is_err(), "{bad}");
        }
    }

    fn settings(external: Option<&str>, extra: &[&str], jwks_path: &str) -> OidcSettings {
        OidcSettings {
            jwks_path: jwks_path.into(),
            external_url: external.map(|u| Issuer::parse(u).unwrap()),
            extra_issuers: extra.iter().map(|u| Issuer::parse(u).unwrap()).collect(),
            max_age: Duration::from_secs(1),
            refresh: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(1),
            stale_if_error: Duration::from_secs(1),
        }
    }

    #[test]
    fn issuers_on_one_path_are_refused() {
        assert!(
            settings(Some("https://g.example/gitlab"), &["https://g.example"], "/-/jwks")
                .check()
                .is_ok()
        );
        assert!(
            settings(Some("https://g.example"), &["https://g.example/"], "/-/jwks")
                .check()
                .is_ok(),
            "same issuer"
        );
        let err = settings(
            Some("https://a.example/gitlab"),
            &["https://b.example/gitlab"],
            "/-/jwks",
        )
        .check();
        assert!(err.unwrap_err().to_string().contains("share the path"));
        assert!(
            settings(None, &["https://a.example", "https://b.example"], "/-/jwks")
                .check()
                .is_err()
        );
        assert!(
            settings(None, &[], "/.well-known/openid-configuration")
                .check()
                .is_err()
        );
    }

    #[test]
    fn targets() {
        assert!(matches!(ExportTarget::parse("/srv/www/oidc"), Ok(ExportTarget::Dir(_))));
        assert!(ExportTarget::parse("").is_err());
        assert_eq!(
            ExportTarget::parse("s3://bucket/pre/fix/"),
            Ok(ExportTarget::S3 {
                bucket: "bucket".into(),
                prefix: "pre/fix".into()
            })
        );
        assert_eq!(
            ExportTarget::parse("s3://bucket"),
            Ok(ExportTarget::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            })
        );
        assert!(ExportTarget::parse("s3:///x").is_err());
        assert!(ExportTarget::parse("gs://bucket").is_err());
    }
}
