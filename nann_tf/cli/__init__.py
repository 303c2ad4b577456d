"""The ``nann-tf`` command line.

Each subcommand is one module of this package exposing ``add_arguments(parser)`` and
``run(args)``: argparse -> a library call -> print. ``COMMANDS`` maps the subcommand name to
that module and a one-line description. Argument definitions import nothing heavy, so
``nann-tf --help`` stays fast (no TensorFlow import); a subcommand module that fails to import
is an error naming it, never a missing entry.

The library never imports this package. Its errors a user can fix derive from
:class:`nann_tf.errors.UserError` and are printed here as ``nann-tf <cmd>: error: <message>``
(exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from nann_tf.errors import UserError, input_names

__all__ = ["main", "build_parser", "flag_names", "COMMANDS", "CliError", "CommandImportError"]

# name -> (module, help). Order is the pipeline order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("nann_tf.cli.synth", "write a synthetic UserBehavior-format behaviour log"),
    "prepare": ("nann_tf.cli.prepare", "behaviour log -> dataset directory"),
    "train": ("nann_tf.cli.train", "train the NANN model (NCE + FGSM), validated, early "
                                   "stopping"),
    "search-config": ("nann_tf.cli.search_config", "a model search on your log within a "
                                                   "time budget -> the best config (TOML)"),
    "build-index": ("nann_tf.cli.build_index", "item embeddings + HNSW levels"),
    "update-index": ("nann_tf.cli.update_index", "launch and retire items in an index, "
                                                 "without training or rebuilding"),
    "evaluate": ("nann_tf.cli.evaluate", "recall / coverage of brute force and graph search"),
    "tune": ("nann_tf.cli.tune", "cheapest beam parameters meeting a coverage target"),
    "export": ("nann_tf.cli.export", "write a TF Serving SavedModel version"),
    "serve": ("nann_tf.cli.serve", "local gRPC server with TF Serving's API"),
    "query": ("nann_tf.cli.query", "send a gRPC Predict request"),
    "validate": ("nann_tf.cli.validate", "load an exported version as TF Serving does (C API "
                                         "or session loader) and check every signature"),
    "demo": ("nann_tf.cli.demo", "the whole pipeline on generated data"),
}


# Library parameters whose flag is named otherwise (the rest match their flag's dest).
PARAM_DESTS = {"model_dir": "model", "index_dir": "index", "data_dir": "data",
               "base_dir": "output", "output_dir": "output", "ef_values": "ef_grid",
               "t_values": "T_grid", "warm_start_from": "warm_start", "num_threads": "threads",
               "study_dir": "study", "validation_users": "users"}


def flag_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """Library parameter -> flag while ``command`` runs (its long option, e.g. ``index_dir`` ->
    ``--index``), for the library's error messages (:func:`nann_tf.errors.arg`). A parameter
    of another command (``val_users`` while training: "prepare it with --val-users N") takes
    that command's flag."""
    by_dest: dict[str, str] = {}
    subparsers = next(a for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction)).choices
    for name in [*(n for n in subparsers if n != command), command]:  # command's own last
        for action in subparsers[name]._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs and action.dest != "help" and (name == command or
                                                    action.dest not in by_dest):
                by_dest[action.dest] = longs[0]
    names = dict(by_dest)
    for param, dest in PARAM_DESTS.items():
        if dest in by_dest:
            names[param] = by_dest[dest]
    if "similar_ef" in by_dest:  # export_version(similar={...}): the --similar-* flags
        names["similar"] = "--similar-* flags"
    return names


class CliError(UserError):
    """A bad command line: printed as ``nann-tf <cmd>: error: <message>``, exit status 2."""


class CommandImportError(ImportError):
    """A subcommand's module failed to import (a broken install): names the module."""


def _command_module(name: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CommandImportError(f"nann-tf {name}: its module {module} failed to import ({e}); "
                                 "the installation is broken: reinstall nann-tf") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nann-tf",
        description="Retrieval under a neural similarity metric (NANN) on TensorFlow.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (mod, helptext) in COMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.set_defaults(_module=mod)
        # Argument definitions are cheap modules without heavy imports at top level.
        _command_module(name, mod).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
    except CommandImportError as e:
        print(f"nann-tf: error: {e}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(args._module)
    try:
        with input_names(flag_names(parser, args.command)):
            rc = module.run(args)
    except UserError as e:
        print(f"nann-tf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nann-tf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
