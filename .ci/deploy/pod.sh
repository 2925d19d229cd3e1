#!/usr/bin/env bash
# deploy/kubernetes/sidecar-example.yaml's pod under `podman kube play`: the
# proxy container exactly as shipped (env, probes, securityContext), with the
# image built here, beside the simulated GitLab in place of the omnibus
# container (Workhorse's 127.0.0.1:8181), and its port 8080 on a host port.
# Discovery must come back cacheable through the pod. Needs the image
# (container.sh builds it), podman + runc, CONTAINERS_CONF, python3-yaml.
set -euo pipefail
cd "$(dirname "$0")/../.."
. .ci/deploy/lib.sh

IMAGE=localhost/gitlab-oidc-proxy:latest
POD_YAML=$WORK/pod.yaml
cleanup() { [ ! -f "$POD_YAML" ] || podman kube down "$POD_YAML" >/dev/null 2>&1 || true; }
podman image exists "$IMAGE" || fail "no $IMAGE: run .ci/deploy/container.sh first"

step "the sidecar example, with the simulated GitLab in place of omnibus"
port=$(free_port)
# PyYAML: manifests.sh's venv has it pinned; else the system's.
py=python3
[ ! -x "${VENV:-/tmp/gop-venv}/bin/python" ] || py=${VENV:-/tmp/gop-venv}/bin/python
"$py" - deploy/kubernetes/sidecar-example.yaml "$IMAGE" "$port" >"$POD_YAML" <<'PY'
import sys, yaml
path, image, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
docs = [d for d in yaml.safe_load_all(open(path)) if d]
[deployment] = [d for d in docs if d["kind"] == "Deployment"]
spec = deployment["spec"]["template"]["spec"]
containers = {c["name"]: c for c in spec["containers"]}
proxy = containers.pop("gitlab-oidc-proxy")
assert list(containers) == ["gitlab"], f"unexpected containers {list(containers)}"
upstream = {e["name"]: e.get("value") for e in proxy["env"]}["GITLAB_OIDC_PROXY_UPSTREAM"]
assert upstream == "http://127.0.0.1:8181", upstream
issuer = f"http://127.0.0.1:{port}"
gitlab = {
    "name": "gitlab",
    "image": image,
    "imagePullPolicy": "Never",
    "args": ["demo", "--gitlab-only", "--gitlab-listen", "127.0.0.1:8181", "--external-url", issuer],
}
# The proxy as shipped, minus what needs a cluster: the TLS Secret and its
# settings; the public URL is the host port's.
tls = {"GITLAB_OIDC_PROXY_TLS_LISTEN", "GITLAB_OIDC_PROXY_TLS_CERT", "GITLAB_OIDC_PROXY_TLS_KEY",
       "GITLAB_OIDC_PROXY_REDIRECT_HTTP"}
proxy["env"] = [e for e in proxy["env"] if e["name"] not in tls]
for e in proxy["env"]:
    if e["name"] == "GITLAB_OIDC_PROXY_EXTERNAL_URL":
        e["value"] = issuer
proxy["image"], proxy["imagePullPolicy"] = image, "Never"
proxy.pop("volumeMounts", None)
proxy.get("lifecycle", {}).pop("preStop", None)
proxy["ports"] = [p for p in proxy["ports"] if p["name"] != "https"]
for p in proxy["ports"]:
    if p["name"] == "http":
        p["hostPort"], p["hostIP"] = port, "127.0.0.1"
spec["containers"] = [gitlab, proxy]
spec["volumes"] = []
deployment["metadata"]["name"] = "gop-ci-sidecar"
print(yaml.safe_dump(deployment, sort_keys=False))
PY
note "pod spec: $POD_YAML (port $port)"
podman kube play --replace "$POD_YAML" >/dev/null 2>"$WORK/play.err" || fail "kube play: $(cat "$WORK/play.err")"
wait_http "http://127.0.0.1:$port/-/health"
ready=""
for _ in $(seq 200); do
  if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$port/.well-known/openid-configuration" 2>/dev/null; then ready=1; break; fi
  sleep 0.05
done
[ -n "$ready" ] || fail "no discovery through the pod within 10 s"
headers=$(curl -sS --max-time 5 -D - -o "$WORK/discovery.json" "http://127.0.0.1:$port/.well-known/openid-configuration")
expect_contains "$headers" "HTTP/1.1 200" "discovery through the pod"
expect_contains "$headers" "cache-control: public, max-age=3600" "Cache-Control through the pod"
expect_eq "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["jwks_uri"])' "$WORK/discovery.json")" \
  "http://127.0.0.1:$port/-/jwks" "jwks_uri through the pod"
containers=$(podman ps --filter "label=app.kubernetes.io/name=gitlab" --format '{{.Names}} {{.Status}}')
note "containers: $(echo "$containers" | tr '\n' ';')"
proxy=$(podman ps --format '{{.Names}}' | grep -- '-gitlab-oidc-proxy$' | head -1 || true)
[ -n "$proxy" ] || fail "no proxy container in the pod"
expect_eq "$(podman inspect --format '{{.Config.User}}' "$proxy")" 65532:65532 "proxy container's user"
expect_eq "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$proxy")" true "read-only root"
podman exec "$proxy" /usr/bin/gitlab-oidc-proxy healthcheck >/dev/null || fail "healthcheck inside the pod"
pass "kube play of the sidecar example"
