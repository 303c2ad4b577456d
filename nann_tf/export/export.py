"""Writing a model version for TF Serving: build, save, warm-up, validate, then rename.

``export_version`` writes ``<base>/<version>/`` so that TF Serving never sees a half-written
version: everything goes to ``<base>/.tmp-<version>-<pid>/`` (TF Serving only loads directories
named by an integer), is validated in a fresh process through the TF1 session loader that TF
Serving uses, and only then is renamed to ``<base>/<version>``. An existing version is never
overwritten. Leftover temporary directories of dead exports are removed on the next export.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from nann_tf.errors import UserError, arg
from nann_tf.serving.process import python_module_command

__all__ = ["ExportError", "export_version", "next_version", "EXPORT_INFO", "SIMILAR_SIGNATURES",
           "similar_requests", "warmup_inputs"]

log = logging.getLogger(__name__)

EXPORT_INFO = "assets.extra/nann_tf_export.json"
_TMP_RE = re.compile(r"^\.tmp-(\d+)-(\d+)$")


class ExportError(UserError, ValueError):
    """The export cannot be written or did not validate."""


def existing_versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(base: Path) -> int:
    v = existing_versions(base)
    return (v[-1] + 1) if v else 1


def clean_stale_tmp(base: Path) -> None:
    for p in base.iterdir() if base.is_dir() else []:
        m = _TMP_RE.match(p.name)
        if m and not _pid_alive(int(m.group(2))):
            log.info("removing the leftover of an interrupted export: %s", p)
            shutil.rmtree(p, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def validation_histories(index, data_dir, max_len: int, n: int, seed: int = 0) -> np.ndarray:
    """Raw-id histories ``[n, max_len]`` for warm-up and validation: validation users of the
    dataset (a directory or a ``Dataset``) when it is available, else random histories over the
    vocabulary."""
    from nann_tf.data.dataset import DataError, as_dataset

    dense = None
    if data_dir:
        try:
            ds = as_dataset(data_dir)
            first = np.arange(1, ds.num_items + 1)
            same = ds.num_items == index.num_items or (  # or grown by update-index
                ds.num_items < index.num_items and np.array_equal(ds.raw_items(first),
                                                                  index.raw_ids(first)))
            if same and len(ds.val):
                dense = ds.val.hist[:n]
                if dense.shape[1] > max_len:
                    dense = dense[:, -max_len:]
        except DataError as e:
            log.warning("no validation users from %s (%s); using random histories", data_dir, e)
    if dense is None or len(dense) == 0:
        rng = np.random.default_rng(seed)
        dense = rng.integers(1, index.num_items + 1, size=(n, max_len))
        lens = rng.integers(1, max_len + 1, size=n)
        dense[np.arange(max_len)[None, :] < (max_len - lens)[:, None]] = 0
    return index.raw_ids(dense)


def padding_ids(shape, like: np.ndarray) -> np.ndarray:
    """An all-padding raw-id array of ``shape`` of the kind of ``like``: 0 (int64), or ``""``
    for string item ids."""
    if np.asarray(like).dtype.kind in "USO":
        return np.full(shape, "", dtype="<U1")
    return np.zeros(shape, np.int64)


def savable(arr) -> np.ndarray:
    """An array ``np.load(allow_pickle=False)`` can read back: string outputs (object arrays
    of UTF-8 bytes) become str arrays; others are returned as they are."""
    arr = np.asarray(arr)
    if arr.dtype == object or arr.dtype.kind == "S":
        from nann_tf.serving.tensors import decode_strings

        return decode_strings(arr)
    return arr


def warmup_inputs(grid_sizes: list[int] | None, histories: np.ndarray,
                  batch_sizes=(1, 8, 16), extra: list | None = None, limit: int = 1000) -> list:
    """``(signature, inputs)`` warm-up records.

    First every XLA grid size at every batch size (XLA compiles once per (B, width), so these
    guarantee that no request pays a compile), then the given request log, then replayed
    histories at each batch size, up to ``limit`` records (TF Serving's maximum).

    Raises:
      ExportError: the grid alone needs more than ``limit`` records.
    """
    out = []
    for b in batch_sizes:
        hb = histories[np.arange(b) % len(histories)]
        for w in grid_sizes or []:
            out.append(("warmup_grid", {"hist_item_ids": hb,
                                        "width": np.full([b], w, np.int32)}))
    if len(out) > limit:
        raise ExportError(f"{len(out)} warm-up records are needed to cover the XLA grid "
                          f"({len(grid_sizes)} sizes) at batch sizes {list(batch_sizes)}, more "
                          f"than TF Serving's {limit}: use fewer {arg('warmup_batch_sizes')} or a "
                          f"larger {arg('grid_ratio')}")
    out.extend(extra or [])
    i = 0
    while len(out) < limit and i < 2 * len(histories):
        for b in batch_sizes:
            rows = histories[np.arange(i, i + b) % len(histories)]
            out.append(("serving_default", {"hist_item_ids": rows}))
            i += b
    return out[:limit]


SIMILAR_SIGNATURES = ("similar_items", "similar_items_model")


def filtered_requests(module, histories: np.ndarray) -> dict:
    """``retrieve`` inputs for validation: the histories with the export's default search
    parameters, row ``i`` with the rules of :func:`rule_examples` number ``i % 4`` (none, a
    walked filter, an exact one, an exclusion with a cap)."""
    from nann_tf.export.module import rules_inputs

    hist = np.asarray(histories)
    b = len(hist)
    examples = rule_examples(module)
    pick = [examples[i % len(examples)] for i in range(b)]
    rules = {name: [list(p[name][0][p[name][0] != 0]) for p in pick]
             for name in ("include_categories", "exclude_categories", "include_tags",
                          "exclude_tags")}
    s = module.search
    return {"hist_item_ids": hist, "k": np.zeros([b], np.int32),
            "ef": np.zeros([b, s.start_level + 1], np.int32),
            "T": np.full([b, s.start_level + 1], -1, np.int32),
            "exclude_item_ids": padding_ids([b, 1], hist),
            **rules_inputs(b, **rules,
                           max_per_category=[int(p["max_per_category"][0]) for p in pick])}


def _labels(index, meta, data_dir, item_tags, tag_columns, tag_sep):
    """The items' labels for filters: categories with their raw ids (the index's; an older
    index without them takes its dataset's), and the tags of ``item_tags``.

    Raises:
      ExportError: a tags file without its columns or the reverse, or a bad tags file.
    """
    from nann_tf.export.tags import TagsError, read_item_tags
    from nann_tf.search.filters import LabelTable

    if (item_tags is None) != (tag_columns is None):
        raise ExportError(f"{arg('item_tags')} and {arg('tag_columns')} go together (the file "
                          "and which of its columns hold the item and its tags)")
    raw_cats = index.raw_category_id
    if raw_cats is None:
        from nann_tf.data.dataset import DataError, as_dataset

        source = data_dir or meta.get("data_dir")
        try:
            ds = as_dataset(source)
            if ds.num_items == index.num_items and np.array_equal(ds.item_category,
                                                                  index.category):
                raw_cats = ds.raw_category_id
        except (DataError, TypeError):
            pass
        if raw_cats is None:
            log.warning("the index holds no raw category ids and its dataset is not at hand: "
                        "category filters take the dense ids 1..C (rebuild the index with this "
                        "version of nann-tf to filter by the log's own ids)")
            raw_cats = np.arange(int(index.category.max()) + 1)
    tags = None
    if item_tags is not None:
        try:
            tags = read_item_tags(item_tags, tag_columns, index.raw_item_id,
                                  getattr(index, "raw_item_key", None), sep=tag_sep)
        except TagsError as e:
            raise ExportError(str(e)) from e
    return LabelTable.build(index.category, raw_cats, tags,
                            popularity=getattr(index, "freq", None))


def rule_examples(module) -> list[dict]:
    """One-row rule inputs that take every branch of the filtered search, for the warm-up file
    and validation: none; an include filter on the largest category (the walk); one on the
    smallest (the exact path); an exclusion with a cap of 2 per category."""
    from nann_tf.export.module import rules_inputs

    counts = np.diff(module.labels.category_splits.numpy())[1:]
    raw = module.labels.raw_category_id.numpy()[1:]
    big, small = raw[int(np.argmax(counts))], raw[int(np.argmin(counts + (counts == 0) *
                                                               counts.max()))]
    return [rules_inputs(1),
            rules_inputs(1, include_categories=[[big]]),
            rules_inputs(1, include_categories=[[small]]),
            rules_inputs(1, exclude_categories=[[big]], max_per_category=[2])]


def similar_requests(histories: np.ndarray, max_seeds: int = 3) -> dict:
    """``similar_items`` inputs made from raw-id histories, for warm-up and validation: row
    ``i`` takes the last ``1 + i % max_seeds`` items of history ``i`` as its seeds (one seed or
    several, right-aligned, 0-padded), the default ``k``, nothing else excluded."""
    from nann_tf.evaluation.similar import seed_rows

    hist = np.asarray(histories)
    if hist.dtype.kind in "USO":  # string ids: the same rows, picked by column position
        cols = seed_rows(np.broadcast_to(np.arange(1, hist.shape[1] + 1), hist.shape),
                         max_seeds)
        rows = np.arange(len(hist))[:, None]
        seeds = np.where(cols > 0, hist[rows, np.maximum(cols - 1, 0)], "")
    else:
        seeds = seed_rows(hist.astype(np.int64), max_seeds)
    from nann_tf.export.module import rules_inputs

    b = len(seeds)
    return {"item_ids": seeds, "k": np.zeros([b], np.int32), **rules_inputs(b),
            "exclude_item_ids": padding_ids([b, 1], seeds),
            "include_seeds": np.zeros([b], bool)}


def read_request_log(path: str, model_name: str) -> list:
    """Records of a TF Serving request log / warm-up file (PredictionLog TFRecords)."""
    from nann_tf.serving.warmup import read_warmup_requests

    try:
        records = read_warmup_requests(path)
    except Exception as e:  # noqa: BLE001 - any decoding failure names the file
        raise ExportError(f"{arg('warmup_requests')} {path}: not a TFRecord file of PredictionLog "
                          f"protos: {e}") from e
    out = []
    for r in records:
        out.append((r.signature_name or "serving_default", dict(r.inputs)))
    return out


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# Long on purpose: one transaction, every input checked before anything is written, then the
# steps (the helpers below) inside one temporary directory renamed into place at the end.
def export_version(model_dir, index_dir, base_dir, *, version: int | None = None,
                   visited: str = "bitmap", xla: bool = True, embedding_dtype: str = "float32",
                   start_level: int | None = None, ef=None, T=None,
                   k: int | None = None, max_ef: int | None = None, grid_ratio: float = 1.25,
                   history_seeds: bool | None = None, similar: dict | None = None,
                   data_dir: str | None = None, warmup_requests: str | None = None,
                   validation_users: int = 64, min_coverage: float = 0.8,
                   warmup_batch_sizes=(1, 8, 16),
                   model_name: str | None = None, validate: bool = True,
                   validate_loader: str = "python", item_tags: str | None = None,
                   tag_columns: str | None = None, tag_sep: str = "|",
                   limits: dict | None = None, exact_max_items: int | None = None,
                   filter_entries: int | None = None) -> dict:
    """Exports one version; returns its info dict (also saved as ``EXPORT_INFO``).

    ``model_dir``, ``index_dir`` and ``data_dir`` are directories, or the objects read from them
    (a ``TrainedModel``, an ``ItemIndex``, a ``Dataset``).

    The default search parameters are the model config's ``[search]`` table with
    ``start_level``/``ef``/``T``/``k``/``history_seeds`` replacing its values (``ef``/``T`` as
    ``LEVEL=VALUE`` strings or mappings), checked against the index by
    :meth:`~nann_tf.search.params.SearchParams.checked`. The ``similar_items`` signature's
    parameters are the config's ``[similar]`` table with ``similar`` (``{"start_level", "ef",
    "T", "k"}``, named ``--similar-*`` in errors) replacing its values.

    Filters: every item's category (raw ids from the index, or from its dataset) and, with
    ``item_tags`` (a table file) and ``tag_columns`` (``item=COL,tags=COL``), its tags are
    stored in the version (:mod:`nann_tf.export.tags`, :mod:`nann_tf.search.filters`);
    ``limits`` overrides :data:`~nann_tf.export.module.DEFAULT_LIMITS`, ``exact_max_items``
    the switch from the walk to the exact scan of a narrow filter, and ``filter_entries`` a
    walked filter's extra entry points per row (default
    :data:`~nann_tf.export.module.FILTER_ENTRIES`).

    ``validate_loader="cc"`` also loads the version through TensorFlow's C API with the C
    loader (``nann-tf validate --loader cc``: no Python in its process, warm-up replayed) and
    requires its answers to every warm-up record to equal the session loader's bit for bit.

    Raises:
      SearchParamsError: bad search parameters (nothing is written).
      ExportError: bad parameters, an existing version, or a failed validation (nothing is
        left where TF Serving would load it).
    """
    import tensorflow as tf

    from nann_tf.export.module import (BROAD_FILTER_SHARE, MAX_T, RetrievalModule,
                                       default_max_ef)
    from nann_tf.index.store import as_index
    from nann_tf.serving.warmup import write_warmup_requests
    from nann_tf.model.saved import as_trained_model
    from nann_tf.search.params import similar_for_index
    from nann_tf.autoconfig import search_defaults

    base = Path(base_dir)
    trained = as_trained_model(model_dir)
    model, cfg, meta = trained
    index = as_index(index_dir)
    # An index grown by update-index holds more items than the model was trained on (the
    # launched ones, embedded from their category); its first model_items are the model's.
    model_items = int(index.meta.get("model_items", index.num_items))
    if model_items != meta["num_items"] or index.num_items < model_items:
        raise ExportError(f"{arg('index_dir')} {index.name} was built for {model_items} items "
                          f"but {arg('model_dir')} {trained.name} was trained on "
                          f"{meta['num_items']}")
    # The config's [search] table with the given overrides, checked by the one set of rules:
    # a level missing or unused, or a start level above the index's top, is an error.
    defaults = search_defaults(cfg, meta, index.meta).overridden(
        start_level=start_level, ef=ef, T=T, k=k,
        history_seeds=history_seeds).checked(index.graph.max_level)
    similar_params = similar_for_index(cfg.similar, index.graph.max_level).overridden(
        **(similar or {}), prefix="similar_").checked(
        index.graph.max_level, source=f"the [similar] table and {arg('similar')}")
    max_ef = default_max_ef(defaults) if max_ef is None else int(max_ef)
    version = next_version(base) if version is None else int(version)
    if version < 1:
        raise ExportError(f"{arg('version')} must be >= 1, got {version}")
    if validate_loader not in ("python", "cc"):
        raise ExportError(f"{arg('validate_loader')} {validate_loader!r}: expected python or "
                          "cc")
    if validate and validate_loader == "cc":
        from nann_tf.export.cc_loader import CcLoaderError, loader_path

        try:
            loader_path()  # missing: refused before anything is written
        except CcLoaderError as e:
            raise ExportError(f"{arg('validate_loader')} cc: {e}") from e
    labels = _labels(index, meta, data_dir, item_tags, tag_columns, tag_sep)
    if (base / str(version)).exists():
        raise ExportError(f"{base / str(version)} already exists: versions are never "
                          f"overwritten (pick another {arg('version')}, or omit it for the next "
                          "one)")
    base.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(base)
    tmp = base / f".tmp-{version}-{os.getpid()}"
    max_len = int(meta["max_len"])
    model_name = model_name or base.name
    t0 = time.perf_counter()
    stages: dict[str, float] = {}  # where the export's time goes, in its info file
    try:
        module = RetrievalModule(model, index, max_len, defaults, max_ef=max_ef,
                                 visited_impl=visited, xla=xla, embedding_dtype=embedding_dtype,
                                 grid_ratio=grid_ratio, similar=similar_params, labels=labels,
                                 limits=limits, exact_max_items=exact_max_items,
                                 **({} if filter_entries is None
                                    else {"filter_entries": filter_entries}))
        hist = validation_histories(index, data_dir or meta.get("data_dir"), max_len,
                                    max(validation_users, 8))
        t1 = time.perf_counter()
        stages["build_module"] = t1 - t0
        expected, filtered = _reference_answers(module, hist[:validation_users])
        stages["search_in_memory"] = time.perf_counter() - t1
        if validate:  # a search that covers too little is refused before anything is saved
            t1 = time.perf_counter()
            coverage = _coverage_in_memory(module, hist[:validation_users], expected,
                                           min_coverage)
            stages["coverage_in_memory"] = time.perf_counter() - t1
        log.info("export: in-memory search done in %.1fs; saving the SavedModel...",
                 time.perf_counter() - t0 - stages["build_module"])
        t1 = time.perf_counter()
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        stages["save"] = time.perf_counter() - t1
        log.info("export: saved in %.1fs", stages["save"])
        t1 = time.perf_counter()
        extra = _first_calls(module, hist, defaults, warmup_batch_sizes)
        if warmup_requests:
            extra += read_request_log(warmup_requests, model_name)
        grid = module.grid.to_list() if module.grid else []
        records = warmup_inputs(grid, hist, tuple(warmup_batch_sizes), extra=extra)
        write_warmup_requests(tmp / "assets.extra" / "tf_serving_warmup_requests",
                                      model_name, "serving_default", records)
        info = {
            "format": "nann-tf-export", "version": version, "model_name": model_name,
            "model_dir": None if trained.path is None else str(trained.path),
            "index_dir": None if index.source is None else str(index.source),
            "variant": cfg.model.variant, "visited": visited, "xla": xla,
            "embedding_dtype": embedding_dtype, "max_len": max_len,
            "num_items": index.num_items, "item_id_type": index.item_id_type,
            "launched_items": index.num_items - model_items,
            "retired_items": int(index.retired.sum()) if index.retired is not None else 0,
            "search": {**defaults.to_dict(), "max_ef": max_ef},
            "similar": similar_params.to_dict(),
            "grid": grid,
            "warmup_records": len(records), "warmup_batch_sizes": list(warmup_batch_sizes),
            "tensorflow": tf.__version__,
            "signatures": sorted(module.signatures()),
            "limits": {**module.limits, "max_ef": max_ef, "max_T": MAX_T},
            "filters": {"categories": int(len(labels.raw_category_id) - 1),
                        "tags": int(len(labels.raw_tag_id) - 1),
                        "max_tags_per_item": int(labels.item_tags.shape[1]),
                        "exact_max_items": module.exact_max_items,
                        "entry_points": module.filter_entries,
                        "entry_points_narrow": module.filter_entries // 2,
                        "broad_filter_share": BROAD_FILTER_SHARE},
        }
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
        stages["warmup_file"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        log.info("export: %d warm-up records (XLA grid: %d sizes x batch sizes %s, then "
                 "replayed requests)", len(records), len(grid), list(warmup_batch_sizes))
        if validate:
            info["validation"] = {**coverage, **_validate(
                tmp, hist[:validation_users], expected, filtered, len(records), visited,
                validate_loader)}
            if info["validation"].get("copy_on_read_hazards"):
                log.warning("export: signatures gather from variables that others read "
                            "densely; after the first gather every dense read copies the "
                            "variable: %s", info["validation"]["copy_on_read_hazards"])
        stages["validate"] = time.perf_counter() - t1
        info["export_seconds"] = time.perf_counter() - t0
        info["stage_seconds"] = stages
        info["size_bytes"] = dir_size(tmp)
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, sort_keys=True))
        os.rename(tmp, base / str(version))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%.1f MB) in %.1fs", base / str(version), info["size_bytes"] / 1e6,
             time.perf_counter() - t0)
    return info


def _reference_answers(module, hist: np.ndarray) -> tuple[dict, dict]:
    """The in-memory module's answers to the validation histories (``serving_default``, both
    similar-items signatures, ``retrieve`` with rules), which the saved version must repeat;
    also fixes the exact-path bound from what the walk scored. Returns ``(expected,
    filtered request)``."""
    import tensorflow as tf

    log.info("export: searching %d validation histories in memory (compiles their XLA "
             "shapes)...", len(hist))
    expected = {name: t.numpy() for name, t in module.serving_default(tf.constant(hist)).items()}
    # The walk's measured cost sets where a narrow filter is scanned exactly instead.
    module.measured_exact_max_items(float(expected["num_scored"].mean()))
    similar_queries = similar_requests(hist)
    for sig in SIMILAR_SIGNATURES:
        out = getattr(module, sig)(**{n: tf.constant(v) for n, v in similar_queries.items()})
        expected.update({f"{sig}_{name}": t.numpy() for name, t in out.items()})
    filtered = filtered_requests(module, hist)
    out = module.retrieve(**{n: tf.constant(v) for n, v in filtered.items()})
    expected.update({f"filtered_{name}": t.numpy() for name, t in out.items()})
    return expected, filtered


# Rows of the validation histories whose brute-force answer the saved version must repeat (the
# brute_force signature checked after loading; the coverage itself is measured in memory).
BRUTE_FORCE_CHECK_ROWS = 8


def _coverage_in_memory(module, hist: np.ndarray, expected: dict, min_coverage: float) -> dict:
    """coverage@k of the in-memory search's answers (``expected``) against the module's own
    exact top-k; below ``min_coverage`` the export is refused (ExportError) before it saves.
    The saved version must then repeat both answers (:func:`validate_in_subprocess`), so this
    is its coverage too. Adds the exact answer of the first rows to ``expected``."""
    import tensorflow as tf

    from nann_tf.evaluation.metrics import coverage
    from nann_tf.export.validate import int_codes

    t0 = time.perf_counter()
    exact = module.brute_force(tf.constant(hist))["item_ids"].numpy()
    seconds = time.perf_counter() - t0
    got = expected["item_ids"]
    cov = coverage(*int_codes(got, exact), got.shape[1])
    if cov < min_coverage:
        raise ExportError(f"the export's own search at its default parameters covers "
                          f"coverage@{got.shape[1]} {cov:.3f} of brute force on "
                          f"{len(hist)} validation users, below {arg('min_coverage')} "
                          f"{min_coverage} (nothing was written: widen ef/T or lower it)")
    expected["brute_force_item_ids"] = exact[:BRUTE_FORCE_CHECK_ROWS]
    return {"coverage_vs_brute_force": cov, "brute_force_seconds": seconds,
            "coverage_users": len(hist)}


def _first_calls(module, hist: np.ndarray, defaults, warmup_batch_sizes) -> list:
    """Warm-up records that call every signature besides the grid once (each of its paths),
    so that none pays its first-call cost in service."""
    h1 = hist[:1]
    extra = [("retrieve", {
        "hist_item_ids": h1, "k": np.array([defaults.k], np.int32),
        "ef": np.array([defaults.ef_row()], np.int32),
        "T": np.array([defaults.T_row()], np.int32),
        "exclude_item_ids": padding_ids([1, 1], h1), **rules}) for rules in
        rule_examples(module)]
    extra.append(("brute_force", {"hist_item_ids": h1}))
    if module.explains:
        extra.append(("retrieve_explained", dict(extra[0][1])))
    # Both similar-items signatures at every warm-up batch size: the model mode's score
    # network runs on the grid compiled above; this pays each signature's first call.
    for b in warmup_batch_sizes:
        rows = similar_requests(hist[np.arange(b) % len(hist)])
        extra += [(sig, rows) for sig in SIMILAR_SIGNATURES]
    for rules in rule_examples(module)[1:]:  # their filtered paths (walk, exact, cap)
        extra += [(sig, {**similar_requests(h1), **rules}) for sig in SIMILAR_SIGNATURES]
    return extra


def _validate(tmp: Path, hist, expected: dict, filtered: dict, num_records: int, visited: str,
              validate_loader: str) -> dict:
    """The written version validated in a fresh process (:func:`validate_in_subprocess`);
    with ``validate_loader="cc"`` also through the C API loader, whose answers to every
    warm-up record must equal the validation process's."""
    answers: list | None = [] if validate_loader == "cc" else None
    report = validate_in_subprocess(tmp, hist, expected, visited,
                                    progress_total=num_records + 5, filtered=filtered,
                                    warmup_outputs=answers)
    if validate_loader == "cc":
        from nann_tf.export.cc_loader import CcLoaderError, validate_version

        try:  # compared with the answers the validation process just gave
            report["cc_loader"] = validate_version(tmp, "cc", reference=answers)
        except CcLoaderError as e:
            raise ExportError(f"validation of {tmp} with the C API loader failed: {e}") from e
    return report


def validate_in_subprocess(version_dir: Path, hist: np.ndarray, expected: dict, visited: str,
                           progress_total: int | None = None,
                           filtered: dict | None = None,
                           warmup_outputs: list | None = None) -> dict:
    """Runs :mod:`nann_tf.export.validate` on ``version_dir`` in a fresh Python process
    (showing its requests, warm-up replay included, as progress). ``warmup_outputs``: a list
    that receives the process's answer to every warm-up record, in order."""
    from nann_tf.export.validate import PROGRESS_MARK
    from nann_tf.progress import Progress

    with tempfile.TemporaryDirectory() as td:
        q = Path(td) / "queries.npz"
        np.savez(q, hist_item_ids=hist,
                 **{f"expected_{k}": savable(v) for k, v in expected.items()},
                 **{f"similar_{k}": v for k, v in similar_requests(hist).items()},
                 **{f"filtered_{k}": v for k, v in (filtered or {}).items()})
        cmd = [*python_module_command("nann_tf.export.validate"), str(version_dir), str(q),
               "--progress-marks"]
        if visited == "tf":
            cmd.append("--stock-ops-only")
        answers_file = Path(td) / "warmup-answers.pkl"
        if warmup_outputs is not None:
            cmd += ["--warmup-outputs", str(answers_file)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        stderr: list[str] = []
        with open(Path(td) / "stdout", "w+") as out, \
                Progress(progress_total, "export: validation + warm-up replay (XLA grid)",
                         "requests") as bar:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
            for line in proc.stderr:
                if line.startswith(PROGRESS_MARK):
                    bar.update(1)
                else:
                    stderr.append(line)
            proc.wait()
            out.seek(0)
            stdout = out.read()
        if warmup_outputs is not None and answers_file.is_file():
            import pickle

            with open(answers_file, "rb") as f:
                warmup_outputs.extend(pickle.load(f))
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    report = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or not report.get("ok"):
        raise ExportError(f"validation of {version_dir} failed: "
                          f"{report.get('error') or ''.join(stderr)[-2000:]}")
    return report
