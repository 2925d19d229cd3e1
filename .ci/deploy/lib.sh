# Helpers shared by the .ci/deploy/*.sh checks (sourced). Each wait is bounded.
BIN=${BIN:-target/release/gitlab-oidc-proxy}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
WORK=$(mktemp -d)
# A script may define `cleanup` for its own leftovers (containers); then the
# background servers it started are stopped and $WORK removed.
on_exit() {
  if declare -F cleanup >/dev/null; then cleanup; fi
  kill_children
  rm -rf "$WORK"
}
trap on_exit EXIT

step() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
pass() { printf '\nOK: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: got '$1', want '$2'"; note "$3: $1"; }
expect_contains() { case "$1" in *"$2"*) note "$3: ok" ;; *) fail "$3: '$2' not in: $1" ;; esac; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
# Up to 10 s for a TCP port, then for a URL answering 2xx.
wait_port() {
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  fail "nothing listens on 127.0.0.1:$1 after 10 s"
}
wait_http() {
  for _ in $(seq 200); do
    curl -fsS --max-time 2 -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "$1 does not answer after 10 s"
}
# Background jobs of the calling script (servers it started).
kill_children() {
  local pids
  pids=$(jobs -p)
  [ -z "$pids" ] || kill $pids 2>/dev/null || true
  wait 2>/dev/null || true
}
