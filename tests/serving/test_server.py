"""The local gRPC server: TF Serving's API, error codes, load, hot swap, shutdown; and the
static consistency of the TF Serving deployment files (Dockerfile, serving/ configs)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,
                                     get_model_status_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)

from nann_tf.serving.client import RetrievalClient, ServingError
from nann_tf.serving.loader import SessionModel
from nann_tf.serving.model_config import (ModelConfigError, ServedModelConfig, ServerOptions,
                                          VersionPolicy, parse_model_config_text)
from nann_tf.serving.process import python_module_command
from nann_tf.serving.server import ModelServer
from nann_tf.serving.tensors import from_tensor_proto
from nann_tf.serving.warmup import make_predict_request

from toy_model import ToyModelSpec, corrupt_version, random_histories, write_toy_model
from traffic import BackgroundTraffic, fixed_load, wait_for

from conftest import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = ToyModelSpec(num_items=64, dim=8, history_length=6, num_levels=3, default_k=5)
L = SPEC.history_length
MAX_BATCH = 16


def _histories(batch, seed=0):
    return random_histories(SPEC, batch, seed)


def _retrieve_inputs(batch=1, k=4):
    return {
        "hist_item_ids": _histories(batch, 7),
        "k": np.full(batch, k, np.int32),
        "ef": np.tile(np.array([8, 4, 2], np.int32), (batch, 1)),
        "T": np.tile(np.array([2, 1, 0], np.int32), (batch, 1)),
        "exclude_item_ids": np.zeros((batch, 1), np.int64),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "toy"
    version_dir = write_toy_model(base, 1, spec=SPEC, seed=11)
    options = ServerOptions(host="127.0.0.1", port=0, max_batch_size=MAX_BATCH,
                            file_system_poll_wait_seconds=0)
    config = ServedModelConfig("toy", str(base), version_labels={"stable": 1})
    server = ModelServer([config], options)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield {"server": server, "address": f"127.0.0.1:{port}", "version_dir": version_dir,
           "predict": prediction_service_pb2_grpc.PredictionServiceStub(channel),
           "model": model_service_pb2_grpc.ModelServiceStub(channel)}
    channel.close()
    server.stop(1.0)


@pytest.fixture(scope="module")
def eager(served):
    return tf.saved_model.load(served["version_dir"])


def _assert_outputs_equal(got: dict, want: dict):
    assert set(got) == set(want)
    for alias, value in want.items():
        value = np.asarray(value)
        assert got[alias].dtype == value.dtype, alias
        np.testing.assert_array_equal(got[alias], value, err_msg=alias)


# --------------------------------------------------------------------------- happy path
@pytest.mark.parametrize("signature, make_inputs", [
    ("serving_default", lambda: {"hist_item_ids": _histories(3)}),
    ("retrieve", lambda: _retrieve_inputs(2)),
    ("brute_force", lambda: {"hist_item_ids": _histories(5, seed=2)}),
])
def test_predict_returns_exactly_the_in_process_result(served, eager, signature, make_inputs):
    inputs = make_inputs()
    response = served["predict"].Predict(make_predict_request("toy", signature, inputs),
                                         timeout=10)
    got = {a: from_tensor_proto(t) for a, t in response.outputs.items()}
    want = eager.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    _assert_outputs_equal(got, {k: v.numpy() for k, v in want.items()})
    assert response.model_spec.name == "toy"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == signature


def test_predict_accepts_typed_value_fields_and_labels(served, eager):
    # Clients in other languages send int64_val instead of tensor_content.
    hist = _histories(2, seed=4)
    request = make_predict_request("toy", "", {"hist_item_ids": hist}, version_label="stable")
    request.inputs["hist_item_ids"].CopyFrom(tf.make_tensor_proto(hist.tolist(), tf.int64))
    request.inputs["hist_item_ids"].ClearField("tensor_content")
    request.inputs["hist_item_ids"].int64_val.extend(hist.reshape(-1).tolist())
    response = served["predict"].Predict(request, timeout=10)
    want = eager.signatures["serving_default"](hist_item_ids=tf.constant(hist))
    np.testing.assert_array_equal(from_tensor_proto(response.outputs["item_ids"]),
                                  want["item_ids"].numpy())
    assert response.model_spec.signature_name == "serving_default"


def test_get_model_metadata_returns_the_signature_defs(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "toy"
    request.metadata_field.append("signature_def")
    response = served["predict"].GetModelMetadata(request, timeout=10)
    assert response.model_spec.version.value == 1
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sig_map)
    with SessionModel(served["version_dir"]) as m:
        assert dict(sig_map.signature_def) == m.signature_defs
    dims = sig_map.signature_def["serving_default"].inputs["hist_item_ids"].tensor_shape.dim
    assert [d.size for d in dims] == [-1, L]
    request.metadata_field[0] = "nope"
    with pytest.raises(grpc.RpcError) as e:
        served["predict"].GetModelMetadata(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nope" in e.value.details()


def test_get_model_status(served):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "toy"
    response = served["model"].GetModelStatus(request, timeout=10)
    [row] = response.model_version_status
    assert row.version == 1 and row.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert row.status.error_code == 0
    request.model_spec.name = "nosuch"
    with pytest.raises(grpc.RpcError) as e:
        served["model"].GetModelStatus(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "nosuch" in e.value.details()


def test_unimplemented_apis_say_so(served):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "toy"
    with pytest.raises(grpc.RpcError) as e:
        served["predict"].Classify(request, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --------------------------------------------------------------------------- bad requests
def _req(signature="", inputs=None, **spec):
    return make_predict_request(spec.pop("name", "toy"), signature,
                                inputs if inputs is not None else {"hist_item_ids":
                                                                   _histories(1)}, **spec)


def _with(signature, inputs, alias, proto_edit):
    request = _req(signature, inputs)
    proto_edit(request.inputs[alias])
    return request


def _garbage(t):
    t.tensor_content = b"\x01\x02\x03garbage\xff" * 3


def _short_content(t):
    t.tensor_shape.dim[0].size = 2  # content holds 1 row


def _negative_dim(t):
    t.tensor_shape.dim[0].size = -3


def _memory_bomb(t):
    t.ClearField("tensor_content")
    t.int64_val.append(1)
    t.tensor_shape.dim[0].size = 10**12


def _invalid_dtype(t):
    t.dtype = types_pb2.DT_INVALID


def _retrieve_with(**changes):
    inputs = _retrieve_inputs(1)
    inputs.update(changes)
    return inputs


BAD_REQUESTS = [
    # (id, request builder, gRPC code, substrings of the message)
    ("missing_input", lambda: _req("retrieve", {k: v for k, v in _retrieve_inputs().items()
                                                if k != "k"}), "INVALID_ARGUMENT", ["'k'"]),
    ("extra_input", lambda: _req("", {"hist_item_ids": _histories(1), "user": np.ones((1, 2))}),
     "INVALID_ARGUMENT", ["'user'"]),
    ("wrong_dtype", lambda: _req("", {"hist_item_ids": _histories(1).astype(np.int32)}),
     "INVALID_ARGUMENT", ["'hist_item_ids'", "DT_INT32"]),
    ("float_params_nan", lambda: _req("retrieve", _retrieve_with(
        ef=np.array([[np.nan, 4, 2]], np.float32))), "INVALID_ARGUMENT", ["'ef'", "DT_FLOAT"]),
    ("wrong_rank", lambda: _req("", {"hist_item_ids": np.zeros(L, np.int64)}),
     "INVALID_ARGUMENT", ["'hist_item_ids'", "rank"]),
    ("empty_batch", lambda: _req("", {"hist_item_ids": np.zeros((0, L), np.int64)}),
     "INVALID_ARGUMENT", ["empty batch", "'hist_item_ids'"]),
    ("oversized_batch", lambda: _req("", {"hist_item_ids": _histories(MAX_BATCH + 1)}),
     "INVALID_ARGUMENT", [f"batch size {MAX_BATCH + 1}", "'hist_item_ids'"]),
    ("history_longer_than_L", lambda: _req("", {"hist_item_ids": np.ones((1, L + 3), np.int64)}),
     "INVALID_ARGUMENT", ["'hist_item_ids'", f"dimension 1 must be {L}"]),
    ("ef_wrong_width", lambda: _req("retrieve", _retrieve_with(ef=np.ones((1, 2), np.int32))),
     "INVALID_ARGUMENT", ["'ef'"]),
    ("exclude_wrong_rank", lambda: _req("retrieve", _retrieve_with(
        exclude_item_ids=np.zeros(1, np.int64))), "INVALID_ARGUMENT", ["'exclude_item_ids'"]),
    ("mismatched_batch_dims", lambda: _req("retrieve", _retrieve_with(
        k=np.array([4, 4], np.int32))), "INVALID_ARGUMENT", ["'k'", "batch size"]),
    ("negative_k", lambda: _req("retrieve", _retrieve_with(k=np.array([-2], np.int32))),
     "INVALID_ARGUMENT", ["k must be >= 1"]),
    ("zero_k", lambda: _req("retrieve", _retrieve_with(k=np.array([0], np.int32))),
     "INVALID_ARGUMENT", ["k must be >= 1"]),
    ("huge_k", lambda: _req("retrieve", _retrieve_with(k=np.array([2**31 - 1], np.int32))),
     "INVALID_ARGUMENT", ["k must be <="]),
    ("k_above_ef0", lambda: _req("retrieve", _retrieve_with(k=np.array([9], np.int32))),
     "INVALID_ARGUMENT", ["k must be <= ef[:, 0]"]),
    ("negative_ef", lambda: _req("retrieve", _retrieve_with(
        ef=np.array([[8, -1, 2]], np.int32))), "INVALID_ARGUMENT", ["ef must be >= 1"]),
    ("negative_T", lambda: _req("retrieve", _retrieve_with(T=np.array([[2, -5, 0]], np.int32))),
     "INVALID_ARGUMENT", ["T must be >= 0"]),
    ("unknown_model", lambda: _req(name="nosuch"), "NOT_FOUND", ["nosuch"]),
    ("unknown_version", lambda: _req(version=99), "NOT_FOUND", ["Specific(toy, 99)"]),
    ("unknown_label", lambda: _req(version_label="canary"), "INVALID_ARGUMENT", ["canary"]),
    ("unknown_signature", lambda: _req("nosuchsig"), "FAILED_PRECONDITION", ["nosuchsig"]),
    ("init_op_signature", lambda: _req("__saved_model_init_op", {"x": np.ones(1)}),
     "FAILED_PRECONDITION", ["__saved_model_init_op"]),
    ("garbage_tensor_bytes", lambda: _with("", {"hist_item_ids": _histories(1)},
                                           "hist_item_ids", _garbage),
     "INVALID_ARGUMENT", ["tensor parsing error: hist_item_ids"]),
    ("content_shorter_than_shape", lambda: _with("", {"hist_item_ids": _histories(1)},
                                                 "hist_item_ids", _short_content),
     "INVALID_ARGUMENT", ["tensor parsing error: hist_item_ids"]),
    ("negative_dimension", lambda: _with("", {"hist_item_ids": _histories(1)}, "hist_item_ids",
                                         _negative_dim),
     "INVALID_ARGUMENT", ["hist_item_ids", "negative dimension"]),
    ("memory_bomb_shape", lambda: _with("", {"hist_item_ids": _histories(1)}, "hist_item_ids",
                                        _memory_bomb),
     "INVALID_ARGUMENT", ["hist_item_ids", "elements"]),
    ("invalid_dtype_enum", lambda: _with("", {"hist_item_ids": _histories(1)}, "hist_item_ids",
                                         _invalid_dtype),
     "INVALID_ARGUMENT", ["'hist_item_ids'", "DT_INVALID"]),
    ("empty_model_name", lambda: _req(name=""), "INVALID_ARGUMENT", ["model_spec.name"]),
    ("unknown_output_filter", lambda: _output_filter(_req(), "nosuch_output"),
     "INVALID_ARGUMENT", ["nosuch_output"]),
]


def _output_filter(request, alias):
    request.output_filter.append(alias)
    return request


@pytest.mark.parametrize("build, code, names", [b[1:] for b in BAD_REQUESTS],
                         ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_the_right_code_and_names_the_input(served, build, code, names):
    with pytest.raises(grpc.RpcError) as e:
        served["predict"].Predict(build(), timeout=10)
    assert e.value.code() == getattr(grpc.StatusCode, code), e.value.details()
    for name in names:
        assert name in e.value.details()
    # ... and the server keeps serving.
    ok = served["predict"].Predict(_req(), timeout=10)
    assert from_tensor_proto(ok.outputs["item_ids"]).shape == (1, SPEC.default_k)


def test_at_least_twenty_kinds_of_bad_request():
    assert len(BAD_REQUESTS) >= 20


# --------------------------------------------------------------------------- load
def test_concurrent_clients_get_correct_answers(served, eager):
    histories = _histories(8, seed=21)
    expected = [eager.signatures["serving_default"](hist_item_ids=tf.constant(h[None]))
                for h in histories]
    expected = [{k: v.numpy() for k, v in e.items()} for e in expected]
    latencies, errors, elapsed = fixed_load(served["address"], "toy", histories, expected,
                                            clients=8, requests=500, timeout_s=30)
    assert errors == []
    assert len(latencies) == 8 * 500
    ms = np.asarray(latencies) * 1e3
    print(f"\n8 clients x 500 requests: {len(ms) / elapsed:.0f} QPS, p50 "
          f"{np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms")


# --------------------------------------------------------------------------- versions
def test_hot_swap_under_load_and_broken_version_refused(tmp_path):
    base = tmp_path / "toy"
    write_toy_model(base, 1, spec=SPEC, seed=5, score_offset=0.0)
    (base / "7").mkdir()  # a version still being written: no saved_model.pb yet
    (base / ".tmp-8-abc").mkdir()
    options = ServerOptions(host="127.0.0.1", port=0, file_system_poll_wait_seconds=0.1,
                            max_num_load_retries=0)
    server = ModelServer([ServedModelConfig("toy", str(base))], options)
    port = server.start()
    histories = _histories(6, seed=9)
    traffic = BackgroundTraffic(f"127.0.0.1:{port}", "toy", histories, clients=4, timeout_s=30)
    try:
        with traffic:
            wait_for(lambda: traffic.count(1) >= 50, 30, "requests on version 1")
            write_toy_model(base, 2, spec=SPEC, seed=6, score_offset=100.0)
            wait_for(lambda: traffic.count(2) >= 50, 60, "requests on version 2")
            corrupt_version(base, 3)

            def broken_refused():
                rows = {r.version: r for r in server.manager.status("toy")}
                return 3 in rows and rows[3].state == "END"

            wait_for(broken_refused, 30, "version 3 to be refused")
            after_broken = traffic.count(2)
            wait_for(lambda: traffic.count(2) >= after_broken + 50, 30,
                      "requests after the refusal")
    finally:
        status = {r.version: r for r in server.manager.status("toy")}
        server.stop(5.0)
    results, errors = traffic.results, traffic.errors
    assert errors == []
    # Responses switched to version 2 and never went back; each matches its version's model.
    for w in range(4):
        versions = traffic.versions_seen_by(w)
        assert versions == sorted(versions) and set(versions) <= {1, 2}
    expected = {}
    for version in (1, 2):
        with SessionModel(base / str(version)) as m:
            expected[version] = [m.run("", {"hist_item_ids": h[None]}) for h in histories]
    for _, version, j, outputs in results:
        _assert_outputs_equal(outputs, expected[version][j])
    assert not np.allclose(expected[1][0]["scores"], expected[2][0]["scores"])
    assert status[2].state == "AVAILABLE" and status[1].state == "END"
    assert status[3].state == "END" and status[3].error_code != "OK"
    assert "cannot load SavedModel" in status[3].error_message
    assert 7 not in status and 8 not in status


def _stage_version(base, version, staging, records, **toy):
    """Writes a toy version with the given warm-up records in ``staging`` and renames it into
    ``base`` complete, as an export publishes a version."""
    from nann_tf.serving.warmup import write_warmup_requests

    vdir = write_toy_model(staging, version, spec=SPEC, warmup=False, **toy)
    write_warmup_requests(vdir, "toy", "serving_default", records)
    os.replace(vdir, base / str(version))
    return base / str(version)


class _Observer:
    """Polls GetModelStatus and a latest-version Predict every few ms from a thread, recording
    ``(t_sent, t_received, {version: state}, answering version)`` with time.monotonic."""

    def __init__(self, address, history):
        self.address, self.history, self.rows, self.errors = address, history, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        channel = grpc.insecure_channel(self.address)
        model = model_service_pb2_grpc.ModelServiceStub(channel)
        with RetrievalClient(self.address, "toy", timeout_s=30, retries=0) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    req = get_model_status_pb2.GetModelStatusRequest()
                    req.model_spec.name = "toy"
                    states = {s.version: get_model_status_pb2.ModelVersionStatus.State.Name(
                        s.state) for s in model.GetModelStatus(req, timeout=30)
                        .model_version_status}
                    answered = client.predict({"hist_item_ids": self.history}).model_version
                    self.rows.append((t0, time.monotonic(), states, answered))
                except Exception as e:  # collected; the tests assert there are none
                    self.errors.append(repr(e))
                time.sleep(0.01)
        channel.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)


def test_slow_warmup_keeps_the_new_version_unavailable_until_it_ends(tmp_path, monkeypatch):
    """TF Serving marks a version AVAILABLE only after its warm-up replay: during a slow replay
    GetModelStatus says LOADING and requests are answered by the old version."""
    from nann_tf.serving import manager as manager_mod

    spans = {}
    real_replay = manager_mod.replay_warmup

    def timed_replay(model, *a, **k):  # the real replay, timed
        start = time.monotonic()
        try:
            return real_replay(model, *a, **k)
        finally:
            spans[os.path.basename(model.version_dir)] = (start, time.monotonic())

    monkeypatch.setattr(manager_mod, "replay_warmup", timed_replay)
    base = tmp_path / "toy"
    write_toy_model(base, 1, spec=SPEC, seed=5)
    options = ServerOptions(host="127.0.0.1", port=0, file_system_poll_wait_seconds=0.05,
                            max_num_load_retries=0)
    server = ModelServer([ServedModelConfig("toy", str(base))], options)
    port = server.start()
    history = _histories(1, seed=3)
    busy = [("busy", {"hist_item_ids": history, "spin": np.array([40000], np.int32)})] * 3
    try:
        with _Observer(f"127.0.0.1:{port}", history) as obs:
            wait_for(lambda: len(obs.rows) >= 5, 30, "observations of version 1", obs.errors)
            _stage_version(base, 2, tmp_path / "staging", busy, seed=6, busy_signature=True)
            wait_for(lambda: any(r[2].get(2) == "AVAILABLE" and r[3] == 2 for r in obs.rows),
                     120, "version 2 to serve", obs.errors)
    finally:
        server.stop(5.0)
    assert obs.errors == []
    start, end = spans["2"]
    assert end - start > 0.3, "the warm-up was meant to be slow"
    during = [r for r in obs.rows if r[0] >= start and r[1] <= end]
    assert len(during) >= 5, "the replay window was observed"
    assert all(r[2].get(2) == "LOADING" and r[3] == 1 for r in during), during[:3]
    # Nothing answered before the replay ended saw version 2 available or answering.
    early = [r for r in obs.rows if r[1] <= end]
    assert all(r[2].get(2) != "AVAILABLE" and r[3] == 1 for r in early)


def test_failing_warmup_record_refuses_the_version_and_the_old_one_keeps_serving(tmp_path):
    """A version whose warm-up fails is never AVAILABLE (state END with the error after the
    retries); the old version keeps answering, and a request for the new one is NOT_FOUND."""
    base = tmp_path / "toy"
    write_toy_model(base, 1, spec=SPEC, seed=5)
    options = ServerOptions(host="127.0.0.1", port=0, file_system_poll_wait_seconds=0.05,
                            max_num_load_retries=1, load_retry_interval_s=0.2)
    server = ModelServer([ServedModelConfig("toy", str(base))], options)
    port = server.start()
    history = _histories(1, seed=3)
    good = {"hist_item_ids": history}
    bad = ("retrieve", {**_retrieve_inputs(1, k=SPEC.num_items + 1)})  # k > items: graph error
    try:
        with _Observer(f"127.0.0.1:{port}", history) as obs:
            wait_for(lambda: len(obs.rows) >= 5, 30, "observations of version 1", obs.errors)
            _stage_version(base, 2, tmp_path / "staging", [good, good, bad, good], seed=6)

            def refused():
                rows = {r.version: r for r in server.manager.status("toy")}
                return 2 in rows and rows[2].state == "END"

            wait_for(refused, 60, "version 2 to be refused", obs.errors)
            n = len(obs.rows)
            wait_for(lambda: len(obs.rows) >= n + 5, 30, "requests after the refusal",
                     obs.errors)
            with RetrievalClient(f"127.0.0.1:{port}", "toy", retries=0) as client:
                with pytest.raises(ServingError) as e:
                    client.predict(good, version=2)
                assert e.value.code == grpc.StatusCode.NOT_FOUND
                assert client.predict(good).model_version == 1
            status = {r.version: r for r in server.manager.status("toy")}
    finally:
        server.stop(5.0)
    assert obs.errors == []
    assert all(r[3] == 1 and r[2].get(2) != "AVAILABLE" for r in obs.rows), \
        "version 2 never served, never AVAILABLE"
    assert status[1].state == "AVAILABLE"
    assert status[2].error_code != "OK"
    assert "warm-up record 2" in status[2].error_message
    assert "k must be <=" in status[2].error_message


def test_version_policies_and_labels(tmp_path):
    base = tmp_path / "m"
    for v in (1, 2, 3):
        write_toy_model(base, v, spec=SPEC, seed=v, score_offset=float(v), warmup=False)
    configs = [
        ServedModelConfig("all", str(base), VersionPolicy("all")),
        ServedModelConfig("two", str(base), VersionPolicy("latest", 2)),
        ServedModelConfig("pinned", str(base), VersionPolicy("specific", versions=(1, 3)),
                          version_labels={"stable": 1, "canary": 3}),
    ]
    server = ModelServer(configs, ServerOptions(host="127.0.0.1", port=0,
                                                file_system_poll_wait_seconds=0))
    port = server.start()
    try:
        def available(name):
            return sorted(r.version for r in server.manager.status(name)
                          if r.state == "AVAILABLE")

        assert available("all") == [1, 2, 3]
        assert available("two") == [2, 3]
        assert available("pinned") == [1, 3]
        with RetrievalClient(f"127.0.0.1:{port}", "pinned") as client:
            assert client.predict({"hist_item_ids": _histories(1)}).model_version == 3
            assert client.predict({"hist_item_ids": _histories(1)}, version=1).model_version == 1
            with pytest.raises(ServingError) as e:
                client.predict({"hist_item_ids": _histories(1)}, version=2)
            assert e.value.code == grpc.StatusCode.NOT_FOUND
        request = make_predict_request("pinned", "", {"hist_item_ids": _histories(1)},
                                       version_label="stable")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.Predict(request, timeout=10).model_spec.version.value == 1
    finally:
        server.stop(1.0)


def test_a_model_without_versions_serves_once_one_appears(tmp_path):
    base = tmp_path / "toy"
    base.mkdir()
    server = ModelServer([ServedModelConfig("toy", str(base))],
                         ServerOptions(host="127.0.0.1", port=0,
                                       file_system_poll_wait_seconds=0.1))
    port = server.start()
    try:
        with RetrievalClient(f"127.0.0.1:{port}", "toy", retries=0) as client:
            with pytest.raises(ServingError) as e:
                client.predict({"hist_item_ids": _histories(1)})
            assert e.value.code == grpc.StatusCode.NOT_FOUND and "Latest(toy)" in e.value.details
            with pytest.raises(ServingError) as e:
                client.status()
            assert e.value.code == grpc.StatusCode.NOT_FOUND
            write_toy_model(base, 3, spec=SPEC, warmup=False)
            assert client.wait_until_ready(timeout_s=30, poll_s=0.05) == 3
            assert client.predict({"hist_item_ids": _histories(1)}).model_version == 3
    finally:
        server.stop(1.0)


def test_initial_load_failure_and_missing_base_path_refuse_to_start(tmp_path):
    corrupt_version(tmp_path, 1)
    server = ModelServer([ServedModelConfig("bad", str(tmp_path))],
                         ServerOptions(host="127.0.0.1", port=0))
    with pytest.raises(ModelConfigError, match="no version could be loaded.*version 1"):
        server.start()
    with pytest.raises(ModelConfigError, match="Could not find base path"):
        ModelServer([ServedModelConfig("x", str(tmp_path / "absent"))],
                    ServerOptions(host="127.0.0.1", port=0)).start()


# --------------------------------------------------------------------------- the CLI
def _start_cli_server(args, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    proc = subprocess.Popen([*python_module_command("nann_tf.cli"), "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True).start()
    port_box: list[int] = []
    stdout_lines: list[str] = []

    def read_stdout():
        for line in proc.stdout:
            stdout_lines.append(line)
            m = re.search(r"listening on [\d.]+:(\d+)", line)
            if m:
                port_box.append(int(m.group(1)))

    threading.Thread(target=read_stdout, daemon=True).start()
    deadline = time.monotonic() + 90
    while not port_box:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("server did not start:\n" + "".join(stderr_lines[-30:]))
        time.sleep(0.1)
    return proc, port_box[0], stderr_lines


def test_cli_server_finishes_in_flight_requests_on_sigterm(tmp_path):
    base = tmp_path / "toy"
    write_toy_model(base, 1, spec=SPEC, seed=2, busy_signature=True)
    proc, port, stderr_lines = _start_cli_server([
        "--port=0", "--host=127.0.0.1", "--model_name=toy", f"--model_base_path={base}",
        "--rest_api_port=8501", "--xla_cpu_compilation_enabled=true",
        "--enable_model_warmup=true", "--file_system_poll_wait_seconds=0.5"])
    try:
        with RetrievalClient(f"127.0.0.1:{port}", "toy", timeout_s=60, retries=0) as client:
            hist = _histories(1)
            plain = client.predict({"hist_item_ids": hist}).outputs
            def busy(spin):
                t0 = time.perf_counter()
                client.predict({"hist_item_ids": hist, "spin": np.array([spin], np.int32)},
                               "busy")
                return time.perf_counter() - t0

            busy(1)  # the first run of a signature pays a one-off setup cost
            per_spin = max((busy(20000) - busy(1)) / 20000, 1e-8)
            spin = int(min(max(2.0 / per_spin, 20000), 2**31 - 1))
            result = {}

            def slow():
                t = time.perf_counter()
                try:
                    result["outputs"] = client.predict(
                        {"hist_item_ids": hist, "spin": np.array([spin], np.int32)},
                        "busy").outputs
                except Exception as e:
                    result["error"] = repr(e)
                result["done"] = time.perf_counter()
                result["seconds"] = result["done"] - t

            thread = threading.Thread(target=slow)
            thread.start()
            time.sleep(0.3)  # the request reaches the server well within this
            sigterm_at = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            thread.join(120)
            assert proc.wait(60) == 0
            assert "error" not in result, result
            # The request was still running when SIGTERM arrived, and it was answered.
            assert result["done"] > sigterm_at
            np.testing.assert_array_equal(result["outputs"]["item_ids"], plain["item_ids"])
            print(f"\nrequest of {result['seconds']:.2f} s, answered "
                  f"{result['done'] - sigterm_at:.2f} s after SIGTERM")
        with RetrievalClient(f"127.0.0.1:{port}", "toy", timeout_s=5, retries=0) as client:
            with pytest.raises(ServingError) as e:
                client.predict({"hist_item_ids": hist})
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(stderr_lines)
    assert "--rest_api_port=8501 is a TF Serving flag" in log
    assert "--xla_cpu_compilation_enabled=true is a TF Serving flag" in log
    assert "Serving model toy version 1" in log
    assert "replayed 3 warm-up records" in log
    assert "received SIGTERM" in log


def test_cli_reports_bad_configuration(tmp_path):
    assert run_cli(*["serve", f"--model_base_path={tmp_path / 'absent'}", "--port=0"]) == 2
    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: 'x' base_path: '/m' "
                   "model_platform: 'pytorch' } }")
    assert run_cli(*["serve", f"--model_config_file={bad}", "--port=0"]) == 2
    assert run_cli(*["serve", "--port=0"]) == 2


# --------------------------------------------------------------------------- model config
def test_model_config_text_is_parsed_like_tf_serving(tmp_path):
    configs = parse_model_config_text("""
        model_config_list {
          config { name: "a" base_path: "/models/a" model_platform: "tensorflow" }
          config {
            name: "b" base_path: "rel/b"
            model_version_policy { specific { versions: 3 versions: 5 } }
            version_labels { key: "stable" value: 3 }
          }
          config { name: "c" base_path: "/c" model_version_policy { latest { num_versions: 2 } } }
          config { name: "d" base_path: "/d" model_version_policy { all {} } }
        }""")
    by_name = {c.name: c for c in configs}
    assert by_name["a"].version_policy == VersionPolicy("latest", 1)
    assert by_name["a"].base_path == "/models/a"
    assert by_name["b"].version_policy == VersionPolicy("specific", versions=(3, 5))
    assert dict(by_name["b"].version_labels) == {"stable": 3}
    assert os.path.isabs(by_name["b"].base_path)
    assert by_name["c"].version_policy.select([1, 2, 3, 9]) == {3, 9}
    assert by_name["d"].version_policy.select([4, 1]) == {1, 4}
    assert by_name["b"].version_policy.select([1, 3, 4]) == {3}


@pytest.mark.parametrize("text, match", [
    ("model_config_list { config { name: 'a' } ", "not a text-format"),
    ("model_config_list { config { name: 'a' base_path: '/a' } config { name: 'a' "
     "base_path: '/b' } }", "duplicate"),
    ("model_config_list { config { name: 'a' base_path: '/a' model_platform: 'onnx' } }",
     "onnx"),
    ("model_config_list { config { base_path: '/a' } }", "name is empty"),
    ("model_config_list { config { name: 'a' } }", "base_path is empty"),
    ("custom_model_config { }", "custom_model_config"),
    ("", "no config entries"),
])
def test_bad_model_configs_are_refused(text, match):
    with pytest.raises(ModelConfigError, match=match):
        parse_model_config_text(text)


# --------------------------------------------------------------------------- static checks of
# the TF Serving deployment files (Docker is not available in CI; these keep the files honest).
def _serving_path(*parts):
    return os.path.join(REPO, "serving", *parts)


def _read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


def _tf_serving_message(name):
    """A message class for a TF Serving config proto not shipped in tensorflow-serving-api,
    declared here from its .proto field names/types (session_bundle_config.proto,
    monitoring_config.proto) so text-format files can be parsed strictly."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    f = descriptor_pb2.FileDescriptorProto(name="nann_test_tfs.proto",
                                           package="tensorflow.serving", syntax="proto3",
                                           dependency=["google/protobuf/wrappers.proto"])
    T = descriptor_pb2.FieldDescriptorProto
    batching = f.message_type.add(name="BatchingParameters")
    for number, (field, type_name) in enumerate([
            ("max_batch_size", "Int64Value"), ("batch_timeout_micros", "Int64Value"),
            ("max_enqueued_batches", "Int64Value"), ("num_batch_threads", "Int64Value"),
            ("thread_pool_name", "StringValue")], start=1):
        batching.field.add(name=field, number=number, type=T.TYPE_MESSAGE,
                           type_name=f".google.protobuf.{type_name}", label=T.LABEL_OPTIONAL)
    batching.field.add(name="allowed_batch_sizes", number=6, type=T.TYPE_INT64,
                       label=T.LABEL_REPEATED)
    batching.field.add(name="pad_variable_length_inputs", number=7, type=T.TYPE_BOOL,
                       label=T.LABEL_OPTIONAL)
    batching.field.add(name="enable_large_batch_splitting", number=8, type=T.TYPE_MESSAGE,
                       type_name=".google.protobuf.BoolValue", label=T.LABEL_OPTIONAL)
    batching.field.add(name="max_execution_batch_size", number=9, type=T.TYPE_MESSAGE,
                       type_name=".google.protobuf.Int64Value", label=T.LABEL_OPTIONAL)
    prometheus = f.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=T.TYPE_BOOL, label=T.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    monitoring = f.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=T.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=T.LABEL_OPTIONAL)
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))


def test_serving_config_files_parse_as_tf_serving_protos():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    raw = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(_read("serving", "models.config"), raw)
    configs = parse_model_config_text(_read("serving", "models.config"))
    assert [c.name for c in configs] == [c.name for c in raw.model_config_list.config]
    assert "nann" in [c.name for c in configs]
    assert all(c.base_path.startswith("/models/") for c in raw.model_config_list.config)

    session = tf.compat.v1.ConfigProto()
    text_format.Parse(_read("serving", "session_config.pbtxt"), session)
    assert session.allow_soft_placement

    batching = _tf_serving_message("BatchingParameters")()
    text_format.Parse(_read("serving", "batching_parameters.txt"), batching)
    assert batching.max_batch_size.value >= 1
    assert list(batching.allowed_batch_sizes) == sorted(batching.allowed_batch_sizes)
    if batching.allowed_batch_sizes:  # TF Serving requires the last one == max_batch_size
        assert batching.allowed_batch_sizes[-1] == batching.max_batch_size.value

    monitoring = _tf_serving_message("MonitoringConfig")()
    text_format.Parse(_read("serving", "monitoring.config"), monitoring)
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path.startswith("/")


def _dockerfile_instructions():
    text = re.sub(r"\\\n", " ", _read("Dockerfile"))
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_is_consistent_with_the_repository():
    lines = _dockerfile_instructions()
    args = {}
    for line in lines:
        m = re.match(r"ARG (\w+)(?:=(\S*))?", line)
        if m:
            args.setdefault(m.group(1), m.group(2))
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TF_SERVING_VERSION"]), "pin a release"
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage: a devel build stage and a runtime stage"
    assert "tensorflow/serving:${TF_SERVING_VERSION}-devel${TF_SERVING_VARIANT}" in froms[0]
    assert any("tensorflow/serving:${TF_SERVING_VERSION}${TF_SERVING_VARIANT}" in f
               for f in froms[1:])
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            sources = line.split()[1:-1]
            sources = [s for s in sources if not s.startswith("--")]
            for src in sources:
                assert os.path.exists(os.path.join(REPO, src)), f"COPY source {src} missing"
    joined = "\n".join(lines)
    assert "EXPOSE 8500" in joined and "8501" in joined
    # The session config the entrypoint passes is one of the files copied into the image.
    session_env = re.search(r"NANN_SESSION_CONFIG_FILE=(\S+)", joined).group(1)
    copied = [line.split() for line in lines if line.startswith("COPY serving/")]
    assert any(session_env == os.path.join(c[-1], os.path.basename(src))
               for c in copied for src in c[1:-1]), session_env
    assert "tensorflow_serving/model_servers:tensorflow_model_server" in joined
    assert "--local_ram_resources" in joined
    for label in ("TF_SERVING_VERSION", "NANN_OPS_TARGET"):
        assert re.search(rf"LABEL .*{label.lower().replace('_', '.')}|LABEL .*\${{{label}}}",
                         joined), label
    # The op target the Dockerfile links is the cc_library in cc_ops/BUILD.
    target = args["NANN_OPS_TARGET"]
    m = re.fullmatch(r"//(\w[\w/]*):(\w+)", target)
    assert m, target
    package, name = m.groups()
    assert package == "cc_ops", "cc_ops/ is copied to the root of the Serving workspace"
    build = os.path.join(REPO, "cc_ops", "BUILD")
    if os.path.exists(build):
        text = _read("cc_ops", "BUILD")
        rule = re.search(r"cc_library\(\s*name\s*=\s*\"" + name + r"\"(.*?)\n\)", text, re.S)
        assert rule, f"cc_library {name} not in cc_ops/BUILD"
        assert re.search(r"alwayslink\s*=\s*(1|True)", rule.group(1))
        assert "@org_tensorflow//tensorflow/core:framework" in rule.group(1)
        # tensorflow_serving/model_servers must be allowed to depend on it.
        assert "//visibility:public" in rule.group(1) or re.search(
            r"default_visibility\s*=\s*\[\s*\"//visibility:public\"", text)


def test_build_patch_adds_the_op_to_supported_tensorflow_ops(tmp_path):
    # A BUILD shaped like tensorflow_serving/model_servers/BUILD around the list.
    build = tmp_path / "BUILD"
    build.write_text(
        'cc_library(name = "x")\n\n'
        "SUPPORTED_TENSORFLOW_OPS = if_v2([]) + if_not_v2([\n"
        '    "@org_tensorflow//tensorflow/contrib:contrib_kernels",\n'
        "]) + [\n"
        '    "@org_tensorflow_text//tensorflow_text:ops_lib",\n'
        '    "@org_tensorflow_decision_forests//x:kernel_and_op",\n'
        "]\n\n"
        'cc_library(\n    name = "server_lib",\n    deps = [":a"] + SUPPORTED_TENSORFLOW_OPS,\n)\n')
    script = _serving_path("docker", "patch_model_servers_build.py")
    run = [sys.executable, script, str(build), "//cc_ops:nann_ops"]
    subprocess.run(run, check=True, capture_output=True)
    text = build.read_text()
    block = text[text.index("SUPPORTED_TENSORFLOW_OPS ="):text.index('cc_library(\n')]
    assert block.count('"//cc_ops:nann_ops"') == 1
    assert block.index("kernel_and_op") < block.index("//cc_ops:nann_ops")
    subprocess.run(run, check=True, capture_output=True)  # idempotent
    assert build.read_text() == text
    build.write_text("cc_library(name = 'no list here')\n")
    bad = subprocess.run(run, capture_output=True, text=True)
    assert bad.returncode != 0 and "SUPPORTED_TENSORFLOW_OPS" in bad.stderr


@pytest.mark.parametrize("variant, xla_flag", [("", "--xla_cpu_compilation_enabled=true"),
                                               ("-gpu", "--xla_gpu_compilation_enabled=true")])
def test_entrypoint_passes_tf_serving_flags(tmp_path, variant, xla_flag):
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "MODEL_NAME": "nann",
           "MODEL_BASE_PATH": "/models", "NANN_SERVING_VARIANT": variant,
           "NANN_SESSION_CONFIG_FILE": "/etc/nann-serving/session_config.pbtxt"}
    out = subprocess.run(["bash", _serving_path("tf_serving_entrypoint.sh"),
                          "--enable_batching=true", "--batching_parameters_file=/b.txt"],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[:4] == ["--port=8500", "--rest_api_port=8501", "--model_name=nann",
                       "--model_base_path=/models/nann"]
    assert xla_flag in out and "--enable_model_warmup=true" in out
    assert "--tensorflow_session_config_file=/etc/nann-serving/session_config.pbtxt" in out
    assert out[-2:] == ["--enable_batching=true", "--batching_parameters_file=/b.txt"]
    env["NANN_XLA_FLAGS"] = ""
    out = subprocess.run(["bash", _serving_path("tf_serving_entrypoint.sh")],
                         capture_output=True, text=True, env=env, check=True).stdout.split()
    assert not any(a.startswith("--xla_") for a in out)


def test_kubernetes_manifests_are_consistent():
    k8s = _serving_path("k8s")
    text = "\n".join(_read("serving", "k8s", f) for f in sorted(os.listdir(k8s))
                     if f.endswith((".yaml", ".yml")))
    kinds = re.findall(r"^kind:\s*(\w+)", text, re.M)
    assert {"Deployment", "Service", "ConfigMap"} <= set(kinds)
    assert re.search(r"clusterIP:\s*None", text), "a headless Service for client-side LB"
    assert re.search(r"replicas:\s*\d+", text)
    assert "containerPort: 8500" in text and "grpc" in text
    assert "--model_config_file=" in text and "/models/" in text
