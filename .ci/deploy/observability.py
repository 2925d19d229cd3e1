#!/usr/bin/env python3
"""The metrics that the alert rules and the Grafana dashboard use, and the
dashboard's shape; called by observability.sh (standard library only).

  observability.py used FILE...             the gitlab_oidc_proxy_* names FILE uses, one a line
  observability.py check METRICS FILE...    every name FILE uses, and every label and value its
                                            selectors ask for, is in METRICS (a /metrics scrape);
                                            exit 1 naming what is missing
  observability.py rule-tests RULES TESTS   each alert of RULES has a unit test in TESTS where it
                                            fires and one where it stays silent, and its tests fail
                                            once it can never fire (runs promtool)
  observability.py dashboard JSON           check the dashboard's shape; print its expressions as
                                            a Prometheus rule file, for `promtool check rules`

FILE is a Prometheus rule file (.yml, .yaml) or a Grafana dashboard (.json). Names
are taken from the whole file (every expression, and annotations or descriptions
that name a metric); labels from the selectors of the expressions.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

NAME = re.compile(r"gitlab_oidc_proxy_[a-z_]+")
SELECTOR = re.compile(r"(gitlab_oidc_proxy_[a-z_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
# Added by Prometheus at scrape time, never in the exposition.
TARGET_LABELS = {"job", "instance"}
# A sample name's suffix and the `# TYPE` kinds whose samples carry it.
SUFFIXES = {
    "_total": ("counter",),
    "_bucket": ("histogram",),
    "_sum": ("histogram", "summary"),
    "_count": ("histogram", "summary"),
}
GRAFANA_TIME_VARS = ("$__rate_interval", "$__interval", "$__range")
DATASOURCE_REFS = ("${datasource}", "$datasource")


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(2)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# --- what a file uses ---------------------------------------------------------


class Rule:
    """One rule of a rule file: `alert` or `record`, its name, its expression and
    the lines [start, end) that hold the `expr:` entry."""

    def __init__(self, kind, name, expr, start, end, indent):
        self.kind, self.name, self.expr = kind, name, expr
        self.start, self.end, self.indent = start, end, indent


def yaml_rules(text, path):
    """The rules of a rule file, each `expr:` inline or a `|`/`>` block below it.
    Counted against the `alert:`/`record:` entries, so a form this does not read
    cannot slip through unchecked."""
    lines = text.splitlines()
    rules, i, kind, name = [], 0, None, None
    while i < len(lines):
        named = re.match(r"^\s*(?:- )?(alert|record):\s*(\S+)", lines[i])
        if named:
            kind, name = named.groups()
        m = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[i])
        start = i
        i += 1
        if not m:
            continue
        indent, rest = m.group(1), m.group(2).strip()
        if rest[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                block.append(lines[i].strip())
                i += 1
            expr = " ".join(b for b in block if b)
        else:
            expr = rest.strip("'\"")
        rules.append(Rule(kind, name, expr, start, i, indent))
    count = len(re.findall(r"^\s*(?:- )?(?:alert|record):", text, re.M))
    if count != len(rules):
        fail(f"{path}: {count} rules but {len(rules)} expr values read")
    return rules


def json_strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from json_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from json_strings(value)
    elif isinstance(node, str):
        yield node


def dashboard_exprs(dash):
    """(where, expression) of every panel target and every query variable."""
    found = []

    def panels(items):
        for p in items:
            for t in p.get("targets", []):
                if "expr" in t:
                    found.append((f"panel {p.get('id')} '{p.get('title')}' {t.get('refId')}", t["expr"]))
            panels(p.get("panels", []))

    panels(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            query = v.get("query")
            found.append((f"variable {v.get('name')}", query.get("query") if isinstance(query, dict) else query))
    return found


def uses(path):
    """(every metric name in the file, the expressions whose selectors to check)."""
    text = read(path)
    if path.endswith(".json"):
        try:
            dash = json.loads(text)
        except json.JSONDecodeError as e:
            fail(f"{path}: not valid JSON: {e}")
        names = set(NAME.findall("\n".join(json_strings(dash))))
        exprs = [e for _, e in dashboard_exprs(dash)]
    else:
        names = set(NAME.findall(text))
        exprs = [r.expr for r in yaml_rules(text, path)]
    return names, exprs


# --- what the proxy exports ---------------------------------------------------


def exposition(text):
    """(`# TYPE` kinds by name, label sets of the samples by sample name)."""
    types, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s", line)
            if m:
                labels = dict((k, v) for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                samples.setdefault(m.group(1), []).append(labels)
    return types, samples


def exported(name, types, samples):
    """Whether a query for `name` finds something: it is a sample name, or its
    family is declared with a `# TYPE` whose samples carry that suffix."""
    if name in samples or types.get(name) in ("gauge", "unknown"):
        return True
    for suffix, kinds in SUFFIXES.items():
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) in kinds:
            return True
    return False


def label_values(name, samples):
    seen = {}
    for labels in samples.get(name, []):
        for k, v in labels.items():
            seen.setdefault(k, set()).add(v)
    return seen


def label_problems(expr, samples):
    """Matchers and grouping labels of `expr` that no exported series has. A
    metric missing from the scrape is left to the name check."""
    problems = []
    used_labels = set(TARGET_LABELS)
    for name in NAME.findall(expr):
        used_labels.update(label_values(name, samples))
    for name, body in SELECTOR.findall(expr):
        if name not in samples:
            continue
        seen = label_values(name, samples)
        for label, op, value in MATCHER.findall(body):
            if label in TARGET_LABELS or "$" in value:
                continue
            if label not in seen:
                problems.append(f'{name}{{{label}{op}"{value}"}}: no series of {name} has the label {label}')
            elif op == "=" and value not in seen[label]:
                problems.append(
                    f'{name}{{{label}="{value}"}}: {label} is never "{value}" (seen: {", ".join(sorted(seen[label]))})'
                )
            elif op == "=~" and not any(re.fullmatch(value, v) for v in seen[label]):
                problems.append(
                    f'{name}{{{label}=~"{value}"}}: no value of {label} matches (seen: {", ".join(sorted(seen[label]))})'
                )
    for names in GROUPING.findall(expr):
        for label in (n.strip() for n in names.split(",")):
            if label and label not in used_labels:
                problems.append(f"({label}) in `{expr}`: no metric of the expression has the label {label}")
    return problems


def check(metrics_path, paths):
    types, samples = exposition(read(metrics_path))
    if "gitlab_oidc_proxy_open_connections" not in samples:
        fail(f"{metrics_path}: not a /metrics scrape of the proxy (no gitlab_oidc_proxy_open_connections)")
    problems, checked = [], set()
    for path in paths:
        names, exprs = uses(path)
        for name in sorted(names):
            checked.add(name)
            if not exported(name, types, samples):
                problems.append(f"missing metric: {name} (used in {path}) is not in the proxy's /metrics")
        for expr in exprs:
            problems += [f"{path}: {p}" for p in label_problems(expr, samples)]
    for p in problems:
        print(p)
    if problems:
        print(f"FAIL: {len(problems)} problem(s) with the metrics used by {', '.join(paths)}")
        return 1
    print(f"ok: all {len(checked)} metric names used by {', '.join(paths)} are exported, with their labels")
    return 0


# --- the dashboard's shape ----------------------------------------------------


def datasource_refs(node, where="dashboard"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield where, value
            else:
                yield from datasource_refs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from datasource_refs(value, f"{where}[{i}]")


def dashboard(path):
    try:
        dash = json.loads(read(path))
    except json.JSONDecodeError as e:
        fail(f"{path}: not valid JSON: {e}")
    problems = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"schemaVersion {dash.get('schemaVersion')!r}: want a number of 36 or more")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no `datasource` variable of type datasource for prometheus")
    for name in ("job", "instance"):
        if variables.get(name, {}).get("type") != "query":
            problems.append(f"no `{name}` query variable")
    for where, ref in datasource_refs(dash):
        uid = ref.get("uid") if isinstance(ref, dict) else ref
        builtin = isinstance(ref, dict) and ref.get("type") == "grafana"
        if uid not in DATASOURCE_REFS and not builtin:
            problems.append(f"{where}: datasource {ref!r} is not ${{datasource}} (a hard-coded data source)")
    ids, rules = set(), []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop(0)
        stack.extend(p.get("panels", []))
        if p.get("id") in ids:
            problems.append(f"panel id {p.get('id')} used twice")
        ids.add(p.get("id"))
        grid = p.get("gridPos", {})
        if grid.get("x", 0) + grid.get("w", 0) > 24:
            problems.append(f"panel {p.get('id')} '{p.get('title')}' is wider than the 24 columns")
        if p.get("type") != "row" and not p.get("targets"):
            problems.append(f"panel {p.get('id')} '{p.get('title')}' has no query")
    for where, expr in dashboard_exprs(dash):
        if where.startswith("variable"):
            if not re.fullmatch(r"label_values\(.+\)", expr or ""):
                problems.append(f"{where}: {expr!r} is not label_values(...)")
            continue
        promql = expr
        for var in GRAFANA_TIME_VARS:
            promql = promql.replace(var, "5m")
        promql = re.sub(r"\$\{?(job|instance)\}?", ".*", promql)
        if "$" in promql:
            problems.append(f"{where}: unknown variable in {expr!r}")
        rules.append({"record": f"dashboard:{re.sub(r'[^a-z0-9]+', '_', where.lower()).strip('_')}", "expr": promql})
    if problems:
        for p in problems:
            print(f"{path}: {p}", file=sys.stderr)
        sys.exit(1)
    # JSON is YAML: promtool reads this as a rule file.
    print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    return 0


# --- the unit tests of the alerts ---------------------------------------------


def rule_tests(rules_path, tests_path):
    """Every alert has a unit test where it fires and one where it stays silent
    (`exp_alerts: []`), and its firing tests fail when it never fires."""
    text = read(rules_path)
    alerts = [r for r in yaml_rules(text, rules_path) if r.kind == "alert"]
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:[ \t]*(\[\s*\])?", read(tests_path))
    problems = []
    for alert in alerts:
        silent = {bool(empty) for name, empty in cases if name == alert.name}
        if False not in silent:
            problems.append(f"{alert.name}: no unit test where it fires")
        if True not in silent:
            problems.append(f"{alert.name}: no unit test where it must stay silent (exp_alerts: [])")
    lines = text.splitlines()
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(tests_path, work)
        tests_copy = os.path.join(work, os.path.basename(tests_path))
        for alert in alerts:
            never = lines[: alert.start] + [f"{alert.indent}expr: vector(0) > 1"] + lines[alert.end :]
            with open(os.path.join(work, os.path.basename(rules_path)), "w", encoding="utf-8") as f:
                f.write("\n".join(never) + "\n")
            run = subprocess.run(["promtool", "test", "rules", tests_copy], capture_output=True, text=True, check=False)
            if run.returncode == 0:
                problems.append(f"{alert.name}: the unit tests still pass when it can never fire")
            elif f"alertname: {alert.name}," not in run.stdout + run.stderr:
                problems.append(f"{alert.name}: made never to fire, the unit tests fail elsewhere:\n{run.stdout}{run.stderr}")
    for p in problems:
        print(f"{tests_path}: {p}")
    if problems:
        return 1
    print(f"ok: each of the {len(alerts)} alerts has a test where it fires and one where it stays silent,")
    print("    and its tests fail when its expression can never fire")
    return 0


def main(argv):
    if len(argv) >= 2 and argv[0] == "used":
        for name in sorted(set().union(*(uses(p)[0] for p in argv[1:]))):
            print(name)
        return 0
    if len(argv) >= 3 and argv[0] == "check":
        return check(argv[1], argv[2:])
    if len(argv) == 3 and argv[0] == "rule-tests":
        return rule_tests(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "dashboard":
        return dashboard(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
