//! The served certificate and its reloads. Handshakes read the current pair;
//! SIGHUP or a change to either file loads a new one, which replaces it only
//! if it passes every check in `chain`. A bad pair never replaces a good one.

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::chain::{self, EXPIRY_WARNING, LoadedPair};
use crate::metrics::{CertLabel, Metrics, OutcomeOnly};

#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Hosts the leaf must be valid for (those of https issuers).
    pub hosts: Vec<String>,
    pub strict: bool,
    /// Zero: files are not watched (SIGHUP still reloads).
    pub watch_interval: Duration,
    /// The listener it serves (`main` or `oidc`): the expiry metric's label.
    pub listener: &'static str,
    /// A `--tls-cert-dir` pair: the name its files carry, which the leaf must
    /// cover (itself or, as a wildcard, the names below it). `None` for the
    /// pair of `--tls-cert`/`--tls-key`.
    pub sni: Option<String>,
}

impl TlsSettings {
    /// The options that name the files, for messages.
    fn options(&self) -> (&'static str, &'static str) {
        match (&self.sni, self.listener) {
            (Some(_), _) => ("--tls-cert-dir", "--tls-cert-dir"),
            (None, "oidc") => ("--oidc-tls-cert", "--oidc-tls-key"),
            (None, _) => ("--tls-cert", "--tls-key"),
        }
    }

    /// The expiry metric's labels: the listener, and the name of a directory pair.
    fn label(&self) -> CertLabel {
        CertLabel {
            listener: self.listener,
            name: self.sni.clone().unwrap_or_default(),
        }
    }
}

/// What identifies a version of both files: a renewal changes at least one of
/// these, including an atomic symlink swap (Kubernetes secret volumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp(Vec<(u64, u64, i64, i64, u64)>);

pub(super) fn stamp(settings: &TlsSettings) -> Option<Stamp> {
    let one = |m: Metadata| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len());
    let cert = std::fs::metadata(&settings.cert).ok()?;
    let key = std::fs::metadata(&settings.key).ok()?;
    Some(Stamp(vec![one(cert), one(key)]))
}

pub(crate) struct CertStore {
    settings: TlsSettings,
    current: RwLock<LoadedPair>,
    /// The files' stamp when last loaded or refused, so one bad write is reported once.
    seen: Mutex<Option<Stamp>>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore").field("cert", &self.settings.cert).finish()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl CertStore {
    /// The first load: any problem is a configuration error.
    pub(crate) fn load(settings: TlsSettings, metrics: Arc<Metrics>) -> Result<Arc<CertStore>, PairError> {
        let seen = stamp(&settings);
        let pair = read_pair(&settings)?;
        let store = CertStore {
            current: RwLock::new(pair),
            seen: Mutex::new(seen),
            settings,
            metrics,
        };
        store.announce(&store.current.read().unwrap_or_else(|p| p.into_inner()), "start");
        Ok(Arc::new(store))
    }

    pub(crate) fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The pair served now.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).certified.clone()
    }

    /// Loads the files again; on any problem the served pair stays. Returns
    /// whether the new pair is now served.
    pub(crate) fn reload(&self, trigger: &'static str) -> bool {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&self.settings);
        match read_pair(&self.settings) {
            Ok(pair) => {
                self.metrics
                    .tls_reloads
                    .get_or_create(&OutcomeOnly { outcome: "ok" })
                    .inc();
                self.announce(&pair, trigger);
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
                true
            }
            Err(e) => {
                self.metrics
                    .tls_reloads
                    .get_or_create(&OutcomeOnly { outcome: "refused" })
                    .inc();
                let held = self
                    .current
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .leaf_subject
                    .clone();
                tracing::error!(
                    trigger,
                    error = %e,
                    cert = %self.settings.cert.display(),
                    still_serving = %held,
                    "new TLS certificate refused; the last good one stays"
                );
                false
            }
        }
    }

    fn announce(&self, pair: &LoadedPair, trigger: &'static str) {
        for warning in &pair.warnings {
            tracing::warn!(cert = %self.settings.cert.display(), "TLS certificate: {warning}");
        }
        let expires = unix_secs(pair.not_after);
        self.metrics
            .tls_expiry
            .get_or_create(&self.settings.label())
            .set(expires);
        tracing::info!(
            trigger,
            listener = self.settings.listener,
            subject = %pair.leaf_subject,
            chain = pair.certified.cert.len(),
            expires_unix = expires,
            "TLS certificate loaded"
        );
    }

    /// Reloads on SIGHUP (`hup`) and when the files change. A change is acted
    /// on once the files have stayed the same for one interval, so a renewal
    /// that writes the certificate and the key one after the other is usually
    /// read whole. Refused files are tried again every `RETRY` (a renewal that
    /// is not valid yet, or whose key lands later, is taken once it is good).
    /// Also repeats the expiry warning once a day.
    pub(crate) async fn watch(self: Arc<Self>, mut hup: mpsc::Receiver<()>) {
        // A minute; a fraction of a second in unit tests, so the retry can be tested.
        const RETRY: Duration = if cfg!(test) {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(60)
        };
        let interval = self.settings.watch_interval;
        let watching = !interval.is_zero();
        let mut pending: Option<Stamp> = None;
        let mut retry_at: Option<Instant> = None;
        let mut last_expiry_check = Instant::now();
        loop {
            // With watching off, still wake hourly for the expiry warning.
            let tick = tokio::time::sleep(if watching { interval } else { Duration::from_secs(3600) });
            let outcome = tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the TLS certificate");
                    pending = None;
                    Some(self.reload("sighup"))
                }
                () = tick => if watching {
                    let now = stamp(&self.settings);
                    let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if now.is_none() || now == seen {
                        pending = None;
                        match retry_at {
                            Some(at) if at <= Instant::now() && now.is_some() => Some(self.reload("retry")),
                            _ => None,
                        }
                    } else if pending == now {
                        pending = None;
                        Some(self.reload("file_change"))
                    } else {
                        pending = now;
                        None
                    }
                } else {
                    None
                }
            };
            match outcome {
                Some(true) => retry_at = None,
                Some(false) => retry_at = Some(Instant::now() + RETRY),
                None => {}
            }
            if last_expiry_check.elapsed() >= Duration::from_secs(24 * 3600) {
                last_expiry_check = Instant::now();
                self.warn_if_expiring();
            }
        }
    }

    fn warn_if_expiring(&self) {
        let held = self.current.read().unwrap_or_else(|p| p.into_inner());
        let left = held.not_after.duration_since(SystemTime::now()).unwrap_or_default();
        if left < EXPIRY_WARNING {
            tracing::warn!(
                subject = %held.leaf_subject,
                days_left = left.as_secs() / 86400,
                "TLS certificate expires soon; renew it (the proxy reloads it by itself)"
            );
        }
    }
}

/// Why the certificate and key files cannot be served; names the options and files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PairError {
    #[error("{option} {}: cannot read it ({source})", path.display())]
    Read {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `files`: the options and files, e.g. "--tls-cert a.pem with --tls-key b.pem".
    #[error("{files}: {source}")]
    Refused { files: String, source: chain::ChainError },
    #[error("{option} {}: its certificate is valid neither for {name} nor for names below it", cert.display())]
    NotForName {
        option: &'static str,
        cert: PathBuf,
        name: String,
    },
}

fn read_pair(settings: &TlsSettings) -> Result<LoadedPair, PairError> {
    let read = |option, path: &PathBuf| {
        std::fs::read(path).map_err(|source| PairError::Read {
            option,
            path: path.clone(),
            source,
        })
    };
    let (cert_option, key_option) = settings.options();
    let cert = read(cert_option, &settings.cert)?;
    let key = read(key_option, &settings.key)?;
    let pair =
        chain::load_pair(&cert, &key, &settings.hosts, settings.strict, SystemTime::now()).map_err(|source| {
            let (cert, key) = (settings.cert.display(), settings.key.display());
            let files = match settings.sni {
                Some(_) => format!("{cert_option} {cert} with {key}"),
                None => format!("{cert_option} {cert} with {key_option} {key}"),
            };
            PairError::Refused { files, source }
        })?;
    if let Some(name) = &settings.sni {
        let leaf = &pair.certified.cert[0];
        if !chain::covers(leaf, name) && !chain::covers(leaf, &format!("sni-probe.{name}")) {
            return Err(PairError::NotForName {
                option: cert_option,
                cert: settings.cert.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(pair)
}

/// Seconds since the epoch (0 before it), for the expiry gauge.
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed leaf for localhost, valid from `not_before`: (certificate PEM,
    /// its DER, key PEM).
    fn leaf(not_before: SystemTime) -> (String, Vec<u8>, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = not_before.into();
        params.not_after = (SystemTime::now() + Duration::from_secs(90 * 86_400)).into();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), cert.der().to_vec(), key.serialize_pem())
    }

    /// README: "refused files are tried again every minute (a certificate that is
    /// not valid yet ... is taken once it is good)": files that do not change again
    /// are still picked up once they pass.
    #[tokio::test]
    async fn refused_files_are_tried_again_until_they_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let day = Duration::from_secs(86_400);
        let (first_pem, first_der, first_key) = leaf(SystemTime::now() - day);
        std::fs::write(&cert, &first_pem).unwrap();
        std::fs::write(&key, &first_key).unwrap();
        let settings = TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            hosts: Vec::new(),
            strict: false,
            watch_interval: Duration::from_millis(100),
            listener: "main",
            sni: None,
        };
        let metrics = Arc::new(Metrics::new());
        let store = CertStore::load(settings, metrics.clone()).unwrap();
        assert_eq!(store.current().cert[0].as_ref(), first_der.as_slice());
        let (_hup, hup_rx) = mpsc::channel(1);
        let watching = tokio::spawn(store.clone().watch(hup_rx));

        // A renewal written early: not valid for another 2 s, so refused when the
        // change is seen; nothing is written afterwards.
        let (next_pem, next_der, next_key) = leaf(SystemTime::now() + Duration::from_secs(2));
        std::fs::write(&cert, &next_pem).unwrap();
        std::fs::write(&key, &next_key).unwrap();
        let refused = || {
            metrics
                .tls_reloads
                .get_or_create(&OutcomeOnly { outcome: "refused" })
                .get()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while store.current().cert[0].as_ref() != next_der.as_slice() {
            assert!(
                std::time::Instant::now() < deadline,
                "the renewal was never taken ({} refusals)",
                refused()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            refused() >= 1,
            "taken without being refused first: the test proves nothing"
        );
        assert_eq!(
            metrics.tls_reloads.get_or_create(&OutcomeOnly { outcome: "ok" }).get(),
            1
        );
        watching.abort();
    }
}
