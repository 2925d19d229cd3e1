#!/usr/bin/env bash
# The Debian package (issue 11): builds it with cargo-deb from the release binary,
# installs it, checks what it installed (paths, conffile, user, unit disabled and
# valid), serves the simulated GitLab through the INSTALLED binary as the package's
# user with the packaged settings, then removes and purges it.
#
# Run from the repository root, as root, on Debian 12, after
# `cargo build --release --locked` (BIN names that binary). It owns this machine's
# gitlab-oidc-proxy package: a leftover install and its user are removed first, so
# every run checks the same thing. Everything it starts listens on 127.0.0.1.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
PKG=gitlab-oidc-proxy
BIN=${BIN:-target/release/gitlab-oidc-proxy}
DEFAULTS=/etc/default/$PKG
UNIT=/usr/lib/systemd/system/$PKG.service
WANTS=/etc/systemd/system/multi-user.target.wants/$PKG.service

fail() { echo "package.sh: FAIL: $*" >&2; exit 1; }

# Step timing: `step NAME` ends the previous step; the summary prints at the end.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
start_all=$EPOCHREALTIME
step_name="" step_start="" timings=()
step() {
  if [ -n "$step_name" ]; then
    timings+=("$(printf '%-40s %6s s' "$step_name" "$(since "$step_start")")")
  fi
  step_name=$1 step_start=$EPOCHREALTIME
  if [ -n "$step_name" ]; then echo "== $step_name"; fi
}

work=$(mktemp -d)
pids=()
cleanup() {
  local rc=$? pid f
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Runs "$@" every 0.1 s until it succeeds, for at most 10 s.
wait_for() {
  local _
  for _ in $(seq 100); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "still failing after 10 s: $*"
}

status_of() { dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null || true; }

step "prerequisites"
[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg -i, adduser)"
[ -x "$BIN" ] || fail "no release binary at $BIN: run cargo build --release --locked first"
need=()
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)   # cargo-deb's $auto depends
command -v strip >/dev/null 2>&1 || need+=(binutils)             # cargo-deb strips the binary
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# A previous run that stopped half-way: start from no package and no user.
if [ -n "$(status_of | tr -d ' un')" ]; then dpkg -P "$PKG"; fi
if getent passwd "$PKG" >/dev/null; then deluser --quiet --system "$PKG"; fi
if getent group "$PKG" >/dev/null; then delgroup --quiet --system "$PKG"; fi

step "install cargo-deb $CARGO_DEB_VERSION"
if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
cargo deb --version

step "cargo deb --no-build"
# --no-build packages the binary the wrapper built (cargo-deb finds it in the
# target directory, CARGO_TARGET_DIR included) and strips it.
deb=$(cargo deb --no-build --locked | tail -n 1)
[ -f "$deb" ] || fail "cargo deb printed no .deb path (got: $deb)"
deb_size=$(stat -c %s "$deb")
echo "$deb: $deb_size bytes"
dpkg-deb --info "$deb"

step "dpkg -i"
dpkg -i "$deb" | tee "$work/dpkg-i.log"
[ "$(status_of)" = "ii " ] || fail "not installed: $(status_of)"

step "installed files, conffile, user, unit"
for path in /usr/bin/$PKG $UNIT $DEFAULTS /usr/share/doc/$PKG/README.md /usr/share/doc/$PKG/copyright; do
  dpkg -L "$PKG" | grep -qx "$path" || fail "dpkg -L lacks $path"
  [ -e "$path" ] || fail "$path not on disk"
done
dpkg -L "$PKG" | sed 's/^/  /'
conffiles=$(dpkg-query -W -f='${Conffiles}\n' "$PKG")
echo "conffiles:$conffiles"
grep -q "^ $DEFAULTS [0-9a-f]\{32\}$" <<<"$conffiles" || fail "$DEFAULTS is not a conffile"
grep -qx "GITLAB_OIDC_PROXY_UPSTREAM=unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket" "$DEFAULTS" \
  || fail "$DEFAULTS does not point at omnibus Workhorse's socket"
# A system user and group of its own, no home, no login shell.
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd "$PKG") || fail "no user $PKG"
[ "$(getent group "$PKG" | cut -d: -f3)" = "$gid" ] || fail "user $PKG is not in group $PKG"
[[ $uid -lt 1000 && $home = /nonexistent && $shell = /usr/sbin/nologin ]] \
  || fail "user $PKG: uid $uid home $home shell $shell"
echo "user $PKG: uid $uid gid $gid home $home shell $shell"
# postinst again (as an upgrade or a reconfigure would): the user is left as it is.
DPKG_MAINTSCRIPT_PACKAGE=$PKG DPKG_MAINTSCRIPT_NAME=postinst \
  /var/lib/dpkg/info/$PKG.postinst configure 0.0.0
[ "$(getent passwd "$PKG" | cut -d: -f3)" = "$uid" ] || fail "second postinst changed the user"
# Installed, neither enabled nor started: it would take port 80 from GitLab's nginx.
[[ ! -e $WANTS && ! -L $WANTS ]] || fail "the package enabled the unit ($WANTS)"
enabled=$(systemctl is-enabled "$PKG.service" 2>&1 || true)
echo "systemctl is-enabled: $enabled"
[ "$enabled" = disabled ] || fail "systemctl is-enabled says $enabled, not disabled"
if pgrep -u "$PKG" >/dev/null; then fail "a process runs as $PKG right after install"; fi
systemd-analyze verify "$UNIT"
echo "systemd-analyze verify $UNIT: ok"
systemd-analyze security --offline=true "$UNIT" | tail -n 1

step "serve through the installed binary"
read -r p_gitlab p_proxy p_admin < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
issuer=http://127.0.0.1:$p_proxy
/usr/bin/$PKG demo --gitlab-only --gitlab-listen "127.0.0.1:$p_gitlab" --external-url "$issuer" \
  >"$work/gitlab.log" 2>&1 &
pids+=($!)
wait_for curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$p_gitlab/.well-known/openid-configuration"
# The packaged settings, with the addresses moved to loopback, as the package's user.
mapfile -t settings < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$DEFAULTS")
setpriv --reuid="$PKG" --regid="$PKG" --init-groups --no-new-privs --inh-caps=-all \
  env -i PATH=/usr/bin:/bin "${settings[@]}" \
  GITLAB_OIDC_PROXY_UPSTREAM="http://127.0.0.1:$p_gitlab" \
  GITLAB_OIDC_PROXY_LISTEN="127.0.0.1:$p_proxy" \
  GITLAB_OIDC_PROXY_ADMIN_LISTEN="127.0.0.1:$p_admin" \
  GITLAB_OIDC_PROXY_EXTERNAL_URL="$issuer" \
  /usr/bin/$PKG serve >"$work/proxy.log" 2>&1 &
proxy_pid=$!
pids+=("$proxy_pid")
wait_for curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$p_admin/readyz"
[ "$(ps -o user= -p "$proxy_pid" | tr -d ' ')" = "$PKG" ] || fail "the proxy does not run as $PKG"
curl -sS --max-time 5 -D "$work/headers" -o "$work/discovery.json" "$issuer/.well-known/openid-configuration"
sed 's/^/  /' "$work/headers"
head -n 1 "$work/headers" | grep -q '^HTTP/1.1 200' || fail "discovery through the proxy: not 200"
grep -qi '^cache-control: public, max-age=3600'$'\r''$' "$work/headers" || fail "discovery: wrong Cache-Control"
jwks_uri=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jwks_uri"])' "$work/discovery.json")
echo "  jwks_uri: $jwks_uri"
[ "$jwks_uri" = "$issuer/-/jwks" ] || fail "jwks_uri is $jwks_uri, not $issuer/-/jwks"
kids=$(curl -sSf --max-time 5 "$jwks_uri" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["keys"]))')
[ "$kids" -ge 2 ] || fail "$jwks_uri holds $kids keys (the OIDC and the CI key expected)"
echo "  $jwks_uri: $kids keys"
kill "$proxy_pid"
wait "$proxy_pid" || fail "the proxy did not exit 0 on SIGTERM"

step "dpkg -r, dpkg -P"
dpkg -r "$PKG"
[ "$(status_of)" = "rc " ] || fail "after dpkg -r: status $(status_of), not rc"
for path in /usr/bin/$PKG $UNIT; do [ ! -e "$path" ] || fail "$path left after dpkg -r"; done
[ -f "$DEFAULTS" ] || fail "dpkg -r removed the conffile $DEFAULTS"
dpkg -P "$PKG"
[ -z "$(status_of | tr -d ' un')" ] || fail "after dpkg -P: status $(status_of)"
[ ! -e "$DEFAULTS" ] || fail "$DEFAULTS left after dpkg -P"
for link in /etc/systemd/system/$PKG.service "$WANTS"; do
  [[ ! -L $link && ! -e $link ]] || fail "$link left after dpkg -P"
done
# Kept on purge, as Debian packages keep their system users (deploy/debian/postrm).
getent passwd "$PKG" >/dev/null || fail "dpkg -P removed the user $PKG"
echo "removed, then purged: no binary, unit or $DEFAULTS left; user $PKG kept"

step ""
echo "== timings"
printf '  %s\n' "${timings[@]}"
printf '  %-40s %6d bytes\n' ".deb size" "$deb_size"
printf '  %-40s %6s s\n' "total" "$(since "$start_all")"
echo "package.sh: ok"
