//! gitlab-oidc-proxy: a streaming reverse proxy for self-managed GitLab.
//!
//! Layers point one way. At the bottom, values: `config` (settings and their
//! parsers), `error`, `body`, `metrics`. Requests flow `listener` → `router` →
//! either `oidc` (documents held in memory) or `passthrough` → `upstream`. `app`
//! wires a [`config::Config`] into running tasks; `demo` and the `simulator`
//! sit on top. The command line (`cli.rs`) belongs to the binary, not to this
//! library.
//!
//! Public: what the binary and the integration tests use.

pub mod app;
pub mod check;
pub mod config;
pub mod demo;
pub mod export;
/// Entry points of the fuzz targets in `fuzz/` (feature `fuzzing`), and the test
/// that replays their corpus; not part of the proxy's interface.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod healthcheck;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;

mod access_log;
mod acme;
mod acme_webroot;
mod admin;
mod assets_cache;
mod body;
mod compress;
mod error;
mod error_pages;
mod headers;
mod idle;
mod listener;
mod log_writer;
mod metrics;
mod oidc;
mod passthrough;
mod proxy_protocol;
mod redirect;
mod router;
mod routes;
mod tls;
mod upstream;
mod woken;
mod workers;

pub use error::StartError;
