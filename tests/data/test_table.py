"""``prepare --format table``: any CSV/TSV/Parquet layout through a column mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nann_tf.data.dataset import DataError, Dataset
from nann_tf.data.prepare import prepare_dataset
from nann_tf.data.synth import generate_log, write_userbehavior_csv
from nann_tf.data.table import ColumnMapping, TableSpec, read_table

from conftest import SHARED_DATA, run_cli

ML100K = SHARED_DATA / "movielens-100k"

# A ratings export with extra columns, in an order of its own; row 3 (line 4) has a quoted comma.
RATINGS = """movieId,title,year,genres,userId,rating,timestamp
10,Alpha,1995,Animation|Children|Comedy,7,4.0,964982703
30,Beta,1995,Comedy|Romance,7,3.0,964981247
60,"Gamma, the",1995,Action|Crime|Thriller,8,2.5,964982224
30,Beta,1995,Romance|Comedy,8,5.0,964982300
"""
USER, ITEM = [7, 7, 8, 8], [10, 30, 60, 30]
TIME, RATING = [964982703, 964981247, 964982224, 964982300], [4.0, 3.0, 2.5, 5.0]
MAPPING = "user=userId,item=movieId,time=timestamp,rating=rating"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _check(log, category=None):
    np.testing.assert_array_equal(log.user, USER)
    np.testing.assert_array_equal(log.item, ITEM)
    np.testing.assert_array_equal(log.timestamp, TIME)
    np.testing.assert_array_equal(log.rating, RATING)
    assert log.rows == 4 and log.input_format == "table"


def test_header_csv_in_its_own_column_order(tmp_path):
    log = read_table(_write(tmp_path / "r.csv", RATINGS), TableSpec(MAPPING))
    _check(log)
    assert log.category is None and log.item_category is None


def test_headerless_csv_by_position_tsv_and_parquet_read_the_same(tmp_path):
    body = RATINGS.split("\n", 1)[1]
    headerless = read_table(_write(tmp_path / "r.txt", body),
                            TableSpec("user=5,item=1,time=7,rating=6"))
    _check(headerless)
    # Positions with a header: the header line is skipped only when asked.
    _check(read_table(_write(tmp_path / "h.csv", RATINGS),
                      TableSpec("user=5,item=1,time=7,rating=6", header=True)))
    tsv = RATINGS.replace('"Gamma, the"', "Gamma, the").replace(",", "\t") \
        .replace("Gamma\t the", "Gamma, the")
    _check(read_table(_write(tmp_path / "r.tsv", tsv), TableSpec(MAPPING)))  # by extension
    _check(read_table(_write(tmp_path / "r.dat", tsv), TableSpec(MAPPING)))  # sniffed
    table = pa.table({"movieId": ITEM, "userId": USER, "rating": RATING, "timestamp": TIME,
                      "genres": ["a"] * 4})
    pq.write_table(table, tmp_path / "r.parquet", row_group_size=3)  # two row groups
    _check(read_table(tmp_path / "r.parquet", TableSpec(MAPPING)))


def test_iso_and_integer_time_give_the_same_seconds(tmp_path):
    iso = RATINGS
    for t in TIME:
        iso = iso.replace(str(t), np.datetime_as_string(np.datetime64(t, "s")))
    assert "2000-07-30T" in iso
    _check(read_table(_write(tmp_path / "iso.csv", iso), TableSpec(MAPPING)))
    table = pa.table({"u": USER, "i": ITEM, "t": pa.array(np.array(TIME, "datetime64[s]")),
                      "r": RATING})
    pq.write_table(table, tmp_path / "t.parquet")
    _check(read_table(tmp_path / "t.parquet", TableSpec("user=u,item=i,time=t,rating=r")))


def test_multi_valued_categories_under_both_rules(tmp_path):
    path = _write(tmp_path / "r.csv", RATINGS)
    first = read_table(path, TableSpec(MAPPING + ",category=genres"))
    names = first.category_names
    assert [names[c] for c in first.category] == ["Animation", "Comedy", "Action", "Romance"]
    freq = read_table(path, TableSpec(MAPPING + ",category=genres",
                                      category_rule="most-frequent"))
    items, cats = freq.item_category
    got = {int(i): freq.category_names[int(c)] for i, c in zip(items, cats)}
    # 10: one row, three values, all once: Comedy is the most frequent in the whole file (3x).
    # 30: Comedy and Romance twice each for the item; Comedy is more frequent overall (3 vs 2).
    # 60: one row: Action, Crime, Thriller once each, overall once each: the smallest name.
    assert got == {10: "Comedy", 30: "Comedy", 60: "Action"}
    assert freq.category is None


def test_item_table_join_gives_item_categories(tmp_path):
    ratings = _write(tmp_path / "ratings.csv",
                     "userId,movieId,rating,timestamp\n1,10,4,5\n1,30,4,6\n1,60,4,7\n"
                     "2,60,1,7\n2,99,3,8\n2,10,3,9\n2,30,5,10\n")
    movies = _write(tmp_path / "movies.csv", 'movieId,title,genres\n10,A,Drama|War\n'
                    '30,"B, the",Comedy\n60,C,War|Drama\n')
    spec = TableSpec("user=userId,item=movieId,time=timestamp,rating=rating",
                     item_columns="item=movieId,category=genres")
    log = read_table(ratings, spec, item_file=movies)
    items, cats = log.item_category
    assert {int(i): log.category_names[int(c)] for i, c in zip(items, cats)} == \
        {10: "Drama", 30: "Comedy", 60: "War"}
    log = read_table(ratings, TableSpec(spec.columns, item_columns=spec.item_columns,
                                        category_rule="most-frequent"), item_file=movies)
    items, cats = log.item_category
    # Drama and War appear twice each overall: ties go to the smaller name.
    assert {int(i): log.category_names[int(c)] for i, c in zip(items, cats)} == \
        {10: "Drama", 30: "Comedy", 60: "Drama"}
    out = tmp_path / "ds"
    prepare_dataset(ratings, out, "table", item_file=movies, table=spec, min_len=3,
                    val_users=0, test_users=0, min_rating=2.0)
    meta = Dataset.load(out).meta
    assert meta["rows_kept"] == 6 and meta["input_format"] == "table"  # one rating < 2
    # Item 99 is not in the item table: it gets "(none)", as with the MovieLens item file.
    assert sorted(meta["category_names"].values()) == ["(none)", "Comedy", "Drama", "War"]


@pytest.mark.parametrize("text,mapping,message", [
    (RATINGS, "user=userId,item=movie_id,time=timestamp",
     "columns item=movie_id: no column 'movie_id' in the header of {path} (columns: "
     "movieId, title, year, genres, userId, rating, timestamp)"),
    (RATINGS, "user=userId,item=movieId,user=rating", "role user is mapped twice"),
    (RATINGS, "user=userId,time=timestamp", "no item column"),
    # A non-integer id makes a string id column (tests/data/test_string_ids.py); an empty one is an
    # error in either.
    (RATINGS.replace(",7,3.0,", ",,3.0,"), MAPPING, "{path} line 3, column userId (user): "
                                                     "empty user id"),
    (RATINGS.replace("8,5.0,964982300", "8,5.0,964982300,extra"), MAPPING,
     "{path} line 5: expected 7 columns (movieId,title,year,genres,userId,rating,timestamp), "
     "got 8"),
    (RATINGS.replace("964981247", "yesterday"), MAPPING,
     "{path} line 3, column timestamp (time): expected a number or an ISO 8601 time"),
    ("", MAPPING, "{path}: empty file"),
    ("movieId,userId,timestamp\n", "user=userId,item=movieId", "{path}: no rows after the "
                                                               "header"),
    (RATINGS, "user=userId,item=movieId,category=1x", "no column '1x'"),
])
def test_bad_input_names_file_line_and_column(tmp_path, text, mapping, message):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError) as e:
        read_table(path, TableSpec(mapping))
    assert message.format(path=path) in str(e.value)
    # Through prepare: nothing is written.
    out = tmp_path / "out"
    with pytest.raises(DataError):
        prepare_dataset(path, out, "table", table=TableSpec(mapping))
    assert not out.exists()


def test_bad_parquet_value_names_the_row_group(tmp_path):
    table = pa.table({"u": ["1", "2", "3", " "], "i": [1, 2, 3, 4], "t": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=2)
    with pytest.raises(DataError, match=r"b.parquet row group 1 row 2, column u \(user\): "
                                        r"empty user id"):
        read_table(tmp_path / "b.parquet", TableSpec("user=u,item=i,time=t"))


def test_mapping_parser():
    m = ColumnMapping.parse("user=userId, item=3 ,weight=rating")
    assert m.columns == {"user": "userId", "item": 3, "rating": "rating"}
    for bad, message in [("user", "expected ROLE=COLUMN"), ("colour=x,user=1,item=2",
                                                            "unknown role 'colour'"),
                         ("user=0,item=1", "positions start at 1")]:
        with pytest.raises(DataError, match=message):
            ColumnMapping.parse(bad)


# The datasets today's readers wrote before they became presets of the table reader (their own
# parsers, commit e8822cc), as digests of every array and of meta.json without its paths: the
# presets, and the table format with the same mapping, must write exactly these.
BEFORE_PRESETS = {
    "userbehavior": {
        "items.npz": "491c85a8ef8e6455",
        "meta.json": "f94383863513592c",
        "test.npz": "64fc6a0f15028a5d",
        "train.npz": "b339d2a553469e7e",
        "val.npz": "05cdc794fdd099e8"
    },
    "movielens": {
        "items.npz": "03e4c8d6c2e615b6",
        "meta.json": "631aa4dd57b95792",
        "test.npz": "41c7bcaa8bb9ca85",
        "train.npz": "4936dca3efbb2274",
        "val.npz": "11ad88c12d9ac7ec"
    }
}
UB_KW = dict(min_len=5, max_len=20, val_users=20, test_users=20, seed=1)
ML_KW = dict(min_len=5, max_len=20, val_users=50, test_users=50, seed=0, min_rating=3.0)


def _digest(d: Path) -> dict[str, str]:
    """sha256 (16 hex) of each file's content: every array of an .npz (name, dtype, shape,
    bytes; the zip container carries a write time), meta.json without paths (the item
    file by its name only)."""
    import hashlib

    out = {}
    for p in sorted(d.iterdir()):
        if p.name == "meta.json":
            meta = json.loads(p.read_text())
            for k in ("input", "source", "input_format", "item_source", "created",
                      "prepare_seconds"):
                meta.pop(k, None)
            if "item_file" in meta:  # where the checkout lies differs between machines
                meta["item_file"] = Path(meta["item_file"]).name
            data = json.dumps(meta, sort_keys=True).encode()
        elif p.suffix == ".npz":
            # The held-out users' later behaviours (``later``, ``later_splits``) were added after
            # these digests were taken; they are checked against the log in test_prepare.py.
            with np.load(p) as z:
                data = b"".join(k.encode() + str(z[k].dtype).encode() + str(z[k].shape).encode()
                                + z[k].tobytes() for k in sorted(z.files)
                                if k not in ("later", "later_splits"))
        else:
            data = p.read_bytes()
        out[p.name] = hashlib.sha256(data).hexdigest()[:16]
    return out


def test_userbehavior_preset_and_table_write_what_the_old_reader_wrote(tmp_path):
    log = tmp_path / "ub.csv"
    write_userbehavior_csv(generate_log(300, 200, 7, 30, 3), log)
    prepare_dataset(log, tmp_path / "a", "userbehavior", **UB_KW)
    prepare_dataset(log, tmp_path / "b", "table", table=TableSpec(
        "user=1,item=2,category=3,time=5"), **UB_KW)
    assert _digest(tmp_path / "a") == BEFORE_PRESETS["userbehavior"]
    assert _digest(tmp_path / "b") == BEFORE_PRESETS["userbehavior"]


@pytest.mark.skipif(not ML100K.is_dir(), reason="shared MovieLens-100K data not present")
def test_movielens_preset_and_table_write_what_the_old_reader_wrote(tmp_path):
    prepare_dataset(ML100K, tmp_path / "a", "movielens", **ML_KW)
    spec = TableSpec("user=user_id:token,item=item_id:token,rating=rating:float,"
                     "time=timestamp:float", delimiter="\t",
                     item_columns="item=item_id:token,category=class:token_seq",
                     category_sep=" ")
    prepare_dataset(ML100K / "ml-100k.inter", tmp_path / "b", "table",
                    item_file=ML100K / "ml-100k.item", table=spec, **ML_KW)
    assert _digest(tmp_path / "a") == BEFORE_PRESETS["movielens"]
    assert _digest(tmp_path / "b") == BEFORE_PRESETS["movielens"]


def test_cli_table_format_and_its_flags(tmp_path, capsys):
    body = RATINGS.split("\n", 1)[1]
    path = _write(tmp_path / "ratings.csv", RATINGS + body + body)  # 3 behaviours per user
    out = tmp_path / "ds"
    assert run_cli("prepare", "--format", "table", "--input", path, "--output", out,
                   "--columns", MAPPING + ",category=genres", "--category-rule",
                   "most-frequent", "--min-len", "3", "--val-users", "0", "--test-users",
                   "0") == 0
    assert Dataset.load(out).meta["num_items"] == 3
    # The README's MovieLens example: ratings joined with an item table's genres.
    movies = _write(tmp_path / "movies.csv", 'movieId,title,genres\n10,A,Drama|War\n'
                    '30,"B, the",Comedy|Drama\n60,C,War\n')
    assert run_cli("prepare", "--format", "table", "--input", path, "--output", tmp_path / "m",
                   "--columns", MAPPING, "--min-rating", "3.5", "--item-file", movies,
                   "--item-columns", "item=movieId,category=genres", "--category-rule",
                   "most-frequent", "--min-len", "3", "--val-users", "0", "--test-users",
                   "0") == 0
    meta = Dataset.load(tmp_path / "m").meta
    assert meta["rows_kept"] == 6 and meta["num_items"] == 2  # ratings >= 3.5: items 10 and 30
    assert run_cli("prepare", "--format", "table", "--input", path, "--output",
                   tmp_path / "x") == 2
    assert "needs --columns" in capsys.readouterr().err
    assert run_cli("prepare", "--format", "csv", "--input", path, "--output", tmp_path / "y",
                   "--columns", MAPPING) == 2
    assert "--columns: only for --format table" in capsys.readouterr().err


def test_blank_lines_are_skipped_but_keep_line_numbers_exact(tmp_path):
    path = _write(tmp_path / "b.csv", "u,i,t\n1,2,3\n\n4,5,6\n\n\n7, ,9\n")
    with pytest.raises(DataError, match=r"b\.csv line 7, column i \(item\): empty item id"):
        read_table(path, TableSpec("user=u,item=i,time=t"))
    _write(path, "u,i,t\n1,2,3\n\n4,5,6\n\n\n7,8,9\n")
    log = read_table(path, TableSpec("user=u,item=i,time=t"))
    assert log.rows == 3 and log.user.tolist() == [1, 4, 7]


# -------------------------------------------------------------------------- string ids
# SKUs and UUIDs as item ids, hex customer ids as user ids. The first rows hold ids that look
# like integers ("00001234", "000123", "123"), so with small blocks both columns are first read
# as integers and then again as strings.
def _string_log(seed: int = 0, n_users: int = 36, n_items: int = 40, per_user=(6, 12)):
    import uuid

    rng = np.random.default_rng(seed)
    users = ["00001234", "00012345"] + [f"{int(x):08x}" for x in
                                        rng.integers(1 << 28, 1 << 32, size=n_users - 2)]
    items = ["000123", "123"] + [
        f"SKU-{int(x):06d}" if k % 2 else str(uuid.UUID(bytes=rng.bytes(16)))
        for k, x in enumerate(rng.choice(10**6, size=n_items - 2, replace=False))]
    rows = [("00001234", "000123", 5), ("00012345", "123", 7)]
    for u in users:
        for _ in range(int(rng.integers(*per_user))):
            rows.append((u, items[int(rng.integers(len(items)))], int(rng.integers(0, 50))))
    tail = rows[2:]
    rng.shuffle(tail)
    return rows[:2] + tail


def _write_log(path: Path, rows, user_map=None, item_map=None) -> Path:
    """CSV ``customer,sku,ts``; ``*_map``: ids written as these integers instead (the same
    order). Some string ids get spaces around them (stripped by the reader)."""
    lines = ["customer,sku,ts"]
    for n, (u, i, t) in enumerate(rows):
        u = str(user_map[u]) if user_map else (f" {u}" if n % 5 == 3 else u)
        i = str(item_map[i]) if item_map else (f"{i}  " if n % 7 == 2 else i)
        lines.append(f"{u},{i},{t}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _order_map(keys, start, step):
    return {k: start + step * r for r, k in enumerate(sorted(set(keys)))}


def _reference(rows, min_len):
    """Pure Python: each kept user's items in time order (ties: file order), the sorted items
    and the sorted users."""
    from collections import defaultdict

    by_user = defaultdict(list)
    for n, (u, i, t) in enumerate(rows):
        by_user[u].append((t, n, i))
    seqs = {u: [i for _, _, i in sorted(v)] for u, v in by_user.items() if len(v) >= min_len}
    return seqs, sorted({i for s in seqs.values() for i in s}), sorted(seqs)


STR_KW = dict(min_len=5, max_len=6, val_users=5, test_users=4, seed=3)
STR_MAPPING = "user=customer,item=sku,time=ts"


@pytest.mark.parametrize("block_size", [16 << 20, 64])
def test_string_ids_match_a_pure_python_reference(tmp_path, block_size):
    rows = _string_log()
    path = _write_log(tmp_path / "log.csv", rows)
    prepare_dataset(path, tmp_path / "ds", "table",
                    table=TableSpec(STR_MAPPING, block_size=block_size), **STR_KW)
    ds = Dataset.load(tmp_path / "ds")
    seqs, items, users = _reference(rows, STR_KW["min_len"])
    assert ds.meta["item_id_type"] == ds.meta["user_id_type"] == "string"
    # Items: dense id = rank in ascending string order; "000123" and "123" are two items.
    assert ds.raw_item_key.tolist() == [""] + items and {"000123", "123"} <= set(items)
    np.testing.assert_array_equal(ds.raw_item_id, np.arange(len(items) + 1))
    key = ds.raw_item_key
    # Users: dense codes 0.. in ascending string order; "00001234" kept as written.
    all_keys = list(ds.train_user_key) + list(ds.val.user_key) + list(ds.test.user_key)
    assert sorted(all_keys) == users and "00001234" in all_keys
    assert list(ds.train_user_key) == sorted(ds.train_user_key)
    for keys, codes in ((ds.train_user_key, ds.train_users), (ds.val.user_key, ds.val.user),
                        (ds.test.user_key, ds.test.user)):
        assert codes.dtype == np.int64 and codes.tolist() == [users.index(k) for k in keys]
    for n, u in enumerate(ds.train_user_key):
        a, b = ds.train_splits[n], ds.train_splits[n + 1]
        assert key[ds.train_items[a:b]].tolist() == seqs[u]
    train_counts = {}
    for u in ds.train_user_key:
        for i in seqs[u]:
            train_counts[i] = train_counts.get(i, 0) + 1
    assert ds.item_freq.tolist() == [0] + [train_counts.get(i, 0) for i in items]
    L = STR_KW["max_len"]
    for held in (ds.val, ds.test):
        for n, u in enumerate(held.user_key):
            seq = seqs[u]
            t = (len(seq) + 1) // 2 - 1
            assert key[held.target[n]] == seq[t]
            assert held.hist_len[n] == min(t, L)
            assert key[held.hist[n][held.hist[n] > 0]].tolist() == seq[:t][-L:]
            assert key[held.later[held.later_splits[n]:held.later_splits[n + 1]]].tolist() == \
                seq[t + 1:]


@pytest.mark.parametrize("ids", ["string users, string items", "int users, string items",
                                 "string users, int items"])
def test_integer_ids_mapped_one_to_one_give_the_same_dense_dataset(tmp_path, ids):
    """The same log with either column written as integers of the same order: the same
    sequences, split and vocabulary, only the raw ids differ."""
    rows = _string_log(seed=1)
    user_map = _order_map([u for u, _, _ in rows], 10, 3)
    item_map = _order_map([i for _, i, _ in rows], 1000, 7)
    _write_log(tmp_path / "int.csv", rows, user_map, item_map)
    prepare_dataset(tmp_path / "int.csv", tmp_path / "int", "table", table=TableSpec(STR_MAPPING),
                    **STR_KW)
    string_users, string_items = ids.startswith("string"), ids.endswith("string items")
    _write_log(tmp_path / "s.csv", rows, None if string_users else user_map,
               None if string_items else item_map)
    prepare_dataset(tmp_path / "s.csv", tmp_path / "s", "table", table=TableSpec(STR_MAPPING),
                    **STR_KW)
    a, b = Dataset.load(tmp_path / "int"), Dataset.load(tmp_path / "s")
    assert "item_id_type" not in a.meta and "user_id_type" not in a.meta
    assert a.raw_item_key is None and a.train_user_key is None and a.val.user_key is None
    assert b.meta.get("item_id_type", "int") == ("string" if string_items else "int")
    assert b.meta.get("user_id_type", "int") == ("string" if string_users else "int")
    for name in ("train_items", "train_splits", "item_category", "item_freq",
                 "raw_category_id"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for split in ("val", "test"):
        for name in ("hist", "hist_len", "target", "later", "later_splits"):
            np.testing.assert_array_equal(getattr(getattr(a, split), name),
                                          getattr(getattr(b, split), name), err_msg=name)
    if string_items:
        assert [item_map[k] for k in b.raw_item_key[1:]] == a.raw_item_id[1:].tolist()
    else:
        np.testing.assert_array_equal(a.raw_item_id, b.raw_item_id)
    for want, held_b, keys in ((a.train_users, b.train_users, b.train_user_key),
                               (a.val.user, b.val.user, b.val.user_key),
                               (a.test.user, b.test.user, b.test.user_key)):
        if string_users:  # dense codes; the keys map back to the integer ids
            assert [user_map[k] for k in keys] == want.tolist()
            assert held_b.tolist() == [sorted(user_map).index(k) for k in keys]
        else:
            np.testing.assert_array_equal(held_b, want)


def test_string_item_ids_join_an_item_table(tmp_path):
    """The item table's ids are matched as the log's: as written (stripped), "000123" is not
    "123"; a log item missing from the table gets "(none)"; an integer log with a non-integer
    item table is an error naming the item file's line."""
    log = _write(tmp_path / "log.csv", "u,i,t\n" + "".join(
        f"u{u},{i},{t}\n" for u in range(3) for t, i in enumerate(
            ["000123", "SKU-A", "SKU-B", "123"])))
    items = _write(tmp_path / "items.csv", "item,genre\n 000123 ,Drama|War\nSKU-A,Comedy\n"
                   "SKU-Z,Horror\n123,Western\n")
    spec = TableSpec("user=u,item=i,time=t", item_columns="item=item,category=genre")
    prepare_dataset(log, tmp_path / "ds", "table", item_file=items, table=spec, min_len=3,
                    val_users=0, test_users=0)
    ds = Dataset.load(tmp_path / "ds")
    names = ds.meta["category_names"]
    got = {k: names[str(ds.raw_category_id[c])]
           for k, c in zip(ds.raw_item_key[1:], ds.item_category[1:])}
    assert got == {"000123": "Drama", "123": "Western", "SKU-A": "Comedy", "SKU-B": "(none)"}
    ints = _write(tmp_path / "ints.csv", "u,i,t\n1,10,1\n1,20,2\n1,30,3\n")
    bad = _write(tmp_path / "bad_items.csv", "item,genre\n10,Drama\nSKU-A,Comedy\n")
    with pytest.raises(DataError, match=r"bad_items\.csv line 3, column item \(item\): expected "
                                        r"an integer, got 'SKU-A'"):
        read_table(ints, TableSpec("user=u,item=i,time=t", item_columns="item=item,"
                                   "category=genre"), item_file=bad)


@pytest.mark.parametrize("value,line,message", [
    ("", 40, "empty item id"),
    ("   ", 40, "empty item id"),
    ("S" * 300, 40, "id 'SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS...' is 300 bytes long; string "
                    "ids are at most 256 UTF-8 bytes"),
    ("é" * 129, 3, "id '" + "é" * 40 + "...' is 258 bytes long"),  # the limit is in bytes
    ('"SKU\t7"', 40, "id 'SKU\\t7' holds the control character '\\t'"),
    ('"SKU\n7"', 40, "id 'SKU\\n7' holds the control character '\\n'"),
])
def test_bad_string_ids_name_file_line_column_and_id(tmp_path, value, line, message):
    rows = [f"c{n % 6:03x},SKU-{n % 11},{n}" for n in range(60)]
    rows[line - 2] = f"c{(line - 2) % 6:03x},{value},{line}"
    path = _write(tmp_path / "bad.csv", "customer,sku,ts\n" + "\n".join(rows) + "\n")
    for block_size in (16 << 20, 256):  # the bad id in the first block, or in a later one
        with pytest.raises(DataError) as e:
            read_table(path, TableSpec(STR_MAPPING, block_size=block_size))
        assert f"{path} line {line}, column sku (item): {message}" in str(e.value)
    out = tmp_path / "out"
    with pytest.raises(DataError):
        prepare_dataset(path, out, "table", table=TableSpec(STR_MAPPING), min_len=3)
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_string_id_limits_and_parquet_nulls(tmp_path, capsys):
    ok = "é" * 128  # 256 bytes: at the limit
    rows = "".join(f"u{n % 3},{ok if n == 4 else f'SKU-{n % 5}'},{n}\n" for n in range(30))
    path = _write(tmp_path / "ok.csv", "customer,sku,ts\n" + rows)
    assert ok in read_table(path, TableSpec(STR_MAPPING)).item_keys.to_pylist()
    table = pa.table({"u": ["a", "b", "c", "d"], "i": ["x", "y", None, "z"], "t": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "n.parquet", row_group_size=2)
    with pytest.raises(DataError, match=r"n\.parquet row group 1 row 1, column i \(item\): "
                                        r"empty item id"):
        read_table(tmp_path / "n.parquet", TableSpec("user=u,item=i,time=t"))
    # The CLI: exit status 2, the message on stderr, nothing written.
    bad = _write(tmp_path / "bad.csv", "customer,sku,ts\nc1,SKU-1,1\nc1,,2\n")
    assert run_cli("prepare", "--format", "table", "--input", bad, "--output", tmp_path / "o",
                   "--columns", STR_MAPPING, "--min-len", "3") == 2
    assert f"{bad} line 3, column sku (item): empty item id" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
