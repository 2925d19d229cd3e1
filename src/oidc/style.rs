//! How the documents are answered: `Cache-Control`, CORS, `Vary`, and each
//! representation's headers, built once per publication rather than per request.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};

use crate::compress::Encoding;

/// How every document answer is dressed: made once, at start.
#[derive(Debug, Clone)]
pub(crate) struct Style {
    /// `public, max-age=<--max-age>`.
    cache_control: HeaderValue,
    /// Precompressed copies are served, so every answer varies on `Accept-Encoding`.
    pub(super) compression: bool,
}

impl Style {
    pub(crate) fn new(max_age: Duration, compression: bool) -> Self {
        Style {
            cache_control: HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
                .expect("digits are a valid header value"),
            compression,
        }
    }

    /// The headers every answer for the representation tagged `etag` carries, 304s too.
    pub(super) fn validators(&self, h: &mut HeaderMap, etag: &HeaderValue) {
        h.insert(header::ETAG, etag.clone());
        h.insert(header::CACHE_CONTROL, self.cache_control.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        if self.compression {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }

    /// The headers of a 200 (or HEAD) for one representation: built once per
    /// publication, so a request copies a map instead of hashing eight names.
    pub(crate) fn head(&self, len: usize, etag: &HeaderValue, encoding: Option<Encoding>) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(8);
        self.validators(&mut h, etag);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(encoding) = encoding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.as_str()));
        }
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        h
    }
}
