//! `--acme-domain`: a certificate obtained and renewed over ACME (RFC 8555),
//! so the proxy keeps certificates without omnibus's nginx. One certificate
//! names every domain. The obtained pair is served by SNI on the TLS listener
//! and replaced atomically on renewal; until there is one, those names get the
//! `--tls-cert` pair, or a temporary self-signed one. Orders that fail are
//! logged and counted, and the held pair keeps serving.

mod order;

use order::{AcmeError, Published, self_signed};

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;

use crate::config::{AcmeChallenge, AcmeSettings};
use crate::metrics::{CertLabel, Metrics, OutcomeOnly};
use crate::tls::chain::LoadedPair;
use crate::tls::store::unix_secs;

/// RFC 8737: the ALPN protocol of TLS-ALPN-01 validation handshakes.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Renewal once less than this is left (Let's Encrypt's certificates last 90 days).
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the held certificate's age is checked.
const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);
/// After a failed order: first wait, doubled each time up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_LAST: Duration = Duration::from_secs(3600);

pub(crate) struct Acme {
    settings: AcmeSettings,
    /// The obtained pair and its notAfter, once there is one.
    obtained: RwLock<Option<(Arc<CertifiedKey>, SystemTime)>>,
    /// Served for ACME names before the first certificate when no `--tls-cert` is given.
    placeholder: Arc<CertifiedKey>,
    /// TLS-ALPN-01: the challenge certificate of each domain while an order is open.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: the key authorization of each token while an order is open.
    http: Mutex<HashMap<String, String>>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Acme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acme").field("domains", &self.settings.domains).finish()
    }
}

impl Acme {
    /// Sets up the cache directory and takes a valid cached certificate.
    pub(crate) fn new(settings: AcmeSettings, metrics: Arc<Metrics>) -> Result<Arc<Acme>, AcmeError> {
        order::prepare_cache(&settings.cache)?;
        let placeholder = self_signed(&settings.domains)?;
        for outcome in ["ok", "failed"] {
            let _ = metrics.acme_orders.get_or_create(&OutcomeOnly { outcome });
        }
        let acme = Acme {
            obtained: RwLock::default(),
            placeholder,
            alpn: Mutex::default(),
            http: Mutex::default(),
            metrics,
            settings,
        };
        match order::read_cached(&acme.settings) {
            Some(pair) => acme.install(pair, "cache"),
            None => tracing::info!(domains = ?acme.settings.domains, "no usable ACME certificate cached; ordering one"),
        }
        Ok(Arc::new(acme))
    }

    /// Whether the TLS listener must offer `acme-tls/1`.
    pub(crate) fn wants_alpn(&self) -> bool {
        self.settings.challenge == AcmeChallenge::TlsAlpn01
    }

    /// The obtained pair, for a name it was ordered for.
    pub(crate) fn for_name(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if !self.settings.domains.contains(&name) {
            return None;
        }
        self.obtained()
    }

    fn obtained(&self) -> Option<Arc<CertifiedKey>> {
        let held = self.obtained.read().unwrap_or_else(|p| p.into_inner());
        held.as_ref().map(|(key, _)| key.clone())
    }

    /// The pair for clients no other pair is for: the obtained one, else the placeholder.
    pub(crate) fn fallback(&self) -> Arc<CertifiedKey> {
        self.obtained().unwrap_or_else(|| self.placeholder.clone())
    }

    /// The TLS-ALPN-01 challenge certificate for `name`, while its order is open.
    pub(crate) fn challenge_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let alpn = self.alpn.lock().unwrap_or_else(|p| p.into_inner());
        alpn.get(&name.to_ascii_lowercase()).cloned()
    }

    /// The HTTP-01 key authorization for `token`, while its order is open.
    pub(crate) fn key_authorization(&self, token: &str) -> Option<String> {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).get(token).cloned()
    }

    /// Serves `pair` from now on; `trigger` says where it came from.
    fn install(&self, pair: LoadedPair, trigger: &'static str) {
        let expires = unix_secs(pair.not_after);
        let label = CertLabel {
            listener: "main",
            name: self.settings.domains[0].clone(),
        };
        self.metrics.tls_expiry.get_or_create(&label).set(expires);
        tracing::info!(trigger, domains = ?self.settings.domains, subject = %pair.leaf_subject, expires_unix = expires, "ACME certificate served");
        *self.obtained.write().unwrap_or_else(|p| p.into_inner()) = Some((pair.certified, pair.not_after));
    }

    /// Whether a certificate must be ordered now: none held, or less than
    /// `RENEW_BEFORE` left.
    fn due(&self) -> bool {
        let held = self.obtained.read().unwrap_or_else(|p| p.into_inner());
        held.as_ref()
            .is_none_or(|(_, not_after)| not_after.duration_since(SystemTime::now()).unwrap_or_default() < RENEW_BEFORE)
    }

    /// Orders when due, at start and every `CHECK_EVERY`; after a failure,
    /// again after a backoff, while the held pair keeps serving.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut retry = RETRY_FIRST;
        loop {
            let wait = if self.due() {
                let publish = |p: Published| self.publish(p);
                let obtained = order::obtain(&self.settings, &publish).await;
                self.clear_challenges();
                match obtained {
                    Ok(pair) => {
                        self.count("ok");
                        self.install(pair, "order");
                        retry = RETRY_FIRST;
                        CHECK_EVERY
                    }
                    Err(e) => {
                        self.count("failed");
                        tracing::error!(error = %e, directory = %self.settings.directory, retry_in_secs = retry.as_secs(),
                            "ACME order failed; the served certificate stays");
                        let wait = retry;
                        retry = (retry * 2).min(RETRY_LAST);
                        wait
                    }
                }
            } else {
                CHECK_EVERY
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.acme_orders.get_or_create(&OutcomeOnly { outcome }).inc();
    }

    fn publish(&self, published: Published) {
        match published {
            Published::Alpn(name, cert) => {
                self.alpn.lock().unwrap_or_else(|p| p.into_inner()).insert(name, cert);
            }
            Published::Http(token, answer) => {
                self.http
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(token, answer);
            }
        }
    }

    /// Clears what an order published for its validation.
    fn clear_challenges(&self) {
        self.alpn.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.http.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
