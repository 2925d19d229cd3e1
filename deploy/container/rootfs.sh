#!/bin/sh
# Assembles the runtime root file system of the container image: the binary
# (stripped), the shared libraries ldd names at the same paths, the CA bundle
# (for an https --upstream), and passwd/group entries for the non-root user.
# Used by the Containerfile's build stage and by build.sh, so both images are
# made the same way.
#   usage: rootfs.sh BINARY DEST
set -eu
bin=$1
dest=$2
ca=/etc/ssl/certs/ca-certificates.crt

[ -x "$bin" ] || { echo "rootfs.sh: $bin is not an executable (cargo build --release first)" >&2; exit 1; }
[ -f "$ca" ] || { echo "rootfs.sh: no $ca (install the ca-certificates package)" >&2; exit 1; }
if ldd "$bin" | grep -q 'not found'; then
  echo "rootfs.sh: $bin needs libraries this system lacks:" >&2
  ldd "$bin" | grep 'not found' >&2
  exit 1
fi

rm -rf "$dest"
mkdir -p "$dest/usr/bin" "$dest/etc/ssl/certs"
if command -v strip >/dev/null 2>&1; then
  strip -o "$dest/usr/bin/gitlab-oidc-proxy" "$bin"
else
  cp "$bin" "$dest/usr/bin/gitlab-oidc-proxy"
fi
# Every absolute path ldd prints (libraries and the loader), symlinks resolved.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$dest$(dirname "$lib")"
  cp -L "$lib" "$dest$lib"
done
cp "$ca" "$dest$ca"
# glibc reads these to resolve an upstream by name (libnss_files/dns are in libc).
printf 'hosts: files dns\n' >"$dest/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:gitlab-oidc-proxy:/nonexistent:/sbin/nologin\n' >"$dest/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$dest/etc/group"
