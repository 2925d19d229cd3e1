//! Step 4: would STS cache the answers? It stops caching, refetches on every
//! call and fails under parallel jobs ("Couldn't retrieve verification key from
//! your identity provider") when it sees `Pragma: no-cache`, `no-cache`,
//! `max-age=0` (or `private`, `no-store`).

use http::{HeaderMap, header};

use super::report::Step;

/// What one response's headers say about caching.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Caching {
    /// What defeats STS's cache, one line each.
    pub refused: Vec<String>,
    /// `max-age` (or `s-maxage`) in seconds, when given and the answer is cacheable.
    pub max_age: Option<u64>,
}

/// Reads `Cache-Control` and `Pragma` as a cache would: directives are
/// case-insensitive and may be spread over several header lines.
pub(super) fn caching(headers: &HeaderMap) -> Caching {
    let mut refused = Vec::new();
    let mut max_age = None;
    for value in headers.get_all(header::PRAGMA) {
        if value
            .to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
        {
            refused.push("Pragma: no-cache".to_owned());
        }
    }
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty());
    for directive in directives {
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim().to_owned(), Some(v.trim().trim_matches('"').to_owned())),
            None => (directive.clone(), None),
        };
        match (name.as_str(), value) {
            ("no-cache" | "no-store" | "private", _) => refused.push(format!("Cache-Control: {name}")),
            ("max-age" | "s-maxage", Some(v)) => match v.parse::<u64>() {
                Ok(0) => refused.push(format!("Cache-Control: {name}=0")),
                Ok(secs) => max_age = Some(max_age.map_or(secs, |m: u64| m.max(secs))),
                Err(_) => refused.push(format!("Cache-Control: {name}={v} (not a number)")),
            },
            _ => {}
        }
    }
    if !refused.is_empty() {
        max_age = None;
    }
    Caching { refused, max_age }
}

/// Step 4 for the two answers (name, headers).
pub(super) fn judge(step: &mut Step, answers: &[(&str, &HeaderMap)]) {
    for (what, headers) in answers {
        let shown: Vec<&str> = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let c = caching(headers);
        step.saw(format!(
            "{what}: Cache-Control: {}; effective max-age: {}",
            if shown.is_empty() {
                "(none)".to_owned()
            } else {
                shown.join(", ")
            },
            c.max_age.map_or_else(|| "none".to_owned(), |s| format!("{s} s")),
        ));
        for refused in &c.refused {
            step.fail(
                format!("{what} sends {refused}: STS refetches on every call and fails under parallel jobs"),
                "put gitlab-oidc-proxy in front (it answers Cache-Control: public, max-age=3600); \
                 GitLab's own discovery is uncacheable in every version",
            );
        }
        if c.refused.is_empty() && c.max_age.is_none() {
            step.warn(
                format!("{what} has no max-age: how long STS keeps it is left to its defaults"),
                "send Cache-Control: public, max-age=3600",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn seen(lines: &[(&str, &str)]) -> (Vec<String>, Option<u64>) {
        let c = caching(&headers(lines));
        (c.refused, c.max_age)
    }

    #[test]
    fn gitlab_and_the_proxy() {
        // GitLab's discovery, every version; its keys before 16.8.
        assert_eq!(
            seen(&[("cache-control", "max-age=0, private, must-revalidate")]),
            (
                vec!["Cache-Control: max-age=0".into(), "Cache-Control: private".into()],
                None
            )
        );
        // GitLab 16.8+ keys (sic `no-transform=true`).
        assert_eq!(
            seen(&[(
                "cache-control",
                "max-age=86400, public, must-revalidate, no-transform=true"
            )]),
            (vec![], Some(86400))
        );
        assert_eq!(seen(&[("cache-control", "public, max-age=3600")]), (vec![], Some(3600)));
    }

    #[test]
    fn what_defeats_a_cache() {
        assert_eq!(seen(&[("pragma", "no-cache")]).0, ["Pragma: no-cache"]);
        assert_eq!(
            seen(&[("cache-control", "public, max-age=60"), ("cache-control", "No-Cache")]),
            (vec!["Cache-Control: no-cache".into()], None)
        );
        assert_eq!(seen(&[("cache-control", "no-store")]).0, ["Cache-Control: no-store"]);
        assert_eq!(
            seen(&[("cache-control", "max-age=\"0\"")]).0,
            ["Cache-Control: max-age=0"]
        );
        assert_eq!(
            seen(&[("cache-control", "max-age=soon")]).0,
            ["Cache-Control: max-age=soon (not a number)"]
        );
    }

    #[test]
    fn no_header_is_no_max_age() {
        assert_eq!(seen(&[]), (vec![], None));
        assert_eq!(seen(&[("cache-control", "public")]), (vec![], None));
        assert_eq!(
            seen(&[("cache-control", "s-maxage=600, max-age=60")]),
            (vec![], Some(600))
        );
    }

    #[test]
    fn judging_fails_on_refusals_and_warns_without_max_age() {
        let mut step = Step::new(4, "caching");
        let good = headers(&[("cache-control", "public, max-age=3600")]);
        let none = headers(&[]);
        judge(&mut step, &[("discovery", &good), ("key set", &none)]);
        assert_eq!(step.verdict, super::super::report::Verdict::Warn);
        let bad = headers(&[("cache-control", "max-age=0, private")]);
        judge(&mut step, &[("discovery", &bad)]);
        assert!(step.failed());
        assert!(
            step.evidence[0].contains("effective max-age: 3600 s"),
            "{:?}",
            step.evidence
        );
    }
}
