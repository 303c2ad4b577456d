"""``nann-tf query``: one gRPC Predict request to TF Serving (or ``nann-tf serve``).

No TensorFlow import at module level: ``nann-tf --help`` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import sys

from nann_tf.cli.common import search_overrides

__all__ = ["add_arguments", "run", "parse_id_list", "parse_ids"]


def parse_ids(text: str, name: str, string: bool) -> list:
    """The ids of a flag for a model with string item ids (``string``: comma-separated, each
    stripped of surrounding spaces, empty = none; ids cannot hold a comma here) or integer ones
    (:func:`parse_id_list`)."""
    if not string:
        return parse_id_list(text, name)
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_id_list(text: str, name: str) -> list[int]:
    """Parses ``"12,34,56"`` (spaces allowed, empty = no ids) into ints.

    Raises:
        nann_tf.cli.CliError: a token that is not an integer.
    """
    from nann_tf.cli import CliError

    out = []
    for token in text.replace(" ", ",").split(","):
        if not token:
            continue
        try:
            out.append(int(token))
        except ValueError:
            raise CliError(f"{name}: {token!r} is not an integer id (expected e.g. 12,34,56)"
                           ) from None
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``nann-tf query``'s flags."""
    parser.description = (
        "Send one retrieval request over gRPC to TensorFlow Serving or `nann-tf serve` and "
        "print the ranked item ids and scores. The history is raw item ids, oldest first; it "
        "is left-padded with 0 to the model's history length L (read from the model's "
        "signature metadata).")
    parser.add_argument("--server", default="localhost:8500",
                        help="HOST:PORT of the gRPC port (default localhost:8500)")
    parser.add_argument("--model", required=True, help="model name")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--history",
                      help="items-to-user: comma-separated raw item ids, most recent last, "
                      "e.g. 12,34,56 (a model exported from string item ids takes strings: "
                      "SKU-1,SKU-2; the served signature's dtype decides)")
    what.add_argument("--similar-to", metavar="ID[,ID...]",
                      help="items-to-item: items similar to these raw item ids (the "
                      "similar_items signatures; the seeds themselves are not returned); "
                      "integers or strings as --history")
    parser.add_argument("--similar-mode", choices=["embedding", "model"], default="embedding",
                        help="with --similar-to: nearest in the item embedding space "
                        "(similar_items, default) or by the model's score with the seeds as "
                        "the history (similar_items_model)")
    parser.add_argument("--include-seeds", action="store_true",
                        help="with --similar-to: the seed items may be returned too")
    parser.add_argument("-k", type=int, default=None,
                        help="number of results; sent to the model with the retrieve signature, "
                        "otherwise the first k of the model's answer are printed")
    parser.add_argument("--ef", default=None,
                        help="beam width per level, LEVEL=VALUE,... e.g. 2=100,1=200,0=400 "
                        "(selects the retrieve signature)")
    parser.add_argument("--T", dest="T", default=None,
                        help="max rounds per level below the start level, LEVEL=VALUE,... e.g. "
                        "1=2,0=4 (with --ef)")
    parser.add_argument("--exclude", default=None,
                        help="comma-separated raw item ids never to return (retrieve signature)")
    parser.add_argument("--signature", default=None,
                        help="signature to call (default serving_default; retrieve when "
                        "--ef/--T/--exclude are given)")
    parser.add_argument("--version", type=int, default=None,
                        help="a specific model version (default: the latest served)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="RPC deadline in seconds (default 10)")


def run(args: argparse.Namespace) -> int:
    """Sends the request and prints the ranking."""
    from nann_tf.cli import CliError
    from nann_tf.serving.client import RetrievalClient, ServingError

    if args.timeout <= 0:
        raise CliError(f"--timeout must be > 0, got {args.timeout}")
    if args.k is not None and args.k < 1:
        raise CliError(f"-k must be >= 1, got {args.k}")
    if args.similar_to is not None:
        return _run_similar(args)
    if args.include_seeds:
        raise CliError("--include-seeds goes with --similar-to")
    overrides = search_overrides(args)  # parses --ef/--T before any RPC
    ef, T = overrides["ef"], overrides["T"]
    search_params = ef is not None or T is not None or args.exclude is not None
    signature = args.signature or ("retrieve" if search_params else "serving_default")
    with RetrievalClient(args.server, args.model, signature_name=signature,
                         timeout_s=args.timeout, retries=1) as client:
        try:
            # Integer or string ids: as the served signature takes them.
            string = client.item_id_type(signature, args.version) == "string"
            history = parse_ids(args.history, "--history", string)
            exclude = (parse_ids(args.exclude, "--exclude", string) if args.exclude is not None
                       else None)
            length = client.history_length(signature, args.version)
            if length is not None and len(history) > length:
                print(f"note: the history has {len(history)} items and the model takes "
                      f"L={length}; sending the most recent {length}", file=sys.stderr)
                history = history[-length:]
            if signature == "retrieve":
                if ef is None or T is None or args.k is None:
                    raise CliError("the retrieve signature needs -k, --ef and --T (e.g. -k 20 "
                                   "--ef 2=100,1=200,0=400 --T 1=2,0=4)")
                item_ids, scores, num_scored = client.retrieve(
                    [history], k=args.k, ef=ef, T=T, exclude_item_ids=exclude or [],
                    signature=signature, version=args.version)
            else:
                item_ids, scores, num_scored = client.retrieve(
                    [history], signature=signature, version=args.version)
        except ServingError as e:
            raise CliError(f"{e.code.name}: {e.details}") from None
        except ValueError as e:
            raise CliError(str(e)) from None
    ids, vals = item_ids[0], scores[0]
    keep = ids != ("" if string else 0)  # rows shorter than k are padded with id 0 (or "")
    ids, vals = ids[keep], vals[keep]
    if args.k is not None and signature != "retrieve":
        if args.k > ids.size:
            print(f"note: the model returned {ids.size} items (its default k); -k {args.k} "
                  "needs the retrieve signature (--ef/--T)", file=sys.stderr)
        ids, vals = ids[:args.k], vals[:args.k]
    _print_ranking(args.model, signature, ids, vals, num_scored)
    return 0


def _print_ranking(model, signature, ids, vals, num_scored) -> None:
    scored = f", {int(num_scored[0])} items scored" if num_scored is not None else ""
    print(f"model {model} signature {signature}: {ids.size} items{scored}")
    shown = [str(i) if ids.dtype.kind == "U" else str(int(i)) for i in ids]
    width = max([12] + [len(i) for i in shown])
    print(f"{'rank':>4}  {'item_id':>{width}}  {'score':>12}")
    for rank, (i, s) in enumerate(zip(shown, vals), start=1):
        print(f"{rank:>4}  {i:>{width}}  {float(s):>12.6f}")


def _run_similar(args: argparse.Namespace) -> int:
    """``--similar-to``: one similar_items / similar_items_model request."""
    from nann_tf.cli import CliError
    from nann_tf.serving.client import RetrievalClient, ServingError

    for flag, value in (("--ef", args.ef), ("--T", args.T), ("--signature", args.signature)):
        if value is not None:
            raise CliError(f"{flag} does not go with --similar-to (the similar_items "
                           "signatures search with the export's [similar] parameters)")
    signature = "similar_items" if args.similar_mode == "embedding" else "similar_items_model"
    with RetrievalClient(args.server, args.model, timeout_s=args.timeout, retries=1) as client:
        try:
            string = client.item_id_type(signature, args.version) == "string"
            seeds = parse_ids(args.similar_to, "--similar-to", string)
            if not seeds:
                raise CliError("--similar-to: no item id given (expected e.g. 12 or 12,34)")
            exclude = (parse_ids(args.exclude, "--exclude", string) if args.exclude is not None
                       else None)
            item_ids, scores, num_scored = client.similar_items(
                seeds, k=args.k, exclude_item_ids=exclude, include_seeds=args.include_seeds,
                mode=args.similar_mode, version=args.version)
        except ServingError as e:
            raise CliError(f"{e.code.name}: {e.details}") from None
        except ValueError as e:
            raise CliError(str(e)) from None
    ids, vals = item_ids[0], scores[0]
    keep = ids != ("" if string else 0)
    if not keep.any():
        print(f"note: none of {', '.join(map(str, seeds))} is an item of the model "
              "(unknown ids are ignored)", file=sys.stderr)
    _print_ranking(args.model, signature, ids[keep], vals[keep], num_scored)
    return 0
