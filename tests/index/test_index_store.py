"""The build-index directory: save -> load -> same answer, and damaged indexes refused."""

import json

import numpy as np
import pytest
import tensorflow as tf

from nann_tf.index.hnsw import HnswIndexError, build_hnsw, graph_tensors
from nann_tf.index.store import ItemIndex, load_index, save_index
from nann_tf.search.beam import beam_search

N, D = 600, 8


@pytest.fixture(scope="module")
def item_index():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N + 1, D)).astype(np.float32)
    raw = np.r_[0, rng.choice(10 ** 9, N, replace=False)].astype(np.int64)
    cat = np.r_[0, rng.integers(1, 5, N)].astype(np.int32)
    return ItemIndex(build_hnsw(emb, M=8, ef_construction=40, num_threads=1), emb, raw, cat,
                     {"model_dir": "m"})


def _search(idx):
    q = tf.constant(np.random.default_rng(1).normal(size=(4, D)).astype(np.float32))
    table = tf.constant(idx.embeddings)

    def scorer(rows, ids):
        return -tf.reduce_sum((tf.gather(table, ids) - tf.gather(q, rows)) ** 2, axis=1)

    gt = graph_tensors(idx.graph, 1)
    ids, scores, n = beam_search(gt, scorer, 4, {1: 20, 0: 40}, {0: 3}, 10)
    return ids.numpy(), scores.numpy(), n.numpy()


def test_save_load_same_arrays_and_search(item_index, tmp_path):
    save_index(item_index, tmp_path / "idx")
    back = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(back.embeddings, item_index.embeddings)
    np.testing.assert_array_equal(back.raw_item_id, item_index.raw_item_id)
    np.testing.assert_array_equal(back.category, item_index.category)
    for (v1, s1), (v2, s2) in zip(back.graph.levels, item_index.graph.levels):
        np.testing.assert_array_equal(v1, v2)
        np.testing.assert_array_equal(s1, s2)
    assert back.meta["model_dir"] == "m" and back.meta["num_items"] == N
    for a, b in zip(_search(back), _search(item_index)):
        np.testing.assert_array_equal(a, b)


def test_damaged_index_is_refused_and_old_index_survives(item_index, tmp_path):
    d = tmp_path / "idx"
    save_index(item_index, d)
    bad = ItemIndex(item_index.graph, item_index.embeddings.copy(), item_index.raw_item_id,
                    item_index.category, {})
    bad.embeddings[3, 0] = np.nan
    with pytest.raises(HnswIndexError, match="NaN"):
        save_index(bad, d)
    assert load_index(d).embeddings[3, 0] == item_index.embeddings[3, 0], "old index kept"
    dup = ItemIndex(item_index.graph, item_index.embeddings, item_index.raw_item_id.copy(),
                    item_index.category, {})
    dup.raw_item_id[2] = dup.raw_item_id[1]
    with pytest.raises(HnswIndexError, match="not unique"):
        save_index(dup, tmp_path / "dup")
    assert not (tmp_path / "dup").exists()

    np.save(d / "embeddings.npy", item_index.embeddings[:-1])
    with pytest.raises(HnswIndexError, match="embeddings.npy"):
        load_index(d)
    (d / "embeddings.npy").write_bytes(b"garbage")
    with pytest.raises(HnswIndexError, match="unreadable"):
        load_index(d)
    meta = json.loads((d / "index.json").read_text())
    (d / "index.json").write_text(json.dumps(dict(meta, format="something-else")))
    with pytest.raises(HnswIndexError, match="format"):
        load_index(d)
    with pytest.raises(HnswIndexError, match="index.json"):
        load_index(tmp_path / "nothing-here")
