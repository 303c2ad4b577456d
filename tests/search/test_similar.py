"""Items-to-item in process: the similar-items searches of both modes against their exact
reference, seed handling, and the evaluation behind ``nann-tf evaluate --similar``.

The exported ``similar_items`` signatures (raw ids, masking, bad requests, gRPC) are tested in
test_export.py, on the versions exported there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.data.dataset import Dataset
from nann_tf.evaluation.retriever import Retriever
from nann_tf.evaluation.similar import seed_rows, shares_label
from nann_tf.index.store import load_index
from nann_tf.model.saved import load_trained_model
from nann_tf.search.similar import seeds_as_history

from conftest import run_cli, run_cli_output


@pytest.fixture(scope="module")
def setup(ci_dataset, attention_model_dir, ci_index_dir):
    model, cfg, _ = load_trained_model(attention_model_dir)
    index = load_index(ci_index_dir)
    ds = Dataset.load(ci_dataset)
    held = ds.test
    seeds = seed_rows(held.hist[held.hist_len > 0][:60]).astype(np.int32)
    retriever = Retriever(model, index, cfg.search.start_level, "tf", batch_size=16)
    similar = cfg.similar.checked(index.graph.max_level)
    return {"cfg": cfg, "index": index, "ds": ds, "seeds": seeds, "r": retriever,
            "params": {"embedding": similar, "model": cfg.search}}


def test_seed_rows_mix_one_two_and_three_seeds():
    hist = np.arange(1, 25).reshape(4, 6)
    hist[3, :5] = 0  # a user with one behaviour
    got = seed_rows(hist)
    np.testing.assert_array_equal(got, [[0, 0, 6], [0, 11, 12], [16, 17, 18], [0, 0, 24]])
    assert seed_rows(hist[:, -2:]).shape == (4, 2)  # never more columns than the history


def test_seeds_as_history_right_aligns_in_order_and_keeps_the_last():
    seeds = tf.constant([[0, 5, 0, 7], [3, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4]])
    np.testing.assert_array_equal(seeds_as_history(seeds, 3).numpy(),
                                  [[0, 5, 7], [0, 0, 3], [0, 0, 0], [2, 3, 4]])
    np.testing.assert_array_equal(seeds_as_history(seeds, 5).numpy()[0], [0, 0, 0, 5, 7])


def test_shares_label_counts_results_holding_a_seed_label():
    labels = np.array([[0, 0], [1, 0], [2, 3], [3, 0], [4, 0]])  # item -> its labels
    ids = np.array([[1, 3], [4, 0], [0, 0]])
    seeds = np.array([[2, 0], [1, 4], [2, 0]])
    got = shares_label(ids, seeds, labels)
    # row 0: item 1 {1} vs seed {2, 3}: no, item 3 {3}: yes; row 1: item 4 is a label of
    # seed 4 (padding 0 is no result); row 2: no results.
    np.testing.assert_array_equal(got[:2], [0.5, 1.0])
    assert np.isnan(got[2])
    np.testing.assert_array_equal(shares_label(ids[:1], seeds[:1], labels[:, 0]), [0.0])


@pytest.mark.parametrize("mode", ["embedding", "model"])
def test_exact_when_ef_covers_the_corpus(setup, mode):
    """With every level's beam as wide as the corpus and rounds to spare, the walk reaches every
    item: the search returns the exact top-k (the same ids in the same order)."""
    r, seeds, index = setup["r"], setup["seeds"], setup["index"]
    p = setup["params"][mode]
    n = index.num_items
    wide = p.replace(ef={lv: n for lv in p.ef}, T={lv: 40 for lv in p.T})
    got = r.similar(seeds, mode, wide)
    exact = r.similar_exact(seeds, mode, p.k)
    assert (got.num_scored >= 0.99 * n).all()  # it did walk the whole graph
    if mode == "embedding":
        np.testing.assert_array_equal(got.ids, exact.ids)
    else:
        # The model's scores come from differently shaped batches on the two paths: float
        # round-off may swap two near-equal neighbours, nothing more.
        assert (got.ids == exact.ids).mean() >= 0.99
        assert all(set(a) == set(b) for a, b in zip(got.ids[:, :p.k - 5], exact.ids[:, :p.k - 5]))


def test_default_parameters_meet_the_quality_contract(setup):
    """The CI config's [similar] and [search] defaults against exact search on 60 mixed seed
    rows. Measured (the softmax-trained CI model): embedding 1.000 scoring 48% of the 1,996
    items (a small corpus: the start level alone is 3%, and T=8 rounds of a degree-64 level 0
    reach half of it), model 0.997 scoring 72%. Thresholds 0.99 leave room for other
    machines' round-off; a walk that stopped early or lost the seeds' neighbourhood would fall
    far below (ef0=5: about 0.5); a walk that scored everything would exceed the work bounds
    (measured + 7 points)."""
    from nann_tf.evaluation.metrics import coverage

    r, seeds = setup["r"], setup["seeds"]
    for mode, p in setup["params"].items():
        got = r.similar(seeds, mode, p)
        exact = r.similar_exact(seeds, mode, p.k)
        assert coverage(got.ids, exact.ids, p.k) >= 0.99, mode
        assert got.num_scored.mean() <= (0.55 if mode == "embedding" else 0.8) * \
            setup["index"].num_items, mode
    narrow = setup["params"]["embedding"].replace(ef={1: 5, 0: 5}, T={0: 1}, k=5)
    got = r.similar(seeds, "embedding", narrow)
    exact = r.similar_exact(seeds, "embedding", 20)
    assert coverage(got.ids, exact.ids[:, :5], 5) < 0.95  # the contract can fail


@pytest.mark.parametrize("mode", ["embedding", "model"])
def test_seeds_never_come_back_and_rows_without_seeds_get_nothing(setup, mode):
    r, seeds = setup["r"], setup["seeds"].copy()
    seeds[7] = 0  # a row of padding only, in the middle of the batch
    got = r.similar(seeds, mode, setup["params"][mode])
    assert not any(np.isin(row, s[s > 0]).any() for row, s in zip(got.ids, seeds))
    assert (got.ids[7] == 0).all()
    assert (got.ids[np.arange(len(seeds)) != 7] > 0).all()  # every other row is full


def test_evaluate_similar_cli(tmp_path, setup, attention_model_dir, ci_dataset, ci_index_dir):
    out = tmp_path / "similar.json"
    rc, text = run_cli_output("evaluate", "--model", attention_model_dir, "--data", ci_dataset,
                              "--index", ci_index_dir, "--similar", "--users", "90",
                              "--bootstrap", "200", "--output-json", out)
    assert rc == 0
    assert "coverage@k" in text and "most_popular" in text
    res = json.loads(out.read_text())
    assert res["seed_rows"] == 90 and res["seeds_per_row"][1:] == [30, 30, 30]
    emb, mod = res["rows"]["embedding"], res["rows"]["model"]
    k = emb["k"]
    assert k == setup["cfg"].similar.k
    assert emb[f"coverage@{k}"] >= 0.99 and mod[f"coverage@{mod['k']}"] >= 0.99
    lo, hi = emb[f"coverage@{k}_ci95"]
    assert lo <= emb[f"coverage@{k}"] <= hi
    # Relevance on the planted categories: measured 0.85 for the embedding mode against 0.05
    # for random items and 0.09 for the most popular.
    share = emb[f"shares_label@{k}"]
    assert share >= 0.6
    assert share >= 5 * res["baselines"]["random"][f"shares_label@{k}"]
    assert share >= res["baselines"]["most_popular"][f"shares_label@{k}"] + 0.4


def test_evaluate_similar_bad_flags(attention_model_dir, ci_dataset, ci_index_dir, capsys):
    base = ["evaluate", "--model", attention_model_dir, "--data", ci_dataset]
    assert run_cli(*base, "--similar") == 2
    assert "--similar needs --index" in capsys.readouterr().err
    assert run_cli(*base, "--index", ci_index_dir, "--similar", "--similar-ef", "0=5") == 2
    err = capsys.readouterr().err
    assert "--similar-ef" in err and "level 1" in err
    assert run_cli(*base, "--index", ci_index_dir, "--similar", "--similar-k", "500") == 2
    assert "k = 500" in capsys.readouterr().err
