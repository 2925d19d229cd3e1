#!/usr/bin/env bash
# Pass-through throughput and latency of gitlab-oidc-proxy against nginx, both in
# front of the same backend on a unix socket (as Workhorse is), on this machine,
# in one run: plain HTTP, TLS with gzip as omnibus configures it, and a 300 KB
# JavaScript asset served from the cache (ours in memory, nginx's proxy_cache as
# omnibus sets it). Prints ratios (ours / nginx), then the memory check of the
# assets cache: RSS under a working set twice --assets-cache-size. Loopback only;
# stops by itself.
#
#   bash benches/vs_nginx.sh            # needs nginx and wrk (apt-get install nginx-light wrk)
#   DURATION=20 CONNECTIONS=100 bash benches/vs_nginx.sh
#   ONLY=tls bash benches/vs_nginx.sh   # only the scenarios whose name contains "tls"
#   ONLY=assets bash benches/vs_nginx.sh  # the cached asset and the memory check
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
for tool in nginx wrk openssl python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx-light wrk)" >&2; exit 2; }
done

cargo build --release --quiet
bin=${CARGO_TARGET_DIR:-target}/release/gitlab-oidc-proxy
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/backend.pid" ] && kill "$(cat "$work/backend.pid")" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 0.2
  rm -rf "$work"
}
trap cleanup EXIT

# nginx workers run unprivileged: they must be able to read the files and the socket.
chmod 755 "$work"
mkdir -p "$work/www"
head -c 1024 /dev/urandom >"$work/www/small"
head -c $((10 << 20)) /dev/urandom >"$work/www/large"
# An API-like JSON answer of ~64 KiB: compressible, as GitLab's are.
# GitLab's compiled JavaScript: 300 KB, cached for a year (below, as Workhorse sends it).
mkdir -p "$work/www/assets/many"
python3 -c 'import random; random.seed(2); print("".join("function f%d(a){return a*%d+\"%s\";}\n" % (i, i, "x" * random.randint(5, 60)) for i in range(6000))[:300000], end="")' >"$work/www/assets/app.js"
python3 -c 'import json,random; random.seed(1); print(json.dumps([{"id": i, "name": "project-%d" % i, "path_with_namespace": "group/sub/project-%d" % i, "star_count": random.randint(0, 999), "web_url": "https://gitlab.example.com/group/sub/project-%d" % i} for i in range(400)]))' >"$work/www/api.json"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# The backend: nginx serving files on a unix socket, standing in for Workhorse.
cat >"$work/backend.conf" <<EOF
worker_processes 1;
pid $work/backend.pid;
error_log $work/backend.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  types { application/javascript js; application/json json; }
  server {
    listen unix:$work/backend.sock; root $work/www;
    location /assets/ { add_header Cache-Control "public, max-age=31536000"; }
  }
}
EOF

# The nginx proxy, as omnibus configures it for Workhorse (keepalive added, so
# the comparison is with a tuned nginx, not a handicapped one).
nginx_port=18481 ours_port=18482 admin_port=18483 nginx_tls=18484 ours_tls=18485
cat >"$work/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream gitlab-workhorse { server unix:$work/backend.sock; keepalive 64; }
  # omnibus: proxy_cache_path ... keys_zone=gitlab:10m max_size=1g, used by location /assets.
  proxy_cache_path $work/proxy_cache levels=1:2 keys_zone=gitlab:10m max_size=1g inactive=60m;
  types { application/json json; }
  # omnibus: gzip on, level 2, min length 250, these types, Vary.
  gzip on; gzip_comp_level 2; gzip_min_length 250; gzip_vary on; gzip_http_version 1.0;
  gzip_types text/plain text/css application/x-javascript text/xml application/xml application/xml+rss text/javascript application/json;
  server {
    listen 127.0.0.1:$nginx_port;
    listen 127.0.0.1:$nginx_tls ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    client_max_body_size 0;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto http;
      proxy_read_timeout 3600;
      proxy_connect_timeout 300;
      proxy_pass http://gitlab-workhorse;
    }
    location /assets {
      add_header X-Frame-Options SAMEORIGIN;
      add_header X-Cache-Status \$upstream_cache_status;
      proxy_cache gitlab;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto http;
      proxy_pass http://gitlab-workhorse;
    }
  }
}
EOF

nginx -c "$work/backend.conf" -p "$work"
nginx -c "$work/nginx.conf" -p "$work"
# The access log is off on both sides: this measures forwarding, not log writing.
RUST_LOG=warn "$bin" serve --upstream "unix:$work/backend.sock" \
  --listen "127.0.0.1:$ours_port" --admin-listen "127.0.0.1:$admin_port" \
  --tls-listen "127.0.0.1:$ours_tls" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" &
pids+=($!)
for _ in $(seq 50); do
  curl -sf -o /dev/null "http://127.0.0.1:$ours_port/small" && curl -sf -o /dev/null "http://127.0.0.1:$nginx_port/small" && break
  sleep 0.1
done
# Measure only what works: both must return the whole file.
for port in $nginx_port $ours_port; do
  for f in small large; do
    got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$port/$f")
    [ "$got" = "200 $(stat -c %s "$work/www/$f")" ] || { echo "error: :$port/$f answered '$got'" >&2; exit 1; }
  done
done

for port in $nginx_tls $ours_tls; do
  got=$(curl -sk --compressed -o /dev/null -w '%{http_code} %{size_download}' "https://127.0.0.1:$port/api.json")
  [ "${got%% *}" = 200 ] || { echo "error: https :$port/api.json answered '$got'" >&2; exit 1; }
  enc=$(curl -sk -H 'Accept-Encoding: gzip' -o /dev/null -D - "https://127.0.0.1:$port/api.json" | tr -d '\r' | grep -i '^content-encoding:' || true)
  [ -n "$enc" ] || { echo "error: https :$port/api.json was not gzipped" >&2; exit 1; }
done

# Both serve the asset from their cache: ours says so with Age, nginx with X-Cache-Status.
for port in $nginx_port $ours_port; do curl -sf -o /dev/null "http://127.0.0.1:$port/assets/app.js"; done
curl -sf -D - -o /dev/null "http://127.0.0.1:$ours_port/assets/app.js" | grep -qi '^age:' ||
  { echo "error: our second /assets/app.js was not a cache hit" >&2; exit 1; }
curl -sf -D - -o /dev/null "http://127.0.0.1:$nginx_port/assets/app.js" | grep -qi '^x-cache-status: HIT' ||
  { echo "error: nginx's second /assets/app.js was not a cache hit" >&2; exit 1; }

# wrk summary -> "requests/s p50_ms p99_ms"; extra arguments go to wrk (headers).
measure() {
  local url=$1 conns=$2
  shift 2
  wrk -t2 -c"$conns" -d"${DURATION}s" --latency "$@" "$url" | tee -a "$work/wrk.log" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /^Requests\/sec/ { rps = $2 }
    /Non-2xx/ { print "error: " $0 > "/dev/stderr"; exit 1 }
    END { printf "%s %.3f %.3f\n", rps, p50, p99 }'
}

printf '%-24s %12s %12s %8s %10s %10s %8s\n' scenario nginx_rps ours_rps ratio nginx_p99 ours_p99 ratio
# name:path:connections:scheme:extra header
scenarios=(
  "small 1KiB GET:/small:$CONNECTIONS:http:"
  "large 10MiB GET:/large:8:http:"
  "tls 1KiB GET:/small:$CONNECTIONS:https:"
  "tls 64KiB JSON gzip:/api.json:$CONNECTIONS:https:Accept-Encoding: gzip"
  "tls handshake each:/small:$CONNECTIONS:https:Connection: close"
  "assets 300KB JS cached:/assets/app.js:$CONNECTIONS:http:"
)
for scenario in "${scenarios[@]}"; do
  IFS=: read -r name path conns scheme header <<<"$scenario"
  [[ "$name" == *"${ONLY:-}"* ]] || continue
  args=()
  [ -n "$header" ] && args=(-H "$header")
  if [ "$scheme" = https ]; then np=$nginx_tls op=$ours_tls; else np=$nginx_port op=$ours_port; fi
  read -r n_rps _ n_p99 <<<"$(measure "$scheme://127.0.0.1:$np$path" "$conns" "${args[@]}")"
  read -r o_rps _ o_p99 <<<"$(measure "$scheme://127.0.0.1:$op$path" "$conns" "${args[@]}")"
  awk -v name="$name" -v nr="$n_rps" -v or="$o_rps" -v np="$n_p99" -v op="$o_p99" 'BEGIN {
    printf "%-24s %12.0f %12.0f %8.2f %9.2fms %9.2fms %8.2f\n", name, nr, or, or/nr, np, op, op/np }'
done
echo "(rps ratio > 1: we serve more; p99 ratio < 1: we answer faster; c=$CONNECTIONS, ${DURATION}s each, $(nproc) cores)"

# The memory check: a cache of 32 MiB under 64 MiB of distinct 300 KB assets,
# fetched three times over; the proxy's resident memory after each pass.
[[ "assets memory" == *"${ONLY:-}"* ]] || exit 0
for i in $(seq 1 219); do head -c 300000 /dev/urandom >"$work/www/assets/many/$i.js"; done
mem_port=18486 mem_admin=18487
RUST_LOG=warn "$bin" serve --upstream "unix:$work/backend.sock" --assets-cache-size 32MiB \
  --listen "127.0.0.1:$mem_port" --admin-listen "127.0.0.1:$mem_admin" &
mem_pid=$!
pids+=($mem_pid)
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$mem_port/small" && break; sleep 0.1; done
rss() { awk '/^VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$mem_pid/status"; }
passes="before $(rss)"
for pass in 1 2 3; do
  seq 1 219 | xargs -P 8 -I{} curl -sf -o /dev/null "http://127.0.0.1:$mem_port/assets/many/{}.js"
  passes+=", pass $pass $(rss)"
done
held=$(curl -sf "http://127.0.0.1:$mem_admin/metrics" | awk '/^gitlab_oidc_proxy_assets_cache_bytes / { printf "%.1f MiB", $2 / 1048576 }')
echo "assets memory: --assets-cache-size 32MiB, 64 MiB of 300 KB assets: VmRSS $passes; cache holds $held"
