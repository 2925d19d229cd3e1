//! GitLab's Rails (Puma) workers as a bounded pool: a request holds one worker
//! for the service time; beyond the free workers, requests queue in arrival
//! order (Puma's thread pool takes its queue first in, first out).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// How busy the simulated GitLab is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RailsSettings {
    /// Requests Rails serves at once (Puma workers × threads).
    pub workers: u32,
    /// Workers kept busy by users' requests (web, API, git) throughout: the
    /// load CI comes on top of. At most `workers - 1`.
    pub busy: u32,
    /// Time one request holds a worker.
    pub service_time: Duration,
}

impl RailsSettings {
    /// Workers left for CI (and for the proxy's refreshes).
    pub fn free_workers(&self) -> u32 {
        self.workers.saturating_sub(self.busy).max(1)
    }
}

/// The workers free for requests other than the users', shared by every
/// connection of one simulated GitLab.
#[derive(Debug)]
pub(super) struct RailsPool {
    settings: RailsSettings,
    free: Arc<Semaphore>,
}

impl RailsPool {
    pub(super) fn new(settings: RailsSettings) -> RailsPool {
        // Users' workers never come free during a run, so only the others are modelled.
        let free = Arc::new(Semaphore::new(settings.free_workers() as usize));
        RailsPool { settings, free }
    }

    pub(super) fn settings(&self) -> RailsSettings {
        self.settings
    }

    /// Waits for a worker, then holds it for the service time. The work runs in
    /// its own task: a client that gives up (STS after 5 s) does not take its
    /// request back from Rails, which still spends a worker on it.
    pub(super) async fn serve(&self) {
        let free = Arc::clone(&self.free);
        let service_time = self.settings.service_time;
        let work = tokio::spawn(async move {
            // The semaphore is never closed: acquiring fails only if it were.
            let _worker = free.acquire_owned().await;
            tokio::time::sleep(service_time).await;
        });
        let _ = work.await;
    }
}
