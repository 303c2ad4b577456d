"""Tests of the dataset directory loader, sample positions and history gathering."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nann_tf.data.dataset import DataError, Dataset, gather_histories, popularity_topk
from nann_tf.data.prepare import build_dataset, write_dataset
from nann_tf.data.readers import BehaviorLog
from nann_tf.data.synth import generate_log


@pytest.fixture(scope="module")
def prepared():
    cols = generate_log(300, 200, 6, 20, seed=2)
    log = BehaviorLog(user=cols["user_id"], item=cols["item_id"], timestamp=cols["timestamp"],
                      category=cols["category_id"], rows=len(cols["user_id"]), source="mem",
                      input_format="userbehavior")
    return build_dataset(log, max_len=7, min_len=10, val_users=20, test_users=15, seed=0)


@pytest.fixture(scope="module")
def saved(prepared, tmp_path_factory):
    return write_dataset(prepared, tmp_path_factory.mktemp("ds") / "ds")


def _copy(saved, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def _resave(path, **changes):
    with np.load(path) as z:
        arrays = dict(z.items())
    arrays.update(changes)
    for k, v in list(arrays.items()):
        if v is None:
            del arrays[k]
    np.savez(path, **arrays)


def test_save_load_same_arrays(prepared, saved):
    ds = Dataset.load(saved)
    assert ds.meta == json.loads(json.dumps(prepared.meta))
    a = prepared.arrays
    it = a["items"]
    pairs = [(ds.raw_item_id, it["raw_item_id"]), (ds.item_category, it["category"]),
             (ds.item_freq, it["freq"]), (ds.raw_category_id, it["raw_category_id"]),
             (ds.train_items, a["train"]["items"]), (ds.train_splits, a["train"]["splits"]),
             (ds.train_users, a["train"]["user"])]
    for split in ("val", "test"):
        h = getattr(ds, split)
        pairs += [(getattr(h, k), a[split][k]) for k in ("hist", "hist_len", "target", "user")]
    for got, want in pairs:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert ds.num_items == prepared.meta["num_items"] and ds.max_len == 7
    assert ds.num_train_samples == prepared.meta["num_train_samples"]
    assert (len(ds.val), len(ds.test)) == (20, 15)


def test_train_positions_and_histories_match_python(saved):
    ds = Dataset.load(saved)
    pos, start = ds.train_positions()
    assert pos.dtype == start.dtype == np.int64
    assert len(pos) == ds.num_train_samples
    expect_pos, expect_start, expect_hist = [], [], []
    items = ds.train_items.tolist()
    for u in range(ds.num_train_users):
        s, e = int(ds.train_splits[u]), int(ds.train_splits[u + 1])
        for j in range(s + 1, e):
            expect_pos.append(j)
            expect_start.append(s)
            h = items[max(s, j - ds.max_len):j]
            expect_hist.append([0] * (ds.max_len - len(h)) + h)
    assert pos.tolist() == expect_pos and start.tolist() == expect_start
    hist = gather_histories(ds.train_items, pos, start, ds.max_len)
    assert hist.dtype == np.int32 and hist.shape == (len(pos), ds.max_len)
    assert hist.tolist() == expect_hist
    # A batch in any order gives the same rows.
    sel = np.random.default_rng(0).choice(len(pos), 50, replace=False)
    np.testing.assert_array_equal(gather_histories(ds.train_items, pos[sel], start[sel], 7),
                                  hist[sel])


def test_gather_histories_alignment_small():
    items = np.array([5, 6, 7, 8, 9, 1, 2], dtype=np.int32)  # users [0,5) and [5,7)
    out = gather_histories(items, np.array([1, 4, 6]), np.array([0, 0, 5]), 3)
    assert out.tolist() == [[0, 0, 5], [6, 7, 8], [0, 0, 1]]
    assert gather_histories(items, np.zeros(0, int), np.zeros(0, int), 3).shape == (0, 3)


def test_held_out_history_is_what_precedes_the_target(saved):
    ds = Dataset.load(saved)
    for h in (ds.val, ds.test):
        assert (h.hist_len >= 1).all() and (h.hist_len <= ds.max_len).all()
        for k in range(len(h)):
            row = h.hist[k]
            n = h.hist_len[k]
            assert (row[:ds.max_len - n] == 0).all() and (row[ds.max_len - n:] > 0).all()
    assert not set(ds.val.user.tolist()) & set(ds.train_users.tolist())


def test_popularity_topk(saved):
    ds = Dataset.load(saved)
    top = popularity_topk(ds, 10)
    assert top.dtype == np.int32 and len(top) == 10
    f = ds.item_freq[top]
    assert (np.diff(f) <= 0).all() and f[0] == ds.item_freq.max()
    assert f[-1] >= np.sort(ds.item_freq[1:])[::-1][9]
    assert len(popularity_topk(ds, 10**9)) == ds.num_items


@pytest.mark.parametrize("corrupt,message", [
    (lambda d: (d / "train.npz").unlink(), "train.npz: missing"),
    (lambda d: (d / "meta.json").write_text("{oops"), "meta.json: not valid JSON"),
    (lambda d: (d / "meta.json").write_text(json.dumps({"format": "x"})), "'format' must be"),
    (lambda d: _resave(d / "train.npz", items=None), "array 'items' missing"),
    (lambda d: _resave(d / "items.npz", category=np.load(d / "items.npz")["category"]
                       .astype(np.int64)), "array 'category' must be int32"),
    (lambda d: _resave(d / "train.npz", items=np.load(d / "train.npz")["items"] + 10**6),
     "train.npz: array 'items': dense item ids must be in 1.."),
    (lambda d: _resave(d / "val.npz", target=np.zeros(20, np.int32)),
     "val.npz: array 'target'"),
    (lambda d: _resave(d / "test.npz", hist=np.load(d / "test.npz")["hist"][:, ::-1].copy()),
     "test.npz: array 'hist': must be right-aligned"),
    (lambda d: _resave(d / "items.npz", freq=np.zeros(3, np.int64)),
     "items.npz: array 'freq': shape (3,)"),
    (lambda d: (d / "items.npz").write_bytes(b"not a zip"), "items.npz: not a readable"),
])
def test_load_rejects_bad_directories(saved, tmp_path, corrupt, message):
    d = _copy(saved, tmp_path)
    corrupt(d)
    with pytest.raises(DataError) as e:
        Dataset.load(d)
    assert message in str(e.value)


def test_load_missing_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        Dataset.load(tmp_path / "nothing")


# ------------------------------------------------------------------------------ string ids
@pytest.fixture(scope="module")
def saved_strings(prepared, tmp_path_factory):
    """The dataset with string item and user ids (see nann_tf.data.dataset): what prepare
    writes for a log of SKUs and hex customer ids (tests/data/test_table.py checks that)."""
    import pyarrow as pa

    cols = generate_log(300, 200, 6, 20, seed=2)
    item_keys = np.array(sorted({f"SKU-{int(i):09d}" for i in cols["item_id"]}))
    user_keys = np.array(sorted({f"{int(u):08x}" for u in cols["user_id"]}))
    log = BehaviorLog(user=np.searchsorted(user_keys, [f"{int(u):08x}" for u in cols["user_id"]]),
                      item=np.searchsorted(item_keys, [f"SKU-{int(i):09d}"
                                                       for i in cols["item_id"]]),
                      timestamp=cols["timestamp"], category=cols["category_id"],
                      rows=len(cols["user_id"]), source="mem", input_format="table",
                      user_keys=pa.array(user_keys), item_keys=pa.array(item_keys))
    ds = build_dataset(log, max_len=7, min_len=10, val_users=20, test_users=15, seed=0)
    # Same log, integer ids of the same order: the same dense arrays.
    for name in ("train", "val", "test"):
        for k, v in prepared.arrays[name].items():
            if k != "user":
                np.testing.assert_array_equal(ds.arrays[name][k], v)
    assert ds.meta["item_id_type"] == ds.meta["user_id_type"] == "string"
    return write_dataset(ds, tmp_path_factory.mktemp("ds-strings") / "ds")


def test_string_ids_load_and_map_dense_ids_back(saved_strings, saved):
    ds, ints = Dataset.load(saved_strings), Dataset.load(saved)
    assert ds.item_id_type == "string" and ints.item_id_type == "int"
    assert ds.raw_item_key[0] == "" and ds.raw_item_key[1:].tolist() == \
        [f"SKU-{int(i):09d}" for i in ints.raw_item_id[1:]]
    hist = ds.test.hist[:3]
    np.testing.assert_array_equal(ds.raw_items(hist),
                                  np.where(hist > 0, ds.raw_item_key[hist], ""))
    assert ints.raw_items(hist).dtype == np.int64
    assert [int(k, 16) for k in ds.train_user_key] == ints.train_users.tolist()
    np.testing.assert_array_equal(ds.test.user, np.searchsorted(
        np.sort(np.concatenate([ds.train_user_key, ds.val.user_key, ds.test.user_key])),
        ds.test.user_key))


def _keys(d, name="items.npz", key="raw_item_key"):
    return np.load(d / name)[key]


@pytest.mark.parametrize("corrupt,message", [
    (lambda d: _resave(d / "items.npz", raw_item_key=None),
     "items.npz: array 'raw_item_key' missing (meta.json says the ids are strings"),
    (lambda d: _resave(d / "items.npz", raw_item_key=_keys(d)[::-1].copy()),
     "items.npz: array 'raw_item_key': index 0 (padding) must be ''"),
    (lambda d: _resave(d / "items.npz", raw_item_key=np.concatenate(
        [[""], _keys(d)[2:], _keys(d)[1:2]])),
     "items.npz: array 'raw_item_key': ids must be non-empty, distinct and in ascending order"),
    (lambda d: _resave(d / "items.npz", raw_item_key=np.char.encode(_keys(d))),
     "items.npz: array 'raw_item_key': must be a 1-D unicode (str) array"),
    (lambda d: _resave(d / "items.npz", raw_item_key=_keys(d)[:-1]),
     "items.npz: array 'raw_item_key': shape"),
    (lambda d: _resave(d / "items.npz", raw_item_id=np.load(d / "items.npz")["raw_item_id"] * 2),
     "items.npz: array 'raw_item_id': must be 0..num_items"),
    (lambda d: _resave(d / "val.npz", user_key=None), "val.npz: array 'user_key' missing"),
    (lambda d: _resave(d / "train.npz", user_key=np.where(
        np.arange(len(_keys(d, "train.npz", "user_key"))) == 3, "",
        _keys(d, "train.npz", "user_key"))), "train.npz: array 'user_key': empty user id"),
    (lambda d: (d / "meta.json").write_text(json.dumps(dict(
        json.loads((d / "meta.json").read_text()), item_id_type="uuid"))),
     "meta.json: 'item_id_type' must be one of int, string, got 'uuid'"),
])
def test_load_rejects_bad_string_id_arrays(saved_strings, tmp_path, corrupt, message):
    d = _copy(saved_strings, tmp_path)
    corrupt(d)
    with pytest.raises(DataError) as e:
        Dataset.load(d)
    assert message in str(e.value)
