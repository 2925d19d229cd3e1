//! The demo's stated assumptions, worked out on paper: when do STS's fetches
//! straight to GitLab start to miss their 5 s? The same model the run
//! simulates with real sockets (a first-in, first-out queue in front of the
//! free Rails workers, a fixed service time, no request ever withdrawn), here
//! as arithmetic, so that the table's verdict follows from its numbers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// What the direct path is made of.
#[derive(Clone, Copy, Debug)]
pub(super) struct Model {
    /// Rails workers free for CI.
    pub(super) workers: u32,
    pub(super) service_time: Duration,
    /// STS gives up on a fetch after this long.
    pub(super) limit: Duration,
    /// The jobs call STS evenly spread over this time.
    pub(super) spread: Duration,
    /// Whether STS may keep GitLab's key set (16.8+): then a job whose
    /// discovery answer comes after a key set answer skips its own fetch.
    pub(super) keys_cacheable: bool,
}

/// One fetch waiting for a worker, or a job deciding on its key set fetch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Discovery,
    KeySet,
    Decide,
}

impl Model {
    /// How many of `jobs` verifications see a fetch take longer than the limit.
    pub(super) fn timeouts(&self, jobs: usize) -> usize {
        let (service, limit) = (self.service_time.as_nanos(), self.limit.as_nanos());
        // Every worker's next free instant; the earliest takes the next fetch in line.
        let mut free: BinaryHeap<Reverse<u128>> = (0..self.workers.max(1)).map(|_| Reverse(0)).collect();
        let mut events: BinaryHeap<Reverse<(u128, Event)>> = (0..jobs)
            .map(|job| {
                let start = self.spread.as_nanos() * job as u128 / jobs.max(1) as u128;
                Reverse((start, Event::Discovery))
            })
            .collect();
        let mut keys_cached_at = u128::MAX;
        let mut timed_out = 0;
        while let Some(Reverse((at, event))) = events.pop() {
            if event == Event::Decide {
                if !(self.keys_cacheable && keys_cached_at <= at) {
                    events.push(Reverse((at, Event::KeySet)));
                }
                continue;
            }
            let Some(Reverse(worker_free)) = free.pop() else {
                break; // never: there is at least one worker
            };
            let done = worker_free.max(at) + service;
            free.push(Reverse(done));
            if done - at > limit {
                timed_out += 1; // the job ends here; Rails still serves the fetch
            } else if event == Event::Discovery {
                events.push(Reverse((done, Event::Decide)));
            } else {
                keys_cached_at = keys_cached_at.min(done);
            }
        }
        timed_out
    }

    /// The fewest parallel jobs with a fetch over the limit, if at most
    /// `cap`. More jobs in the same spread only add load, so past the first
    /// failing count a search by halves finds the least.
    pub(super) fn first_failing(&self, cap: usize) -> Option<usize> {
        let fails = |jobs: usize| self.timeouts(jobs) > 0;
        let mut high = 1;
        while !fails(high) {
            if high >= cap {
                return None;
            }
            high = (high * 2).min(cap);
        }
        let mut low = high / 2; // passes (or 0)
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if fails(mid) { high = mid } else { low = mid }
        }
        Some(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(workers: u32, service_ms: u64, spread_ms: u64, keys_cacheable: bool) -> Model {
        Model {
            workers,
            service_time: Duration::from_millis(service_ms),
            limit: Duration::from_secs(5),
            spread: Duration::from_millis(spread_ms),
            keys_cacheable,
        }
    }

    /// All at once: the k-th discovery answer comes after ceil(k / workers)
    /// service times, and each key set fetch queues behind the rest of the
    /// burst, so it waits about as long.
    #[test]
    fn a_burst_fails_past_workers_times_rounds_in_the_limit() {
        // 300 ms: 16 rounds fit in 5 s (4.8 s), the 17th does not; 2 workers.
        for keys_cacheable in [false, true] {
            let burst = model(2, 300, 0, keys_cacheable);
            assert_eq!(burst.timeouts(32), 0);
            assert_eq!(burst.first_failing(1000), Some(33));
            // Past it, every key set fetch queues behind the whole burst: all fail,
            // and no key set answer comes in time to be cached.
            assert_eq!(burst.timeouts(40), 40);
        }
    }

    /// The demo's default numbers (2 free workers, 300 ms, 50 jobs over 1 s):
    /// a key set STS may keep spares the later jobs their second fetch.
    #[test]
    fn a_cacheable_key_set_means_fewer_timeouts_past_the_threshold() {
        let (uncached, cached) = (model(2, 300, 1000, false), model(2, 300, 1000, true));
        assert_eq!(uncached.first_failing(1000), Some(33));
        assert_eq!(cached.first_failing(1000), Some(33));
        assert_eq!((uncached.timeouts(50), cached.timeouts(50)), (46, 30));
        assert_eq!((uncached.timeouts(32), cached.timeouts(32)), (0, 0));
    }

    #[test]
    fn an_idle_gitlab_never_fails_within_the_cap() {
        assert_eq!(model(64, 10, 1000, false).first_failing(100), None);
        assert_eq!(model(1, 10, 0, false).timeouts(0), 0);
    }
}
