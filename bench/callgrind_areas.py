#!/usr/bin/env python3
"""Instructions per admission by area, from a callgrind profile of a webhook server.

Usage: callgrind_areas.py CALLGRIND_OUT REQUESTS [TOP] [--callers=REGEX]... [--callees=REGEX]...

Reads callgrind's output file (built with line tables, so that code inlined by LTO is
still charged to the source file it came from), charges every instruction's self cost to
an area by its source file (or, without one, by its function or shared object) and prints
a Markdown table of instructions (Ir) per admission and their share, then the TOP
functions by self cost; --callers/--callees list the inclusive cost of the calls into or
out of the functions whose name matches REGEX. Used by bench/profile.sh.

A profile written with --dump-instr=yes also gives the code an admission touches: the
64-byte lines of machine code executed, all of them and those that execute at least one
instruction per admission on average (a size that instruction counts do not show).
"""

import collections
import re
import sys

# (area, test on "object|file|function"), first match wins.
AREAS = [
    ("glibc allocator (malloc, free)", r"\|(malloc|free|realloc|calloc|_int_malloc|_int_free|_int_realloc|malloc_consolidate|cfree|posix_memalign|_mid_memalign|_int_memalign|tcache\w*|unlink_chunk\w*|__libc_\w+)(\.\w+)*$"),
    ("libc: memcpy, memmove, memset, memcmp, syscalls", r"^[^|]*libc\.so"),
    ("other shared objects", r"^[^|]*\.so[.\d]*\|"),
    ("TLS: aws-lc crypto (AES-GCM, SHA, ECDSA)", r"aws-lc|\|aws_lc_|\|(aes|gcm|sha\d*|ecp|bn|ec)_\w*$|\|(GFp|ChaCha|poly1305)"),
    ("TLS: rustls, tokio-rustls", r"/rustls-|/tokio-rustls-|/rustls-pki-types-"),
    ("HTTP/2: h2", r"/h2-\d"),
    ("HTTP: hyper, hyper-util, http, http-body", r"/hyper-\d|/hyper-util-|/http-\d|/http-body|/httparse-|/httpdate-"),
    ("axum, tower, matchit", r"/axum|/tower|/matchit-"),
    ("tokio runtime, mio", r"/tokio-\d|/mio-\d|/tokio-util-"),
    ("bytes", r"/bytes-\d"),
    ("kube-core, k8s-openapi, json-patch (typed review)", r"/kube-core-|/k8s-openapi-|/json-patch-|/jsonptr-"),
    ("JSON: serde_json", r"/serde_json-"),
    ("JSON: serde", r"/serde-\d|/serde_core-|/serde_derive-"),
    ("JSON: indexmap (preserve_order maps)", r"/indexmap-"),
    ("hashbrown", r"/hashbrown-"),
    ("JSON: ryu, itoa, memchr", r"/ryu-|/itoa-|/memchr-"),
    ("allocator: mimalloc", r"\|[^|]*mimalloc[^|]*\||\|_?mi_\w+$"),
    ("metrics: prometheus", r"/prometheus-"),
    ("logging: tracing", r"/tracing"),
    ("JSON: rayshape-json (document, parser)", r"webhook/json/src/"),
    ("engine: decode", r"webhook/engine/src/decode"),
    ("engine: classify", r"webhook/engine/src/classify"),
    ("engine: plan", r"webhook/engine/src/plan"),
    ("engine: apply", r"webhook/engine/src/apply"),
    ("engine: diff", r"webhook/engine/src/diff"),
    ("engine: review (response)", r"webhook/engine/src/review"),
    ("engine: primitives", r"webhook/engine/src/primitives"),
    ("engine: config", r"webhook/engine/src/config"),
    ("engine: other", r"webhook/engine/src/"),
    ("server: rayshape-server", r"webhook/server/src/"),
    ("one-label handler (bench/baseline)", r"bench/baseline/src/"),
    ("Rust std: alloc (Vec, String, Box)", r"library/alloc/"),
    ("Rust std: core (memcpy, fmt, iterators, ...)", r"library/core/"),
    ("Rust std: std", r"library/std/"),
]
COMPILED = [(a, re.compile(r)) for a, r in AREAS]


def parse(path):
    """Self cost (Ir) per (object, file, function), the inclusive cost of every call edge
    (caller function, callee function), callgrind's total, and Ir per 64-byte line of
    code (empty unless the profile has instruction addresses)."""
    names = {"ob": {}, "fl": {}, "fn": {}}
    cost = collections.Counter()
    edges = collections.Counter()
    code_lines = collections.Counter()
    ob = fl = fi = fn = cfn = ""
    skip_next = False
    total_line = None
    # Columns before the costs: "line", or "instr line" with --dump-instr=yes, where an
    # address is written in full (0x...), relative to the one before (+n, -n) or as the
    # same (*).
    npos, instr, addr = 1, False, 0

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?$", rest)
        if not m:
            return rest
        key, val = m.group(1), m.group(2)
        table = names["fl" if kind in ("fl", "fi", "fe", "cfl", "cfi") else kind.lstrip("c")]
        if val is not None:
            table[key] = val
        return table.get(key, "?")

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            c = line[0]
            if c.isdigit() or c in "+-*":
                parts = line.split()
                if instr:
                    a = parts[0]
                    if a.startswith(("+", "-")):
                        addr += int(a, 0)
                    elif a != "*":
                        addr = int(a, 0)
                if len(parts) <= npos:
                    skip_next = False
                    continue
                ir = int(parts[npos])
                if skip_next:
                    skip_next = False
                    edges[(fn, cfn)] += ir
                    continue
                cost[(ob, fi or fl, fn)] += ir
                if instr and ir:
                    code_lines[addr >> 6] += ir
                continue
            if line.startswith(("summary:", "totals:")):
                total_line = int(line.split()[1])
                continue
            if line.startswith("positions:"):
                cols = line.split()[1:]
                npos, instr = len(cols), "instr" in cols
                continue
            key, _, rest = line.partition("=")
            if key == "ob":
                ob = name("ob", rest)
            elif key == "fl":
                fl = name("fl", rest)
                fi = ""
            elif key in ("fi", "fe"):
                fi = name(key, rest)
            elif key == "fn":
                fn = name("fn", rest)
                fi = ""
            elif key == "cfn":
                cfn = name(key, rest)
            elif key in ("cob", "cfl", "cfi"):
                name(key, rest)  # record compressed names
            elif key == "calls":
                skip_next = True
    return cost, edges, total_line, code_lines


def area(ob, fl, fn):
    s = f"{ob}|{fl}|{fn}"
    for a, r in COMPILED:
        if r.search(s):
            return a
    return "other"


def base(fn):
    """A function's name without callgrind's recursion marks ('2)."""
    return re.sub(r"'\d+$", "", fn)


def neighbours(edges, requests, pattern, callers, top=15):
    """Inclusive cost of the calls into (callers) or out of functions matching pattern,
    per admission, recursion folded. Approximate: a recursive callee counts once per
    edge."""
    r = re.compile(pattern)
    acc = collections.Counter()
    for (caller, callee), n in edges.items():
        a, b = base(caller), base(callee)
        if a == b:
            continue
        if callers and r.search(b):
            acc[a] += n
        elif not callers and r.search(a):
            acc[b] += n
    word = "Callers of" if callers else "Calls made by"
    print(f"\n{word} `{pattern}` (inclusive Ir per admission):\n")
    print("| Ir per admission | function |")
    print("|---|---|")
    for f, n in acc.most_common(top):
        print(f"| {n / requests:,.0f} | `{f[:120]}` |")


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path, requests = args[0], int(args[1])
    top = int(args[2]) if len(args) > 2 else 25
    cost, edges, total, code_lines = parse(path)
    measured = sum(cost.values())
    by_area = collections.Counter()
    for (ob, fl, fn), n in cost.items():
        by_area[area(ob, fl, fn)] += n
    print(f"{measured / requests:,.0f} instructions per admission "
          f"({measured:,} over {requests:,} admissions"
          + (f"; callgrind's total {total:,}" if total else "") + ")\n")
    if code_lines:
        hot = sum(1 for n in code_lines.values() if n >= requests)
        print(f"Code touched: {64 * hot / 1024:,.0f} KiB of 64-byte lines executing at least "
              f"one instruction per admission on average, {64 * len(code_lines) / 1024:,.0f} "
              f"KiB in all (connection set-up included)\n")
    print("| area | Ir per admission | share |")
    print("|---|---|---|")
    for a, n in by_area.most_common():
        print(f"| {a} | {n / requests:,.0f} | {100 * n / measured:.1f}% |")
    print(f"\nTop {top} (object, source file, function) by self cost:\n")
    print("| Ir per admission | share | where |")
    print("|---|---|---|")
    for (ob, fl, fn), n in cost.most_common(top):
        fl = re.sub(r"^.*/(registry/src/[^/]+|rustc/[0-9a-f]+)/", "", fl)
        print(f"| {n / requests:,.0f} | {100 * n / measured:.1f}% | `{fn[:90]}` ({fl or ob.rsplit('/', 1)[-1]}) |")
    for a in sys.argv[1:]:
        if a.startswith("--callers="):
            neighbours(edges, requests, a.split("=", 1)[1], True)
        elif a.startswith("--callees="):
            neighbours(edges, requests, a.split("=", 1)[1], False)


if __name__ == "__main__":
    main()
