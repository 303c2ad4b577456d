"""The ``nann-tf`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args)``;
``COMMANDS`` maps the subcommand name to that module and a one-line description. Modules are
imported only when their command runs, so ``nann-tf --help`` stays fast (no TensorFlow import).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "COMMANDS", "CliError"]

# name -> (module, help). Order is the pipeline order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("nann_tf.data.synth_cli", "write a synthetic UserBehavior-format behaviour log"),
    "prepare": ("nann_tf.data.prepare_cli", "behaviour log -> dataset directory"),
    "train": ("nann_tf.train_cli", "train the NANN model (NCE + FGSM)"),
    "build-index": ("nann_tf.index.cli", "item embeddings + HNSW levels"),
    "evaluate": ("nann_tf.evaluate_cli", "recall / coverage of brute force and graph search"),
    "tune": ("nann_tf.search.tune_cli", "cheapest beam parameters meeting a coverage target"),
    "export": ("nann_tf.export.cli", "write a TF Serving SavedModel version"),
    "serve": ("nann_tf.serving.server_cli", "local gRPC server with TF Serving's API"),
    "query": ("nann_tf.serving.query_cli", "send a gRPC Predict request"),
    "demo": ("nann_tf.demo_cli", "the whole pipeline on generated data"),
}


class CliError(Exception):
    """A user-facing error: printed as ``nann-tf <cmd>: error: <message>``, exit status 2."""


def _available() -> dict[str, tuple[str, str]]:
    import importlib.util

    out = {}
    for name, (mod, helptext) in COMMANDS.items():
        try:
            if importlib.util.find_spec(mod) is not None:
                out[name] = (mod, helptext)
        except ModuleNotFoundError:
            pass
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nann-tf",
        description="Retrieval under a neural similarity metric (NANN) on TensorFlow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (mod, helptext) in _available().items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=mod)
        # Argument definitions are cheap modules without heavy imports at top level.
        importlib.import_module(mod).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        rc = module.run(args)
    except CliError as e:
        print(f"nann-tf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nann-tf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
