//! Signing keys of the simulated GitLab: fixed RSA 2048 key pairs embedded from
//! `keys/*.json`, their JWKs (reference section 3) and RS256 signatures from ring.
//!
//! These keys are public (they are in the repository) and demo-only: they sign
//! the simulator's tokens and nothing real, so nothing may ever trust them.
//! Shipping them instead of generating keys at startup keeps a second RSA
//! implementation out of the binary (ring, which rustls uses, cannot generate RSA
//! keys) and makes startup instant.
//!
//! Each file is a private JWK (`kty, n, e, d, p, q, dp, dq, qi`, base64url without
//! padding), made once with `openssl genrsa 2048` and converted by a throwaway
//! script.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::rsa::{KeyPairComponents, PublicKeyComponents};
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde::Deserialize;
use serde_json::{Value, json};

/// GitLab's CI (ID token) signing key is RSA 2048, and so are the simulator's
/// fixed CI keys.
pub(super) const CI_KEY_BITS: usize = 2048;

/// Omnibus GitLab's OIDC (OAuth application) key is RSA 4096; the simulator's
/// fixed one is RSA 2048, like the rest of the pool. Nothing the proxy does
/// depends on the modulus size; only the length of `n` (342 instead of 683
/// base64url characters) differs.
pub(super) const OIDC_KEY_BITS: usize = 2048;

/// How many CI keys [`SimulatedGitLab::rotate_ci_key`](super::SimulatedGitLab::rotate_ci_key)
/// cycles through before it wraps around to the first.
pub(super) const CI_KEY_POOL: usize = 4;

const OIDC_JWK: (&str, &str) = ("oidc.json", include_str!("keys/oidc.json"));

/// The CI keys in rotation order; the first is every instance's initial key.
const CI_JWKS: [(&str, &str); CI_KEY_POOL] = [
    ("ci-0.json", include_str!("keys/ci-0.json")),
    ("ci-1.json", include_str!("keys/ci-1.json")),
    ("ci-2.json", include_str!("keys/ci-2.json")),
    ("ci-3.json", include_str!("keys/ci-3.json")),
];

// A rotation must change the kid, so there must be somewhere to rotate to.
const _: () = assert!(CI_KEY_POOL >= 2);

/// Why an embedded key cannot be used (a defect of the build, not of input).
#[derive(Clone, Debug, thiserror::Error)]
pub enum KeyError {
    #[error("embedded key {file}: not a private RSA JWK: {reason}")]
    NotAJwk { file: &'static str, reason: String },
    #[error("embedded key {file}: member {member} is not base64url without padding")]
    Base64 { file: &'static str, member: &'static str },
    #[error("embedded key {file}: ring rejects it: {reason}")]
    Rejected { file: &'static str, reason: String },
    #[error("embedded key {file}: RSA {bits}, expected RSA {expected}")]
    Size {
        file: &'static str,
        bits: usize,
        expected: usize,
    },
    #[error("embedded key {file}: cannot sign")]
    CannotSign { file: &'static str },
    #[error("embedded keys {0} and {1} are the same key")]
    Duplicate(&'static str, &'static str),
}

/// The members of a private RSA JWK file, base64url.
#[derive(Deserialize)]
struct PrivateJwk {
    kty: String,
    n: String,
    e: String,
    d: String,
    p: String,
    q: String,
    dp: String,
    dq: String,
    qi: String,
}

/// One RSA signing key with everything the simulator serves or signs with.
pub(super) struct KeyMaterial {
    kid: String,
    public_jwk: Value,
    private_jwk: Value,
    pair: RsaKeyPair,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// The key of one embedded file, which must be RSA `bits` bits.
    fn load(file: &'static str, text: &str, bits: usize) -> Result<KeyMaterial, KeyError> {
        let jwk: PrivateJwk = serde_json::from_str(text).map_err(|e| KeyError::NotAJwk {
            file,
            reason: e.to_string(),
        })?;
        if jwk.kty != "RSA" {
            let reason = format!("kty is {:?}", jwk.kty);
            return Err(KeyError::NotAJwk { file, reason });
        }
        let pair = key_pair(file, &jwk)?;
        let actual = pair.public().modulus_len() * 8;
        if actual != bits {
            return Err(KeyError::Size {
                file,
                bits: actual,
                expected: bits,
            });
        }
        let kid = thumbprint(&jwk.e, &jwk.n);
        let material = KeyMaterial {
            public_jwk: public_jwk(&kid, &jwk),
            private_jwk: private_jwk(&kid, &jwk),
            kid,
            pair,
        };
        // ring checks dP and dQ against e and n only when signing: find out now,
        // once, rather than on the first token.
        material.sign(b"probe").map_err(|_| KeyError::CannotSign { file })?;
        Ok(material)
    }

    pub(super) fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"kty","kid","e","n","use","alg"}`, in that order.
    pub(super) fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// The public members plus `d, p, q, dp, dq, qi` (for the leak fault).
    pub(super) fn private_jwk(&self) -> &Value {
        &self.private_jwk
    }

    /// The base64url RS256 signature of `message` (a JWS signing input).
    pub(super) fn sign(&self, message: &[u8]) -> Result<String, ring::error::Unspecified> {
        let mut signature = vec![0; self.pair.public().modulus_len()];
        // PKCS#1 v1.5 is deterministic: ring takes an RNG for PSS and ignores it here.
        self.pair
            .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut signature)?;
        Ok(b64url(&signature))
    }
}

fn key_pair(file: &'static str, jwk: &PrivateJwk) -> Result<RsaKeyPair, KeyError> {
    let bytes = |member: &'static str, value: &str| {
        URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|_| KeyError::Base64 { file, member })
    };
    let components = KeyPairComponents {
        public_key: PublicKeyComponents {
            n: bytes("n", &jwk.n)?,
            e: bytes("e", &jwk.e)?,
        },
        d: bytes("d", &jwk.d)?,
        p: bytes("p", &jwk.p)?,
        q: bytes("q", &jwk.q)?,
        dP: bytes("dp", &jwk.dp)?,
        dQ: bytes("dq", &jwk.dq)?,
        qInv: bytes("qi", &jwk.qi)?,
    };
    RsaKeyPair::from_components(&components).map_err(|e| KeyError::Rejected {
        file,
        reason: e.to_string(),
    })
}

fn public_jwk(kid: &str, jwk: &PrivateJwk) -> Value {
    json!({
        "kty": "RSA",
        "kid": kid,
        "e": jwk.e,
        "n": jwk.n,
        "use": "sig",
        "alg": "RS256",
    })
}

fn private_jwk(kid: &str, jwk: &PrivateJwk) -> Value {
    json!({
        "kty": "RSA",
        "kid": kid,
        "e": jwk.e,
        "n": jwk.n,
        "d": jwk.d,
        "p": jwk.p,
        "q": jwk.q,
        "dp": jwk.dp,
        "dq": jwk.dq,
        "qi": jwk.qi,
        "use": "sig",
        "alg": "RS256",
    })
}

pub(super) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 JWK thumbprint of an RSA key given its base64url `e` and `n`.
pub(super) fn thumbprint(e: &str, n: &str) -> String {
    // Members in lexicographic order, no whitespace (RFC 7638 section 3.2).
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

/// Every embedded key, loaded once per process and shared by all instances.
#[derive(Debug)]
pub(super) struct KeyPool {
    pub oidc: KeyMaterial,
    /// [`CI_KEY_POOL`] keys in rotation order.
    ci: Vec<KeyMaterial>,
}

impl KeyPool {
    fn load() -> Result<KeyPool, KeyError> {
        let oidc = KeyMaterial::load(OIDC_JWK.0, OIDC_JWK.1, OIDC_KEY_BITS)?;
        let ci = CI_JWKS
            .iter()
            .map(|(file, text)| KeyMaterial::load(file, text, CI_KEY_BITS))
            .collect::<Result<Vec<_>, _>>()?;
        // Distinct kids make every rotation visible to a consumer.
        let ci_files = CI_JWKS.iter().map(|(file, _)| *file);
        let named: Vec<(&'static str, &KeyMaterial)> =
            std::iter::once((OIDC_JWK.0, &oidc)).chain(ci_files.zip(&ci)).collect();
        for (i, (file, key)) in named.iter().enumerate() {
            if let Some((other, _)) = named[i + 1..].iter().find(|(_, k)| k.kid() == key.kid()) {
                return Err(KeyError::Duplicate(file, other));
            }
        }
        Ok(KeyPool { oidc, ci })
    }

    /// The CI key at position `index` of the rotation, wrapping around.
    pub(super) fn ci(&self, index: usize) -> &KeyMaterial {
        &self.ci[index % self.ci.len()]
    }
}

static POOL: OnceLock<Result<KeyPool, KeyError>> = OnceLock::new();

/// The process-wide keys (parsed on first use, in milliseconds).
pub(super) fn pool() -> Result<&'static KeyPool, KeyError> {
    POOL.get_or_init(KeyPool::load).as_ref().map_err(Clone::clone)
}
