//! One ACME order, through instant-acme, and the cache it reads and writes:
//! `account.json` (the account key and URL, with the directory it belongs to),
//! `certificate.pem` and `key.pem`. Files 0600 in a 0700 directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use crate::config::{AcmeChallenge, AcmeSettings};
use crate::tls::chain::{self, LoadedPair};

use rustls::sign::CertifiedKey;
use std::sync::Arc;

const ACCOUNT: &str = "account.json";
const CERTIFICATE: &str = "certificate.pem";
const KEY: &str = "key.pem";
/// A whole order (account, challenges, issuance) gives up after this.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Validation and issuance are polled within this.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// What an order publishes for the server to validate.
pub(super) enum Published {
    /// TLS-ALPN-01: the challenge certificate of a domain.
    Alpn(String, Arc<CertifiedKey>),
    /// HTTP-01: a token and its key authorization.
    Http(String, String),
}

pub(super) type Publish<'a> = dyn Fn(Published) + Send + Sync + 'a;

/// Why no certificate was obtained (or the cache could not be used).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("--acme-cache {path}: {source}")]
    Cache { path: String, source: std::io::Error },
    #[error("--acme-ca: {0}")]
    Client(String),
    #[error("ACME server: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME order: {0}")]
    Order(String),
    #[error("the obtained certificate is refused: {0}")]
    Refused(#[from] chain::ChainError),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("signing key: {0}")]
    Key(rustls::Error),
}

/// The account as kept: the credentials are tied to one directory.
#[derive(Serialize, Deserialize)]
struct CachedAccount {
    directory: String,
    credentials: AccountCredentials,
}

fn cache_error(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Cache {
        path: path.display().to_string(),
        source,
    }
}

/// Creates the cache directory if missing, makes it 0700; it must be writable.
pub(super) fn prepare_cache(dir: &Path) -> Result<(), AcmeError> {
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(cache_error(dir))?;
    }
    // It holds private keys: the proxy's user alone may read it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(cache_error(dir))?;
    let probe = dir.join(".write-test");
    write_private(&probe, b"")?;
    fs::remove_file(&probe).map_err(cache_error(&probe))
}

/// Writes `content` to `path` as 0600 through a temporary file and a rename,
/// so a reader never sees half a file.
fn write_private(path: &Path, content: &[u8]) -> Result<(), AcmeError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(cache_error(&tmp))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(content))
        .and_then(|()| file.sync_all())
        .map_err(cache_error(&tmp))?;
    fs::rename(&tmp, path).map_err(cache_error(path))
}

/// The cached pair, if it names every domain and is not due for renewal
/// checks beyond being valid now (renewal decides on its age).
pub(super) fn read_cached(settings: &AcmeSettings) -> Option<LoadedPair> {
    let cert = fs::read(settings.cache.join(CERTIFICATE)).ok()?;
    let key = fs::read(settings.cache.join(KEY)).ok()?;
    match chain::load_pair(&cert, &key, &settings.domains, false, SystemTime::now()) {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::warn!(error = %e, cache = %settings.cache.display(), "cached ACME certificate not used");
            None
        }
    }
}

/// Orders a certificate for every domain, stores it and returns it loaded.
/// `publish` makes each challenge's answer available to the server.
pub(super) async fn obtain(s: &AcmeSettings, publish: &Publish<'_>) -> Result<LoadedPair, AcmeError> {
    let result = tokio::time::timeout(ORDER_TIMEOUT, order(s, publish)).await;
    let (chain_pem, key_pem) =
        result.map_err(|_| AcmeError::Order(format!("no certificate within {ORDER_TIMEOUT:?}")))??;
    let pair = chain::load_pair(
        chain_pem.as_bytes(),
        key_pem.as_bytes(),
        &s.domains,
        false,
        SystemTime::now(),
    )?;
    // The key first: a certificate on disk always has its key next to it.
    write_private(&s.cache.join(KEY), key_pem.as_bytes())?;
    write_private(&s.cache.join(CERTIFICATE), chain_pem.as_bytes())?;
    Ok(pair)
}

/// The order itself: (chain PEM, key PEM).
async fn order(s: &AcmeSettings, publish: &Publish<'_>) -> Result<(String, String), AcmeError> {
    let account = account(s).await?;
    let identifiers: Vec<Identifier> = s.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    tracing::info!(domains = ?s.domains, order = order.url(), "ACME order placed");
    answer_challenges(s.challenge, publish, &mut order).await?;
    match order.poll_ready(&POLL).await? {
        OrderStatus::Ready => {}
        status => return Err(AcmeError::Order(format!("order {status:?} after validation"))),
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    Ok((chain_pem, key_pem))
}

/// Publishes the chosen challenge of every pending authorization and tells
/// the server it is ready.
async fn answer_challenges(
    chosen: AcmeChallenge,
    publish: &Publish<'_>,
    order: &mut instant_acme::Order,
) -> Result<(), AcmeError> {
    let kind = match chosen {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => return Err(AcmeError::Order(format!("authorization {status:?}"))),
        }
        let mut challenge = authorization
            .challenge(kind.clone())
            .ok_or_else(|| AcmeError::Order(format!("the server offers no {kind:?} challenge")))?;
        let name = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        publish(match chosen {
            AcmeChallenge::TlsAlpn01 => {
                let cert = challenge_certificate(&name, key_authorization.digest().as_ref())?;
                Published::Alpn(name, cert)
            }
            AcmeChallenge::Http01 => Published::Http(challenge.token.clone(), key_authorization.as_str().to_owned()),
        });
        challenge.set_ready().await?;
    }
    Ok(())
}

/// The cached account of this directory, or a new one (then cached).
async fn account(s: &AcmeSettings) -> Result<Account, AcmeError> {
    let path = s.cache.join(ACCOUNT);
    let cached = fs::read(&path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<CachedAccount>(&bytes).ok())
        .filter(|c| c.directory == s.directory);
    if let Some(cached) = cached {
        return Ok(Account::builder_with_http(http_client(s)?)
            .from_credentials(cached.credentials)
            .await?);
    }
    let contact: Vec<&str> = s.contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = Account::builder_with_http(http_client(s)?)
        .create(&new, s.directory.clone(), None)
        .await?;
    let cached = CachedAccount {
        directory: s.directory.clone(),
        credentials,
    };
    let json = serde_json::to_vec_pretty(&cached).map_err(|e| AcmeError::Order(e.to_string()))?;
    write_private(&path, &json)?;
    tracing::info!(account = account.id(), directory = %s.directory, "ACME account created");
    Ok(account)
}

/// An https-only client on ring, trusting the system's roots and `--acme-ca`.
fn http_client(s: &AcmeSettings) -> Result<Box<dyn instant_acme::HttpClient>, AcmeError> {
    let mut tls = crate::upstream::tls_client_config("--acme-ca", s.ca.as_deref())
        .map_err(|e| AcmeError::Client(e.to_string()))?;
    // hyper-rustls sets ALPN itself (and refuses a config that has it).
    tls.alpn_protocols.clear();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, BodyWrapper<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}

/// A self-signed certificate for `names` (browsers warn, as they should).
pub(super) fn self_signed(names: &[String]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let params = rcgen::CertificateParams::new(names.to_vec())?;
    signed(params)
}

/// `params` self-signed with a new P-256 key, as rustls serves it.
fn signed(params: rcgen::CertificateParams) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(AcmeError::Key)?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

/// RFC 8737 §3: the TLS-ALPN-01 certificate of `name`, with the digest of
/// the key authorization in a critical acmeIdentifier extension.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    signed(params)
}
