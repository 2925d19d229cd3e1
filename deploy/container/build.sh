#!/usr/bin/env bash
# Builds the images gitlab-oidc-proxy:<version> and gitlab-oidc-proxy:latest
# from the binary `cargo build --release` made, with podman (preferred) or
# docker, whichever has a working engine. Pulls nothing: the runtime stage of
# the Containerfile is `FROM scratch`.
#   deploy/container/build.sh            # BIN=path/to/binary ENGINE=docker to choose
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${BIN:-$repo/target/release/gitlab-oidc-proxy}

engine=${ENGINE:-}
if [ -z "$engine" ]; then
  # `docker` may be installed without a daemon: ask each for its engine.
  for candidate in podman docker; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" info >/dev/null 2>&1; then
      engine=$candidate
      break
    fi
  done
fi
[ -n "$engine" ] || { echo "build.sh: neither podman nor docker has a working engine" >&2; exit 1; }
[ -x "$bin" ] || { echo "build.sh: no $bin: run cargo build --release --locked first" >&2; exit 1; }

version=$("$bin" --version | awk '{print $2}')
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
sh "$here/rootfs.sh" "$bin" "$ctx/rootfs"
# The Containerfile's runtime stage, copying the rootfs made here.
sed -n '/^FROM scratch AS runtime/,$p' "$here/Containerfile" \
  | sed 's|^COPY --from=build /rootfs/ /$|COPY rootfs/ /|' >"$ctx/Containerfile"
grep -q '^COPY rootfs/ /$' "$ctx/Containerfile" \
  || { echo "build.sh: the Containerfile's runtime stage no longer copies /rootfs/" >&2; exit 1; }

format=()
# OCI images have no HEALTHCHECK; podman keeps it in the docker format.
[ "$engine" = podman ] && format=(--format docker)
"$engine" build "${format[@]}" --quiet \
  --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg CREATED="$created" \
  -t "gitlab-oidc-proxy:$version" -t gitlab-oidc-proxy:latest \
  -f "$ctx/Containerfile" "$ctx" >/dev/null
size=$("$engine" image inspect --format '{{.Size}}' gitlab-oidc-proxy:latest)
echo "built gitlab-oidc-proxy:$version and :latest with $engine ($((size / 1024)) KiB)"
