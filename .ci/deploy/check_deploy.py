#!/usr/bin/env python3
"""Checks of deploy/ that the schema validators cannot make.

kubernetes-validate and the compose-spec schema say whether each object is
well formed; this script says whether the objects fit together and fit the
proxy: Service selectors and target ports match the pods, a NetworkPolicy
opens ports the pods have and every port their Services send to, probes reach
the admin listener, the grace period covers the drain, a container the proxy
reaches over loopback outlives its drain, a TLS key is readable by the proxy
and by nobody else, the Helm overlay's extraContainers string is a list of
containers that collides with nothing in the webservice pod and Workhorse
trusts the proxy's 127.0.0.1, the ServiceMonitor matches the Prometheus
Operator's schema, every GITLAB_OIDC_PROXY_* name is one the binary knows, and
the binary starts with every set of values the manifests give it.

Each subcommand prints what it checked and exits 1 on the first file with a
problem (after listing all of that file's problems); `kubernetes` lists the
problems of every object first, as its objects refer to each other.
"""

import argparse
import ipaddress
import os
import re
import signal
import subprocess
import sys
import tempfile
from urllib.parse import urlsplit

import jsonschema
import yaml

PROXY_IMAGE = re.compile(r"(^|/)gitlab-oidc-proxy(:|@|$)")
ENV_NAME = re.compile(r"GITLAB_OIDC_PROXY_[A-Z0-9_]*[A-Z0-9]")
HELP_ENV = re.compile(r"\[env: (GITLAB_OIDC_PROXY_[A-Z0-9_]+)=")
# Kubernetes port names (IANA_SVC_NAME); the OpenAPI schemas do not check them.
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")

# The proxy's own defaults (`gitlab-oidc-proxy serve --help`).
DEFAULTS = {
    "GITLAB_OIDC_PROXY_LISTEN": "0.0.0.0:8080",
    "GITLAB_OIDC_PROXY_ADMIN_LISTEN": "127.0.0.1:9090",
    "GITLAB_OIDC_PROXY_SHUTDOWN_GRACE": "30s",
    "GITLAB_OIDC_PROXY_ADMIN_REFRESH": "loopback",
}

# The GitLab chart's webservice pod (charts/gitlab/charts/webservice/values.yaml
# and templates/deployment.yaml of gitlab-org/charts/gitlab): ports and port
# names its containers already use, its Service selector, and the top-level
# keys of the subchart's values (plus the extra* strings its helpers read).
CHART_POD_PORTS = {8080, 8081, 8083, 8181, 8182, 9229, 9293}
CHART_PORT_NAMES = {"http-webservice", "https-ws", "http-metrics-ws", "http-workhorse", "http-metrics-wh"}
CHART_SELECTOR = {"app": "webservice", "release": "gitlab", "gitlab.com/webservice-name": "default"}
CHART_WEBSERVICE_KEYS = set(
    """image init tolerations dnsConfig monitoring shutdown extraEnv extraEnvFrom annotations
    podLabels common serviceLabels sshHostKeys metrics networkpolicy http tls service enabled nats
    gatewayRoute clientTrafficPolicy backendTrafficPolicy backendTLSPolicy ingress extraIngress
    workerProcesses puma hpa keda deployment workhorse psql global redis gitaly extra rack_attack
    trusted_proxies resources maxUnavailable minReplicas maxReplicas helmTests webServer
    sharedTmpDir sharedUploadDir securityContext containerSecurityContext serviceAccount
    priorityClassName deployments antiAffinity affinity topologySpreadConstraints
    extraContainers extraInitContainers extraVolumes extraVolumeMounts""".split()
)
CHART_BLACKOUT_SECONDS = 10  # webservice shutdown.blackoutSeconds: Workhorse's preStop sleep


class Problems:
    failed = False  # a deferred report had problems

    def __init__(self, where, defer=False):
        self.where = where
        self.defer = defer
        self.items = []

    def __call__(self, msg):
        self.items.append(msg)

    def done(self, what):
        if self.items:
            for item in self.items:
                print(f"FAIL {self.where}: {item}")
            if not self.defer:
                sys.exit(1)
            Problems.failed = True
            return
        print(f"ok   {self.where}: {what}")


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def seconds(value):
    """A duration as the proxy reads it: plain seconds or ms/s/m/h."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return float(m.group(1)) * {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def split_addr(addr):
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env") or [] if "value" in e}


def setting(env, name):
    return env.get(name, DEFAULTS.get(name))


def port_number(container, ref):
    """The number a probe or a targetPort names (a number or a port name)."""
    if isinstance(ref, int):
        return ref
    for p in container.get("ports") or []:
        if p.get("name") == ref:
            return p["containerPort"]
    return None


def check_proxy_container(c, pod, p, service_links=True):
    """A gitlab-oidc-proxy container and the pod it runs in."""
    name = c.get("name")
    env = env_of(c)
    for var in ("GITLAB_OIDC_PROXY_UPSTREAM", "GITLAB_OIDC_PROXY_EXTERNAL_URL"):
        if not env.get(var):
            p(f"{name}: {var} is not set")
    ports = c.get("ports") or []
    numbers = {x["containerPort"] for x in ports}
    for x in ports:
        if "name" in x and not PORT_NAME.match(x["name"]):
            p(f"{name}: port name {x['name']!r} is not a valid port name (1-15 of a-z, 0-9, -)")
    for var in ("GITLAB_OIDC_PROXY_LISTEN", "GITLAB_OIDC_PROXY_TLS_LISTEN", "GITLAB_OIDC_PROXY_ADMIN_LISTEN"):
        addr = setting(env, var)
        if addr and split_addr(addr)[1] not in numbers:
            p(f"{name}: {var}={addr} is not among the container's ports {sorted(numbers)}")

    admin_host, admin_port = split_addr(setting(env, "GITLAB_OIDC_PROXY_ADMIN_LISTEN"))
    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for kind, path in probes.items():
        probe = c.get(kind)
        if not probe or "httpGet" not in probe:
            p(f"{name}: no {kind} (httpGet {path})")
            continue
        get = probe["httpGet"]
        if get.get("path") != path:
            p(f"{name}: {kind} asks {get.get('path')}, not {path}")
        if port_number(c, get.get("port")) != admin_port:
            p(f"{name}: {kind} port {get.get('port')} is not the admin listener's {admin_port}")
    if any(k in c for k in probes) and ipaddress.ip_address(admin_host).is_loopback:
        p(f"{name}: the kubelet probes the pod address, but the admin listener is on {admin_host}")
    if setting(env, "GITLAB_OIDC_PROXY_ADMIN_REFRESH") != "loopback":
        p(f"{name}: POST /refresh must stay loopback-only (GITLAB_OIDC_PROXY_ADMIN_REFRESH=loopback)")

    pod_sc = pod.get("securityContext") or {}
    sc = {**{k: pod_sc[k] for k in ("runAsNonRoot", "runAsUser", "seccompProfile") if k in pod_sc},
          **(c.get("securityContext") or {})}
    wanted = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    for key, value in wanted.items():
        if sc.get(key) != value:
            p(f"{name}: securityContext.{key} is {sc.get(key)!r}, not {value!r}")
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        p(f"{name}: securityContext.capabilities.drop lacks ALL")
    if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p(f"{name}: seccompProfile is not RuntimeDefault")
    res = c.get("resources") or {}
    for part in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(res.get(part) or {}):
            p(f"{name}: resources.{part} needs cpu and memory")

    try:
        grace = seconds(setting(env, "GITLAB_OIDC_PROXY_SHUTDOWN_GRACE"))
    except ValueError as e:
        p(f"{name}: GITLAB_OIDC_PROXY_SHUTDOWN_GRACE: {e}")
        return
    sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    budget = pod.get("terminationGracePeriodSeconds", 30)
    if budget <= sleep + grace:
        p(f"{name}: terminationGracePeriodSeconds {budget} is not above preStop {sleep} s + shutdown grace {grace:g} s")
    if service_links and pod.get("enableServiceLinks", True):
        p(f"{name}: set enableServiceLinks: false (a Service named gitlab-oidc-proxy adds GITLAB_OIDC_PROXY_* variables)")


def same_pod_upstream(env):
    """The proxy's upstream is another container of its own pod (loopback)."""
    host = urlsplit(env.get("GITLAB_OIDC_PROXY_UPSTREAM") or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prestop_sleep(c):
    return (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)


def check_shutdown_order(pod, p):
    """A container the proxy reaches over loopback (Workhorse beside it) must
    stay up until the proxy has drained: its preStop sleep lasts at least the
    proxy's preStop + shutdown grace, and the pod's budget is above that sleep."""
    containers = pod.get("containers") or []
    budget = pod.get("terminationGracePeriodSeconds", 30)
    for c in containers:
        if not PROXY_IMAGE.search(c.get("image", "")):
            continue
        env = env_of(c)
        if not same_pod_upstream(env):
            continue
        try:
            drain = prestop_sleep(c) + seconds(setting(env, "GITLAB_OIDC_PROXY_SHUTDOWN_GRACE"))
        except ValueError:
            continue  # reported by check_proxy_container
        for other in containers:
            if other is c or PROXY_IMAGE.search(other.get("image", "")):
                continue
            sleep = prestop_sleep(other)
            if sleep < drain:
                p(f"{other['name']}: gets SIGTERM after a preStop sleep of {sleep} s, before {c['name']} "
                  f"(its upstream over loopback) has drained ({drain:g} s)")
            elif budget <= sleep:
                p(f"{other['name']}: terminationGracePeriodSeconds {budget} leaves no time after its preStop sleep {sleep} s")


def check_secret_modes(pod, p):
    """A Secret volume a proxy container mounts (a TLS key): not readable by
    others, and readable by the proxy's groups. kubelet writes the files as
    root, with the pod's fsGroup as their group if it has one, else root's."""
    sc = pod.get("securityContext") or {}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for c in pod.get("containers") or []:
        if not PROXY_IMAGE.search(c.get("image", "")):
            continue
        csc = c.get("securityContext") or {}
        uid = csc.get("runAsUser", sc.get("runAsUser"))
        groups = {csc.get("runAsGroup", sc.get("runAsGroup"))} | set(sc.get("supplementalGroups") or [])
        if "fsGroup" in sc:
            groups.add(sc["fsGroup"])
        file_gid = sc.get("fsGroup", 0)
        for m in c.get("volumeMounts") or []:
            secret = (volumes.get(m["name"]) or {}).get("secret")
            if secret is None:
                continue
            modes = [secret.get("defaultMode", 0o644)] + [i["mode"] for i in secret.get("items") or [] if "mode" in i]
            for mode in modes:
                if mode & 0o007:
                    p(f"{c['name']}: Secret volume {m['name']} mode {mode:04o} is readable by others")
                if uid != 0 and not (mode & 0o040 and file_gid in groups):
                    p(f"{c['name']}: Secret volume {m['name']} (root:{file_gid} {mode:04o}) is not readable by "
                      f"uid {uid} with groups {sorted(g for g in groups if g is not None)}")


def check_network_policy(doc, deployments, services, p):
    """Its pods exist, each port it opens is one of theirs, and every port their
    Services send to is open to someone."""
    spec = doc["spec"]
    if "Ingress" not in (spec.get("policyTypes") or ["Ingress"]):
        p("policyTypes lacks Ingress")
    selector = (spec.get("podSelector") or {}).get("matchLabels") or {}
    pods = [d["spec"]["template"] for d in deployments if labels_match(selector, d["spec"]["template"]["metadata"]["labels"])]
    if not pods:
        p(f"podSelector {selector} matches no Deployment's pods")
        return
    containers = [c for t in pods for c in t["spec"]["containers"]]

    def pod_port(ref):
        """The container port a name or number stands for in these pods."""
        for c in containers:
            for x in c.get("ports") or []:
                if ref in (x.get("name"), x["containerPort"]):
                    return x["containerPort"]
        return None

    opened = set()
    for i, rule in enumerate(spec.get("ingress") or []):
        if not rule.get("from"):
            p(f"ingress[{i}]: no `from`: open to every peer")
        if not rule.get("ports"):
            p(f"ingress[{i}]: no `ports`: opens every port")
        for port in rule.get("ports") or []:
            ref = port.get("port")
            if port.get("protocol", "TCP") != "TCP":
                p(f"ingress[{i}]: port {ref!r} is not TCP")
            number = pod_port(ref)
            if number is None:
                p(f"ingress[{i}]: port {ref!r} is no container port of the selected pods")
            opened.add(number)
    for svc in services:
        if not labels_match(svc["spec"]["selector"], pods[0]["metadata"]["labels"]):
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if pod_port(target) not in opened:
                p(f"Service {svc['metadata']['name']} port {port['name']} ({target!r}) is open to no one")


def labels_match(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cmd_kubernetes(args):
    """deploy/kubernetes: objects that refer to each other, and the proxy containers."""
    objects = []  # (file, doc)
    kustomization = None
    for fn in sorted(os.listdir(args.dir)):
        if not fn.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(args.dir, fn)
        for doc in load_docs(path):
            if doc.get("kind") == "Kustomization":
                kustomization = (path, doc)
            else:
                objects.append((fn, doc))

    def find(kind, name=None):
        return [d for _, d in objects if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]

    deployments = find("Deployment")
    for fn, doc in objects:
        p = Problems(f"{args.dir}/{fn} {doc['kind']}/{doc['metadata']['name']}", defer=True)
        kind = doc["kind"]
        if "app.kubernetes.io/name" not in (doc["metadata"].get("labels") or {}):
            p("no app.kubernetes.io/name label")
        if kind == "Deployment":
            tmpl = doc["spec"]["template"]
            if not labels_match(doc["spec"]["selector"]["matchLabels"], tmpl["metadata"]["labels"]):
                p("selector does not match the pod template's labels")
            proxies = [c for c in tmpl["spec"]["containers"] if PROXY_IMAGE.search(c["image"])]
            for c in proxies:
                check_proxy_container(c, tmpl["spec"], p)
            if not proxies:
                p("no gitlab-oidc-proxy container")
            check_shutdown_order(tmpl["spec"], p)
            check_secret_modes(tmpl["spec"], p)
        elif kind == "Service":
            pods = [d["spec"]["template"] for d in deployments
                    if labels_match(doc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
            if not pods:
                p(f"selector {doc['spec']['selector']} matches no Deployment's pods")
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                if pods and not any(port_number(c, target) for t in pods for c in t["spec"]["containers"]):
                    p(f"port {port['name']}: targetPort {target!r} is no container port of the selected pods")
        elif kind in ("PodDisruptionBudget", "ServiceMonitor"):
            selector = doc["spec"]["selector"]["matchLabels"]
            pool = deployments if kind == "PodDisruptionBudget" else find("Service")
            key = (lambda d: d["spec"]["template"]["metadata"]["labels"]) if kind == "PodDisruptionBudget" \
                else (lambda d: d["metadata"].get("labels") or {})
            matched = [d for d in pool if labels_match(selector, key(d))]
            if not matched:
                p(f"selector {selector} matches nothing")
            if kind == "ServiceMonitor":
                names = {x.get("name") for d in matched for x in d["spec"]["ports"]}
                for ep in doc["spec"]["endpoints"]:
                    if ep.get("port") not in names:
                        p(f"endpoint port {ep.get('port')!r} is not a port of the selected Services {sorted(names)}")
        elif kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if not find(ref["kind"], ref["name"]):
                p(f"scaleTargetRef {ref['kind']}/{ref['name']} is not here")
            if doc["spec"].get("minReplicas", 1) < 2:
                p("minReplicas below 2: one node drain takes the proxy away")
            if any("replicas" in d["spec"] for d in find(ref["kind"], ref["name"])):
                p("the target also sets replicas, which every apply resets")
        elif kind == "NetworkPolicy":
            check_network_policy(doc, deployments, find("Service"), p)
        elif kind == "Ingress":
            for rule in doc["spec"]["rules"]:
                for path in rule["http"]["paths"]:
                    svc = path["backend"]["service"]
                    found = find("Service", svc["name"])
                    port = svc["port"]
                    if not found or not any(port.get("name") == x.get("name") or port.get("number") == x["port"]
                                            for x in found[0]["spec"]["ports"]):
                        p(f"backend {svc['name']}:{port} is no Service port here")
        p.done("fits the objects it refers to")

    if kustomization:
        path, doc = kustomization
        p = Problems(path)
        resources = doc.get("resources") or []
        for res in resources:
            if not os.path.isfile(os.path.join(args.dir, res)):
                p(f"resource {res} does not exist")
        for fn in sorted({fn for fn, _ in objects}):
            if fn not in resources and not fn.endswith("-example.yaml"):
                p(f"{fn} is not among the resources (only *-example.yaml files stay out)")
        images = {re.split(r"[:@]", c["image"])[0] for _, d in objects if d.get("kind") == "Deployment"
                  for c in d["spec"]["template"]["spec"]["containers"]}
        for img in doc.get("images") or []:
            if img["name"] not in images:
                p(f"images: {img['name']} is the image of no container")
        p.done("its resources and images exist")
    if Problems.failed:
        sys.exit(1)


def cmd_helm(args):
    """The values overlay for the GitLab chart and the Service/Ingress that go with it."""
    p = Problems(args.values)
    values = load_docs(args.values)[0]
    ws = (values.get("gitlab") or {}).get("webservice")
    if not isinstance(ws, dict):
        p("no gitlab.webservice")
        p.done("")
    for key in ws:
        if key not in CHART_WEBSERVICE_KEYS:
            p(f"gitlab.webservice.{key} is not a key of the chart's webservice values")
    if (ws.get("ingress") or {}).get("enabled") is not False:
        p("gitlab.webservice.ingress.enabled must be false (the proxy's Ingress replaces it)")
    trusted = (ws.get("workhorse") or {}).get("trustedCIDRsForXForwardedFor")
    try:
        nets = [ipaddress.ip_network(str(x)) for x in trusted or []]
    except ValueError as e:
        p(f"gitlab.webservice.workhorse.trustedCIDRsForXForwardedFor: {e}")
        nets = []
    if not any(ipaddress.ip_address("127.0.0.1") in n for n in nets):
        p("gitlab.webservice.workhorse.trustedCIDRsForXForwardedFor must hold 127.0.0.1/32: "
          "Workhorse gets the proxy's connections (and X-Forwarded-For) from 127.0.0.1")
    budget = (ws.get("deployment") or {}).get("terminationGracePeriodSeconds")
    if not isinstance(budget, int):
        p("gitlab.webservice.deployment.terminationGracePeriodSeconds must be set (an integer)")
    extra = ws.get("extraContainers")
    if not isinstance(extra, str):
        p("gitlab.webservice.extraContainers must be a string (the chart passes it through tpl)")
        p.done("")
    if "{{" in extra:
        p("extraContainers has template actions: this check renders only plain strings")
        p.done("")
    # tpl of a string without actions is that string: this is the rendering.
    containers = yaml.safe_load(extra)
    if not isinstance(containers, list) or not all(isinstance(c, dict) and c.get("name") for c in containers):
        p("extraContainers does not parse as a YAML list of named containers")
        p.done("")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "webservice-extra-containers"},
           "spec": {"containers": containers}}
    with open(args.pod_out, "w", encoding="utf-8") as f:
        yaml.safe_dump(pod, f, sort_keys=False)
    names = set()
    for c in containers:
        for x in c.get("ports") or []:
            if x["containerPort"] in CHART_POD_PORTS:
                p(f"{c['name']}: port {x['containerPort']} is already used in the webservice pod")
            if x.get("name") in CHART_PORT_NAMES:
                p(f"{c['name']}: port name {x['name']} is already used in the webservice pod")
            names.add(x.get("name"))
    proxies = [c for c in containers if PROXY_IMAGE.search(c.get("image", ""))]
    if not proxies:
        p("no gitlab-oidc-proxy container in extraContainers")
    for c in proxies:
        check_proxy_container(c, {"terminationGracePeriodSeconds": budget or 30}, p, service_links=False)
        sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        if sleep < CHART_BLACKOUT_SECONDS:
            p(f"{c['name']}: preStop sleep {sleep} s ends before Workhorse's ({CHART_BLACKOUT_SECONDS} s)")
        upstream = urlsplit(env_of(c).get("GITLAB_OIDC_PROXY_UPSTREAM", ""))
        if upstream.hostname not in ("127.0.0.1", "localhost") or upstream.port != 8181:
            p(f"{c['name']}: the upstream is not Workhorse in the same pod (http://127.0.0.1:8181)")
    p.done(f"{len(containers)} extra container(s), rendered to {args.pod_out}")

    p = Problems(args.ingress)
    docs = load_docs(args.ingress)
    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        if svc["spec"]["selector"] != CHART_SELECTOR:
            p(f"Service {svc['metadata']['name']}: selector is not the chart's webservice selector {CHART_SELECTOR}")
        for port in svc["spec"]["ports"]:
            if port.get("targetPort") not in names:
                p(f"Service {svc['metadata']['name']}: targetPort {port.get('targetPort')!r} is not one of {sorted(names)}")
    for ing in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                b = path["backend"]["service"]
                svc = [s for s in services if s["metadata"]["name"] == b["name"]]
                if not svc or not any(b["port"].get("name") == x["name"] for x in svc[0]["spec"]["ports"]):
                    p(f"Ingress {ing['metadata']['name']}: backend {b} is no Service port in this file")
    p.done("Service and Ingress reach the proxy's ports in the webservice pods")


def compose_proxy(doc):
    return [(n, s) for n, s in doc["services"].items() if PROXY_IMAGE.search(s.get("image", ""))]


def compose_env(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def cmd_compose(args):
    p = Problems(args.file)
    doc = load_docs(args.file)[0]
    proxies = compose_proxy(doc)
    if len(proxies) != 1:
        p("wants exactly one gitlab-oidc-proxy service")
        p.done("")
    name, svc = proxies[0]
    env = compose_env(svc)
    try:
        grace = seconds(setting(env, "GITLAB_OIDC_PROXY_SHUTDOWN_GRACE"))
        stop = seconds(svc.get("stop_grace_period", "10s"))
    except ValueError as e:
        p(str(e))
        grace, stop = 0, 1
    if stop <= grace:
        p(f"stop_grace_period {svc.get('stop_grace_period', '10s')} is not above the shutdown grace {grace:g} s")
    if svc.get("read_only") is not True:
        p("read_only is not true")
    if "ALL" not in (svc.get("cap_drop") or []):
        p("cap_drop lacks ALL")
    uid = str(svc.get("user", "")).split(":")[0]
    if not uid.isdigit() or int(uid) == 0:
        p(f"user {svc.get('user')!r} is not a numeric non-root uid")
    test = (svc.get("healthcheck") or {}).get("test") or []
    if not (isinstance(test, list) and any("gitlab-oidc-proxy" in t for t in test) and "healthcheck" in test):
        p(f"healthcheck {test} does not run `gitlab-oidc-proxy healthcheck`")
    listen = {split_addr(setting(env, v))[1] for v in ("GITLAB_OIDC_PROXY_LISTEN", "GITLAB_OIDC_PROXY_TLS_LISTEN")
              if setting(env, v)}
    published = {}
    for spec in svc.get("ports") or []:
        host, _, container = str(spec).rpartition(":")
        published[int(host.split(":")[-1])] = int(container.split("/")[0])
    for host_port, want in ((80, split_addr(setting(env, "GITLAB_OIDC_PROXY_LISTEN"))[1]),
                            (443, split_addr(env.get("GITLAB_OIDC_PROXY_TLS_LISTEN", ":0"))[1])):
        if published.get(host_port) != want:
            p(f"port {host_port} is not published to the listener on {want}")
    for host_port, container in published.items():
        if container not in listen:
            p(f"published port {host_port}:{container} reaches no proxy listener")
        if container < 1024:
            p(f"container port {container} is privileged: a non-root proxy cannot bind it")

    upstream = urlsplit(env.get("GITLAB_OIDC_PROXY_UPSTREAM", ""))
    gitlab = doc["services"].get(upstream.hostname)
    if not gitlab:
        p(f"the upstream {upstream.geturl()} is no service of this file")
        p.done("")
    omnibus = compose_env(gitlab).get("GITLAB_OMNIBUS_CONFIG", "")
    rb = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*([a-z_]+\['[a-z_]+'\])\s*=\s*(.+)$", omnibus, re.M)}
    ext = re.search(r"^\s*external_url\s+['\"]([^'\"]+)['\"]", omnibus, re.M)
    if rb.get("nginx['enable']") != "false":
        p("GITLAB_OMNIBUS_CONFIG does not set nginx['enable'] = false")
    if rb.get("gitlab_workhorse['listen_network']", "").strip("'\"") != "tcp":
        p("GITLAB_OMNIBUS_CONFIG does not put Workhorse on tcp")
    addr = rb.get("gitlab_workhorse['listen_addr']", "").strip("'\"")
    if not addr or split_addr(addr)[1] != upstream.port:
        p(f"Workhorse listens on {addr!r}, the proxy's upstream is port {upstream.port}")
    if not ext or ext.group(1) != env.get("GITLAB_OIDC_PROXY_EXTERNAL_URL") or not ext.group(1).startswith("https://"):
        p("external_url is not https or not the proxy's GITLAB_OIDC_PROXY_EXTERNAL_URL")
    nets = svc.get("networks") if isinstance(svc.get("networks"), dict) else {}
    proxy_ip = next((n["ipv4_address"] for n in nets.values() if isinstance(n, dict) and n.get("ipv4_address")), None)
    for key in ("gitlab_rails['trusted_proxies']", "gitlab_workhorse['trusted_cidrs_for_x_forwarded_for']"):
        nets = [ipaddress.ip_network(x) for x in re.findall(r"'([0-9a-f.:/]+)'", rb.get(key, ""))]
        if not proxy_ip or not any(ipaddress.ip_address(proxy_ip) in n for n in nets):
            p(f"{key} does not hold the proxy's address {proxy_ip}")
    p.done(f"service {name} in front of {upstream.hostname}")


def strictify(schema):
    """Unknown fields refused, as kubectl --validate=strict does, except where
    the CRD keeps them (x-kubernetes-preserve-unknown-fields)."""
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for v in schema.values():
            strictify(v)
    elif isinstance(schema, list):
        for v in schema:
            strictify(v)
    return schema


def cmd_servicemonitor(args):
    crd = load_docs(args.crd)[0]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = strictify(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        "additionalProperties": False}
    validator = jsonschema.Draft7Validator(schema)
    group = crd["spec"]["group"]
    seen = 0
    for path in args.files:
        p = Problems(path)
        n = 0
        for doc in load_docs(path):
            if doc.get("kind") != "ServiceMonitor":
                continue
            n += 1
            if doc.get("apiVersion") != f"{group}/v1":
                p(f"apiVersion {doc.get('apiVersion')} is not {group}/v1")
            for err in validator.iter_errors(doc):
                p(f"{'.'.join(map(str, err.absolute_path)) or '(root)'}: {err.message}")
        seen += n
        if n:
            p.done(f"{n} ServiceMonitor(s) valid against the CRD schema ({os.path.basename(args.crd)})")
    if not seen:
        print(f"FAIL no ServiceMonitor in {args.files}")
        sys.exit(1)


def cmd_envnames(args):
    with open(args.help_file, encoding="utf-8") as f:
        known = set(HELP_ENV.findall(f.read()))
    if not known:
        print(f"FAIL {args.help_file}: no [env: GITLAB_OIDC_PROXY_...] in the help text")
        sys.exit(1)
    used = {}
    for root in args.paths:
        walk = [(root, [], [os.path.basename(root)])] if os.path.isfile(root) else os.walk(root)
        for d, _, files in walk:
            for fn in files:
                path = root if os.path.isfile(root) else os.path.join(d, fn)
                try:
                    with open(path, encoding="utf-8") as f:
                        text = f.read()
                except (UnicodeDecodeError, OSError):
                    continue
                for no, line in enumerate(text.splitlines(), 1):
                    for name in ENV_NAME.findall(line):
                        used.setdefault(name, []).append(f"{path}:{no}")
    p = Problems(" ".join(args.paths))
    for name in sorted(set(used) - known):
        p(f"{name} is not an option of `serve` (used at {', '.join(used[name][:3])})")
    p.done(f"{len(used)} GITLAB_OIDC_PROXY_* names used, all among the binary's {len(known)}")


def proxy_env_sets(args):
    """(where, env) for every proxy container the manifests define."""
    sets = []
    for path in args.kubernetes or []:
        for doc in load_docs(path):
            spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
            for c in spec.get("containers") or []:
                if PROXY_IMAGE.search(c.get("image", "")):
                    sets.append((f"{path} {c['name']}", env_of(c)))
    for path in args.helm or []:
        extra = load_docs(path)[0]["gitlab"]["webservice"]["extraContainers"]
        for c in yaml.safe_load(extra):
            if PROXY_IMAGE.search(c.get("image", "")):
                sets.append((f"{path} {c['name']}", env_of(c)))
    for path in args.compose or []:
        for name, svc in compose_proxy(load_docs(path)[0]):
            sets.append((f"{path} {name}", compose_env(svc)))
    return sets


def cmd_envvalues(args):
    """Start the binary with each manifest's values: clap refuses a bad value
    (exit 2) and start-up a bad combination (exit 1) before it serves. The
    listeners move to loopback port 0, the upstream to 127.0.0.1:1 and the TLS
    files to a throwaway self-signed pair for the same host; every other value
    is the manifest's."""
    sets = proxy_env_sets(args)
    if not sets:
        print("FAIL no proxy container found")
        sys.exit(1)
    with tempfile.TemporaryDirectory() as tmp:
        for where, env in sets:
            p = Problems(where)
            run = {k: v for k, v in os.environ.items() if not k.startswith("GITLAB_OIDC_PROXY_")}
            run.update({k: v for k, v in env.items() if v is not None})
            upstream = urlsplit(env.get("GITLAB_OIDC_PROXY_UPSTREAM", ""))
            if upstream.scheme not in ("http", "https") or not upstream.port:
                p(f"upstream {upstream.geturl()!r} is not http(s)://host:port")
            run["GITLAB_OIDC_PROXY_UPSTREAM"] = "http://127.0.0.1:1"
            run["GITLAB_OIDC_PROXY_LISTEN"] = "127.0.0.1:0"
            run["GITLAB_OIDC_PROXY_ADMIN_LISTEN"] = "127.0.0.2:0"
            if "GITLAB_OIDC_PROXY_TLS_LISTEN" in env:
                run["GITLAB_OIDC_PROXY_TLS_LISTEN"] = "127.0.0.3:0"
            if "GITLAB_OIDC_PROXY_TLS_CERT" in env:
                host = urlsplit(env["GITLAB_OIDC_PROXY_EXTERNAL_URL"]).hostname
                cert, key = os.path.join(tmp, f"{host}.crt"), os.path.join(tmp, f"{host}.key")
                if not os.path.exists(cert):
                    subprocess.run(
                        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                         "-nodes", "-days", "2", "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}",
                         "-keyout", key, "-out", cert], check=True, capture_output=True)
                run["GITLAB_OIDC_PROXY_TLS_CERT"], run["GITLAB_OIDC_PROXY_TLS_KEY"] = cert, key
            proc = subprocess.Popen([args.bin, "serve"], env=run, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                code = proc.wait(timeout=args.seconds)
            except subprocess.TimeoutExpired:
                code = None
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            err = proc.stderr.read()
            if code is not None:
                lines = [l for l in err.splitlines() if l.strip()]
                p(f"the binary exited {code} at start: {' | '.join(lines[-3:])}")
            p.done(f"the binary starts with these {len(env)} values")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("kubernetes")
    s.add_argument("dir")
    s = sub.add_parser("helm")
    s.add_argument("values")
    s.add_argument("ingress")
    s.add_argument("--pod-out", required=True)
    s = sub.add_parser("compose")
    s.add_argument("file")
    s = sub.add_parser("servicemonitor")
    s.add_argument("--crd", required=True)
    s.add_argument("files", nargs="+")
    s = sub.add_parser("envnames")
    s.add_argument("--help-file", required=True)
    s.add_argument("paths", nargs="+")
    s = sub.add_parser("envvalues")
    s.add_argument("--bin", required=True)
    s.add_argument("--seconds", type=float, default=1.5)
    s.add_argument("--kubernetes", nargs="*")
    s.add_argument("--helm", nargs="*")
    s.add_argument("--compose", nargs="*")
    args = ap.parse_args()
    {"kubernetes": cmd_kubernetes, "helm": cmd_helm, "compose": cmd_compose, "servicemonitor": cmd_servicemonitor,
     "envnames": cmd_envnames, "envvalues": cmd_envvalues}[args.cmd](args)


if __name__ == "__main__":
    main()
