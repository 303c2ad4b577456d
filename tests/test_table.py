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
     "--columns item=movie_id: no column 'movie_id' in the header of {path} (columns: "
     "movieId, title, year, genres, userId, rating, timestamp)"),
    (RATINGS, "user=userId,item=movieId,user=rating", "role user is mapped twice"),
    (RATINGS, "user=userId,time=timestamp", "no item column"),
    (RATINGS, "user=userId,item=title", "{path} line 2, column title (item): expected an "
                                        "integer, got 'Alpha'"),
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
    table = pa.table({"u": ["1", "2", "3", "x4"], "i": [1, 2, 3, 4], "t": [1, 2, 3, 4]})
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=2)
    with pytest.raises(DataError, match=r"b.parquet row group 1 row 2, column u \(user\): "
                                        r"expected an integer, got 'x4'"):
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
    path = _write(tmp_path / "b.csv", "u,i,t\n1,2,3\n\n4,5,6\n\n\n7,x,9\n")
    with pytest.raises(DataError, match=r"b\.csv line 7, column i \(item\): expected an "
                                        r"integer, got 'x'"):
        read_table(path, TableSpec("user=u,item=i,time=t"))
    _write(path, "u,i,t\n1,2,3\n\n4,5,6\n\n\n7,8,9\n")
    log = read_table(path, TableSpec("user=u,item=i,time=t"))
    assert log.rows == 3 and log.user.tolist() == [1, 4, 7]
