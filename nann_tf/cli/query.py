"""``nann-tf query``: one gRPC Predict request to TF Serving (or ``nann-tf serve``).

No TensorFlow import at module level: ``nann-tf --help`` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

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
    r = parser.add_argument_group("business rules (the retrieve and similar_items signatures; "
                                  "raw label ids as in the log and the export's item table)")
    r.add_argument("--only-categories", metavar="ID,...",
                   help="return only items of these categories (or of --only-tags)")
    r.add_argument("--exclude-categories", metavar="ID,...",
                   help="never return items of these categories")
    r.add_argument("--only-tags", metavar="ID,...",
                   help="return only items carrying one of these tags (or of --only-categories)")
    r.add_argument("--exclude-tags", metavar="ID,...",
                   help="never return items carrying one of these tags")
    r.add_argument("--max-per-category", type=int, default=None, metavar="N",
                   help="at most N results per category (backfilled from the next best)")
    r.add_argument("--explain", action="store_true",
                   help="with --history: for each result, the history item the model attends to "
                        "most (retrieve_explained: 'because you viewed')")
    parser.add_argument("--json", action="store_true",
                        help="print the response as one JSON object (item_ids, scores, "
                             "num_scored and every other output), for scripts")
    parser.add_argument("--signature", default=None,
                        help="signature to call (default serving_default; retrieve when "
                        "--ef/--T/--exclude are given)")
    parser.add_argument("--version", type=int, default=None,
                        help="a specific model version (default: the latest served)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="RPC deadline in seconds (default 10)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS until the model has a version AVAILABLE "
                             "(a server still loading or warming up; for scripts); default 0: "
                             "ask at once")


def _rules(args) -> dict:
    """The rule flags as client arguments (label lists of ints)."""
    from nann_tf.cli import CliError

    out = {}
    for flag, name in (("only_categories", "include_categories"),
                       ("exclude_categories", "exclude_categories"),
                       ("only_tags", "include_tags"), ("exclude_tags", "exclude_tags")):
        text = getattr(args, flag)
        if text is not None:
            out[name] = parse_id_list(text, "--" + flag.replace("_", "-"))
    if args.max_per_category is not None:
        if args.max_per_category < 0:
            raise CliError(f"--max-per-category must be >= 0 (0: no cap), got "
                           f"{args.max_per_category}")
        out["max_per_category"] = args.max_per_category
    return out


def run(args: argparse.Namespace) -> int:
    """Sends the request and prints the ranking."""
    from nann_tf.cli import CliError
    from nann_tf.serving.client import RetrievalClient, ServingError

    if args.timeout <= 0:
        raise CliError(f"--timeout must be > 0, got {args.timeout}")
    if args.k is not None and args.k < 1:
        raise CliError(f"-k must be >= 1, got {args.k}")
    rules = _rules(args)
    if args.wait < 0:
        raise CliError(f"--wait must be >= 0 seconds, got {args.wait}")
    if args.wait:
        with RetrievalClient(args.server, args.model, timeout_s=args.timeout) as client:
            try:
                client.wait_until_ready(args.wait)
            except TimeoutError as e:
                raise CliError(f"--wait {args.wait:g}: {e}") from None
    if args.similar_to is not None:
        return _run_similar(args, rules)
    if args.include_seeds:
        raise CliError("--include-seeds goes with --similar-to")
    overrides = search_overrides(args)  # parses --ef/--T before any RPC
    ef, T = overrides["ef"], overrides["T"]
    if (ef is None) != (T is None):
        raise CliError("--ef and --T go together (every level of the served model); give both, "
                       "or neither for the export's defaults")
    search_params = ef is not None or args.exclude is not None or bool(rules) or args.explain
    signature = args.signature or ("retrieve_explained" if args.explain else
                                   "retrieve" if search_params else "serving_default")
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
            if signature in ("retrieve", "retrieve_explained"):
                out = client.retrieve([history], k=args.k, ef=ef, T=T,
                                      exclude_item_ids=exclude or [], signature=signature,
                                      version=args.version, full=True, **rules)
            else:
                out = client.retrieve([history], signature=signature, version=args.version,
                                      full=True)
        except ServingError as e:
            raise CliError(f"{e.code.name}: {e.details}") from None
        except ValueError as e:
            raise CliError(str(e)) from None
    k = args.k if signature not in ("retrieve", "retrieve_explained") else None
    if k is not None and k > int((out["item_ids"][0] != ("" if string else 0)).sum()):
        print(f"note: the model returned fewer items (its default k); -k {k} with --ef/--T or a "
              "rule uses the retrieve signature", file=sys.stderr)
    _report(args, signature, out, string, k)
    return 0


def _report(args, signature: str, out: dict, string: bool, k: int | None = None) -> None:
    """Prints the first row of a response: a table, or one JSON object (``--json``)."""
    import json

    ids = out["item_ids"][0]
    keep = ids != ("" if string else 0)  # rows shorter than k are padded with id 0 (or "")
    if k is not None:
        keep &= np.cumsum(keep) <= k
    row = {name: np.asarray(v)[0][keep] if np.ndim(v) == 2 else np.asarray(v)[0]
           for name, v in out.items()}
    if args.json:
        def plain(v):
            v = np.asarray(v)
            if v.dtype.kind in "US":
                return v.astype(str).tolist()
            if v.dtype.kind == "O":
                return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
            return v.tolist()

        print(json.dumps({"model": args.model, "signature": signature,
                          **{name: plain(v) for name, v in row.items()}}))
        return
    _print_ranking(args.model, signature, row["item_ids"], row["scores"],
                   out.get("num_scored"), row)


def _print_ranking(model, signature, ids, vals, num_scored, row=None) -> None:
    row = row or {}
    scored = f", {int(num_scored[0])} items scored" if num_scored is not None else ""
    path = {0: ", walked the graph", 1: ", scored the filter's items exactly"}.get(
        int(row["search_path"])) if "search_path" in row else ""
    print(f"model {model} signature {signature}: {ids.size} items{scored}{path or ''}")
    shown = [str(i) if ids.dtype.kind == "U" else str(int(i)) for i in ids]
    width = max([12] + [len(i) for i in shown])
    because = row.get("because_item_ids")
    extra = f"  {'because you viewed':>18}  {'weight':>7}" if because is not None else ""
    print(f"{'rank':>4}  {'item_id':>{width}}  {'score':>12}{extra}")
    for rank, (i, s) in enumerate(zip(shown, vals), start=1):
        line = f"{rank:>4}  {i:>{width}}  {float(s):>12.6f}"
        if because is not None:
            line += f"  {str(because[rank - 1]):>18}  {float(row['because_weights'][rank - 1]):>7.3f}"
        print(line)


def _run_similar(args: argparse.Namespace, rules: dict) -> int:
    """``--similar-to``: one similar_items / similar_items_model request."""
    from nann_tf.cli import CliError
    from nann_tf.serving.client import RetrievalClient, ServingError

    if args.explain:
        raise CliError("--explain goes with --history (the retrieve_explained signature)")
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
            out = client.similar_items(
                seeds, k=args.k, exclude_item_ids=exclude, include_seeds=args.include_seeds,
                mode=args.similar_mode, version=args.version, full=True, **rules)
        except ServingError as e:
            raise CliError(f"{e.code.name}: {e.details}") from None
        except ValueError as e:
            raise CliError(str(e)) from None
    if not (out["item_ids"][0] != ("" if string else 0)).any() and not rules:
        print(f"note: none of {', '.join(map(str, seeds))} is an item of the model "
              "(unknown ids are ignored)", file=sys.stderr)
    _report(args, signature, out, string)
    return 0
