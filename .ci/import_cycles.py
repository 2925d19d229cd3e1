#!/usr/bin/env python3
"""Fails when the files of src/ import each other in a cycle.

An edge A -> B is a path in A's code (a `use`, or an inline `crate::b::f()`)
that names the file B: `crate::...`, `super::...`, `self::...`, or a child
module's name. A parent declaring its children with `mod` is not an edge, and
neither is a path to the crate root itself. Test code counts like any other.
Prints each cycle (strongly connected component) found and exits 1 if any;
`-v` prints every file's edges first.
"""
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


TOKEN = re.compile(
    r"//[^\n]*"  # line comment
    r"|/\*.*?\*/"  # block comment
    r'|\bb?r(#*)".*?"\1'  # raw string
    r'|b?"(?:\\.|[^"\\])*"'  # string
    r"|b?'(?:\\.|[^'\\])'",  # char literal such as '"'
    re.S,
)


def strip_comments_and_strings(text):
    """One left-to-right pass, so a `/*` in a string or a `"` in a comment
    cannot swallow code. Comments become a space, literals an empty string."""
    return TOKEN.sub(lambda m: " " if m.group(0).startswith("/") else '""', text)


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [tree.split(" as ")[0].strip()]
    prefix, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [prefix + p for part in parts if part.strip() for p in expand(part)]


def paths_in(text):
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        yield from expand(m.group(1))
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    # Any path in code: `crate::a::f()`, `super::X`, or `child::f()` (which
    # `target` keeps only when `child` is a module of this file).
    for m in re.finditer(r"(?<![\w:])[A-Za-z_]\w*(?:::(?:[A-Za-z_]\w*|\*))+", body):
        yield m.group(0)


def target(mods, mod, path):
    segs = [s.strip() for s in path.split("::") if s.strip()]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] == "super":
        base = mod
        while segs and segs[0] == "super":
            base, segs = base[:-1], segs[1:]
    elif segs[0] == "self":
        base, segs = mod, segs[1:]
    elif mod + (segs[0],) in mods:
        base = mod  # a child module named without `self::`
    else:
        return None  # an external crate or a local item
    segs = [s for s in segs if IDENT.match(s) and s != "self"]
    full = list(base) + segs
    for i in range(len(full), -1, -1):
        if tuple(full[:i]) in mods:
            t = tuple(full[:i])
            return None if t in (mod, ()) else t
    return None


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    mods = {}
    for dirpath, _, names in os.walk(ROOT):
        for n in names:
            if n.endswith(".rs") and not (dirpath == ROOT and n == "main.rs"):
                mods[module_of(os.path.join(dirpath, n))] = os.path.join(dirpath, n)
    graph = {}
    for m, p in mods.items():
        with open(p, encoding="utf-8") as f:
            text = strip_comments_and_strings(f.read())
        # Inside the inline `#[cfg(test)] mod tests { ... }` (the end of a file,
        # by convention) the first `super` is the file itself.
        test_mod = re.search(r"#\[cfg\(test\)\]\s*mod \w+\s*\{", text)
        outer, inline = (text[: test_mod.start()], text[test_mod.end() :]) if test_mod else (text, "")
        paths = list(paths_in(outer)) + [re.sub(r"^super\b", "self", p.strip(), count=1) for p in paths_in(inline)]
        graph[m] = {t for t in (target(mods, m, path) for path in paths) if t}
    name = lambda m: os.path.relpath(mods[m], os.path.dirname(ROOT))
    if "-v" in sys.argv:
        for m in sorted(graph):
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in graph[m]))}")
    cycles = [sorted(name(m) for m in c) for c in sccs(graph) if len(c) > 1]
    for c in cycles:
        print(f"import cycle among {len(c)} files: {' '.join(c)}")
    if cycles:
        return 1
    print(f"no import cycle among the {len(mods)} files of src/ (main.rs aside)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
