#!/usr/bin/env python3
"""The shape diag's source keeps (issue 16), checked so that it stays true.

1. No file under diag/src, testkit/src or demo/src is longer than 400 lines.
2. No function there is longer than 80 lines (from its `fn` line to its closing brace).
3. A profile's domain part knows no HTTP: no file under diag/src/{cpu,heap,tasks,trace,wall,
   symbols}/ other than one named `http.rs` (or under an `http/` folder) names axum, the http
   crate or `ApiError`.

Prints every breach with its place and exits 1 if there is any.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = ["diag/src", "testkit/src", "demo/src"]
MAX_FILE_LINES = 400
MAX_FN_LINES = 80
PROFILES = ["cpu", "heap", "tasks", "trace", "wall", "symbols"]
HTTP_WORDS = re.compile(r"\baxum\b|\bhttp::|\buse http\b|\bApiError\b|\bhyper\b")
FN_START = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern\s+\"C\")\s+)*fn\s+(\w+)")


def strip_code(line, in_block):
    """The line without comments and string contents, and whether a block comment is open."""
    out = []
    i = 0
    in_str = False
    while i < len(line):
        if in_block:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out), True
            i = end + 2
            in_block = False
            continue
        c = line[i]
        if in_str:
            if c == "\\":
                i += 2
                continue
            if c == '"':
                in_str = False
            i += 1
            continue
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            in_block = True
            i += 2
            continue
        if c == '"':
            in_str = True
            i += 1
            continue
        if c == "'" and i + 2 < len(line) and line[i + 2] == "'":
            i += 3  # a char literal such as '{'
            continue
        if c == "'" and i + 3 < len(line) and line[i + 1] == "\\" and line[i + 3] == "'":
            i += 4
            continue
        out.append(c)
        i += 1
    return "".join(out), in_block


def long_functions(path):
    lines = path.read_text().splitlines()
    code = []
    in_block = False
    for line in lines:
        stripped, in_block = strip_code(line, in_block)
        code.append(stripped)
    found = []
    i = 0
    while i < len(code):
        m = FN_START.match(code[i])
        if not m:
            i += 1
            continue
        # Find the body's opening brace (or a `;` for a declaration without a body).
        depth = 0
        j = i
        opened = False
        while j < len(code):
            for ch in code[j]:
                if ch == ";" and not opened and depth == 0:
                    break
                if ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
            else:
                if opened and depth <= 0:
                    break
                j += 1
                continue
            break
        if opened:
            length = j - i + 1
            if length > MAX_FN_LINES:
                found.append((i + 1, m.group(5), length))
        i += 1
    return found


def main():
    breaches = []
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.rs")):
            rel = path.relative_to(ROOT)
            n = len(path.read_text().splitlines())
            if n > MAX_FILE_LINES:
                breaches.append(f"{rel}: {n} lines (at most {MAX_FILE_LINES})")
            for line, name, length in long_functions(path):
                breaches.append(
                    f"{rel}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})"
                )
    for profile in PROFILES:
        base = ROOT / "diag/src" / profile
        for path in sorted(base.rglob("*.rs")) if base.exists() else []:
            rel = path.relative_to(base)
            if rel.name == "http.rs" or "http" in rel.parts[:-1]:
                continue
            text = path.read_text()
            # `http::` is the profile's own `http` module where the file declares one.
            own_http = re.search(r"^\s*(pub(\([^)]*\))?\s+)?mod http;", text, re.M)
            for no, line in enumerate(text.splitlines(), 1):
                code = line.split("//")[0]
                if own_http:
                    code = re.sub(r"\bhttp::", "self_http::", code)
                if HTTP_WORDS.search(code):
                    breaches.append(
                        f"{path.relative_to(ROOT)}:{no}: a profile's domain part names HTTP: "
                        f"{line.strip()}"
                    )
    single = ROOT / "diag/src"
    for profile in PROFILES:
        flat = single / f"{profile}.rs"
        if flat.exists():
            breaches.append(
                f"{flat.relative_to(ROOT)}: a profile in one file; split it into "
                f"{profile}/ with its handlers in {profile}/http.rs"
            )
    for b in breaches:
        print(b)
    if breaches:
        print(f"{len(breaches)} breaches of the source's shape (scripts/check_shape.py)")
        return 1
    print("source shape: files <= 400 lines, functions <= 80 lines, domain parts free of HTTP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
