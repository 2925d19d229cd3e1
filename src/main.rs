#![forbid(unsafe_code)]
//! Wiring only: parse the command line, start the proxy, run until a signal.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use gitlab_oidc_proxy::app::{RunningProxy, StartError};
use gitlab_oidc_proxy::config::{Cli, Command, LogFormat, ServeArgs};
use gitlab_oidc_proxy::demo;
use gitlab_oidc_proxy::shutdown::Signals;
use gitlab_oidc_proxy::telemetry;

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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            telemetry::init(args.log_format, "info");
            runtime.block_on(serve(*args)).map(|()| 0)
        }
        Command::Demo(args) => {
            // The demo's own table is the output; logs only for what goes wrong.
            telemetry::init(LogFormat::Text, "warn");
            runtime.block_on(demo::run(args)).map_err(StartError::Runtime)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(StartError::Config(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(StartError::Runtime(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// clap's message without the usage block, folded onto one line.
fn one_line(rendered: &str) -> String {
    let message = rendered.split("\n\nUsage:").next().unwrap_or(rendered);
    let message = message.split("\n\nFor more information").next().unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn serve(args: ServeArgs) -> Result<(), StartError> {
    // Before the listeners announce themselves, so an early SIGTERM is graceful too.
    let mut signals =
        Signals::install().map_err(|e| StartError::Runtime(format!("cannot install signal handlers: {e}")))?;
    let proxy = RunningProxy::start(&args).await?;
    let signal = signals.recv().await;
    tracing::info!(
        signal,
        grace_secs = args.shutdown_grace.as_secs_f64(),
        "shutting down: no longer accepting"
    );
    proxy.shutdown(args.shutdown_grace, signals.recv()).await;
    Ok(())
}
