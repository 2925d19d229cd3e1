#!/usr/bin/env bash
# Checks everything under deploy/ that is a Kubernetes object, a Helm values
# overlay or a Compose file, with real validators:
#   - kubernetes-validate --strict against the Kubernetes OpenAPI schemas of
#     several versions (built-in kinds; unknown fields refused);
#   - the ServiceMonitor against the Prometheus Operator CRD's openAPIV3Schema
#     (vendored in .ci/deploy/schemas/, source noted there);
#   - `kubectl kustomize deploy/kubernetes`, when kubectl is installed (else
#     reported as skipped), and its output validated again;
#   - the Helm overlay: its extraContainers string rendered (it has no template
#     actions, so the chart's `tpl` returns it as is), wrapped in a Pod and
#     validated, plus the chart-specific rules in check_deploy.py;
#   - compose.yaml against the compose-spec JSON schema shipped by the PyPI
#     package check-jsonschema (vendor.compose-spec);
#   - check_deploy.py: how the objects fit together and fit the proxy;
#   - every GITLAB_OIDC_PROXY_* name under deploy/ is in `$BIN serve --help`,
#     and $BIN starts with every set of values the manifests give it.
# Then self-tests: a broken copy of each kind of input must be rejected.
# The last line counts the checks that passed and those skipped; the first
# failure stops the run, and the line then names the step it stopped in.
#
# Run from the repository root. VENV (default /tmp/gop-venv) is created or
# reused; BIN (default target/release/gitlab-oidc-proxy) is the binary to ask.
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${VENV:-/tmp/gop-venv}
BIN=${BIN:-target/release/gitlab-oidc-proxy}
# The oldest version the manifests need (preStop sleep action: 1.30), a
# middle one, and the newest the pinned kubernetes-validate knows.
K8S_VERSIONS=${K8S_VERSIONS:-1.30.0 1.32.0 1.37.0}
REQUIREMENTS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 jsonschema==4.26.0 PyYAML==6.0.4)
CRD=.ci/deploy/schemas/monitoring.coreos.com_servicemonitors.yaml

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null || { rm -rf "$VENV"; apt_install python3-venv; python3 -m venv "$VENV"; }
fi
stamp="$VENV/.gitlab-oidc-proxy-requirements"
if [ "$(cat "$stamp" 2>/dev/null)" != "${REQUIREMENTS[*]}" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}"
  echo "${REQUIREMENTS[*]}" >"$stamp"
fi
command -v openssl >/dev/null 2>&1 || apt_install openssl
if [ ! -x "$BIN" ]; then
  echo "no binary at $BIN: build it (cargo build --release) or set BIN" >&2
  exit 1
fi

PY="$VENV/bin/python"
export PYTHONDONTWRITEBYTECODE=1
CHECK=("$PY" .ci/deploy/check_deploy.py)
KV="$VENV/bin/kubernetes-validate"
tmp=$(mktemp -d)
passed=0
skipped=0
step=""
ok() { passed=$((passed + 1)); }
skip() { # REASON: a check that could not run here; counted apart from the passed ones
  echo "skip $*"
  skipped=$((skipped + 1))
}
section() { step=$1; echo "== $1"; }
finish() {
  local rc=$?
  rm -rf "$tmp"
  if [ "$rc" -ne 0 ]; then
    echo "deploy manifests: FAILED in \"$step\" (exit $rc) after $passed passed, $skipped skipped" >&2
  fi
}
trap finish EXIT

k8s_validate() { # FILE...: strict, every version
  local v
  for v in $K8S_VERSIONS; do
    "$KV" --strict --quiet -k "$v" "$@"
  done
}

section "Kubernetes objects (kubernetes-validate --strict, Kubernetes $K8S_VERSIONS)"
builtin=()
for f in deploy/kubernetes/*.yaml deploy/helm/*.yaml; do
  case "$f" in
  */kustomization.yaml | */servicemonitor.yaml | */values-*.yaml) ;; # not built-in kinds; checked below
  *) builtin+=("$f") ;;
  esac
done
"${CHECK[@]}" helm deploy/helm/values-gitlab-oidc-proxy.yaml deploy/helm/gitlab-oidc-proxy-ingress.yaml \
  --pod-out "$tmp/webservice-extra-containers.yaml"
k8s_validate "${builtin[@]}" "$tmp/webservice-extra-containers.yaml"
echo "ok   ${builtin[*]} and the overlay's extraContainers (as a Pod)"
ok

section "ServiceMonitor (Prometheus Operator CRD schema)"
"${CHECK[@]}" servicemonitor --crd "$CRD" deploy/kubernetes/servicemonitor.yaml
ok

section "kustomization"
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes >"$tmp/kustomized.yaml"
  # --no-warn: the one kind without a built-in schema, the ServiceMonitor, is checked next.
  for v in $K8S_VERSIONS; do "$KV" --strict --quiet --no-warn -k "$v" "$tmp/kustomized.yaml"; done
  "${CHECK[@]}" servicemonitor --crd "$CRD" "$tmp/kustomized.yaml"
  echo "ok   kubectl kustomize deploy/kubernetes: $(grep -c '^kind:' "$tmp/kustomized.yaml") objects, valid"
  ok
else
  skip "kubectl kustomize: kubectl is not installed (Debian has none current); the resources and images are checked below"
fi

section "How the objects fit together and fit the proxy"
"${CHECK[@]}" kubernetes deploy/kubernetes
ok

section "Compose (compose-spec schema from check-jsonschema, then the proxy's rules)"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose/compose.yaml
"${CHECK[@]}" compose deploy/compose/compose.yaml
ok

section "GITLAB_OIDC_PROXY_* names and values against $BIN"
"$BIN" serve --help >"$tmp/serve-help.txt"
"${CHECK[@]}" envnames --help-file "$tmp/serve-help.txt" deploy
"${CHECK[@]}" envvalues --bin "$BIN" --kubernetes deploy/kubernetes/*.yaml \
  --helm deploy/helm/values-gitlab-oidc-proxy.yaml --compose deploy/compose/compose.yaml
ok

section "Self-tests: each check rejects a broken copy"
mutate() { # SRC DST SED-EXPRESSION: DST is SRC changed, and must differ
  sed -e "$3" "$1" >"$2"
  if cmp -s "$1" "$2"; then
    echo "FAIL self-test setup: '$3' changes nothing in $1" >&2
    exit 1
  fi
}
rejects_for() { # WHAT PATTERN COMMAND...: the command must fail, saying PATTERN (a fixed string; any error if empty)
  local what=$1 pattern=$2 why
  shift 2
  if "$@" >"$tmp/selftest.log" 2>&1; then
    echo "FAIL self-test: $what was accepted" >&2
    cat "$tmp/selftest.log" >&2
    exit 1
  fi
  if [ -n "$pattern" ]; then
    why=$(grep -m1 -F -- "$pattern" "$tmp/selftest.log") || {
      echo "FAIL self-test: $what was rejected, but not for '$pattern':" >&2
      cat "$tmp/selftest.log" >&2
      exit 1
    }
  else
    why=$(grep -m1 -E 'FAIL|ERROR|Error|error' "$tmp/selftest.log" || true)
  fi
  echo "ok   rejected: $what ($(cut -c1-150 <<<"$why"))"
  ok
}
rejects() { # WHAT COMMAND...: the command must fail
  local what=$1
  shift
  rejects_for "$what" "" "$@"
}
mkdir -p "$tmp/k8s"
cp deploy/kubernetes/*.yaml "$tmp/k8s/"

mutate deploy/kubernetes/deployment.yaml "$tmp/typo.yaml" 's/imagePullPolicy:/imagePullPolicyy:/'
rejects "a Deployment with an unknown field" k8s_validate "$tmp/typo.yaml"

mutate deploy/kubernetes/servicemonitor.yaml "$tmp/sm.yaml" 's/interval:/intervall:/'
rejects "a ServiceMonitor with an unknown field" "${CHECK[@]}" servicemonitor --crd "$CRD" "$tmp/sm.yaml"
mutate deploy/kubernetes/servicemonitor.yaml "$tmp/sm2.yaml" 's/interval: 30s/interval: thirty/'
rejects "a ServiceMonitor with a bad interval" "${CHECK[@]}" servicemonitor --crd "$CRD" "$tmp/sm2.yaml"

k8s_rejects() { # FILE SED-EXPRESSION WHAT PATTERN: deploy/kubernetes with FILE so changed is rejected for PATTERN
  mutate "deploy/kubernetes/$1" "$tmp/k8s/$1" "$2"
  rejects_for "$3" "$4" "${CHECK[@]}" kubernetes "$tmp/k8s"
  cp "deploy/kubernetes/$1" "$tmp/k8s/"
}
k8s_rejects deployment.yaml 's/value: 0.0.0.0:9090/value: 127.0.0.1:9090/' \
  "probes aimed at an admin listener on loopback" "the kubelet probes the pod address"
k8s_rejects deployment.yaml 's/terminationGracePeriodSeconds: 45/terminationGracePeriodSeconds: 30/' \
  "a grace period shorter than preStop + drain" "terminationGracePeriodSeconds 30 is not above"
k8s_rejects service.yaml 's/targetPort: admin/targetPort: metrics/' \
  "a Service aimed at a port the pods lack" "targetPort 'metrics' is no container port"
k8s_rejects networkpolicy.yaml 's/port: admin/port: metrics/' \
  "a NetworkPolicy opening a port the pods lack" "port 'metrics' is no container port"
k8s_rejects networkpolicy.yaml 's/port: http$/port: admin/' \
  "a NetworkPolicy that shuts the Service's public port" "port http ('http') is open to no one"
k8s_rejects kustomization.yaml '/- networkpolicy.yaml/d' \
  "a manifest left out of the kustomization" "networkpolicy.yaml is not among the resources"
k8s_rejects sidecar-example.yaml 's/seconds: 40$/seconds: 20/' \
  "a sidecar's GitLab stopping before the proxy has drained" "before gitlab-oidc-proxy (its upstream over loopback) has drained"
k8s_rejects sidecar-example.yaml 's/terminationGracePeriodSeconds: 120/terminationGracePeriodSeconds: 40/' \
  "a grace period used up by GitLab's preStop" "leaves no time after its preStop sleep"
k8s_rejects sidecar-example.yaml 's/defaultMode: 0440/defaultMode: 0444/' \
  "a TLS key readable by others" "mode 0444 is readable by others"
k8s_rejects sidecar-example.yaml 's/supplementalGroups: \[0\]/supplementalGroups: [65532]/' \
  "a TLS key the proxy cannot read" "is not readable by uid 65532"

mutate deploy/helm/values-gitlab-oidc-proxy.yaml "$tmp/values.yaml" 's/containerPort: 8090/containerPort: 8080/'
rejects "an extra container on Puma's port" \
  "${CHECK[@]}" helm "$tmp/values.yaml" deploy/helm/gitlab-oidc-proxy-ingress.yaml --pod-out "$tmp/pod.yaml"
mutate deploy/helm/values-gitlab-oidc-proxy.yaml "$tmp/values.yaml" 's|        - 127.0.0.1/32|        - 10.0.0.0/8|'
rejects_for "a Workhorse that does not trust the proxy beside it" "must hold 127.0.0.1/32" \
  "${CHECK[@]}" helm "$tmp/values.yaml" deploy/helm/gitlab-oidc-proxy-ingress.yaml --pod-out "$tmp/pod.yaml"
mutate deploy/helm/values-gitlab-oidc-proxy.yaml "$tmp/values.yaml" 's/        imagePullPolicy:/        imagePullPolicyy:/'
"${CHECK[@]}" helm "$tmp/values.yaml" deploy/helm/gitlab-oidc-proxy-ingress.yaml --pod-out "$tmp/pod.yaml" >/dev/null
rejects "an extra container with an unknown field" k8s_validate "$tmp/pod.yaml"

mutate deploy/compose/compose.yaml "$tmp/compose.yaml" 's/stop_grace_period:/stop_grace_periodd:/'
rejects "a Compose service with an unknown key" \
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$tmp/compose.yaml"
mutate deploy/compose/compose.yaml "$tmp/compose.yaml" 's/stop_grace_period: 45s/stop_grace_period: 20s/'
rejects "a stop_grace_period shorter than the drain" "${CHECK[@]}" compose "$tmp/compose.yaml"

mkdir -p "$tmp/names"
mutate deploy/compose/compose.yaml "$tmp/names/compose.yaml" 's/GITLAB_OIDC_PROXY_LOG_FORMAT:/GITLAB_OIDC_PROXY_LOG_FORMATS:/'
rejects "a variable the binary does not know" "${CHECK[@]}" envnames --help-file "$tmp/serve-help.txt" "$tmp/names"
mutate deploy/compose/compose.yaml "$tmp/names/compose.yaml" 's/GITLAB_OIDC_PROXY_SHUTDOWN_GRACE: 30s/GITLAB_OIDC_PROXY_SHUTDOWN_GRACE: soon/'
rejects "a value the binary refuses" "${CHECK[@]}" envvalues --bin "$BIN" --compose "$tmp/names/compose.yaml"

echo "deploy manifests: $passed passed, $skipped skipped"
