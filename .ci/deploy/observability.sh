#!/usr/bin/env bash
# Checks the observability artefacts with real tools:
#  1. promtool checks deploy/prometheus/alerts.yml and runs its unit tests
#     (deploy/prometheus/alerts_test.yml), which must have, for each alert, a
#     case where it fires and one where it stays silent, and must fail when
#     that alert is made never to fire;
#  2. the Grafana dashboard's shape, and its expressions through promtool;
#  3. the real proxy (`serve`, with TLS) runs on loopback in front of the
#     simulated GitLab (`demo --gitlab-only`), gets traffic, a SIGHUP, a bad TLS
#     handshake and GitLab stopping (so stale and unavailable answers), keeping
#     a copy with --export-to, and every
#     metric name used by the alerts and the dashboard, with the labels and
#     values their selectors ask for, must be in its admin listener's /metrics;
#  4. the metric check is shown to fail on a wrong name and a wrong label value.
# Usage: BIN=path/to/gitlab-oidc-proxy bash .ci/deploy/observability.sh (BIN absolute or
# relative to the repository's root; default target/release/gitlab-oidc-proxy).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${BIN:-target/release/gitlab-oidc-proxy}
RULES=deploy/prometheus/alerts.yml
RULE_TESTS=deploy/prometheus/alerts_test.yml
DASHBOARD=deploy/grafana/dashboard.json
CHECK=.ci/deploy/observability.py

step() { printf '\n== %s\n' "$*"; }
die() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ -x "$BIN" ] || die "no proxy binary at $BIN (build it with cargo build --release, or set BIN)"
need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # promtool comes with Debian's prometheus package (the server is not started here).
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

step "promtool check rules $RULES"
promtool check rules "$RULES"

step "promtool test rules $RULE_TESTS"
promtool test rules "$RULE_TESTS"
python3 "$CHECK" rule-tests "$RULES" "$RULE_TESTS"

work=$(mktemp -d)
pids=()
stop() { # stop PID: SIGTERM, then SIGKILL after 5 s
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local status=$? pid log
  for pid in "${pids[@]}"; do stop "$pid"; done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -s "$log" ] && { echo "--- last lines of $(basename "$log")"; tail -n 20 "$log"; }
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

step "dashboard: shape, and its expressions through promtool"
python3 "$CHECK" dashboard "$DASHBOARD" >"$work/dashboard_rules.yml"
promtool check rules "$work/dashboard_rules.yml"

# Every wait in this script: at most ~10 s.
until_ok() { # until_ok WHAT COMMAND...: retry every 0.2 s, 50 times
  local what=$1 i
  shift
  for i in $(seq 50); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what: not within 10 s"
}
scrape() { curl -sS --max-time 5 "http://127.0.0.1:$admin_port/metrics"; }
# A series (or family prefix) with a sample above 0: some series exist at 0 from
# the start, so being listed proves nothing happened.
nonzero() { grep -F "$1" | grep -qvE ' 0(\.0+)?$'; }
has_sample() { scrape | nonzero "$1"; }

step "the proxy in front of the simulated GitLab, on loopback"
# Free ports, asked of the kernel all at once (released just before use).
read -r gitlab_port http_port tls_port admin_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
[ -n "${admin_port:-}" ] || die "no free ports from python3"
public="https://127.0.0.1:$tls_port"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>"$work/openssl.log"

"$BIN" demo --help 2>/dev/null | grep -q -- '--gitlab-only' ||
  die "$BIN has no 'demo --gitlab-only' (the simulated GitLab alone): build it from a newer main"
"$BIN" demo --gitlab-only --gitlab-listen "127.0.0.1:$gitlab_port" --external-url "$public" \
  >"$work/gitlab.log" 2>&1 &
gitlab_pid=$!
pids+=("$gitlab_pid")
until_ok "simulated GitLab on 127.0.0.1:$gitlab_port" \
  curl -sf --max-time 2 "http://127.0.0.1:$gitlab_port/.well-known/openid-configuration"

# Short refresh, timeout and stale-if-error: GitLab stopping shows stale, then
# unavailable, answers within seconds.
"$BIN" serve --upstream "http://127.0.0.1:$gitlab_port" \
  --listen "127.0.0.1:$http_port" --admin-listen "127.0.0.1:$admin_port" \
  --tls-listen "127.0.0.1:$tls_port" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
  --external-url "$public" --refresh 500ms --upstream-timeout 500ms --stale-if-error 4s \
  --export-to "$work/copy" --export-issuer https://oidc.example.net \
  --shutdown-grace 1s >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
until_ok "proxy ready (/readyz)" curl -sf --max-time 2 "http://127.0.0.1:$admin_port/readyz"

issuer=$(curl -sS --max-time 5 --cacert "$work/cert.pem" "$public/.well-known/openid-configuration" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["issuer"])')
[ "$issuer" = "$public" ] || die "the served issuer is '$issuer', want the proxy's URL $public (demo --external-url)"
tls_get() { curl -sS --max-time 5 --cacert "$work/cert.pem" -o /dev/null -w '%{http_code}' "$public$1"; }
for path in /.well-known/openid-configuration /-/jwks /oauth/discovery/keys; do
  code=$(tls_get "$path")
  [ "$code" = 200 ] || die "GET $public$path through the proxy: $code, want 200"
done
until_ok "the copy written (--export-to)" has_sample 'gitlab_oidc_proxy_export_passes_total{to="'"$work/copy"'",outcome="written"}'
copied=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["issuer"])' "$work/copy/.well-known/openid-configuration")
[ "$copied" = https://oidc.example.net ] || die "the copy's issuer is '$copied', want --export-issuer https://oidc.example.net"
tls_get / >/dev/null
curl -sS --max-time 5 -o /dev/null "http://127.0.0.1:$http_port/-/jwks"
# Plain HTTP on the TLS port: a failed handshake.
curl -s --max-time 3 -o /dev/null "http://127.0.0.1:$tls_port/" || true
until_ok "a TLS handshake failure counted" has_sample 'gitlab_oidc_proxy_tls_handshake_failures_total{'
kill -HUP "$proxy_pid"
until_ok "the certificate reload on SIGHUP counted" has_sample 'gitlab_oidc_proxy_tls_reloads_total{outcome="ok"}'

echo "stopping the simulated GitLab: refreshes fail, requests get 502, OIDC answers turn stale, then unavailable"
stop "$gitlab_pid"
served() {
  curl -sS --max-time 2 -o /dev/null --cacert "$work/cert.pem" "$public/-/jwks"
  curl -sS --max-time 2 -o /dev/null --cacert "$work/cert.pem" "$public/explore"
  local m
  m=$(scrape)
  nonzero 'gitlab_oidc_proxy_oidc_responses_total{document="keys",state="stale"}' <<<"$m" &&
    nonzero 'gitlab_oidc_proxy_oidc_responses_total{document="keys",state="unavailable"}' <<<"$m"
}
until_ok "stale and unavailable OIDC answers" served

scrape >"$work/metrics.txt"
echo "/metrics: $(grep -c '^# TYPE ' "$work/metrics.txt") metric families, $(grep -vc '^#' "$work/metrics.txt") samples"
expiry=$(sed -n 's/^gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds{listener="main"} \([0-9]*\)$/\1/p' "$work/metrics.txt")
not_after=$(date -d "$(openssl x509 -in "$work/cert.pem" -noout -enddate | cut -d= -f2)" +%s)
[ "$expiry" = "$not_after" ] ||
  die "gitlab_oidc_proxy_tls_certificate_expiry_timestamp_seconds is '$expiry', the certificate's notAfter $not_after"

step "every metric used by $RULES and $DASHBOARD is exported"
python3 "$CHECK" check "$work/metrics.txt" "$RULES" "$DASHBOARD" ||
  die "metrics used by the alerts or the dashboard are not exported by the proxy (above)"

step "self-test: the check fails on a metric or a label value the proxy does not export"
selftest() { # selftest FILE EXPECTED: the check must refuse FILE, saying EXPECTED
  local file=$1 expected=$2
  if python3 "$CHECK" check "$work/metrics.txt" "$file" >"$work/selftest.out" 2>&1; then
    cat "$work/selftest.out"
    die "the metric check passed $file, which uses what the proxy does not export"
  fi
  grep -qF "$expected" "$work/selftest.out" ||
    { cat "$work/selftest.out"; die "the metric check of $file did not say: $expected"; }
}
printf '%s\n' 'groups:' '  - name: wrong' '    rules:' '      - alert: Wrong' \
  '        expr: rate(gitlab_oidc_proxy_no_such_metric_total[5m]) > 0' >"$work/wrong_name.yml"
printf '%s\n' 'groups:' '  - name: wrong' '    rules:' '      - alert: Wrong' '        expr: |' \
  '          rate(gitlab_oidc_proxy_oidc_responses_total{state="no_such_state"}[5m]) > 0' >"$work/wrong_value.yml"
printf '%s\n' '{"panels": [{"id": 1, "targets": [{"expr": "rate(gitlab_oidc_proxy_requests_total[5m])"}]}]}' \
  >"$work/wrong_name.json"
selftest "$work/wrong_name.yml" 'missing metric: gitlab_oidc_proxy_no_such_metric_total'
selftest "$work/wrong_value.yml" 'state is never "no_such_state"'
selftest "$work/wrong_name.json" 'missing metric: gitlab_oidc_proxy_requests_total'
sed 's/"uid": "${datasource}"/"uid": "P1809F7CD0C75ACF3"/' "$DASHBOARD" >"$work/hardcoded.json"
if python3 "$CHECK" dashboard "$work/hardcoded.json" >/dev/null 2>&1; then
  die "the dashboard check passed a dashboard with a hard-coded data source uid"
fi
echo "ok: the checks refuse a wrong metric name, a wrong label value and a hard-coded data source"

step "observability: all checks passed"
