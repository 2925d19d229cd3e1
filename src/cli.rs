//! The command line: flags and `GITLAB_OIDC_PROXY_*` variables, parsed by clap
//! into the library's values ([`Config`], [`DemoSettings`]). The binary's front
//! end; nothing in the library depends on it.
//!
//! clap gives flags precedence over the environment. Values are validated at
//! parse time, so a bad one exits 2 with one line before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use gitlab_oidc_proxy::check::{self, CheckSettings};
use gitlab_oidc_proxy::config::{
    AcmeChallenge, AcmeSettings, AdminRefresh, AssetsCacheSettings, Config, ExportSettings, ExportTarget, Issuer,
    LogFormat, OidcSettings, Proto, Route, ServicesConfig, TlsConfig, UpstreamTarget, parse_byte_size, parse_cidr_list,
    parse_duration, parse_jwks_path, parse_positive_duration, parse_route, parse_upstream,
};
use gitlab_oidc_proxy::demo::DemoSettings;

use gitlab_oidc_proxy::simulator::{Profile, RailsSettings};

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the proxy in front of GitLab.
    #[command(
        after_help = "DURATION values: plain seconds (30) or with a unit (500ms, 30s, 5m, 1h).\n\
        Logging: RUST_LOG filters (default info; the access log's target is `access`, e.g. RUST_LOG=info,access=warn).\n\
        Exit status: 0 after a graceful shutdown, 2 for a bad option, 1 when the proxy cannot start."
    )]
    Serve(Box<ServeArgs>),
    /// Simulated GitLab + the proxy + parallel STS-like verifications, before/after.
    #[command(
        after_help = "The default scenario is a busy GitLab: 8 Rails workers, 6 of them kept busy by users, \
        300 ms per request, first come first served. STS gives up on a fetch after 5 s and keeps a \
        document only as its Cache-Control allows. The table states these numbers, and from how many \
        parallel jobs the path straight to GitLab fails under them.\n\
        DURATION values: 300ms, 1s, 1.5s.\n\
        Exit status with --once: 0 when every verification through the proxy passed, 1 otherwise, \
        2 for a bad option."
    )]
    Demo(DemoArgs),
    /// Copy the OIDC documents from GitLab under another issuer (GitLab 18.1's custom CI
    /// issuer URL) to a public directory or S3 bucket, and keep the copy in sync.
    #[command(
        after_help = "Writes {TO}/.well-known/openid-configuration (issuer = --issuer, jwks_uri = \
        --issuer + --jwks-path) and the key set at {TO}/oauth/discovery/keys and {TO}{--jwks-path}, \
        only what changed, keys before discovery. A key GitLab drops stays in the copy for --max-age \
        more (tracked in {TO}/.gitlab-oidc-proxy-export.json, so cron runs of --once keep it too).\n\
        S3: credentials and region from the AWS_* variables or the instance role; AWS_REGION is \
        required (no lookup). The writer needs s3:GetObject and s3:PutObject on the prefix and \
        s3:ListBucket on the bucket.\n\
        Exit status: --once and --print-jwks: 0 written or unchanged, 1 failed; otherwise 0 after \
        SIGTERM; 2 for a bad option or a target that cannot be set up."
    )]
    Export(Box<ExportArgs>),
    /// Exit 0 when the admin listener's /readyz answers 200, 1 otherwise: a container
    /// HEALTHCHECK or exec probe with no shell or curl in the image.
    Healthcheck(HealthcheckArgs),
    /// Walk the path AWS STS takes to verify a GitLab ID token and say which step fails
    /// and how to fix it (any GitLab, with or without this proxy in front).
    #[command(
        after_help = "Steps: 1 discovery over https within 5 s on a publicly trusted, ordered chain; \
        2 the document (issuer byte-identical, required members, RS256); 3 the key set at jwks_uri; \
        4 caching (no-cache, max-age=0, private: the parallel-jobs failure); 5 with --token: kid, RS256 \
        signature, iss, aud, exp/nbf, sub, and a trust policy; 6 with --burst: N jobs at once.\n\
        Exit status: 0 nothing failed (warnings allowed), 1 a step failed, 2 bad usage.\n\
        From a CI job: echo \"$AWS_ID_TOKEN\" | gitlab-oidc-proxy check \"$CI_SERVER_URL\" --token - --audience sts.amazonaws.com"
    )]
    Check(CheckArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CheckArgs {
    /// The issuer, exactly as in the tokens' iss and the IAM provider URL (https://gitlab.example.com).
    #[arg(value_name = "ISSUER_URL", value_parser = parse_check_issuer)]
    pub(crate) issuer: String,

    /// A CI ID token to check (a file, or - for stdin). Never printed; only its claims are.
    #[arg(long, value_name = "FILE|-")]
    pub(crate) token: Option<PathBuf>,

    /// The audience the IAM provider expects in aud (e.g. sts.amazonaws.com).
    #[arg(long, value_name = "AUD")]
    pub(crate) audience: Option<String>,

    /// Also fetch discovery and the key set N times at once, as N parallel jobs make STS do.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) burst: Option<u32>,

    /// Print one JSON object (steps, claims, trust policy) instead of text.
    #[arg(long)]
    pub(crate) json: bool,

    /// Extra PEM roots to trust (a private CA); a chain that needs them is a warning,
    /// since STS trusts only public roots.
    #[arg(long, value_name = "PEM")]
    pub(crate) ca: Option<PathBuf>,

    /// Connect to ADDR (ip:port) for the issuer's host instead of resolving it, as curl's
    /// --connect-to: check a proxy before DNS points at it.
    #[arg(long, value_name = "ADDR")]
    pub(crate) connect_to: Option<SocketAddr>,
}

impl CheckArgs {
    /// The settings, with the token and `--ca` read; why not, in one line (exit 2).
    pub(crate) fn into_settings(self) -> Result<CheckSettings, String> {
        Ok(CheckSettings {
            token: self.token.as_deref().map(check::read_token).transpose()?,
            ca: self.ca.as_deref().map(check::read_ca).transpose()?.unwrap_or_default(),
            issuer: self.issuer,
            audience: self.audience,
            burst: self.burst,
            connect_to: self.connect_to,
        })
    }
}

/// An http(s) URL with a host; anything else is bad usage (exit 2). An http
/// issuer or one with a port is a URL that fails step 1 instead.
fn parse_check_issuer(s: &str) -> Result<String, String> {
    let uri: http::Uri = s.parse().map_err(|_| format!("{s:?} is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not an http(s) URL with a host")),
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ExportArgs {
    /// Where GitLab (Workhorse) listens, as for `serve`.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub(crate) upstream: UpstreamTarget,

    /// Extra PEM CA bundle trusted for an https upstream, besides the system roots.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM_CA", value_name = "PEM")]
    pub(crate) upstream_ca: Option<PathBuf>,

    /// The issuer the copy is published under: where --to is served from
    /// (e.g. https://oidc.example.com or a bucket's https URL).
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXPORT_ISSUER", value_name = "URL", value_parser = Issuer::parse, required_unless_present = "print_jwks")]
    pub(crate) issuer: Option<Issuer>,

    /// Where to write the copy: a directory, or s3://BUCKET/PREFIX (credentials from
    /// the AWS variables and chain; AWS_ENDPOINT_URL for an S3-compatible store).
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXPORT_TO", value_name = "DIR|s3://BUCKET/PREFIX", value_parser = ExportTarget::parse, required_unless_present = "print_jwks")]
    pub(crate) to: Option<ExportTarget>,

    /// One pass, then exit (for cron); otherwise every --refresh until SIGTERM.
    #[arg(long)]
    pub(crate) once: bool,

    /// Print the current key set (GitLab's key sets united) on stdout and exit,
    /// for consumers that take pinned keys (--issuer, --to and --once, from the
    /// environment or not, are ignored).
    #[arg(long)]
    pub(crate) print_jwks: bool,

    /// GitLab's external_url: where discovery is fetched, with its host.
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXTERNAL_URL", value_name = "URL", value_parser = Issuer::parse)]
    pub(crate) external_url: Option<Issuer>,

    /// Path (under --issuer) of the key set that the copy's jwks_uri names.
    #[arg(long, env = "GITLAB_OIDC_PROXY_JWKS_PATH", value_name = "PATH", default_value = "/-/jwks", value_parser = parse_jwks_path)]
    pub(crate) jwks_path: String,

    /// How long a key GitLab dropped stays in the copy (consumers cache the key set this long).
    #[arg(long, env = "GITLAB_OIDC_PROXY_MAX_AGE", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub(crate) max_age: Duration,

    /// How often the copy is brought in sync.
    #[arg(long, env = "GITLAB_OIDC_PROXY_REFRESH", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub(crate) refresh: Duration,

    /// Longest wait for GitLab's answer to one document fetch.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "3s", value_parser = parse_positive_duration)]
    pub(crate) upstream_timeout: Duration,

    /// Log line format.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,
}

impl ExportArgs {
    /// The proxy's settings the exporter's refresher runs with, and what to export.
    pub(crate) fn into_parts(self) -> (Config, Option<ExportSettings>) {
        let mut config = Config::new(self.upstream);
        config.upstream_ca = self.upstream_ca;
        config.oidc.external_url = self.external_url;
        config.oidc.jwks_path = self.jwks_path;
        config.oidc.max_age = self.max_age;
        config.oidc.refresh = self.refresh;
        config.oidc.upstream_timeout = self.upstream_timeout;
        let export = self
            .to
            .zip(self.issuer)
            .map(|(target, issuer)| ExportSettings { target, issuer });
        (config, export)
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct HealthcheckArgs {
    /// The admin listener of the proxy to ask (`serve`'s own setting; 0.0.0.0 is asked on 127.0.0.1).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub(crate) admin_listen: SocketAddr,

    /// Longest wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Where GitLab (Workhorse) listens: http://host:port, https://host:port or
    /// unix:/path/to/socket (omnibus: unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket).
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub(crate) upstream: UpstreamTarget,

    /// Extra PEM CA bundle trusted for an https upstream, besides the system roots.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM_CA", value_name = "PEM")]
    pub(crate) upstream_ca: Option<PathBuf>,

    /// Public listener: plain HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub(crate) listen: SocketAddr,

    /// A listener that serves only the OIDC documents (discovery, key set; same headers
    /// and rules) and answers 404 to every other path without asking GitLab: the one
    /// to expose to the internet when GitLab itself is private.
    #[arg(long, env = "GITLAB_OIDC_PROXY_OIDC_LISTEN", value_name = "ADDR")]
    pub(crate) oidc_listen: Option<SocketAddr>,

    /// Admin listener: GET /healthz, /readyz, /metrics, /status; POST /refresh. Never served on
    /// the public listener.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ADMIN_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub(crate) admin_listen: SocketAddr,

    /// Who may POST /refresh on the admin listener: loopback peers only, or any peer
    /// that reaches the admin address (bind it to a pod address for probes and scraping
    /// and keep this loopback).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ADMIN_REFRESH",
        value_name = "PEERS",
        default_value = "loopback"
    )]
    pub(crate) admin_refresh: AdminRefresh,

    /// Peers whose X-Forwarded-For and X-Forwarded-Proto are believed
    /// (comma-separated CIDRs or addresses; empty for none). Every other
    /// client-supplied forwarding header is always replaced.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TRUSTED_PROXIES", value_name = "CIDR[,CIDR...]", default_value = "", hide_default_value = true, value_parser = parse_cidrs)]
    pub(crate) trusted_proxies: CidrList,

    /// X-Forwarded-Proto sent to GitLab for the plain listener, for TLS terminated in
    /// front of the proxy. With https, X-Forwarded-Ssl: on is sent too.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_FORWARDED_PROTO",
        value_name = "PROTO",
        default_value = "http"
    )]
    pub(crate) forwarded_proto: Proto,

    /// Log line format.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_LOG_FORMAT",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub(crate) log_format: LogFormat,

    /// How long a client may take to send request headers before it is disconnected;
    /// also how long a connection with no request in flight (HTTP/1.1 keep-alive or HTTP/2) is kept open.
    #[arg(long, env = "GITLAB_OIDC_PROXY_HEADER_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub(crate) header_timeout: Duration,

    /// How long to wait for a connection to GitLab before answering 504.
    #[arg(long, env = "GITLAB_OIDC_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) connect_timeout: Duration,

    /// Longest silence from GitLab: taking nothing of a request body the client is
    /// sending and before its response headers once the request is sent (then 504),
    /// within its response body (then the response is cut). Like nginx's
    /// proxy_read_timeout and proxy_send_timeout; there is no limit on a request's
    /// total time.
    #[arg(long, env = "GITLAB_OIDC_PROXY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = parse_positive_duration)]
    pub(crate) idle_timeout: Duration,

    /// Longest silence between two reads of a client's request body, like nginx's
    /// client_body_timeout: past it the client gets 408 and GitLab's request is
    /// aborted. An upload that keeps moving is never cut, however long it takes.
    #[arg(long, env = "GITLAB_OIDC_PROXY_CLIENT_BODY_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub(crate) client_body_timeout: Duration,

    /// Connections open to GitLab at once (busy, idle in the pool, websockets and
    /// long polls alike; the OIDC refresher's own fetches aside). Past it a request
    /// waits up to --connect-timeout for one to free up, then gets 503 with Retry-After.
    #[arg(long, env = "GITLAB_OIDC_PROXY_MAX_UPSTREAM_CONNECTIONS", value_name = "N", default_value = "1024", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_upstream_connections: u32,

    /// Threads that serve connections (at most 1024); 0: one per CPU core this
    /// process may use. A connection goes to the one with the fewest open and
    /// stays there; accepting, the admin listener, the OIDC refresher and the
    /// connections' idle timers keep the main thread to themselves.
    #[arg(long, env = "GITLAB_OIDC_PROXY_THREADS", value_name = "N", default_value = "0", value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub(crate) threads: u16,

    /// Longest silence in both directions on an upgraded connection (websocket,
    /// web terminal) before it is closed.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPGRADE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "1h", value_parser = parse_positive_duration)]
    pub(crate) upgrade_idle_timeout: Duration,

    /// On SIGTERM/SIGINT: stop accepting, then give in-flight requests and upgraded
    /// connections this long to finish before exiting 0.
    #[arg(long, env = "GITLAB_OIDC_PROXY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) shutdown_grace: Duration,

    /// Response compression like omnibus nginx: gzip (br or zstd when the client
    /// ranks them above gzip) for text, JSON, JavaScript, CSS, XML and SVG of at
    /// least 250 bytes, streamed.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_COMPRESSION",
        value_name = "MODE",
        default_value = "on"
    )]
    pub(crate) compression: Switch,

    /// Memory for GitLab's /assets/ responses (omnibus nginx's proxy_cache): 200s to
    /// GET marked Cache-Control: public with a max-age, one entry per Vary variant,
    /// each until its max-age ends or the least used make room. Sizes like 256MiB
    /// or 1GB; 0 turns the cache off.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ASSETS_CACHE_SIZE", value_name = "BYTES", default_value = "256MiB", value_parser = parse_byte_size)]
    pub(crate) assets_cache_size: u64,

    /// Largest /assets/ response kept in the cache; larger ones pass through uncached.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ASSETS_CACHE_MAX_ENTRY", value_name = "BYTES", default_value = "8MiB", value_parser = parse_byte_size)]
    pub(crate) assets_cache_max_entry: u64,

    /// Expect a PROXY protocol (v1 or v2) header on every connection to --listen and
    /// --tls-listen, and take the client address from it. Connections from peers outside
    /// --trusted-proxies, or without a valid header, are closed.
    #[arg(long, env = "GITLAB_OIDC_PROXY_PROXY_PROTOCOL", value_parser = BoolishValueParser::new())]
    pub(crate) proxy_protocol: bool,

    #[command(flatten)]
    pub(crate) tls: TlsArgs,

    #[command(flatten)]
    pub(crate) oidc: OidcArgs,

    #[command(flatten)]
    pub(crate) services: ServicesArgs,
}

/// What omnibus nginx fronted besides GitLab itself.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Other services (what omnibus nginx also fronted)")]
pub(crate) struct ServicesArgs {
    /// Requests whose Host is HOST go to UPSTREAM instead of --upstream, streamed
    /// and upgraded as GitLab's are, with no OIDC answers and no compression: the
    /// container registry, Pages (*.pages.example.com names every subdomain),
    /// Mattermost. Repeatable; the variable takes a comma-separated list.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ROUTE", value_name = "HOST=UPSTREAM", value_delimiter = ',', value_parser = parse_route)]
    pub(crate) route: Vec<Route>,

    /// KAS (the GitLab agent server, omnibus 127.0.0.1:8150): the agent's websocket
    /// path /-/kubernetes-agent/ goes there, as /.
    #[arg(long, env = "GITLAB_OIDC_PROXY_KAS_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub(crate) kas_upstream: Option<UpstreamTarget>,

    /// KAS's Kubernetes API proxy (omnibus 127.0.0.1:8154): /-/kubernetes-agent/k8s-proxy/
    /// and below go there, the prefix taken off.
    #[arg(long, env = "GITLAB_OIDC_PROXY_KAS_K8S_PROXY_UPSTREAM", value_name = "URL", value_parser = parse_upstream)]
    pub(crate) kas_k8s_proxy_upstream: Option<UpstreamTarget>,

    /// GitLab's public directory (/opt/gitlab/embedded/service/gitlab-rails/public): its
    /// 502.html and 503.html answer the proxy's own 502/503/504 to browsers (504 shows
    /// 502.html); other clients keep plain text, and GitLab's own error answers are
    /// never replaced. Read at start.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ERROR_PAGES", value_name = "DIR")]
    pub(crate) error_pages: Option<PathBuf>,

    /// certbot's --webroot: GET/HEAD /.well-known/acme-challenge/TOKEN on the plain
    /// listener (even with --redirect-http) answers DIR/.well-known/acme-challenge/TOKEN,
    /// and 404 for anything else under that path; nothing outside that folder is served.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ACME_WEBROOT", value_name = "DIR")]
    pub(crate) acme_webroot: Option<PathBuf>,
}

/// TLS termination, as the omnibus nginx does it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
#[command(group(clap::ArgGroup::new("tls_source").multiple(true).args(["tls_cert", "acme_domain"])))]
pub(crate) struct TlsArgs {
    /// HTTPS listener (TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1). Needs --tls-cert and
    /// --tls-key, or --acme-domain.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_TLS_LISTEN",
        value_name = "ADDR",
        requires = "tls_source"
    )]
    pub(crate) tls_listen: Option<SocketAddr>,

    /// PEM certificate chain (leaf first; a misordered chain is put in order with a warning).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_TLS_CERT",
        value_name = "PEM",
        requires_all = ["tls_listen", "tls_key"]
    )]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// A directory of <host>.crt/<host>.key pairs (omnibus's /etc/gitlab/ssl), each served
    /// to clients asking for that host by SNI (a wildcard pair to the names below its
    /// host); --tls-cert/--tls-key serve any other name. Each pair gets the same checks
    /// and reloads; a bad one is left out alone. New and removed pairs are noticed within
    /// --tls-watch-interval.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_TLS_CERT_DIR",
        value_name = "DIR",
        requires = "tls_cert"
    )]
    pub(crate) tls_cert_dir: Option<PathBuf>,

    /// Obtain and renew a certificate for HOST over ACME (RFC 8555), served on
    /// --tls-listen to clients asking for HOST. Repeatable (comma-separated in the
    /// variable): one certificate names them all. Needs --acme-cache.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ACME_DOMAIN", value_name = "HOST", value_delimiter = ',',
          value_parser = parse_acme_domain, requires_all = ["tls_listen", "acme_cache"])]
    pub(crate) acme_domain: Vec<String>,

    /// The ACME server's directory URL.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ACME_DIRECTORY",
        value_name = "URL",
        default_value = "https://acme-v02.api.letsencrypt.org/directory",
        requires = "acme_domain"
    )]
    pub(crate) acme_directory: String,

    /// Contact address given to the ACME server for the account (expiry notices).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ACME_CONTACT",
        value_name = "EMAIL",
        requires = "acme_domain"
    )]
    pub(crate) acme_contact: Option<String>,

    /// Directory for the ACME account key and the obtained certificate and key
    /// (created 0700, files 0600); a valid certificate there is served at start.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ACME_CACHE",
        value_name = "DIR",
        requires = "acme_domain"
    )]
    pub(crate) acme_cache: Option<PathBuf>,

    /// PEM CA certificates trusted for the ACME server's own TLS, besides the
    /// system's (a private ACME server).
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_ACME_CA",
        value_name = "PEM",
        requires = "acme_domain"
    )]
    pub(crate) acme_ca: Option<PathBuf>,

    /// The challenge answered: tls-alpn-01 on --tls-listen, or http-01 on --listen
    /// (the CA connects to port 443 or 80 of each --acme-domain).
    #[arg(long, env = "GITLAB_OIDC_PROXY_ACME_CHALLENGE", value_name = "TYPE", default_value = "tls-alpn-01",
          value_parser = ["tls-alpn-01", "http-01"], requires = "acme_domain")]
    pub(crate) acme_challenge: String,

    /// PEM certificate chain for --oidc-listen, which then speaks TLS (same checks,
    /// file watch and SIGHUP reload as --tls-cert).
    #[arg(long, env = "GITLAB_OIDC_PROXY_OIDC_TLS_CERT", value_name = "PEM", requires_all = ["oidc_listen", "oidc_tls_key"])]
    pub(crate) oidc_tls_cert: Option<PathBuf>,

    /// PEM private key for --oidc-tls-cert.
    #[arg(
        long,
        env = "GITLAB_OIDC_PROXY_OIDC_TLS_KEY",
        value_name = "PEM",
        requires = "oidc_tls_cert"
    )]
    pub(crate) oidc_tls_key: Option<PathBuf>,

    /// Refuse to start (or to reload) when the chain is misordered or has duplicate
    /// or unrelated certificates, instead of fixing it with a warning.
    #[arg(long, env = "GITLAB_OIDC_PROXY_STRICT_CHAIN", value_parser = BoolishValueParser::new())]
    pub(crate) strict_chain: bool,

    /// How often the certificate and key files are checked for changes (reloaded
    /// when changed; SIGHUP reloads at once). 0 turns the check off.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_WATCH_INTERVAL", value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) tls_watch_interval: Duration,

    /// Longest time for a client to complete the TLS handshake.
    #[arg(long, env = "GITLAB_OIDC_PROXY_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) tls_handshake_timeout: Duration,

    /// Answer every request on the plain --listen listener with a 301 to https
    /// (not those a trusted proxy marks as https). The admin listener is unaffected.
    #[arg(long, env = "GITLAB_OIDC_PROXY_REDIRECT_HTTP", requires = "tls_listen", value_parser = BoolishValueParser::new())]
    pub(crate) redirect_http: bool,

    /// Send Strict-Transport-Security: max-age=SECS on responses to https requests.
    #[arg(long, env = "GITLAB_OIDC_PROXY_HSTS", value_name = "SECS")]
    pub(crate) hsts: Option<u64>,
}

/// The OIDC documents the proxy answers itself.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "OIDC discovery and keys")]
pub(crate) struct OidcArgs {
    /// Path (under the issuer) of the key endpoint that the served discovery
    /// document's jwks_uri names. The proxy answers it, /oauth/discovery/keys and
    /// /-/jwks with the union of GitLab's key sets.
    #[arg(long, env = "GITLAB_OIDC_PROXY_JWKS_PATH", value_name = "PATH", default_value = "/-/jwks", value_parser = parse_jwks_path)]
    pub(crate) jwks_path: String,

    /// GitLab's external_url (relative URL root included). Discovery is fetched
    /// from its path with its host. Without it, the proxy asks at / and learns
    /// the issuer from GitLab's answer.
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXTERNAL_URL", value_name = "URL", value_parser = Issuer::parse)]
    pub(crate) external_url: Option<Issuer>,

    /// Another issuer to publish the discovery document for, e.g. the tokens'
    /// `iss` on a relative-URL-root install (GitLab issue 429159). Served at
    /// {URL}/.well-known/openid-configuration with `issuer` set to URL.
    #[arg(long, env = "GITLAB_OIDC_PROXY_ISSUER", value_name = "URL", value_delimiter = ',', value_parser = Issuer::parse)]
    pub(crate) issuer: Vec<Issuer>,

    /// Cache-Control max-age on the served documents.
    #[arg(long, env = "GITLAB_OIDC_PROXY_MAX_AGE", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub(crate) max_age: Duration,

    /// How often the documents are refetched from GitLab.
    #[arg(long, env = "GITLAB_OIDC_PROXY_REFRESH", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub(crate) refresh: Duration,

    /// Longest wait for GitLab's answer to one document fetch.
    #[arg(long, env = "GITLAB_OIDC_PROXY_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "3s", value_parser = parse_positive_duration)]
    pub(crate) upstream_timeout: Duration,

    /// While GitLab fails, the last good copy is served for this long after
    /// GitLab last confirmed it; then 503 (Cache-Control: no-store).
    #[arg(long, env = "GITLAB_OIDC_PROXY_STALE_IF_ERROR", value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub(crate) stale_if_error: Duration,

    /// Also keep a copy of the served documents under --export-issuer in a directory or
    /// S3 bucket (as `export` does), brought in sync after each refresh. Its failures are
    /// logged, counted and shown in the admin listener's /status; /readyz ignores them.
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXPORT_TO", value_name = "DIR|s3://BUCKET/PREFIX", value_parser = ExportTarget::parse, requires = "export_issuer")]
    pub(crate) export_to: Option<ExportTarget>,

    /// The issuer the --export-to copy is published under (where it is served from).
    #[arg(long, env = "GITLAB_OIDC_PROXY_EXPORT_ISSUER", value_name = "URL", value_parser = Issuer::parse, requires = "export_to")]
    pub(crate) export_issuer: Option<Issuer>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Which GitLab to simulate (reference profiles).
    #[arg(long, value_name = "VERSION", default_value = "14.4")]
    pub(crate) profile: Profile,

    /// Verifications run in parallel, like CI jobs assuming a role at once (1 to 10000).
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) jobs: u32,

    /// The jobs call STS evenly spread over this time (0: all at the same instant; at
    /// most 60s).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_jobs_spread)]
    pub(crate) jobs_spread: Duration,

    /// Requests the simulated GitLab's Rails (Puma) serves at once; more wait in line
    /// (1 to 1000).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) gitlab_workers: u32,

    /// Of --gitlab-workers, those kept busy by users' requests throughout (the load
    /// CI comes on top of; 0: an idle GitLab). Must leave one free.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=999))]
    pub(crate) gitlab_busy: u32,

    /// Time a Rails worker spends on each request (1ms to 1s; the proxy's own fetches
    /// must fit its 3 s upstream timeout).
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_service_time)]
    pub(crate) gitlab_service_time: Duration,

    /// Exit after the table: 0 only if every verification through the proxy passed.
    #[arg(long)]
    pub(crate) once: bool,

    /// The proxy's public listener (its URL is the issuer).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,

    /// The proxy's admin listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    pub(crate) admin_listen: SocketAddr,

    /// The simulated GitLab's listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    pub(crate) gitlab_listen: SocketAddr,

    /// Serve only the simulated GitLab on --gitlab-listen until SIGTERM or Ctrl-C,
    /// for a proxy started on its own (a container, a package). Any address is allowed.
    #[arg(long, conflicts_with_all = [
        "jobs", "jobs_spread", "once", "listen", "admin_listen",
        "gitlab_workers", "gitlab_busy", "gitlab_service_time",
    ])]
    pub(crate) gitlab_only: bool,

    /// With --gitlab-only: GitLab's external URL, i.e. the proxy's public URL, which
    /// discovery names as the issuer.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        requires = "gitlab_only"
    )]
    pub(crate) external_url: String,
}

/// `--gitlab-service-time`: 1 ms to 1 s.
fn parse_service_time(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s).map_err(|e| e.to_string())?;
    if (Duration::from_millis(1)..=Duration::from_secs(1)).contains(&d) {
        Ok(d)
    } else {
        Err(format!("{s}: must be from 1ms to 1s"))
    }
}

/// `--jobs-spread`: up to a minute.
fn parse_jobs_spread(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| e.to_string())?;
    if d <= Duration::from_secs(60) {
        Ok(d)
    } else {
        Err(format!("{s}: at most 60s"))
    }
}

/// `on` / `off`, as nginx spells its switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Switch {
    On,
    Off,
}

/// `--trusted-proxies`: one value holding a list (a bare `Vec` would make clap
/// expect the flag once per entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CidrList(pub(crate) Vec<IpNet>);

fn parse_cidrs(s: &str) -> Result<CidrList, gitlab_oidc_proxy::config::ValueError> {
    parse_cidr_list(s).map(CidrList)
}

impl ServeArgs {
    /// The values `serve` runs with.
    pub(crate) fn into_config(self) -> Config {
        Config {
            upstream: self.upstream,
            upstream_ca: self.upstream_ca,
            listen: self.listen,
            oidc_listen: self.oidc_listen,
            admin_listen: self.admin_listen,
            admin_refresh: self.admin_refresh,
            trusted_proxies: self.trusted_proxies.0,
            forwarded_proto: self.forwarded_proto,
            header_timeout: self.header_timeout,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            client_body_timeout: self.client_body_timeout,
            upgrade_idle_timeout: self.upgrade_idle_timeout,
            max_upstream_connections: self.max_upstream_connections,
            threads: usize::from(self.threads),
            shutdown_grace: self.shutdown_grace,
            compression: self.compression == Switch::On,
            proxy_protocol: self.proxy_protocol,
            tls: self.tls.into_config(),
            export: self.oidc.export(),
            oidc: self.oidc.into_settings(),
            services: ServicesConfig {
                routes: self.services.route,
                kas: self.services.kas_upstream,
                kas_k8s_proxy: self.services.kas_k8s_proxy_upstream,
                error_pages: self.services.error_pages,
                acme_webroot: self.services.acme_webroot,
            },
            assets_cache: AssetsCacheSettings {
                size: self.assets_cache_size,
                max_entry: self.assets_cache_max_entry,
            },
        }
    }
}

impl TlsArgs {
    fn into_config(self) -> TlsConfig {
        TlsConfig {
            listen: self.tls_listen,
            cert: self.tls_cert,
            key: self.tls_key,
            cert_dir: self.tls_cert_dir,
            oidc_cert: self.oidc_tls_cert,
            oidc_key: self.oidc_tls_key,
            strict_chain: self.strict_chain,
            watch_interval: self.tls_watch_interval,
            handshake_timeout: self.tls_handshake_timeout,
            redirect_http: self.redirect_http,
            hsts: self.hsts,
            acme: self
                .acme_cache
                .filter(|_| !self.acme_domain.is_empty())
                .map(|cache| AcmeSettings {
                    domains: self.acme_domain,
                    directory: self.acme_directory,
                    contact: self.acme_contact.map(|c| match c.strip_prefix("mailto:") {
                        Some(_) => c,
                        None => format!("mailto:{c}"),
                    }),
                    cache,
                    ca: self.acme_ca,
                    challenge: match self.acme_challenge.as_str() {
                        "http-01" => AcmeChallenge::Http01,
                        _ => AcmeChallenge::TlsAlpn01,
                    },
                }),
        }
    }
}

/// A DNS name a public CA can issue for: letters, digits, '-', dots between labels.
fn parse_acme_domain(s: &str) -> Result<String, String> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = name.contains('.')
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok {
        Ok(name)
    } else {
        Err(format!("{s}: not a DNS name (no wildcards, no IP addresses)"))
    }
}

impl OidcArgs {
    /// `--export-to` with `--export-issuer` (clap requires both or neither).
    fn export(&self) -> Option<ExportSettings> {
        let (target, issuer) = self.export_to.clone().zip(self.export_issuer.clone())?;
        Some(ExportSettings { target, issuer })
    }

    fn into_settings(self) -> OidcSettings {
        OidcSettings {
            jwks_path: self.jwks_path,
            external_url: self.external_url,
            extra_issuers: self.issuer,
            max_age: self.max_age,
            refresh: self.refresh,
            upstream_timeout: self.upstream_timeout,
            stale_if_error: self.stale_if_error,
        }
    }
}

impl DemoArgs {
    pub(crate) fn into_settings(self) -> DemoSettings {
        DemoSettings {
            profile: self.profile,
            jobs: self.jobs,
            jobs_spread: self.jobs_spread,
            rails: RailsSettings {
                workers: self.gitlab_workers,
                busy: self.gitlab_busy,
                service_time: self.gitlab_service_time,
            },
            once: self.once,
            listen: self.listen,
            admin_listen: self.admin_listen,
            gitlab_listen: self.gitlab_listen,
            gitlab_only: self.gitlab_only.then_some(self.external_url),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(["gitlab-oidc-proxy"].iter().chain(args)).unwrap()
    }

    /// The export variables a packaged host sets for a kept copy must not stop
    /// an admin from printing the keys on the same host.
    #[test]
    fn print_jwks_ignores_the_copy_options() {
        let cli = parse(&[
            "export",
            "--upstream=http://127.0.0.1:1",
            "--print-jwks",
            "--to=/tmp/copy",
            "--issuer=https://oidc.example.com",
            "--once",
        ]);
        let Command::Export(args) = cli.command else {
            panic!("not export")
        };
        assert!(args.print_jwks);
        let bare = Cli::try_parse_from(["gitlab-oidc-proxy", "export", "--upstream=http://127.0.0.1:1"]);
        if std::env::vars().all(|(n, _)| !n.starts_with("GITLAB_OIDC_PROXY_EXPORT")) {
            assert!(bare.is_err(), "--to and --issuer are required without --print-jwks");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// `--help`'s defaults and `Config::new`'s are one set of values (the demo
    /// builds its `Config` from the latter).
    #[test]
    fn defaults_match_config_new() {
        // clap reads the environment too; a machine that sets these variables
        // cannot show the defaults (and unsetting them is not thread-safe).
        if let Some((name, _)) = std::env::vars().find(|(n, _)| n.starts_with("GITLAB_OIDC_PROXY_")) {
            eprintln!("skipped: {name} is set");
            return;
        }
        let Command::Serve(args) = parse(&["serve", "--upstream", "http://127.0.0.1:8181"]).command else {
            panic!("not serve");
        };
        let upstream = parse_upstream("http://127.0.0.1:8181").unwrap();
        assert_eq!(args.into_config(), Config::new(upstream));
    }

    /// `serve` with every option set to a value other than its default.
    const EVERY_OPTION: &[&str] = &[
        "serve",
        "--upstream=unix:/run/gitlab.sock",
        "--upstream-ca=/ca.pem",
        "--listen=127.0.0.1:1",
        "--admin-listen=127.0.0.1:2",
        "--admin-refresh=any",
        "--oidc-listen=127.0.0.1:14",
        "--oidc-tls-cert=/oc.pem",
        "--oidc-tls-key=/ok.pem",
        "--trusted-proxies=10.0.0.0/8",
        "--forwarded-proto=https",
        "--header-timeout=1s",
        "--connect-timeout=2s",
        "--idle-timeout=3s",
        "--upgrade-idle-timeout=4s",
        "--shutdown-grace=5s",
        "--client-body-timeout=12s",
        "--max-upstream-connections=13",
        "--threads=15",
        "--compression=off",
        "--assets-cache-size=1GB",
        "--assets-cache-max-entry=1MiB",
        "--proxy-protocol",
        "--tls-listen=127.0.0.1:3",
        "--tls-cert=/c.pem",
        "--tls-key=/k.pem",
        "--tls-cert-dir=/etc/gitlab/ssl",
        "--strict-chain",
        "--tls-watch-interval=6s",
        "--tls-handshake-timeout=7s",
        "--hsts=60",
        "--jwks-path=/oauth/ci/keys",
        "--external-url=https://g.example/gitlab",
        "--issuer=https://g.example",
        "--max-age=8s",
        "--refresh=9s",
        "--upstream-timeout=10s",
        "--stale-if-error=11s",
        "--export-to=s3://bucket/oidc",
        "--export-issuer=https://bucket.example/oidc",
        "--route=registry.g.example=http://127.0.0.1:5000",
        "--route=*.pages.g.example=http://127.0.0.1:8090",
        "--kas-upstream=http://127.0.0.1:8150",
        "--kas-k8s-proxy-upstream=http://127.0.0.1:8154",
        "--error-pages=/public",
        "--acme-webroot=/acme",
        "--acme-domain=GitLab.g.example,registry.g.example",
        "--acme-directory=https://ca.internal/directory",
        "--acme-contact=ops@g.example",
        "--acme-cache=/var/lib/acme",
        "--acme-ca=/acme-ca.pem",
        "--acme-challenge=http-01",
    ];

    #[test]
    fn every_acme_option_reaches_the_config() {
        let Command::Serve(args) = parse(EVERY_OPTION).command else {
            panic!("not serve");
        };
        let acme = AcmeSettings {
            domains: vec!["gitlab.g.example".into(), "registry.g.example".into()],
            directory: "https://ca.internal/directory".into(),
            contact: Some("mailto:ops@g.example".into()),
            cache: "/var/lib/acme".into(),
            ca: Some("/acme-ca.pem".into()),
            challenge: AcmeChallenge::Http01,
        };
        assert_eq!(args.into_config().tls.acme, Some(acme));
    }

    #[test]
    fn every_option_reaches_the_config() {
        let Command::Serve(args) = parse(EVERY_OPTION).command else {
            panic!("not serve");
        };
        let c = args.into_config();
        let s = Duration::from_secs;
        assert_eq!(
            c.upstream,
            UpstreamTarget::Unix {
                path: "/run/gitlab.sock".into()
            }
        );
        assert_eq!(c.upstream_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!((c.listen.port(), c.admin_listen.port()), (1, 2));
        assert_eq!(c.admin_refresh, AdminRefresh::Any);
        assert_eq!(c.oidc_listen.map(|a| a.port()), Some(14));
        assert_eq!(
            (c.tls.oidc_cert.clone(), c.tls.oidc_key.clone()),
            (Some(PathBuf::from("/oc.pem")), Some(PathBuf::from("/ok.pem")))
        );
        assert_eq!(c.trusted_proxies, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        assert_eq!(c.forwarded_proto, Proto::Https);
        assert_eq!(
            [
                c.header_timeout,
                c.connect_timeout,
                c.idle_timeout,
                c.upgrade_idle_timeout,
                c.shutdown_grace,
                c.client_body_timeout
            ],
            [s(1), s(2), s(3), s(4), s(5), s(12)]
        );
        assert!(!c.compression && c.proxy_protocol && (c.max_upstream_connections, c.threads) == (13, 15));
        assert_eq!(
            (c.assets_cache.size, c.assets_cache.max_entry),
            (1_000_000_000, 1 << 20)
        );
        let t = &c.tls;
        assert_eq!(t.listen.map(|a| a.port()), Some(3));
        assert_eq!(
            (t.cert.clone(), t.key.clone()),
            (Some("/c.pem".into()), Some("/k.pem".into()))
        );
        assert!(t.strict_chain && !t.redirect_http);
        assert_eq!(t.cert_dir, Some(PathBuf::from("/etc/gitlab/ssl")));
        assert_eq!((t.watch_interval, t.handshake_timeout, t.hsts), (s(6), s(7), Some(60)));
        let o = &c.oidc;
        assert_eq!(o.jwks_path, "/oauth/ci/keys");
        assert_eq!(
            o.external_url.as_ref().map(|i| i.url.as_str()),
            Some("https://g.example/gitlab")
        );
        assert_eq!(
            o.extra_issuers.iter().map(|i| i.url.as_str()).collect::<Vec<_>>(),
            ["https://g.example"]
        );
        assert_eq!(
            [o.max_age, o.refresh, o.upstream_timeout, o.stale_if_error],
            [s(8), s(9), s(10), s(11)]
        );
        let v = &c.services;
        assert_eq!(
            v.routes.iter().map(|r| r.host.to_string()).collect::<Vec<_>>(),
            ["registry.g.example", "*.pages.g.example"]
        );
        assert_eq!(v.kas, Some(parse_upstream("http://127.0.0.1:8150").unwrap()));
        assert_eq!(v.kas_k8s_proxy, Some(parse_upstream("http://127.0.0.1:8154").unwrap()));
        assert_eq!(v.error_pages, Some(PathBuf::from("/public")));
        assert_eq!(v.acme_webroot, Some(PathBuf::from("/acme")));
        let export = c.export.expect("--export-to and --export-issuer");
        assert_eq!(
            (export.target, export.issuer.url.as_str()),
            (
                ExportTarget::S3 {
                    bucket: "bucket".into(),
                    prefix: "oidc".into()
                },
                "https://bucket.example/oidc"
            )
        );
    }

    /// `demo` with every option set to a value other than its default.
    const EVERY_DEMO_OPTION: &[&str] = &[
        "demo",
        "--profile=17.0",
        "--jobs=7",
        "--jobs-spread=2s",
        "--gitlab-workers=5",
        "--gitlab-busy=1",
        "--gitlab-service-time=40ms",
        "--once",
        "--listen=127.0.0.1:1",
        "--admin-listen=127.0.0.1:2",
        "--gitlab-listen=127.0.0.1:3",
    ];

    #[test]
    fn every_demo_option_reaches_the_settings() {
        let Command::Demo(args) = parse(EVERY_DEMO_OPTION).command else {
            panic!("not demo");
        };
        let d = args.into_settings();
        assert_eq!(
            (d.profile, d.jobs, d.jobs_spread),
            (Profile::V17_0, 7, Duration::from_secs(2))
        );
        let rails = RailsSettings {
            workers: 5,
            busy: 1,
            service_time: Duration::from_millis(40),
        };
        assert_eq!(d.rails, rails);
        assert!(d.once && d.gitlab_only.is_none());
        assert_eq!(
            (d.listen.port(), d.admin_listen.port(), d.gitlab_listen.port()),
            (1, 2, 3)
        );
    }

    #[test]
    fn demo_workers_settings_are_bounded() {
        for bad in [
            "--gitlab-service-time=0",
            "--gitlab-service-time=2s",
            "--gitlab-service-time=soon",
            "--gitlab-workers=0",
            "--gitlab-busy=-1",
            "--jobs-spread=2m",
            "--jobs=0",
        ] {
            let err = Cli::try_parse_from(["gitlab-oidc-proxy", "demo", bad]).expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
        // The standalone GitLab answers at once: a proxy's tests are not a load test.
        let err = Cli::try_parse_from(["gitlab-oidc-proxy", "demo", "--gitlab-only", "--gitlab-workers=2"])
            .expect_err("--gitlab-only with --gitlab-workers");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn export_to_and_export_issuer_go_together() {
        for lone in ["--export-to=/srv/oidc", "--export-issuer=https://o.example"] {
            let err = Cli::try_parse_from(["gitlab-oidc-proxy", "serve", "--upstream=http://127.0.0.1:1", lone])
                .expect_err(lone);
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{lone}");
        }
    }

    #[test]
    fn threads_are_bounded() {
        for bad in ["--threads=1025", "--threads=-1", "--threads=many"] {
            let err = Cli::try_parse_from(["gitlab-oidc-proxy", "serve", "--upstream=http://127.0.0.1:1", bad])
                .expect_err(bad);
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }
}
