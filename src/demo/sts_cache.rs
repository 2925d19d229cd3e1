//! What STS keeps of an identity provider's documents: each for as long as
//! its `Cache-Control: max-age` allows, and nothing at all when the answer
//! says `no-cache`, `no-store`, `private`, `max-age=0` or `Pragma: no-cache`
//! (then STS fetches on every call: the parallel-jobs failure).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long STS may reuse an answer with these headers (None: not at all).
pub(super) fn lifetime(cache_control: Option<&str>, pragma: Option<&str>) -> Option<Duration> {
    if pragma.is_some_and(|p| p.to_ascii_lowercase().contains("no-cache")) {
        return None;
    }
    let mut max_age = None;
    for directive in cache_control?.split(',') {
        let directive = directive.trim().to_ascii_lowercase();
        match directive.split_once('=') {
            Some(("max-age", seconds)) => max_age = Some(seconds.trim().trim_matches('"').parse::<u64>().ok()?),
            None if ["no-cache", "no-store", "private"].contains(&directive.as_str()) => return None,
            _ => {}
        }
    }
    max_age.filter(|&s| s > 0).map(Duration::from_secs)
}

/// One STS's documents by URL, shared by the verifications of one run.
/// Verifications that miss at once each fetch: nothing is coalesced.
#[derive(Default)]
pub(super) struct StsCache {
    entries: Mutex<HashMap<String, Entry>>,
}

/// A document STS keeps, with the `Cache-Control` it came with.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) value: Value,
    pub(super) cache_control: String,
    expires: Instant,
}

impl StsCache {
    pub(super) fn get(&self, url: &str) -> Option<Entry> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(url).filter(|e| e.expires > Instant::now()).cloned()
    }

    pub(super) fn put(&self, url: &str, value: &Value, cache_control: &str, lifetime: Duration) {
        let Some(expires) = Instant::now().checked_add(lifetime) else {
            return; // a lifetime past the clock's range: keep nothing rather than panic
        };
        let entry = Entry {
            value: value.clone(),
            cache_control: cache_control.to_owned(),
            expires,
        };
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(url.to_owned(), entry);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn gitlab_s_uncacheable_answers_are_never_kept() {
        for cc in [
            "max-age=0, private, must-revalidate",
            "private, max-age=3600",
            "no-cache",
            "public, no-store, max-age=60",
            "max-age=0",
            "public",
            "max-age=soon",
        ] {
            assert_eq!(lifetime(Some(cc), None), None, "{cc}");
        }
        assert_eq!(lifetime(None, None), None);
        assert_eq!(lifetime(Some("public, max-age=60"), Some("no-cache")), None);
    }

    #[test]
    fn public_max_age_is_kept_that_long() {
        assert_eq!(
            lifetime(Some("max-age=86400, public, must-revalidate, no-transform=true"), None),
            Some(Duration::from_secs(86400))
        );
        assert_eq!(
            lifetime(Some("public, max-age=3600"), None),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            lifetime(Some("Public, Max-Age=\"5\""), None),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn entries_expire() {
        let cache = StsCache::default();
        cache.put("u", &json!({"a": 1}), "public, max-age=1", Duration::from_secs(3600));
        cache.put("gone", &json!({}), "", Duration::ZERO);
        cache.put("far", &json!({}), "", Duration::MAX);
        assert_eq!(cache.get("u").map(|e| e.value), Some(json!({"a": 1})));
        assert!(cache.get("gone").is_none() && cache.get("far").is_none() && cache.get("x").is_none());
    }
}
