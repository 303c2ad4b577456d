"""Validates an exported version in a fresh process, loading it the way TF Serving does.

    python -m nann_tf.export.validate VERSION_DIR QUERIES.npz [--stock-ops-only]

Loads VERSION_DIR with the TF1 session loader (``tf.compat.v1.saved_model.loader.load``),
runs ``serving_default`` (and, when the queries file has ``similar_*`` inputs, both similar-items
signatures; with ``filtered_*`` inputs, ``retrieve`` with filters and caps; with
``expected_brute_force_item_ids``, ``brute_force`` on that many first rows) on the queries and
checks that it answers what the in-memory search answered, and that every warm-up record runs.
(The coverage against brute force is measured by the exporting process, in memory, before it
saves: a version that repeats the in-memory answers has that coverage.) With
``--stock-ops-only`` the op library is NOT loaded and every op in the graph (function library
included) must be a stock TensorFlow op, i.e. the model runs on the stock TF Serving image.
Prints one JSON line; exit status 0 when valid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from nann_tf.export.graph_audit import copy_on_read_hazards, read_saved_model

__all__ = ["PROGRESS_MARK", "graph_op_types", "unregistered_ops", "int_codes", "main"]

PROGRESS_MARK = "nann-tf-progress"  # a line on stderr per request with --progress-marks


def graph_op_types(version_dir: str) -> set[str]:
    """Every op type in the SavedModel's graphs and function libraries."""
    sm = read_saved_model(version_dir)
    ops = set()
    for mg in sm.meta_graphs:
        ops.update(n.op for n in mg.graph_def.node)
        for fn in mg.graph_def.library.function:
            ops.update(n.op for n in fn.node_def)
    return ops


def unregistered_ops(ops: set[str]) -> list[str]:
    """Op types this process's TensorFlow does not know (call before loading any op library)."""
    from tensorflow.python.framework import op_def_registry

    return sorted(op for op in ops if op_def_registry.get(op) is None)


def _ids(arr) -> np.ndarray:
    """Item ids comparable with the queries file's: string ids (object arrays of bytes from the
    session) as str."""
    from nann_tf.export.export import savable

    return savable(arr)


def int_codes(*arrays) -> list[np.ndarray]:
    """String id arrays as int codes (``""`` -> 0, others > 0) for the metrics, which take
    integer ids; integer arrays are returned as they are."""
    if all(np.asarray(a).dtype.kind in "iu" for a in arrays):
        return list(arrays)
    arrays = [_ids(a) for a in arrays]
    uniq, inv = np.unique(np.concatenate([a.reshape(-1) for a in arrays]), return_inverse=True)
    codes = inv + (0 if uniq[0] == "" else 1)
    out, at = [], 0
    for a in arrays:
        out.append(codes[at:at + a.size].reshape(a.shape))
        at += a.size
    return out


# Long on purpose: the validation program's checks, in the order a loaded version serves, each
# reporting into the one JSON line the exporting process reads.
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("version_dir")
    ap.add_argument("queries")
    ap.add_argument("--stock-ops-only", action="store_true")
    ap.add_argument("--progress-marks", action="store_true",
                    help=f"write a {PROGRESS_MARK!r} line to stderr after every request (the "
                         "exporting process shows them as progress)")
    ap.add_argument("--warmup-outputs", metavar="PATH",
                    help="write every warm-up record's answer to PATH (a pickle: a list of "
                         "{output alias: array}, in record order), for the C API loader's "
                         "bit-for-bit comparison")
    args = ap.parse_args(argv)
    report = {"ok": False}
    try:
        import tensorflow  # noqa: F401

        from nann_tf.serving.loader import SessionModel, replay_warmup

        ops = graph_op_types(args.version_dir)
        report["op_types"] = len(ops)
        # Variables one signature gathers from and one reads densely: after the first gather
        # (TF Serving's warm-up) every dense read of them copies the whole table.
        report["copy_on_read_hazards"] = copy_on_read_hazards(args.version_dir)
        if args.stock_ops_only:
            bad = unregistered_ops(ops)
            report["non_stock_ops"] = bad
            if bad:
                raise RuntimeError(f"--visited tf export uses non-stock ops {bad}: it would not "
                                   "load on the stock TF Serving image")
        q = np.load(args.queries)
        hist = q["hist_item_ids"]
        def mark():
            if args.progress_marks:
                print(PROGRESS_MARK, file=sys.stderr, flush=True)

        seconds = report["seconds"] = {}  # where the validation's time goes
        t = time.perf_counter()
        with SessionModel(args.version_dir, load_ops=not args.stock_ops_only) as model:
            seconds["load"] = time.perf_counter() - t
            t = time.perf_counter()
            got = model.run("serving_default", {"hist_item_ids": hist})
            mark()
            same = float((_ids(got["item_ids"]) == q["expected_item_ids"]).mean())
            report["same_ids_as_in_memory"] = same
            if same < 0.99:
                raise RuntimeError(f"the loaded model answers differently from the in-memory "
                                   f"search: only {same:.3f} of the ids agree")
            np.testing.assert_array_equal(got["num_scored"], q["expected_num_scored"])
            both = _ids(got["item_ids"]) == q["expected_item_ids"]
            if not np.allclose(got["scores"][both], q["expected_scores"][both], rtol=1e-3,
                               atol=1e-3):
                raise RuntimeError("scores differ from the in-memory search")
            similar = {name[len("similar_"):]: q[name] for name in q.files
                       if name.startswith("similar_")}
            if similar:
                for sig in ("similar_items", "similar_items_model"):
                    out = model.run(sig, similar)
                    mark()
                    same = float((_ids(out["item_ids"]) ==
                                  q[f"expected_{sig}_item_ids"]).mean())
                    report[f"{sig}_same_ids_as_in_memory"] = same
                    if same < 0.99:
                        raise RuntimeError(f"{sig}: the loaded model answers differently from "
                                           f"the in-memory search: only {same:.3f} of the ids "
                                           "agree")
            filtered = {name[len("filtered_"):]: q[name] for name in q.files
                        if name.startswith("filtered_")}
            if filtered:  # the filtered paths (walk, exact, cap) as in memory
                out = model.run("retrieve", filtered)
                mark()
                same = float((_ids(out["item_ids"]) ==
                              q["expected_filtered_item_ids"]).mean())
                report["filtered_same_ids_as_in_memory"] = same
                np.testing.assert_array_equal(out["search_path"],
                                              q["expected_filtered_search_path"])
                if same < 0.99:
                    raise RuntimeError(f"retrieve with filters: the loaded model answers "
                                       f"differently from the in-memory search: only {same:.3f}"
                                       " of the ids agree")
            seconds["same_answers"] = time.perf_counter() - t
            t = time.perf_counter()
            if "expected_brute_force_item_ids" in q.files:
                want = q["expected_brute_force_item_ids"]
                bf = model.run("brute_force", {"hist_item_ids": hist[:len(want)]})
                mark()
                same = float((_ids(bf["item_ids"]) == want).mean())
                report["brute_force_same_ids_as_in_memory"] = same
                if same < 0.99:
                    raise RuntimeError(f"brute_force: the loaded model answers differently "
                                       f"from the in-memory search: only {same:.3f} of the ids "
                                       "agree")
            seconds["brute_force"] = time.perf_counter() - t
            answers: list = []
            t = time.perf_counter()
            report["warmup_records_replayed"] = replay_warmup(model, on_record=mark,
                                                              outputs=answers)
            seconds["warmup_replay"] = time.perf_counter() - t
            if args.warmup_outputs:
                import pickle

                with open(args.warmup_outputs, "wb") as f:
                    pickle.dump(answers, f, protocol=pickle.HIGHEST_PROTOCOL)
        report["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported to the parent as JSON
        report["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
