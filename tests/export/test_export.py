"""The exported SavedModel: signatures, XLA padding, warm-up, placement, op audit, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.data.dataset import Dataset
from nann_tf.export import export as export_mod
from nann_tf.export.export import EXPORT_INFO, ExportError, export_version
from nann_tf.export.module import rules_inputs
from nann_tf.export.validate import graph_op_types
from nann_tf.index.store import load_index
from nann_tf.search.params import SearchParamsError
from nann_tf.serving.warmup import read_warmup_requests

from conftest import run_cli
from toy_model import ToyModelSpec, write_toy_model


@pytest.fixture(scope="module")
def base(export_base):
    """The base path of the session's version 1 (conftest ``v_tf``)."""
    return export_base


@pytest.fixture(scope="module")
def queries(ci_dataset, ci_index_dir):
    ds = Dataset.load(ci_dataset)
    idx = load_index(ci_index_dir)
    dense = ds.test.hist[:24]
    return np.where(dense > 0, idx.raw_item_id[dense], 0).astype(np.int64), idx


def test_history_seeds_on_by_default_and_same_as_the_offline_search(
        tf_session, v_tf, attention_model_dir, ci_index_dir, ci_dataset, queries):
    """The export seeds each request's beam search with its own history (unless
    --no-history-seeds): the served version (seeds on) and the module built with the option off
    return what the offline Retriever returns with the same setting, and the two settings
    differ. (Saving and loading a module is checked by every export's validation: the option
    is compared in memory, without a second export.)"""
    from nann_tf.autoconfig import search_defaults
    from nann_tf.evaluation.retriever import Retriever
    from nann_tf.export.module import RetrievalModule
    from nann_tf.model.saved import load_trained_model

    assert json.loads((v_tf / EXPORT_INFO).read_text())["search"]["history_seeds"] is True
    hist, idx = queries
    dense = Dataset.load(ci_dataset).test.hist[:len(hist)]
    model, cfg, meta = load_trained_model(attention_model_dir)
    sc = cfg.search
    # The defaults export_version serves with history_seeds=False (--no-history-seeds).
    plain = search_defaults(cfg, meta, idx.meta).overridden(history_seeds=False).checked(
        idx.graph.max_level)
    assert plain.history_seeds is False
    module = RetrievalModule(model, idx, int(meta["max_len"]), plain, visited_impl="tf",
                             xla=False)
    r = Retriever(model, idx, sc.start_level, "tf", batch_size=8)
    ef = {int(a): int(b) for a, b in sc.ef.items()}
    T = {int(a): int(b) for a, b in sc.T.items()}
    served = {}
    with tf_session as m:
        served[True] = m.run("serving_default", {"hist_item_ids": hist})
    served[False] = {n: t.numpy() for n, t in module.serving_default(tf.constant(hist)).items()}
    for seeds, out in served.items():
        offline = r.beam(dense, ef, T, sc.k, history_seeds=seeds)
        raw = np.where(offline.ids > 0, idx.raw_item_id[offline.ids], 0)
        # The Retriever runs the search of the module the export saves: the same ids.
        np.testing.assert_array_equal(out["item_ids"], raw, err_msg=f"seeds={seeds}")
        np.testing.assert_array_equal(out["num_scored"], offline.num_scored)
    assert (served[True]["num_scored"] != served[False]["num_scored"]).any()


def test_signatures_and_dtypes(tf_session, v_tf):
    with tf_session as m:
        meta = json.loads((v_tf / EXPORT_INFO).read_text())
        assert meta["signatures"] == ["brute_force", "retrieve", "retrieve_explained",
                                      "serving_default", "similar_items",
                                      "similar_items_model", "warmup_grid"]
        assert meta["limits"]["max_exclude"] == 10000 and meta["limits"]["max_T"] == 64
        for name in ("serving_default", "retrieve", "brute_force"):
            m.signature(name)
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((v_tf / "saved_model.pb").read_bytes())
    sigs = sm.meta_graphs[0].signature_def
    d = sigs["serving_default"]
    assert d.inputs["hist_item_ids"].dtype == tf.int64.as_datatype_enum
    assert d.outputs["item_ids"].dtype == tf.int64.as_datatype_enum
    assert d.outputs["scores"].dtype == tf.float32.as_datatype_enum
    assert d.outputs["num_scored"].dtype == tf.int32.as_datatype_enum
    rules = {"include_categories", "exclude_categories", "include_tags", "exclude_tags",
             "max_per_category"}
    for name in ("retrieve", "retrieve_explained"):
        r = sigs[name]
        assert set(r.inputs) == {"hist_item_ids", "k", "ef", "T", "exclude_item_ids"} | rules
        assert r.inputs["k"].dtype == tf.int32.as_datatype_enum
        assert r.inputs["include_tags"].dtype == tf.int64.as_datatype_enum
        assert r.inputs["max_per_category"].dtype == tf.int32.as_datatype_enum
        assert all(v.tensor_shape.dim[0].size == -1 for v in r.inputs.values())
    assert set(sigs["retrieve"].outputs) == {"item_ids", "scores", "num_scored", "search_path"}
    assert set(sigs["retrieve_explained"].outputs) == {
        "item_ids", "scores", "num_scored", "search_path", "because_item_ids",
        "because_weights"}
    assert set(sigs["brute_force"].outputs) == {"item_ids", "scores"}
    for name in ("similar_items", "similar_items_model"):
        d = sigs[name]
        assert {a: v.dtype for a, v in d.inputs.items()} == {
            "item_ids": tf.int64.as_datatype_enum, "k": tf.int32.as_datatype_enum,
            "exclude_item_ids": tf.int64.as_datatype_enum,
            "include_seeds": tf.bool.as_datatype_enum,
            **{n: tf.int64.as_datatype_enum for n in rules - {"max_per_category"}},
            "max_per_category": tf.int32.as_datatype_enum}
        assert set(d.outputs) == {"item_ids", "scores", "num_scored", "search_path"}
        # Every input has the batch dimension first (TF Serving batching).
        assert all(v.tensor_shape.dim[0].size == -1 for v in d.inputs.values())


def test_xla_equals_no_xla_and_raw_ids_are_valid(tf_session, xla_session, queries):
    hist, idx = queries
    with tf_session as a, xla_session as b:
        ra = a.run("serving_default", {"hist_item_ids": hist})
        rb = b.run("serving_default", {"hist_item_ids": hist})
    assert ra["item_ids"].shape == (len(hist), 50)
    agree = (ra["item_ids"] == rb["item_ids"]).mean()
    assert agree >= 0.99, agree
    same = ra["item_ids"] == rb["item_ids"]
    np.testing.assert_allclose(ra["scores"][same], rb["scores"][same], rtol=1e-4, atol=1e-4)
    # Padding never leaks: every returned id is a real raw id, no duplicates in a row.
    vocab = set(idx.raw_item_id[1:].tolist())
    for row in rb["item_ids"]:
        assert set(row.tolist()) <= vocab
        assert len(set(row.tolist())) == len(row)
    assert (np.diff(rb["scores"], axis=1) <= 1e-6).all(), "sorted best first"


def test_warmup_file_decodes_and_covers_every_grid_size(v_xla):
    info = json.loads((v_xla / EXPORT_INFO).read_text())
    grid = info["grid"]
    assert len(grid) >= 5 and grid == sorted(grid)
    recs = read_warmup_requests(v_xla / "assets.extra" / "tf_serving_warmup_requests")
    assert 0 < len(recs) <= 1000 and len(recs) == info["warmup_records"]
    shapes = {(len(r.inputs["width"]), int(r.inputs["width"][0])) for r in recs
              if r.signature_name == "warmup_grid"}
    assert shapes == {(b, w) for b in info["warmup_batch_sizes"] for w in grid}
    assert any(r.signature_name == "serving_default" for r in recs)
    assert info["validation"]["warmup_records_replayed"] == len(recs)


def test_export_info_says_where_its_time_went(v_xla):
    """The stage times of the export and of its validation are recorded, each positive, and
    together they do not exceed the export's total (a stage timed twice or from the wrong
    start would)."""
    info = json.loads((v_xla / EXPORT_INFO).read_text())
    stages = info["stage_seconds"]
    assert set(stages) == {"build_module", "search_in_memory", "coverage_in_memory", "save",
                           "warmup_file", "validate"}
    assert all(v > 0 for v in stages.values()), stages
    assert sum(stages.values()) <= info["export_seconds"] + 1e-6
    val = info["validation"]["seconds"]
    assert set(val) == {"load", "same_answers", "brute_force", "warmup_replay"}
    assert sum(val.values()) <= stages["validate"], (val, stages)


def test_every_search_round_is_padded_to_a_grid_size(ci_index_dir, attention_model_dir, queries):
    """Counts the shapes the XLA scorer sees over many queries: all on the grid."""
    from nann_tf.export.module import RetrievalModule
    from nann_tf.search.params import SearchParams
    from nann_tf.model.saved import load_trained_model

    hist, idx = queries
    model, cfg, meta = load_trained_model(attention_model_dir)
    mod = RetrievalModule(model, idx, meta["max_len"],
                          SearchParams(1, {1: 100, 0: 200}, {0: 3}, 50), max_ef=400,
                          visited_impl="tf", xla=True)
    seen = []
    inner = mod.scorer._score

    def spy(state, e, *side):  # side: the item-side rows gathered beside e_v
        seen.append(tuple(e.shape))
        assert not side or side[0].shape[:2] == e.shape[:2]
        return inner(state, e, *side)

    mod.scorer._score = spy
    for b in (1, 5):
        for i in range(0, 10, b):
            mod._serve(tf.constant(hist[i:i + b]))
    widths = {s[1] for s in seen}
    assert widths <= set(mod.grid.sizes), widths - set(mod.grid.sizes)
    assert len(widths) < len(seen), "rounds share compiled shapes"


def test_device_placement_in_saved_functions(v_xla):
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((v_xla / "saved_model.pb").read_bytes())
    cpu, unplaced = set(), set()
    for fn in sm.meta_graphs[0].graph_def.library.function:
        for n in fn.node_def:
            (cpu if "CPU:0" in n.device else unplaced if not n.device else set()).add(n.op)
    assert "NannGatherUnvisitedNeighbors" in cpu and "NannFilterUnvisited" in cpu
    assert "ResourceGather" in cpu or "GatherV2" in cpu
    # The score network (matmuls, softmax) carries no device: TF Serving puts it on the GPU.
    assert {"MatMul", "BatchMatMulV3"} & unplaced or "Einsum" in unplaced
    assert "Softmax" in unplaced


def test_op_audit(v_tf, v_xla):
    assert not any(op.startswith("Nann") for op in graph_op_types(str(v_tf)))
    assert {"NannFilterUnvisited", "NannGatherUnvisitedNeighbors"} & graph_op_types(str(v_xla))
    info = json.loads((v_tf / EXPORT_INFO).read_text())
    assert info["validation"]["non_stock_ops"] == []
    # No signature gathers from a variable another reads densely (after TF Serving's warm-up
    # ran the gather, every dense read would copy the table): both exports, as recorded by
    # the export's own validation.
    for v in (v_tf, v_xla):
        validation = json.loads((v / EXPORT_INFO).read_text())["validation"]
        assert validation["copy_on_read_hazards"] == {}, (v, validation["copy_on_read_hazards"])
    # The filtered walk's entry budget is recorded: all of it for a broad filter, half for a
    # narrow one.
    from nann_tf.export.module import BROAD_FILTER_SHARE, FILTER_ENTRIES

    assert {k: info["filters"][k] for k in ("entry_points", "entry_points_narrow",
                                           "broad_filter_share")} == {
        "entry_points": FILTER_ENTRIES, "entry_points_narrow": FILTER_ENTRIES // 2,
        "broad_filter_share": BROAD_FILTER_SHARE}
    # The export's own validation at the CI config's search parameters: measured 0.9996 (the
    # export refuses < --min-coverage, 0.8 by default); 0.99 leaves 0.01 for other machines.
    assert info["validation"]["coverage_vs_brute_force"] >= 0.99, info["validation"]
    # ... measured in memory on the validation users; the saved brute_force signature repeats
    # the in-memory exact answer on its first rows.
    assert info["validation"]["coverage_users"] == 64
    assert info["validation"]["brute_force_same_ids_as_in_memory"] == 1.0, info["validation"]


@pytest.mark.parametrize("which", ["v_tf", "v_xla"])
def test_each_signature_is_traced_once_into_the_saved_model(which, request):
    """Every signature's search is in the SavedModel once: the export traces it for the
    in-memory reference answers and saves that trace. (A tf.function reachable from the module
    is traced again by tf.saved_model.save, whose tracing context differs: the library then
    held two copies of every search, 19.9 MB instead of 10.1 MB on this model, and the export
    paid the tracing twice.) The filtered search is one copy per signature too: its first
    round is the refill loop's first iteration (one walk, one exact scan), not a copy before
    the loop."""
    import collections
    import re

    from tensorflow.core.protobuf import saved_model_pb2

    from nann_tf.export.module import RetrievalModule

    vdir = request.getfixturevalue(which)
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((vdir / "saved_model.pb").read_bytes())
    lib = sm.meta_graphs[0].graph_def.library.function
    traced = collections.Counter(
        m.group(1) for f in lib if (m := re.fullmatch(r"__inference_(_\w+?)_\d+",
                                                      f.signature.name)))
    signature_fns = {"_serve", "_retrieve", "_retrieve_explained", "_brute_force",
                     "_warmup_grid", "_similar_items", "_similar_items_model"}
    assert all(hasattr(RetrievalModule, fn) for fn in signature_fns)
    assert {fn: traced[fn] for fn in signature_fns} == {fn: 1 for fn in signature_fns}
    if which == "v_xla":
        # One walk (one neighbour-gathering op) per copy of the search: serving_default's, and
        # the plain search and the filtered walk of each of the four signatures with rules
        # (retrieve, retrieve_explained, similar_items, similar_items_model): 1 + 4 x 2, the
        # filtered walks' level 0 in the fused two-hop op. With the filtered walk copied before
        # the refill loop it was 1 + 4 x 3 = 13.
        ops = collections.Counter(n.op for f in lib for n in f.node_def)
        walks = (ops["NannGatherUnvisitedNeighbors"], ops["NannGatherPassingNeighbors"])
        assert walks == (1 + 4, 4), walks
        # The scorer reads the item tables with the prefetching row op (bitmap exports).
        assert ops["NannGatherRows"] > 0


def _retrieve(m, hist, k=None, ef=None, T=None, exclude=None, **rules):
    from nann_tf.export.module import rules_inputs

    b = len(hist)
    return m.run("retrieve", {
        "hist_item_ids": hist,
        "k": np.full([b], 50 if k is None else k, np.int32),
        "ef": np.array(ef or [[200, 100]] * b, np.int32),
        "T": np.array(T or [[4, 0]] * b, np.int32),
        "exclude_item_ids": np.zeros([b, 1], np.int64) if exclude is None else exclude,
        **rules_inputs(b, **rules)})


def test_retrieve_parameters_and_exclusion(tf_session, queries):
    hist, _ = queries
    with tf_session as m:
        base_out = m.run("serving_default", {"hist_item_ids": hist[:4]})
        r = _retrieve(m, hist[:4])
        np.testing.assert_array_equal(r["item_ids"], base_out["item_ids"])
        top = base_out["item_ids"][:, :3]
        r = _retrieve(m, hist[:4], exclude=top)
        for row, excluded in zip(r["item_ids"], top):
            assert not np.isin(row, excluded).any()
        np.testing.assert_array_equal(r["item_ids"][:, :5], base_out["item_ids"][:, 3:8])
        r = _retrieve(m, hist[:4], k=10)
        assert r["item_ids"].shape == (4, 10)
        bigger = _retrieve(m, hist[:4], ef=[[400, 200]] * 4, T=[[5, 0]] * 4)
        assert (bigger["num_scored"] >= r["num_scored"]).all()
        # 0 (k, ef) and -1 (T) take the export's defaults: serving_default's answer.
        d = _retrieve(m, hist[:4], k=0, ef=[[0, 0]] * 4, T=[[-1, -1]] * 4)
        np.testing.assert_array_equal(d["item_ids"], base_out["item_ids"])
        assert (d["search_path"] == 0).all()


@pytest.mark.parametrize("change,needle", [
    (dict(k=-1), "k: every value must be >= 0"),
    (dict(k=300), "k: must be <= ef"),
    (dict(ef=[[-1, 100]] * 2), "ef: every value must be >= 0"),
    (dict(ef=[[100000, 100]] * 2), "max_ef"),
    (dict(T=[[-2, 0]] * 2), "T: every value must be >= -1"),
    (dict(T=[[1000, 0]] * 2), "T: every value must be <="),
    (dict(include_categories=[[1] * 65] * 2), "include_categories: more than "
                                               "max_filter_labels=64"),
    (dict(max_per_category=[1, -1]), "max_per_category: every value must be >= 0"),
    (dict(exclude=np.ones([2, 10001], np.int64)), "exclude_item_ids: more than "
                                                   "max_exclude=10000"),
])
def test_bad_parameters_are_invalid_argument(tf_session, queries, change, needle):
    hist, _ = queries
    with tf_session as m:
        with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
            _retrieve(m, hist[:2], **change)


def test_history_too_long_and_empty_batch(tf_session, queries):
    hist, _ = queries
    with tf_session as m:
        too_long = np.concatenate([hist[:1], hist[:1]], axis=1)
        with pytest.raises(tf.errors.InvalidArgumentError, match="longer than L"):
            m.run("serving_default", {"hist_item_ids": too_long})
        # Shorter histories are left-padded; unknown raw ids are ignored like padding.
        short = m.run("serving_default", {"hist_item_ids": hist[:2, -5:]})
        padded = np.zeros_like(hist[:2])
        padded[:, -5:] = hist[:2, -5:]
        full = m.run("serving_default", {"hist_item_ids": padded})
        np.testing.assert_array_equal(short["item_ids"], full["item_ids"])
        unknown = padded.copy()
        unknown[:, 0] = 987654321987
        np.testing.assert_array_equal(
            m.run("serving_default", {"hist_item_ids": unknown})["item_ids"], full["item_ids"])


@pytest.mark.parametrize("which", ["v_tf", "v_xla"])
def test_the_c_api_loader_answers_every_warmup_record_bit_for_bit(which, request):
    """The export ran `validate --loader cc`: TensorFlow's C API in a process without Python
    (no op library at all for --visited tf), warm-up replayed, every warm-up record (every
    signature; every XLA grid size) answered exactly as the session loader answers."""
    vdir = request.getfixturevalue(which)
    info = json.loads((vdir / EXPORT_INFO).read_text())
    cc = info["validation"]["cc_loader"]
    assert cc["bit_identical"] is True and cc["loader"] == "cc"
    assert cc["visited"] == ("tf" if which == "v_tf" else "bitmap")
    assert cc["warmup_records"] == cc["requests"] == info["warmup_records"]
    assert {"serving_default", "retrieve", "brute_force"} <= set(cc["signatures_run"])
    assert {"serving_default", "retrieve", "brute_force"} <= set(cc["signatures"])


def _copy_version(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_validate_cli_and_bad_version_directories(tmp_path, capsys):
    """`nann-tf validate` on a good version and on broken ones. The versions are copies of a
    small stand-in SavedModel (tests/toy_model.py: stock ops, variables, a warm-up file of 3
    records over 2 signatures), not of the CI export: each load takes a second where the CI
    export's takes ~20 s, and the C loader's answers on the real exports are checked bit for
    bit by their own validation (test_the_c_api_loader_answers_every_warmup_record_...)."""
    from nann_tf.export.cc_loader import CcLoaderError, run_cc_loader
    from nann_tf.serving.warmup import (read_warmup_requests, warmup_file_path,
                                        write_warmup_requests)

    toy = Path(write_toy_model(tmp_path / "toy", 1))
    (toy / EXPORT_INFO).write_text(json.dumps({"visited": "tf"}))  # no op library to load
    records = read_warmup_requests(warmup_file_path(toy))
    out = tmp_path / "report.json"
    assert run_cli("validate", toy, "--loader", "cc", "--output-json", out) == 0
    report = json.loads(out.read_text())
    assert report["bit_identical"] is True and report["requests"] == len(records) == 3
    assert report["warmup_records"] == 3
    assert set(report["signatures_run"]) == {r.signature_name or "serving_default"
                                             for r in records} == {"serving_default",
                                                                   "retrieve"}
    # (the python loader is what every export's validation runs: tested there)
    capsys.readouterr()
    # A missing variable shard: the loader's error names the variables file.
    broken = _copy_version(toy, tmp_path / "no-shard")
    for p in (broken / "variables").glob("variables.data-*"):
        p.unlink()
    assert run_cli("validate", broken, "--loader", "cc") == 2
    err = capsys.readouterr().err
    assert "nann-tf validate: error:" in err and "variables" in err and "no-shard" in err
    # A truncated warm-up file: named by the C loader (and by the Python reader before it).
    trunc = _copy_version(toy, tmp_path / "truncated")
    wfile = warmup_file_path(trunc)
    data = open(wfile, "rb").read()
    with open(wfile, "wb") as f:
        f.write(data[:len(data) - 10])
    with pytest.raises(CcLoaderError, match=r"tf_serving_warmup_requests: record \d+ is truncated"):
        run_cc_loader(trunc, [], op_library=False)
    assert run_cli("validate", trunc, "--loader", "cc") == 2
    assert "tf_serving_warmup_requests" in capsys.readouterr().err
    # A warm-up record calling a signature the model does not have.
    absent = _copy_version(toy, tmp_path / "absent-signature")
    hist = np.zeros((1, ToyModelSpec().history_length), np.int64)
    write_warmup_requests(warmup_file_path(absent), "toy", "serving_default",
                          [{"hist_item_ids": hist}, ("no_such_signature", {"item_ids": hist})])
    with pytest.raises(CcLoaderError, match=r'record 1 \(signature "no_such_signature"\).*no '
                                            r'signature "no_such_signature"'):
        run_cc_loader(absent, [], op_library=False)
    assert run_cli("validate", tmp_path / "nothing-here", "--loader", "cc") == 2
    assert "no saved_model.pb" in capsys.readouterr().err


def test_export_removes_dead_exports_leftovers_and_keeps_a_live_ones(leftovers, v_tf, base):
    """Through export_version itself (the v_tf export ran with both directories present)."""
    assert not leftovers["dead"].exists(), "the leftover of a dead export is removed"
    assert leftovers["live"].is_dir() and (leftovers["live"] / "saved_model.pb").is_file(), \
        "a concurrent export's temporary directory is not touched"
    assert (v_tf / "saved_model.pb").is_file()


def test_mixed_ef_T_rows_each_get_what_they_get_alone_at_the_batch_maximum(tf_session, queries):
    """A batch runs with the element-wise maximum of its rows' ef and T (TF Serving batching
    merges requests with different parameters): each row's answer equals that row's answer
    alone at the maximum, not at its own, smaller, setting (nor at the minimum)."""
    hist, _ = queries
    ef = [[60, 30], [200, 100], [120, 150]]   # per row: ef at level 0, level 1
    T = [[1, 0], [4, 0], [2, 0]]
    ef_max, T_max = np.max(ef, axis=0).tolist(), np.max(T, axis=0).tolist()
    assert ef_max == [200, 150] and T_max == [4, 0]  # no single row has both
    with tf_session as m:
        batch = _retrieve(m, hist[:3], ef=ef, T=T)
        for i in range(3):
            alone = _retrieve(m, hist[i:i + 1], ef=[ef_max], T=[T_max])
            np.testing.assert_array_equal(batch["item_ids"][i], alone["item_ids"][0])
            np.testing.assert_array_equal(batch["num_scored"][i], alone["num_scored"][0])
            # The same items; their float32 scores computed in batches of other shapes may
            # differ in the last bits (oneDNN's summation order): measured up to 2.4e-6 on
            # scores of ~2.3.
            np.testing.assert_allclose(batch["scores"][i], alone["scores"][0], rtol=1e-5)
        # The rows' own settings give other answers, so a batch run at the minimum, or per
        # row, would fail the equalities above.
        own = [_retrieve(m, hist[i:i + 1], ef=[ef[i]], T=[T[i]]) for i in range(3)]
        low = _retrieve(m, hist[:1], ef=[np.min(ef, axis=0).tolist()],
                        T=[np.min(T, axis=0).tolist()])
    assert own[0]["num_scored"][0] < batch["num_scored"][0]
    assert own[2]["num_scored"][0] < batch["num_scored"][2]
    assert low["num_scored"][0] < batch["num_scored"][0]


def test_a_failed_validation_leaves_nothing_behind(tmp_path, attention_model_dir,
                                                   ci_index_dir, capsys, monkeypatch):
    """A real validation failure, not a simulated one: the export's own search at small
    parameters falls short of --min-coverage; it is refused before anything is saved (a save
    would crash here), and no version and no temporary directory stay."""
    def no_save(*a, **k):
        raise AssertionError("saved a version whose coverage is below --min-coverage")

    monkeypatch.setattr(tf.saved_model, "save", no_save)
    out = tmp_path / "m"
    rc = run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                 "--output", out, "--visited", "tf", "--no-xla", "--ef", "1=8,0=12",
                 "--T", "0=0", "-k", "10", "--no-history-seeds", "--min-coverage", "0.99")
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--min-coverage 0.99" in err and "coverage" in err
    assert not out.exists() or list(out.iterdir()) == []


def test_existing_version_is_refused_and_failed_export_leaves_nothing(
        base, leftovers, v_tf, attention_model_dir, ci_index_dir, monkeypatch, capsys):
    before = sorted(p.name for p in base.iterdir())
    assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                   "--output", base, "--version", "1") == 2
    assert "already exists" in capsys.readouterr().err

    def crash(obj, export_dir, *a, **k):  # half a SavedModel written, then the process fails
        Path(export_dir).mkdir(parents=True, exist_ok=True)
        (Path(export_dir) / "saved_model.pb").write_bytes(b"partial")
        raise RuntimeError("simulated crash while saving")

    monkeypatch.setattr(tf.saved_model, "save", crash)
    # The in-memory searches before the save (tracing every signature, ~2 minutes here) have
    # nothing to do with what a crash in the save leaves behind: skipped.
    monkeypatch.setattr(export_mod, "_reference_answers", lambda module, hist: ({}, {}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_version(attention_model_dir, ci_index_dir, base, visited="tf", xla=False,
                       validate=False)
    assert sorted(p.name for p in base.iterdir()) == before
    # A dead export's temporary directory (TF Serving ignores non-numeric names) is cleaned up.
    stale = base / ".tmp-9-999999"
    stale.mkdir()
    monkeypatch.undo()
    with pytest.raises(SearchParamsError, match="k = 500 is larger than ef for level 0"):
        export_version(attention_model_dir, ci_index_dir, base, k=500)
    assert stale.exists(), "parameters are checked before anything is written"
    export_mod.clean_stale_tmp(base)
    assert not stale.exists()
    assert [p for p in base.iterdir() if p.name.startswith(".tmp")] == [leftovers["live"]]


def test_export_cli_bad_inputs(tmp_path, attention_model_dir, ci_index_dir, capsys):
    out = tmp_path / "m"
    assert run_cli("export", "--model", tmp_path / "nope", "--index", ci_index_dir,
                   "--output", out) == 2
    assert "nope" in capsys.readouterr().err
    assert run_cli("export", "--model", attention_model_dir, "--index", tmp_path,
                   "--output", out) == 2
    assert "index.json" in capsys.readouterr().err
    assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                   "--output", out, "--ef", "1:100") == 2
    assert "--ef '1:100': expected LEVEL=VALUE" in capsys.readouterr().err
    assert run_cli("export", "--model", attention_model_dir, "--index", ci_index_dir,
                   "--output", out, "--filter-entries", "-1") == 2
    assert "--filter-entries -1: expected >= 0" in capsys.readouterr().err
    assert not out.exists() or not any(p.name.isdigit() for p in out.iterdir())


def test_warmup_records_cover_grid_at_each_batch_size_and_replay_a_request_log(tmp_path):
    from nann_tf.serving.warmup import write_warmup_requests

    hist = np.arange(1, 31, dtype=np.int64).reshape(10, 3)
    log = tmp_path / "requests.tfrecord"
    write_warmup_requests(log, "nann", "serving_default",
                          [{"hist_item_ids": hist[:2]}, ("brute_force", {"hist_item_ids":
                                                                          hist[:1]})])
    extra = export_mod.read_request_log(str(log), "nann")
    assert [sig for sig, _ in extra] == ["serving_default", "brute_force"]
    recs = export_mod.warmup_inputs([16, 32, 48], hist, (1, 4), extra=extra)
    grid = [(len(i["width"]), int(i["width"][0])) for s, i in recs if s == "warmup_grid"]
    assert grid == [(1, 16), (1, 32), (1, 48), (4, 16), (4, 32), (4, 48)]
    assert recs[6:8] == extra
    assert len(recs) <= 1000 and any(s == "serving_default" for s, _ in recs[8:])
    with pytest.raises(ExportError, match="more than TF Serving's 1000"):
        export_mod.warmup_inputs(list(range(1, 600)), hist, (1, 8))
    (tmp_path / "junk").write_bytes(b"not a tfrecord")
    with pytest.raises(ExportError, match="^warmup_requests "):  # the library names it
        export_mod.read_request_log(str(tmp_path / "junk"), "nann")


def test_hot_swap_to_an_xla_version_under_load(tf_session, xla_session, v_tf, v_xla, queries,
                                               tmp_path):
    """Clients keep querying while a version whose warm-up compiles the whole XLA shape grid is
    published next to a stock-ops version: no request fails, every answer is the answer of the
    version that gave it, and once the XLA version is AVAILABLE it takes every client's traffic
    for good (version 1 then unloads)."""
    import shutil

    from nann_tf.serving.model_config import ServedModelConfig, ServerOptions
    from nann_tf.serving.server import ModelServer

    from traffic import BackgroundTraffic, wait_for

    hist, _ = queries
    base = tmp_path / "nann"
    base.mkdir()
    shutil.copytree(v_tf, base / "1")
    server = ModelServer([ServedModelConfig("nann", str(base))],
                         ServerOptions(host="127.0.0.1", port=0, max_num_load_retries=0,
                                       file_system_poll_wait_seconds=0.1))
    port = server.start()
    rows = hist[:6]
    traffic = BackgroundTraffic(f"127.0.0.1:{port}", "nann", rows, clients=3, timeout_s=60)
    try:
        with traffic:
            wait_for(lambda: traffic.count(1) >= 20, 60, "requests on version 1", traffic.errors)
            shutil.copytree(v_xla, tmp_path / ".staging")
            (tmp_path / ".staging").rename(base / "2")  # published complete, as export does
            wait_for(lambda: traffic.count(2) >= 20, 300, "requests on version 2",
                     traffic.errors)
            wait_for(lambda: all(traffic.count(2, w) >= 3 for w in range(3)), 60,
                     "every client to get answers from version 2", traffic.errors)
        # Version 1 leaves service as soon as 2 is AVAILABLE, then unloads (UNLOADING -> END).
        wait_for(lambda: {r.version: r.state for r in server.manager.status("nann")}.get(1)
                 == "END", 60, "version 1 to finish unloading")
    finally:
        status = {r.version: r for r in server.manager.status("nann")}
        server.stop(5.0)
    assert traffic.errors == []
    assert status[2].state == "AVAILABLE" and status[1].state == "END"
    expected = {}
    for version, loaded in ((1, tf_session), (2, xla_session)):
        with loaded as m:
            expected[version] = [m.run("serving_default", {"hist_item_ids": h[None]})
                                 for h in rows]
    for w in range(3):
        seen = traffic.versions_seen_by(w)
        assert seen == sorted(seen) and set(seen) <= {1, 2}, "never back to version 1"
    for _, version, j, outputs in traffic.results:
        np.testing.assert_array_equal(outputs["item_ids"], expected[version][j]["item_ids"])


# ----------------------------------------------------------------------- similar items
def _similar(m, seeds, k=0, exclude=None, include=False, signature="similar_items"):
    seeds = np.asarray(seeds, np.int64)
    b = len(seeds)
    return m.run(signature, {
        "item_ids": seeds, "k": np.broadcast_to(np.asarray(k, np.int32), (b,)).copy(),
        "exclude_item_ids": np.zeros([b, 1], np.int64) if exclude is None else exclude,
        "include_seeds": np.broadcast_to(np.asarray(include, bool), (b,)).copy(),
        **rules_inputs(b)})


@pytest.fixture(scope="module")
def similar_seeds(ci_dataset, queries):
    """Raw-id seed rows (one, two or three seeds) and their dense ids."""
    from nann_tf.evaluation.similar import seed_rows

    _, idx = queries
    held = Dataset.load(ci_dataset).test
    dense = seed_rows(held.hist[held.hist_len > 0][:18])
    return np.where(dense > 0, idx.raw_item_id[dense], 0).astype(np.int64), dense


@pytest.mark.parametrize("signature,mode", [("similar_items", "embedding"),
                                            ("similar_items_model", "model")])
def test_similar_signatures_equal_the_in_process_search(tf_session, xla_session, v_tf,
                                                        similar_seeds,
                                                        attention_model_dir, queries,
                                                        signature, mode):
    """Both exports (stock ops without XLA, bitmap op with XLA) answer what the offline
    Retriever answers for the same seeds, in both modes, at the export's parameters."""
    from nann_tf.evaluation.retriever import Retriever
    from nann_tf.model.saved import load_trained_model
    from nann_tf.search.params import SearchParams

    raw, dense = similar_seeds
    _, idx = queries
    model, cfg, _ = load_trained_model(attention_model_dir)
    info = json.loads((v_tf / EXPORT_INFO).read_text())
    params = SearchParams.from_mapping(
        info["similar"] if mode == "embedding" else
        {k: v for k, v in info["search"].items() if k != "max_ef"})
    assert params == (cfg.similar if mode == "embedding" else cfg.search)
    offline = Retriever(model, idx, cfg.search.start_level, "tf").similar(dense, mode, params)
    want = np.where(offline.ids > 0, idx.raw_item_id[offline.ids], 0)
    for version in (tf_session, xla_session):
        with version as m:
            got = _similar(m, raw, signature=signature)
        assert got["item_ids"].shape == want.shape
        # The model mode scores in [B, W] blocks whose shape differs between the paths
        # (XLA pads W to the grid): round-off may swap near-equal neighbours.
        assert (got["item_ids"] == want).mean() >= (1.0 if mode == "embedding" else 0.99)
        np.testing.assert_array_equal(got["num_scored"], offline.num_scored)


def test_similar_items_masks_padding_and_unknown_ids_and_excludes_seeds(tf_session, v_tf,
                                                                        similar_seeds):
    raw, _ = similar_seeds
    s, t = int(raw[1, -1]), int(raw[1, -2])
    unknown = 987654321987
    # Rows 5 and 6 give s, t in the same order: the model mode reads the seeds as a history,
    # and with recency (model.position_bias) the order of a history matters.
    rows = [[s, 0, 0], [0, s, 0], [unknown, s, 0], [0, 0, 0], [unknown, 0, -5], [s, t, 0],
            [s, t, unknown]]
    with tf_session as m:
        for signature in ("similar_items", "similar_items_model"):
            out = _similar(m, rows, signature=signature)
            ids, scores = out["item_ids"], out["scores"]
            np.testing.assert_array_equal(ids[1], ids[0])
            np.testing.assert_array_equal(ids[2], ids[0])
            np.testing.assert_array_equal(ids[6], ids[5])  # an unknown id among real seeds
            for r in (3, 4):  # nothing known: no results
                assert (ids[r] == 0).all() and np.isneginf(scores[r]).all()
            assert (ids[[0, 5]] > 0).all()
            assert not np.isin(ids[0], [s]).any() and not np.isin(ids[5], [s, t]).any()
            with_seed = _similar(m, rows[:1], include=True, signature=signature)
            assert s in with_seed["item_ids"][0]
            # Excluding the first three results shifts the list by three: none of them comes
            # back, and the next five stay (at least 4 of them: an excluded item is scored -inf
            # and not expanded, so the walk may miss a neighbour it reached through one; the
            # model mode lost one of five once).
            top = ids[:1, :3]
            shifted = _similar(m, rows[:1], exclude=top, signature=signature)["item_ids"][0]
            assert not np.isin(shifted, top).any()
            assert len(set(shifted[:5].tolist()) & set(ids[0, 3:8].tolist())) >= 4, signature
        emb = _similar(m, rows[:1], include=True)
        assert emb["item_ids"][0, 0] == s and emb["scores"][0, 0] == 0.0  # distance 0 to itself
        # k per row: its own k (0 = the export's default), padding beyond.
        info = json.loads((v_tf / EXPORT_INFO).read_text())
        out = _similar(m, [[s, 0], [t, 0], [s, t]], k=[3, 0, 7])
        default_k = info["similar"]["k"]
        assert out["item_ids"].shape == (3, max(7, default_k))
        assert [(row > 0).sum() for row in out["item_ids"]] == [3, default_k, 7]


@pytest.mark.parametrize("signature,change,needle", [
    ("similar_items", dict(k=-1), "k: every value must be >= 0"),
    ("similar_items", dict(k=100000), "k: every value must be <="),
    ("similar_items_model", dict(k=100000), "k: every value must be <="),
    ("similar_items", dict(k=np.zeros(3, np.int32)), "batch size.*'k'"),
    ("similar_items", dict(seeds=np.zeros([2, 0], np.int64)), "item_ids: no seed columns"),
    ("similar_items", dict(seeds=np.zeros([0, 2], np.int64)), "item_ids: the batch is empty"),
    ("similar_items_model", dict(seeds=np.ones([2, 200], np.int64)),
     "item_ids: more than 20 seed columns.*L=20"),
    ("similar_items", dict(include=np.zeros(1, bool)), "batch size.*'include_seeds'"),
])
def test_similar_items_bad_requests_are_invalid_argument(tf_session, similar_seeds, signature,
                                                         change, needle):
    raw, _ = similar_seeds
    seeds = change.pop("seeds", raw[:2])
    b = len(seeds)
    k = change.pop("k", 0)
    k = np.asarray(k, np.int32) if np.ndim(k) else np.full([b], k, np.int32)
    include = change.pop("include", np.zeros([b], bool))
    from nann_tf.serving.loader import RequestError

    with tf_session as m:
        # Refused by the graph's own checks (what TF Serving runs), or, for inputs of
        # different batch sizes, by the loader before the graph (what TF Serving's batching
        # does too): INVALID_ARGUMENT naming the input either way.
        with pytest.raises((tf.errors.InvalidArgumentError, RequestError), match=needle) as e:
            m.run(signature, {"item_ids": seeds, "k": k,
                              "exclude_item_ids": np.zeros([b, 1], np.int64),
                              "include_seeds": include, **rules_inputs(b)})
    assert getattr(e.value, "code", "INVALID_ARGUMENT") in ("INVALID_ARGUMENT",
                                                             tf.errors.INVALID_ARGUMENT)


def test_warmup_covers_the_similar_signatures_at_every_batch_size(v_xla):
    info = json.loads((v_xla / EXPORT_INFO).read_text())
    recs = read_warmup_requests(v_xla / "assets.extra" / "tf_serving_warmup_requests")
    for signature in ("similar_items", "similar_items_model"):
        sizes = {len(r.inputs["item_ids"]) for r in recs if r.signature_name == signature}
        assert sizes == set(info["warmup_batch_sizes"]), signature
    # The model mode scores with the same XLA function as the retrieval search, whose every
    # grid size is compiled by the warmup_grid records at these batch sizes (checked above).
    assert info["validation"]["similar_items_same_ids_as_in_memory"] == 1.0
    assert info["validation"]["similar_items_model_same_ids_as_in_memory"] >= 0.99


def test_similar_items_over_grpc_and_the_query_cli(tf_session, v_tf, similar_seeds, tmp_path,
                                                   capsys):
    """The local server serves both similar signatures: the client and `nann-tf query
    --similar-to` get what the loaded SavedModel answers; a bad k is INVALID_ARGUMENT naming
    k."""
    import shutil

    from nann_tf.serving.client import RetrievalClient, ServingError
    from nann_tf.serving.model_config import ServedModelConfig, ServerOptions
    from nann_tf.serving.server import ModelServer

    raw, _ = similar_seeds
    base = tmp_path / "nann"
    base.mkdir()
    # The stock-ops version (test_e2e serves the XLA one; its warm-up compiles the grid).
    shutil.copytree(v_tf, base / "2")
    server = ModelServer([ServedModelConfig("nann", str(base))],
                         ServerOptions(host="127.0.0.1", port=0, max_num_load_retries=0))
    port = server.start()
    try:
        with tf_session as m:
            want = {sig: _similar(m, raw[:4], signature=sig)
                    for sig in ("similar_items", "similar_items_model")}
        with RetrievalClient(f"127.0.0.1:{port}", "nann") as client:
            client.wait_until_ready(120)
            for mode, sig in (("embedding", "similar_items"), ("model", "similar_items_model")):
                rows = [list(r[r != 0]) for r in raw[:4]]  # ragged: the client pads
                ids, scores, n = client.similar_items(rows, mode=mode)
                # Right-padded seeds: the same items as the left-padded rows above.
                np.testing.assert_array_equal(ids, want[sig]["item_ids"])
                np.testing.assert_array_equal(n, want[sig]["num_scored"])
            with pytest.raises(ServingError) as e:
                client.similar_items([int(raw[0, -1])], k=-3)
            assert e.value.code.name == "INVALID_ARGUMENT" and "k:" in e.value.details
            with pytest.raises(ValueError, match="mode"):
                client.similar_items([int(raw[0, -1])], mode="cosine")
        seed = int(raw[0, -1])
        assert run_cli("query", "--server", f"127.0.0.1:{port}", "--model", "nann",
                       "--similar-to", seed, "-k", 4) == 0
        printed = capsys.readouterr().out
        first = [int(line.split()[1]) for line in printed.splitlines()[2:]]
        assert first == list(want["similar_items"]["item_ids"][0, :4])
        assert run_cli("query", "--server", f"127.0.0.1:{port}", "--model", "nann",
                       "--similar-to", seed, "--ef", "0=4") == 2
        assert "--ef does not go with --similar-to" in capsys.readouterr().err
    finally:
        server.stop(2.0)
