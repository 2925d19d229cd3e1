//! Starting and stopping the whole proxy from a [`Config`]: validate, bind,
//! build the router and its routes, spawn the listeners, the admin endpoint,
//! the OIDC refresher and the certificate watcher. Used by `serve` and `demo`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::Acme;
use crate::acme_webroot::Webroot;
use crate::admin::{self, Admin};
use crate::assets_cache::AssetsCache;
use crate::config::{Config, ConfigError, ExportSettings, HostPattern, Proto, UpstreamTarget};
use crate::error::StartError;
use crate::error_pages::ErrorPages;
use crate::export::{self, Exporter};
use crate::headers::ViaId;
use crate::listener::{self, ListenerSettings};
use crate::metrics::Metrics;
use crate::oidc::Oidc;
use crate::oidc::cache::Cache;
use crate::oidc::fetch::Fetcher;
use crate::oidc::style::Style;
use crate::passthrough::{Passthrough, Timeouts};
use crate::redirect;
use crate::router::{ListenerKind, Router, RouterSettings};
use crate::routes::Routes;
use crate::tls::sni::{CertDir, SniResolver};
use crate::tls::{self, CertStore, TlsSettings};
use crate::upstream::{self, Budget, Upstream, UpstreamSettings};
use crate::workers::{self, Workers};

pub struct RunningProxy {
    admin: SocketAddr,
    cache: Arc<Cache>,
    draining: CancellationToken,
    tracker: TaskTracker,
    accepting: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    workers: Arc<Workers>,
}

/// The bound sockets, before anything serves on them.
struct Sockets {
    public: TcpListener,
    tls: Option<(TcpListener, Arc<ServerConfig>)>,
    /// `--oidc-listen`, its bound address, and its TLS when `--oidc-tls-*` are set.
    oidc: Option<(TcpListener, SocketAddr, Option<Arc<ServerConfig>>)>,
    admin: TcpListener,
    /// The bound addresses (a port of 0 is known now).
    listen: SocketAddr,
    tls_listen: Option<SocketAddr>,
    admin_addr: SocketAddr,
    /// Caught before anything is announced: SIGHUP's default action ends the process.
    hup: Signal,
}

/// What the serving tasks share.
struct Parts {
    router: Arc<Router>,
    cache: Arc<Cache>,
    admin: Arc<Admin>,
    /// `--export-to`: the copy kept from the served documents.
    exporter: Option<Exporter>,
}

impl RunningProxy {
    /// Binds the listeners and starts serving; the OIDC cache primes in the background.
    pub async fn start(config: &Config) -> Result<RunningProxy, StartError> {
        Self::start_on(config, None).await
    }

    /// As `start`, on an already bound public listener (the demo needs its
    /// address, the issuer, before the proxy starts).
    pub(crate) async fn start_on(config: &Config, public: Option<TcpListener>) -> Result<RunningProxy, StartError> {
        config.check()?;
        let metrics = Arc::new(Metrics::new());
        let via = process_id()?;
        let workers = Workers::start(workers::resolve(config.threads)).map_err(StartError::io("serving threads"))?;
        let workers = Arc::new(workers);
        let upstreams = upstreams(config, &metrics, &via)?;
        let tls_stores = load_certificates(config, &metrics)?;
        let exporter = config
            .export
            .as_ref()
            .map(|settings| exporter(config, settings, &metrics))
            .transpose()?;
        let error_pages = config
            .services
            .error_pages
            .as_deref()
            .map(ErrorPages::load)
            .transpose()
            .map_err(|e| StartError::File(format!("--error-pages: {e}").into()))?;
        let sockets = bind_all(config, public, tls_stores.clone()).await?;
        let (listen, tls_listen, admin) = (sockets.listen, sockets.tls_listen, sockets.admin_addr);
        let oidc_listen = sockets.oidc.as_ref().map(|(_, addr, _)| *addr);
        let own: Vec<SocketAddr> = [Some(listen), tls_listen, oidc_listen, Some(admin)]
            .into_iter()
            .flatten()
            .collect();
        if let Some(listener) = upstream::own_listener(&config.upstream, &own, config.connect_timeout).await {
            return Err(ConfigError::UpstreamIsSelf {
                upstream: config.upstream.to_string(),
                listener,
            }
            .into());
        }

        let draining = CancellationToken::new();
        let tracker = TaskTracker::new();
        let parts = build(
            config,
            upstreams,
            via,
            &metrics,
            tls_listen,
            (&draining, &tracker),
            (exporter, error_pages, tls_stores.acme.clone()),
        );
        tracing::info!(
            listen = %listen,
            tls_listen = tls_listen.map(|a| a.to_string()),
            oidc_listen = oidc_listen.map(|a| a.to_string()),
            admin = %admin,
            upstream = %config.upstream,
            forwarded_proto = config.forwarded_proto.as_str(),
            threads = workers.count(),
            "listening"
        );
        let cache = parts.cache.clone();
        let (accepting, background) = spawn(
            config,
            sockets,
            parts,
            tls_stores,
            &metrics,
            (&draining, &tracker, &workers),
        );
        Ok(RunningProxy {
            admin,
            cache,
            draining,
            tracker,
            accepting,
            background,
            workers,
        })
    }

    /// The admin listener's address (the port is known once bound).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Both OIDC documents are held: the proxy answers them without GitLab.
    pub fn oidc_warm(&self) -> bool {
        self.cache.warm()
    }

    /// Stops accepting, lets in-flight work finish within `grace` (or until
    /// `interrupt` resolves), then stops the background tasks.
    pub async fn shutdown(self, grace: Duration, interrupt: impl Future<Output = &'static str>) {
        self.draining.cancel();
        for listener in self.accepting {
            let _ = listener.await;
        }
        self.tracker.close();
        tokio::select! {
            () = self.tracker.wait() => tracing::info!("all requests and upgraded connections finished"),
            () = tokio::time::sleep(grace) => {
                tracing::warn!(remaining = self.tracker.len(), "grace period over; closing what is left")
            }
            signal = interrupt => tracing::warn!(signal, remaining = self.tracker.len(), "second signal; closing what is left"),
        }
        for task in self.background {
            task.abort();
        }
        self.workers.stop();
    }
}

/// The clients to GitLab: the pass-through's, within `--max-upstream-connections`,
/// and the OIDC refresher's own, outside it, so a GitLab swamped by clients
/// cannot keep the documents from being refreshed. `--upstream-ca` is read here.
/// The other services (`--route`, KAS) get a client each, with a budget of
/// `--max-upstream-connections` of their own: a registry push cannot starve GitLab.
struct Upstreams {
    passthrough: Arc<Upstream>,
    oidc: Arc<Upstream>,
    routes: Vec<(HostPattern, Arc<Upstream>)>,
    kas: Option<Arc<Upstream>>,
    kas_k8s_proxy: Option<Arc<Upstream>>,
}

fn upstreams(config: &Config, metrics: &Arc<Metrics>, via: &ViaId) -> Result<Upstreams, StartError> {
    let budget = || {
        Some(Budget::new(
            config.max_upstream_connections,
            config.connect_timeout,
            metrics.clone(),
        ))
    };
    let client = |target: &UpstreamTarget| upstream_to(target, config, via, budget());
    let services = &config.services;
    Ok(Upstreams {
        passthrough: client(&config.upstream)?,
        oidc: upstream_to(&config.upstream, config, via, None)?,
        routes: services
            .routes
            .iter()
            .map(|r| Ok((r.host.clone(), client(&r.upstream)?)))
            .collect::<Result<_, StartError>>()?,
        kas: services.kas.as_ref().map(client).transpose()?,
        kas_k8s_proxy: services.kas_k8s_proxy.as_ref().map(client).transpose()?,
    })
}

/// A client of `target` (with `--upstream-ca` and the timeouts), within `budget` if any.
fn upstream_to(
    target: &UpstreamTarget,
    config: &Config,
    via: &ViaId,
    budget: Option<Arc<Budget>>,
) -> Result<Arc<Upstream>, StartError> {
    let settings = UpstreamSettings {
        via: via.clone(),
        target: target.clone(),
        extra_ca: config.upstream_ca.clone(),
        connect_timeout: config.connect_timeout,
        response_timeout: config.idle_timeout,
    };
    Upstream::new(&settings, budget).map(Arc::new).map_err(|e| match e {
        // rustls refusing its own defaults is no mistake of the user's.
        upstream::SetupError::Config(_) => StartError::Tls(e.into()),
        _ => StartError::File(e.into()),
    })
}

/// The OIDC documents' cache, fetching through `upstream`.
fn new_cache(config: &Config, upstream: Arc<Upstream>, metrics: &Arc<Metrics>) -> Arc<Cache> {
    let fetcher = Fetcher::new(upstream, config.oidc.upstream_timeout);
    let style = Style::new(config.oidc.max_age, config.compression);
    Cache::new(
        config.oidc.clone(),
        fetcher,
        config.upstream.host(),
        metrics.clone(),
        style,
    )
}

/// `gitlab-oidc-proxy export`: the OIDC documents from GitLab, copied under
/// `settings.issuer` to `settings.target` once, or every `--refresh` until a
/// signal. No listener: only the refresher's connections to GitLab.
pub async fn export(config: &Config, settings: &ExportSettings, once: bool) -> Result<u8, StartError> {
    let cache = oidc_cache(config)?;
    let exporter = exporter(config, settings, &Arc::new(Metrics::new()))?;
    let mut signals = crate::shutdown::Signals::install().map_err(StartError::io("cannot install signal handlers"))?;
    tokio::select! {
        code = export::run(cache, exporter, config.oidc.refresh, once) => Ok(code),
        // Keeping the copy in sync ends well on a signal; a single pass cut short did not happen.
        _ = signals.recv() => Ok(u8::from(once)),
    }
}

/// The copy's writer; a target that cannot be used (an S3 setting) stops the start.
fn exporter(config: &Config, settings: &ExportSettings, metrics: &Arc<Metrics>) -> Result<Exporter, StartError> {
    Exporter::new(settings, &config.oidc.jwks_path, config.oidc.max_age, metrics.clone())
        .map_err(|e| StartError::File(e.into()))
}

/// `gitlab-oidc-proxy export --print-jwks`: the key set as the proxy serves it
/// (GitLab's key sets united), for consumers that take pinned keys.
pub async fn print_jwks(config: &Config) -> Result<u8, StartError> {
    let cache = oidc_cache(config)?;
    let report = cache.refresh().await;
    match (cache.keys(), report.keys) {
        (Some(keys), Ok(())) => {
            println!("{}", String::from_utf8_lossy(&keys.doc.body));
            Ok(0)
        }
        (_, Err(e)) => {
            eprintln!("error: no key set from GitLab: {e}");
            Ok(1)
        }
        (None, Ok(())) => Ok(1),
    }
}

/// A cache of the OIDC documents with its own connections to GitLab (no
/// pass-through client: nothing but the refresher talks to GitLab here).
fn oidc_cache(config: &Config) -> Result<Arc<Cache>, StartError> {
    config.check()?;
    let via = process_id()?;
    Ok(new_cache(
        config,
        upstream_to(&config.upstream, config, &via, None)?,
        &Arc::new(Metrics::new()),
    ))
}

/// A name for this process in `Via`, random so that each instance has its own.
fn process_id() -> Result<ViaId, StartError> {
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes).map_err(|_| StartError::Io {
        what: "reading random bytes for the Via name",
        source: std::io::Error::other("the system's random source failed"),
    })?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(ViaId::new(hex))
}

/// The certificates and keys (`--tls-*`, `--oidc-tls-*`), checked before any
/// socket is bound.
fn load_certificates(config: &Config, metrics: &Arc<Metrics>) -> Result<TlsStores, StartError> {
    let t = &config.tls;
    let main = load_certificate(config, (&t.cert, &t.key), "main", metrics)?;
    let dir = match (&t.cert_dir, &main) {
        (Some(dir), Some(default)) => {
            let loaded = CertDir::load(dir, default.settings().clone(), metrics.clone())
                .map_err(|e| StartError::File(format!("--tls-cert-dir {e}").into()))?;
            tracing::info!(dir = %dir.display(), names = ?loaded.names(), "TLS pairs by SNI");
            Some(loaded)
        }
        _ => None,
    };
    let acme = t
        .acme
        .clone()
        .map(|settings| Acme::new(settings, metrics.clone()))
        .transpose()
        .map_err(|e| StartError::File(e.into()))?;
    Ok(TlsStores {
        main,
        dir,
        oidc: load_certificate(config, (&t.oidc_cert, &t.oidc_key), "oidc", metrics)?,
        acme,
    })
}

/// The certificate stores of the TLS listeners, where configured.
#[derive(Clone)]
struct TlsStores {
    main: Option<Arc<CertStore>>,
    /// `--tls-cert-dir`: more pairs for the main TLS listener, by SNI.
    dir: Option<Arc<CertDir>>,
    oidc: Option<Arc<CertStore>>,
    /// `--acme-domain`: the ACME pair and challenges, for the main TLS listener.
    acme: Option<Arc<Acme>>,
}

fn load_certificate(
    config: &Config,
    (cert, key): (&Option<std::path::PathBuf>, &Option<std::path::PathBuf>),
    listener: &'static str,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<CertStore>>, StartError> {
    let t = &config.tls;
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let settings = TlsSettings {
        cert: cert.clone(),
        key: key.clone(),
        hosts: config.oidc.https_hosts(),
        strict: t.strict_chain,
        watch_interval: t.watch_interval,
        listener,
        sni: None,
    };
    CertStore::load(settings, metrics.clone())
        .map(Some)
        .map_err(|e| StartError::File(e.into()))
}

/// A listening socket on `addr`; the error names the address.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// The address a listener is bound to (a port of 0 is known now).
pub(crate) fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(StartError::io("reading a listener's address"))
}

async fn bind_all(config: &Config, public: Option<TcpListener>, stores: TlsStores) -> Result<Sockets, StartError> {
    let server_config = |store: Arc<dyn rustls::server::ResolvesServerCert>, acme_alpn| {
        tls::server_config(store, acme_alpn).map_err(|e| StartError::Tls(e.into()))
    };
    let public = match public {
        Some(listener) => listener,
        None => bind(config.listen).await?,
    };
    let tls = match config.tls.listen {
        Some(addr) if stores.main.is_some() || stores.acme.is_some() => {
            let acme_alpn = stores.acme.as_ref().is_some_and(|a| a.wants_alpn());
            let resolver = SniResolver {
                default: stores.main,
                dir: stores.dir,
                acme: stores.acme,
            };
            Some((bind(addr).await?, server_config(Arc::new(resolver), acme_alpn)?))
        }
        _ => None,
    };
    let oidc = match config.oidc_listen {
        Some(addr) => {
            let listener = bind(addr).await?;
            let local = local_addr(&listener)?;
            let tls = stores.oidc.map(|store| server_config(store, false)).transpose()?;
            Some((listener, local, tls))
        }
        None => None,
    };
    let admin = bind(config.admin_listen).await?;
    let hup = signal(SignalKind::hangup()).map_err(StartError::io("cannot catch SIGHUP"))?;
    Ok(Sockets {
        listen: local_addr(&public)?,
        tls_listen: tls.as_ref().map(|(l, _)| local_addr(l)).transpose()?,
        admin_addr: local_addr(&admin)?,
        public,
        tls,
        oidc,
        admin,
        hup,
    })
}

/// The routes and the router in front of them.
fn build(
    config: &Config,
    upstreams: Upstreams,
    via: ViaId,
    metrics: &Arc<Metrics>,
    tls_listen: Option<SocketAddr>,
    (draining, tracker): (&CancellationToken, &TaskTracker),
    (exporter, error_pages, acme): (Option<Exporter>, Option<ErrorPages>, Option<Arc<Acme>>),
) -> Parts {
    let o = &config.oidc;
    let cache = new_cache(config, upstreams.oidc, metrics);
    let timeouts = Timeouts {
        body_idle: config.idle_timeout,
        client_body_idle: config.client_body_timeout,
        upgrade_idle: config.upgrade_idle_timeout,
    };
    let to = |upstream| Passthrough::new(upstream, timeouts, tracker.clone(), metrics.clone());
    let mut routes = Routes::default();
    for (host, upstream) in upstreams.routes {
        routes.add(host, to(upstream));
    }
    routes.set_kas(upstreams.kas.map(to), upstreams.kas_k8s_proxy.map(to));
    let passthrough = to(upstreams.passthrough);
    let oidc = Oidc::new(cache.clone(), metrics.clone());
    let redirect = match tls_listen {
        Some(addr) if config.tls.redirect_http => Some(redirect::Target {
            authority: o.external_url.as_ref().filter(|u| u.https).map(|u| u.host.clone()),
            tls_port: addr.port(),
        }),
        _ => None,
    };
    let hsts = config
        .tls
        .hsts
        .map(|secs| HeaderValue::from_str(&format!("max-age={secs}")).expect("digits are a valid header value"));
    let settings = RouterSettings {
        trusted_proxies: config.trusted_proxies.clone(),
        redirect,
        hsts,
        compression: config.compression,
        default_host: o
            .external_url
            .as_ref()
            .and_then(|u| HeaderValue::from_str(&u.host).ok()),
        via,
        error_pages,
        acme_webroot: config.services.acme_webroot.as_deref().map(Webroot::new),
        acme,
    };
    let assets = AssetsCache::new(config.assets_cache, metrics.clone());
    let router =
        Arc::new(Router::new(oidc, (passthrough, routes), settings, metrics.clone()).with_assets_cache(assets));
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        cache: cache.clone(),
        draining: draining.clone(),
        refresh_from: config.admin_refresh,
        export: exporter.as_ref().map(Exporter::status),
    });
    Parts {
        router,
        cache,
        admin,
        exporter,
    }
}

/// Starts every task: (the accept loops, the background tasks).
fn spawn(
    config: &Config,
    sockets: Sockets,
    parts: Parts,
    tls_stores: TlsStores,
    metrics: &Arc<Metrics>,
    (draining, tracker, workers): (&CancellationToken, &TaskTracker, &Arc<Workers>),
) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
    let mut background = vec![
        tokio::spawn(admin::serve(sockets.admin, parts.admin)),
        tokio::spawn(parts.cache.clone().run_refresher()),
    ];
    if let Some(exporter) = parts.exporter {
        background.push(tokio::spawn(export::follow(
            parts.cache.clone(),
            exporter,
            config.oidc.refresh,
        )));
    }
    // Each certificate store has its own watcher; SIGHUP reaches every one.
    let mut reloads = Vec::new();
    for store in [tls_stores.main, tls_stores.oidc].into_iter().flatten() {
        let (hup_tx, hup_rx) = mpsc::channel(1);
        reloads.push(hup_tx);
        background.push(tokio::spawn(store.watch(hup_rx)));
    }
    if let Some(acme) = tls_stores.acme {
        background.push(tokio::spawn(acme.run()));
    }
    if let Some(dir) = tls_stores.dir {
        let (hup_tx, hup_rx) = mpsc::channel(1);
        reloads.push(hup_tx);
        background.push(tokio::spawn(dir.watch(hup_rx)));
    }
    background.push(tokio::spawn(forward_sighup(sockets.hup, reloads)));
    let proxy_protocol = config.proxy_protocol.then(|| config.trusted_proxies.clone());
    let settings = |kind, proto, tls, local| ListenerSettings {
        kind,
        proto,
        local,
        header_timeout: config.header_timeout,
        tls,
        handshake_timeout: config.tls.handshake_timeout,
        proxy_protocol: proxy_protocol.clone(),
    };
    let accept = |listener, settings| {
        tokio::spawn(listener::serve(
            listener,
            parts.router.clone(),
            settings,
            metrics.clone(),
            draining.clone(),
            (tracker.clone(), workers.clone()),
        ))
    };
    let mut accepting = vec![accept(
        sockets.public,
        settings(ListenerKind::Plain, config.forwarded_proto, None, sockets.listen),
    )];
    if let (Some((listener, tls_config)), Some(local)) = (sockets.tls, sockets.tls_listen) {
        let acceptor = TlsAcceptor::from(tls_config);
        accepting.push(accept(
            listener,
            settings(ListenerKind::Tls, Proto::Https, Some(acceptor), local),
        ));
    }
    if let Some((listener, local, tls_config)) = sockets.oidc {
        let proto = if tls_config.is_some() {
            Proto::Https
        } else {
            config.forwarded_proto
        };
        let acceptor = tls_config.map(TlsAcceptor::from);
        accepting.push(accept(listener, settings(ListenerKind::Oidc, proto, acceptor, local)));
    }
    (accepting, background)
}

/// SIGHUP reloads the certificates. It is caught even without TLS, because its
/// default action would end the process (`systemctl reload` sends it).
async fn forward_sighup(mut hup: Signal, reloads: Vec<mpsc::Sender<()>>) {
    while hup.recv().await.is_some() {
        if reloads.is_empty() {
            tracing::info!("SIGHUP: nothing to reload without --tls-listen or --oidc-tls-cert");
        }
        for reload in &reloads {
            if reload.try_send(()).is_err() {
                tracing::debug!("SIGHUP: a reload is already pending");
            }
        }
    }
}
