"""SessionModel: TF Serving's session loader, signature info, validation, warm-up replay."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.serving.loader import (ModelLoadError, RequestError, SessionModel,
                                    replay_warmup)
from nann_tf.serving.warmup import write_warmup_requests

from toy_model import (ToyModelSpec, corrupt_version, random_histories, raw_item_ids,
                       write_toy_model)

SPEC = ToyModelSpec(num_items=64, dim=8, history_length=6, num_levels=3, default_k=5)


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    return write_toy_model(tmp_path_factory.mktemp("toy"), 1, spec=SPEC, seed=3)


@pytest.fixture(scope="module")
def model(version_dir):
    with SessionModel(version_dir) as m:
        yield m


@pytest.fixture(scope="module")
def eager(version_dir):
    return tf.saved_model.load(version_dir)


def _histories(batch, seed=0):
    hist = random_histories(SPEC, batch, seed)
    hist[0, 0] = 999_999  # an unknown id: masked like padding
    return hist


def _retrieve_inputs(batch, k=4, seed=1):
    raw = raw_item_ids(SPEC.num_items)
    return {
        "hist_item_ids": _histories(batch, seed),
        "k": np.full(batch, k, np.int32),
        "ef": np.tile(np.array([8, 4, 2], np.int32), (batch, 1)),
        "T": np.tile(np.array([2, 1, 0], np.int32), (batch, 1)),
        "exclude_item_ids": np.stack([raw[:2]] * batch).astype(np.int64),
    }


def test_signature_info_matches_the_contract(model):
    assert {"serving_default", "retrieve", "brute_force"} <= set(model.signatures)
    sd = model.signature("")
    assert sd.name == "serving_default" and sd.method_name == "tensorflow/serving/predict"
    assert set(sd.inputs) == {"hist_item_ids"}
    h = sd.inputs["hist_item_ids"]
    assert (h.dtype, h.shape) == (np.dtype(np.int64), (None, SPEC.history_length))
    assert h.tensor_name.endswith(":0")
    assert {a: (s.dtype, len(s.shape)) for a, s in sd.outputs.items()} == {
        "item_ids": (np.dtype(np.int64), 2), "scores": (np.dtype(np.float32), 2),
        "num_scored": (np.dtype(np.int32), 1)}
    r = model.signature("retrieve")
    assert {a: (s.dtype, s.shape) for a, s in r.inputs.items()} == {
        "hist_item_ids": (np.dtype(np.int64), (None, SPEC.history_length)),
        "k": (np.dtype(np.int32), (None,)),
        "ef": (np.dtype(np.int32), (None, SPEC.num_levels)),
        "T": (np.dtype(np.int32), (None, SPEC.num_levels)),
        "exclude_item_ids": (np.dtype(np.int64), (None, None)),
    }
    assert sorted(r.batch_inputs) == sorted(r.inputs)
    assert set(model.signature("brute_force").outputs) == {"item_ids", "scores"}
    assert model.signature_defs["retrieve"].inputs["k"].dtype == tf.int32.as_datatype_enum


@pytest.mark.parametrize("signature, make_inputs", [
    ("serving_default", lambda: {"hist_item_ids": _histories(3)}),
    ("retrieve", lambda: _retrieve_inputs(3)),
    ("brute_force", lambda: {"hist_item_ids": _histories(4, seed=5)}),
])
def test_run_equals_the_tf2_in_process_call(model, eager, signature, make_inputs):
    inputs = make_inputs()
    got = model.run(signature, inputs)
    want = eager.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    assert set(got) == set(want)
    for alias, value in want.items():
        assert got[alias].dtype == value.dtype.as_numpy_dtype
        if got[alias].dtype == np.float32:
            np.testing.assert_allclose(got[alias], value.numpy(), rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[alias], value.numpy())


def test_retrieve_matches_numpy_brute_force(model, version_dir):
    # An independent oracle: scores recomputed from the saved variables.
    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    names = {n.split("/")[0]: n for n in reader.get_variable_to_shape_map()}
    emb = reader.get_tensor(names["embeddings"])
    inputs = _retrieve_inputs(3, k=4)
    got = model.run("retrieve", inputs)
    raw = raw_item_ids(SPEC.num_items)
    index = {int(r): i for i, r in enumerate(raw)}
    for b in range(3):
        idx = [index[int(x)] for x in inputs["hist_item_ids"][b] if int(x) in index]
        scores = emb @ emb[idx].mean(0)
        scores[[index[int(x)] for x in inputs["exclude_item_ids"][b]]] = -np.inf
        top = np.argsort(-scores, kind="stable")[:4]
        np.testing.assert_array_equal(got["item_ids"][b], raw[top])
        np.testing.assert_allclose(got["scores"][b], scores[top], rtol=1e-5)
        assert got["num_scored"][b] == SPEC.num_items - 2


def test_output_filter(model):
    out = model.run("", {"hist_item_ids": _histories(2)}, output_filter=["scores"])
    assert list(out) == ["scores"] and out["scores"].shape == (2, SPEC.default_k)
    with pytest.raises(RequestError, match="'nope'") as e:
        model.run("", {"hist_item_ids": _histories(2)}, output_filter=["nope"])
    assert e.value.code == "INVALID_ARGUMENT"


L = SPEC.history_length


@pytest.mark.parametrize("signature, inputs, kwargs, code, names", [
    ("retrieve", {k: v for k, v in _retrieve_inputs(1).items() if k != "k"}, {},
     "INVALID_ARGUMENT", ["'k'"]),
    ("", {"hist_item_ids": np.zeros((1, L), np.int64), "extra": np.zeros(1)}, {},
     "INVALID_ARGUMENT", ["'extra'"]),
    ("", {"hist_item_ids": np.zeros((1, L), np.int32)}, {}, "INVALID_ARGUMENT",
     ["'hist_item_ids'", "DT_INT32", "DT_INT64"]),
    ("", {"hist_item_ids": np.zeros(L, np.int64)}, {}, "INVALID_ARGUMENT",
     ["'hist_item_ids'", "rank 1"]),
    ("", {"hist_item_ids": np.zeros((1, L + 1), np.int64)}, {}, "INVALID_ARGUMENT",
     ["'hist_item_ids'", f"dimension 1 must be {L}"]),
    ("", {"hist_item_ids": np.zeros((0, L), np.int64)}, {"allow_empty_batch": False},
     "INVALID_ARGUMENT", ["empty batch", "'hist_item_ids'"]),
    ("", {"hist_item_ids": np.zeros((9, L), np.int64)}, {"max_batch_size": 8},
     "INVALID_ARGUMENT", ["batch size 9", "'hist_item_ids'"]),
    ("retrieve", {**_retrieve_inputs(2), "k": np.ones(3, np.int32)}, {}, "INVALID_ARGUMENT",
     ["'k'", "3", "2"]),
    ("nosuch", {"hist_item_ids": np.zeros((1, L), np.int64)}, {}, "FAILED_PRECONDITION",
     ['"nosuch"', "retrieve"]),
    ("__saved_model_init_op", {}, {}, "FAILED_PRECONDITION", ["method_name"]),
])
def test_bad_requests_are_refused_naming_the_input(model, signature, inputs, kwargs, code,
                                                    names):
    with pytest.raises(RequestError) as e:
        model.run(signature, inputs, **kwargs)
    assert e.value.code == code
    for name in names:
        assert name in e.value.message


def test_graph_errors_propagate_with_their_type(model):
    inputs = _retrieve_inputs(2)
    inputs["k"] = np.array([0, 3], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be >= 1"):
        model.run("retrieve", inputs)
    inputs["k"] = np.array([9, 3], np.int32)  # ef[:, 0] is 8
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"k must be <= ef\[:, 0\]"):
        model.run("retrieve", inputs)
    assert model.run("retrieve", _retrieve_inputs(2))["item_ids"].shape == (2, 4)


def test_replay_warmup_counts_records(model, version_dir, tmp_path):
    assert replay_warmup(model) == 3  # the toy model's own file
    assert replay_warmup(model, iterations=2) == 3
    path = tmp_path / "w"
    write_warmup_requests(path, "toy", "serving_default",
                          [{"hist_item_ids": _histories(b)} for b in range(1, 8)]
                          + [("retrieve", _retrieve_inputs(2))])
    assert replay_warmup(model, path) == 8
    assert replay_warmup(model, tmp_path / "absent") == 0


def test_replay_warmup_shows_progress_when_asked(model, tmp_path, capsys, monkeypatch):
    """`nann-tf serve` passes a description: records replayed / total with a rate (forced onto
    the terminal style here; off a terminal a long warm-up logs every 10 s)."""
    monkeypatch.setenv("NANN_TF_PROGRESS", "tty")
    path = tmp_path / "w"
    write_warmup_requests(path, "toy", "serving_default",
                          [{"hist_item_ids": _histories(b)} for b in range(1, 6)])
    assert replay_warmup(model, path, progress="serve: warm-up of toy version 1") == 5
    last = capsys.readouterr().err.split("\r")[-1]
    assert last.startswith("serve: warm-up of toy version 1: 5/5 records (100%), "), last
    assert replay_warmup(model, path) == 5  # no description: silent
    assert capsys.readouterr().err == ""


def test_replay_warmup_refuses_a_failing_record(model, tmp_path):
    bad = _retrieve_inputs(1)
    bad["k"] = np.array([-1], np.int32)
    path = write_warmup_requests(tmp_path / "w", "toy", "retrieve",
                                 [_retrieve_inputs(1), bad])
    with pytest.raises(ModelLoadError, match="(?s)warm-up record 1.*k must be >= 1"):
        replay_warmup(model, path)


def test_broken_versions_fail_to_load_with_a_clear_error(tmp_path, version_dir):
    broken = corrupt_version(tmp_path, 2)
    with pytest.raises(ModelLoadError, match="cannot load SavedModel .*2"):
        SessionModel(broken)
    (tmp_path / "3").mkdir()
    with pytest.raises(ModelLoadError, match="saved_model.pb missing"):
        SessionModel(tmp_path / "3")
    with pytest.raises(ModelLoadError, match="gpu"):
        SessionModel(version_dir, tags=("serve", "gpu"))


def test_a_model_needing_an_unlinked_op_names_it(tmp_path, version_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    copy = tmp_path / "1"
    shutil.copytree(version_dir, copy)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((copy / "saved_model.pb").read_bytes())
    renamed = 0
    for fn in proto.meta_graphs[0].graph_def.library.function:
        for node in fn.node_def:
            if node.op == "TopKV2":
                node.op = "NannOpNotInThisBinary"
                renamed += 1
    assert renamed
    (copy / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelLoadError) as e:
        SessionModel(copy)
    assert "Op type not registered 'NannOpNotInThisBinary'" in str(e.value)
    assert "op library" in str(e.value) and "visited=tf" in str(e.value)


def test_closed_model_refuses_requests(version_dir):
    m = SessionModel(version_dir)
    m.close()
    with pytest.raises(RequestError) as e:
        m.run("", {"hist_item_ids": _histories(1)})
    assert e.value.code == "UNAVAILABLE"


def _custom_op_model(tmp_path):
    """A SavedModel whose graph uses the nann custom op (skipped when it is not built)."""
    from nann_tf import ops

    try:
        ops.load_library()
    except ops.OpLibraryError as e:
        pytest.skip(f"op library not built: {e}")

    class Dedup(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="ids")])
        def serve(self, ids):
            kept, _, _ = ops.filter_unvisited(ids, tf.zeros_like(ids), tf.zeros([1, 2], tf.int64))
            return {"kept_ids": kept}

    path = str(tmp_path / "1")
    module = Dedup()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_a_model_with_the_custom_op_loads_when_the_library_is_there(tmp_path):
    path = _custom_op_model(tmp_path)
    with SessionModel(path) as m:
        out = m.run("", {"ids": np.array([3, 5, 3, 7, 5], np.int64)})
    np.testing.assert_array_equal(out["kept_ids"], [3, 5, 7])


def test_a_model_with_the_custom_op_fails_clearly_without_the_library(tmp_path):
    import subprocess
    import sys

    path = _custom_op_model(tmp_path)
    code = ("from nann_tf.serving.loader import SessionModel, ModelLoadError\n"
            "try:\n"
            f"    SessionModel({path!r})\n"
            "except ModelLoadError as e:\n"
            "    print('REFUSED', e)\n")
    env = dict(os.environ, NANN_TF_OPS_LIBRARY=str(tmp_path / "no_such_library.so"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120).stdout
    assert "REFUSED" in out
    assert "Op type not registered 'NannFilterUnvisited'" in out
    assert "no_such_library.so" in out  # why the library was not loaded
