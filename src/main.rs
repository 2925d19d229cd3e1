#![forbid(unsafe_code)]
//! Wiring only: parse the command line, start the proxy or the demo, run until
//! a signal, and turn the outcome into the exit status `--help` documents.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use gitlab_oidc_proxy::StartError;
use gitlab_oidc_proxy::app::{self, RunningProxy};
use gitlab_oidc_proxy::config::{Config, LogFormat};
use gitlab_oidc_proxy::demo;
use gitlab_oidc_proxy::healthcheck::probe;
use gitlab_oidc_proxy::shutdown::Signals;
use gitlab_oidc_proxy::telemetry;

use cli::{CheckArgs, Cli, Command, HealthcheckArgs};

/// mimalloc: after a burst of connections closes, glibc's malloc kept the memory
/// (RSS grew burst after burst); mimalloc returns freed pages to the system, and
/// costs fewer instructions per allocation (README, Performance). Linked as
/// `malloc` itself (the crate's `override` feature), not as the global
/// allocator: that one sends every allocation down mimalloc's aligned path,
/// which is slow for sizes that are not a power of two. The feature
/// `system-allocator` leaves it out, for heap profilers that watch malloc.
#[cfg(not(feature = "system-allocator"))]
extern crate mimalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            // A HEALTHCHECK may only exit 0 or 1 (docker reserves 2).
            let healthcheck = std::env::args().nth(1).is_some_and(|a| a == "healthcheck");
            return ExitCode::from(if healthcheck { 1 } else { 2 });
        }
    };
    // The probe runs every few seconds in a container: one thread is plenty.
    // `serve` runs its accept loops, admin listener and refresher here and
    // starts its serving threads itself (--threads), each a single-threaded
    // runtime like this one, and keeps their connections' idle timers.
    let runtime = match &cli.command {
        Command::Healthcheck(_) | Command::Serve(_) => {
            tokio::runtime::Builder::new_current_thread().enable_all().build()
        }
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            telemetry::init(args.log_format, "info");
            runtime.block_on(serve(args.into_config())).map(|()| 0)
        }
        Command::Demo(args) => {
            // The demo's own table is the output; logs only for what goes wrong.
            telemetry::init(LogFormat::Text, "warn");
            runtime.block_on(demo::run(args.into_settings()))
        }
        Command::Healthcheck(args) => Ok(runtime.block_on(healthcheck(args))),
        Command::Check(args) => {
            telemetry::init(LogFormat::Text, "warn");
            Ok(check(args, &runtime))
        }
        Command::Export(args) => {
            telemetry::init(args.log_format, "info");
            let print = args.print_jwks;
            let once = args.once;
            match args.into_parts() {
                (config, _) if print => runtime.block_on(app::print_jwks(&config)),
                (config, Some(export)) => runtime.block_on(app::export(&config, &export, once)),
                // clap requires --to and --issuer without --print-jwks.
                (_, None) => Ok(2),
            }
        }
    };
    // The access lines of the last requests are still in memory.
    telemetry::flush();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// clap's message without the usage block, folded onto one line.
fn one_line(rendered: &str) -> String {
    let message = rendered.split("\n\nUsage:").next().unwrap_or(rendered);
    let message = message.split("\n\nFor more information").next().unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn serve(config: Config) -> Result<(), StartError> {
    // Before the listeners announce themselves, so an early SIGTERM is graceful too.
    let mut signals = Signals::install().map_err(StartError::io("cannot install signal handlers"))?;
    let proxy = RunningProxy::start(&config).await?;
    let signal = signals.recv().await;
    tracing::info!(
        signal,
        grace_secs = config.shutdown_grace.as_secs_f64(),
        "shutting down: no longer accepting"
    );
    proxy.shutdown(config.shutdown_grace, signals.recv()).await;
    Ok(())
}

/// The report on stdout (text or JSON); 0 nothing failed, 1 a step failed, 2 bad usage.
fn check(args: CheckArgs, runtime: &tokio::runtime::Runtime) -> u8 {
    let json = args.json;
    let settings = match args.into_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match runtime.block_on(gitlab_oidc_proxy::check::run(&settings)) {
        Ok(report) => {
            let out = if json {
                format!("{:#}\n", report.to_json())
            } else {
                report.to_text()
            };
            print!("{out}");
            report.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

/// One line either way; 0 ready, 1 not.
async fn healthcheck(args: HealthcheckArgs) -> u8 {
    match probe(args.admin_listen, args.timeout).await {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("not ready: {e}");
            1
        }
    }
}
