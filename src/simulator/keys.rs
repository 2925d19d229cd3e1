//! Signing keys of the simulated GitLab: RSA key pairs from `rsa`, their JWKs
//! (reference section 3) and RS256 signatures from `jsonwebtoken`.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::rngs::OsRng;
use rsa::RsaPrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// GitLab's CI (ID token) signing key is RSA 2048.
pub const CI_KEY_BITS: usize = 2048;

/// Omnibus GitLab's OIDC (OAuth application) key is RSA 4096, but this one is
/// RSA 2048: measured in the project's test profile (dependencies at opt-level 3)
/// on a loaded 2-core machine, a 4096-bit key took 0.95-7.8 s (median 2.3 s,
/// mean 2.7 s, 30% of draws over 3 s; prime search is random), against 0.14-0.6 s
/// for 2048 bits. Nothing the proxy does depends on the modulus size; only the
/// length of `n` (342 instead of 683 base64url characters) differs.
pub const OIDC_KEY_BITS: usize = 2048;

/// One RSA signing key with everything the simulator serves or signs with.
pub struct KeyMaterial {
    kid: String,
    public_jwk: Value,
    private_jwk: Value,
    encoding: EncodingKey,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl KeyMaterial {
    /// A fresh key of `bits` bits, public exponent 65537.
    pub fn generate(bits: usize) -> Result<KeyMaterial, String> {
        let key = RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| format!("generating an RSA {bits} key: {e}"))?;
        KeyMaterial::from_private_key(&key)
    }

    fn from_private_key(key: &RsaPrivateKey) -> Result<KeyMaterial, String> {
        let n = b64url(&key.n().to_bytes_be());
        let e = b64url(&key.e().to_bytes_be());
        let kid = thumbprint(&e, &n);
        let public_jwk = json!({
            "kty": "RSA",
            "kid": kid,
            "e": e,
            "n": n,
            "use": "sig",
            "alg": "RS256",
        });

        let [p, q] = key.primes() else {
            return Err("RSA key does not have exactly two primes".to_owned());
        };
        let (Some(dp), Some(dq), Some(qi)) = (key.dp(), key.dq(), key.crt_coefficient()) else {
            return Err("RSA key lacks its CRT values".to_owned());
        };
        let private_jwk = json!({
            "kty": "RSA",
            "kid": kid,
            "e": e,
            "n": n,
            "d": b64url(&key.d().to_bytes_be()),
            "p": b64url(&p.to_bytes_be()),
            "q": b64url(&q.to_bytes_be()),
            "dp": b64url(&dp.to_bytes_be()),
            "dq": b64url(&dq.to_bytes_be()),
            "qi": b64url(&qi.to_bytes_be()),
            "use": "sig",
            "alg": "RS256",
        });

        let der = key
            .to_pkcs1_der()
            .map_err(|e| format!("encoding the RSA key as PKCS#1: {e}"))?;
        let encoding = EncodingKey::from_rsa_der(der.as_bytes());
        let material = KeyMaterial {
            kid,
            public_jwk,
            private_jwk,
            encoding,
        };
        // Signing errors can only come from the key; surface them here, once.
        material
            .sign(b"probe")
            .map_err(|e| format!("the RSA key cannot sign: {e}"))?;
        Ok(material)
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `{"kty","kid","e","n","use","alg"}`, in that order.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// The public members plus `d, p, q, dp, dq, qi` (for the leak fault).
    pub fn private_jwk(&self) -> &Value {
        &self.private_jwk
    }

    /// The base64url RS256 signature of `message` (a JWS signing input).
    pub fn sign(&self, message: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::crypto::sign(message, &self.encoding, Algorithm::RS256)
    }
}

pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// RFC 7638 JWK thumbprint of an RSA key given its base64url `e` and `n`.
pub fn thumbprint(e: &str, n: &str) -> String {
    // Members in lexicographic order, no whitespace (RFC 7638 section 3.2).
    let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
    b64url(&Sha256::digest(canonical.as_bytes()))
}

type SharedKeys = (Arc<KeyMaterial>, Arc<KeyMaterial>);

static SHARED: OnceLock<Result<SharedKeys, String>> = OnceLock::new();

/// The process-wide initial (OIDC, CI) keys, generated on first use (in parallel)
/// and shared by every simulator instance. The first call blocks for the
/// generation time.
pub fn shared_keys() -> Result<SharedKeys, String> {
    SHARED
        .get_or_init(|| {
            std::thread::scope(|scope| {
                let oidc = scope.spawn(|| KeyMaterial::generate(OIDC_KEY_BITS));
                let ci = KeyMaterial::generate(CI_KEY_BITS);
                let oidc = oidc
                    .join()
                    .unwrap_or_else(|_| Err("OIDC key generation panicked".to_owned()));
                Ok((Arc::new(oidc?), Arc::new(ci?)))
            })
        })
        .clone()
}
