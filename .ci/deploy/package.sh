#!/usr/bin/env bash
# The Debian package (issue 11), built by cargo-deb from $BIN (the release binary
# .ci/deploy.sh built): installs it, checks what it installed (paths, conffile,
# user, the unit disabled and valid), serves the simulated GitLab through the
# INSTALLED binary as the package's user with the packaged settings, then removes
# and purges it. Root on Debian 12; crates.io for cargo-deb when it is missing.
# It owns this machine's gitlab-oidc-proxy package: a leftover install and its
# user are removed first, so that every run checks the same thing. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/deploy/lib.sh

CARGO_DEB_VERSION=3.8.0
PKG="gitlab-oidc-proxy"
DEFAULTS=/etc/default/$PKG
UNIT=/usr/lib/systemd/system/$PKG.service
WANTS=/etc/systemd/system/multi-user.target.wants/$PKG.service

# Each part timed (`part NAME` ends the one before); the summary comes last.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
started=$EPOCHREALTIME part_name="" part_start="" timings=()
part() {
  [ -z "$part_name" ] || timings+=("$(printf '%-50s %7s s' "$part_name" "$(since "$part_start")")")
  part_name=$1 part_start=$EPOCHREALTIME
  if [ -n "$part_name" ]; then step "$part_name"; fi
}
# The servers' logs when a check fails (lib.sh's exit trap calls this).
finished=""
cleanup() {
  [ -z "$finished" ] || return 0
  local f
  for f in "$WORK"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done
  return 0
}
status_of() { { dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null || true; } | tr -d ' '; }

part "prerequisites"
[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg -i, adduser)"
[ -x "$BIN" ] || fail "no proxy binary at $BIN (cargo build --release --locked, or set BIN)"
need=()
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)  # cargo-deb: Depends from the binary
command -v strip >/dev/null 2>&1 || need+=(binutils)            # cargo-deb strips the binary
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# cargo-deb packages <target dir>/release/gitlab-oidc-proxy: it must be $BIN.
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
[ "$BIN" -ef "$target_dir/release/$PKG" ] || fail "cargo deb would package $target_dir/release/$PKG, not BIN=$BIN"
# What a run that stopped half-way left behind.
if [ -n "$(status_of)" ]; then dpkg -P "$PKG" >/dev/null; fi
if getent passwd "$PKG" >/dev/null; then deluser --quiet --system "$PKG" 2>/dev/null; fi
if getent group "$PKG" >/dev/null; then delgroup --quiet --system "$PKG"; fi

part "cargo-deb $CARGO_DEB_VERSION (installed if missing)"
if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
note "$(cargo deb --version)"

part "cargo deb --no-build"
deb=$(cargo deb --no-build --locked | tail -n 1)
[ -f "$deb" ] || fail "cargo deb printed no .deb path: $deb"
deb_size=$(stat -c %s "$deb")
note "$deb: $deb_size bytes"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'

part "dpkg -i"
dpkg -i "$deb"
expect_eq "$(status_of)" ii "package status"

part "files, conffile, user, unit"
listed=$(dpkg -L "$PKG")
for path in /usr/bin/$PKG $UNIT $DEFAULTS /usr/share/doc/$PKG/README.md /usr/share/doc/$PKG/copyright; do
  grep -qx "$path" <<<"$listed" || fail "dpkg -L lacks $path"
  [ -f "$path" ] || fail "$path is not on disk"
done
note "dpkg -L: $(grep -vx -e /etc -e /usr -e '/usr/[a-z]*' -e '/usr/lib/systemd' -e '/etc/default' -e '/usr/share/doc' <<<"$listed" | xargs)"
conffiles=$(dpkg-query -W -f='${Conffiles}' "$PKG")
[[ $conffiles =~ ^\ $DEFAULTS\ [0-9a-f]{32}$ ]] || fail "conffiles: '$conffiles', want $DEFAULTS alone"
note "conffile: $DEFAULTS"
grep -qx "GITLAB_OIDC_PROXY_UPSTREAM=unix:/var/opt/gitlab/gitlab-workhorse/sockets/socket" "$DEFAULTS" ||
  fail "$DEFAULTS does not point at omnibus Workhorse's socket"
# A system user with a group of its own, no home, no login shell.
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd "$PKG") || fail "postinst made no user $PKG"
expect_eq "$(getent group "$PKG" | cut -d: -f3)" "$gid" "the user's group $PKG"
[[ $uid -lt 1000 && $home = /nonexistent && $shell = /usr/sbin/nologin ]] ||
  fail "user $PKG: uid $uid, home $home, shell $shell"
note "user $PKG: uid $uid, gid $gid, home $home, shell $shell"
# postinst once more (as an upgrade runs it): the user is left as it is.
DPKG_MAINTSCRIPT_PACKAGE=$PKG DPKG_MAINTSCRIPT_NAME=postinst /var/lib/dpkg/info/$PKG.postinst configure 0.0.0
expect_eq "$(getent passwd "$PKG" | cut -d: -f3)" "$uid" "uid after a second postinst"
# Neither enabled nor started: it would take port 80 from GitLab's nginx.
[[ ! -e $WANTS && ! -L $WANTS ]] || fail "the package enabled the unit: $WANTS"
expect_eq "$(systemctl is-enabled "$PKG.service" 2>&1 || true)" disabled "systemctl is-enabled"
if pgrep -u "$PKG" >/dev/null; then fail "a process runs as $PKG after dpkg -i"; fi
systemd-analyze verify "$UNIT"
note "systemd-analyze verify $UNIT: ok"
note "$(systemd-analyze security --offline=true "$UNIT" | tail -n 1)"

part "the installed binary serves the simulated GitLab"
gitlab=$(free_port) public=$(free_port) admin=$(free_port)
issuer=http://127.0.0.1:$public
/usr/bin/$PKG demo --gitlab-only --gitlab-listen "127.0.0.1:$gitlab" --external-url "$issuer" >"$WORK/gitlab.log" 2>&1 &
wait_http "http://127.0.0.1:$gitlab/-/health"
# The packaged settings, addresses moved to loopback, run as the package's user.
mapfile -t settings < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$DEFAULTS")
# With the unit's UMask=0077 and a copy kept in a directory the user owns (the
# unit's StateDirectory= outside systemd), which a web server must be able to read.
export_dir=$WORK/state/oidc
chmod 0711 "$WORK" # the user may pass through, not list
install -d -o "$PKG" -g "$PKG" -m 0755 "$WORK/state"
(umask 0077 && exec setpriv --reuid="$PKG" --regid="$PKG" --init-groups --no-new-privs --inh-caps=-all \
  env -i PATH=/usr/bin:/bin "${settings[@]}" \
  GITLAB_OIDC_PROXY_UPSTREAM="http://127.0.0.1:$gitlab" \
  GITLAB_OIDC_PROXY_LISTEN="127.0.0.1:$public" \
  GITLAB_OIDC_PROXY_ADMIN_LISTEN="127.0.0.1:$admin" \
  GITLAB_OIDC_PROXY_EXTERNAL_URL="$issuer" \
  GITLAB_OIDC_PROXY_EXPORT_TO="$export_dir" \
  GITLAB_OIDC_PROXY_EXPORT_ISSUER=https://oidc.example.com \
  /usr/bin/$PKG serve) >"$WORK/proxy.log" 2>&1 &
proxy=$!
wait_http "http://127.0.0.1:$admin/readyz"
expect_eq "$(ps -o user= -p "$proxy")" "$PKG" "the proxy's user"
headers=$(curl -sS --max-time 5 -D - -o "$WORK/discovery.json" "$issuer/.well-known/openid-configuration")
expect_contains "$headers" "HTTP/1.1 200" "discovery status"
expect_contains "$headers" "cache-control: public, max-age=3600" "discovery Cache-Control"
expect_eq "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jwks_uri"])' "$WORK/discovery.json")" \
  "$issuer/-/jwks" "rewritten jwks_uri"
expect_contains "$(curl -sS --max-time 5 -D - -o /dev/null "$issuer/-/jwks")" "cache-control: public, max-age=3600" "key set Cache-Control"
copy=$export_dir/.well-known/openid-configuration
for _ in $(seq 50); do [ -f "$copy" ] && break; sleep 0.2; done
[ -f "$copy" ] || fail "no copy at $copy within 10 s (GITLAB_OIDC_PROXY_EXPORT_TO)"
expect_eq "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jwks_uri"])' "$copy")" \
  "https://oidc.example.com/-/jwks" "the copy's jwks_uri"
expect_eq "$(stat -c '%a %U' "$export_dir" "$copy" "$export_dir/.well-known" "$export_dir/-/jwks" | tr '\n' ' ')" \
  "755 $PKG 644 $PKG 755 $PKG 644 $PKG " "modes of the copy under UMask=0077"
note "--export-to: the copy written by $PKG, files 0644 and directories 0755 under umask 0077"
kill "$proxy"
wait "$proxy" || fail "the proxy did not exit 0 on SIGTERM"
note "SIGTERM: exit 0"

part "dpkg -r, then dpkg -P"
dpkg -r "$PKG"
expect_eq "$(status_of)" rc "status after dpkg -r"
for path in /usr/bin/$PKG $UNIT; do [ ! -e "$path" ] || fail "$path left after dpkg -r"; done
[ -f "$DEFAULTS" ] || fail "dpkg -r removed the conffile $DEFAULTS"
note "dpkg -r: binary and unit gone, $DEFAULTS kept"
dpkg -P "$PKG"
expect_eq "$(status_of)" "" "status after dpkg -P"
for path in "$DEFAULTS" /etc/systemd/system/$PKG.service "$WANTS"; do
  [[ ! -e $path && ! -L $path ]] || fail "$path left after dpkg -P"
done
# Kept on purge, as Debian packages keep their system users (deploy/debian/postrm).
getent passwd "$PKG" >/dev/null || fail "dpkg -P removed the user $PKG"
note "dpkg -P: $DEFAULTS gone, no unit mask or link left, user $PKG kept"

part ""
finished=1
step "timings"
printf '   %s\n' "${timings[@]}"
printf '   %-50s %7s bytes\n' ".deb size" "$deb_size"
printf '   %-50s %7s s\n' "total" "$(since "$started")"
pass "Debian package: built, installed, served, removed, purged"
