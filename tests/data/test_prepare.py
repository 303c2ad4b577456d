"""Tests of the log readers and ``nann-tf prepare``."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nann_tf.data import prepare as prepare_mod
from nann_tf.data.dataset import DataError, Dataset
from nann_tf.data.prepare import build_dataset, prepare_dataset
from nann_tf.data.readers import read_csv_log, read_log, read_movielens, read_userbehavior
from nann_tf.data.table import TableSpec, read_table
from nann_tf.data.synth import generate_log, write_userbehavior_csv

from conftest import run_cli

ML100K = Path(__file__).parents[2].parent / "shared/data/movielens-100k"


# ----------------------------------------------------------------------------- helpers

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _reference(rows, min_len, max_len, val_users, test_users, train_min_len=None):
    """Pure-Python prepare, given the held-out user sets chosen by the real one.

    rows: (user, item, category, ts) in file order. Returns a dict comparable to the output.
    """
    by_user = defaultdict(list)
    for i, (u, it, c, ts) in enumerate(rows):
        by_user[u].append((ts, i, it, c))
    keep = min(min_len, train_min_len or min_len)
    seqs = {u: sorted(v) for u, v in by_user.items() if len(v) >= keep}
    assert all(len(seqs[u]) >= min_len for u in set(val_users) | set(test_users))
    users = sorted(seqs)
    vocab = sorted({x[2] for u in users for x in seqs[u]})
    dense = {it: k + 1 for k, it in enumerate(vocab)}
    first_cat = {}
    for u in users:
        for _, _, it, c in seqs[u]:
            first_cat.setdefault(it, c)
    train_users = [u for u in users if u not in val_users and u not in test_users]
    train_items = [dense[x[2]] for u in train_users for x in seqs[u]]
    freq = Counter(train_items)

    def held(us):
        out = {}
        for u in sorted(us):
            seq = [dense[x[2]] for x in seqs[u]]
            t = math.ceil(len(seq) / 2) - 1
            h = seq[max(0, t - max_len):t]
            out[u] = ([0] * (max_len - len(h)) + h, len(h), seq[t], seq[t + 1:])
        return out

    return {"users": users, "vocab": vocab, "first_cat": first_cat,
            "train_users": train_users, "train_items": train_items,
            "train_lengths": [len(seqs[u]) for u in train_users],
            "freq": [freq.get(k, 0) for k in range(len(vocab) + 1)],
            "val": held(val_users), "test": held(test_users)}


def _check_against_reference(ds: Dataset, rows, min_len, train_min_len=None):
    val_u, test_u = set(ds.val.user.tolist()), set(ds.test.user.tolist())
    ref = _reference(rows, min_len, ds.max_len, val_u, test_u, train_min_len)
    assert not val_u & test_u
    assert sorted(val_u | test_u | set(ds.train_users.tolist())) == ref["users"]
    assert ds.raw_item_id[1:].tolist() == ref["vocab"]
    assert ds.raw_item_id[0] == 0 and ds.item_category[0] == 0
    raw_cat = ds.raw_category_id[ds.item_category[1:]]
    assert raw_cat.tolist() == [ref["first_cat"][it] for it in ref["vocab"]]
    assert ds.train_users.tolist() == ref["train_users"]
    assert ds.train_items.tolist() == ref["train_items"]
    assert np.diff(ds.train_splits).tolist() == ref["train_lengths"]
    assert ds.item_freq.tolist() == ref["freq"]
    for split in ("val", "test"):
        h = getattr(ds, split)
        for k, u in enumerate(h.user.tolist()):
            hist, hist_len, target, later = ref[split][u]
            assert h.hist[k].tolist() == hist
            assert h.hist_len[k] == hist_len and h.target[k] == target
            assert h.later[h.later_splits[k]:h.later_splits[k + 1]].tolist() == later
            # --next-n: the target, then the later behaviours, distinct, in time order.
            assert h.next_targets(3)[k].tolist() == list(dict.fromkeys([target] + later[:2]))
        assert h.user.tolist() == sorted(h.user.tolist())


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------- readers

def test_spaces_crlf_and_blank_lines_read_as_a_clean_file(tmp_path):
    clean = "1,10,5,pv,100\n2,20,5,buy,90\n1,11,6,cart,95\n"
    messy = "1, 10,5,pv,100\r\n\n2,20 ,5,buy,90\r\n  \n1,11,6,cart,95"  # no final newline
    a = read_userbehavior(_write(tmp_path / "a.csv", clean))
    b = read_userbehavior(_write(tmp_path / "b.csv", messy))
    for k in ("user", "item", "category", "timestamp"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.rows == b.rows == 3
    assert a.item.tolist() == [10, 20, 11]


def test_line_numbers_across_blocks(tmp_path):
    """Arrow reads in blocks; a bad value in a later block is still reported at its line."""
    lines = [f"{i},{i + 1},3,pv,{1000 + i}" for i in range(1, 200)]
    lines[150] = "151,,3,pv,1151"
    path = _write(tmp_path / "x.csv", "\n".join(lines) + "\n")
    spec = TableSpec("user=1,item=2,time=5", header=False, block_size=97)
    with pytest.raises(DataError, match=r"x\.csv line 151, column column 2 \(item\): empty "
                                        r"item id"):
        read_table(path, spec)
    lines[150] = "151,152,3,pv,1151"
    _write(path, "\n".join(lines) + "\n")
    small = read_table(path, spec)
    big = read_table(path, TableSpec(spec.columns, header=False))
    assert small.rows == big.rows == 199
    for k in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(small, k), getattr(big, k))


@pytest.mark.parametrize("text,message", [
    ("1,2,3,pv,4\n5,6,7,pv\n", "line 2: expected 5 columns"),
    ("1,2,3,pv,4,9\n", "line 1: expected 5 columns"),
    ("1,2,3,pv,4\n1,2,,pv,4\n", "line 2, column category_id (category): expected an integer, "
                                 "got ''"),
    ("1,2,3,pv,1.5\n", "line 1, column timestamp (time): expected an integer, got '1.5'"),
    ("1,2,3,pv,99999999999999999999\n", "column timestamp (time): integer "
                                         "99999999999999999999 does not fit in int64"),
    ("", "empty file"),
    ("\n\n", "empty file"),
])
def test_userbehavior_bad_input(tmp_path, text, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match="bad.csv") as e:
        read_userbehavior(path)
    assert message in str(e.value)


def test_csv_header_detection_and_floats(tmp_path):
    with_header = _write(tmp_path / "h.csv", "userId,movieId,rating,timestamp\n"
                                              "1,10,4.5,9.5\n1,11,3,10\n")
    without = _write(tmp_path / "n.csv", "1,10,4.5,9.5\n1,11,3,10\n")
    a, b = read_csv_log(with_header), read_csv_log(without)
    assert a.rows == b.rows == 2
    assert a.rating.tolist() == [4.5, 3.0] and a.timestamp.tolist() == [9.5, 10.0]
    assert a.category is None
    # A bad first line is data (reported), not a header.
    with pytest.raises(DataError, match=r"line 1, column item \(item\): expected an integer"):
        read_csv_log(_write(tmp_path / "b.csv", "1,x,4,5\n"))
    with pytest.raises(DataError, match=r"line 2, column rating \(rating\): expected a finite "
                                        r"number, got 'nan'"):
        read_csv_log(_write(tmp_path / "c.csv", "1,2,4,5\n1,3,nan,6\n"))


def test_movielens_reader_small(tmp_path):
    _write(tmp_path / "t.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                  "1\t10\t4\t100\n1\t11\t5\t99\n")
    _write(tmp_path / "t.item", "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
                                 "10\tA Film, with comma\tDrama Comedy\n11\tB\t\n")
    m = read_movielens(tmp_path)
    assert m.item.tolist() == [10, 11] and m.rating.tolist() == [4.0, 5.0]
    raw_item, raw_cat = m.item_category
    names = [m.category_names[c] for c in raw_cat.tolist()]
    assert dict(zip(raw_item.tolist(), names)) == {10: "Drama", 11: "(none)"}
    _write(tmp_path / "u.item", "item_id:token\tclass:token_seq\nz9\tDrama\n")
    with pytest.raises(DataError, match=r"u\.item line 2, column item_id:token \(item\): "
                                        r"expected an integer, got 'z9'"):
        read_movielens(tmp_path / "t.inter", tmp_path / "u.item")
    with pytest.raises(DataError, match="several"):
        read_movielens(tmp_path)


def test_movielens_inter_extra_text_column(tmp_path):
    head = "review:token_seq\tuser_id:token\titem_id:token\ttimestamp:float\n"
    body = "".join(f"so, good {'x ' * (i % 7)}\t{i % 3}\t{i}\t{1000 - i}\n" for i in range(50))
    m = read_movielens(_write(tmp_path / "r.inter", head + body))
    assert m.rows == 50 and m.rating is None and m.item_category is None
    assert m.user.tolist() == [i % 3 for i in range(50)]
    assert m.timestamp.tolist() == [1000.0 - i for i in range(50)]


def test_unknown_format():
    with pytest.raises(DataError, match="unknown input format 'parquet'"):
        read_log("parquet", "x")


# ----------------------------------------------------------------------------- prepare

@pytest.fixture(scope="module")
def synth_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    cols = generate_log(400, 300, 8, 25, seed=11)
    path = d / "log.csv"
    write_userbehavior_csv(cols, path)
    return path, cols


def test_prepare_synth_matches_reference(tmp_path, synth_log):
    path, cols = synth_log
    out = tmp_path / "ds"
    meta = prepare_dataset(path, out, "userbehavior", max_len=12, min_len=10, val_users=30,
                           test_users=25, seed=5)
    ds = Dataset.load(out)
    assert ds.meta == meta == json.loads((out / "meta.json").read_text())
    rows = list(zip(cols["user_id"].tolist(), cols["item_id"].tolist(),
                    cols["category_id"].tolist(), cols["timestamp"].tolist()))
    _check_against_reference(ds, rows, min_len=10)
    _, lengths = np.unique(cols["user_id"], return_counts=True)
    assert meta["rows"] == len(rows) and meta["rows_kept"] == lengths[lengths >= 10].sum()
    assert (meta["num_val_users"], meta["num_test_users"]) == (30, 25)
    assert meta["num_train_users"] == (lengths >= 10).sum() - 55
    assert meta["input"] == str(path.resolve()) and meta["input_format"] == "userbehavior"
    # Every user's sequence in time order: map back to raw ids and compare with the log.
    for k in range(0, ds.num_train_users, 37):
        u = ds.train_users[k]
        seq = ds.raw_item_id[ds.train_items[ds.train_splits[k]:ds.train_splits[k + 1]]]
        mine = cols["user_id"] == u
        expect = cols["item_id"][mine][np.argsort(cols["timestamp"][mine], kind="stable")]
        assert seq.tolist() == expect.tolist()


def test_prepare_split_depends_on_seed_only(tmp_path, synth_log):
    path, _ = synth_log
    kw = dict(max_len=5, min_len=10, val_users=20, test_users=20)
    prepare_dataset(path, tmp_path / "a", seed=1, **kw)
    prepare_dataset(path, tmp_path / "b", seed=1, **kw)
    prepare_dataset(path, tmp_path / "c", seed=2, **kw)
    a, b, c = (Dataset.load(tmp_path / x) for x in "abc")
    assert a.test.user.tolist() == b.test.user.tolist()
    assert a.test.user.tolist() != c.test.user.tolist()
    for name in ("items", "train", "val", "test"):
        for key, arr in np.load(tmp_path / "a" / f"{name}.npz").items():
            np.testing.assert_array_equal(arr, np.load(tmp_path / "b" / f"{name}.npz")[key])


def test_ties_keep_file_order_and_float_time_sorts_numerically(tmp_path):
    # user 1: two behaviours at t=5 (file order 30 then 20), t=9.5 < t=10 numerically.
    lines = ["1,30,4,5", "1,20,4,5", "1,40,4,10", "1,50,4,9.5"] + \
        [f"1,{60 + i},4,{20 + i}" for i in range(6)] + \
        [f"2,{70 + i},3,{100 - i}" for i in range(10)]
    path = _write(tmp_path / "r.csv", "\n".join(lines) + "\n")
    ds = build_dataset(read_csv_log(path), max_len=4, min_len=10, val_users=0, test_users=0)
    raw = ds.arrays["items"]["raw_item_id"]
    tr = ds.arrays["train"]
    seq1 = raw[tr["items"][:10]].tolist()
    assert seq1 == [30, 20, 50, 40, 60, 61, 62, 63, 64, 65]
    assert raw[tr["items"][10:]].tolist() == [79 - i for i in range(10)]


def test_ties_survive_unstable_sort_at_scale():
    rng = np.random.default_rng(0)
    n = 200_000
    user = rng.integers(0, 50, n)
    ts = rng.integers(0, 20, n)  # many ties
    order = prepare_mod.sort_by_user_time(user, ts)
    np.testing.assert_array_equal(order, np.lexsort((ts, user)))
    order = prepare_mod.sort_by_user_time(user * 10**12, ts.astype(np.float64) / 3)
    np.testing.assert_array_equal(order, np.lexsort((ts, user)))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(1, 12), st.integers(-3, 15), st.integers(0, 3),
                               st.integers(0, 6)), min_size=1, max_size=120),
       max_len=st.integers(1, 6), seed=st.integers(0, 3),
       spread=st.sampled_from([1, 1, 10**15]))
def test_random_logs_match_reference(tmp_path, rows, max_len, seed, spread):
    # Few timestamps, so many ties; negative raw ids; categories that disagree per item.
    # spread: item ids far apart (a span far above the row count), the vocabulary's other path.
    rows = [(u, i * spread, c, t) for u, i, c, t in rows]
    text = "".join(f"{u},{i},{c},pv,{t}\n" for u, i, c, t in rows)
    path = _write(tmp_path / "h.csv", text)
    data = read_userbehavior(path)
    counts = Counter(u for u, *_ in rows)
    if not any(n >= 3 for n in counts.values()):
        with pytest.raises(DataError, match="no users left"):
            build_dataset(data, max_len=max_len, min_len=3)
        return
    out = build_dataset(data, max_len=max_len, min_len=3, val_users=1, test_users=1, seed=seed)
    d = tmp_path / "d"
    prepare_mod.write_dataset(out, d, overwrite=True)
    _check_against_reference(Dataset.load(d), rows, min_len=3)


def test_min_len_filter_and_held_out_scaling(tmp_path, caplog):
    lines = []
    for u in range(1, 41):
        n = 3 if u % 4 == 0 else 12  # every 4th user too short
        lines += [f"{u},{(u * 7 + j) % 50 + 1},{j % 3},pv,{j}" for j in range(n)]
    path = _write(tmp_path / "l.csv", "\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO):
        meta = prepare_dataset(path, tmp_path / "d", max_len=6, min_len=10, val_users=100,
                               test_users=2)
    assert "scaled down" in caplog.text
    ds = Dataset.load(tmp_path / "d")
    kept = set(ds.train_users.tolist()) | set(ds.val.user.tolist()) | set(ds.test.user.tolist())
    assert kept == {u for u in range(1, 41) if u % 4}
    assert (meta["num_val_users"], meta["num_test_users"]) == (3, 2)  # 10% of 30 users
    # ceil(12/2) = 6th behaviour: index 5, five behaviours of history.
    assert ds.val.hist_len.tolist() == [5] * 3
    assert (ds.val.hist[:, 0] == 0).all() and (ds.val.hist[:, 1:] > 0).all()
    rows = [tuple(int(x) for x in (lambda f: (f[0], f[1], f[2], f[4]))(line.split(",")))
            for line in lines]
    _check_against_reference(ds, rows, min_len=10)


def test_short_users_train_but_are_never_held_out(tmp_path):
    """train_min_len: users with 2..min_len-1 behaviours join training (their samples, items
    and frequencies), and the held-out users are exactly those of a run without them."""
    lines = []
    for u in range(1, 61):
        n = 2 + u % 3 if u % 4 == 0 else 12  # every 4th user has 2-4 behaviours
        lines += [f"{u},{(u * 7 + j) % 80 + 1},{j % 3},pv,{j}" for j in range(n)]
    lines.append("999,500,1,pv,1")  # one behaviour: no sample, dropped
    path = _write(tmp_path / "l.csv", "\n".join(lines) + "\n")
    meta = prepare_dataset(path, tmp_path / "short", max_len=6, min_len=10, val_users=4,
                           test_users=3, train_min_len=2)
    prepare_dataset(path, tmp_path / "long", max_len=6, min_len=10, val_users=4,
                    test_users=3)
    ds, old = Dataset.load(tmp_path / "short"), Dataset.load(tmp_path / "long")
    assert meta["train_min_len"] == 2 and "train_min_len" not in old.meta
    short = {u for u in range(1, 61) if u % 4 == 0}
    assert set(ds.train_users.tolist()) == set(old.train_users.tolist()) | short
    assert 999 not in set(ds.train_users.tolist()) and 500 not in set(ds.raw_item_id.tolist())
    for split in ("val", "test"):
        assert getattr(ds, split).user.tolist() == getattr(old, split).user.tolist()
        assert not short & set(getattr(ds, split).user.tolist())
    assert ds.num_train_samples > old.num_train_samples
    rows = [tuple(int(x) for x in (lambda f: (f[0], f[1], f[2], f[4]))(line.split(",")))
            for line in lines]
    _check_against_reference(ds, rows, min_len=10, train_min_len=2)
    with pytest.raises(DataError, match="train_min_len must be >= 2"):
        prepare_dataset(path, tmp_path / "bad", min_len=10, train_min_len=1)
    assert not (tmp_path / "bad").exists()


def test_csv_format_one_category_and_min_rating(tmp_path):
    lines = ["user,item,rating,timestamp"] + \
        [f"{u},{(u + j) % 9 + 100},{1 + (u + j) % 5},{j}" for u in range(1, 21) for j in range(30)]
    path = _write(tmp_path / "r.csv", "\n".join(lines) + "\n")
    meta = prepare_dataset(path, tmp_path / "all", "csv", val_users=2, test_users=2)
    ds = Dataset.load(tmp_path / "all")
    assert meta["num_categories"] == 1 and ds.raw_category_id.tolist() == [0, 0]
    assert (ds.item_category[1:] == 1).all()
    assert meta["rows"] == meta["rows_kept"] == 600
    meta4 = prepare_dataset(path, tmp_path / "good", "csv", val_users=2, test_users=2,
                            min_rating=4)
    assert meta4["rows"] == 600 and meta4["rows_kept"] == 240 and meta4["min_rating"] == 4
    kept_items = {int(line.split(",")[1]) for line in lines[1:] if int(line.split(",")[2]) >= 4}
    assert set(Dataset.load(tmp_path / "good").raw_item_id[1:].tolist()) == kept_items
    with pytest.raises(DataError, match="no rating column"):
        build_dataset(read_userbehavior(_write(tmp_path / "u.csv", "1,2,3,pv,4\n")),
                      min_rating=3)


@pytest.mark.skipif(not ML100K.is_dir(), reason="../shared/data/movielens-100k not present")
def test_movielens_100k(tmp_path):
    out = tmp_path / "ml"
    assert run_cli(*["prepare", "--format", "movielens", "--input", str(ML100K), "--output",
                 str(out), "--config", "movielens-100k"]) == 0
    ds = Dataset.load(out)
    assert ds.meta["rows"] == ds.meta["rows_kept"] == 100_000
    assert ds.num_items == 1682
    assert ds.num_train_users + len(ds.val) + len(ds.test) == 943
    assert len(ds.val) == len(ds.test) == 94  # 100 asked, capped at 10% of 943
    names = ds.meta["category_names"]
    assert "Drama" in names.values() and "Comedy" in names.values()
    assert ds.num_categories == len(names) <= 19
    # Item 1 is Toy Story (Animation Children's Comedy): first genre Animation.
    k = int(np.flatnonzero(ds.raw_item_id == 1)[0])
    assert names[str(ds.raw_category_id[ds.item_category[k]])] == "Animation"
    assert ds.item_freq.sum() == len(ds.train_items)
    # Explicit files and a rating filter.
    out4 = tmp_path / "ml4"
    assert run_cli(*["prepare", "--format", "movielens", "--input", str(ML100K / "ml-100k.inter"),
                 "--item-file", str(ML100K / "ml-100k.item"), "--output", str(out4),
                 "--min-rating", "4", "--val-users", "50", "--test-users", "50"]) == 0
    m4 = Dataset.load(out4).meta
    assert m4["rows"] == 100_000 and 40_000 < m4["rows_kept"] < 56_000


def test_movielens_items_missing_from_item_file(tmp_path):
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    inter += [f"{u}\t{(u + j) % 6 + 1}\t4\t{j}" for u in range(1, 13) for j in range(10)]
    _write(tmp_path / "x.inter", "\n".join(inter) + "\n")
    _write(tmp_path / "x.item", "item_id:token\tclass:token_seq\n1\tDrama\n2\tComedy War\n")
    meta = prepare_dataset(tmp_path, tmp_path / "out", "movielens", val_users=1, test_users=1)
    ds = Dataset.load(tmp_path / "out")
    names = {int(k): v for k, v in meta["category_names"].items()}
    cats = [names[int(ds.raw_category_id[c])] for c in ds.item_category[1:]]
    assert dict(zip(ds.raw_item_id[1:].tolist(), cats)) == {
        1: "Drama", 2: "Comedy", 3: "(none)", 4: "(none)", 5: "(none)", 6: "(none)"}


# ----------------------------------------------------------------------------- CLI errors

def _prepare(args):
    return run_cli(*["prepare"] + [str(a) for a in args])


@pytest.mark.parametrize("text,message", [
    ("1,2,3,pv,4\n" * 3 + "7,abc,3,pv,9\n", "bad.csv line 4, column item_id (item): expected "
                                             "an integer, got 'abc'"),
    ("1,2,3,pv,4\n1,2,3,4\n", "bad.csv line 2: expected 5 columns (user_id,item_id,"
                              "category_id,behavior_type,timestamp), got 4"),
    ("1,2,3,pv,4,5\n", "bad.csv line 1: expected 5 columns"),
    ("", "bad.csv: empty file"),
    ("1,2,3,pv,4\n2,2,3,pv,5\n", "no users left after filtering"),
])
def test_cli_bad_input(tmp_path, capsys, text, message):
    path = _write(tmp_path / "bad.csv", text)
    out = tmp_path / "out"
    assert _prepare(["--format", "userbehavior", "--input", path, "--output", out]) == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == ["bad.csv"]  # no output, no temp directory


def test_cli_unknown_format_and_missing_input(tmp_path, capsys):
    out = tmp_path / "out"
    assert _prepare(["--format", "parquet", "--input", tmp_path / "x", "--output", out]) == 2
    assert "unknown format 'parquet'" in capsys.readouterr().err
    assert _prepare(["--format", "csv", "--input", tmp_path / "x.csv", "--output", out]) == 2
    assert "x.csv: CSV log not found" in capsys.readouterr().err
    assert _prepare(["--format", "userbehavior", "--input", tmp_path / "x", "--output", out,
                     "--min-rating", "3"]) == 2
    assert "no rating column" in capsys.readouterr().err
    assert not out.exists()


def test_cli_existing_output_and_atomic_replace(tmp_path, capsys, synth_log, monkeypatch):
    path, _ = synth_log
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    base = ["--format", "userbehavior", "--input", path, "--output", out,
            "--val-users", "10", "--test-users", "10"]
    assert _prepare(base) == 2
    assert "not empty" in capsys.readouterr().err and _files(out) == ["keep.txt"]

    # A failing --overwrite run (bad input) leaves the old directory alone.
    bad = _write(tmp_path / "bad.csv", "1,2,3,pv,x\n")
    assert _prepare(["--format", "userbehavior", "--input", bad, "--output", out,
                     "--overwrite"]) == 2
    assert _files(out) == ["keep.txt"]

    # A failure while writing the new files also leaves it alone, and no temp directory.
    real_savez = np.savez

    def savez_then_fail(file, **arrays):
        real_savez(file, **arrays)
        if str(file).endswith("train.npz"):
            raise OSError("disk full")

    monkeypatch.setattr(prepare_mod.np, "savez", savez_then_fail)
    assert _prepare(base + ["--overwrite"]) == 2
    assert "disk full" in capsys.readouterr().err
    monkeypatch.setattr(prepare_mod.np, "savez", real_savez)
    assert _files(out) == ["keep.txt"]
    assert _files(tmp_path) == ["bad.csv", "ds"]

    assert _prepare(base + ["--overwrite"]) == 0
    assert _files(out) == ["items.npz", "meta.json", "test.npz", "train.npz", "val.npz"]
    assert _files(tmp_path) == ["bad.csv", "ds"]
    assert len(Dataset.load(out).test) == 10


def test_cli_empty_existing_dir_is_fine_and_file_is_not(tmp_path, synth_log):
    path, _ = synth_log
    out = tmp_path / "empty"
    out.mkdir()
    assert _prepare(["--format", "userbehavior", "--input", path, "--output", out]) == 0
    assert (out / "meta.json").is_file()
    f = _write(tmp_path / "file", "x")
    assert _prepare(["--format", "userbehavior", "--input", path, "--output", f]) == 2
    assert f.read_text() == "x"


def test_cli_config_and_flags(tmp_path, synth_log):
    path, _ = synth_log
    out = tmp_path / "ds"
    assert _prepare(["--format", "userbehavior", "--input", path, "--output", out,
                     "--config", "ci-synth", "--min-len", "12", "--seed", "3"]) == 0
    meta = Dataset.load(out).meta
    assert meta["max_len"] == 20 and meta["min_len"] == 12 and meta["split_seed"] == 3
    assert meta["num_val_users"] <= 40  # ci-synth asks 300: capped at 10%


def test_cli_offers_exactly_the_readers_formats(capsys):
    from nann_tf.data import readers

    assert run_cli("prepare", "--format", "nosuch", "--input", "x", "--output", "y") == 2
    err = capsys.readouterr().err
    assert f"expected one of {', '.join(readers.INPUT_FORMATS)})" in err


def test_explicit_held_out_sizes_are_honoured_or_refused_naming_the_flag(tmp_path, capsys):
    """A real log of 671 users asked for 100 + 200: kept exactly (the 10% cap would give 67 +
    67); asking for more than half of the users is an error; config defaults still scale."""
    path = tmp_path / "log.csv"
    write_userbehavior_csv(generate_log(700, 300, 5, 30, seed=4), path)
    # --train-min-len 10: every kept user may be held out, so "kept" below is what the 10% cap
    # and the half rule count (short training-only users are test_short_users_... 's subject).
    base = ["--format", "userbehavior", "--input", path, "--min-len", "10", "--max-len", "20",
            "--train-min-len", "10"]
    assert _prepare(base + ["--output", tmp_path / "a", "--val-users", "100",
                            "--test-users", "200"]) == 0
    meta = Dataset.load(tmp_path / "a").meta
    kept = meta["num_train_users"] + meta["num_val_users"] + meta["num_test_users"]
    assert (meta["num_val_users"], meta["num_test_users"]) == (100, 200) and kept > 600
    assert _prepare(base + ["--output", tmp_path / "b", "--val-users", str(kept // 2),
                            "--test-users", "1"]) == 2
    err = capsys.readouterr().err
    assert f"--val-users {kept // 2} and --test-users 1" in err and "more than half" in err
    assert not (tmp_path / "b").exists()
    # Only one flag given: that one is exact, the other is the config default scaled to 10%.
    assert _prepare(base + ["--output", tmp_path / "c", "--test-users", "150",
                            "--config", "ci-synth"]) == 0
    meta = Dataset.load(tmp_path / "c").meta
    assert meta["num_test_users"] == 150 and meta["num_val_users"] == kept // 10
