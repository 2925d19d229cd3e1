//! Which upstream a request goes to, as omnibus nginx's server blocks and KAS
//! locations decided: a `--route` host to its own service (registry, Pages,
//! Mattermost), KAS's two paths to KAS, everything else to GitLab.

use std::collections::HashMap;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Uri, header};

use crate::config::HostPattern;
use crate::passthrough::Passthrough;

/// The agent's websocket: only this path, as omnibus's `location =`.
const KAS_AGENT: &str = "/-/kubernetes-agent/";
/// KAS's Kubernetes API proxy: this path and everything below it.
const KAS_K8S_PROXY: &str = "/-/kubernetes-agent/k8s-proxy/";

pub(crate) enum Destination<'a> {
    /// `--upstream`, with the OIDC answers and everything else of today.
    Gitlab,
    /// A `--route` host's service: the request as it came.
    Service(&'a Passthrough),
    /// KAS: the request with `uri` as its target (the prefix taken off, as
    /// nginx's `proxy_pass http://kas/;` does).
    Kas { to: &'a Passthrough, uri: Uri },
}

#[derive(Default)]
pub(crate) struct Routes {
    exact: HashMap<String, Passthrough>,
    /// (`.suffix`, service), longest suffix first: the most specific wins.
    below: Vec<(String, Passthrough)>,
    kas: Option<Passthrough>,
    kas_k8s_proxy: Option<Passthrough>,
}

impl Routes {
    pub(crate) fn add(&mut self, host: HostPattern, to: Passthrough) {
        match host {
            HostPattern::Exact(name) => {
                self.exact.insert(name, to);
            }
            HostPattern::Below(suffix) => {
                self.below.push((suffix, to));
                self.below.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
            }
        }
    }

    pub(crate) fn set_kas(&mut self, agent: Option<Passthrough>, k8s_proxy: Option<Passthrough>) {
        self.kas = agent;
        self.kas_k8s_proxy = k8s_proxy;
    }

    /// Where a request with `headers` (its `Host`) and `uri` goes.
    pub(crate) fn pick(&self, headers: &HeaderMap, uri: &Uri) -> Destination<'_> {
        if !self.exact.is_empty() || !self.below.is_empty() {
            // Looked up only when some route goes by host.
            let host = headers.get(header::HOST).map_or(&[][..], HeaderValue::as_bytes);
            let name = host_name(host);
            if let Some(to) = self.exact.get(name.as_str()) {
                return Destination::Service(to);
            }
            if let Some((_, to)) = self.below.iter().find(|(suffix, _)| is_below(&name, suffix)) {
                return Destination::Service(to);
            }
        }
        let path = uri.path();
        if let Some(to) = &self.kas_k8s_proxy
            && let Some(rest) = path.strip_prefix(KAS_K8S_PROXY)
        {
            return Destination::Kas {
                to,
                uri: with_path(uri, rest),
            };
        }
        if let Some(to) = &self.kas
            && path == KAS_AGENT
        {
            return Destination::Kas {
                to,
                uri: with_path(uri, ""),
            };
        }
        Destination::Gitlab
    }
}

/// A `Host` value's name, lowercase, without port or trailing dot. (The router
/// has checked it is a valid `host[:port]`.)
fn host_name(host: &[u8]) -> String {
    let host = String::from_utf8_lossy(host);
    let name = if host.starts_with('[') {
        // An IPv6 literal is never a route's name; keep it whole.
        host.split_once(']').map_or(&*host, |(literal, _)| literal)
    } else {
        host.rsplit_once(':').map_or(&*host, |(name, _)| name)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `name` is a subdomain of `.suffix` (at least one label more).
fn is_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() && name.ends_with(suffix)
}

/// `uri`'s target with its path replaced by `/` + `rest`, the query kept.
fn with_path(uri: &Uri, rest: &str) -> Uri {
    let target = match uri.query() {
        Some(query) => format!("/{rest}?{query}"),
        None => format!("/{rest}"),
    };
    // A suffix of a valid path, behind a '/', is a valid path again.
    let path_and_query = PathAndQuery::try_from(target).unwrap_or_else(|_| PathAndQuery::from_static("/"));
    Uri::from(path_and_query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_compared_without_port_case_or_final_dot() {
        assert_eq!(host_name(b"Registry.Example.com:5050"), "registry.example.com");
        assert_eq!(host_name(b"registry.example.com."), "registry.example.com");
        assert_eq!(host_name(b"[::1]:8080"), "[::1");
        assert_eq!(host_name(b"192.0.2.1"), "192.0.2.1");
    }

    #[test]
    fn below_means_a_strict_subdomain() {
        assert!(is_below("group.pages.example.com", ".pages.example.com"));
        assert!(is_below("a.b.pages.example.com", ".pages.example.com"));
        assert!(!is_below("pages.example.com", ".pages.example.com"));
        assert!(!is_below("xpages.example.com", ".pages.example.com"));
        assert!(!is_below(".pages.example.com", ".pages.example.com"));
    }

    #[test]
    fn kas_targets_lose_their_prefix_and_keep_their_query() {
        let uri: Uri = "/-/kubernetes-agent/k8s-proxy/api/v1/pods?watch=1".parse().unwrap();
        assert_eq!(with_path(&uri, "api/v1/pods"), "/api/v1/pods?watch=1");
        let uri: Uri = "/-/kubernetes-agent/".parse().unwrap();
        assert_eq!(with_path(&uri, ""), "/");
    }
}
