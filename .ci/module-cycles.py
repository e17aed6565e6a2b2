#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a circle.

usage: .ci/module-cycles.py CRATE_SRC_DIR...

Each source file is a module (`a/mod.rs` is `a`, `a/b.rs` is `a::b`). A module depends on the
modules its code names through `crate::` or `super::` paths (`use` lines and paths in code;
comments and `#[cfg(test)]` sections are left out), each resolved to the deepest module file
that exists. A parent declaring its children (`mod b;`) is not a dependency. Strongly connected
components of more than one module are cycles; each is printed, and the exit status is 1.
"""

import os
import re
import sys


def module_name(root, path):
    rel = os.path.relpath(path, root)[:-3]
    if rel in ("lib", "main"):
        return "crate"
    if rel.endswith("/mod"):
        rel = rel[: -len("/mod")]
    return rel.replace("/", "::")


def resolve(root, parts):
    """The deepest module file named by a path's leading `parts`."""
    best = None
    for depth in range(1, len(parts) + 1):
        base = os.path.join(root, *parts[:depth])
        if os.path.exists(base + ".rs") or os.path.exists(os.path.join(base, "mod.rs")):
            best = "::".join(parts[:depth])
        else:
            break
    return best


def expand_groups(code):
    """`prefix::{a, b::c}` as separate `prefix::a prefix::b::c` paths (one level of braces)."""
    def repl(match):
        prefix, items = match.group(1), match.group(2)
        return " ".join(f"{prefix}::{item.strip()}" for item in items.split(",") if item.strip())
    return re.sub(r"((?:crate|super)(?:::[A-Za-z0-9_]+)*)::\{([^{}]*)\}", repl, code)


def dependencies(root, name, code):
    deps = set()
    own = [] if name == "crate" else name.split("::")
    for match in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z0-9_]+)+)", code):
        parts = match.group(1).split("::")
        if parts[0] == "crate":
            path = parts[1:]
        else:
            base = own[:]
            # A mod.rs module's `super` is its parent; so is a file module's.
            while parts and parts[0] == "super":
                base = base[:-1]
                parts = parts[1:]
            path = base + parts
        target = resolve(root, path) if path else None
        target = target or "crate"
        if target != name:
            deps.add(target)
    return deps


def cycles(root):
    graph = {}
    for folder, _, files in os.walk(root):
        for file in files:
            if not file.endswith(".rs"):
                continue
            path = os.path.join(folder, file)
            code = open(path, encoding="utf-8").read().split("#[cfg(test)]")[0]
            code = "\n".join(line for line in code.splitlines() if not line.strip().startswith("//"))
            name = module_name(root, path)
            graph[name] = dependencies(root, name, expand_groups(code))
    # Tarjan's strongly connected components.
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return graph, found


def main():
    failed = False
    for root in sys.argv[1:]:
        graph, found = cycles(root)
        for component in found:
            print(f"{root}: {len(component)} modules import each other in a circle: {', '.join(component)}")
            failed = True
        if not found:
            print(f"{root}: {len(graph)} modules, no import cycle")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
