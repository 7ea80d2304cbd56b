#!/usr/bin/env python3
"""Fail when files of a workspace crate import each other in a circle.

A file's module uses another file's module when its code (comments and test modules left out)
names a path into it: `crate::a::b`, `super::b`, `self::c`, or an item of a `use ...::{...}`
group. Edges between a module and its own descendants are left out (a parent declares and
re-exports its children, a child uses its parent's items); any other strongly connected set of
files is a cycle, printed with its members. Run by scripts/test.sh.

    scripts/check-imports.py [crate-dir ...]   (default: every workspace member)
"""
import os
import re
import sys

PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"use ((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")


def modules(src):
    """Module path (a tuple) -> file, for every .rs file under `src`."""
    found = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                parts = os.path.relpath(path, src)[:-3].split(os.sep)
                if parts[-1] in ("mod", "lib", "main"):
                    parts = parts[:-1]
                found[tuple(parts)] = path
    return found


def code(path):
    text = open(path, encoding="utf-8").read()
    tests = text.find("#[cfg(test)]\nmod tests")
    if tests >= 0:
        text = text[:tests]
    return "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("//"))


def absolute(module, segments):
    """`segments` (starting with crate/super/self) from inside `module`, as a path from the root."""
    if segments[0] == "crate":
        return list(segments[1:])
    here = list(module)
    while segments and segments[0] in ("super", "self"):
        if segments[0] == "super":
            here = here[:-1]
        segments = segments[1:]
    return here + list(segments)


def target(path, mods):
    """The longest prefix of `path` that is a file's module."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def related(a, b):
    return a[: len(b)] == b or b[: len(a)] == a


def cycles(crate):
    mods = modules(os.path.join(crate, "src"))
    edges = {m: set() for m in mods}
    for m, path in mods.items():
        text = code(path)
        paths = [absolute(m, p.split("::")) for p in PATH.findall(text)]
        for base, items in GROUP.findall(text):
            for item in items.split(","):
                item = item.strip().split(" as ")[0]
                if item and item != "self":
                    paths.append(absolute(m, base.split("::") + item.split("::")))
        for p in paths:
            t = target(p, mods)
            if t is not None and not related(m, t):
                edges[m].add(t)
    # Tarjan's strongly connected components.
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return found


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crates = sys.argv[1:] or [
        os.path.join(root, c) for c in ("common", "web", "worker", "emulator", "dev")
    ]
    bad = False
    for crate in crates:
        for component in cycles(crate):
            bad = True
            names = ", ".join("::".join(m) or "lib" for m in component)
            print(f"{os.path.basename(crate)}: files import each other in a circle: {names}")
    if bad:
        sys.exit(1)
    print("no import cycles between files")


if __name__ == "__main__":
    main()
