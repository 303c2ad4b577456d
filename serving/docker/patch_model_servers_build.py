#!/usr/bin/env python3
"""Adds a Bazel label to SUPPORTED_TENSORFLOW_OPS in tensorflow_serving/model_servers/BUILD.

TF Serving links custom ops statically: the documented procedure
(tensorflow_serving/g3doc/custom_op.md) is to append the op's cc_library (alwayslink = 1) to
the SUPPORTED_TENSORFLOW_OPS list, which the server_lib target depends on. The list is an
expression ending in a list literal whose closing bracket sits alone at column 0; the label is
inserted just before that bracket. Running it twice changes nothing.

Usage: patch_model_servers_build.py <path/to/model_servers/BUILD> <//package:target>
"""

import re
import sys


def patch(text: str, label: str) -> str:
    """Returns ``text`` with ``label`` appended to SUPPORTED_TENSORFLOW_OPS.

    Raises:
        ValueError: the assignment or the end of its list was not found, or a bad label.
    """
    if not re.fullmatch(r"//[\w/.-]*:[\w.-]+", label):
        raise ValueError(f"not a Bazel label of this workspace: {label!r}")
    start = re.search(r"^SUPPORTED_TENSORFLOW_OPS\s*=", text, re.M)
    if start is None:
        raise ValueError("no 'SUPPORTED_TENSORFLOW_OPS =' assignment found")
    end = re.compile(r"^\]\s*$", re.M).search(text, start.end())
    if end is None:
        raise ValueError("the SUPPORTED_TENSORFLOW_OPS list has no closing ']' at column 0")
    block = text[start.start():end.start()]
    if f'"{label}"' in block:
        return text
    return text[:end.start()] + f'    "{label}",\n' + text[end.start():]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    path, label = argv[1], argv[2]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        patched = patch(text, label)
    except ValueError as e:
        print(f"{path}: cannot add {label} to SUPPORTED_TENSORFLOW_OPS: {e}", file=sys.stderr)
        return 1
    if patched != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(patched)
        print(f"{path}: added {label} to SUPPORTED_TENSORFLOW_OPS")
    else:
        print(f"{path}: {label} already in SUPPORTED_TENSORFLOW_OPS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
