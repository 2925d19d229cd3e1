//! gitlab-oidc-proxy: a streaming reverse proxy for self-managed GitLab.
//!
//! Data flows one way: `listener` → `router` → either `oidc` (documents held in
//! memory) or `passthrough` → `upstream`.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod compress;
pub mod config;
pub mod demo;
pub mod error;
pub mod headers;
pub mod listener;
pub mod metrics;
pub mod oidc;
pub mod passthrough;
pub mod proxy_protocol;
pub mod redirect;
pub mod router;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
pub mod tls;
pub mod upstream;
