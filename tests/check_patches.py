#!/usr/bin/env python3
"""Independent checks of rayshape-webhook's output, with tools that share no code with it.

For every fixture (tests/fixtures/kuberay, apiserver, pods, crds) under every configuration
(built-in, tests/fixtures/configs/*):
  * `mutate -o patch`, applied to the input by `jsonpatch` (strict RFC 6902), gives exactly
    the object `mutate -o object` prints;
  * `mutate -o review` carries the request's uid, the same patch in base64, and warnings of
    at most 120 characters; a denial carries a status with a message;
  * a shaped Pod passes `kubernetes-validate --strict` for Kubernetes 1.30 and for the
    newest version the tool knows.
For every case of the property-test corpus (JSON lines of input, patch, shaped), the patch
applies strictly and gives the shaped object.

Usage: check_patches.py BINARY [CORPUS]. Prints one line per failure and closes with
"N passed, M failed"; exits 1 if anything failed.
"""

import base64
import copy
import json
import pathlib
import subprocess
import sys

import jsonpatch
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]

passed = 0
failed = 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}", flush=True)


def mutate(binary, fixture, config, output):
    args = [binary, "mutate", "-f", str(fixture), "-o", output, "--format", "json"]
    if config:
        args += ["--config", str(config)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def load(fixture):
    text = fixture.read_text()
    return json.loads(text) if fixture.suffix == ".json" else yaml.safe_load(text)


def validate(obj, what):
    obj = copy.deepcopy(obj)
    # The API server names a generateName pod after admission; the schema wants a name.
    obj.setdefault("metadata", {}).setdefault("name", obj["metadata"].get("generateName", "x") + "check")
    for v in VERSIONS:
        try:
            kubernetes_validate.validate(obj, v, strict=True)
            check(True, what)
        except Exception as e:  # noqa: BLE001 - any validation failure is a failure
            check(False, f"{what}: Kubernetes {v} schema: {str(e).splitlines()[0]}")


def strict_apply(doc, ops, what):
    try:
        return jsonpatch.JsonPatch(ops).apply(copy.deepcopy(doc))
    except Exception as e:  # noqa: BLE001
        check(False, f"{what}: patch does not apply strictly: {e}")
        return None


def fixtures():
    out = []
    for d in ["tests/fixtures/kuberay", "tests/fixtures/apiserver", "tests/fixtures/pods", "tests/fixtures/crds"]:
        out += sorted(p for p in (ROOT / d).iterdir() if p.suffix in (".json", ".yaml"))
    return out


def configs():
    out = [("builtin", None)]
    for d in sorted((ROOT / "tests/fixtures/configs").iterdir()):
        if d.name != "broken":
            out.append((d.name, d))
    return out


def check_fixture(binary, fixture, cname, config):
    what = f"{cname}/{fixture.name}"
    doc = load(fixture)
    is_review = doc.get("kind") == "AdmissionReview"
    original = doc["request"]["object"] if is_review else doc
    code_o, out_o, err_o = mutate(binary, fixture, config, "object")
    code_p, out_p, _ = mutate(binary, fixture, config, "patch")
    code_r, out_r, _ = mutate(binary, fixture, config, "review")
    check(code_o == code_p == code_r and code_o in (0, 1), f"{what}: exit codes {code_o}/{code_p}/{code_r}: {err_o}")
    review = json.loads(out_r)["response"]
    if is_review:
        check(review["uid"] == doc["request"]["uid"], f"{what}: uid not echoed")
    check(all(len(w) <= 120 for w in review.get("warnings", [])), f"{what}: a warning over 120 characters")
    if code_o == 1:
        check(review["allowed"] is False and review["status"]["message"], f"{what}: denial without a message")
        return
    shaped = json.loads(out_o)
    ops = json.loads(out_p)
    applied = strict_apply(original, ops, what)
    check(applied == shaped, f"{what}: patch result differs from the printed object")
    sent = json.loads(base64.b64decode(review["patch"])) if "patch" in review else []
    check(sent == ops, f"{what}: the review's patch differs from --output patch")
    check(("patch" in review) == (review.get("patchType") == "JSONPatch"), f"{what}: patchType without patch or the reverse")
    if shaped.get("kind") == "Pod":
        # kubernetes-validate knows the built-in kinds only, not KubeRay's CRDs.
        validate(shaped, what)


def check_corpus(path):
    n = 0
    for line in open(path):
        case = json.loads(line)
        n += 1
        applied = strict_apply(case["input"], case["patch"], f"corpus case {n}")
        if applied is not None:
            check(applied == case["shaped"], f"corpus case {n}: patch result differs")
        if n % 10 == 0:
            validate(case["shaped"], f"corpus case {n}")
    check(n > 100, f"corpus has only {n} cases")


def main():
    binary = sys.argv[1]
    for cname, config in configs():
        for fixture in fixtures():
            check_fixture(binary, fixture, cname, config)
    if len(sys.argv) > 2:
        check_corpus(sys.argv[2])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
