//! `--error-pages DIR`: GitLab's own branded 502/503 pages for the proxy's own
//! 502/503/504, to browsers only, as omnibus nginx's `error_page 502 /502.html`.
//! Git, API clients and runners keep the short plain-text answer; an error body
//! GitLab itself sent is never replaced (only the proxy's errors come here).

use std::path::Path;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};

/// Pages bigger than this are not GitLab's (its own are a few KiB).
const MAX_PAGE: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct ErrorPages {
    bad_gateway: Bytes,
    unavailable: Bytes,
}

impl ErrorPages {
    /// Reads `DIR/502.html` and `DIR/503.html` (GitLab ships both in
    /// `/opt/gitlab/embedded/service/gitlab-rails/public`).
    pub(crate) fn load(dir: &Path) -> std::io::Result<ErrorPages> {
        let read = |name: &str| -> std::io::Result<Bytes> {
            let path = dir.join(name);
            let context = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
            let size = std::fs::metadata(&path).map_err(context)?.len();
            if size > MAX_PAGE {
                return Err(std::io::Error::other(format!(
                    "{}: {size} bytes, more than an error page's 1 MiB",
                    path.display()
                )));
            }
            std::fs::read(&path).map(Bytes::from).map_err(context)
        };
        Ok(ErrorPages {
            bad_gateway: read("502.html")?,
            unavailable: read("503.html")?,
        })
    }

    /// The page for one of the proxy's own errors (to a client that reads HTML).
    pub(crate) fn page(&self, status: StatusCode) -> Option<Bytes> {
        let page = match status {
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => &self.bad_gateway,
            StatusCode::SERVICE_UNAVAILABLE => &self.unavailable,
            _ => return None,
        };
        Some(page.clone())
    }
}

/// A browser's `Accept` names `text/html` (with a non-zero q); git, curl and
/// API clients send `*/*` or nothing, and keep plain text.
pub(crate) fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            media.eq_ignore_ascii_case("text/html") && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn only_browsers_read_html() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(accepts_html(&accept(firefox)));
        assert!(accepts_html(&accept("TEXT/HTML; q=0.5")));
        assert!(!accepts_html(&accept("*/*")));
        assert!(!accepts_html(&accept("application/json")));
        assert!(!accepts_html(&accept("text/html;q=0")));
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn the_pages_come_from_the_directory_and_504_shows_502() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ErrorPages::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("502.html")
        );
        std::fs::write(dir.path().join("502.html"), "<p>502</p>").unwrap();
        std::fs::write(dir.path().join("503.html"), "<p>503</p>").unwrap();
        let pages = ErrorPages::load(dir.path()).unwrap();
        assert_eq!(pages.page(StatusCode::BAD_GATEWAY).unwrap(), "<p>502</p>");
        assert_eq!(pages.page(StatusCode::GATEWAY_TIMEOUT).unwrap(), "<p>502</p>");
        assert_eq!(pages.page(StatusCode::SERVICE_UNAVAILABLE).unwrap(), "<p>503</p>");
        assert!(pages.page(StatusCode::BAD_REQUEST).is_none());
    }
}
