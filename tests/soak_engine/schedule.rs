//! What the soak's GitLab does when: the same cycle over and over until the
//! load ends.
//!
//! | share of the cycle | GitLab |
//! |---|---|
//! | 0.00-0.20 | steady |
//! | 0.20-0.50 | faulty: about one request in five meets a fault |
//! | 0.50      | restart: down (listener closed, every connection dropped) for 5 % of the cycle, then up |
//! | ...-0.70  | steady |
//! | 0.70-0.85 | flapping: faulty, and down 250 ms of every second |
//! | 0.85-1.00 | steady |

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use super::gitlab::GitLab;

pub(crate) const SCHEDULE: &str = "each cycle: steady 20 %, faulty 30 %, restart (down 5 % of the cycle), \
steady to 70 %, flapping 15 % (faulty, down 250 ms of every second), steady 15 %";

const PHASES: [&str; 4] = ["steady", "faulty", "down", "flapping"];

#[derive(Default)]
pub(crate) struct Timeline {
    phase: AtomicU8,
    pub restarts: AtomicU64,
    pub bounces: AtomicU64,
    pub down_ms: AtomicU64,
    pub failed_rebinds: AtomicU64,
}

impl Timeline {
    pub(crate) fn phase(&self) -> &'static str {
        PHASES[self.phase.load(Ordering::Relaxed) as usize]
    }

    fn set(&self, phase: usize) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// Down for `gap`, then up again.
    async fn outage(&self, gitlab: &GitLab, gap: Duration, after: usize) {
        self.set(2);
        gitlab.down();
        sleep(gap).await;
        if gitlab.up().await.is_err() {
            self.failed_rebinds.fetch_add(1, Ordering::Relaxed);
        }
        self.down_ms.fetch_add(gap.as_millis() as u64, Ordering::Relaxed);
        self.set(after);
    }
}

/// Runs the cycle from `start` until `end`; GitLab is left up and steady.
pub(crate) async fn drive(gitlab: &GitLab, timeline: &Timeline, start: Instant, end: Instant, cycle: Duration) {
    let mut c0 = start;
    while c0 < end {
        let at = |share: f64| (c0 + cycle.mul_f64(share)).min(end);
        let past_end = || Instant::now() >= end;
        timeline.set(0);
        sleep_until(at(0.2)).await;
        if past_end() {
            break;
        }
        timeline.set(1);
        gitlab.set_faulty(true);
        sleep_until(at(0.5)).await;
        gitlab.set_faulty(false);
        if past_end() {
            break;
        }
        timeline.outage(gitlab, cycle.mul_f64(0.05), 0).await;
        timeline.restarts.fetch_add(1, Ordering::Relaxed);
        sleep_until(at(0.7)).await;
        gitlab.set_faulty(true);
        timeline.set(3);
        while Instant::now() + Duration::from_secs(1) <= at(0.85) {
            timeline.outage(gitlab, Duration::from_millis(250), 3).await;
            timeline.bounces.fetch_add(1, Ordering::Relaxed);
            sleep(Duration::from_millis(750)).await;
        }
        gitlab.set_faulty(false);
        timeline.set(0);
        sleep_until(at(1.0)).await;
        c0 += cycle;
    }
    gitlab.set_faulty(false);
    timeline.set(0);
}
