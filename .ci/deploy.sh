#!/usr/bin/env bash
# The deployment checks (README, Install): the container image, the pod, the
# Kubernetes/Helm/compose files, the Debian package and the Prometheus rules
# and Grafana dashboard, each with the real tool. Called by .ci/run after the
# tests; installs what it needs on a clean Debian 12 machine (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# podman's recommends, named: the pause image of a pod is built from catatonit;
# netavark and aardvark-dns are the network stack the containers reference measured.
command -v podman >/dev/null 2>&1 || need+=(podman catatonit netavark aardvark-dns)
# netavark sets up bridge networks with iptables, only a recommendation of the
# podman packages (not installed with --no-install-recommends).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Two podman settings this kind of VM needs (../shared/reference/containers-offline.md):
# root lacks CAP_SYS_RESOURCE, so keep the hard nofile limit; crun refuses hybrid cgroups.
conf=$(mktemp)
trap 'rm -f "$conf"' EXIT
cat >"$conf" <<CONF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF=$conf

cargo build --release --locked
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export BIN=$target/release/gitlab-oidc-proxy

timings=()
# manifests.sh makes the Python venv (PyYAML) that pod.sh uses too.
for part in container manifests pod observability package; do
  started=$(date +%s)
  bash ".ci/deploy/$part.sh"
  timings+=("$part $(($(date +%s) - started)) s")
done
printf '\ndeployment checks passed: %s\n' "$(IFS=,; echo "${timings[*]}")"
