//! Loading and checking the certificate chain and private key the TLS listener serves.
//!
//! AWS STS (and most other OIDC consumers) only accept a publicly trusted chain that is
//! served leaf first, each certificate followed by its issuer. Admins routinely hand over
//! bundles in the wrong order, with duplicates or with unrelated certificates (GitLab's docs
//! list "out of order or extra certificates" as a failure cause), so [`load_pair`] puts the
//! chain in serving order itself: it finds the leaf by its key, then follows issuer names
//! whose keys really verify the signatures. What it had to fix is reported as warnings, or
//! refused in strict mode. Things that cannot be fixed (no matching key, an expired
//! certificate, a name that does not cover the served hosts, a certificate posing as an
//! issuer) are errors.
//!
//! No message produced here ever contains key material.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::verify_server_name;
use rustls::server::ParsedCertificate;
use rustls::sign::{CertifiedKey, SigningKey, public_key_to_spki};
use rustls_pki_types::alg_id;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    ServerName, SubjectPublicKeyInfoDer,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::parse_der;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::SubjectPublicKeyInfo;

/// A certificate that expires within this time of "now" draws a warning.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);

/// A checked certificate chain and key, ready to be served.
pub(crate) struct LoadedPair {
    /// The chain in served order, leaf first, each certificate followed by its issuer.
    pub certified: Arc<CertifiedKey>,
    /// The earliest notAfter on the served chain (normally the leaf's).
    pub not_after: SystemTime,
    /// The leaf's subject, human-readable (e.g. "CN=gitlab.example.com").
    pub leaf_subject: String,
    /// One sentence each: what was wrong and what was done about it.
    pub warnings: Vec<String>,
}

impl fmt::Debug for LoadedPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately leaves the key out.
        f.debug_struct("LoadedPair")
            .field("chain_len", &self.certified.cert.len())
            .field("not_after", &self.not_after)
            .field("leaf_subject", &self.leaf_subject)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// Why a certificate/key pair was refused. `Display` is one line meant for the admin;
/// certificates are named by their position in the certificate file (#1 = first) and subject.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChainError {
    #[error("certificate file: {0}")]
    CertPem(String),
    #[error("certificate file: no CERTIFICATE block found (expected PEM starting with -----BEGIN CERTIFICATE-----)")]
    NoCertificates,
    #[error("certificate #{index} in the certificate file cannot be parsed: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("key file: {0}")]
    KeyPem(String),
    #[error("key file: no private key found (expected PEM with PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)")]
    NoPrivateKey,
    #[error(
        "key file: the private key is encrypted; provide it unencrypted (e.g. openssl pkey -in key.pem -out plain.pem)"
    )]
    EncryptedKey,
    #[error("key file: {count} private keys found, expected exactly one")]
    MultipleKeys { count: usize },
    #[error(
        "key file: the private key ({kind}) is not supported; use RSA (2048 to 8192 bits), ECDSA P-256/P-384 or Ed25519"
    )]
    UnsupportedKey { kind: String },
    #[error("the private key matches none of the {count} certificates in the certificate file")]
    KeyMatchesNone { count: usize },
    #[error("certificate {issuer} claims to issue {subject} but did not sign it (wrong or forged issuer certificate)")]
    ForgedIssuer { issuer: String, subject: String },
    #[error("certificate {cert} expired on {date}")]
    Expired { cert: String, date: String },
    #[error("certificate {cert} is not valid until {date}")]
    NotYetValid { cert: String, date: String },
    #[error("host {host:?} is not a valid DNS name or IP address")]
    InvalidHost { host: String },
    #[error("certificate {cert} is not valid for {hosts}; it is valid for {names}")]
    WrongHost { cert: String, hosts: String, names: String },
    #[error("certificate {cert} cannot be checked against the host names: {reason}")]
    LeafUnusable { cert: String, reason: String },
    #[error("the chain needs fixing and --strict-chain is on: {}", problems.join("; "))]
    Strict { problems: Vec<String> },
    #[error("the private key cannot be used: {0}")]
    KeyUnusable(String),
}

/// One certificate of the file.
struct Cert<'a> {
    /// 1-based position in the certificate file.
    pos: usize,
    der: &'a CertificateDer<'static>,
    x509: X509Certificate<'a>,
}

impl Cert<'_> {
    fn subject(&self) -> String {
        let s = self.x509.subject().to_string();
        if s.is_empty() { "empty subject".to_owned() } else { s }
    }

    /// "#2 (CN=Intermediate CA)"
    fn label(&self) -> String {
        format!("#{} ({})", self.pos, self.subject())
    }

    fn self_issued(&self) -> bool {
        same_name(self, self.x509.issuer())
    }

    fn not_before(&self) -> &ASN1Time {
        &self.x509.validity().not_before
    }

    fn not_after(&self) -> &ASN1Time {
        &self.x509.validity().not_after
    }

    fn valid_at(&self, now: SystemTime) -> bool {
        system_time(self.not_before()) <= now && now <= system_time(self.not_after())
    }

    /// The subjectAltName entries as "DNS:a, IP:1.2.3.4"; None when there are none.
    fn san_list(&self) -> Option<String> {
        let san = self.x509.subject_alternative_name().ok().flatten()?;
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(format!("DNS:{dns}")),
                GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| format!("IP:{ip}")),
                _ => None,
            })
            .collect();
        if names.is_empty() { None } else { Some(names.join(", ")) }
    }
}

/// Whether `cert`'s subject is `name`. Byte equality, as webpki does it; the printable form
/// as a fallback for issuers that re-encode the same name (the signature check that follows
/// keeps this honest).
fn same_name(cert: &Cert<'_>, name: &x509_parser::x509::X509Name<'_>) -> bool {
    let subject = cert.x509.subject();
    if subject.as_raw() == name.as_raw() {
        return true;
    }
    let printable = subject.to_string();
    !printable.is_empty() && printable == name.to_string()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn system_time(t: &ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    let offset = Duration::from_secs(secs.unsigned_abs());
    let time = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    time.unwrap_or(UNIX_EPOCH)
}

/// "2026-05-01 12:00:00 UTC" (X.509 times are always UTC).
fn format_date(t: &ASN1Time) -> String {
    let dt = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Loads `cert_pem` (a chain in any order) and `key_pem` (one private key), puts the chain
/// in serving order and checks it; see the module documentation. `hosts` are the DNS names
/// or IP literals the leaf must be valid for. With `strict`, anything that needed fixing in
/// the chain's layout is an error instead of a warning.
pub(crate) fn load_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    hosts: &[String],
    strict: bool,
    now: SystemTime,
) -> Result<LoadedPair, ChainError> {
    let ders = read_certificates(cert_pem)?;
    let certs = parse_certificates(&ders)?;
    let (signing_key, key_spki_der) = read_signing_key(key_pem)?;
    let (_, key_spki) = SubjectPublicKeyInfo::from_der(key_spki_der.as_ref())
        .map_err(|_| ChainError::KeyUnusable("its public key cannot be encoded".to_owned()))?;

    // What was fixed in the chain's layout: warnings normally, errors in strict mode.
    let (unique, duplicates) = dedupe(&certs);
    let mut fixes: Vec<String> = duplicates.into_iter().map(|d| d + "; the copy was dropped").collect();
    let holders = key_holders(&unique, &key_spki, now);
    let Some(&leaf) = holders.first() else {
        return Err(ChainError::KeyMatchesNone { count: certs.len() });
    };
    let (path, path_warnings) = issuer_path(&unique, leaf, now)?;
    fixes.extend(dropped_certificates(&unique, &holders, &path));
    let served: Vec<&Cert<'_>> = path.iter().map(|&i| unique[i]).collect();
    fixes.extend(order_fix(&served));

    check_validity(&served, now)?;
    // Host names, checked by webpki as clients check them (SAN only, wildcards for one label).
    check_hosts(unique[leaf], hosts)?;

    // Never None: the path holds at least the leaf.
    let Some(earliest) = earliest_expiring(&served) else {
        return Err(ChainError::NoCertificates);
    };
    let warnings = report(fixes, path_warnings, unique[leaf], earliest, strict, now)?;
    let chain: Vec<CertificateDer<'static>> = served.iter().map(|c| c.der.clone()).collect();
    Ok(LoadedPair {
        certified: Arc::new(CertifiedKey::new(chain, signing_key)),
        not_after: system_time(earliest.not_after()),
        leaf_subject: leaf_subject(unique[leaf]),
        warnings,
    })
}

/// How a server lays out the chain it sends (leaf first), as `check` reports it.
/// Certificates are named "#N (subject)", N their 1-based position as sent.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    /// The chain as sent.
    pub sent: Vec<String>,
    /// The leaf, then each certificate's issuer among those sent.
    pub path: Vec<String>,
    /// Problems a strict client (AWS STS) refuses: duplicates, certificates out of
    /// order, certificates not on the leaf's chain, one outside its validity.
    pub problems: Vec<String>,
    /// What is worth knowing but refused by nobody: a self-signed leaf, an expiry close at hand.
    pub notes: Vec<String>,
}

/// The layout of `ders` as sent by a server, checked at `now`.
pub(crate) fn layout(ders: &[CertificateDer<'static>], now: SystemTime) -> Result<Layout, ChainError> {
    let certs = parse_certificates(ders)?;
    if certs.is_empty() {
        return Err(ChainError::NoCertificates);
    }
    let (unique, duplicates) = dedupe(&certs);
    let (path, path_warnings) = issuer_path(&unique, 0, now)?;
    let served: Vec<&Cert<'_>> = path.iter().map(|&i| unique[i]).collect();
    let mut problems = duplicates;
    if served.windows(2).any(|w| w[0].pos > w[1].pos) {
        let order: Vec<String> = served.iter().map(|c| format!("#{}", c.pos)).collect();
        problems.push(format!(
            "the certificates are out of order: each must be followed by its issuer ({})",
            order.join(", ")
        ));
    }
    for cert in unique.iter().filter(|c| !served.iter().any(|s| s.pos == c.pos)) {
        problems.push(format!(
            "certificate {} is not part of the chain of {}",
            cert.label(),
            unique[0].label()
        ));
    }
    if let Err(e) = check_validity(&served, now) {
        problems.push(e.to_string());
    }
    let mut notes = path_warnings;
    if unique[0].self_issued() {
        notes.push(format!("certificate {} is self-signed", unique[0].label()));
    }
    notes.extend(earliest_expiring(&served).and_then(|c| expiry_warning(c, now)));
    Ok(Layout {
        sent: certs.iter().map(Cert::label).collect(),
        path: served.iter().map(|c| c.label()).collect(),
        problems,
        notes,
    })
}

/// Parses every certificate of the file; one that does not parse is an error naming its position.
fn parse_certificates<'a>(ders: &'a [CertificateDer<'static>]) -> Result<Vec<Cert<'a>>, ChainError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| match X509Certificate::from_der(der.as_ref()) {
            Ok((_, x509)) => Ok(Cert { pos: i + 1, der, x509 }),
            Err(e) => Err(ChainError::BadCertificate {
                index: i + 1,
                reason: e.to_string(),
            }),
        })
        .collect()
}

/// The key file's signing key and its public key (to find the leaf by). The private key's
/// DER is dropped as soon as the signing key holds it.
fn read_signing_key(key_pem: &[u8]) -> Result<(Arc<dyn SigningKey>, SubjectPublicKeyInfoDer<'static>), ChainError> {
    let key_der = read_private_key(key_pem)?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|_| ChainError::UnsupportedKey {
            kind: describe_key(&key_der),
        })?;
    drop(key_der);
    let spki = signing_key
        .public_key()
        .ok_or_else(|| ChainError::KeyUnusable("its public key cannot be derived".to_owned()))?
        .into_owned();
    Ok((signing_key, spki))
}

/// The certificates with exact duplicates dropped (the first copy is kept), and a line
/// for each copy.
fn dedupe<'c, 'a>(certs: &'c [Cert<'a>]) -> (Vec<&'c Cert<'a>>, Vec<String>) {
    let mut unique: Vec<&Cert<'_>> = Vec::new();
    let mut fixes = Vec::new();
    for cert in certs {
        match unique.iter().find(|kept| kept.der == cert.der) {
            Some(first) => fixes.push(format!(
                "certificate {} is an exact duplicate of #{}",
                cert.label(),
                first.pos
            )),
            None => unique.push(cert),
        }
    }
    (unique, fixes)
}

/// The indices of the certificates holding the private key's public key, the leaf first;
/// empty when none does. A renewed certificate appended to the old one holds the same key:
/// the one valid longest comes first.
fn key_holders(unique: &[&Cert<'_>], key: &SubjectPublicKeyInfo<'_>, now: SystemTime) -> Vec<usize> {
    let mut holders: Vec<usize> = (0..unique.len()).filter(|&i| key_matches(unique[i], key)).collect();
    holders.sort_by_key(|&i| {
        let c = unique[i];
        (!c.valid_at(now), std::cmp::Reverse(c.not_after().timestamp()), c.pos)
    });
    holders
}

/// Serving order, as indices into `unique`: the leaf, then each certificate followed by its
/// issuer, until a self-issued one or an issuer not in the file. Also the warnings for
/// issuers that could only be matched by name.
fn issuer_path(unique: &[&Cert<'_>], leaf: usize, now: SystemTime) -> Result<(Vec<usize>, Vec<String>), ChainError> {
    let mut path = vec![leaf];
    let mut warnings = Vec::new();
    let mut current = unique[leaf];
    while !current.self_issued() {
        let Some(issuer) = find_issuer(unique, &path, current, now)? else {
            break;
        };
        if issuer.by_name_only {
            warnings.push(format!(
                "the signature of certificate {} uses an algorithm that cannot be checked here; {} was taken as its \
                 issuer by name only",
                current.label(),
                unique[issuer.index].label()
            ));
        }
        path.push(issuer.index);
        current = unique[issuer.index];
    }
    Ok((path, warnings))
}

/// The issuer [`find_issuer`] chose.
struct IssuerMatch {
    index: usize,
    /// Its key could not check the signature (an algorithm not supported here): matched by
    /// name alone.
    by_name_only: bool,
}

/// Among the certificates not yet on `path`, the one whose name matches `subject`'s issuer
/// and whose key verifies its signature; None when the file holds no such certificate.
fn find_issuer(
    unique: &[&Cert<'_>],
    path: &[usize],
    subject: &Cert<'_>,
    now: SystemTime,
) -> Result<Option<IssuerMatch>, ChainError> {
    let mut signers = Vec::new();
    let mut unverifiable = Vec::new();
    let mut impostor = None;
    for (i, candidate) in unique.iter().enumerate() {
        if path.contains(&i) || !same_name(candidate, subject.x509.issuer()) {
            continue;
        }
        match subject.x509.verify_signature(Some(candidate.x509.public_key())) {
            Ok(()) => signers.push(i),
            Err(X509Error::SignatureUnsupportedAlgorithm) => unverifiable.push(i),
            Err(_) => impostor = impostor.or(Some(i)),
        }
    }
    // A same-named certificate that did not sign is harmless beside the one that
    // did (a CA's old and new intermediates; it is dropped as extra), but alone
    // it is a wrong or forged issuer that clients would reject.
    if let Some(i) = impostor
        && signers.is_empty()
        && unverifiable.is_empty()
    {
        return Err(ChainError::ForgedIssuer {
            issuer: unique[i].label(),
            subject: subject.label(),
        });
    }
    let by_name_only = signers.is_empty();
    let mut chosen = if by_name_only { unverifiable } else { signers };
    // Cross-signed issuers share name and key: prefer one that is currently valid.
    chosen.sort_by_key(|&i| (!unique[i].valid_at(now), unique[i].pos));
    Ok(chosen.first().map(|&index| IssuerMatch { index, by_name_only }))
}

/// A fix for each certificate left off the served path: other holders of the key first
/// (they lost to the leaf), then the unrelated ones.
fn dropped_certificates(unique: &[&Cert<'_>], holders: &[usize], path: &[usize]) -> Vec<String> {
    let mut fixes = Vec::new();
    let Some((&leaf, others)) = holders.split_first() else {
        return fixes;
    };
    for &i in others.iter().filter(|i| !path.contains(i)) {
        fixes.push(format!(
            "certificate {} also holds the private key's public key, but {} is valid longer and was served instead; \
             {} was dropped",
            unique[i].label(),
            unique[leaf].label(),
            unique[i].label()
        ));
    }
    for (i, cert) in unique.iter().enumerate() {
        if !path.contains(&i) && !holders.contains(&i) {
            fixes.push(format!(
                "certificate {} is not part of the chain of {}; it was dropped",
                cert.label(),
                unique[leaf].label()
            ));
        }
    }
    fixes
}

/// A fix when the file did not already hold the served chain in serving order.
fn order_fix(served: &[&Cert<'_>]) -> Option<String> {
    if !served.windows(2).any(|w| w[0].pos > w[1].pos) {
        return None;
    }
    let mut found = served.to_vec();
    found.sort_by_key(|c| c.pos);
    let found: Vec<String> = found.iter().map(|c| format!("#{} {}", c.pos, c.subject())).collect();
    let order: Vec<String> = served.iter().map(|c| format!("#{}", c.pos)).collect();
    Some(format!(
        "the chain is out of order in the certificate file ({}); it is served leaf first, each certificate \
         followed by its issuer, as {}",
        found.join(", "),
        order.join(", ")
    ))
}

/// Every served certificate must be valid now; the first one that is not is the error.
fn check_validity(served: &[&Cert<'_>], now: SystemTime) -> Result<(), ChainError> {
    for cert in served {
        if now < system_time(cert.not_before()) {
            return Err(ChainError::NotYetValid {
                cert: cert.label(),
                date: format_date(cert.not_before()),
            });
        }
        if now > system_time(cert.not_after()) {
            return Err(ChainError::Expired {
                cert: cert.label(),
                date: format_date(cert.not_after()),
            });
        }
    }
    Ok(())
}

/// The served certificate that expires first (normally the leaf); the earliest in the file
/// on a tie.
fn earliest_expiring<'c, 'a>(served: &[&'c Cert<'a>]) -> Option<&'c Cert<'a>> {
    served
        .iter()
        .copied()
        .min_by_key(|c| (c.not_after().timestamp(), c.pos))
}

/// The warnings to load with, in this order: the layout fixes, the path's own warnings, a
/// self-signed leaf, an expiry close at hand. In strict mode any layout fix is an error instead.
fn report(
    fixes: Vec<String>,
    path_warnings: Vec<String>,
    leaf: &Cert<'_>,
    earliest: &Cert<'_>,
    strict: bool,
    now: SystemTime,
) -> Result<Vec<String>, ChainError> {
    if strict && !fixes.is_empty() {
        return Err(ChainError::Strict { problems: fixes });
    }
    let mut warnings = fixes;
    warnings.extend(path_warnings);
    if leaf.self_issued() {
        warnings.push(format!(
            "certificate {} is self-signed; AWS STS and most clients accept only a publicly trusted chain",
            leaf.label()
        ));
    }
    warnings.extend(expiry_warning(earliest, now));
    Ok(warnings)
}

/// A warning when `cert` expires within [`EXPIRY_WARNING`] of `now`.
fn expiry_warning(cert: &Cert<'_>, now: SystemTime) -> Option<String> {
    let left = system_time(cert.not_after()).duration_since(now).unwrap_or_default();
    if left >= EXPIRY_WARNING {
        return None;
    }
    let when = match left.as_secs() / 86_400 {
        0 => "in less than a day".to_owned(),
        1 => "in 1 day".to_owned(),
        n => format!("in {n} days"),
    };
    Some(format!(
        "certificate {} expires on {} ({when}); renew it",
        cert.label(),
        format_date(cert.not_after())
    ))
}

/// The leaf's subject for display; its alternative names when the subject is empty.
fn leaf_subject(leaf: &Cert<'_>) -> String {
    match leaf.x509.subject().to_string() {
        s if !s.is_empty() => s,
        _ => leaf.san_list().unwrap_or_else(|| "empty subject".to_owned()),
    }
}

/// rsaEncryption without the NULL parameters RFC 3279 asks for (some old issuers leave them out).
const RSA_ENCRYPTION_WITHOUT_NULL: AlgorithmIdentifier =
    AlgorithmIdentifier::from_slice(&[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]);

/// Whether `cert` holds `key`: its SubjectPublicKeyInfo is the key's byte for byte (as rustls
/// compares a pair), or for RSA the same key without NULL parameters. The same key bits under
/// other parameters (another curve) or a malformed algorithm identifier are not the key's
/// certificate: clients would check signatures against something else.
fn key_matches(cert: &Cert<'_>, key: &SubjectPublicKeyInfo<'_>) -> bool {
    let raw = cert.x509.public_key().raw;
    let bits = key.subject_public_key.data.as_ref();
    raw == key.raw
        || (*key.raw == *public_key_to_spki(&alg_id::RSA_ENCRYPTION, bits)
            && *raw == *public_key_to_spki(&RSA_ENCRYPTION_WITHOUT_NULL, bits))
}

/// Whether a client asking for `host` accepts `leaf` (its SANs, wildcards for
/// one label), as webpki decides it.
pub(crate) fn covers(leaf: &CertificateDer<'_>, host: &str) -> bool {
    let (Ok(parsed), Ok(name)) = (ParsedCertificate::try_from(leaf), ServerName::try_from(host)) else {
        return false;
    };
    verify_server_name(&parsed, &name).is_ok()
}

fn check_hosts(leaf: &Cert<'_>, hosts: &[String]) -> Result<(), ChainError> {
    let mut wanted: Vec<&str> = Vec::new();
    for host in hosts {
        let host = host.trim();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if !wanted.contains(&host) {
            wanted.push(host);
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let parsed = ParsedCertificate::try_from(leaf.der).map_err(|e| ChainError::LeafUnusable {
        cert: leaf.label(),
        reason: e.to_string(),
    })?;
    let mut failed = Vec::new();
    for host in wanted {
        let name = ServerName::try_from(host).map_err(|_| ChainError::InvalidHost { host: host.to_owned() })?;
        if verify_server_name(&parsed, &name).is_err() {
            failed.push(host);
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let names = match leaf.san_list() {
        Some(list) => list,
        None => format!(
            "no names at all: it has no subjectAltName entries, and clients ignore the subject ({})",
            leaf.subject()
        ),
    };
    Err(ChainError::WrongHost {
        cert: leaf.label(),
        hosts: failed.join(", "),
        names,
    })
}

/// The CERTIFICATE blocks of the certificate file, in file order. Other blocks are ignored.
fn read_certificates(pem_text: &[u8]) -> Result<Vec<CertificateDer<'static>>, ChainError> {
    let mut certs = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem_text) {
        let (kind, der) = item.map_err(|e| ChainError::CertPem(pem_problem(&e)))?;
        if kind == SectionKind::Certificate {
            certs.push(CertificateDer::from(der));
        }
    }
    if certs.is_empty() {
        if looks_binary(pem_text) {
            return Err(ChainError::CertPem(
                "not PEM text (binary DER?); convert it with openssl x509 -inform der -in cert.der -out cert.pem"
                    .to_owned(),
            ));
        }
        return Err(ChainError::NoCertificates);
    }
    Ok(certs)
}

/// The one private key of the key file. Other blocks (certificates, EC PARAMETERS) are ignored.
fn read_private_key(pem_text: &[u8]) -> Result<PrivateKeyDer<'static>, ChainError> {
    if contains(pem_text, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(pem_text, b"Proc-Type: 4,ENCRYPTED") {
        return Err(ChainError::EncryptedKey);
    }
    let mut keys = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem_text) {
        let (kind, der) = item.map_err(|e| ChainError::KeyPem(pem_problem(&e)))?;
        match kind {
            SectionKind::PrivateKey => keys.push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            SectionKind::RsaPrivateKey => keys.push(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            SectionKind::EcPrivateKey => keys.push(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            _ => {}
        }
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 if looks_binary(pem_text) => Err(ChainError::KeyPem(
            "not PEM text (binary DER?); convert it with openssl pkey -inform der -in key.der -out key.pem".to_owned(),
        )),
        0 => Err(ChainError::NoPrivateKey),
        count => Err(ChainError::MultipleKeys { count }),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn looks_binary(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_err() || data.contains(&0)
}

/// A description of a PEM syntax problem that never quotes the file's contents.
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!(
                "a PEM block has no -----END {}----- line",
                String::from_utf8_lossy(end_marker)
            )
        }
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM block is not valid base64".to_owned(),
        pem::Error::SectionTooLarge => "a PEM block is too large".to_owned(),
        _ => "the PEM text is malformed".to_owned(),
    }
}

/// What kind of key this is ("RSA 1024-bit, PKCS#1", "EC P-521, PKCS#8"), for the error
/// about unsupported keys. Reads algorithm identifiers and sizes only.
fn describe_key(key: &PrivateKeyDer<'_>) -> String {
    match key {
        PrivateKeyDer::Pkcs1(der) => format!("{}, PKCS#1", describe_rsa(der.secret_pkcs1_der())),
        PrivateKeyDer::Sec1(der) => format!("EC{}, SEC1", curve_in(der.secret_sec1_der())),
        PrivateKeyDer::Pkcs8(der) => format!("{}, PKCS#8", describe_pkcs8(der.secret_pkcs8_der())),
        _ => "unknown encoding".to_owned(),
    }
}

/// RSAPrivateKey ::= SEQUENCE { version, modulus INTEGER, ... }
fn describe_rsa(der: &[u8]) -> String {
    let bits = parse_der(der).ok().and_then(|(_, obj)| {
        let modulus = obj.as_sequence().ok()?.get(1)?.as_slice().ok()?;
        let first = modulus.iter().position(|&b| b != 0)?;
        Some((modulus.len() - first) * 8 - modulus[first].leading_zeros() as usize)
    });
    match bits {
        Some(bits) => format!("RSA {bits}-bit"),
        None => "RSA, unreadable".to_owned(),
    }
}

/// PrivateKeyInfo ::= SEQUENCE { version, AlgorithmIdentifier, privateKey OCTET STRING, ... }
fn describe_pkcs8(der: &[u8]) -> String {
    let parsed = parse_der(der).ok().and_then(|(_, obj)| {
        let seq = obj.as_sequence().ok()?;
        let alg = seq.get(1)?.as_sequence().ok()?;
        let oid = alg.first()?.as_oid().ok()?.to_id_string();
        let inner = seq.get(2).and_then(|o| o.as_slice().ok()).unwrap_or_default();
        Some(match oid.as_str() {
            "1.2.840.113549.1.1.1" => describe_rsa(inner),
            "1.2.840.113549.1.1.10" => "RSA-PSS".to_owned(),
            "1.2.840.10045.2.1" => {
                let curve = alg.get(1).and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => "EC P-256".to_owned(),
                    Some("1.3.132.0.34") => "EC P-384".to_owned(),
                    Some("1.3.132.0.35") => "EC P-521".to_owned(),
                    Some("1.3.132.0.10") => "EC secp256k1".to_owned(),
                    Some(other) => format!("EC curve {other}"),
                    None => "EC".to_owned(),
                }
            }
            "1.3.101.112" => "Ed25519".to_owned(),
            "1.3.101.113" => "Ed448".to_owned(),
            "1.2.840.10040.4.1" => "DSA".to_owned(),
            other => format!("algorithm {other}"),
        })
    });
    parsed.unwrap_or_else(|| "unreadable".to_owned())
}

/// The named curve of a SEC1 key, from its `parameters` field.
fn curve_in(der: &[u8]) -> &'static str {
    const CURVES: [(&[u8], &str); 4] = [
        (&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07], " P-256"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], " P-384"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], " P-521"),
        (&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a], " secp256k1"),
    ];
    // parameters is `[0] EXPLICIT OID`: look for the tagged OID.
    CURVES
        .iter()
        .find(|(oid, _)| {
            let mut tagged = vec![0xa0, oid.len() as u8];
            tagged.extend_from_slice(oid);
            contains(der, &tagged)
        })
        .map(|(_, name)| *name)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use base64::Engine as _;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};

    use super::*;

    /// 2027-01-15 08:00:00 UTC: every test runs at this fixed "now".
    const NOW_SECS: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;
    const HOST: &str = "gitlab.example.test";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS as u64)
    }

    fn days(n: i64) -> SystemTime {
        system_time(&ASN1Time::from_timestamp(NOW_SECS + n * DAY).unwrap())
    }

    /// Validity from `from` to `to` days relative to NOW.
    fn validity(params: &mut CertificateParams, from: i64, to: i64) {
        params.not_before = ASN1Time::from_timestamp(NOW_SECS + from * DAY).unwrap().to_datetime();
        params.not_after = ASN1Time::from_timestamp(NOW_SECS + to * DAY).unwrap().to_datetime();
    }

    fn ec_key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn ca_params(cn: &str, from: i64, to: i64) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, from, to);
        params
    }

    type Ca = CertifiedIssuer<'static, KeyPair>;

    fn root(cn: &str) -> Ca {
        CertifiedIssuer::self_signed(ca_params(cn, -3650, 3650), ec_key()).unwrap()
    }

    fn intermediate(cn: &str, parent: &Issuer<'_, KeyPair>, key: KeyPair, from: i64, to: i64) -> Ca {
        CertifiedIssuer::signed_by(ca_params(cn, from, to), key, parent).unwrap()
    }

    /// A leaf for `sans` with subject CN=`cn` (none when empty), valid `from`..`to` days around NOW.
    fn leaf(sans: &[&str], cn: &str, key: &KeyPair, issuer: &Issuer<'_, KeyPair>, from: i64, to: i64) -> String {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        if !cn.is_empty() {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        validity(&mut params, from, to);
        params.signed_by(key, issuer).unwrap().pem()
    }

    /// Root CA → intermediate CA → leaf for gitlab.example.test and 127.0.0.1 (ECDSA P-256).
    struct Pki {
        root: Ca,
        inter: Ca,
        leaf: String,
        key: String,
        leaf_key: KeyPair,
    }

    impl Pki {
        fn root_pem(&self) -> String {
            self.root.pem()
        }
        fn inter_pem(&self) -> String {
            self.inter.pem()
        }
    }

    fn pki_with(leaf_key: KeyPair, leaf_validity: (i64, i64), inter_validity: (i64, i64)) -> Pki {
        let root = root("Test Root CA");
        let inter = intermediate(
            "Test Intermediate CA",
            &root,
            ec_key(),
            inter_validity.0,
            inter_validity.1,
        );
        let leaf = leaf(
            &[HOST, "127.0.0.1"],
            HOST,
            &leaf_key,
            &inter,
            leaf_validity.0,
            leaf_validity.1,
        );
        Pki {
            root,
            inter,
            leaf,
            key: leaf_key.serialize_pem(),
            leaf_key,
        }
    }

    fn pki() -> Pki {
        pki_with(ec_key(), (-10, 90), (-365, 1825))
    }

    fn cat(pems: &[&str]) -> String {
        pems.concat()
    }

    fn hosts() -> Vec<String> {
        vec![HOST.to_owned(), "127.0.0.1".to_owned()]
    }

    /// `check`'s view of a chain a server sends in this order.
    fn sent(pems: &[&str]) -> Layout {
        layout(&read_certificates(cat(pems).as_bytes()).unwrap(), now()).unwrap()
    }

    #[test]
    fn layout_of_a_sent_chain() {
        let p = pki();
        let (leaf, inter, root_pem) = (p.leaf.as_str(), p.inter_pem(), p.root_pem());
        let good = sent(&[leaf, &inter]);
        assert_eq!(good.problems, Vec::<String>::new());
        assert_eq!(
            good.path,
            ["#1 (CN=gitlab.example.test)", "#2 (CN=Test Intermediate CA)"]
        );
        // The root sent too: harmless.
        assert_eq!(sent(&[leaf, &inter, &root_pem]).problems, Vec::<String>::new());
        assert_eq!(
            sent(&[leaf, &root_pem, &inter]).problems,
            ["the certificates are out of order: each must be followed by its issuer (#1, #3, #2)"]
        );
        let other = root("Other Root CA");
        assert_eq!(
            sent(&[leaf, &inter, &other.pem()]).problems,
            ["certificate #3 (CN=Other Root CA) is not part of the chain of #1 (CN=gitlab.example.test)"]
        );
        assert_eq!(
            sent(&[leaf, &inter, &inter]).problems,
            ["certificate #3 (CN=Test Intermediate CA) is an exact duplicate of #2"]
        );
        // The intermediate missing: nothing to say about the layout (trust says the rest).
        assert_eq!(sent(&[leaf]).path, ["#1 (CN=gitlab.example.test)"]);
        let expired = pki_with(ec_key(), (-100, -1), (-365, 1825));
        assert!(
            sent(&[&expired.leaf, &expired.inter_pem()]).problems[0].contains("expired"),
            "{:?}",
            sent(&[&expired.leaf, &expired.inter_pem()]).problems
        );
        let soon = pki_with(ec_key(), (-10, 3), (-365, 1825));
        assert!(sent(&[&soon.leaf, &soon.inter_pem()]).notes[0].contains("in 3 days"));
    }

    fn load(cert: &str, key: &str, strict: bool) -> Result<LoadedPair, ChainError> {
        load_pair(cert.as_bytes(), key.as_bytes(), &hosts(), strict, now())
    }

    fn load_hosts(cert: &str, key: &str, hosts: &[&str]) -> Result<LoadedPair, ChainError> {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        load_pair(cert.as_bytes(), key.as_bytes(), &hosts, false, now())
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    fn served(pair: &LoadedPair) -> Vec<Vec<u8>> {
        pair.certified.cert.iter().map(|c| c.to_vec()).collect()
    }

    fn expect_served(pair: &LoadedPair, pems: &[&str]) {
        assert_eq!(served(pair), pems.iter().map(|p| der(p)).collect::<Vec<_>>());
        pair.certified.keys_match().expect("served leaf holds the key");
    }

    fn err(result: Result<LoadedPair, ChainError>) -> ChainError {
        match result {
            Ok(pair) => panic!("expected an error, got {pair:?}"),
            Err(e) => e,
        }
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }

    fn rsa_key() -> &'static rsa::RsaPrivateKey {
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap())
    }

    fn rsa_pkcs8_pem() -> String {
        rsa_key().to_pkcs8_pem(LineEnding::LF).unwrap().to_string()
    }

    /// The SEC1 ("EC PRIVATE KEY") form of a P-256 key, as `openssl ec` writes it: with the
    /// curve in `parameters`, preceded by an EC PARAMETERS block as `openssl ecparam -genkey` does.
    fn sec1_pem(key: &KeyPair) -> String {
        let pkcs8 = key.serialize_der();
        let marker = [0x02, 0x01, 0x01, 0x04, 0x20];
        let at = pkcs8.windows(marker.len()).position(|w| w == marker).unwrap() + marker.len();
        let scalar = &pkcs8[at..at + 32];
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65);
        let mut sec1 = vec![0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20];
        sec1.extend_from_slice(scalar);
        sec1.extend_from_slice(&[0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]);
        sec1.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
        sec1.extend_from_slice(point);
        let params = pem_encode(
            "EC PARAMETERS",
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        );
        params + &pem_encode("EC PRIVATE KEY", &sec1)
    }

    // ---- correct chains ----

    #[test]
    fn correct_order_loads_without_warnings() {
        let p = pki();
        let pair = load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert!(pair.warnings.is_empty(), "{:?}", pair.warnings);
        assert_eq!(pair.leaf_subject, "CN=gitlab.example.test");
        assert_eq!(pair.not_after, days(90));
    }

    #[test]
    fn included_root_is_kept_without_warning() {
        let p = pki();
        let pair = load(&cat(&[&p.leaf, &p.inter_pem(), &p.root_pem()]), &p.key, true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem(), &p.root_pem()]);
        assert!(pair.warnings.is_empty(), "{:?}", pair.warnings);
    }

    #[test]
    fn leaf_alone_and_self_signed_leaf_load() {
        let p = pki();
        let pair = load(&p.leaf, &p.key, true).unwrap();
        expect_served(&pair, &[&p.leaf]);
        assert!(pair.warnings.is_empty());

        let key = ec_key();
        let mut params = CertificateParams::new(vec![HOST.to_owned(), "127.0.0.1".to_owned()]).unwrap();
        validity(&mut params, -1, 30);
        let cert = params.self_signed(&key).unwrap().pem();
        let pair = load(&cert, &key.serialize_pem(), true).unwrap();
        expect_served(&pair, &[&cert]);
        assert_eq!(pair.warnings.len(), 1, "{:?}", pair.warnings);
        assert!(pair.warnings[0].contains("self-signed"), "{:?}", pair.warnings);
    }

    #[test]
    fn crlf_line_endings_and_surrounding_text_are_accepted() {
        let p = pki();
        let text = format!("subject=CN = gitlab.example.test\r\n{}\r\n{}", p.leaf, p.inter_pem()).replace('\n', "\r\n");
        let pair = load(&text, &p.key.replace('\n', "\r\n"), true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
    }

    #[test]
    fn combined_file_serves_as_both_certificate_and_key_file() {
        let p = pki();
        let both = cat(&[&p.leaf, &p.inter_pem(), &p.key]);
        let pair = load(&both, &both, true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert!(pair.warnings.is_empty());
    }

    // ---- order ----

    #[test]
    fn leaf_last_is_reordered_with_a_warning() {
        let p = pki();
        let file = cat(&[&p.inter_pem(), &p.leaf]);
        let pair = load(&file, &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert_eq!(pair.warnings.len(), 1, "{:?}", pair.warnings);
        let w = &pair.warnings[0];
        assert!(w.contains("out of order"), "{w}");
        assert!(
            w.contains("#1 CN=Test Intermediate CA, #2 CN=gitlab.example.test"),
            "{w}"
        );
        assert!(w.ends_with("as #2, #1"), "{w}");

        let e = err(load(&file, &p.key, true));
        assert!(matches!(e, ChainError::Strict { .. }), "{e}");
        assert!(
            e.to_string().contains("out of order") && e.to_string().contains("--strict-chain"),
            "{e}"
        );
    }

    #[test]
    fn reversed_chain_with_root_is_reordered() {
        let p = pki();
        let file = cat(&[&p.root_pem(), &p.inter_pem(), &p.leaf]);
        let pair = load(&file, &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem(), &p.root_pem()]);
        assert_eq!(pair.warnings.len(), 1);
        assert!(pair.warnings[0].ends_with("as #3, #2, #1"), "{}", pair.warnings[0]);
        assert!(matches!(err(load(&file, &p.key, true)), ChainError::Strict { .. }));
    }

    #[test]
    fn swapped_intermediates_are_reordered() {
        let root = root("Test Root CA");
        let upper = intermediate("Upper Intermediate CA", &root, ec_key(), -365, 1825);
        let lower = intermediate("Lower Intermediate CA", &upper, ec_key(), -365, 1825);
        let key = ec_key();
        let leaf = leaf(&[HOST, "127.0.0.1"], HOST, &key, &lower, -10, 90);
        let key = key.serialize_pem();

        let right = cat(&[&leaf, &lower.pem(), &upper.pem()]);
        let pair = load(&right, &key, true).unwrap();
        assert!(pair.warnings.is_empty());
        expect_served(&pair, &[&leaf, &lower.pem(), &upper.pem()]);

        let swapped = cat(&[&leaf, &upper.pem(), &lower.pem()]);
        let pair = load(&swapped, &key, false).unwrap();
        expect_served(&pair, &[&leaf, &lower.pem(), &upper.pem()]);
        assert_eq!(pair.warnings.len(), 1);
        assert!(pair.warnings[0].ends_with("as #1, #3, #2"), "{}", pair.warnings[0]);
        assert!(matches!(err(load(&swapped, &key, true)), ChainError::Strict { .. }));
    }

    // ---- duplicates and extras ----

    #[test]
    fn duplicates_are_dropped_with_a_warning() {
        let p = pki();
        let file = cat(&[&p.leaf, &p.inter_pem(), &p.inter_pem(), &p.leaf]);
        let pair = load(&file, &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert_eq!(
            pair.warnings,
            [
                "certificate #3 (CN=Test Intermediate CA) is an exact duplicate of #2; the copy was dropped",
                "certificate #4 (CN=gitlab.example.test) is an exact duplicate of #1; the copy was dropped",
            ]
        );
        let e = err(load(&file, &p.key, true));
        assert!(
            matches!(&e, ChainError::Strict { problems } if problems.len() == 2),
            "{e}"
        );
        assert!(e.to_string().contains("duplicate of #2"), "{e}");
    }

    #[test]
    fn unrelated_certificates_are_dropped_with_a_warning() {
        let p = pki();
        let other = root("Unrelated Root");
        let file = cat(&[&other.pem(), &p.leaf, &p.inter_pem()]);
        let pair = load(&file, &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        // Only the extra is reported: what remains is in order.
        assert_eq!(
            pair.warnings,
            [
                "certificate #1 (CN=Unrelated Root) is not part of the chain of #2 (CN=gitlab.example.test); it was \
                 dropped"
            ]
        );
        let e = err(load(&file, &p.key, true));
        assert!(
            e.to_string()
                .contains("#1 (CN=Unrelated Root) is not part of the chain"),
            "{e}"
        );

        // An intermediate of another chain, appended after the chain.
        let stray = intermediate("Stray Intermediate CA", &other, ec_key(), -1, 100);
        let pair = load(&cat(&[&p.leaf, &p.inter_pem(), &stray.pem()]), &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert_eq!(pair.warnings.len(), 1);
        assert!(pair.warnings[0].contains("#3 (CN=Stray Intermediate CA)"));
    }

    #[test]
    fn strict_mode_reports_every_fix() {
        let p = pki();
        let other = root("Unrelated Root");
        let file = cat(&[&p.inter_pem(), &p.leaf, &other.pem(), &p.leaf]);
        let pair = load(&file, &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert_eq!(pair.warnings.len(), 3, "{:?}", pair.warnings);
        match err(load(&file, &p.key, true)) {
            ChainError::Strict { problems } => assert_eq!(problems, pair.warnings),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn renewed_certificate_with_the_same_key_wins_over_the_old_one() {
        let p = pki();
        let renewed = leaf(&[HOST, "127.0.0.1"], HOST, &p.leaf_key, &p.inter, -1, 365);
        let file = cat(&[&p.leaf, &renewed, &p.inter_pem()]);
        let pair = load(&file, &p.key, false).unwrap();
        expect_served(&pair, &[&renewed, &p.inter_pem()]);
        assert_eq!(pair.not_after, days(365));
        assert_eq!(pair.warnings.len(), 1, "{:?}", pair.warnings);
        assert!(pair.warnings[0].starts_with("certificate #1 (CN=gitlab.example.test) also holds"));
        assert!(matches!(err(load(&file, &p.key, true)), ChainError::Strict { .. }));

        // An expired old certificate is not served, so it is no error either.
        let expired = leaf(&[HOST], HOST, &p.leaf_key, &p.inter, -400, -5);
        let pair = load(&cat(&[&expired, &p.leaf, &p.inter_pem()]), &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
    }

    #[test]
    fn currently_valid_issuer_is_preferred_over_an_expired_twin() {
        // Same name and key, different validity: what cross-signed or re-issued CAs look like.
        let root = root("Test Root CA");
        let inter_key = ec_key();
        let inter_der_key = KeyPair::from_pem(&inter_key.serialize_pem()).unwrap();
        let old = intermediate("Test Intermediate CA", &root, inter_der_key, -2000, -100);
        let new = intermediate("Test Intermediate CA", &root, inter_key, -50, 2000);
        let key = ec_key();
        let leaf = leaf(&[HOST, "127.0.0.1"], HOST, &key, &new, -10, 90);
        let pair = load(&cat(&[&leaf, &old.pem(), &new.pem()]), &key.serialize_pem(), false).unwrap();
        expect_served(&pair, &[&leaf, &new.pem()]);
        assert_eq!(pair.warnings.len(), 1);
        assert!(pair.warnings[0].contains("#2 (CN=Test Intermediate CA) is not part of the chain"));
    }

    // ---- wrong or forged certificates ----

    #[test]
    fn key_matching_no_certificate_is_an_error() {
        let p = pki();
        let other = ec_key().serialize_pem();
        let e = err(load(&cat(&[&p.leaf, &p.inter_pem()]), &other, false));
        assert!(matches!(e, ChainError::KeyMatchesNone { count: 2 }));
        assert_eq!(
            e.to_string(),
            "the private key matches none of the 2 certificates in the certificate file"
        );
        // The CA's key is not the leaf's either: a key for a CA certificate makes that the leaf,
        // and then the host check fails.
        let e = err(load(
            &cat(&[&p.leaf, &p.inter_pem()]),
            &p.inter.key().serialize_pem(),
            false,
        ));
        assert!(matches!(e, ChainError::WrongHost { .. }), "{e}");
    }

    #[test]
    fn forged_issuer_is_an_error() {
        let p = pki();
        let forged = intermediate("Test Intermediate CA", &p.root, ec_key(), -365, 1825);
        let expected = "certificate #2 (CN=Test Intermediate CA) claims to issue #1 (CN=gitlab.example.test) but did \
                        not sign it (wrong or forged issuer certificate)";

        let e = err(load(&cat(&[&p.leaf, &forged.pem()]), &p.key, false));
        assert!(matches!(e, ChainError::ForgedIssuer { .. }));
        assert_eq!(e.to_string(), expected);

        // Next to the real one (a CA's old and new intermediate), it is only an extra.
        let both = cat(&[&p.leaf, &forged.pem(), &p.inter_pem()]);
        let pair = load(&both, &p.key, false).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert!(
            pair.warnings
                .iter()
                .any(|w| w.contains("#2") && w.contains("not part of the chain")),
            "{:?}",
            pair.warnings
        );
        assert!(matches!(err(load(&both, &p.key, true)), ChainError::Strict { .. }));

        // A forged root above a real intermediate.
        let fake_root = root("Test Root CA");
        let e = err(load(&cat(&[&p.leaf, &p.inter_pem(), &fake_root.pem()]), &p.key, false));
        assert!(
            e.to_string()
                .starts_with("certificate #3 (CN=Test Root CA) claims to issue #2"),
            "{e}"
        );
    }

    // ---- validity ----

    #[test]
    fn expired_leaf_is_an_error() {
        let p = pki_with(ec_key(), (-90, -1), (-365, 1825));
        let e = err(load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, false));
        assert!(matches!(e, ChainError::Expired { .. }));
        assert_eq!(
            e.to_string(),
            "certificate #1 (CN=gitlab.example.test) expired on 2027-01-14 08:00:00 UTC"
        );
    }

    #[test]
    fn expired_intermediate_is_an_error() {
        let p = pki_with(ec_key(), (-10, 90), (-365, -2));
        let e = err(load(&cat(&[&p.inter_pem(), &p.leaf]), &p.key, false));
        assert_eq!(
            e.to_string(),
            "certificate #1 (CN=Test Intermediate CA) expired on 2027-01-13 08:00:00 UTC"
        );
    }

    #[test]
    fn not_yet_valid_is_an_error() {
        let p = pki_with(ec_key(), (1, 90), (-365, 1825));
        let e = err(load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, false));
        assert!(matches!(e, ChainError::NotYetValid { .. }));
        assert_eq!(
            e.to_string(),
            "certificate #1 (CN=gitlab.example.test) is not valid until 2027-01-16 08:00:00 UTC"
        );

        let p = pki_with(ec_key(), (-10, 90), (2, 1825));
        let e = err(load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, false));
        assert!(
            e.to_string()
                .starts_with("certificate #2 (CN=Test Intermediate CA) is not valid until"),
            "{e}"
        );
    }

    #[test]
    fn expiring_soon_warns_with_the_date_and_days_left() {
        let p = pki_with(ec_key(), (-85, 5), (-365, 1825));
        let pair = load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, true).unwrap();
        assert_eq!(pair.not_after, days(5));
        assert_eq!(
            pair.warnings,
            ["certificate #1 (CN=gitlab.example.test) expires on 2027-01-20 08:00:00 UTC (in 5 days); renew it"]
        );

        // Just outside the window: no warning.
        let p = pki_with(ec_key(), (-85, 15), (-365, 1825));
        let pair = load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, true).unwrap();
        assert!(pair.warnings.is_empty());
    }

    #[test]
    fn earliest_expiry_on_the_chain_counts() {
        let p = pki_with(ec_key(), (-10, 300), (-365, 3));
        let pair = load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, false).unwrap();
        assert_eq!(pair.not_after, days(3));
        assert_eq!(pair.warnings.len(), 1);
        assert!(pair.warnings[0].starts_with("certificate #2 (CN=Test Intermediate CA) expires on"));
        assert!(pair.warnings[0].contains("(in 3 days)"));
    }

    // ---- host names ----

    #[test]
    fn wrong_host_is_an_error_naming_the_certificate_names() {
        let p = pki();
        let file = cat(&[&p.leaf, &p.inter_pem()]);
        let e = err(load_hosts(&file, &p.key, &[HOST, "gitlab.example.com", "10.0.0.1"]));
        assert!(matches!(e, ChainError::WrongHost { .. }));
        assert_eq!(
            e.to_string(),
            "certificate #1 (CN=gitlab.example.test) is not valid for gitlab.example.com, 10.0.0.1; it is valid for \
             DNS:gitlab.example.test, IP:127.0.0.1"
        );
        // Hosts are optional; duplicates and brackets are fine.
        load_hosts(&file, &p.key, &[]).unwrap();
        load_hosts(&file, &p.key, &[HOST, HOST, "127.0.0.1"]).unwrap();
    }

    #[test]
    fn wildcard_matches_one_label() {
        let root = root("Test Root CA");
        let key = ec_key();
        let cert = leaf(&["*.example.test"], "*.example.test", &key, &root, -1, 90);
        let key = key.serialize_pem();
        load_hosts(
            &cert,
            &key,
            &["gitlab.example.test", "registry.example.test", "GITLAB.Example.Test"],
        )
        .unwrap();
        for bad in ["example.test", "a.gitlab.example.test", "gitlab.example.com"] {
            let e = err(load_hosts(&cert, &key, &[bad]));
            assert!(
                e.to_string()
                    .contains(&format!("is not valid for {bad}; it is valid for DNS:*.example.test")),
                "{e}"
            );
        }
    }

    #[test]
    fn ip_hosts_match_ip_addresses_only() {
        let root = root("Test Root CA");
        let key = ec_key();
        let cert = leaf(&[HOST, "127.0.0.1", "::1"], HOST, &key, &root, -1, 90);
        let key = key.serialize_pem();
        load_hosts(&cert, &key, &["127.0.0.1", "::1", "[::1]"]).unwrap();
        let e = err(load_hosts(&cert, &key, &["127.0.0.2"]));
        assert!(
            e.to_string()
                .contains("not valid for 127.0.0.2; it is valid for DNS:gitlab.example.test, IP:127.0.0.1, IP:::1"),
            "{e}"
        );

        // An IP address in a dNSName entry does not count.
        let key2 = ec_key();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::DnsName("10.0.0.1".try_into().unwrap())];
        validity(&mut params, -1, 30);
        let cert2 = params.signed_by(&key2, &root).unwrap().pem();
        assert!(matches!(
            err(load_hosts(&cert2, &key2.serialize_pem(), &["10.0.0.1"])),
            ChainError::WrongHost { .. }
        ));
    }

    #[test]
    fn subject_common_name_alone_does_not_count() {
        let root = root("Test Root CA");
        let key = ec_key();
        let cert = leaf(&[], HOST, &key, &root, -1, 90);
        let e = err(load_hosts(&cert, &key.serialize_pem(), &[HOST]));
        assert_eq!(
            e.to_string(),
            "certificate #1 (CN=gitlab.example.test) is not valid for gitlab.example.test; it is valid for no names at \
             all: it has no subjectAltName entries, and clients ignore the subject (CN=gitlab.example.test)"
        );
    }

    #[test]
    fn invalid_host_is_an_error() {
        let p = pki();
        let e = err(load_hosts(&p.leaf, &p.key, &["not a host!"]));
        assert_eq!(
            e.to_string(),
            "host \"not a host!\" is not a valid DNS name or IP address"
        );
    }

    #[test]
    fn leaf_without_subject_is_named_by_its_alternative_names() {
        let root = root("Test Root CA");
        let key = ec_key();
        let cert = leaf(&[HOST], "", &key, &root, -1, 90);
        let pair = load_hosts(&cert, &key.serialize_pem(), &[HOST]).unwrap();
        assert_eq!(pair.leaf_subject, "DNS:gitlab.example.test");
    }

    // ---- key formats ----

    #[test]
    fn rsa_leaf_key_loads_from_pkcs8_and_pkcs1() {
        let pkcs8 = rsa_pkcs8_pem();
        let leaf_key = KeyPair::from_pem(&pkcs8).unwrap();
        let p = pki_with(leaf_key, (-10, 90), (-365, 1825));
        let file = cat(&[&p.leaf, &p.inter_pem()]);

        let pair = load(&file, &pkcs8, true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);

        let pkcs1 = rsa_key().to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let pair = load(&file, &pkcs1, true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        assert!(pair.warnings.is_empty());
    }

    #[test]
    fn rsa_signatures_on_the_chain_are_verified() {
        // RSA root signs the ECDSA intermediate: the path needs an RSA signature check.
        let rsa_ca_key = KeyPair::from_pem(&rsa_pkcs8_pem()).unwrap();
        let rsa_root = CertifiedIssuer::self_signed(ca_params("RSA Root CA", -100, 3650), rsa_ca_key).unwrap();
        let inter = intermediate("Test Intermediate CA", &rsa_root, ec_key(), -100, 1000);
        let key = ec_key();
        let leaf = leaf(&[HOST, "127.0.0.1"], HOST, &key, &inter, -1, 90);
        let pair = load(
            &cat(&[&rsa_root.pem(), &leaf, &inter.pem()]),
            &key.serialize_pem(),
            false,
        )
        .unwrap();
        expect_served(&pair, &[&leaf, &inter.pem(), &rsa_root.pem()]);
    }

    #[test]
    fn sec1_ec_key_loads() {
        let p = pki();
        let sec1 = sec1_pem(&p.leaf_key);
        assert!(sec1.contains("-----BEGIN EC PRIVATE KEY-----"));
        let pair = load(&cat(&[&p.leaf, &p.inter_pem()]), &sec1, true).unwrap();
        expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
    }

    #[test]
    fn p384_and_ed25519_keys_load() {
        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let p = pki_with(KeyPair::generate_for(alg).unwrap(), (-10, 90), (-365, 1825));
            let pair = load(&cat(&[&p.leaf, &p.inter_pem()]), &p.key, true).unwrap();
            expect_served(&pair, &[&p.leaf, &p.inter_pem()]);
        }
    }

    // ---- malformed input ----

    #[test]
    fn garbage_certificate_files_are_errors() {
        let p = pki();
        let cases: [(&[u8], &str); 6] = [
            (b"", "certificate file: no CERTIFICATE block found"),
            (b"hello world\n", "certificate file: no CERTIFICATE block found"),
            (p.key.as_bytes(), "certificate file: no CERTIFICATE block found"),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!! not base64 !!!!\n-----END CERTIFICATE-----\n",
                "certificate file: a PEM block is not valid base64",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nMIIB\n",
                "certificate file: a PEM block has no -----END CERTIFICATE----- line",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
                "certificate #1 in the certificate file cannot be parsed",
            ),
        ];
        for (input, expected) in cases {
            let e = err(load_pair(input, p.key.as_bytes(), &[], false, now()));
            assert!(e.to_string().starts_with(expected), "{e}");
        }
        let e = err(load_pair(&der(&p.leaf), p.key.as_bytes(), &[], false, now()));
        assert!(
            e.to_string()
                .starts_with("certificate file: not PEM text (binary DER?)"),
            "{e}"
        );
    }

    #[test]
    fn key_file_must_hold_exactly_one_usable_key() {
        let p = pki();
        let chain = cat(&[&p.leaf, &p.inter_pem()]);
        let two = cat(&[&p.key, &ec_key().serialize_pem()]);
        let e = err(load(&chain, &two, false));
        assert!(matches!(e, ChainError::MultipleKeys { count: 2 }));
        assert_eq!(e.to_string(), "key file: 2 private keys found, expected exactly one");

        for none in ["", "garbage\n", &p.leaf] {
            let e = err(load(&chain, none, false));
            assert!(matches!(e, ChainError::NoPrivateKey), "{e}");
        }

        let e = err(load(
            &chain,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIFHzBJBgkqhkiG9w0BBQ0wPDAbBgkqhkiG9w0BBQww\n\
             -----END ENCRYPTED PRIVATE KEY-----\n",
            false,
        ));
        assert!(matches!(e, ChainError::EncryptedKey), "{e}");
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                      DEK-Info: AES-256-CBC,0123456789ABCDEF0123456789ABCDEF\n\n\
                      MIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n";
        assert!(matches!(err(load(&chain, legacy, false)), ChainError::EncryptedKey));

        let e = err(load(
            &chain,
            "-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n",
            false,
        ));
        assert_eq!(e.to_string(), "key file: a PEM block is not valid base64");

        let e = err(load_pair(
            chain.as_bytes(),
            &p.leaf_key.serialize_der(),
            &[],
            false,
            now(),
        ));
        assert!(e.to_string().starts_with("key file: not PEM text (binary DER?)"), "{e}");
    }

    #[test]
    fn unsupported_keys_are_named() {
        let p = pki();
        let chain = cat(&[&p.leaf, &p.inter_pem()]);
        let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let cases = [
            (
                small.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
                "RSA 1024-bit, PKCS#1",
            ),
            (
                small.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
                "RSA 1024-bit, PKCS#8",
            ),
            // PrivateKeyInfo for an EC key on P-521, which ring cannot sign with.
            (
                pem_encode(
                    "PRIVATE KEY",
                    &[
                        0x30, 0x1c, 0x02, 0x01, 0x00, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
                        0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23, 0x04, 0x05, 0x30, 0x03, 0x02, 0x01, 0x01,
                    ],
                ),
                "EC P-521, PKCS#8",
            ),
            (pem_encode("PRIVATE KEY", b"not a key"), "unreadable, PKCS#8"),
            (pem_encode("EC PRIVATE KEY", b"not a key"), "EC, SEC1"),
        ];
        for (key, kind) in cases {
            let e = err(load(&chain, &key, false));
            assert_eq!(
                e.to_string(),
                format!(
                    "key file: the private key ({kind}) is not supported; use RSA (2048 to 8192 bits), ECDSA \
                     P-256/P-384 or Ed25519"
                )
            );
        }
    }

    #[test]
    fn no_key_material_in_messages() {
        let p = pki();
        let rsa_pem = rsa_pkcs8_pem();
        let pkcs1 = rsa_key().to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        let sec1 = sec1_pem(&p.leaf_key);
        let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let small = small.to_pkcs1_pem(LineEnding::LF).unwrap().to_string();
        let truncated: String = p.key.lines().take(2).collect::<Vec<_>>().join("\n");
        let broken = p.key.replacen('A', "%", 1);
        let chain = cat(&[&p.leaf, &p.inter_pem()]);
        let other = pki();
        let keys = [
            &p.key,
            &rsa_pem,
            &pkcs1,
            &sec1,
            &small,
            &truncated,
            &broken,
            &cat(&[&p.key, &rsa_pem]),
        ];
        let mut checked = 0;
        for key in keys {
            // Against the matching chain, another chain, and garbage.
            for cert in [&chain, &cat(&[&other.leaf, &other.inter_pem()]), &"junk".to_owned()] {
                let message = match load(cert, key, true) {
                    Ok(pair) => format!("{pair:?} {}", pair.warnings.join(" ")),
                    Err(e) => format!("{e} {e:?}"),
                };
                for line in key.lines().filter(|l| !l.starts_with("-----") && l.len() >= 8) {
                    assert!(!message.contains(line), "key material in {message:?}");
                    assert!(!message.contains(&line[..8]), "key material in {message:?}");
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 24);
        let e = err(load(&chain, &broken, false));
        assert!(matches!(e, ChainError::KeyPem(_)), "{e}");
    }
}
