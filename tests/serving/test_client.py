"""RetrievalClient and `nann-tf query` against a real local gRPC server (loopback)."""

import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from nann_tf.search.params import SearchParamsError
from nann_tf.serving.client import RetrievalClient, ServingError, pad_histories
from nann_tf.serving.model_config import ServedModelConfig, ServerOptions
from nann_tf.serving.server import ModelServer

from toy_model import ToyModelSpec, raw_item_ids, write_toy_model

from conftest import run_cli

SPEC = ToyModelSpec(num_items=64, dim=8, history_length=6, num_levels=3, default_k=5)
RAW = raw_item_ids(SPEC.num_items)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "toy"
    version_dir = write_toy_model(base, 4, spec=SPEC, seed=8)
    server = ModelServer([ServedModelConfig("toy", str(base))],
                         ServerOptions(host="127.0.0.1", port=0,
                                       file_system_poll_wait_seconds=0))
    port = server.start()
    yield {"address": f"127.0.0.1:{port}", "version_dir": version_dir, "server": server}
    server.stop(1.0)


@pytest.fixture(scope="module")
def eager(served):
    loaded = tf.saved_model.load(served["version_dir"])

    def call(signature, **inputs):
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}
    return call


@pytest.fixture()
def client(served):
    with RetrievalClient(served["address"], "toy", timeout_s=10) as c:
        yield c


def test_pad_histories_right_aligns_most_recent_last():
    out = pad_histories([[5, 6, 7], [9]], 4)
    np.testing.assert_array_equal(out, [[0, 5, 6, 7], [0, 0, 0, 9]])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(pad_histories([1, 2], 3), [[0, 1, 2]])  # one flat history
    np.testing.assert_array_equal(pad_histories([[1], [2, 3]], None), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(pad_histories([[]], 2), [[0, 0]])
    with pytest.raises(ValueError, match="history 1 has 3 items.*L=2"):
        pad_histories([[1], [1, 2, 3]], 2)
    with pytest.raises(ValueError, match="non-integer"):
        pad_histories([[1.5]], 2)


def test_pad_histories_of_string_ids():
    """A model with string item ids: str ids (bytes decoded), padded with "" on the left;
    ids of the other kind are refused before anything is sent."""
    out = pad_histories([["SKU-1", "SKU-é"], [b"c0ffee12", b"SKU-\xc3\xa9"]], 3, string=True)
    assert out.dtype.kind == "U"
    assert out.tolist() == [["", "SKU-1", "SKU-é"], ["", "c0ffee12", "SKU-é"]]
    assert pad_histories([[]], 2, string=True).tolist() == [["", ""]]
    with pytest.raises(ValueError, match="history 0 holds non-string ids.*takes string item"):
        pad_histories([[12, 34]], 3, string=True)
    with pytest.raises(ValueError, match="non-integer ids.*takes integer item ids"):
        pad_histories([["SKU-1"]], 3)
    rows = RetrievalClient._id_rows([["a"], ["b", "c"]], 2, "item_ids", string=True)
    assert rows.tolist() == [["a", ""], ["b", "c"]]  # seeds: right-padded


def test_retrieve_defaults_equal_the_in_process_model(client, eager):
    histories = [RAW[[3, 1, 4]], RAW[[15]], RAW[[9, 26, 5, 35, 8, 9]]]
    item_ids, scores, num_scored = client.retrieve(histories)
    want = eager("serving_default", hist_item_ids=pad_histories(histories, SPEC.history_length))
    np.testing.assert_array_equal(item_ids, want["item_ids"])
    np.testing.assert_array_equal(scores, want["scores"])
    np.testing.assert_array_equal(num_scored, want["num_scored"])
    assert client.history_length() == SPEC.history_length
    # A 2-D int array is sent as is.
    again = client.retrieve(pad_histories(histories, SPEC.history_length))
    np.testing.assert_array_equal(again[0], item_ids)


def test_retrieve_with_parameters_uses_the_retrieve_signature(client, eager):
    hist = [RAW[[2, 7]], RAW[[11, 12, 13]]]
    item_ids, scores, num_scored = client.retrieve(hist, k=3, ef="2=2,1=4,0=8", T="1=1,0=2",
                                                   exclude_item_ids=[[RAW[2]], []])
    padded = pad_histories(hist, SPEC.history_length)
    want = eager("retrieve", hist_item_ids=padded, k=np.full(2, 3, np.int32),
                 ef=np.tile(np.array([8, 4, 2], np.int32), (2, 1)),
                 T=np.tile(np.array([2, 1, 0], np.int32), (2, 1)),  # T[:, S] is unused
                 exclude_item_ids=np.array([[RAW[2]], [0]], np.int64))
    np.testing.assert_array_equal(item_ids, want["item_ids"])
    np.testing.assert_array_equal(scores, want["scores"])
    np.testing.assert_array_equal(num_scored, [SPEC.num_items - 1, SPEC.num_items])
    assert item_ids.shape == (2, 3) and RAW[2] not in item_ids[0]
    # One flat exclusion list applies to every row; per-row k.
    ids, _, _ = client.retrieve(hist, k=[1, 2], ef={2: 2, 1: 4, 0: 8}, T={1: 1, 0: 2},
                                exclude_item_ids=[int(item_ids[0, 0]), int(item_ids[1, 0])])
    assert ids[0, 0] not in item_ids[:, 0] and ids[0, 1] == 0  # row 0 asked for k=1


def test_brute_force_signature_has_no_num_scored(client, eager):
    item_ids, scores, num_scored = client.retrieve([RAW[[1, 2]]], signature="brute_force")
    want = eager("brute_force", hist_item_ids=pad_histories([RAW[[1, 2]]], SPEC.history_length))
    np.testing.assert_array_equal(item_ids, want["item_ids"])
    assert num_scored is None


def test_bad_arguments_are_caught_before_sending(client):
    with pytest.raises(ValueError, match="needs k, ef and T; missing ef, T"):
        client.retrieve([RAW[[1]]], k=3)
    with pytest.raises(SearchParamsError, match="ef gives level 3, which the search does not use"):
        client.retrieve([RAW[[1]], RAW[[2]]], k=3, ef="3=8,2=8,1=4,0=2", T="1=1,0=1")
    with pytest.raises(SearchParamsError, match="ef '8,4,2': expected LEVEL=VALUE pairs"):
        client.retrieve([RAW[[1]]], k=3, ef="8,4,2", T="1=1,0=1")
    with pytest.raises(ValueError, match="k does not fit in int32"):
        client.retrieve([RAW[[1]]], k=2**40, ef="2=2,1=4,0=8", T="1=1,0=1")
    with pytest.raises(ValueError, match="need the retrieve signature"):
        client.retrieve([RAW[[1]]], k=3, signature="serving_default")


def test_server_errors_carry_the_grpc_code(client):
    with pytest.raises(ServingError) as e:
        client.retrieve([RAW[[1]], RAW[[2]]], k=[0, 3], ef="2=2,1=4,0=8", T="1=1,0=1")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "k must be >= 1" in e.value.details
    with pytest.raises(ServingError) as e:
        client.predict({"hist_item_ids": np.zeros((1, 6), np.int64)}, version=99)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_metadata_status_and_readiness(client):
    version, sigs = client.metadata()
    assert version == 4
    assert {"serving_default", "retrieve", "brute_force"} <= set(sigs)
    assert [(s.version, s.state, s.error_code) for s in client.status()] == [(4, "AVAILABLE", 0)]
    assert client.wait_until_ready(timeout_s=5) == 4


def test_wait_until_ready_times_out_on_a_dead_address():
    with RetrievalClient("127.0.0.1:1", "toy", timeout_s=0.5, retries=0) as c:
        with pytest.raises(TimeoutError, match="not ready"):
            c.wait_until_ready(timeout_s=1.0, poll_s=0.1)


class _FlakyProxy(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Answers the first `failures` Predict calls with `code`, then forwards to the server."""

    def __init__(self, target, failures, code):
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(
            grpc.insecure_channel(target))
        self.failures = failures
        self.code = code
        self.calls = 0
        self.lock = threading.Lock()

    def Predict(self, request, context):  # noqa: N802
        with self.lock:
            self.calls += 1
            fail = self.calls <= self.failures
        if fail:
            context.abort(self.code, "replica going away")
        return self.stub.Predict(request, timeout=10)


@pytest.fixture()
def flaky(served):
    servers = []

    def make(failures, code=grpc.StatusCode.UNAVAILABLE):
        proxy = _FlakyProxy(served["address"], failures, code)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(proxy, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return proxy, f"127.0.0.1:{port}"
    yield make
    for s in servers:
        s.stop(0)


def test_unavailable_is_retried_with_backoff(flaky):
    proxy, address = flaky(failures=2)
    with RetrievalClient(address, "toy", retries=3, backoff_s=0.01) as c:
        assert c.predict({"hist_item_ids": np.zeros((1, 6), np.int64)}).model_version == 4
    assert proxy.calls == 3
    proxy, address = flaky(failures=5)
    with RetrievalClient(address, "toy", retries=2, backoff_s=0.01) as c:
        with pytest.raises(ServingError) as e:
            c.predict({"hist_item_ids": np.zeros((1, 6), np.int64)})
    assert e.value.code == grpc.StatusCode.UNAVAILABLE and proxy.calls == 3


def test_other_errors_are_not_retried(flaky):
    proxy, address = flaky(failures=1, code=grpc.StatusCode.INVALID_ARGUMENT)
    with RetrievalClient(address, "toy", retries=3, backoff_s=0.01) as c:
        with pytest.raises(ServingError) as e:
            c.predict({"hist_item_ids": np.zeros((1, 6), np.int64)})
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and proxy.calls == 1


def _query_rows(out: str):
    lines = out.strip().splitlines()
    rows = [line.split() for line in lines[2:]]
    return lines[0], [int(r[1]) for r in rows], [float(r[2]) for r in rows]


def test_query_cli_prints_the_ranking(served, eager, capsys):
    hist = [int(RAW[5]), int(RAW[9]), int(RAW[1])]
    assert run_cli(*["query", "--server", served["address"], "--model", "toy",
                 "--history", ",".join(map(str, hist)), "-k", "3"]) == 0
    header, ids, scores = _query_rows(capsys.readouterr().out)
    want = eager("serving_default", hist_item_ids=pad_histories([hist], SPEC.history_length))
    assert ids == want["item_ids"][0, :3].tolist()
    np.testing.assert_allclose(scores, want["scores"][0, :3], rtol=1e-5)
    assert "3 items" in header and f"{SPEC.num_items} items scored" in header

    assert run_cli(*["query", "--server", served["address"], "--model", "toy", "--history",
                 ",".join(map(str, hist)), "-k", "2", "--ef", "2=2,1=4,0=8", "--T", "1=1,0=2",
                 "--exclude", str(ids[0])]) == 0
    header, ids2, _ = _query_rows(capsys.readouterr().out)
    assert ids2 == ids[1:3] and "signature retrieve" in header


def test_query_cli_truncates_a_long_history_to_the_most_recent_L(served, eager, capsys):
    hist = [int(x) for x in RAW[:SPEC.history_length + 2]]
    assert run_cli(*["query", "--server", served["address"], "--model", "toy",
                 "--history", ",".join(map(str, hist))]) == 0
    captured = capsys.readouterr()
    assert "most recent 6" in captured.err
    _, ids, _ = _query_rows(captured.out)
    want = eager("serving_default", hist_item_ids=np.array([hist[-6:]], np.int64))
    assert ids == want["item_ids"][0].tolist()


@pytest.mark.parametrize("argv, message", [
    (["--history", "12,x"], "'x' is not an integer"),
    (["--history", "12", "--model", "nosuch"], "NOT_FOUND"),
    (["--history", "12", "-k", "3", "--signature", "retrieve"], "needs k, ef and T; missing ef, T"),
    (["--history", "12", "--ef", "2=3,1=2,0=1", "--T", "1=1,0=1", "-k", "5"],
     "ef for level 0 must be >= k"),
    (["--history", "12", "--ef", "1,2,3", "--T", "1=1,0=1", "-k", "5"],
     "--ef '1,2,3': expected LEVEL=VALUE pairs"),
    (["--history", "12", "--timeout", "0"], "--timeout"),
])
def test_query_cli_errors_name_the_problem(served, capsys, argv, message):
    base = ["query", "--server", served["address"], "--model", "toy"]
    assert run_cli(*base + argv) == 2
    assert message in capsys.readouterr().err


def test_a_client_waiting_for_a_server_sees_it_within_a_second_of_it_opening(tmp_path):
    """TF Serving (like `nann-tf serve`) opens its port only once its models are loaded, so a
    client usually starts waiting first. Its connection attempts fail meanwhile, and gRPC's
    reconnect backoff grows (to 120 s by default): after 20 s of failures the next attempt is
    ~6 s away, and `nann-tf query --wait` answered 20-25 s after a 50 s load. The client's
    channel caps the backoff at 1 s: ready within ~1.5 s of the port opening (3 s asserted)."""
    import socket
    import time

    base = tmp_path / "toy"
    write_toy_model(base, 1, spec=SPEC, seed=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = {}

    def wait():
        with RetrievalClient(f"127.0.0.1:{port}", "toy") as client:
            ready["version"] = client.wait_until_ready(90)
            ready["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(20)  # no server yet: every attempt fails
    server = ModelServer([ServedModelConfig("toy", str(base))],
                         ServerOptions(host="127.0.0.1", port=port))
    try:
        server.start()  # returns once the port is open
        opened = time.monotonic()
        waiter.join(90)
    finally:
        server.stop(1.0)
    assert ready["version"] == 1
    assert ready["at"] - opened < 3.0, f"ready {ready['at'] - opened:.1f} s after the port opened"
