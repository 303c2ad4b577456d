"""Flags and parsers several subcommands share (no heavy imports)."""

from __future__ import annotations

import argparse

from nann_tf.cli import CliError

__all__ = ["add_search_arguments", "search_overrides", "parse_positive_list"]

EF_HELP = "beam width per level, LEVEL=VALUE,... e.g. 2=100,1=200,0=400"
T_HELP = "max rounds per level below the start level, LEVEL=VALUE,... e.g. 1=2,0=4"


def add_search_arguments(group, *, hnsw: bool = False, k: bool = True) -> None:
    """``--start-level --ef --T [-k] [--hnsw-ef] --history-seeds``: overrides of the model
    config's ``[search]`` table, read by :meth:`nann_tf.search.params.SearchParams.overridden`
    and checked by its rules (the same everywhere)."""
    group.add_argument("--start-level", type=int, help="Beam-retrieval start level S")
    group.add_argument("--ef", help=EF_HELP)
    group.add_argument("--T", dest="T", help=T_HELP)
    if k:
        group.add_argument("-k", "--k", type=int, dest="k", help="items returned per query")
    if hnsw:
        group.add_argument("--hnsw-ef", type=int, help="HNSW-retrieval's level-0 beam ef0")
    group.add_argument("--history-seeds", action=argparse.BooleanOptionalAction, default=None,
                       help="seed each query's beam search with its own history items (default: "
                            "the config's search.history_seeds)")


def search_overrides(args: argparse.Namespace) -> dict:
    """The search flags of :func:`add_search_arguments` as keyword arguments of
    ``SearchParams.overridden`` (absent flags are None: keep the config's value). ``--ef`` and
    ``--T`` are parsed here, so a malformed value fails before anything loads.

    Raises:
      SearchParamsError: naming ``--ef`` or ``--T``.
    """
    from nann_tf.search.params import level_values

    out = {key: getattr(args, key, None)
           for key in ("start_level", "ef", "T", "k", "hnsw_ef", "history_seeds")}
    for key, minimum in (("ef", 1), ("T", 0)):
        if out[key] is not None:
            out[key] = level_values(out[key], f"--{key}", minimum=minimum)
    return out


def parse_positive_list(text: str, name: str, kind=int) -> list:
    """``"50,200"`` -> ``[50, 200]``; every value > 0, else a CliError naming ``name``."""
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        example = "50,200" if kind is int else "0.5,1,2"
        raise CliError(f"{name} {text!r}: expected comma-separated positive numbers, "
                       f"e.g. {example}")
    return values
