#!/usr/bin/env bash
# Coverage-guided fuzzing of the proxy with cargo-fuzz (libFuzzer); see fuzz/README.md.
#
#   fuzz/run.sh                      every target, 600 s each
#   fuzz/run.sh discovery 120        one target, 120 s
#   fuzz/run.sh all 60 -jobs=2       extra arguments go to libFuzzer
#
# SANITIZER=none skips AddressSanitizer (faster; the proxy itself has no unsafe
# code). New inputs go to fuzz/work/<target>/, crashes to fuzz/artifacts/<target>/;
# the committed corpus is only read.
set -euo pipefail
cd "$(dirname "$0")"

all=(accept_encoding discovery forwarding_headers jwks proxy_protocol tls_chain)
which=${1:-all}
seconds=${2:-600}
shift $(($# < 2 ? $# : 2))
if [ "$which" = all ]; then
  targets=("${all[@]}")
else
  targets=("$which")
fi

# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer=address); a stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, so no nightly is needed.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
build=(--sanitizer "${SANITIZER:-address}" --target-dir "$target_dir")

failed=()
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  seeds=("corpus/$t")
  [ -d "regressions/$t" ] && seeds+=("regressions/$t")
  echo "== $t: ${seconds}s" >&2
  # The first directory receives new inputs; the others are seeds, only read.
  if ! cargo fuzz run "${build[@]}" "$t" "work/$t" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@" \
    2> >(tee "work/$t.log" >&2); then
    failed+=("$t")
  fi
  sleep 1 # let tee finish the log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "work/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "work/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "work/$t.log" | tail -1)
  echo "== $t: ${execs:-?} executions, ${rate:-?}/s, ${cov:-cov: ?}, corpus $(find "work/$t" "corpus/$t" -type f | wc -l) files" >&2
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}; inputs in fuzz/artifacts/<target>/. Copy each to fuzz/regressions/<target>/, fix, and 'cargo test --lib fuzz' replays it." >&2
  exit 1
fi
