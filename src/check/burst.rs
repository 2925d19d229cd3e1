//! Step 6: what many CI jobs assuming a role at once make STS do: `n`
//! concurrent fetches of discovery and of the key set, each on its own
//! connection, every one within 5 s.

use std::time::Duration;

use http::{StatusCode, Uri};
use tokio::task::JoinSet;

use super::fetch::{Fetcher, LIMIT};
use super::report::Step;

pub(super) async fn judge(step: &mut Step, fetcher: &Fetcher, urls: &[Uri], n: u32) {
    let mut set = JoinSet::new();
    for _ in 0..n {
        for url in urls {
            let (fetcher, url) = (fetcher.clone(), url.clone());
            set.spawn(async move {
                match fetcher.get(&url).await {
                    Ok(f) if f.status == StatusCode::OK => Ok(f.elapsed),
                    Ok(f) => Err(format!("{url}: {}", f.status)),
                    Err(e) => Err(format!("{url}: {e}")),
                }
            });
        }
    }
    let mut times = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(elapsed)) => times.push(elapsed),
            Ok(Err(why)) => failures.push(why),
            Err(e) => failures.push(format!("a fetch task failed: {e}")),
        }
    }
    let total = times.len() + failures.len();
    times.sort();
    step.saw(format!(
        "{total} fetches ({n} × {} documents) at once: {} answered 200 within {} s; p50 {} ms, p99 {} ms",
        urls.len(),
        times.len(),
        LIMIT.as_secs(),
        percentile(&times, 50).as_millis(),
        percentile(&times, 99).as_millis(),
    ));
    if !failures.is_empty() {
        // Each distinct reason once, with how often it came.
        let mut reasons: Vec<(String, usize)> = Vec::new();
        for why in &failures {
            match reasons.iter_mut().find(|(r, _)| r == why) {
                Some((_, n)) => *n += 1,
                None => reasons.push((why.clone(), 1)),
            }
        }
        let shown: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} × {r}")).collect();
        step.fail(
            format!("{} of {total} fetches failed: {}", failures.len(), shown.join("; ")),
            "answer the documents from a cache (gitlab-oidc-proxy) so parallel jobs never wait on GitLab",
        );
    }
}

/// The `p`th percentile (nearest rank) of sorted `times`; zero when empty.
fn percentile(times: &[Duration], p: usize) -> Duration {
    if times.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * times.len()).div_ceil(100).clamp(1, times.len());
    times[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: &[u64]| v.iter().map(|&m| Duration::from_millis(m)).collect::<Vec<_>>();
        assert_eq!(percentile(&[], 50), Duration::ZERO);
        assert_eq!(percentile(&ms(&[7]), 99), Duration::from_millis(7));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&ms(&hundred), 50), Duration::from_millis(50));
        assert_eq!(percentile(&ms(&hundred), 99), Duration::from_millis(99));
        assert_eq!(percentile(&ms(&[1, 2, 3]), 50), Duration::from_millis(2));
    }
}
