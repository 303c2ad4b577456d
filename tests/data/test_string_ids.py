"""String item and user ids end to end: a log of SKUs, UUIDs and hex customer ids ->
``prepare --format table`` -> train -> build-index -> export (validated by the session loader and
the C API loader) -> gRPC (the local server) -> ``RetrievalClient`` and ``nann-tf query``.

Every served answer is checked against an in-process search over *dense* ids (the trained model
and the index, no vocabulary involved), mapped to strings through the dataset's
``raw_item_key``: a vocabulary that is off by one line, or a dense -> string gather off by one,
returns other items.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from nann_tf.data.dataset import Dataset
from nann_tf.export.export import EXPORT_INFO
from nann_tf.export.module import FILTER_INPUTS, VOCABULARY_FILE
from nann_tf.serving.loader import SessionModel
from nann_tf.serving.warmup import read_warmup_requests

from conftest import run_cli, run_cli_output

MODEL = "nann"
TINY = ["--config", "smoke", "--set", "data.max_len=10", "--set", "model.embedding_dim=8",
        "--set", "model.item_hidden=[8]", "--set", "model.user_hidden=[8]", "--set",
        "model.score_hidden=[8]", "--set", "train.batch_size=64", "--set",
        "train.num_negatives=8", "--set", "train.steps_per_epoch=4"]


def _write_string_log(path, seed=1):
    """The synthetic log (planted structure) with every id as a string: items as SKUs
    (``SKU-0000123``) or UUIDs, users as hex customer ids; a few ids padded with spaces."""
    from nann_tf.data.synth import generate_log

    cols = generate_log(300, 200, 5, 20, seed)
    rng = np.random.default_rng(seed)
    items = {int(i): (f"SKU-{int(i):07d}" if n % 2 else str(uuid.UUID(bytes=rng.bytes(16))))
             for n, i in enumerate(np.unique(cols["item_id"]))}
    users = {int(u): f"{(int(u) * 2654435761) % (1 << 32):08x}"
             for u in np.unique(cols["user_id"])}
    lines = ["customer_id,sku,event_time,department"]
    for n, (u, i, t, c) in enumerate(zip(cols["user_id"], cols["item_id"], cols["timestamp"],
                                         cols["category_id"])):
        pad = " " if n % 9 == 4 else ""
        lines.append(f"{pad}{users[int(u)]},{items[int(i)]}{pad},{int(t)},dept-{int(c) % 7}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """prepare -> train -> build-index -> export through the command line."""
    d = tmp_path_factory.mktemp("string-ids")
    _write_string_log(d / "log.csv")
    assert run_cli("prepare", "--format", "table", "--input", d / "log.csv", "--output",
                   d / "data", "--columns", "user=customer_id,item=sku,time=event_time,"
                   "category=department", "--max-len", 10, "--min-len", 5, "--val-users", 20,
                   "--test-users", 20) == 0
    assert run_cli("train", "--data", d / "data", "--output", d / "model", *TINY) == 0
    assert run_cli("build-index", "--model", d / "model", "--data", d / "data", "--output",
                   d / "index") == 0
    assert run_cli("export", "--model", d / "model", "--index", d / "index", "--output",
                   d / "models" / MODEL, "--data", d / "data", "--validate-loader", "cc",
                   "--warmup-batch-sizes", "1") == 0
    return d


@pytest.fixture(scope="module")
def ds(chain):
    return Dataset.load(chain / "data")


@pytest.fixture(scope="module")
def offline(chain, ds):
    """The in-process searches over dense ids: the beam search with the export's parameters
    and the exact top-k."""
    from nann_tf.evaluation.retriever import Retriever
    from nann_tf.index.store import load_index
    from nann_tf.model.saved import load_trained_model
    from nann_tf.search.brute_force import ExactScorer
    from nann_tf.search.params import SearchParams

    info = json.loads((chain / "models" / MODEL / "1" / EXPORT_INFO).read_text())
    model, _, _ = load_trained_model(chain / "model")
    index = load_index(chain / "index")
    p = SearchParams.from_mapping({k: v for k, v in info["search"].items() if k != "max_ef"})
    r = Retriever(model, index, p.start_level, "tf", batch_size=8)
    return {"beam": lambda dense: r.beam(dense, p.ef, p.T, p.k, p.history_seeds),
            "exact": lambda dense, k: ExactScorer(model, index.embeddings).topk(dense, k)[0],
            "index": index, "info": info}


@pytest.fixture(scope="module")
def server(chain):
    from nann_tf.serving.model_config import ServedModelConfig, ServerOptions
    from nann_tf.serving.server import ModelServer

    srv = ModelServer([ServedModelConfig(MODEL, str(chain / "models" / MODEL))],
                      ServerOptions(host="127.0.0.1", port=0, max_num_load_retries=0))
    port = srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(2.0)


@pytest.fixture(scope="module")
def client(server):
    from nann_tf.serving.client import RetrievalClient

    with RetrievalClient(server, MODEL, timeout_s=60) as c:
        c.wait_until_ready(180)
        yield c


def _rows(ds, dense):
    """Ragged string histories (what a caller has) of right-aligned dense rows."""
    return [list(ds.raw_item_key[r[r > 0]]) for r in dense]


def test_the_dataset_holds_the_string_ids(chain, ds):
    assert ds.meta["item_id_type"] == ds.meta["user_id_type"] == "string"
    keys = ds.raw_item_key[1:]
    assert all(k.startswith("SKU-") or uuid.UUID(k) for k in keys)
    assert all(k == k.strip() for k in keys)  # spaces stripped
    assert all(len(k) == 8 and int(k, 16) >= 0 for k in ds.train_user_key)


def test_export_vocabulary_is_an_asset_and_signatures_take_strings(chain, ds):
    from tensorflow.core.framework import types_pb2

    v = chain / "models" / MODEL / "1"
    info = json.loads((v / EXPORT_INFO).read_text())
    assert info["item_id_type"] == "string"
    # Both loaders answered: the session loader in a fresh process (same ids as in memory)
    # and TensorFlow's C API (every warm-up record bit for bit).
    assert info["validation"]["same_ids_as_in_memory"] == 1.0
    assert info["validation"]["similar_items_same_ids_as_in_memory"] == 1.0
    cc = info["validation"]["cc_loader"]
    assert cc["bit_identical"] and cc["warmup_records"] == info["warmup_records"]
    # The vocabulary: an asset, dense id = line number + 1; not in the graph.
    lines = (v / "assets" / VOCABULARY_FILE).read_text(encoding="utf-8").split("\n")
    assert lines[:-1] == list(ds.raw_item_key[1:]) and lines[-1] == ""
    graph = (v / "saved_model.pb").read_bytes()
    assert not any(k.encode() in graph for k in ds.raw_item_key[1:20])
    with SessionModel(v) as m:
        for name, sig in m.signatures.items():
            if name.startswith("__"):
                continue
            for alias in ("hist_item_ids", "exclude_item_ids", "item_ids"):
                if alias in sig.inputs:
                    assert sig.inputs[alias].dtype_enum == types_pb2.DT_STRING, (name, alias)
            if "item_ids" in sig.outputs:
                assert sig.outputs["item_ids"].dtype_enum == types_pb2.DT_STRING, name
            # No other int64 input (an item id left numeric) but the label filters, which
            # take raw category and tag ids.
            assert all(s.dtype_enum != types_pb2.DT_INT64 for a, s in sig.inputs.items()
                       if a not in FILTER_INPUTS), name
    # The warm-up file asks with string ids, all of them known (or "" padding).
    known = set(ds.raw_item_key)
    records = read_warmup_requests(v)
    sigs = set()
    for r in records:
        for alias in ("hist_item_ids", "exclude_item_ids", "item_ids"):
            if alias in r.inputs:
                arr = r.inputs[alias]
                assert arr.dtype == object and {x.decode() for x in arr.reshape(-1)} <= known
                sigs.add(r.signature_name)
    assert {"serving_default", "retrieve", "brute_force", "warmup_grid", "similar_items",
            "similar_items_model"} <= sigs


def test_client_retrieve_with_string_histories_equals_the_dense_search(client, ds, offline):
    dense = ds.test.hist[:8]
    assert client.item_id_type() == "string"
    ids, scores, num_scored = client.retrieve(_rows(ds, dense))
    assert ids.dtype.kind == "U" and ids.shape == (8, offline["info"]["search"]["k"])
    beam = offline["beam"](dense)
    want = np.where(beam.ids > 0, ds.raw_item_key[beam.ids], "")
    assert (ids == want).mean() >= 0.99
    np.testing.assert_array_equal(num_scored, beam.num_scored)
    # The exact top-k: the brute_force signature, and the beam search's coverage of it.
    k = ids.shape[1]
    exact = ds.raw_item_key[offline["exact"](dense, k)]
    bf, _, _ = client.retrieve(_rows(ds, dense), signature="brute_force")
    assert (bf == exact).mean() >= 0.99
    assert np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact)]) >= 0.9
    # A 2-D str array is sent as it is; unknown ids are ignored like padding.
    hist = np.where(dense > 0, ds.raw_item_key[dense], "")
    hist[:, 0] = np.where(hist[:, 0] == "", "no-such-sku", hist[:, 0])
    assert (hist == "no-such-sku").any()
    again, _, n2 = client.retrieve(hist)
    np.testing.assert_array_equal(again, ids)
    np.testing.assert_array_equal(n2, num_scored)


def test_exclusions_and_retrieve_parameters_take_strings(client, ds, offline):
    dense = ds.test.hist[8:12]
    s = offline["info"]["search"]
    base, _, _ = client.retrieve(_rows(ds, dense), k=s["k"], ef=s["ef"], T=s["T"])
    excluded = [list(r[:2]) for r in base]
    got, scores, _ = client.retrieve(_rows(ds, dense), k=s["k"], ef=s["ef"], T=s["T"],
                                     exclude_item_ids=excluded)
    for row, ex, b in zip(got, excluded, base):
        assert not set(ex) & set(row)
        assert len(set(row[:-2]) & set(b[2:])) >= 0.9 * (len(b) - 2)
    with pytest.raises(ValueError, match="takes string item ids"):
        client.retrieve([[1, 2, 3]])


def test_similar_items_with_string_seeds(client, ds, offline):
    emb = offline["index"].embeddings
    seeds = ds.test.hist[:6, -1]
    ids, scores, _ = client.similar_items([[ds.raw_item_key[s]] for s in seeds], k=10)
    assert ids.dtype.kind == "U" and ids.shape == (6, 10)
    for row, s in zip(ids, seeds):  # the exact nearest items in e_v space (L2)
        d = ((emb[1:] - emb[s]) ** 2).sum(axis=1)
        d[s - 1] = np.inf  # the seed itself is not returned
        exact = ds.raw_item_key[1 + np.argsort(d, kind="stable")[:10]]
        assert len(set(row) & set(exact)) >= 9 and ds.raw_item_key[s] not in row
    # Exclusions as strings; unknown seeds are ignored: a row of none gets no results.
    seed = ds.raw_item_key[seeds[0]]
    got, _, _ = client.similar_items([seed], k=10, exclude_item_ids=[ids[0, 0]])
    assert ids[0, 0] not in got[0] and got[0, 0] == ids[0, 1]
    got, sc, _ = client.similar_items([["no-such-sku"], [seed, "no-such-sku"]], k=10,
                                      mode="model")
    assert (got[0] == "").all() and np.isneginf(sc[0]).all() and (got[1] != "").all()


def test_query_cli_takes_and_prints_string_ids(server, client, ds):
    hist = _rows(ds, ds.test.hist[:1])[0]
    want, _, _ = client.retrieve([hist])
    rc, out = run_cli_output("query", "--server", server, "--model", MODEL, "--history",
                             ",".join(hist), "-k", 5)
    assert rc == 0
    assert [line.split()[1] for line in out.splitlines()[2:]] == list(want[0, :5])
    seed = ds.raw_item_key[ds.test.hist[0, -1]]
    sim, _, _ = client.similar_items([seed], k=4)
    rc, out = run_cli_output("query", "--server", server, "--model", MODEL, "--similar-to",
                             f" {seed} ", "-k", 4, "--exclude", "no-such-sku")
    assert rc == 0
    assert [line.split()[1] for line in out.splitlines()[2:]] == list(sim[0])
