//! Header rules of the pass-through, as small pure functions: hop-by-hop removal,
//! forwarding headers, upgrade detection. Everything here is unit-tested below.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use ipnet::IpNet;

use crate::config::Proto;

/// Connection-level headers (RFC 9110 §7.6.1, plus legacy and proxy ones) that
/// never cross the proxy in either direction.
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Handled by our own HTTP server already; GitLab sees a plain streamed body.
    "expect",
];

/// `HOP_BY_HOP` as names, in the same order, to remove them by.
static HOP_BY_HOP_NAMES: [HeaderName; 10] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
    HeaderName::from_static("expect"),
];

/// A name's place in `HOP_BY_HOP`. A `match` on the string: compiled to a
/// switch on its length, then one comparison (comparing against each of the
/// ten names cost ~80 instructions a header).
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        "expect" => 9,
        _ => return None,
    })
}

/// One of `HOP_BY_HOP`, in any case (`keep-alive` as nginx and most clients
/// send it is looked for first).
fn is_hop_by_hop_name(token: &[u8]) -> bool {
    token == b"keep-alive" || HOP_BY_HOP.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(token))
}

/// Headers that a client could use to pose as a proxy: set or believed only from
/// trusted peers. Rack/Rails read several of these for the request's scheme,
/// host and address.
pub(crate) const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-ssl",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-url-scheme",
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
];

/// End-to-end headers that a `Connection` header may name but never remove
/// (with every `Content-*`): dropping them would change what the request means
/// or who it claims to be from.
pub(crate) const PROTECTED: &[&str] = &["host", "authorization", "cookie", "private-token", "job-token"];

fn is_protected(name: &HeaderName) -> bool {
    let name = name.as_str();
    PROTECTED.contains(&name) || FORWARDING.contains(&name) || name.starts_with("content-")
}

/// The tokens listed in `Connection` (all its lines, comma-separated), trimmed.
/// A token that is no header name (obs-text, spaces) matches nothing and spoils
/// nothing else of its line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// What one walk over a message's field names found: which hop-by-hop ones,
/// and whether `Content-Length` and any `X-Accel-*` are there. The rules below
/// take it instead of looking each name up: a lookup hashes the name and
/// probes even when the field is absent, as these nearly always are, and a
/// message passes several rules. Made before the rules that remove fields, it
/// may name more than is left after them (a removal then finds nothing), never
/// less: fields must not be added between the walk and the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Fields {
    /// Bit `i` for `HOP_BY_HOP[i]`.
    hop: u16,
    /// A `Connection` line that may name other fields: anything but one
    /// hop-by-hop name (`keep-alive`, `upgrade`), which go anyway.
    connection_lists: bool,
    content_length: bool,
    accel: bool,
}

const CONNECTION_BIT: u16 = 1 << 0;
const TRANSFER_ENCODING_BIT: u16 = 1 << 7;
const UPGRADE_BIT: u16 = 1 << 8;

impl Fields {
    pub(crate) fn of(headers: &HeaderMap) -> Fields {
        let mut found = Fields::default();
        for name in headers.keys() {
            if name == header::CONTENT_LENGTH {
                found.content_length = true;
                continue;
            }
            let name = name.as_str();
            if let Some(i) = hop_by_hop_index(name) {
                found.hop |= 1 << i;
            } else if name.starts_with("x-accel-") {
                found.accel = true;
            }
        }
        if found.hop & CONNECTION_BIT != 0 {
            found.connection_lists = headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|line| !is_hop_by_hop_name(line.as_bytes().trim_ascii()));
        }
        found
    }

    /// Both `Content-Length` and `Transfer-Encoding`: which one ends the body
    /// is in doubt (RFC 9112 §6.1), so the message is refused rather than relayed.
    pub(crate) fn conflicting_framing(self) -> bool {
        self.content_length && self.hop & TRANSFER_ENCODING_BIT != 0
    }
}

/// Removes hop-by-hop headers and those the `Connection` header nominates,
/// except protected end-to-end ones. `found`: [`Fields::of`] these headers.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, found: Fields) {
    // Most messages carry none of them (or only `Connection`), and a removal
    // by name costs a lookup even when absent.
    if found.hop == 0 {
        return;
    }
    if found.connection_lists {
        // The names `Connection` lists, but not the hop-by-hop ones (`keep-alive`,
        // `upgrade`): they go below, without a name parsed for each.
        let listed: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !is_hop_by_hop_name(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in listed {
            if !is_protected(&name) {
                headers.remove(&name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP_NAMES.iter().enumerate() {
        if found.hop & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// True when a message's transfer codings are anything but one `chunked`: any
/// other coding (`gzip`, `identity`, an empty one) or `chunked` twice leaves its
/// bytes or its end in doubt. nginx answers such a request 501, such a response 502.
pub(crate) fn has_unsupported_transfer_coding(headers: &HeaderMap, found: Fields) -> bool {
    if found.hop & TRANSFER_ENCODING_BIT == 0 {
        return false;
    }
    let mut codings = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return true;
        };
        for coding in value.split(',') {
            codings += 1;
            if !coding.trim().eq_ignore_ascii_case("chunked") {
                return true;
            }
        }
    }
    codings > 1
}

/// Joins several `Cookie` fields into one, as RFC 9113 §8.2.3 asks before
/// a request goes on over HTTP/1.1.
pub(crate) fn merge_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().count() < 2 {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, value);
    }
}

/// Gives every value its own bytes. hyper's HTTP/1.1 parser leaves GitLab's
/// header values as slices of its read buffer, and an HTTP/2 client's header
/// compression table keeps values for the life of the connection: one kept
/// `date` would pin a whole read buffer (hundreds of KiB each, measured by the
/// soak as 260 MiB for 48 clients instead of 60).
pub(crate) fn own_values(headers: &mut HeaderMap) {
    for value in headers.values_mut() {
        if let Ok(mut owned) = HeaderValue::from_bytes(value.as_bytes()) {
            owned.set_sensitive(value.is_sensitive());
            *value = owned;
        }
    }
}

/// Response-only extra: `X-Accel-*` are instructions to nginx from Workhorse
/// (`X-Accel-Buffering: no`); nginx consumes them and so do we (we never buffer).
pub(crate) fn strip_response_internal(headers: &mut HeaderMap, found: Fields) {
    if !found.accel {
        return;
    }
    let internal: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-accel-"))
        .cloned()
        .collect();
    for name in internal {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` plus
/// `Upgrade: websocket`), if any. HTTP/2 has no such mechanism.
pub(crate) fn requested_upgrade(version: Version, headers: &HeaderMap, found: Fields) -> Option<HeaderValue> {
    if version != Version::HTTP_11 || found.hop & (CONNECTION_BIT | UPGRADE_BIT) != CONNECTION_BIT | UPGRADE_BIT {
        return None;
    }
    let wants = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    match headers.get(header::UPGRADE) {
        Some(proto) if wants && !proto.is_empty() => Some(proto.clone()),
        _ => None,
    }
}

/// Puts back the two hop-by-hop headers an upgrade needs on the next hop.
pub(crate) fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// This process's name in `Via` (RFC 9110 §7.6.3): random per process, so a
/// request that comes back to the process that sent it is told apart from one
/// that passed another proxy of a chain, even another instance of this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ViaId {
    name: String,
    /// This hop's entry for each protocol a request can come in with, made once.
    entries: [HeaderValue; 3],
}

impl ViaId {
    /// `name` is a token: letters, digits and `-`, as the caller's hex is.
    pub(crate) fn new(name: String) -> Self {
        let entry = |protocol: &str| {
            HeaderValue::from_str(&format!("{protocol} {name}")).expect("a token is a valid header value")
        };
        let entries = [entry("1.0"), entry("1.1"), entry("2")];
        ViaId { name, entries }
    }
}

/// Which of `names` a message carries: bit `i` for `names[i]`, found in one
/// walk over its field names. A lookup by name hashes the name and probes even
/// when the field is absent, as those looked for on every request nearly
/// always are; over the handful of fields a request has, the walk costs less.
pub(crate) fn present(headers: &HeaderMap, names: &[HeaderName]) -> u32 {
    let mut found = 0;
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| n == name) {
            found |= 1 << i;
        }
    }
    found
}

/// True when a `Via` entry names this process as one the request already passed.
pub(crate) fn via_names(headers: &HeaderMap, id: &ViaId) -> bool {
    if present(headers, &[header::VIA]) == 0 {
        return false;
    }
    headers
        .get_all(header::VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        // `received-protocol received-by [comment]`
        .filter_map(|entry| entry.split_whitespace().nth(1))
        .any(|by| by == id.name)
}

/// Adds this hop to `Via`, after the entries of the proxies before it.
pub(crate) fn append_via(headers: &mut HeaderMap, received: Version, id: &ViaId) {
    let entry = match received {
        Version::HTTP_10 | Version::HTTP_09 => &id.entries[0],
        Version::HTTP_2 => &id.entries[2],
        _ => &id.entries[1],
    };
    headers.append(header::VIA, entry.clone());
}

/// Why a request's target or `Host` cannot be forwarded: 400, as nginx answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostProblem {
    /// Authority-form (`GET c8 HTTP/1.1`) is for CONNECT only (RFC 9112 §3.2.3).
    Target,
    /// None on HTTP/1.1 or HTTP/2, several, or one that is not `host[:port]`.
    Host,
}

/// Settles the one `Host` GitLab gets (RFC 9112 §3.2): exactly one, a valid
/// `host[:port]`. HTTP/2 carries it in `:authority`; an absolute-form target's
/// authority replaces `Host` (§3.2.2); an HTTP/1.0 request without one gets
/// `default_host`, as nginx gives its server name.
pub(crate) fn settle_host(
    version: Version,
    uri: &Uri,
    headers: &mut HeaderMap,
    default_host: impl FnOnce() -> HeaderValue,
) -> Result<(), HostProblem> {
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(HostProblem::Target);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (uri.authority(), hosts.next(), hosts.next()) {
        (_, Some(_), Some(_)) => return Err(HostProblem::Host),
        // Nearly every request: origin-form with one Host, which stays as sent.
        (None, Some(host), None) if is_valid_host(host.as_bytes()) => return Ok(()),
        (None, Some(_), None) => return Err(HostProblem::Host),
        _ => {}
    }
    let from_target = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    match (version, from_target) {
        // HTTP/2: `:authority`, unless the client sent `Host` as well.
        (Version::HTTP_2, Some(authority)) if !headers.contains_key(header::HOST) => {
            headers.insert(header::HOST, authority);
        }
        (Version::HTTP_2, _) => {}
        (_, Some(authority)) => {
            headers.insert(header::HOST, authority);
        }
        (Version::HTTP_10 | Version::HTTP_09, None) if !headers.contains_key(header::HOST) => {
            headers.insert(header::HOST, default_host());
        }
        (_, None) => {}
    }
    match headers.get(header::HOST) {
        Some(host) if is_valid_host(host.as_bytes()) => Ok(()),
        _ => Err(HostProblem::Host),
    }
}

/// `host[:port]`: a name of letters, digits, `-._~`, an IPv4 address, or an IPv6
/// literal in brackets; no user info, path, list or space.
fn is_valid_host(value: &[u8]) -> bool {
    if value.first() != Some(&b'[') {
        // A name or IPv4 address: checked byte by byte, in one pass, no parse and no copy.
        for (i, &b) in value.iter().enumerate() {
            if b == b':' {
                return i > 0 && is_valid_port(Some(&value[i + 1..]));
            }
            if !is_unreserved(b) {
                return false;
            }
        }
        return !value.is_empty();
    }
    // An IPv6 literal: the URI parser splits off the port, std checks the address.
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return false;
    };
    let (whole, host) = (authority.as_str(), authority.host());
    let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if whole.contains('@') || whole.len() != value.len() || literal.is_none_or(|l| !is_ipv6_literal(l)) {
        return false;
    }
    match whole.strip_prefix(host) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|port| is_valid_port(Some(port.as_bytes()))),
        None => false,
    }
}

/// An IPv6 address, with an RFC 6874 zone (`fe80::1%25eth0`) allowed.
fn is_ipv6_literal(literal: &str) -> bool {
    let (address, zone) = match literal.split_once("%25") {
        Some((address, zone)) => (address, Some(zone)),
        None => (literal, None),
    };
    let zone_ok = zone.is_none_or(|z| !z.is_empty() && z.bytes().all(is_unreserved));
    zone_ok && address.parse::<std::net::Ipv6Addr>().is_ok()
}

/// RFC 3986 unreserved: letters, digits, `-._~`.
fn is_unreserved(b: u8) -> bool {
    UNRESERVED[usize::from(b)]
}

/// [`is_unreserved`] as a table: one load a byte, for every request's Host.
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        i += 1;
    }
    table
};

/// No port, or 1 to 5 digits.
fn is_valid_port(port: Option<&[u8]>) -> bool {
    port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// Who sent the request, as far as the proxy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forwarded {
    /// The client: the peer, or with trusted proxies the nearest untrusted address
    /// in `X-Forwarded-For` (nginx `real_ip_recursive on`).
    pub client: IpAddr,
    pub proto: Proto,
}

pub(crate) fn is_trusted(addr: IpAddr, trusted: &[IpNet]) -> bool {
    let addr = canonical(addr);
    trusted.iter().any(|net| net.contains(&addr))
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) compare as the IPv4 they are.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        v4 => v4,
    }
}

/// Who sent the request, read without changing anything (the OIDC answers and
/// the access log need no more; [`apply_forwarding`] rewrites the headers).
pub(crate) fn forwarded(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet], listener_proto: Proto) -> Forwarded {
    resolve(headers, canonical(peer), trusted, listener_proto).1
}

/// The `X-Forwarded-For` chain a trusted proxy's request continues (None for
/// any other peer: its chain is its own address), and who sent the request.
fn resolve(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet], listener_proto: Proto) -> (Option<String>, Forwarded) {
    if !is_trusted(peer, trusted) {
        let forwarded = Forwarded {
            client: peer,
            proto: listener_proto,
        };
        return (None, forwarded);
    }
    let prior = joined(headers, "x-forwarded-for");
    let chain = match prior {
        Some(prior) if !prior.trim().is_empty() => format!("{}, {peer}", prior.trim()),
        _ => peer.to_string(),
    };
    let client = client_from_chain(&chain, trusted).unwrap_or(peer);
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| match v.split(',').next().map(str::trim) {
            Some(p) if p.eq_ignore_ascii_case("https") => Some(Proto::Https),
            Some(p) if p.eq_ignore_ascii_case("http") => Some(Proto::Http),
            _ => None,
        })
        .unwrap_or(listener_proto);
    (Some(chain), Forwarded { client, proto })
}

/// Rewrites the forwarding headers for the request going to GitLab: every
/// client-supplied one is dropped and replaced, except that from a trusted
/// proxy `X-Forwarded-For` is appended to and `X-Forwarded-Proto` believed.
pub(crate) fn apply_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    trusted: &[IpNet],
    listener_proto: Proto,
) -> Forwarded {
    let peer = canonical(peer);
    let (chain, forwarded) = resolve(headers, peer, trusted, listener_proto);
    // Load balancers append to X-Forwarded-For and set X-Forwarded-Proto but pass
    // the rest through from the client: nothing else is ever believed. (Looked
    // for first: most requests carry none, and a removal by name costs a parse.)
    if headers.keys().any(|name| FORWARDING.contains(&name.as_str())) {
        for name in FORWARDING {
            headers.remove(*name);
        }
    }
    headers.reserve(4);
    // Addresses and comma lists of visible ASCII always make valid values; a chain
    // from a trusted proxy that somehow does not is dropped rather than forwarded.
    let chain = match chain {
        Some(list) => HeaderValue::from_str(&list).ok(),
        // Without a proxy's list, the chain is the client's address.
        None => Some(address_value(peer)),
    };
    if let Some(chain) = chain {
        headers.insert(X_FORWARDED_FOR, chain);
    }
    headers.insert(X_REAL_IP, address_value(forwarded.client));
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(forwarded.proto.as_str()));
    if forwarded.proto == Proto::Https {
        headers.insert(X_FORWARDED_SSL, HeaderValue::from_static("on"));
    }
    forwarded
}

/// An address as a header value. The last one made on this thread is kept: a
/// connection's requests come from one address, and formatting one costs more
/// than the rest of the forwarding headers together.
fn address_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((held, value)) if *held == ip => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&ip.to_string()).expect("an address is a valid header value");
            *last = Some((ip, value.clone()));
            value
        }
    })
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");

/// All lines of a header joined with ", " (a list may be split across lines).
fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let parts: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Walks `X-Forwarded-For` from the right past trusted proxies; the first
/// untrusted address is the client. Stops at the first entry that is not an
/// address (what lies left of it cannot be believed). All trusted: the leftmost.
fn client_from_chain(chain: &str, trusted: &[IpNet]) -> Option<IpAddr> {
    let mut last = None;
    for entry in chain.rsplit(',') {
        let Some(addr) = parse_forwarded_addr(entry.trim()) else {
            break;
        };
        if !is_trusted(addr, trusted) {
            return Some(addr);
        }
        last = Some(addr);
    }
    last
}

/// Accepts `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, `1.2.3.4:567`, `[::1]:567`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Some(canonical(addr));
    }
    if let Ok(sock) = s.parse::<std::net::SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::VIA, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn owned_values_no_longer_share_the_read_buffer() {
        let buffer = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let shared = HeaderValue::from_maybe_shared(buffer.slice(10..20)).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::DATE, shared);
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        h.insert(header::SET_COOKIE, secret);
        own_values(&mut h);
        let inside = buffer.as_ptr_range();
        assert!(!inside.contains(&h[header::DATE].as_bytes().as_ptr()));
        assert_eq!(h[header::DATE], "xxxxxxxxxx");
        assert!(h[header::SET_COOKIE].is_sensitive());
    }

    #[test]
    fn only_a_single_chunked_is_a_supported_transfer_coding() {
        let te = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            has_unsupported_transfer_coding(&h, Fields::of(&h))
        };
        assert!(!te(&[]));
        assert!(!te(&["chunked"]));
        assert!(!te(&["CHUNKED"]));
        assert!(!te(&[" chunked "]));
        for bad in [
            &["gzip"][..],
            &["gzip, chunked"],
            &["chunked, gzip"],
            &["identity"],
            &["xchunked"],
            &[""],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["chunked", "identity"],
        ] {
            assert!(te(bad), "{bad:?}");
        }
    }

    #[test]
    fn present_names_each_field_carried_once_whatever_its_count() {
        let names = [
            header::VIA,
            header::IF_NONE_MATCH,
            HeaderName::from_static("x-gitlab-token"),
        ];
        assert_eq!(present(&HeaderMap::new(), &names), 0);
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gitlab.example.com"));
        h.insert(header::USER_AGENT, HeaderValue::from_static("curl"));
        assert_eq!(present(&h, &names), 0);
        h.append(header::IF_NONE_MATCH, HeaderValue::from_static("\"a\""));
        h.append(header::IF_NONE_MATCH, HeaderValue::from_static("\"b\""));
        assert_eq!(present(&h, &names), 0b010);
        h.insert("X-GitLab-Token", HeaderValue::from_static("t"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 lb"));
        assert_eq!(present(&h, &names), 0b111);
        assert_eq!(present(&h, &[]), 0);
    }

    #[test]
    fn via_loop_is_our_own_id_only() {
        let me = ViaId::new("a1b2c3".into());
        assert!(!via_names(&HeaderMap::new(), &me));
        assert!(via_names(&via(&["1.1 a1b2c3"]), &me));
        assert!(via_names(&via(&["1.0 fred, 1.1 a1b2c3 (gitlab-oidc-proxy)"]), &me));
        assert!(via_names(&via(&["1.0 fred", "2 a1b2c3"]), &me));
        // Another instance, a prefix of ours, a comment or a protocol that merely
        // looks like it: all pass.
        assert!(!via_names(&via(&["1.1 a1b2c3d4"]), &me));
        assert!(!via_names(&via(&["1.1 a1b2"]), &me));
        assert!(!via_names(&via(&["1.1 proxy (a1b2c3)"]), &me));
        assert!(!via_names(&via(&["a1b2c3 other"]), &me));
        // Found among the other fields of a request.
        let mut h = via(&["1.1 a1b2c3"]);
        h.insert(header::HOST, HeaderValue::from_static("gitlab.example.com"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(via_names(&h, &me));
    }

    #[test]
    fn via_is_appended_with_the_received_protocol() {
        let me = ViaId::new("a1b2c3".into());
        let mut h = via(&["1.0 fred"]);
        append_via(&mut h, Version::HTTP_2, &me);
        let all: Vec<_> = h.get_all(header::VIA).iter().collect();
        assert_eq!(all, ["1.0 fred", "2 a1b2c3"]);
        let mut h = HeaderMap::new();
        append_via(&mut h, Version::HTTP_11, &me);
        assert_eq!(h[header::VIA], "1.1 a1b2c3");
        assert!(via_names(&h, &me));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn fields_name_each_hop_by_hop_header_by_its_place() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            let found = Fields::of(&map(&[("accept", "*/*"), (name, "x")]));
            assert_eq!(found.hop, 1 << i, "{name}");
            assert_eq!(HOP_BY_HOP_NAMES[i].as_str(), *name);
            assert!(!found.content_length && !found.accel);
        }
        assert_eq!(Fields::of(&map(&[("connection", "close")])).hop, CONNECTION_BIT);
        assert_eq!(
            Fields::of(&map(&[("transfer-encoding", "chunked")])).hop,
            TRANSFER_ENCODING_BIT
        );
        assert_eq!(Fields::of(&map(&[("upgrade", "websocket")])).hop, UPGRADE_BIT);
        let found = Fields::of(&map(&[
            ("Content-Length", "2"),
            ("X-Accel-Buffering", "no"),
            ("x-accelerated", "not nginx's"),
        ]));
        assert_eq!(
            found,
            Fields {
                content_length: true,
                accel: true,
                ..Fields::default()
            }
        );
        assert_eq!(Fields::of(&map(&[("x-accelerated", "1")])), Fields::default());
    }

    #[test]
    fn fields_tell_a_connection_line_that_may_name_other_fields() {
        let lists = |lines: &[&str]| {
            let pairs: Vec<(&str, &str)> = lines.iter().map(|l| ("connection", *l)).collect();
            Fields::of(&map(&pairs)).connection_lists
        };
        // Only hop-by-hop names, one a line: nothing else to remove.
        assert!(!lists(&["keep-alive"]));
        assert!(!lists(&[" Keep-Alive "]));
        assert!(!lists(&["Upgrade", "keep-alive"]));
        // Anything else might name a field, on any of the lines.
        assert!(lists(&["close"]));
        assert!(lists(&["keep-alive, x-secret"]));
        assert!(lists(&["keep-alive", "x-secret"]));
        assert!(lists(&[""]));
        // A field it names goes; on the plain path, nothing but the hop-by-hop ones.
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
        ]);
        strip(&mut h);
        assert!(h.is_empty(), "{h:?}");
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("x-kept", "1"),
        ]);
        strip(&mut h);
        assert_eq!(h, map(&[("x-kept", "1")]));
    }

    /// The rules that remove fields, given the walk over the names they are
    /// given in production.
    fn strip(h: &mut HeaderMap) {
        let found = Fields::of(h);
        strip_hop_by_hop(h, found);
    }

    fn strip_internal(h: &mut HeaderMap) {
        let found = Fields::of(h);
        strip_response_internal(h, found);
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| crate::config::parse_cidr(s).unwrap()).collect()
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn strips_standard_hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-authenticate", "Basic"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("content-type", "text/plain"),
            ("x-custom", "kept"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 2, "left: {h:?}");
        assert_eq!(get(&h, "content-type"), Some("text/plain"));
        assert_eq!(get(&h, "x-custom"), Some("kept"));
    }

    #[test]
    fn hop_by_hop_names_are_the_list() {
        let names: Vec<&str> = HOP_BY_HOP_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP);
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i));
        }
        assert_eq!(hop_by_hop_index("content-type"), None);
        // Each alone, in any case the client wrote it, is stripped.
        for name in HOP_BY_HOP {
            let mut h = map(&[(&name.to_uppercase(), "x"), ("x-kept", "1")]);
            strip(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
    }

    #[test]
    fn strips_headers_named_in_connection_across_lines() {
        let mut h = map(&[
            ("connection", "close, X-Foo"),
            ("connection", " x-bar ,,"),
            ("x-foo", "1"),
            ("x-bar", "2"),
            ("x-baz", "3"),
        ]);
        strip(&mut h);
        assert!(h.get("x-foo").is_none());
        assert!(h.get("x-bar").is_none());
        assert_eq!(get(&h, "x-baz"), Some("3"));
        assert!(h.get("connection").is_none());
    }

    #[test]
    fn connection_cannot_remove_protected_headers() {
        let mut h = map(&[
            (
                "connection",
                "host, authorization, cookie, content-length, content-type, content-encoding, x-forwarded-for, x-real-ip, forwarded",
            ),
            ("host", "gitlab.example.com"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("content-length", "3"),
            ("content-type", "text/plain"),
            ("content-encoding", "gzip"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-real-ip", "192.0.2.1"),
            ("forwarded", "for=192.0.2.1"),
        ]);
        strip(&mut h);
        assert_eq!(h.len(), 9, "only Connection itself goes: {h:?}");
        assert_eq!(get(&h, "host"), Some("gitlab.example.com"));
    }

    #[test]
    fn connection_cannot_remove_gitlab_tokens() {
        // GitLab's API tokens are credentials like Authorization: a client (or a
        // hostile intermediary) naming them in Connection must not strip them,
        // in any case, across lines, beside a header that does go.
        let mut h = map(&[
            ("connection", "PRIVATE-TOKEN, x-a"),
            ("connection", "Job-Token"),
            ("private-token", "glpat-secret"),
            ("job-token", "job-secret"),
            ("x-a", "1"),
        ]);
        strip(&mut h);
        assert_eq!(get(&h, "private-token"), Some("glpat-secret"), "{h:?}");
        assert_eq!(get(&h, "job-token"), Some("job-secret"), "{h:?}");
        assert!(h.get("x-a").is_none() && h.get("connection").is_none(), "{h:?}");
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn garbage_connection_tokens_are_ignored() {
        let mut h = map(&[("connection", "bad header name, x-a"), ("x-a", "1"), ("x-b", "2")]);
        strip(&mut h);
        assert!(h.get("x-a").is_none());
        assert_eq!(get(&h, "x-b"), Some("2"));
    }

    #[test]
    fn obs_text_in_connection_spoils_only_its_token() {
        // Found by fuzzing: a non-ASCII byte used to hide every token of its line.
        let mut h = map(&[("upgrade", "websocket"), ("x-a", "1"), ("x-b", "2")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"keep-a\x94ve, Upgrade, x-a").unwrap(),
        );
        assert_eq!(
            requested_upgrade(Version::HTTP_11, &h, Fields::of(&h)),
            Some(HeaderValue::from_static("websocket"))
        );
        strip(&mut h);
        assert!(h.get("x-a").is_none());
        assert_eq!(get(&h, "x-b"), Some("2"));
    }

    #[test]
    fn response_internal_headers_go() {
        let mut h = map(&[
            ("x-accel-buffering", "no"),
            ("x-accel-redirect", "/x"),
            ("x-gitlab-meta", "{}"),
        ]);
        strip_internal(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-gitlab-meta"));
    }

    #[test]
    fn each_request_gets_its_own_address_whatever_came_before() {
        for peer in ["10.0.0.1", "10.0.0.2", "10.0.0.1", "::1", "10.0.0.2"] {
            let mut h = HeaderMap::new();
            apply_forwarding(&mut h, peer.parse().unwrap(), &[], Proto::Http);
            assert_eq!(get(&h, "x-real-ip"), Some(peer));
            assert_eq!(get(&h, "x-forwarded-for"), Some(peer));
        }
    }

    #[test]
    fn nothing_hop_by_hop_nothing_changed() {
        let mut h = map(&[("host", "a"), ("x-a", "1"), ("content-type", "text/plain")]);
        let before = h.clone();
        strip(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn upgrade_detection() {
        let ws = map(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")]);
        assert_eq!(
            requested_upgrade(Version::HTTP_11, &ws, Fields::of(&ws)),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested_upgrade(Version::HTTP_2, &ws, Fields::of(&ws)), None);
        assert_eq!(requested_upgrade(Version::HTTP_10, &ws, Fields::of(&ws)), None);
        let no_conn = map(&[("upgrade", "websocket")]);
        assert_eq!(
            requested_upgrade(Version::HTTP_11, &no_conn, Fields::of(&no_conn)),
            None
        );
        let no_proto = map(&[("connection", "upgrade")]);
        assert_eq!(
            requested_upgrade(Version::HTTP_11, &no_proto, Fields::of(&no_proto)),
            None
        );
        let empty = map(&[("connection", "upgrade"), ("upgrade", "")]);
        assert_eq!(requested_upgrade(Version::HTTP_11, &empty, Fields::of(&empty)), None);

        let mut h = HeaderMap::new();
        set_upgrade(&mut h, HeaderValue::from_static("websocket"));
        assert_eq!(get(&h, "connection"), Some("upgrade"));
        assert_eq!(get(&h, "upgrade"), Some("websocket"));
    }

    fn settle(version: Version, target: &str, hosts: &[&str]) -> Result<Option<String>, HostProblem> {
        let mut h = HeaderMap::new();
        for host in hosts {
            h.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        let default = HeaderValue::from_static("gitlab.example.com");
        settle_host(version, &target.parse().unwrap(), &mut h, || default)?;
        assert!(h.get_all(header::HOST).iter().count() <= 1);
        Ok(get(&h, "host").map(str::to_owned))
    }

    #[test]
    fn both_lengths_conflict() {
        assert!(Fields::of(&map(&[("content-length", "2"), ("transfer-encoding", "chunked")])).conflicting_framing());
        assert!(!Fields::of(&map(&[("content-length", "2")])).conflicting_framing());
        assert!(!Fields::of(&map(&[("transfer-encoding", "chunked")])).conflicting_framing());
        assert!(!Fields::of(&HeaderMap::new()).conflicting_framing());
    }

    #[test]
    fn host_is_settled_as_rfc_9112_says() {
        use Version as V;
        let ok = |host: &str| Ok(Some(host.to_owned()));
        assert_eq!(settle(V::HTTP_11, "/x", &["a.example"]), ok("a.example"));
        assert_eq!(settle(V::HTTP_11, "/x", &["a.example:8080"]), ok("a.example:8080"));
        assert_eq!(settle(V::HTTP_11, "/x", &["127.0.0.1:80"]), ok("127.0.0.1:80"));
        assert_eq!(settle(V::HTTP_11, "/x", &["[::1]:8443"]), ok("[::1]:8443"));
        assert_eq!(settle(V::HTTP_11, "/x", &["[::1]"]), ok("[::1]"));
        assert_eq!(
            settle(V::HTTP_11, "/x", &["[fe80::1%25eth0]:8080"]),
            ok("[fe80::1%25eth0]:8080")
        );
        assert_eq!(settle(V::HTTP_11, "/x", &["A-b_c~d.E:1"]), ok("A-b_c~d.E:1"));
        assert_eq!(settle(V::HTTP_11, "/x", &["gitlab_internal"]), ok("gitlab_internal"));
        // Absolute-form: the target's authority wins over Host (RFC 9112 §3.2.2).
        assert_eq!(
            settle(V::HTTP_11, "http://b.example/x", &["a.example"]),
            ok("b.example")
        );
        // HTTP/2: `:authority` when there is no Host; a Host sent as well is kept.
        assert_eq!(settle(V::HTTP_2, "https://g.example:8443/x", &[]), ok("g.example:8443"));
        assert_eq!(
            settle(V::HTTP_2, "https://g.example/x", &["kept.example"]),
            ok("kept.example")
        );
        // HTTP/1.0 may omit Host: it gets the configured name.
        assert_eq!(settle(V::HTTP_10, "/x", &[]), ok("gitlab.example.com"));
        assert_eq!(settle(V::HTTP_10, "/x", &["a.example"]), ok("a.example"));
    }

    #[test]
    fn bad_hosts_and_targets_are_refused() {
        use Version as V;
        for (version, target, hosts) in [
            (V::HTTP_11, "/x", &[][..]),
            (V::HTTP_2, "/x", &[]),
            (V::HTTP_11, "/x", &["a.example", "b.example"]),
            (V::HTTP_10, "/x", &["a.example", "a.example"]),
            (V::HTTP_11, "/x", &["a.example/evil"]),
            (V::HTTP_11, "/x", &["a.example@evil"]),
            (V::HTTP_11, "/x", &["a.example, b.example"]),
            (V::HTTP_11, "/x", &["a.example,b.example"]),
            (V::HTTP_11, "/x", &[""]),
            (V::HTTP_11, "/x", &["a.example:"]),
            (V::HTTP_11, "/x", &["a.example:99999x"]),
            (V::HTTP_11, "/x", &["a.example?x"]),
            (V::HTTP_11, "/x", &["a example"]),
            (V::HTTP_11, "/x", &[":80"]),
            (V::HTTP_11, "/x", &["a:b:c"]),
            (V::HTTP_11, "/x", &["a.example:123456"]),
            (V::HTTP_11, "/x", &["[::1"]),
            (V::HTTP_11, "/x", &["[::1]x"]),
            (V::HTTP_11, "/x", &["[::1]:"]),
            (V::HTTP_11, "/x", &["[::1]:8x"]),
            (V::HTTP_11, "/x", &["[::1]@evil"]),
            (V::HTTP_11, "/x", &["[nope]"]),
            (V::HTTP_11, "/x", &["[fe80::1%25]"]),
        ] {
            assert_eq!(
                settle(version, target, hosts),
                Err(HostProblem::Host),
                "{version:?} {hosts:?}"
            );
        }
        assert_eq!(settle(V::HTTP_11, "c8", &["a.example"]), Err(HostProblem::Target));
        assert_eq!(settle(V::HTTP_11, "c8:443", &["a.example"]), Err(HostProblem::Target));
    }

    #[test]
    fn untrusted_peer_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-scheme", "https"),
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-real-ip", "6.6.6.6"),
            ("client-ip", "6.6.6.6"),
            ("true-client-ip", "6.6.6.6"),
            ("host", "gitlab.example.com"),
        ]);
        let peer: IpAddr = "203.0.113.7".parse().unwrap();
        let f = apply_forwarding(&mut h, peer, &nets(&["10.0.0.0/8"]), Proto::Http);
        assert_eq!(
            f,
            Forwarded {
                client: peer,
                proto: Proto::Http
            }
        );
        assert_eq!(get(&h, "x-forwarded-for"), Some("203.0.113.7"));
        assert_eq!(get(&h, "x-real-ip"), Some("203.0.113.7"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("http"));
        for gone in [
            "x-forwarded-ssl",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-forwarded-scheme",
            "forwarded",
            "client-ip",
            "true-client-ip",
        ] {
            assert!(h.get(gone).is_none(), "{gone} survived");
        }
        assert_eq!(get(&h, "host"), Some("gitlab.example.com"));
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }

    #[test]
    fn https_listener_sets_ssl_on() {
        let mut h = HeaderMap::new();
        apply_forwarding(&mut h, "192.0.2.1".parse().unwrap(), &[], Proto::Https);
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "x-forwarded-ssl"), Some("on"));
    }

    #[test]
    fn trusted_peer_chain_is_appended_and_client_derived() {
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "gitlab.example.com"),
        ]);
        let f = apply_forwarding(&mut h, "10.0.0.2".parse().unwrap(), &trusted, Proto::Http);
        assert_eq!(f.client, "198.51.100.9".parse::<IpAddr>().unwrap());
        assert_eq!(f.proto, Proto::Https);
        assert_eq!(get(&h, "x-forwarded-for"), Some("198.51.100.9, 10.1.1.1, 10.0.0.2"));
        assert_eq!(get(&h, "x-real-ip"), Some("198.51.100.9"));
        assert_eq!(get(&h, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&h, "x-forwarded-ssl"), Some("on"));
        assert!(
            h.get("x-forwarded-host").is_none(),
            "load balancers pass it from clients; never believed"
        );
    }

    #[test]
    fn trusted_peer_spoofed_left_entries_do_not_win() {
        // The client put 1.1.1.1 in its own header; the LB appended the real address.
        let trusted = nets(&["10.0.0.0/8"]);
        let mut h = map(&[("x-forwarded-for", "1.1.1.1, 198.51.100.9")]);
        let f = apply_forwarding(&mut h, "10.0.0.2".parse().unwrap(), &trusted, Proto::Http);
        assert_eq!(f.client, "198.51.100.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn trusted_peer_multi_line_and_odd_entries() {
        let trusted = nets(&["10.0.0.0/8", "::1"]);
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.9:4711"),
            ("x-forwarded-for", "[2001:db8::5]"),
        ]);
        let f = apply_forwarding(&mut h, "::1".parse().unwrap(), &trusted, Proto::Http);
        assert_eq!(f.client, "2001:db8::5".parse::<IpAddr>().unwrap());
        assert_eq!(
            get(&h, "x-forwarded-for"),
            Some("198.51.100.9:4711, [2001:db8::5], ::1")
        );

        let mut h = map(&[("x-forwarded-for", "garbage, 10.9.9.9")]);
        let f = apply_forwarding(&mut h, "10.0.0.2".parse().unwrap(), &trusted, Proto::Http);
        assert_eq!(
            f.client,
            "10.9.9.9".parse::<IpAddr>().unwrap(),
            "stops at garbage, keeps last trusted"
        );

        let mut h = HeaderMap::new();
        let f = apply_forwarding(&mut h, "10.0.0.2".parse().unwrap(), &trusted, Proto::Https);
        assert_eq!(f.client, "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(get(&h, "x-forwarded-for"), Some("10.0.0.2"));
        assert_eq!(f.proto, Proto::Https, "listener default without a header");
    }

    #[test]
    fn trusted_peer_bad_proto_falls_back() {
        let trusted = nets(&["127.0.0.1"]);
        for (given, want) in [
            ("ftp", "http"),
            ("HTTPS, http", "https"),
            ("http", "http"),
            ("", "http"),
        ] {
            let mut h = map(&[("x-forwarded-proto", given), ("x-forwarded-ssl", "on")]);
            let f = apply_forwarding(&mut h, "127.0.0.1".parse().unwrap(), &trusted, Proto::Http);
            assert_eq!(f.proto.as_str(), want, "given {given:?}");
            assert_eq!(h.get("x-forwarded-ssl").is_some(), want == "https", "given {given:?}");
        }
    }

    #[test]
    fn mapped_ipv4_peer_matches_ipv4_cidr() {
        let trusted = nets(&["127.0.0.0/8"]);
        let mut h = map(&[("x-forwarded-for", "198.51.100.9")]);
        let f = apply_forwarding(&mut h, "::ffff:127.0.0.1".parse().unwrap(), &trusted, Proto::Http);
        assert_eq!(f.client, "198.51.100.9".parse::<IpAddr>().unwrap());
        assert_eq!(get(&h, "x-forwarded-for"), Some("198.51.100.9, 127.0.0.1"));
    }
}
