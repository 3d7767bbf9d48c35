#!/usr/bin/env python3
"""The layering rules of docs/ARCHITECTURE.md, checked on src/ (non-test code only).

    scripts/check_architecture.py [REPO_ROOT]        (default: the repository this script is in)

Rules, each reported with the file that breaks it:
  1. No cycle between the top-level modules of src/ (an edge a -> b is a `crate::b` path in a's code).
  2. Protocol crates (tonic, prost, axum, hyper, http, tower, ...) appear only in the two doors,
     src/grpc/ and src/http/, and in PROTOCOL_ALLOWED below.
  3. src/preprocess imports nothing else of the crate: the fuzz crate (fuzz/src/lib.rs) compiles it
     by path, on its own.
  4. No file over MAX_LINES lines of code (blank, comment and test lines not counted); generated
     tables exempt.

Prints one line per problem and a summary line; exits 1 when a rule is broken. Python 3.8+, stdlib only.
"""

import os
import re
import sys
from collections import defaultdict

MAX_LINES = int(os.environ.get("CLIP_SERVE_MAX_FILE_LINES", "700"))

# Crates whose types are the wire: they stop at the doors.
PROTOCOL_CRATES = {
    "tonic", "tonic_health", "tonic_reflection", "tonic_types", "tonic_prost", "prost", "prost_types",
    "axum", "hyper", "hyper_util", "http", "http_body", "http_body_util", "h2", "tower", "tower_http",
}
DOORS = ("src/grpc/", "src/http/")
# Outside the doors, only these may name a protocol crate:
PROTOCOL_ALLOWED = {
    # the wiring: builds the tonic server and the hyper listeners from both doors' services
    "src/server.rs": "wiring",
    # the load generator (clip-bench) speaks both wires by design, as a client
    "src/bin/": "load generator",
}
# Modules that may import nothing of the crate but themselves.
SELF_CONTAINED = {"preprocess": "fuzz/src/lib.rs compiles it by path, without the rest of the crate"}
# Generated files (scripts/gen_text_tables.py): long by nature, never edited by hand.
GENERATED = re.compile(r"(^|/)tables_\w+\.rs$")


def blank_comments_and_literals(text):
    """`text` with comments and the contents of string and char literals replaced by spaces (newlines
    kept, so line counts and positions survive)."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return re.sub(r"[^\n]", " ", s)

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
        elif re.match(r"b?r(#*)\"", text[i:i + 260]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r"b?r(#*)\"", text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""' + blank(text[i + 2:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append('"' + blank(text[i + 1:j - 1]) + '"')
            i = j
        elif c == "'":
            # a char literal ('x', '\n', '\u{1F600}', '"'), or a lifetime ('a) left as it is
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_items(code):
    """Removes every item under `#[cfg(test)]` (a test module, function or `use`), and reports whether
    the whole file is test-only (`#![cfg(test)]`). `code` has no comments or literals left."""
    if re.search(r"#!\[cfg\(test\)\]", code):
        return ""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\((test|all\(test\b[^\]]*)\)\]", code):
        if m.start() < i:
            continue
        out.append(code[i:m.start()])
        j, depth = m.end(), 0
        while j < len(code):
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        # keep the newlines so that nothing after shifts lines
        out.append(re.sub(r"[^\n]", " ", code[m.start():j]))
        i = j
    out.append(code[i:])
    return "".join(out)


def use_paths(tree):
    """The paths named by one `use` tree: `a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, start = [], 0, 0
        for k, ch in enumerate(s):
            depth += ch == "{"
            depth -= ch == "}"
            if ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        return [p for p in parts if p]

    def expand(prefix, s):
        brace = s.find("{")
        if brace < 0:
            return [prefix + s]
        head, inner = s[:brace], s[brace + 1:s.rfind("}")]
        return [p for part in split_top(inner) for p in expand(prefix + head, part)]

    return [p.lstrip(":") for part in split_top(tree) for p in expand("", part)]


def top_module(rel):
    """src/a.rs and src/a/... -> a; None for the crate roots and the binaries."""
    parts = rel.split("/")[1:]
    if parts[0] == "bin":
        return None
    if len(parts) == 1:
        name = parts[0][:-3]
        return None if name in ("lib", "main") else name
    return parts[0]


class Tree:
    def __init__(self, root):
        self.root = root
        self.edges = defaultdict(dict)  # a -> {b: first file naming crate::b}
        self.protocol = []  # (file, crate)
        self.imports_of_self_contained = []  # (file, module)
        self.big = []  # (file, lines)

    def scan(self):
        src = os.path.join(self.root, "src")
        if not os.path.isdir(src):
            raise SystemExit(f"check_architecture: no src/ under {self.root}")
        for folder, dirs, files in os.walk(src):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".rs"):
                    path = os.path.join(folder, f)
                    rel = os.path.relpath(path, self.root).replace(os.sep, "/")
                    with open(path, encoding="utf-8", errors="replace") as fh:
                        self.scan_file(rel, fh.read())

    def scan_file(self, rel, text):
        code = strip_test_items(blank_comments_and_literals(text))
        lines = sum(1 for line in code.splitlines() if line.strip())
        if lines > MAX_LINES and not GENERATED.search(rel):
            self.big.append((rel, lines))
        me = top_module(rel)
        local = set(re.findall(r"\bmod\s+(\w+)", code))
        crate_refs = set(re.findall(r"(?<![\w:])crate::(\w+)", code))
        roots = set()
        for tree in re.findall(r"\buse\s+([^;]+);", code):
            for path in use_paths(tree):
                first, _, rest = path.partition("::")
                if first == "crate":
                    crate_refs.add(rest.split("::")[0])
                elif first not in ("self", "super"):
                    roots.add(first)
        without_uses = re.sub(r"\buse\s+[^;]+;", ";", code)
        roots |= set(re.findall(r"(?<![\w:])(?:::)?([a-z_][a-z0-9_]*)::", without_uses))
        allowed = rel.startswith(DOORS) or any(
            rel == p or (p.endswith("/") and rel.startswith(p)) for p in PROTOCOL_ALLOWED
        )
        if not allowed:
            for name in sorted((roots - local) & PROTOCOL_CRATES):
                self.protocol.append((rel, name))
        crate_refs -= {"self", "super", "crate", ""}
        if me is None:
            return
        for other in sorted(crate_refs):
            if other == me:
                continue
            self.edges[me].setdefault(other, rel)
            if me in SELF_CONTAINED:
                self.imports_of_self_contained.append((rel, other))

    def cycles(self):
        """Strongly connected components of more than one module (Tarjan, iterative)."""
        nodes = sorted(set(self.edges) | {b for bs in self.edges.values() for b in bs})
        index, low, on_stack, stack, found = {}, {}, set(), [], []
        counter = 0
        for start in nodes:
            if start in index:
                continue
            work = [(start, iter(sorted(self.edges.get(start, {}))))]
            index[start] = low[start] = counter
            counter += 1
            stack.append(start)
            on_stack.add(start)
            while work:
                v, children = work[-1]
                advanced = False
                for w in children:
                    if w not in index:
                        index[w] = low[w] = counter
                        counter += 1
                        stack.append(w)
                        on_stack.add(w)
                        work.append((w, iter(sorted(self.edges.get(w, {})))))
                        advanced = True
                        break
                    if w in on_stack:
                        low[v] = min(low[v], index[w])
                if advanced:
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
        return sorted(found)


def main(argv):
    root = argv[1] if len(argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    tree = Tree(root)
    tree.scan()
    problems = []
    for component in tree.cycles():
        ties = [
            f"{a} -> {b} ({tree.edges[a][b]})"
            for a in component
            for b in component
            if b in tree.edges.get(a, {})
        ]
        problems.append(f"cycle between {', '.join(component)}: " + "; ".join(ties))
    for rel, name in tree.protocol:
        problems.append(f"protocol crate `{name}` outside src/grpc/ and src/http/: {rel}")
    for rel, other in tree.imports_of_self_contained:
        module = top_module(rel)
        problems.append(f"src/{module} imports crate::{other} ({SELF_CONTAINED[module]}): {rel}")
    for rel, lines in tree.big:
        problems.append(f"file over {MAX_LINES} lines of code: {rel} ({lines}); split it along a seam")
    for p in problems:
        print(p)
    modules = len(set(tree.edges) | {b for bs in tree.edges.values() for b in bs})
    print(
        f"architecture: {'FAILED' if problems else 'ok'}: {modules} top-level modules, "
        f"{len(tree.cycles())} cycles, {len(tree.protocol)} protocol uses outside the doors, "
        f"{len(tree.imports_of_self_contained)} imports out of self-contained modules, "
        f"{len(tree.big)} files over {MAX_LINES} lines"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
