//! Fetching one document from GitLab: bounded in time and size, 200 and JSON only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};

use crate::body;
use crate::error::DocError;
use crate::upstream::Upstream;

/// Larger answers are refused (a key set is a few KiB).
pub(crate) const MAX_BODY: usize = 1 << 20;

/// Where GitLab is asked, and as whom: the issuer's host and scheme, so GitLab
/// builds the same URLs it would for a client of that issuer.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub host: String,
    pub https: bool,
}

pub(crate) struct Fetcher {
    upstream: Arc<Upstream>,
    timeout: Duration,
}

impl Fetcher {
    pub(crate) fn new(upstream: Arc<Upstream>, timeout: Duration) -> Self {
        Fetcher { upstream, timeout }
    }

    pub(crate) async fn get(&self, path: &str, origin: &Origin) -> Result<Bytes, DocError> {
        let path_and_query = path
            .parse()
            .map_err(|_| DocError::Invalid(format!("bad path {path}")))?;
        let mut req = Request::get(self.upstream.uri_for(Some(&path_and_query)))
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("gitlab-oidc-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-forwarded-proto", if origin.https { "https" } else { "http" })
            .body(body::empty())
            .map_err(|e| DocError::Invalid(e.to_string()))?;
        if let Ok(host) = HeaderValue::from_str(&origin.host) {
            req.headers_mut().insert(header::HOST, host);
        }
        if origin.https {
            req.headers_mut()
                .insert("x-forwarded-ssl", HeaderValue::from_static("on"));
        }
        let exchange = async {
            let resp = self
                .upstream
                .send(req)
                .await
                .map_err(|e| DocError::Upstream(e.to_string()))?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Err(DocError::NotFound),
                other => return Err(DocError::Status(other.as_u16())),
            }
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.is_empty() && !content_type.to_ascii_lowercase().contains("json") {
                return Err(DocError::NotJson(format!("content type {content_type}")));
            }
            match Limited::new(resp.into_body(), MAX_BODY).collect().await {
                Ok(collected) => Ok(collected.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(DocError::TooLarge),
                Err(e) => Err(DocError::Upstream(format!("body: {e}"))),
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(DocError::Timeout))
    }
}
