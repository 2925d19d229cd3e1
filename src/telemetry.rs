//! Log output: text or JSON lines on stderr, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::log_writer;

/// `default` applies when `RUST_LOG` is unset.
pub fn init(format: LogFormat, default: &str) {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // rustls warns once per handshake about client quirks (an IP address sent as
    // SNI, as wrk and some libraries do): any client could flood the log. Failed
    // handshakes are counted in a metric instead. RUST_LOG=rustls=… still wins.
    if !from_env.is_some_and(|v| v.contains("rustls")) {
        filter = filter.add_directive("rustls=error".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Buffered, written by a thread of its own: no runtime thread waits on stderr.
        .with_writer(log_writer::Stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
    crate::access_log::configure(format);
}

/// Writes out the log lines still held in memory: call before exiting.
pub fn flush() {
    log_writer::flush();
}
