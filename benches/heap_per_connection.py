"""Heap bytes per idle connection, by allocation site, from two massif snapshots.

    python3 heap_per_connection.py BEFORE OPEN CONNECTIONS

BEFORE and OPEN are massif detailed snapshots (vgdb ... detailed_snapshot FILE)
taken before and after CONNECTIONS idle connections were opened. Each
allocation is named by the first frames of its stack outside the allocator and
the standard containers; the table gives what each name gained, divided by
CONNECTIONS, largest first.
"""

import re
import sys
from collections import Counter

# Frames that say how memory is allocated, not what it is for.
PLUMBING = re.compile(
    r"(alloc::|__rust|__rdl|core::ptr|bytes::bytes_mut::BytesMut::(reserve|with_capacity|split)|"
    r"hashbrown|RawVec|std::sys::|malloc|calloc|realloc|memalign|\?\?\?)"
)
NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")


def name(desc):
    # "0x1234: crate::module::function (in /path)" -> "crate::module::function"
    text = desc.split(": ", 1)[-1]
    text = re.sub(r" \((in|[^()]*:\d+)[^()]*\)$", "", text)
    while True:  # generics, innermost first; `<T as Trait>` becomes `T`
        shorter = re.sub(r"<([^<>]*) as [^<>]*>", r"\1", re.sub(r"<(?![^<>]* as )[^<>]*>", "", text))
        if shorter == text:
            break
        text = shorter
    return text.replace("{{closure}}", "{closure}")


def sites(path):
    """Bytes per site: each path down the tree is cut at its first useful frame."""
    found = Counter()
    stack = []  # (indent, useful name or None) of the nodes above
    for line in open(path):
        m = NODE.match(line)
        if not m:
            continue
        indent, children, size, desc = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = [n for _, n in stack if n]
        if len(above) >= 2:  # already named by the frames above
            stack.append((indent, None))
            continue
        useful = None if PLUMBING.search(desc) or "below massif's threshold" in desc or desc.startswith("(heap allocation functions)") else name(desc)
        named = above + ([useful] if useful else [])
        if len(named) == 2 or (children == 0 and named):
            found[" <- ".join(named)] += size
        elif children == 0 and not named:
            found["(other)"] += size
        stack.append((indent, useful))
    return found


def main():
    before, opened, n = sites(sys.argv[1]), sites(sys.argv[2]), int(sys.argv[3])
    gained = Counter({k: opened[k] - before.get(k, 0) for k in opened})
    total = sum(gained.values())
    print(f"{'bytes/conn':>10}  allocated by (first frames outside the allocator)")
    for where, size in gained.most_common():
        if size / n < 32:
            break
        print(f"{size / n:10.0f}  {where[:150]}")
    print(f"{total / n:10.0f}  heap per idle connection ({n} open; RSS adds the allocator's rounding and pages)")


main()
