#![forbid(unsafe_code)]
//! Wiring only: parse the command line, build the pieces, run until a signal.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use clap::error::ErrorKind;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use gitlab_oidc_proxy::admin::{self, Admin};
use gitlab_oidc_proxy::config::{Cli, Command, ServeArgs};
use gitlab_oidc_proxy::listener::{self, ListenerSettings};
use gitlab_oidc_proxy::metrics::Metrics;
use gitlab_oidc_proxy::passthrough::Passthrough;
use gitlab_oidc_proxy::router::Router;
use gitlab_oidc_proxy::shutdown::Signals;
use gitlab_oidc_proxy::telemetry;
use gitlab_oidc_proxy::upstream::{Upstream, UpstreamSettings};

/// Bad configuration exits 2, a failure to start or run exits 1.
enum Fail {
    Config(String),
    Runtime(String),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    let Command::Serve(args) = cli.command;
    telemetry::init(args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Config(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Fail::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// clap's message without the usage block, folded onto one line.
fn one_line(rendered: &str) -> String {
    let message = rendered.split("\n\nUsage:").next().unwrap_or(rendered);
    let message = message
        .split("\n\nFor more information")
        .next()
        .unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn serve(args: ServeArgs) -> Result<(), Fail> {
    let metrics = Arc::new(Metrics::new());
    let upstream = Upstream::new(&UpstreamSettings {
        target: args.upstream.clone(),
        extra_ca: args.upstream_ca.clone(),
        connect_timeout: args.connect_timeout,
        response_timeout: args.upstream_idle_timeout,
    })
    .map_err(Fail::Config)?;

    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| Fail::Runtime(format!("cannot listen on {addr}: {e}")))
    };
    let public = bind(args.listen).await?;
    let admin_listener = bind(args.admin_listen).await?;
    let mut signals = Signals::install()
        .map_err(|e| Fail::Runtime(format!("cannot install signal handlers: {e}")))?;

    let draining = CancellationToken::new();
    let tracker = TaskTracker::new();
    let passthrough = Passthrough::new(
        Arc::new(upstream),
        args.upstream_idle_timeout,
        args.upgrade_idle_timeout,
        tracker.clone(),
        metrics.clone(),
    );
    let router = Arc::new(Router::new(
        passthrough,
        args.trusted_proxies.clone(),
        metrics.clone(),
    ));
    let admin = Arc::new(Admin {
        metrics: metrics.clone(),
        draining: draining.clone(),
    });

    tracing::info!(
        listen = %local(&public),
        admin = %local(&admin_listener),
        upstream = %args.upstream,
        forwarded_proto = args.forwarded_proto.as_str(),
        "listening"
    );
    tokio::spawn(admin::serve(admin_listener, admin));
    let settings = ListenerSettings {
        proto: args.forwarded_proto,
        header_timeout: args.header_timeout,
    };
    let accepting = tokio::spawn(listener::serve(
        public,
        router,
        settings,
        metrics,
        draining.clone(),
        tracker.clone(),
    ));

    let signal = signals.recv().await;
    tracing::info!(
        signal,
        grace_secs = args.shutdown_grace.as_secs_f64(),
        "shutting down: no longer accepting"
    );
    draining.cancel();
    let _ = accepting.await;
    tracker.close();
    tokio::select! {
        () = tracker.wait() => tracing::info!("all requests and upgraded connections finished"),
        () = tokio::time::sleep(args.shutdown_grace) => {
            tracing::warn!(remaining = tracker.len(), "grace period over; closing what is left")
        }
        signal = signals.recv() => tracing::warn!(signal, remaining = tracker.len(), "second signal; closing what is left"),
    }
    Ok(())
}

fn local(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into())
}
