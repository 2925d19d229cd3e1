//! The soak's short version (the full one: `SOAK_SECS=600 cargo bench --bench
//! soak`): 20 s of mixed load through the real proxy binary while its GitLab
//! restarts and flaps. No response may be taken as complete that was not,
//! every kind must succeed, the proxy must live and come back flat.

mod soak_engine;

use std::time::Duration;

use soak_engine::SoakConfig;
use soak_engine::clients::{Op, Sizes};

/// 20 s, 12 clients, 1-4 MiB bodies, one 20 s upstream cycle (a restart, flaps).
fn short(seed: u64) -> SoakConfig {
    SoakConfig {
        load: Duration::from_secs(20),
        clients: 12,
        sample_every: Duration::from_secs(2),
        cycle: Duration::from_secs(20),
        sizes: Sizes {
            large: (1 << 20, 4 << 20),
            upload: (0, 1 << 20),
        },
        settle: Duration::from_secs(2),
        seed,
        ops: Op::all(),
        flapping: true,
        // 20 s cannot tell a leak from warming up; the full soak judges RSS.
        check_rss: false,
        h2_header_table: None,
    }
}

#[test]
fn soak_short() {
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(soak_engine::time_seed);
    let cfg = short(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limit = cfg.load + Duration::from_secs(120);
    let verdict = runtime
        .block_on(async { tokio::time::timeout(limit, soak_engine::run(&cfg)).await })
        .expect("the soak did not end by itself")
        .expect("the soak could not start");
    assert_eq!(verdict.truncated_as_complete(), 0, "{:#?}", verdict.counts.critical);
    for op in Op::all() {
        assert!(verdict.counts.ok_of(op) > 0, "{}: no success", op.label());
    }
    assert!(verdict.failures.is_empty(), "seed {seed}: {:#?}", verdict.failures);
}
