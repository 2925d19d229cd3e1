//! Starting and stopping the whole proxy: listeners, admin, the OIDC cache and
//! its refresher. Used by `serve` and by `demo`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::config::{ServeArgs, UpstreamTarget};
use crate::listener::{self, ListenerSettings};
use crate::metrics::Metrics;
use crate::oidc::cache::Cache;
use crate::oidc::fetch::Fetcher;
use crate::oidc::{Oidc, OidcSettings};
use crate::passthrough::Passthrough;
use crate::router::Router;
use crate::upstream::{Upstream, UpstreamSettings};

/// Bad configuration (exit 2) or a failure to start (exit 1).
#[derive(Debug)]
pub enum StartError {
    Config(String),
    Runtime(String),
}

pub struct RunningProxy {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    draining: CancellationToken,
    tracker: TaskTracker,
    accepting: JoinHandle<()>,
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
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Runtime(format!("cannot listen on {addr}: {e}")))
        };
        let public = match public {
            Some(listener) => listener,
            None => bind(args.listen).await?,
        };
        let admin_listener = bind(args.admin_listen).await?;
        let local = |l: &TcpListener| l.local_addr().map_err(|e| StartError::Runtime(e.to_string()));
        let (listen, admin_addr) = (local(&public)?, local(&admin_listener)?);

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
        let oidc = Oidc::new(cache.clone(), metrics.clone());
        let router = Arc::new(Router::new(
            oidc,
            passthrough,
            args.trusted_proxies.0.clone(),
            metrics.clone(),
        ));
        let admin = Arc::new(Admin {
            metrics: metrics.clone(),
            cache: cache.clone(),
            draining: draining.clone(),
        });

        tracing::info!(
            listen = %listen,
            admin = %admin_addr,
            upstream = %args.upstream,
            forwarded_proto = args.forwarded_proto.as_str(),
            "listening"
        );
        let background = vec![
            tokio::spawn(admin::serve(admin_listener, admin)),
            tokio::spawn(cache.clone().run_refresher()),
        ];
        let settings = ListenerSettings {
            proto: args.forwarded_proto,
            header_timeout: args.header_timeout,
        };
        let accepting = tokio::spawn(listener::serve(
            public,
            router,
            settings,
            metrics.clone(),
            draining.clone(),
            tracker.clone(),
        ));
        Ok(RunningProxy {
            listen,
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
        let _ = self.accepting.await;
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
