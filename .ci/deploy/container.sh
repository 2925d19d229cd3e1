#!/usr/bin/env bash
# The container image, built by deploy/container/build.sh from $BIN and run
# with podman the way users run it: read-only, no capabilities, non-root.
# Checks the image's shape, discovery through it in front of the simulated
# GitLab, its HEALTHCHECK both ways, the drain on SIGTERM, and the admin
# port's refresh rule across the bridge network. Needs podman + runc and
# CONTAINERS_CONF (.ci/deploy.sh sets both up).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/deploy/lib.sh

IMAGE=localhost/gitlab-oidc-proxy:latest
NAMES=(gop-ci-discovery gop-ci-drain gop-ci-bridge gop-ci-unready gop-ci-files)
cleanup() { podman rm -f --ignore "${NAMES[@]}" >/dev/null 2>&1 || true; }

step "build the image"
BIN="$BIN" deploy/container/build.sh

step "the image's shape"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
# 24 MiB: ACME (instant-acme and its HTTP client) took the binary past 20 MiB.
[ "$size" -le $((24 * 1024 * 1024)) ] || fail "image is $size bytes, over 24 MiB"
note "image size: $((size / 1024)) KiB"
inspect() { podman image inspect --format "$1" "$IMAGE"; }
expect_eq "$(inspect '{{.Config.User}}')" "65532:65532" "image user"
expect_eq "$(inspect '{{json .Config.Entrypoint}}')" '["/usr/bin/gitlab-oidc-proxy"]' "entrypoint"
expect_eq "$(inspect '{{json .Config.Cmd}}')" '["serve"]' "cmd"
expect_contains "$(podman inspect --type image --format '{{json .HealthCheck}}' "$IMAGE")" '"/usr/bin/gitlab-oidc-proxy","healthcheck"' "HEALTHCHECK"
version=$("$BIN" --version | awk '{print $2}')
expect_eq "$(inspect '{{index .Labels "org.opencontainers.image.version"}}')" "$version" "version label"
expect_eq "$(inspect '{{index .Labels "org.opencontainers.image.title"}}')" "gitlab-oidc-proxy" "title label"
podman image exists "localhost/gitlab-oidc-proxy:$version" || fail "no :$version tag"
# No shell to fall back on: the health check must be the binary itself.
podman create --name gop-ci-files "$IMAGE" >/dev/null
files=$(podman export gop-ci-files | tar -t)
podman rm gop-ci-files >/dev/null
expect_contains "$files" "usr/bin/gitlab-oidc-proxy" "the binary in the image"
expect_contains "$files" "etc/ssl/certs/ca-certificates.crt" "the CA bundle in the image"
if grep -qE '(^|/)(sh|bash|busybox|curl)$' <<<"$files"; then fail "the image has a shell or curl: $files"; fi
note "files in the image: $(wc -l <<<"$files")"

run_proxy() { # name, then podman run options; the image's CMD (serve) runs
  local name=$1; shift
  # podman's stderr is noise here (no systemd for health timers) unless it fails.
  podman run -d --replace --name "$name" --read-only --cap-drop=ALL \
    --security-opt no-new-privileges "$@" "$IMAGE" >/dev/null 2>"$WORK/podman-run.err" \
    || fail "podman run $name: $(cat "$WORK/podman-run.err")"
}

step "discovery through the container, in front of the simulated GitLab"
gitlab=$(free_port); public=$(free_port); admin=$(free_port)
"$BIN" demo --gitlab-only --gitlab-listen "127.0.0.1:$gitlab" --external-url "http://127.0.0.1:$public" >/dev/null &
wait_http "http://127.0.0.1:$gitlab/-/health"
started=$(date +%s%N)
run_proxy gop-ci-discovery --network host \
  -e GITLAB_OIDC_PROXY_UPSTREAM="http://127.0.0.1:$gitlab" \
  -e GITLAB_OIDC_PROXY_LISTEN="127.0.0.1:$public" \
  -e GITLAB_OIDC_PROXY_ADMIN_LISTEN="127.0.0.1:$admin"
until podman healthcheck run gop-ci-discovery >/dev/null 2>&1; do
  [ $(($(date +%s%N) - started)) -lt 10000000000 ] || fail "not healthy within 10 s: $(podman logs gop-ci-discovery 2>&1 | tail -5)"
  sleep 0.05
done
note "podman run to healthy: $((($(date +%s%N) - started) / 1000000)) ms"
headers=$(curl -sS --max-time 5 -D - -o "$WORK/discovery.json" "http://127.0.0.1:$public/.well-known/openid-configuration")
expect_contains "$headers" "HTTP/1.1 200" "discovery status"
expect_contains "$headers" "cache-control: public, max-age=3600" "discovery Cache-Control"
expect_eq "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jwks_uri"])' "$WORK/discovery.json")" \
  "http://127.0.0.1:$public/-/jwks" "rewritten jwks_uri"
keys=$(curl -sS --max-time 5 -D - -o /dev/null "http://127.0.0.1:$public/-/jwks")
expect_contains "$keys" "cache-control: public, max-age=3600" "key set Cache-Control"
expect_eq "$(podman inspect --format '{{.State.Health.Status}}' gop-ci-discovery)" healthy "health status"
podman stop -t 45 gop-ci-discovery >/dev/null 2>&1
expect_eq "$(podman inspect --format '{{.State.ExitCode}}' gop-ci-discovery)" 0 "exit status after SIGTERM"

step "HEALTHCHECK fails while nothing is servable"
admin=$(free_port)
run_proxy gop-ci-unready --network host -e GITLAB_OIDC_PROXY_UPSTREAM="http://127.0.0.1:$(free_port)" \
  -e GITLAB_OIDC_PROXY_LISTEN="127.0.0.1:$(free_port)" -e GITLAB_OIDC_PROXY_ADMIN_LISTEN="127.0.0.1:$admin"
wait_http "http://127.0.0.1:$admin/healthz"
if podman healthcheck run gop-ci-unready >/dev/null 2>&1; then fail "healthy without any OIDC document"; fi
out=$(podman exec gop-ci-unready /usr/bin/gitlab-oidc-proxy healthcheck 2>&1 || true)
expect_contains "$out" "not ready: /readyz answered 503" "healthcheck's reason"

step "SIGTERM drains a request in flight, then exits 0"
slow=$(free_port); public=$(free_port)
python3 - "$slow" "$WORK/arrived" <<'PY' &
import http.server, pathlib, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # Tells the script the request got through the proxy before the stop.
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(2)
        body = b"answered after the stop began\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
PY
wait_port "$slow"
run_proxy gop-ci-drain --network host -e GITLAB_OIDC_PROXY_UPSTREAM="http://127.0.0.1:$slow" \
  -e GITLAB_OIDC_PROXY_LISTEN="127.0.0.1:$public" -e GITLAB_OIDC_PROXY_ADMIN_LISTEN="127.0.0.1:$(free_port)"
wait_port "$public"
curl -sS --max-time 30 -o "$WORK/slow.out" -w '%{http_code}' "http://127.0.0.1:$public/slow" >"$WORK/slow.code" &
in_flight=$!
for _ in $(seq 200); do [ -e "$WORK/arrived" ] && break; sleep 0.05; done
[ -e "$WORK/arrived" ] || fail "the request never reached the slow upstream"
stop_started=$(date +%s%N)
podman stop -t 45 gop-ci-drain >/dev/null 2>&1
wait "$in_flight" || fail "the request in flight failed during the drain"
expect_eq "$(cat "$WORK/slow.code")" 200 "status of the request in flight"
expect_eq "$(cat "$WORK/slow.out")" "answered after the stop began" "body of the request in flight"
expect_eq "$(podman inspect --format '{{.State.ExitCode}}' gop-ci-drain)" 0 "exit status after the drain"
note "podman stop took $((($(date +%s%N) - stop_started) / 1000000)) ms with a 2 s request in flight"
expect_contains "$(podman logs gop-ci-drain 2>&1)" "shutting down: no longer accepting" "drain log line"

step "bridge network: probes and metrics from outside, POST /refresh from loopback only"
admin=$(free_port)
run_proxy gop-ci-bridge -p "127.0.0.1:$admin:9090" -e GITLAB_OIDC_PROXY_UPSTREAM=http://127.0.0.1:1
wait_http "http://127.0.0.1:$admin/healthz"
expect_contains "$(curl -sS --max-time 5 "http://127.0.0.1:$admin/metrics")" "gitlab_oidc_proxy_open_connections 0" "metrics across the bridge"
refresh() { curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' "$@"; }
expect_eq "$(refresh "http://127.0.0.1:$admin/refresh")" 403 "refresh from the bridge's gateway"
run_proxy gop-ci-bridge -p "127.0.0.1:$admin:9090" -e GITLAB_OIDC_PROXY_UPSTREAM=http://127.0.0.1:1 \
  -e GITLAB_OIDC_PROXY_ADMIN_REFRESH=any
wait_http "http://127.0.0.1:$admin/healthz"
expect_eq "$(refresh "http://127.0.0.1:$admin/refresh")" 502 "refresh with --admin-refresh any (GitLab unreachable)"

pass "container checks"
