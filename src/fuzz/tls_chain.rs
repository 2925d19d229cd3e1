//! Target `tls_chain`: `load_pair` on a certificate file and a key file. One text serves
//! as both (a combined PEM file, as admins often hand over). Input: a flags byte, then
//! either the PEM text itself (bit 0 clear; ASCII '0', '2', '4', '6' do that) or
//! records `kind, length (u16 big-endian), DER` (bit 0 set) that become PEM blocks, so
//! the fuzzer works on the DER directly. Bits 1-2 pick the host names the leaf must
//! cover. Loaded twice, lenient and `--strict-chain`, at a fixed "now". Asserted:
//!
//! - a served chain is made of the file's certificates, each at most once, leaf first
//!   holding the private key's public key, each certificate followed by its issuer
//!   (by name) and only the last one self-issued or without its issuer, all valid now;
//!   `not_after` is the earliest expiry on it;
//! - strict mode accepts only a file that already is the chain, in order, and otherwise
//!   agrees with lenient mode (same error, or `Strict` when lenient had fixes to report);
//! - no message, warning or `Debug` output holds a line of a private key block.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::InconsistentKeys;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::tls::chain::{ChainError, LoadedPair, load_pair};

/// 2027-01-15 08:00:00 UTC, as in the unit tests of `tls::chain`.
const NOW_SECS: u64 = 1_800_000_000;

const HOSTS: [&[&str]; 4] = [
    &[],
    &["gitlab.example.test"],
    &["127.0.0.1", "[::1]"],
    &["gitlab.example.test", "GITLAB.Example.Test.", "127.0.0.1"],
];

/// PEM labels of the DER records, by `kind % 4`.
const LABELS: [&str; 4] = ["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY"];

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = if flags & 1 == 0 {
        rest.to_vec()
    } else {
        pem_from_records(rest)
    };
    let hosts: Vec<String> = HOSTS[usize::from((flags >> 1) & 3)]
        .iter()
        .map(|h| h.to_string())
        .collect();
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let lenient = load_pair(&text, &text, &hosts, false, now);
    let strict = load_pair(&text, &text, &hosts, true, now);
    check_secret_free(&text, &lenient);
    check_secret_free(&text, &strict);
    match (&lenient, &strict) {
        (Ok(l), Ok(s)) => {
            assert_eq!(l.certified.cert, s.certified.cert);
            assert_eq!(l.warnings, s.warnings);
        }
        (Ok(l), Err(e)) => {
            assert!(matches!(e, ChainError::Strict { .. }), "{e}");
            assert!(
                !l.warnings.is_empty(),
                "strict refused what lenient loaded without a word"
            );
        }
        (Err(l), Err(s)) => assert_eq!(l.to_string(), s.to_string()),
        (Err(e), Ok(_)) => panic!("strict accepted what lenient refused: {e}"),
    }
    let file: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text).filter_map(Result::ok).collect();
    if let Ok(pair) = &lenient {
        check_pair(pair, &file, now);
    }
    if let Ok(pair) = &strict {
        assert_eq!(pair.certified.cert, file, "strict: served as the file has it");
    }
}

/// `kind (u8), length (u16 BE), DER` records as PEM blocks; a short last record takes
/// what is left.
fn pem_from_records(mut data: &[u8]) -> Vec<u8> {
    let mut text = String::new();
    while let [kind, hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let label = LABELS[usize::from(kind % 4)];
        let b64 = STANDARD.encode(&rest[..len]);
        text.push_str(&format!("-----BEGIN {label}-----\n"));
        for line in b64.as_bytes().chunks(64) {
            text.push_str(&String::from_utf8_lossy(line));
            text.push('\n');
        }
        text.push_str(&format!("-----END {label}-----\n"));
        data = &rest[len..];
    }
    text.into_bytes()
}

fn check_pair(pair: &LoadedPair, file: &[CertificateDer<'static>], now: SystemTime) {
    let chain = &pair.certified.cert;
    assert!(!chain.is_empty());
    for (i, cert) in chain.iter().enumerate() {
        assert!(file.contains(cert), "served #{i} is not from the file");
        assert!(!chain[..i].contains(cert), "served #{i} twice");
    }
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .map(|der| {
            X509Certificate::from_der(der.as_ref())
                .expect("served certificates parse")
                .1
        })
        .collect();
    if let Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) = pair.certified.keys_match() {
        check_rsa_without_null(pair, &parsed[0]);
    }
    let named = |name: &x509_parser::x509::X509Name<'_>, cert: &X509Certificate<'_>| {
        name.as_raw() == cert.subject().as_raw()
            || (!name.to_string().is_empty() && name.to_string() == cert.subject().to_string())
    };
    for (i, pair) in parsed.windows(2).enumerate() {
        assert!(
            named(pair[0].issuer(), &pair[1]),
            "served #{} is not the issuer of #{i}",
            i + 1
        );
        assert!(
            !named(pair[0].issuer(), &pair[0]),
            "self-issued #{i} is followed by more"
        );
    }
    let at = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs());
    for cert in &parsed {
        let validity = cert.validity();
        assert!(validity.not_before.timestamp() <= 0 || at(validity.not_before.timestamp()) <= now);
        assert!(validity.not_after.timestamp() > 0 && now <= at(validity.not_after.timestamp()));
    }
    let earliest = parsed.iter().map(|c| c.validity().not_after.timestamp()).min();
    assert_eq!(Some(pair.not_after), earliest.map(at));
}

/// The one difference from the key's SubjectPublicKeyInfo a leaf may have: RSA without the
/// NULL parameters, `30 0b 06 09 <rsaEncryption>` right after the SEQUENCE header.
fn check_rsa_without_null(pair: &LoadedPair, leaf: &X509Certificate<'_>) {
    let key = pair.certified.key.public_key().expect("the key's public key");
    let (_, key) = SubjectPublicKeyInfo::from_der(key.as_ref()).expect("the key's SubjectPublicKeyInfo");
    let leaf = leaf.public_key();
    let header = match leaf.raw.get(1) {
        Some(&len) if len < 0x80 => 2,
        Some(&len) => 2 + usize::from(len & 0x7f),
        None => 0,
    };
    let rsa_without_null = [
        0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    assert!(
        key.algorithm.algorithm.to_id_string() == "1.2.840.113549.1.1.1"
            && leaf
                .raw
                .get(header..)
                .is_some_and(|rest| rest.starts_with(&rsa_without_null))
            && leaf.subject_public_key.data == key.subject_public_key.data,
        "the leaf does not hold the private key's public key"
    );
}

/// Base64 lines (16 characters and more) of the text's private key blocks.
fn key_lines(text: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(text);
    let mut inside = false;
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") {
            inside = line.contains("PRIVATE KEY");
        } else if line.starts_with("-----END") {
            inside = false;
        } else if inside && line.len() >= 16 && line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)) {
            lines.push(line.to_owned());
        }
    }
    lines
}

fn check_secret_free(text: &[u8], result: &Result<LoadedPair, ChainError>) {
    let said = match result {
        Ok(pair) => format!("{pair:?} {} {}", pair.leaf_subject, pair.warnings.join(" ")),
        Err(e) => format!("{e} {e:?}"),
    };
    for line in key_lines(text) {
        assert!(!said.contains(&line), "key material in {said:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_pem_blocks() {
        let text = pem_from_records(&[0, 0, 2, 0x30, 0x00, 5, 0, 9, 1]);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n\
             -----BEGIN PRIVATE KEY-----\nAQ==\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(key_lines(b"-----BEGIN EC PRIVATE KEY-----\n 0123456789abcdefg \nshort\n-----END x-----\nnot in a key block at all\n"), ["0123456789abcdefg"]);
    }
}
