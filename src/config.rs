//! Command line and environment: the public interface of the binary.
//!
//! Every `serve` option can also come from `GITLAB_OIDC_PROXY_<NAME>`; clap gives
//! flags precedence over the environment. Values are validated here, at parse
//! time, so a bad one exits 2 with one line before anything starts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::oidc::discovery::Issuer;

#[derive(Debug, Parser)]
#[command(
    name = "gitlab-oidc-proxy",
    version,
    about = "Reverse proxy for self-managed GitLab that replaces the bundled nginx.",
    long_about = "Reverse proxy for self-managed GitLab that replaces the bundled nginx. \
        Every request streams through to GitLab (Workhorse) untouched: git over HTTP, LFS, \
        uploads, websockets, long polling.\n\n\
        Logging is filtered with RUST_LOG (default: info), e.g. RUST_LOG=info,access=warn."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy in front of GitLab.
    #[command(
        after_help = "DURATION values: plain seconds (30) or with a unit (500ms, 30s, 5m, 1h).\n\
        Logging: RUST_LOG filters (default info; the access log's target is `access`, e.g. RUST_LOG=info,access=warn).\n\
        Exit status: 0 after a graceful shutdown, 2 for a bad option, 1 when the proxy cannot start."
    )]
    Serve(Box<ServeArgs>),
    /// Simulated GitLab + the proxy + parallel STS-like verifications, before/after.
    Demo(crate::demo::DemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where GitLab (Workhorse) listens: http://host:port, https://host:port or
    /// unix:/path/to/socket (omnibus: unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket).
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub upstream: UpstreamTarget,

    /// Extra PEM CA bundle trusted for an https upstream, besides the system roots.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM_CA", value_name = "PEM")]
    pub upstream_ca: Option<PathBuf>,

    /// Public listener: plain HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Admin listener: GET /healthz, /readyz, /metrics. Never served on the public listener.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,

    /// Peers whose X-Forwarded-For and X-Forwarded-Proto are believed
    /// (comma-separated CIDRs or addresses; empty for none). Every other
    /// client-supplied forwarding header is always replaced.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TRUSTED_PROXIES", value_name = "CIDR[,CIDR...]", default_value = "", hide_default_value = true, value_parser = parse_cidr_list)]
    pub trusted_proxies: CidrList,

    /// X-Forwarded-Proto sent to GitLab for the plain listener, for TLS terminated in
    /// front of the proxy. With https, X-Forwarded-Ssl: on is sent too.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_FORWARDED_PROTO",
        value_name = "PROTO",
        default_value = "http"
    )]
    pub forwarded_proto: Proto,

    /// Log line format.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// How long a client may take to send request headers before it is disconnected;
    /// also how long an idle keep-alive connection is kept open.
    #[arg(long, env = "GITLAB_OIDC_PROXY_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// How long to wait for a connection to GitLab before answering 504.
    #[arg(long, env = "GITLAB_OIDC_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Longest silence within a request: from the client while it sends its body
    /// (then it is cut), from GitLab before its response headers once the request
    /// is sent (then 504) and within its response body (then the response is cut).
    /// Like nginx's proxy_read_timeout; there is no limit on a request's total time.
    #[arg(long, env = "GITLAB_OIDC_PROXY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Longest silence in both directions on an upgraded connection (websocket,
    /// web terminal) before it is closed.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPGRADE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = parse_positive_duration)]
    pub upgrade_idle_timeout: Duration,

    /// On SIGTERM/SIGINT: stop accepting, then give in-flight requests and upgraded
    /// connections this long to finish before exiting 0.
    #[arg(long, env = "GITLAB_OIDC_PROXY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Response compression like omnibus nginx: gzip (br or zstd when the client
    /// ranks them above gzip) for text, JSON, JavaScript, CSS, XML and SVG of at
    /// least 250 bytes, streamed.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_COMPRESSION",
        value_name = "MODE",
        default_value = "on"
    )]
    pub compression: Switch,

    /// Expect a PROXY protocol (v1 or v2) header on every connection to --listen and
    /// --tls-listen, and take the client address from it. Connections from peers outside
    /// --trusted-proxies, or without a valid header, are closed.
    #[arg(long, env = "GITLAB_OIDC_PROXY_PROXY_PROTOCOL", value_parser = BoolishValueParser::new())]
    pub proxy_protocol: bool,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub oidc: OidcArgs,
}

/// TLS termination, as the omnibus nginx does it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// HTTPS listener (TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1). Needs --tls-cert and --tls-key.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_LISTEN", value_name = "ADDR", requires_all = ["tls_cert", "tls_key"])]
    pub tls_listen: Option<SocketAddr>,

    /// PEM certificate chain (leaf first; a misordered chain is put in order with a warning).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_TLS_CERT",
        value_name = "PEM",
        requires = "tls_listen"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_KEY", value_name = "PEM", requires = "tls_listen")]
    pub tls_key: Option<PathBuf>,

    /// Refuse to start (or to reload) when the chain is misordered or has duplicate
    /// or unrelated certificates, instead of fixing it with a warning.
    #[arg(long, env = "GITLAB_OIDC_PROXY_STRICT_CHAIN", value_parser = BoolishValueParser::new())]
    pub strict_chain: bool,

    /// How often the certificate and key files are checked for changes (reloaded
    /// when changed; SIGHUP reloads at once). 0 turns the check off.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_WATCH_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub tls_watch_interval: Duration,

    /// Longest time for a client to complete the TLS handshake.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub tls_handshake_timeout: Duration,

    /// Answer every request on the plain --listen listener with a 301 to https
    /// (not those a trusted proxy marks as https). The admin listener is unaffected.
    #[arg(long, env = "GITLAB_OIDC_PROXY_REDIRECT_HTTP", requires = "tls_listen", value_parser = BoolishValueParser::new())]
    pub redirect_http: bool,

    /// Send Strict-Transport-Security: max-age=SECS on responses to https requests.
    #[arg(long, env = "GITLAB_OIDC_PROXY_HSTS", value_name = "SECS")]
    pub hsts: Option<u64>,
}

/// The OIDC documents the proxy answers itself.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "OIDC discovery and keys")]
pub struct OidcArgs {
    /// Path (under the issuer) of the key endpoint that the served discovery
    /// document's jwks_uri names. The proxy answers it, /oauth/discovery/keys and
    /// /-/jwks with the union of GitLab's key sets.
    #[arg(long, env = "GITLAB_OIDC_PROXY_JWKS_PATH", value_name = "PATH", default_value = "/-/jwks", value_parser = parse_jwks_path)]
    pub jwks_path: String,

    /// GitLab's external_url (relative URL root included). Discovery is fetched
    /// from its path with its host. Without it, the proxy asks at / and learns
    /// the issuer from GitLab's answer.
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXTERNAL_URL", value_name = "URL", value_parser = parse_issuer)]
    pub external_url: Option<Issuer>,

    /// Another issuer to publish the discovery document for, e.g. the tokens'
    /// `iss` on a relative-URL-root install (GitLab issue 429159). Served at
    /// {URL}/.well-known/openid-configuration with `issuer` set to URL.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ISSUER", value_name = "URL", value_delimiter = ',', value_parser = parse_issuer)]
    pub issuer: Vec<Issuer>,

    /// Cache-Control max-age on the served documents.
    #[arg(long, env = "GITLAB_OIDC_PROXY_MAX_AGE", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub max_age: Duration,

    /// How often the documents are refetched from GitLab.
    #[arg(long, env = "GITLAB_OIDC_PROXY_REFRESH", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub refresh: Duration,

    /// Longest wait for GitLab's answer to one document fetch.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "3s", value_parser = parse_positive_duration)]
    pub upstream_timeout: Duration,

    /// While GitLab fails, the last good copy is served for this long after
    /// GitLab last confirmed it; then 503 (Cache-Control: no-store).
    #[arg(long, env = "GITLAB_OIDC_PROXY_STALE_IF_ERROR", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub stale_if_error: Duration,
}

/// Where requests go. Parsed once; the passthrough builds request URIs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    Http { authority: http::uri::Authority },
    Https { authority: http::uri::Authority },
    Unix { path: PathBuf },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Plain seconds (`30`, `0.5`) or a unit suffix (`500ms`, `30s`, `5m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v <= 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("'{s}' is not a number of seconds"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); use e.g. 30, 500ms, 30s, 5m, 1h"))
        .and_then(|d| {
            if d <= MAX_DURATION {
                Ok(d)
            } else {
                Err(format!("'{s}' is longer than 30 years"))
            }
        })
}

/// Far beyond any useful timeout, and far from overflowing a clock.
const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

/// `--trusted-proxies`: a comma-separated list, possibly empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<IpNet>);

pub fn parse_cidr_list(s: &str) -> Result<CidrList, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_cidr)
        .collect::<Result<_, _>>()
        .map(CidrList)
}

/// A duration above zero (a zero refresh interval would spin).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err("must be above zero".into())
        } else {
            Ok(d)
        }
    })
}

pub fn parse_issuer(s: &str) -> Result<Issuer, String> {
    Issuer::parse(s)
}

/// An absolute path without query or fragment.
pub fn parse_jwks_path(s: &str) -> Result<String, String> {
    let path = s.trim_end_matches('/');
    let valid = path.starts_with('/')
        && !path.contains(['?', '#'])
        && path.parse::<http::uri::PathAndQuery>().is_ok_and(|p| p.path() == path);
    if valid {
        Ok(path.to_owned())
    } else {
        Err(format!("'{s}' is not an absolute path like /-/jwks"))
    }
}

/// `http://host[:port]`, `https://host[:port]` or `unix:/absolute/path`. No path,
/// query or credentials: the proxy forwards the client's path as it came.
pub fn parse_upstream(s: &str) -> Result<UpstreamTarget, String> {
    if let Some(path) = s.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(format!(
                "'{s}': a unix socket path must be absolute, e.g. unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket"
            ));
        }
        return Ok(UpstreamTarget::Unix {
            path: PathBuf::from(path),
        });
    }
    let uri: http::Uri = s.parse().map_err(|e| format!("'{s}' is not a URL ({e})"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("'{s}' has no host; use http://host:port, https://host:port or unix:/path"))?;
    if authority.as_str().contains('@') {
        return Err("the upstream URL must not carry credentials".into());
    }
    if uri
        .path_and_query()
        .is_some_and(|pq| pq.as_str() != "/" && !pq.as_str().is_empty())
    {
        return Err(format!(
            "'{s}': the upstream URL takes no path or query; requests keep their own path"
        ));
    }
    let after_host = authority.as_str().rsplit(']').next().unwrap_or_default();
    if after_host.contains(':') && authority.port_u16().is_none() {
        return Err(format!("'{s}': the port is not a number from 0 to 65535"));
    }
    match uri.scheme_str() {
        Some("http") => Ok(UpstreamTarget::Http { authority }),
        Some("https") => Ok(UpstreamTarget::Https { authority }),
        _ => Err(format!("'{s}': scheme must be http, https or unix")),
    }
}

/// A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`192.0.2.1`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("'{s}' is not a CIDR or IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(parse_positive_duration("0").is_err());
        assert_eq!(parse_positive_duration("1"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn cidr_lists_and_limits() {
        assert_eq!(parse_cidr_list(""), Ok(CidrList(vec![])));
        assert_eq!(
            parse_cidr_list("10.0.0.0/8, ::1"),
            Ok(CidrList(vec![
                "10.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap()
            ]))
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
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
