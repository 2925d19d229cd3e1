//! `--tls-cert-dir DIR`: a certificate per host name, as omnibus keeps them in
//! `/etc/gitlab/ssl` (`<host>.crt` with `<host>.key`), picked by SNI. Each pair
//! is a [`CertStore`] of its own (same checks, same reloads); one that is
//! refused is left out alone, and the others and the default pair
//! (`--tls-cert`/`--tls-key`, for unknown or absent SNI) keep serving.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::chain;
use super::store::{CertStore, Stamp, TlsSettings, stamp};
use crate::acme::{ACME_TLS_ALPN, Acme};
use crate::metrics::{CertLabel, Metrics, OutcomeOnly};

/// The main TLS listener's certificates: an ACME challenge's or pair, else by
/// SNI from the directory, else the default (`--tls-cert`, else ACME's).
pub(crate) struct SniResolver {
    pub default: Option<Arc<CertStore>>,
    pub dir: Option<Arc<CertDir>>,
    pub acme: Option<Arc<Acme>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name();
        if let Some(acme) = &self.acme {
            // RFC 8737 §3: a validation handshake offers acme-tls/1 alone, and
            // gets the challenge certificate or nothing.
            let mut alpn = hello.alpn().into_iter().flatten();
            if alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none() {
                return name.and_then(|n| acme.challenge_certificate(n));
            }
            if let Some(key) = name.and_then(|n| acme.for_name(n)) {
                return Some(key);
            }
        }
        let picked = self.dir.as_ref().zip(name).and_then(|(dir, name)| dir.pick(name));
        picked
            .or_else(|| self.default.as_ref().map(|d| d.current()))
            .or_else(|| self.acme.as_ref().map(|a| a.fallback()))
    }
}

/// One loaded pair and what keeps it current.
struct Held {
    hup: mpsc::Sender<()>,
    watcher: JoinHandle<()>,
}

pub(crate) struct CertDir {
    dir: PathBuf,
    /// Settings every pair is loaded with (files and name filled in per pair).
    template: TlsSettings,
    pairs: RwLock<HashMap<String, Arc<CertStore>>>,
    held: Mutex<HashMap<String, Held>>,
    /// Pairs refused as their files stand: tried again only once they change.
    refused: Mutex<HashMap<String, Option<Stamp>>>,
    metrics: Arc<Metrics>,
}

impl CertDir {
    /// Loads every pair in `dir` that passes; a directory that cannot be read
    /// stops the start (the option names a place that is not there).
    pub(crate) fn load(dir: &Path, template: TlsSettings, metrics: Arc<Metrics>) -> std::io::Result<Arc<CertDir>> {
        std::fs::read_dir(dir).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let certs = Arc::new(CertDir {
            dir: dir.to_owned(),
            template,
            pairs: RwLock::default(),
            held: Mutex::default(),
            refused: Mutex::default(),
            metrics,
        });
        certs.scan();
        Ok(certs)
    }

    /// The pair for `name`: its own, else a wildcard pair of its parent domain
    /// whose certificate covers it.
    fn pick(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = pairs.get(&name) {
            return Some(store.current());
        }
        let (_, parent) = name.split_once('.')?;
        let key = pairs.get(parent)?.current();
        chain::covers(key.cert.first()?, &name).then_some(key)
    }

    /// The names with both files present now.
    fn names_on_disk(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|file| file.strip_suffix(".crt").map(str::to_owned))
            .filter(|name| is_host_name(name) && self.dir.join(format!("{name}.key")).exists())
            .collect()
    }

    fn settings_for(&self, name: &str) -> TlsSettings {
        TlsSettings {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
            sni: Some(name.to_ascii_lowercase()),
            // The pair answers for its own name only, not for GitLab's issuers.
            hosts: Vec::new(),
            ..self.template.clone()
        }
    }

    /// Takes in new pairs and drops those whose files are gone; a held pair's
    /// changes are its own watcher's. Needs a runtime (watchers are spawned).
    fn scan(&self) {
        let on_disk = self.names_on_disk();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = held.keys().filter(|n| !on_disk.contains(n)).cloned().collect();
        for name in gone {
            if let Some(h) = held.remove(&name) {
                h.watcher.abort();
            }
            self.pairs.write().unwrap_or_else(|p| p.into_inner()).remove(&name);
            let label = CertLabel {
                listener: self.template.listener,
                name: name.clone(),
            };
            self.metrics.tls_expiry.remove(&label);
            tracing::warn!(name, dir = %self.dir.display(), "TLS pair removed from --tls-cert-dir; no longer served");
        }
        let new: Vec<String> = on_disk.into_iter().filter(|n| !held.contains_key(n)).collect();
        for name in new {
            let settings = self.settings_for(&name);
            let now = stamp(&settings);
            let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
            if refused.get(&name).is_some_and(|seen| *seen == now) {
                continue;
            }
            match CertStore::load(settings, self.metrics.clone()) {
                Ok(store) => {
                    refused.remove(&name);
                    let (hup, hup_rx) = mpsc::channel(1);
                    let watcher = tokio::spawn(store.clone().watch(hup_rx));
                    self.pairs
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), store);
                    held.insert(name, Held { hup, watcher });
                }
                Err(e) => {
                    self.metrics
                        .tls_reloads
                        .get_or_create(&OutcomeOnly { outcome: "refused" })
                        .inc();
                    tracing::error!(name, error = %e, "TLS pair in --tls-cert-dir refused; the other names keep serving");
                    refused.insert(name, now);
                }
            }
        }
    }

    /// Looks for new and removed pairs every `interval` (hourly when 0) and on
    /// SIGHUP, which also reaches every held pair.
    pub(crate) async fn watch(self: Arc<Self>, mut hup: mpsc::Receiver<()>) {
        let interval = match self.template.watch_interval {
            Duration::ZERO => Duration::from_secs(3600),
            interval => interval,
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.refused.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                    for h in held.values() {
                        let _ = h.hup.try_send(());
                    }
                }
                () = tokio::time::sleep(interval) => {}
            }
            self.scan();
        }
    }

    /// The names served from the directory now, sorted (for logs and tests).
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        for h in self.held.get_mut().unwrap_or_else(|p| p.into_inner()).values() {
            h.watcher.abort();
        }
    }
}

/// A file name that can be an SNI name: letters, digits, '-' and '.' (omnibus
/// also keeps e.g. `dhparams.pem` there, which has no `.crt`).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_host_names_are_taken_from_file_names() {
        for ok in ["registry.example.com", "localhost", "pages.example.com"] {
            assert!(is_host_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a..b", "with space", "ünï.example"] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
