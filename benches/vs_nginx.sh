#!/usr/bin/env bash
# gitlab-oidc-proxy against its references, on this machine, in one run:
#   1. throughput and p99 latency (wrk): the cached key set against a bare hyper
#      server with the same bytes (benches/bare_hyper.rs); pass-through against
#      nginx as omnibus configures it (+ upstream keepalive), with both access
#      logs on and with both off, and the stack floor (benches/bare_hyper_proxy.rs:
#      hyper passing requests as they are) against the same nginx; then
#      large bodies, TLS, gzip, handshakes and the cached /assets file against nginx;
#   2. user-space instructions per request (callgrind: the same count whatever
#      else the machine does), ours beside the bare server (cached documents)
#      and beside nginx (pass-through), and the stack floor's;
#   3. memory: RSS per idle keep-alive connection, and after the connections
#      close (three bursts), ours beside the nginx worker; then the /assets
#      cache's RSS under a working set twice its size.
# The servers run on one core (SERVER_CPU), wrk on another (CLIENT_CPU), both
# behind the same backend on a unix socket (as Workhorse is). Ratios: ours /
# reference. Fails when any answer is not a 2xx. Loopback only; stops by itself.
#
#   bash benches/vs_nginx.sh                # needs nginx wrk valgrind python3 (apt-get install nginx-light wrk valgrind)
#   DURATION=20 ROUNDS=5 CONNECTIONS=64 bash benches/vs_nginx.sh
#   ONLY=tls bash benches/vs_nginx.sh       # only the sections/scenarios whose name contains "tls"
#   ONLY=instructions bash benches/vs_nginx.sh   ONLY=memory ...   ONLY=breakdown ...   ONLY=assets ...
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-5000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
for tool in nginx wrk openssl python3 curl taskset valgrind callgrind_control; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx-light wrk valgrind)" >&2; exit 2; }
done
wanted() { [[ "$1" == *"${ONLY:-}"* ]]; }
# As the container image and the Debian unit run the proxy: freed memory goes
# back to the system 10 ms after it is freed (0: at once, slower).
export MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-10}
# Arrays, not functions: a function run with & is a subshell, and killing it
# would leave the server running.
server=(taskset -c "$SERVER_CPU")
client=(taskset -c "$CLIENT_CPU")
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# BIN=... BARE=... FLOOR=... use binaries already built (another checkout's, say).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin gitlab-oidc-proxy
  BIN=${CARGO_TARGET_DIR:-target}/release/gitlab-oidc-proxy
fi
bin=$BIN
bench_bin() {
  cargo bench --no-run --quiet --bench "$1" --message-format=json |
    python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("target", {}).get("name") == sys.argv[1] and m.get("executable")][-1])' "$1"
}
bare=${BARE:-$(bench_bin bare_hyper)}
floor=${FLOOR:-$(bench_bin bare_hyper_proxy)}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$work"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT

# nginx workers run unprivileged: they must be able to read the files and the socket.
chmod 755 "$work"
mkdir -p "$work/www/assets/many" "$work/www/.well-known" "$work/www/oauth/discovery" "$work/www/-"
head -c 1024 /dev/urandom >"$work/www/small"
head -c $((10 << 20)) /dev/urandom >"$work/www/large"
printf '{"ok":true}' >"$work/www/ok.json"
# GitLab's compiled JavaScript: 300 KB, cached for a year (below, as Workhorse sends it).
python3 -c 'import random; random.seed(2); print("".join("function f%d(a){return a*%d+\"%s\";}\n" % (i, i, "x" * random.randint(5, 60)) for i in range(6000))[:300000], end="")' >"$work/www/assets/app.js"
# An API-like JSON answer of ~64 KiB: compressible, as GitLab's are.
python3 -c 'import json,random; random.seed(1); print(json.dumps([{"id": i, "name": "project-%d" % i, "path_with_namespace": "group/sub/project-%d" % i, "star_count": random.randint(0, 999), "web_url": "https://gitlab.example.com/group/sub/project-%d" % i} for i in range(400)]))' >"$work/www/api.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
# GitLab's OIDC documents: discovery and a key set with one RSA key (two, as GitLab has).
for k in 1 2; do openssl genrsa -out "$work/rsa$k.pem" 2048 2>/dev/null; done
python3 - "$work" <<'EOF'
import base64, json, subprocess, sys
work = sys.argv[1]
def b64(hexdigits):
    raw = bytes.fromhex(hexdigits if len(hexdigits) % 2 == 0 else "0" + hexdigits)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
keys = []
for k in (1, 2):
    modulus = subprocess.run(["openssl", "rsa", "-in", f"{work}/rsa{k}.pem", "-noout", "-modulus"],
                             capture_output=True, text=True, check=True).stdout.strip().split("=", 1)[1]
    keys.append({"kty": "RSA", "kid": f"bench-key-{k}", "e": "AQAB", "n": b64(modulus), "use": "sig", "alg": "RS256"})
open(f"{work}/www/oauth/discovery/keys", "w").write(json.dumps({"keys": keys}))
open(f"{work}/www/-/jwks", "w").write(json.dumps({"keys": keys}))
issuer = "https://gitlab.example.com"
open(f"{work}/www/.well-known/openid-configuration", "w").write(json.dumps({
    "issuer": issuer, "authorization_endpoint": issuer + "/oauth/authorize",
    "token_endpoint": issuer + "/oauth/token", "jwks_uri": issuer + "/oauth/discovery/keys",
    "response_types_supported": ["code"], "subject_types_supported": ["public"],
    "id_token_signing_alg_values_supported": ["RS256"]}))
EOF

# The backend: nginx serving files on a unix socket, standing in for Workhorse.
cat >"$work/backend.conf" <<EOF
worker_processes 1;
pid $work/backend.pid;
error_log $work/backend.err warn;
events { worker_connections 12000; }
http {
  access_log off;
  default_type application/json;
  types { application/javascript js; application/json json; }
  server {
    listen unix:$work/backend.sock; root $work/www;
    location /assets/ { add_header Cache-Control "public, max-age=31536000"; }
  }
}
EOF

# omnibus's access log format, for both nginx configurations below.
log_format='log_format gitlab_access '"'"'$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"'"'"';'
# What omnibus sets in each location in front of Workhorse (keepalive added, so the
# comparison is with a tuned nginx, not a handicapped one).
cat >"$work/proxy_headers.conf" <<EOF
proxy_http_version 1.1;
proxy_set_header Connection "";
proxy_set_header Host \$http_host;
proxy_set_header X-Real-IP \$remote_addr;
proxy_set_header X-Forwarded-For \$remote_addr;
proxy_set_header X-Forwarded-Proto http;
proxy_pass http://gitlab-workhorse;
EOF
# One worker: the servers share one core. Port "off" has no access log, "on" the
# one omnibus writes (unbuffered, a line per request).
nginx_off=18481 nginx_on=18482 nginx_tls=18483
ours_off=18484 ours_on=18485 ours_tls=18486 bare_port=18487 admin_off=18488 admin_on=18489 floor_port=18480
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 12000; }
http {
  upstream gitlab-workhorse { server unix:$work/backend.sock; keepalive 64; }
  # omnibus: proxy_cache_path ... keys_zone=gitlab:10m max_size=1g, used by location /assets.
  proxy_cache_path $work/proxy_cache levels=1:2 keys_zone=gitlab:10m max_size=1g inactive=60m;
  types { application/json json; }
  # omnibus: gzip on, level 2, min length 250, these types, Vary.
  gzip on; gzip_comp_level 2; gzip_min_length 250; gzip_vary on; gzip_http_version 1.0;
  gzip_types text/plain text/css application/x-javascript text/xml application/xml application/xml+rss text/javascript application/json;
  keepalive_timeout 300s;
  $log_format
  server {
    listen 127.0.0.1:$nginx_off;
    listen 127.0.0.1:$nginx_tls ssl http2;
    access_log off;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    client_max_body_size 0;
    location / { proxy_read_timeout 3600; proxy_connect_timeout 300; include $work/proxy_headers.conf; }
    location /assets {
      add_header X-Frame-Options SAMEORIGIN;
      add_header X-Cache-Status \$upstream_cache_status;
      proxy_cache gitlab;
      include $work/proxy_headers.conf;
    }
  }
  server {
    listen 127.0.0.1:$nginx_on;
    access_log $work/nginx_access.log gitlab_access;
    location / { include $work/proxy_headers.conf; }
    # The documents as nginx would keep them, for the memory check.
    location /-/jwks { proxy_cache gitlab; proxy_cache_valid 200 1h; proxy_ignore_headers Cache-Control; include $work/proxy_headers.conf; }
  }
}
EOF

"${server[@]}" nginx -c "$work/backend.conf" -p "$work"
"${server[@]}" nginx -c "$work/nginx.conf" -p "$work"
# Ours with the default logging (an access line per request, to a file as journald
# would take it) and with the access log off; both terminate TLS too.
start_ours() {
  local port=$1 admin=$2 log=$3
  shift 3
  "${server[@]}" env "$@" "$bin" serve --upstream "unix:$work/backend.sock" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --header-timeout 300s \
    "${tls_args[@]}" 2>"$log" &
  pids+=($!)
}
tls_args=(--tls-listen "127.0.0.1:$ours_tls" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
start_ours $ours_off $admin_off "$work/ours_off.log" RUST_LOG=warn
tls_args=()
start_ours $ours_on $admin_on "$work/ours_on.log" RUST_LOG=info
wait_for() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "error: $1 never answered" >&2; exit 1; }
for port in $ours_off $ours_on; do wait_for "http://127.0.0.1:$port/-/jwks"; done
wait_for "http://127.0.0.1:$nginx_off/small"

# The bare server answers with exactly our /-/jwks bytes and headers.
curl -sf -D "$work/jwks.head" -o "$work/jwks.body" "http://127.0.0.1:$ours_on/-/jwks"
mapfile -t jwks_headers < <(tr -d '\r' <"$work/jwks.head" | grep -iE '^(content-type|cache-control|etag|access-control-allow-origin|vary|x-content-type-options):')
"${server[@]}" "$bare" "127.0.0.1:$bare_port" "$work/jwks.body" "${jwks_headers[@]}" >/dev/null &
pids+=($!)
wait_for "http://127.0.0.1:$bare_port/"
# The floor under any pass-through on our stack: hyper passing requests as they
# are, over one upstream connection per client connection (benches/bare_hyper_proxy.rs).
"${server[@]}" "$floor" "127.0.0.1:$floor_port" "$work/backend.sock" >/dev/null &
pids+=($!)
wait_for "http://127.0.0.1:$floor_port/ok.json"

# Measure only what works: whole files, gzip where omnibus gzips, cache hits.
for port in $nginx_off $ours_off; do
  for f in small large ok.json; do
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port/$f")
    [ "$got" = "200 $(stat -c %s "$work/www/$f")" ] || { echo "error: :$port/$f answered '$got'" >&2; for l in "$work"/ours_*.log "$work"/*.err; do tail -n 3 "$l"; done >&2; exit 1; }
  done
done
cmp -s "$work/jwks.body" <(curl -sf "http://127.0.0.1:$bare_port/-/jwks") || { echo "error: the bare server's body differs" >&2; exit 1; }
for port in $nginx_tls $ours_tls; do
  enc=$(curl -sk -H 'Accept-Encoding: gzip' -o /dev/null -D - "https://127.0.0.1:$port/api.json" | tr -d '\r' | grep -i '^content-encoding:' || true)
  [ -n "$enc" ] || { echo "error: https :$port/api.json was not gzipped" >&2; exit 1; }
done
for port in $nginx_off $ours_off; do curl -sf -o /dev/null "http://127.0.0.1:$port/assets/app.js"; done
curl -sf -D - -o /dev/null "http://127.0.0.1:$ours_off/assets/app.js" | grep -qi '^age:' ||
  { echo "error: our second /assets/app.js was not a cache hit" >&2; exit 1; }
curl -sf -D - -o /dev/null "http://127.0.0.1:$nginx_off/assets/app.js" | grep -qi '^x-cache-status: HIT' ||
  { echo "error: nginx's second /assets/app.js was not a cache hit" >&2; exit 1; }

# wrk summary -> "requests/s p99_ms"; fails on any non-2xx answer or socket error.
measure() {
  local url=$1 conns=$2
  shift 2
  "${client[@]}" wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$@" "$url" | tee -a "$work/wrk.log" | awk -v url="$url" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx|Socket errors/ { bad = bad " " $0 }
    END { if (bad != "" || rps == "") { print "error: " url ":" bad > "/dev/stderr"; exit 1 }
          printf "%s %.3f\n", rps, p99 }'
}

# "rps p99" lines -> the median of each column.
median() {
  local m=$((($# + 1) / 2))
  echo "$(printf '%s\n' "$@" | awk '{ print $1 }' | sort -g | sed -n "${m}p") $(printf '%s\n' "$@" | awk '{ print $2 }' | sort -g | sed -n "${m}p")"
}

# name|reference|path|connections|scheme|reference port|our port|extra header
scenarios=(
  "cached /-/jwks, log on|bare hyper|/-/jwks|$CONNECTIONS|http|$bare_port|$ours_on|"
  "cached /-/jwks, log off|bare hyper|/-/jwks|$CONNECTIONS|http|$bare_port|$ours_off|"
  "pass-through {\"ok\":true}, logs on|nginx|/ok.json|$CONNECTIONS|http|$nginx_on|$ours_on|"
  "pass-through {\"ok\":true}, logs off|nginx|/ok.json|$CONNECTIONS|http|$nginx_off|$ours_off|"
  "stack floor: bare hyper pass-through|nginx|/ok.json|$CONNECTIONS|http|$nginx_off|$floor_port|"
  "large 10MiB GET, logs off|nginx|/large|8|http|$nginx_off|$ours_off|"
  "tls 1KiB GET, logs off|nginx|/small|$CONNECTIONS|https|$nginx_tls|$ours_tls|"
  "tls 64KiB JSON gzip, logs off|nginx|/api.json|$CONNECTIONS|https|$nginx_tls|$ours_tls|Accept-Encoding: gzip"
  "tls handshake each, logs off|nginx|/small|$CONNECTIONS|https|$nginx_tls|$ours_tls|Connection: close"
  "assets 300KB JS cached, logs off|nginx|/assets/app.js|$CONNECTIONS|http|$nginx_off|$ours_off|"
)
chosen=()
for scenario in "${scenarios[@]}"; do wanted "throughput ${scenario%%|*}" && chosen+=("$scenario"); done
if [ ${#chosen[@]} -gt 0 ]; then
  printf '%-34s %-10s %10s %10s %6s %9s %9s %6s\n' scenario reference ref_rps ours_rps ratio ref_p99 ours_p99 ratio
  for scenario in "${chosen[@]}"; do
    IFS='|' read -r name reference path conns scheme rp op header <<<"$scenario"
    args=()
    [ -n "$header" ] && args=(-H "$header")
    # ROUNDS runs of each, alternating, the median kept: one slow second on a
    # shared machine does not decide a ratio.
    refs=() ours=()
    for _ in $(seq "$ROUNDS"); do
      refs+=("$(measure "$scheme://127.0.0.1:$rp$path" "$conns" "${args[@]}")")
      ours+=("$(measure "$scheme://127.0.0.1:$op$path" "$conns" "${args[@]}")")
    done
    read -r r_rps r_p99 <<<"$(median "${refs[@]}")"
    read -r o_rps o_p99 <<<"$(median "${ours[@]}")"
    awk -v n="$name" -v ref="$reference" -v rr="$r_rps" -v or="$o_rps" -v rp="$r_p99" -v op="$o_p99" 'BEGIN {
      printf "%-34s %-10s %10.0f %10.0f %6.2f %7.2fms %7.2fms %6.2f\n", n, ref, rr, or, or/rr, rp, op, op/rp }'
  done
  echo "(rps ratio > 1: ours serves more; p99 ratio < 1: ours answers faster; medians of $ROUNDS alternating wrk -t1 -c$CONNECTIONS ${DURATION}s runs on cpu $CLIENT_CPU, servers on cpu $SERVER_CPU)"
fi

# Instructions per request: the server runs under callgrind; counters are zeroed,
# N keep-alive requests made on one connection, counters dumped; twice (500 and
# 2,500), so the connection's set-up and the idle time cancel out.
keepalive_requests() {
  python3 - "$1" "$2" "$3" <<'EOF'
import http.client, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", path, headers={"Host": "gitlab.example.com"})
    r = c.getresponse()
    r.read()
    if not 200 <= r.status < 300:
        raise SystemExit(f"error: {path} answered {r.status}")
c.close()
EOF
}
ir_of_dump() { awk '/^summary:/ { s += $2 } END { print s + 0 }' "$@"; }
instructions_per_request() {
  local port=$1 path=$2
  shift 2
  local out="$work/cg.$port"
  # On one core like the throughput runs: tokio then runs one worker thread, whose
  # idle spinning would otherwise add a count that depends on timing.
  "${server[@]}" valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" >"$work/cg.$port.log" 2>&1 &
  local vg=$!
  for _ in $(seq 300); do curl -sf -o /dev/null -H 'Host: gitlab.example.com' "http://127.0.0.1:$port$path" && break; sleep 0.2; done
  keepalive_requests "$port" "$path" 20 # warm: the first answers fill caches and pools
  local counts=()
  for n in 500 2500; do
    callgrind_control -z "$vg" >/dev/null 2>&1
    keepalive_requests "$port" "$path" "$n"
    callgrind_control -d "n$n" "$vg" >/dev/null 2>&1
    counts+=("$(ir_of_dump "$(ls -t "$out".*.* | head -1)")")
  done
  kill "$vg"
  wait "$vg" 2>/dev/null || true
  # CALLGRIND_KEEP=DIR keeps the dumps, for callgrind_annotate.
  [ -n "${CALLGRIND_KEEP:-}" ] && mkdir -p "$CALLGRIND_KEEP" && cp "$out".*.* "$CALLGRIND_KEEP/"
  rm -f "$out".*
  echo $(((counts[1] - counts[0]) / 2000))
}
if wanted instructions; then
  ig=18490 ig_admin=18491
  bare_ir=$(instructions_per_request $ig /-/jwks "$bare" "127.0.0.1:$ig" "$work/jwks.body" "${jwks_headers[@]}")
  # nginx's own count for the pass-through: one process (no master, so that
  # callgrind sees the worker), omnibus's settings as above, its log off or on.
  nginx_ir() {
    cat >"$work/nginx_cg.conf" <<EOF
daemon off;
master_process off;
pid $work/nginx_cg.pid;
error_log $work/nginx_cg.err warn;
events { worker_connections 1024; }
http {
  upstream gitlab-workhorse { server unix:$work/backend.sock; keepalive 64; }
  $log_format
  keepalive_timeout 300s;
  keepalive_requests 100000;
  server {
    listen 127.0.0.1:$ig;
    access_log $1;
    location / { include $work/proxy_headers.conf; }
  }
}
EOF
    instructions_per_request $ig /ok.json nginx -c "$work/nginx_cg.conf" -p "$work"
  }
  nginx_on_ir=$(nginx_ir "$work/nginx_cg_access.log gitlab_access")
  nginx_off_ir=$(nginx_ir off)
  floor_ir=$(instructions_per_request $ig /ok.json "$floor" "127.0.0.1:$ig" "$work/backend.sock")
  # label, path, RUST_LOG, the reference's count
  ir_row() {
    local label=$1 path=$2 log=$3 ref=$4
    local ir
    ir=$(export RUST_LOG=$log; instructions_per_request $ig "$path" "$bin" serve --upstream "unix:$work/backend.sock" \
      --listen "127.0.0.1:$ig" --admin-listen "127.0.0.1:$ig_admin")
    awk -v l="$label" -v ir="$ir" -v b="$ref" 'BEGIN { printf "%-50s %10d %8.2f\n", l, ir, ir / b }'
  }
  ref_row() { printf '%-50s %10d %8s\n' "$1" "$2" 1; }
  printf '%-50s %10s %8s\n' "instructions per request (callgrind)" count "× ref"
  ref_row "bare hyper, the same /-/jwks bytes (ref)" "$bare_ir"
  ir_row "ours, cached /-/jwks, default logging" /-/jwks info "$bare_ir"
  ir_row "ours, cached /-/jwks, RUST_LOG=warn" /-/jwks warn "$bare_ir"
  ref_row "nginx, pass-through {\"ok\":true}, log on (ref)" "$nginx_on_ir"
  ir_row "ours, pass-through {\"ok\":true}, default logging" /ok.json info "$nginx_on_ir"
  ref_row "nginx, pass-through {\"ok\":true}, log off (ref)" "$nginx_off_ir"
  ir_row "ours, pass-through {\"ok\":true}, RUST_LOG=warn" /ok.json warn "$nginx_off_ir"
  # What hyper and tokio cost for the two exchanges of a pass-through, before
  # anything of ours: the part of the count no change here can remove.
  awk -v ir="$floor_ir" -v b="$nginx_off_ir" 'BEGIN { printf "%-50s %10d %8.2f\n", "stack floor: bare hyper pass-through", ir, ir / b }'
fi

# Memory per idle keep-alive connection: IDLE_CONNECTIONS clients, each after one
# cached /-/jwks; RSS before, with all open, and after they close; three bursts.
rss_kib() { for p in "$@"; do cat "$p/status"; done | awk '/^VmRSS/ { s += $2 } END { print s + 0 }'; }
memory_row() {
  local name=$1 port=$2
  shift 2
  local procs=("$@") idle opened line closed=()
  idle=$(rss_kib "${procs[@]}")
  coproc IDLE { python3 benches/idle_clients.py "$port" /-/jwks "$IDLE_CONNECTIONS"; }
  for burst in 1 2 3; do
    read -r line <&"${IDLE[0]}"
    [ "$line" = open ] || { echo "error: idle clients: $line" >&2; exit 1; }
    # Idle means quiet: ours parks an HTTP/1 connection after 1 s without a
    # request (hyper's buffers freed); nginx frees its buffers at once.
    [ "$burst" = 1 ] && sleep 2 && opened=$(rss_kib "${procs[@]}")
    echo close >&"${IDLE[1]}"
    read -r line <&"${IDLE[0]}"
    sleep 2 # freed memory is given back after a short delay
    closed+=("$(rss_kib "${procs[@]}")")
    if [ "$burst" = 3 ]; then echo stop >&"${IDLE[1]}"; else echo again >&"${IDLE[1]}"; fi
  done
  wait "$IDLE_PID" 2>/dev/null || true
  awk -v n="$name" -v i="$idle" -v o="$opened" -v c="${closed[*]}" -v k="$IDLE_CONNECTIONS" 'BEGIN {
    split(c, a, " ");
    printf "%-12s %9.1f %9.1f %9.2f %22s %8.2f\n", n, i/1024, o/1024, (o-i)/k,
      sprintf("%.1f %.1f %.1f", a[1]/1024, a[2]/1024, a[3]/1024), a[3]/i }'
}
if wanted memory; then
  mem_port=18492 mem_admin=18493
  "${server[@]}" env RUST_LOG=info "$bin" serve --upstream "unix:$work/backend.sock" --header-timeout 300s \
    --listen "127.0.0.1:$mem_port" --admin-listen "127.0.0.1:$mem_admin" 2>"$work/ours_mem.log" &
  mem_pid=$!
  pids+=($mem_pid)
  wait_for "http://127.0.0.1:$mem_port/-/jwks"
  sleep 1
  printf '%-12s %9s %9s %9s %22s %8s\n' server "idle MiB" "open MiB" "KiB/conn" "closed MiB ×3 bursts" "/idle"
  memory_row ours $mem_port "/proc/$mem_pid"
  worker=$(pgrep -P "$(cat "$work/nginx.pid")" | head -1)
  curl -sf -o /dev/null "http://127.0.0.1:$nginx_on/-/jwks"
  memory_row "nginx worker" $nginx_on "/proc/$worker"
  echo "($IDLE_CONNECTIONS idle keep-alive connections, each after one GET /-/jwks, RSS 2 s after all are open; closed: RSS 2 s after each burst closed)"
fi

# Where an idle connection's memory goes (only when asked: ONLY=breakdown):
# ours, built with glibc's malloc (valgrind sees no other), under massif; the
# heap by allocation site once warm and again with BREAKDOWN_CONNECTIONS idle
# connections open, the difference in bytes per connection, each site named by
# its first frames outside the allocator.
if [[ "${ONLY:-}" == *breakdown* ]]; then
  n=${BREAKDOWN_CONNECTIONS:-500}
  bd_port=18496 bd_admin=18497
  cargo build --release --quiet --bin gitlab-oidc-proxy --features system-allocator \
    --target-dir "${CARGO_TARGET_DIR:-target}/system-allocator"
  "${server[@]}" env RUST_LOG=warn valgrind --tool=massif --threshold=0.01 --massif-out-file="$work/massif.out" \
    "${CARGO_TARGET_DIR:-target}/system-allocator/release/gitlab-oidc-proxy" serve \
    --upstream "unix:$work/backend.sock" --header-timeout 300s \
    --listen "127.0.0.1:$bd_port" --admin-listen "127.0.0.1:$bd_admin" 2>"$work/massif.log" &
  bd_pid=$!
  for _ in $(seq 300); do curl -sf -o /dev/null "http://127.0.0.1:$bd_port/-/jwks" && break; sleep 0.2; done
  keepalive_requests "$bd_port" /-/jwks 20
  vgdb --pid="$bd_pid" detailed_snapshot "$work/before.ms" >/dev/null
  coproc BD { python3 benches/idle_clients.py "$bd_port" /-/jwks "$n"; }
  read -r line <&"${BD[0]}"
  [ "$line" = open ] || { echo "error: idle clients: $line" >&2; exit 1; }
  sleep 3 # parked after 1 s quiet (slower under valgrind)
  vgdb --pid="$bd_pid" detailed_snapshot "$work/open.ms" >/dev/null
  echo close >&"${BD[1]}"
  read -r line <&"${BD[0]}"
  echo stop >&"${BD[1]}"
  wait "$BD_PID" 2>/dev/null || true
  kill "$bd_pid"
  python3 benches/heap_per_connection.py "$work/before.ms" "$work/open.ms" "$n"
fi

# The /assets cache's memory: 32 MiB of cache under 64 MiB of distinct 300 KB
# assets, fetched three times over; the proxy's resident memory after each pass.
wanted assets || exit 0
for i in $(seq 1 219); do head -c 300000 /dev/urandom >"$work/www/assets/many/$i.js"; done
cache_port=18494 cache_admin=18495
"${server[@]}" env RUST_LOG=warn "$bin" serve --upstream "unix:$work/backend.sock" --assets-cache-size 32MiB \
  --listen "127.0.0.1:$cache_port" --admin-listen "127.0.0.1:$cache_admin" &
cache_pid=$!
pids+=($cache_pid)
wait_for "http://127.0.0.1:$cache_port/small"
rss() { awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$cache_pid/status"; }
passes="before $(rss)"
for pass in 1 2 3; do
  seq 1 219 | xargs -P 8 -I{} curl -sf -o /dev/null "http://127.0.0.1:$cache_port/assets/many/{}.js"
  passes+=", pass $pass $(rss)"
done
held=$(curl -sf "http://127.0.0.1:$cache_admin/metrics" | awk '/^gitlab_oidc_proxy_assets_cache_bytes / { printf "%.1f MiB", $2 / 1048576 }')
echo "assets memory: --assets-cache-size 32MiB, 64 MiB of 300 KB assets: VmRSS $passes; cache holds $held"
