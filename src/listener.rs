//! The public listener: accepts TCP connections, serves HTTP/1.1 and h2c on each,
//! and on shutdown stops accepting and lets every connection finish gracefully.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Proto;
use crate::metrics::Metrics;
use crate::router::{ConnInfo, Router};

pub struct ListenerSettings {
    pub proto: Proto,
    /// Longest time to receive a request's headers, and the idle keep-alive limit.
    pub header_timeout: Duration,
}

/// Accepts until `shutdown` fires. Connection tasks go into `tracker`.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let conn_info = ConnInfo {
            peer,
            proto: settings.proto,
        };
        let router = router.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        let header_timeout = settings.header_timeout;
        tracker.spawn(async move {
            metrics.open_connections.inc();
            // hyper's header timeout starts only once it knows the protocol; a
            // client that connects and says nothing is cut by this first deadline.
            let got_request = Arc::new(AtomicBool::new(false));
            let seen = got_request.clone();
            let service = service_fn(move |req| {
                seen.store(true, Ordering::Relaxed);
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.handle(req, conn_info).await) }
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let first_deadline = tokio::time::sleep(header_timeout);
            tokio::pin!(first_deadline);
            let mut first_checked = false;
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    () = &mut first_deadline, if !first_checked => {
                        first_checked = true;
                        if !got_request.load(Ordering::Relaxed) {
                            tracing::debug!(%peer, "no request within the header timeout; closing");
                            break;
                        }
                    }
                    () = shutdown.cancelled(), if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            metrics.open_connections.dec();
        });
    }
}
