"""``nann-tf validate VERSION_DIR [--loader {cc,python}]``: load an exported version the way
TF Serving does, replay its warm-up records and run every signature on them.

``cc`` (the default) loads it with ``nann-tf-cc-loader``, a C program over TensorFlow's C API
with no Python in its process (the op library registered as the Docker image has it, none for a
``--visited tf`` export), and checks its answers bit for bit against the session loader in this
process; ``python`` uses only the session loader. See :mod:`nann_tf.export.cc_loader`.
"""

from __future__ import annotations

import argparse
import json

from nann_tf.cli import CliError

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("version_dir", help="an exported version, e.g. models/nann/3")
    p.add_argument("--loader", choices=["cc", "python"], default="cc",
                   help="cc: TensorFlow's C API, no Python in the process (default); python: "
                        "the TF1 session loader")
    p.add_argument("--output-json", help="also write the report to this JSON file")


def run(args: argparse.Namespace) -> int:
    from nann_tf.export.cc_loader import CcLoaderError, validate_version
    from nann_tf.fsutil import write_json_atomic

    try:
        report = validate_version(args.version_dir, args.loader)
    except CcLoaderError as e:
        raise CliError(f"{args.version_dir}: {e}") from e
    print(json.dumps(report))
    if args.output_json:
        write_json_atomic(args.output_json, report)
    return 0
