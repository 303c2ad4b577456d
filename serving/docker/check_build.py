#!/usr/bin/env python3
"""Checks the Dockerfile's build stage runs, so that a wrong image fails the build, not a deploy.

  check_build.py versions SERVING_SRC TF_SRC EXPECTED
      The TensorFlow source the Serving tree builds against (TF_SRC, the fetched
      @org_tensorflow: tensorflow/core/public/version.h) must be EXPECTED's major.minor
      (e.g. 2.21.0 -> 2.21): a -devel image built from another Serving commit than its tag
      says (its default is master, tensorflow/serving#2153) fails here, before hours of
      compiling. The Serving tree's own version (tensorflow_serving/model_servers/version.h) is
      checked too when it names a release; trees built from a tarball often say 0.0.0.

  check_build.py server BINARY OPS_SRC EXPECTED
      The built tensorflow_model_server: `--version` must report TensorFlow Library EXPECTED's
      major.minor, and every op that OPS_SRC (a directory of .cc files) registers with
      REGISTER_OP must be in the binary: the op name is a string constant of the registration,
      so it is in the file exactly when the registration was linked (alwayslink).

Exit status 0 when every check passes, 1 with a message naming the file and what was expected
otherwise, 2 on bad usage. Python 3 standard library only (the -devel images have Python 3).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

SERVING_VERSION_H = os.path.join("tensorflow_serving", "model_servers", "version.h")
TF_VERSION_H = os.path.join("tensorflow", "core", "public", "version.h")
FIX = ("build the -devel image at the matching release commit, or pick the matching "
       "TF_SERVING_VERSION (serving/README.md, 'Which TF Serving release')")


class CheckError(Exception):
    pass


def major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version.strip())
    if not m:
        raise CheckError(f"expected a version such as 2.21.0, got {version!r}")
    return int(m.group(1)), int(m.group(2))


def _defines(path: str, names: list[str]) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise CheckError(f"{path}: cannot read it ({e.strerror})") from None
    out = {}
    for name in names:
        m = re.search(rf"^#define\s+{name}\s+(\S+)", text, re.M)
        if m is None:
            raise CheckError(f"{path}: no '#define {name}' (not the file expected here)")
        out[name] = m.group(1).strip('"')
    return out


def check_versions(serving_src: str, tf_src: str, expected: str) -> list[str]:
    """Returns what was found; raises CheckError on a mismatch."""
    want = major_minor(expected)
    tf_h = os.path.join(tf_src, TF_VERSION_H)
    d = _defines(tf_h, ["TF_MAJOR_VERSION", "TF_MINOR_VERSION", "TF_PATCH_VERSION"])
    tf = (int(d["TF_MAJOR_VERSION"]), int(d["TF_MINOR_VERSION"]))
    tf_text = f"{tf[0]}.{tf[1]}.{d['TF_PATCH_VERSION']}"
    if tf != want:
        raise CheckError(f"{tf_h}: the Serving tree builds against TensorFlow {tf_text}, expected "
                         f"{want[0]}.{want[1]} (models are exported with TensorFlow "
                         f"{want[0]}.{want[1]}); {FIX}")
    found = [f"TensorFlow source {tf_text} ({tf_h})"]
    sv_h = os.path.join(serving_src, SERVING_VERSION_H)
    s = _defines(sv_h, ["TF_MODELSERVER_MAJOR_VERSION", "TF_MODELSERVER_MINOR_VERSION"])
    sv = (int(s["TF_MODELSERVER_MAJOR_VERSION"]), int(s["TF_MODELSERVER_MINOR_VERSION"]))
    if sv != (0, 0) and sv != want:
        raise CheckError(f"{sv_h}: the Serving source is {sv[0]}.{sv[1]}, expected "
                         f"{want[0]}.{want[1]}; {FIX}")
    found.append(f"Serving source {sv[0]}.{sv[1]} ({sv_h}"
                 f"{': unstamped, not checked' if sv == (0, 0) else ''})")
    return found


def registered_ops(ops_src: str) -> list[str]:
    """The op names REGISTER_OP'd in the .cc files under ``ops_src``."""
    names = []
    for root, _, files in os.walk(ops_src):
        for name in sorted(files):
            if name.endswith(".cc"):
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    names += re.findall(r'REGISTER_OP\(\s*"(\w+)"\s*\)', f.read())
    if not names:
        raise CheckError(f"{ops_src}: no REGISTER_OP(\"...\") in any .cc file")
    return sorted(set(names))


def check_ops_in_binary(binary: str, ops: list[str]) -> None:
    try:
        with open(binary, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckError(f"{binary}: cannot read it ({e.strerror})") from None
    missing = [op for op in ops if op.encode() + b"\0" not in data]
    if missing:
        raise CheckError(f"{binary}: the ops {', '.join(missing)} are not in the server binary: "
                         f"the op library was not linked in (is its cc_library in "
                         f"SUPPORTED_TENSORFLOW_OPS, with alwayslink = 1?)")


def check_server_version(binary: str, expected: str) -> str:
    want = major_minor(expected)
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CheckError(f"{binary} --version: did not run ({e})") from None
    m = re.search(r"TensorFlow Library:\s*(\S+)", out)
    if m is None:
        raise CheckError(f"{binary} --version printed no 'TensorFlow Library:' line: {out!r}")
    if major_minor(m.group(1)) != want:
        raise CheckError(f"{binary}: built with TensorFlow {m.group(1)}, expected "
                         f"{want[0]}.{want[1]}; {FIX}")
    return " / ".join(line.strip() for line in out.splitlines() if line.strip())


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 5 and argv[1] == "versions":
            for line in check_versions(argv[2], argv[3], argv[4]):
                print(f"ok: {line}")
            return 0
        if len(argv) == 5 and argv[1] == "server":
            ops = registered_ops(argv[3])
            check_ops_in_binary(argv[2], ops)
            print(f"ok: {argv[2]} holds the ops {', '.join(ops)}")
            print(f"ok: {check_server_version(argv[2], argv[4])}")
            return 0
    except CheckError as e:
        print(f"check_build.py {argv[1]}: {e}", file=sys.stderr)
        return 1
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
