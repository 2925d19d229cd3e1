//! Target `forwarding_headers`: one request through the header rules, in the order the
//! router and the pass-through apply them: `apply_forwarding`, `settle_host`,
//! `requested_upgrade`, `has_unsupported_transfer_coding`, `strip_hop_by_hop`,
//! `merge_cookies` (HTTP/2), `set_upgrade`. The input is text:
//!
//! ```text
//! 1.1 /path                         version (0.9, 1.0, 1.1, 2) and request target
//! 10.0.0.2 https 10.0.0.0/8 ::1     peer, listener scheme, trusted proxies
//! X-Forwarded-For: 198.51.100.9     then one header per line
//! ```
//!
//! Asserted: the forwarding headers GitLab gets are exactly one `X-Forwarded-For`, one
//! `X-Real-IP`, one `X-Forwarded-Proto` (and `X-Forwarded-SSL: on` with https), none of
//! the others; from an untrusted peer they name the peer alone, whatever the client
//! sent; from a trusted one the chain ends with the peer and the client is an address
//! of it with only trusted addresses to its right; nothing later in the chain of rules
//! changes them; no other header is touched by `apply_forwarding`. `settle_host` Ok
//! means exactly one `Host`, a plain `host[:port]`, the target's authority when it has
//! one. `strip_hop_by_hop` removes only hop-by-hop headers and ones `Connection`
//! names, never a protected one. Upgrade and transfer-coding answers match the headers.

use std::collections::BTreeMap;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use ipnet::IpNet;

use crate::config::{Proto, parse_cidr};
use crate::headers::{
    FORWARDING, Forwarded, HOP_BY_HOP, PROTECTED, apply_forwarding, has_unsupported_transfer_coding, is_trusted,
    merge_cookies, requested_upgrade, set_upgrade, settle_host, strip_hop_by_hop,
};

/// The name an HTTP/1.0 request without `Host` gets (`--external-url`'s host).
const DEFAULT_HOST: &str = "gitlab.example.com";

struct Input {
    version: Version,
    uri: Uri,
    peer: IpAddr,
    proto: Proto,
    trusted: Vec<IpNet>,
    headers: HeaderMap,
}

impl Input {
    /// Lenient: whatever does not parse takes a default, so every input runs.
    fn parse(data: &[u8]) -> Input {
        let text = String::from_utf8_lossy(data);
        let mut lines = text.split('\n');
        let mut first = lines.next().unwrap_or_default().split(' ');
        let version = match first.next() {
            Some("0.9") => Version::HTTP_09,
            Some("1.0") => Version::HTTP_10,
            Some("2") => Version::HTTP_2,
            _ => Version::HTTP_11,
        };
        let uri = first
            .next()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| Uri::from_static("/"));
        let mut second = lines.next().unwrap_or_default().split(' ');
        let peer = second
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or([203, 0, 113, 7].into());
        let proto = match second.next() {
            Some("https") => Proto::Https,
            _ => Proto::Http,
        };
        let trusted = second.filter_map(|net| parse_cidr(net).ok()).collect();
        let mut headers = HeaderMap::new();
        // Header lines as raw bytes: values may hold any byte a client can send.
        for line in data.split(|&b| b == b'\n').skip(2) {
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
                headers.append(name, value);
            }
        }
        Input {
            version,
            uri,
            peer,
            proto,
            trusted,
            headers,
        }
    }
}

pub fn run(data: &[u8]) {
    let input = Input::parse(data);
    let mut headers = input.headers.clone();
    assert_eq!(
        crate::headers::Fields::of(&headers).conflicting_framing(),
        headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING)
    );

    let forwarded = apply_forwarding(&mut headers, input.peer, &input.trusted, input.proto);
    check_forwarding(&input, &headers, forwarded);
    let set_by_proxy = forwarding_fields(&headers);

    let before = headers.clone();
    let settled = settle_host(input.version, &input.uri, &mut headers, || {
        HeaderValue::from_static(DEFAULT_HOST)
    });
    check_host(&input, &before, &headers, settled.is_ok());
    if settled.is_err() {
        return;
    }

    // One walk over the settled names, for the rules below (as the pass-through has it).
    let fields = crate::headers::Fields::of(&headers);
    let upgrade = requested_upgrade(input.version, &headers, fields);
    check_upgrade(input.version, &headers, upgrade.as_ref());
    // Exactly one coding, and that one `chunked`.
    let codings: Vec<_> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .collect();
    let unsupported = codings.len() > 1
        || codings
            .iter()
            .any(|coding| !String::from_utf8_lossy(coding).trim().eq_ignore_ascii_case("chunked"));
    assert_eq!(has_unsupported_transfer_coding(&headers, fields), unsupported);
    if unsupported {
        return;
    }

    let before = headers.clone();
    strip_hop_by_hop(&mut headers, fields);
    check_stripped(&before, &headers);
    if input.version == Version::HTTP_2 {
        merge_cookies(&mut headers);
        assert!(
            headers.get_all(header::COOKIE).iter().count() <= 1 || before.get_all(header::COOKIE).iter().count() > 1
        );
    }
    if let Some(protocol) = upgrade {
        set_upgrade(&mut headers, protocol.clone());
        assert_eq!(headers.get(header::UPGRADE), Some(&protocol));
        assert_eq!(headers.get_all(header::CONNECTION).iter().count(), 1);
    }
    assert_eq!(
        forwarding_fields(&headers),
        set_by_proxy,
        "later rules leave the forwarding headers alone"
    );
}

/// The forwarding headers' values, by name.
fn forwarding_fields(headers: &HeaderMap) -> Fields {
    fields(headers, |name| FORWARDING.contains(&name.as_str()))
}

/// Every value of each header `keep` picks, by name: what a header's fields mean does
/// not depend on where other names were removed or inserted.
type Fields = BTreeMap<String, Vec<HeaderValue>>;

fn fields(headers: &HeaderMap, keep: impl Fn(&HeaderName) -> bool) -> Fields {
    headers
        .keys()
        .filter(|name| keep(name))
        .map(|name| {
            (
                name.as_str().to_owned(),
                headers.get_all(name).iter().cloned().collect(),
            )
        })
        .collect()
}

fn only(headers: &HeaderMap, name: &str) -> String {
    let all: Vec<_> = headers.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "exactly one {name}: {all:?}");
    all[0].to_str().expect("visible ASCII").to_owned()
}

fn check_forwarding(input: &Input, headers: &HeaderMap, forwarded: Forwarded) {
    let peer = match input.peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(input.peer, IpAddr::V4),
        v4 => v4,
    };
    let trusted = input.trusted.iter().any(|net| net.contains(&peer));
    assert_eq!(is_trusted(input.peer, &input.trusted), trusted);

    let chain = only(headers, "x-forwarded-for");
    assert_eq!(only(headers, "x-real-ip"), forwarded.client.to_string());
    assert_eq!(only(headers, "x-forwarded-proto"), forwarded.proto.as_str());
    let ssl: Vec<_> = headers.get_all("x-forwarded-ssl").iter().collect();
    let want_ssl: &[&str] = if forwarded.proto == Proto::Https { &["on"] } else { &[] };
    assert_eq!(ssl, want_ssl);
    for name in FORWARDING {
        let ours = ["x-forwarded-for", "x-real-ip", "x-forwarded-proto", "x-forwarded-ssl"];
        assert!(
            ours.contains(name) || !headers.contains_key(*name),
            "{name} from the client survived"
        );
    }
    let untouched = |name: &HeaderName| !FORWARDING.contains(&name.as_str());
    assert_eq!(fields(headers, untouched), fields(&input.headers, untouched));

    if !trusted {
        // The client's own forwarding headers are never believed nor passed on.
        assert_eq!(chain, peer.to_string());
        assert_eq!(
            forwarded,
            Forwarded {
                client: peer,
                proto: input.proto
            }
        );
        return;
    }
    assert!(
        chain == peer.to_string() || chain.ends_with(&format!(", {peer}")),
        "{chain}"
    );
    // The client is an address of the chain; every entry right of it is a trusted address.
    let entries: Vec<Option<IpAddr>> = chain.split(',').map(|e| address(e.trim())).collect();
    let position = entries.iter().rposition(|e| *e == Some(forwarded.client));
    let Some(position) = position else {
        panic!("client {} not in {chain:?}", forwarded.client);
    };
    for entry in &entries[position + 1..] {
        assert!(
            entry.is_some_and(|a| is_trusted(a, &input.trusted)),
            "{chain:?} -> {}",
            forwarded.client
        );
    }
}

/// An address as proxies write them in `X-Forwarded-For`: bare, bracketed, with a port.
fn address(entry: &str) -> Option<IpAddr> {
    let unbracketed = entry.strip_prefix('[').and_then(|e| e.strip_suffix(']'));
    let parsed = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| unbracketed?.parse().ok())?;
    Some(match parsed {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(parsed, IpAddr::V4),
        v4 => v4,
    })
}

fn check_host(input: &Input, before: &HeaderMap, after: &HeaderMap, ok: bool) {
    let other = |name: &HeaderName| name != header::HOST;
    assert_eq!(fields(after, other), fields(before, other), "only Host changes");
    if !ok {
        return;
    }
    assert!(
        input.uri.scheme().is_some() || input.uri.authority().is_none(),
        "authority-form accepted"
    );
    let host = only(after, "host");
    // A plain `host[:port]`: what an absolute URL's authority can be, minus user info.
    let reparsed: Uri = format!("http://{host}/").parse().expect("Host makes a URL");
    assert_eq!(reparsed.authority().map(|a| a.as_str()), Some(host.as_str()));
    assert!(!host.contains(['@', ',', ' ', '/']), "{host:?}");
    let authority = input.uri.authority().map(|a| a.as_str().to_owned());
    let had_host = before.contains_key(header::HOST);
    match (input.version, authority) {
        (Version::HTTP_2, Some(a)) if !had_host => assert_eq!(host, a),
        (Version::HTTP_2, _) => assert_eq!(
            Some(&host),
            before
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
                .as_ref()
        ),
        (_, Some(a)) => assert_eq!(host, a, "absolute-form: the target's authority"),
        (Version::HTTP_10 | Version::HTTP_09, None) if !had_host => assert_eq!(host, DEFAULT_HOST),
        (_, None) => assert!(had_host),
    }
}

fn check_upgrade(version: Version, headers: &HeaderMap, upgrade: Option<&HeaderValue>) {
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let protocol = headers.get(header::UPGRADE).filter(|p| !p.is_empty());
    let want = if version == Version::HTTP_11 && asked {
        protocol
    } else {
        None
    };
    assert_eq!(upgrade, want);
}

fn check_stripped(before: &HeaderMap, after: &HeaderMap) {
    let named: Vec<String> = before
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .collect();
    for (name, _) in before {
        let n = name.as_str();
        let protected = PROTECTED.contains(&n) || FORWARDING.contains(&n) || n.starts_with("content-");
        let kept = after.get_all(name).iter().eq(before.get_all(name).iter());
        if HOP_BY_HOP.contains(&n) {
            assert!(!after.contains_key(name), "{n} is hop-by-hop");
        } else if protected || !named.iter().any(|t| t == n) {
            assert!(kept, "{n} removed or changed");
        } else {
            assert!(!after.contains_key(name), "{n} named in Connection");
        }
    }
    assert!(after.keys().all(|name| before.contains_key(name)), "nothing added");
}
