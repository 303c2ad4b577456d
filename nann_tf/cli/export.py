"""``nann-tf export``: write a TF Serving SavedModel version (validated, atomic)."""

from __future__ import annotations

import argparse

from nann_tf.cli import CliError

from nann_tf.cli.common import add_search_arguments, parse_positive_list, search_overrides

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory from `nann-tf train`")
    p.add_argument("--index", required=True, help="index directory from `nann-tf build-index`")
    p.add_argument("--output", required=True,
                   help="model base path, e.g. models/nann (versions go in numbered subdirs)")
    p.add_argument("--version", type=int, help="version number (default: the next one)")
    p.add_argument("--visited", choices=["bitmap", "tf"], default="bitmap",
                   help="bitmap: the C++ op (needs the custom TF Serving build); tf: stock ops "
                        "only (runs on the stock tensorflow/serving image)")
    p.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True,
                   help="XLA-compile the score network over a shape grid (TF Serving then "
                        "needs --xla_cpu_compilation_enabled / --xla_gpu_compilation_enabled)")
    p.add_argument("--embedding-dtype", choices=["float32", "float16"], default="float32")
    add_search_arguments(p.add_argument_group(
        "default search parameters of the served model (default: the model config's [search] "
        "table)"))
    g = p.add_argument_group("the similar_items signature's search (default: the model "
                             "config's [similar] table)")
    g.add_argument("--similar-ef", default=None,
                   help="beam width per level, LEVEL=VALUE,... e.g. 2=16,1=16,0=100")
    g.add_argument("--similar-T", dest="similar_T", default=None,
                   help="max rounds per level below the start level, e.g. 1=0,0=8")
    g.add_argument("--similar-k", type=int, default=None,
                   help="results per row when a request sends k = 0")
    p.add_argument("--max-ef", type=int, help="largest ef a request may ask for "
                                               "(default 2x the largest default ef)")
    p.add_argument("--grid-ratio", type=float, default=1.25, help="XLA shape-grid step")
    p.add_argument("--data", help="dataset dir for warm-up/validation histories (default: the "
                                  "one the model was trained on)")
    p.add_argument("--warmup-requests", help="TFRecord of PredictionLog (a request log) to "
                                             "replay at warm-up as well")
    p.add_argument("--warmup-batch-sizes", default="1,8,16",
                   help="batch sizes whose XLA shapes the warm-up compiles (match TF Serving's "
                        "allowed_batch_sizes when batching is on)")
    p.add_argument("--min-coverage", type=float, default=0.8,
                   help="refuse the export, before anything is saved, if coverage@k vs "
                        "brute force on the validation users is below this")
    p.add_argument("--model-name", help="model name in warm-up requests (default: output dir "
                                        "name)")
    f = p.add_argument_group("filters and request limits")
    f.add_argument("--item-tags", metavar="FILE",
                   help="an item table (CSV/TSV/Parquet) giving items integer tags to filter by")
    f.add_argument("--tag-columns", metavar="item=COL,tags=COL",
                   help="its item and tags columns (header names or 1-based positions)")
    f.add_argument("--tag-sep", default="|", help="separator of several tags in one field")
    f.add_argument("--limit", action="append", default=[], metavar="NAME=N",
                   help="a request limit (max_batch, max_exclude, max_filter_labels, "
                        "max_seeds), e.g. --limit max_exclude=50000")
    f.add_argument("--exact-max-items", type=int, default=None,
                   help="a filtered row whose include labels hold at most this many items is "
                        "scored exactly instead of walked (default: 7x the items the "
                        "default search scores, at least 2,048)")
    f.add_argument("--filter-entries", type=int, default=None,
                   help="a walked filter's extra entry points per row: its include labels' "
                        "most popular items, or the corpus's for a row that only excludes "
                        "(default 8192; 0: none)")
    p.add_argument("--validate-loader", choices=["python", "cc"], default="python",
                   help="cc: also load the version through TensorFlow's C API as "
                        "tensorflow_model_server does (nann-tf validate --loader cc) and require "
                        "bit-identical answers to every warm-up record")


def run(args: argparse.Namespace) -> int:
    from nann_tf.export.export import export_version

    overrides = search_overrides(args)  # parses --ef/--T before anything loads
    overrides.pop("hnsw_ef")
    limits = {}
    for item in args.limit:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise CliError(f"--limit {item!r}: expected NAME=N with N >= 1 (names: max_batch, "
                           "max_exclude, max_filter_labels, max_seeds)")
        limits[name.strip()] = int(value)
    from nann_tf.export.module import DEFAULT_LIMITS

    unknown = sorted(set(limits) - set(DEFAULT_LIMITS))
    if unknown:
        raise CliError(f"--limit {unknown[0]}: unknown limit (names: "
                       f"{', '.join(sorted(DEFAULT_LIMITS))})")
    if args.exact_max_items is not None and args.exact_max_items < 0:
        raise CliError(f"--exact-max-items {args.exact_max_items}: expected >= 0 (0: never)")
    if args.filter_entries is not None and args.filter_entries < 0:
        raise CliError(f"--filter-entries {args.filter_entries}: expected >= 0 (0: none)")
    info = export_version(
        args.model, args.index, args.output, version=args.version, visited=args.visited,
        xla=args.xla, embedding_dtype=args.embedding_dtype, **overrides,
        max_ef=args.max_ef, grid_ratio=args.grid_ratio, data_dir=args.data,
        warmup_requests=args.warmup_requests, min_coverage=args.min_coverage,
        model_name=args.model_name, validate_loader=args.validate_loader,
        similar={"ef": args.similar_ef, "T": args.similar_T, "k": args.similar_k},
        warmup_batch_sizes=parse_positive_list(args.warmup_batch_sizes, "--warmup-batch-sizes"),
        item_tags=args.item_tags, tag_columns=args.tag_columns, tag_sep=args.tag_sep,
        limits=limits, exact_max_items=args.exact_max_items,
        filter_entries=args.filter_entries)
    v = info["validation"]
    print(f"exported {args.output}/{info['version']}: {info['size_bytes'] / 1e6:.1f} MB, "
          f"visited={info['visited']}, xla={info['xla']}, grid {len(info['grid'])} sizes, "
          f"{info['warmup_records']} warm-up records; validation: coverage "
          f"{v['coverage_vs_brute_force']:.3f}, same as in-memory {v['same_ids_as_in_memory']:.3f}")
    return 0
