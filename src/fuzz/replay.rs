//! Replays every seed of `fuzz/corpus/<target>/` and every saved finding of
//! `fuzz/regressions/<target>/` through its target, on stable Rust, in seconds: the
//! fuzz targets' invariants are checked on each `cargo test`.

use std::path::Path;

/// Every target, as named in `fuzz/fuzz_targets/` and `fuzz/corpus/`.
const TARGETS: [&str; 6] = [
    "accept_encoding",
    "discovery",
    "forwarding_headers",
    "jwks",
    "proxy_protocol",
    "tls_chain",
];

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(name: &str, target: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = inputs(&fuzz.join("corpus").join(name));
    assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seeds");
    for path in seeds.iter().chain(&inputs(&fuzz.join("regressions").join(name))) {
        let data = std::fs::read(path).expect("a readable input");
        let outcome = std::panic::catch_unwind(|| target(&data));
        assert!(outcome.is_ok(), "{name} failed on {}", path.display());
    }
}

#[test]
fn fuzz_corpus_accept_encoding() {
    replay("accept_encoding", super::accept_encoding::run);
}

#[test]
fn fuzz_corpus_discovery() {
    replay("discovery", super::discovery::run);
}

#[test]
fn fuzz_corpus_forwarding_headers() {
    replay("forwarding_headers", super::forwarding_headers::run);
}

#[test]
fn fuzz_corpus_jwks() {
    replay("jwks", super::jwks::run);
}

#[test]
fn fuzz_corpus_proxy_protocol() {
    replay("proxy_protocol", super::proxy_protocol::run);
}

#[test]
fn fuzz_corpus_tls_chain() {
    replay("tls_chain", super::tls_chain::run);
}

#[test]
fn fuzz_targets_have_a_directory_each() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&corpus)
        .expect("fuzz/corpus/ exists")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs, TARGETS,
        "one corpus directory per target, and a target per directory"
    );
}
