//! The soak: `SOAK_SECS=600 cargo bench --bench soak` (default 600 s).
//! Mixed load through the real (release) proxy binary while its GitLab
//! restarts and flaps; prints outcomes by kind, RSS and descriptors over time,
//! and exits 1 unless every check of `tests/soak_engine/mod.rs` passed.
//! `SOAK_CLIENTS` (48) and `SOAK_SEED` (from the clock) change the run;
//! `SOAK_ONLY`, `SOAK_UPSTREAM=steady` and `SOAK_H2_HEADER_TABLE` narrow it
//! down when looking into a finding.

#[path = "../tests/soak_engine/mod.rs"]
mod soak_engine;

use std::time::Duration;

use soak_engine::SoakConfig;
use soak_engine::clients::{Op, Sizes};

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("{name}={value:?} is not a whole number");
            std::process::exit(2);
        }
    }
}

/// `load` with 48 clients, 8-32 MiB bodies, 0-4 MiB uploads, 30 s upstream cycles.
fn full(load: Duration, seed: u64) -> SoakConfig {
    SoakConfig {
        load,
        clients: 48,
        sample_every: Duration::from_secs(10).min(load / 10).max(Duration::from_secs(1)),
        cycle: Duration::from_secs(30).min(load),
        sizes: Sizes {
            large: (8 << 20, 32 << 20),
            upload: (0, 4 << 20),
        },
        settle: Duration::from_secs(5),
        seed,
        ops: Op::all(),
        flapping: true,
        check_rss: true,
        h2_header_table: None,
    }
}

fn main() {
    let secs = env_u64("SOAK_SECS").unwrap_or(600).max(1);
    let seed = env_u64("SOAK_SEED").unwrap_or_else(soak_engine::time_seed);
    let mut cfg = full(Duration::from_secs(secs), seed);
    if let Some(clients) = env_u64("SOAK_CLIENTS") {
        cfg.clients = clients.max(1) as usize;
    }
    // To look into one behaviour: SOAK_ONLY=large/h2,upload (labels or kinds),
    // SOAK_UPSTREAM=steady (no restarts, no faults).
    if let Ok(only) = std::env::var("SOAK_ONLY") {
        let wanted: Vec<&str> = only.split(',').map(str::trim).collect();
        cfg.ops
            .retain(|op| wanted.iter().any(|w| *w == op.label() || *w == op.kind.name()));
        if cfg.ops.is_empty() {
            eprintln!(
                "SOAK_ONLY={only:?} names no request kind of {:?}",
                Op::all().iter().map(|o| o.label()).collect::<Vec<_>>()
            );
            std::process::exit(2);
        }
    }
    cfg.flapping = std::env::var("SOAK_UPSTREAM").map_or(true, |v| v != "steady");
    // SOAK_H2_HEADER_TABLE=0: h2 clients without an HPACK dynamic table.
    cfg.h2_header_table = env_u64("SOAK_H2_HEADER_TABLE").map(|n| n as u32);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Everything inside is bounded; this is the last resort.
    let limit = cfg.load + Duration::from_secs(300);
    let verdict = runtime.block_on(async { tokio::time::timeout(limit, soak_engine::run(&cfg)).await });
    let code = match verdict {
        Err(_) => {
            println!("RESULT: FAIL - the soak did not end within {} s", limit.as_secs());
            1
        }
        Ok(Err(e)) => {
            println!("RESULT: FAIL - the soak could not start: {e}");
            1
        }
        Ok(Ok(verdict)) => {
            // The count is in the summary too; a last line for scripts.
            println!("truncated-as-complete: {}", verdict.truncated_as_complete());
            i32::from(!verdict.failures.is_empty())
        }
    };
    // The runtime may hold tasks of an abandoned run: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}
