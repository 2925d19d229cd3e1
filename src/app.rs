//! Starting and stopping the whole proxy: listeners, admin, the OIDC cache and
//! its refresher. Used by `serve` and by `demo`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::config::{OidcArgs, Proto, ServeArgs, Switch, UpstreamTarget};
use crate::listener::{self, ListenerSettings};
use crate::metrics::Metrics;
use crate::oidc::cache::Cache;
use crate::oidc::fetch::Fetcher;
use crate::oidc::{Oidc, OidcSettings};
use crate::passthrough::Passthrough;
use crate::redirect;
use crate::router::{ListenerKind, Router, RouterSettings};
use crate::tls::{self, CertStore, TlsSettings};
use crate::upstream::{Upstream, UpstreamSettings};

/// Bad configuration (exit 2) or a failure to start (exit 1).
#[derive(Debug)]
pub enum StartError {
    Config(String),
    Runtime(String),
}

pub struct RunningProxy {
    pub listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    draining: CancellationToken,
    tracker: TaskTracker,
    accepting: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Binds both listeners and starts serving; the OIDC cache primes in the background.
    pub async fn start(args: &ServeArgs) -> Result<RunningProxy, StartError> {
        Self::start_with(args, None).await
    }

    /// As `start`, on an already bound public listener (the demo needs its
    /// address, the issuer, before the proxy starts).
    pub async fn start_with(args: &ServeArgs, public: Option<TcpListener>) -> Result<RunningProxy, StartError> {
        let metrics = Arc::new(Metrics::new());
        let upstream = Arc::new(
            Upstream::new(&UpstreamSettings {
                target: args.upstream.clone(),
                extra_ca: args.upstream_ca.clone(),
                connect_timeout: args.connect_timeout,
                response_timeout: args.idle_timeout,
            })
            .map_err(StartError::Config)?,
        );
        let o = &args.oidc;
        let settings = OidcSettings {
            jwks_path: o.jwks_path.clone(),
            external_url: o.external_url.clone(),
            extra_issuers: o.issuer.clone(),
            max_age: o.max_age,
            refresh: o.refresh,
            upstream_timeout: o.upstream_timeout,
            stale_if_error: o.stale_if_error,
        };
        settings.check().map_err(StartError::Config)?;
        if args.tls.redirect_http && args.forwarded_proto == Proto::Https {
            return Err(StartError::Config(
                "--redirect-http with --forwarded-proto https: the plain listener would be https already".into(),
            ));
        }
        if args.proxy_protocol && args.trusted_proxies.0.is_empty() {
            return Err(StartError::Config(
                "--proxy-protocol needs --trusted-proxies naming the load balancers allowed to send it".into(),
            ));
        }
        let tls_store = match (&args.tls.tls_cert, &args.tls.tls_key) {
            (Some(cert), Some(key)) => Some(
                CertStore::load(
                    TlsSettings {
                        cert: cert.clone(),
                        key: key.clone(),
                        hosts: tls_hosts(o),
                        strict: args.tls.strict_chain,
                        watch_interval: args.tls.tls_watch_interval,
                    },
                    metrics.clone(),
                )
                .map_err(StartError::Config)?,
            ),
            _ => None,
        };
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))
        };
        let public = match public {
            Some(listener) => listener,
            None => bind(args.listen).await?,
        };
        let tls_listener = match args.tls.tls_listen {
            Some(addr) if tls_store.is_some() => Some(bind(addr).await?),
            _ => None,
        };
        let admin_listener = bind(args.admin_listen).await?;
        let local = |l: &TcpListener| l.local_addr().map_err(|e| StartError::Runtime(e.to_string()));
        let (listen, admin_addr) = (local(&public)?, local(&admin_listener)?);
        let tls_listen = tls_listener.as_ref().map(local).transpose()?;
        let tls_config = tls_store
            .clone()
            .map(tls::server_config)
            .transpose()
            .map_err(StartError::Runtime)?;
        // Caught before anything is announced: SIGHUP's default action ends the process.
        let hup = signal(SignalKind::hangup()).map_err(|e| StartError::Runtime(format!("cannot catch SIGHUP: {e}")))?;

        let upstream_host = match &args.upstream {
            UpstreamTarget::Http { authority } | UpstreamTarget::Https { authority } => authority.to_string(),
            UpstreamTarget::Unix { .. } => "localhost".to_owned(),
        };
        let fetcher = Fetcher::new(upstream.clone(), o.upstream_timeout);
        let cache = Cache::new(settings, fetcher, upstream_host, metrics.clone());

        let draining = CancellationToken::new();
        let tracker = TaskTracker::new();
        let passthrough = Passthrough::new(
            upstream,
            args.idle_timeout,
            args.upgrade_idle_timeout,
            tracker.clone(),
            metrics.clone(),
        );
        let compression = args.compression == Switch::On;
        let oidc = Oidc::new(cache.clone(), metrics.clone(), compression);
        let redirect = match tls_listen {
            Some(addr) if args.tls.redirect_http => Some(redirect::Target {
                authority: o.external_url.as_ref().filter(|u| u.https).map(|u| u.host.clone()),
                tls_port: addr.port(),
            }),
            _ => None,
        };
        let hsts = args
            .tls
            .hsts
            .map(|secs| HeaderValue::from_str(&format!("max-age={secs}")).expect("digits are a valid header value"));
        let router = Arc::new(Router::new(
            oidc,
            passthrough,
            RouterSettings {
                trusted_proxies: args.trusted_proxies.0.clone(),
                redirect,
                hsts,
                compression,
            },
            metrics.clone(),
        ));
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            cache: cache.clone(),
            draining: draining.clone(),
        });

        tracing::info!(
            listen = %listen,
            tls_listen = tls_listen.map(|a| a.to_string()),
            admin = %admin_addr,
            upstream = %args.upstream,
            forwarded_proto = args.forwarded_proto.as_str(),
            "listening"
        );
        let mut background = vec![
            tokio::spawn(admin::serve(admin_listener, admin)),
            tokio::spawn(cache.clone().run_refresher()),
        ];
        let (hup_tx, hup_rx) = mpsc::channel(1);
        background.push(tokio::spawn(forward_sighup(hup, hup_tx, tls_store.is_some())));
        if let Some(store) = &tls_store {
            background.push(tokio::spawn(store.clone().watch(hup_rx)));
        }
        let proxy_protocol = args.proxy_protocol.then(|| args.trusted_proxies.0.clone());
        let settings = |kind, proto, tls| ListenerSettings {
            kind,
            proto,
            header_timeout: args.header_timeout,
            tls,
            handshake_timeout: args.tls.tls_handshake_timeout,
            proxy_protocol: proxy_protocol.clone(),
        };
        let mut accepting = vec![tokio::spawn(listener::serve(
            public,
            router.clone(),
            settings(ListenerKind::Plain, args.forwarded_proto, None),
            metrics.clone(),
            draining.clone(),
            tracker.clone(),
        ))];
        if let (Some(l), Some(config)) = (tls_listener, tls_config) {
            accepting.push(tokio::spawn(listener::serve(
                l,
                router,
                settings(ListenerKind::Tls, Proto::Https, Some(TlsAcceptor::from(config))),
                metrics.clone(),
                draining.clone(),
                tracker.clone(),
            )));
        }
        Ok(RunningProxy {
            listen,
            tls_listen,
            admin: admin_addr,
            cache,
            metrics,
            draining,
            tracker,
            accepting,
            background,
        })
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
    }
}

/// Hosts of the https issuers: the certificate must be valid for each.
fn tls_hosts(o: &OidcArgs) -> Vec<String> {
    o.external_url
        .iter()
        .chain(&o.issuer)
        .filter(|i| i.https)
        .filter_map(|i| i.host.parse::<http::uri::Authority>().ok())
        .map(|a| a.host().trim_start_matches('[').trim_end_matches(']').to_owned())
        .collect()
}

/// SIGHUP reloads the certificate. It is caught even without TLS, because its
/// default action would end the process (`systemctl reload` sends it).
async fn forward_sighup(mut hup: Signal, reload: mpsc::Sender<()>, tls: bool) {
    while hup.recv().await.is_some() {
        if !tls {
            tracing::info!("SIGHUP: nothing to reload without --tls-listen");
        } else if reload.try_send(()).is_err() {
            tracing::debug!("SIGHUP: a reload is already pending");
        }
    }
}
