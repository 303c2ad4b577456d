"""Tests of the synthetic log generator and ``nann-tf synth``."""

from __future__ import annotations

import numpy as np
import pytest

from nann_tf.data import synth
from nann_tf.data.readers import read_userbehavior
from nann_tf.data.synth import BEHAVIOR_TYPES, FILE_COLUMNS, generate_log, write_userbehavior_csv

from conftest import run_cli


@pytest.fixture(scope="module")
def log():
    return generate_log(1500, 1200, 12, 40, seed=3)


def _by_user_time(cols):
    order = np.lexsort((cols["timestamp"], cols["user_id"]))
    return {k: v[order] for k, v in cols.items()}


def test_same_seed_same_log_other_seed_other_log(log):
    again = generate_log(1500, 1200, 12, 40, seed=3)
    assert set(again) == set(log)
    for k in log:
        np.testing.assert_array_equal(again[k], log[k], err_msg=k)
    other = generate_log(1500, 1200, 12, 40, seed=4)
    assert len(other["item_id"]) != len(log["item_id"]) or \
        not np.array_equal(other["item_id"], log["item_id"])


def test_columns_ids_and_order(log):
    n = len(log["user_id"])
    assert all(len(v) == n for v in log.values())
    for k in ("user_id", "item_id", "category_id", "timestamp"):
        assert log[k].dtype == np.int64
    # Raw ids are sparse large ints, not 1..N.
    assert len(np.unique(log["user_id"])) == 1500
    assert log["user_id"].max() > 10 * 1500 and log["item_id"].max() > 10 * 1200
    assert len(np.unique(log["category_id"])) <= 12
    # item -> category is a function.
    pairs = np.unique(np.stack([log["item_id"], log["category_id"]]), axis=1)
    assert pairs.shape[1] == len(np.unique(log["item_id"]))
    # Mostly page views.
    counts = np.bincount(log["behavior_type"], minlength=len(BEHAVIOR_TYPES))
    assert counts[0] / n > 0.8 and counts[1:].min() > 0
    # Rows are shuffled (prepare must sort) but time increases within each user.
    assert not np.all(np.diff(log["user_id"]) >= 0)
    s = _by_user_time(log)
    same = s["user_id"][1:] == s["user_id"][:-1]
    assert np.all(np.diff(s["timestamp"])[same] > 0)


def test_sequence_lengths_vary_some_short(log):
    _, lengths = np.unique(log["user_id"], return_counts=True)
    short = np.mean(lengths < 10)
    assert 0.01 < short < 0.15, short
    assert 30 < lengths.mean() < 50
    assert lengths.max() > 2 * lengths[lengths >= 10].min()


def test_planted_sequential_locality(log):
    s = _by_user_time(log)
    same_user = s["user_id"][1:] == s["user_id"][:-1]
    cl = s["latent_cluster"]
    both = same_user & (cl[1:] >= 0) & (cl[:-1] >= 0)
    stay = np.mean(cl[1:][both] == cl[:-1][both])
    assert stay > 0.8, stay
    # Visible in the file too: consecutive behaviours share the category far more than chance.
    cat = s["category_id"]
    consecutive = np.mean(cat[1:][same_user] == cat[:-1][same_user])
    shuffled = np.random.default_rng(0).permutation(cat)
    chance = np.mean(shuffled[1:] == shuffled[:-1])
    assert consecutive > 0.6 and consecutive > 4 * chance, (consecutive, chance)


def test_planted_popularity_skew(log):
    _, counts = np.unique(log["item_id"], return_counts=True)
    counts = np.sort(counts)[::-1]
    top10 = counts[: len(counts) // 10].sum() / counts.sum()
    assert top10 > 0.4, top10
    assert counts[0] > 20 * np.median(counts)


def test_planted_nonmonotonic_level_preference(log):
    real = log["latent_cluster"] >= 0
    level = log["latent_item_level"][real]
    pref = log["latent_pref_level"][real]
    assert np.isnan(log["latent_pref_level"][~real]).all()
    noise_frac = np.mean(~real)
    assert 0.02 < noise_frac < 0.1
    # Chosen items sit near the user's preferred level: |d| < 0.1 for a uniform level ~ 0.19.
    assert np.mean(np.abs(level - pref) < 0.1) > 0.6
    # A bump, not a monotonic trend: users preferring the middle pick middle items, with both
    # extremes rare, so preference neither rises nor falls with the level.
    mid = (pref > 0.4) & (pref < 0.6)
    assert np.mean((level[mid] > 0.25) & (level[mid] < 0.75)) > 0.9
    assert np.mean(level[mid] < 0.2) < 0.05 and np.mean(level[mid] > 0.8) < 0.05


def test_bad_counts_raise():
    with pytest.raises(ValueError, match="num_users"):
        generate_log(0, 10, 2, 5, 0)
    with pytest.raises(ValueError, match="num_items"):
        generate_log(5, -1, 2, 5, 0)


def test_write_read_round_trip(tmp_path, log):
    path = tmp_path / "log.csv"
    n = write_userbehavior_csv(log, path)
    assert n == len(log["user_id"])
    first = path.read_text().splitlines()[0].split(",")
    assert len(first) == 5 and first[3] in BEHAVIOR_TYPES
    back = read_userbehavior(path)
    assert back.rows == n
    np.testing.assert_array_equal(back.user, log["user_id"])
    np.testing.assert_array_equal(back.item, log["item_id"])
    np.testing.assert_array_equal(back.category, log["category_id"])
    np.testing.assert_array_equal(back.timestamp, log["timestamp"])
    # Behaviour types: compare the text column.
    types = [line.split(",")[3] for line in path.read_text().splitlines()[:200]]
    assert types == [BEHAVIOR_TYPES[b] for b in log["behavior_type"][:200]]


def test_writer_chunks_match_one_block(tmp_path, log):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    write_userbehavior_csv(log, a)
    write_userbehavior_csv(log, b, chunk_rows=777)
    assert a.read_bytes() == b.read_bytes()


def test_writer_formats_edge_values(tmp_path):
    cols = {"user_id": np.array([0, 9, 10, 123456789012345]),
            "item_id": np.array([1, 100, 99, 5]),
            "category_id": np.array([7, 7, 7, 7]),
            "behavior_type": np.array([0, 1, 2, 3], dtype=np.uint8),
            "timestamp": np.array([0, 1511539200, 5, 10**17])}
    path = tmp_path / "e.csv"
    write_userbehavior_csv(cols, path)
    assert path.read_text() == ("0,1,7,pv,0\n9,100,7,buy,1511539200\n10,99,7,cart,5\n"
                                "123456789012345,5,7,fav,100000000000000000\n")


def test_writer_is_atomic(tmp_path, log, monkeypatch):
    path = tmp_path / "log.csv"
    path.write_text("old content\n")
    calls = {"n": 0}
    real = synth._format_rows

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(synth, "_format_rows", failing)
    with pytest.raises(OSError, match="disk full"):
        write_userbehavior_csv(log, path, chunk_rows=1000)
    assert path.read_text() == "old content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_writer_rejects_bad_columns(tmp_path, log):
    cols = {k: log[k] for k in FILE_COLUMNS if k != "timestamp"}
    with pytest.raises(ValueError, match="timestamp"):
        write_userbehavior_csv(cols, tmp_path / "x.csv")
    cols = dict(log, user_id=-log["user_id"])
    with pytest.raises(ValueError, match="negative"):
        write_userbehavior_csv(cols, tmp_path / "x.csv")
    assert not list(tmp_path.iterdir())


def test_cli_writes_deterministic_file(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    args = ["synth", "--users", "60", "--items", "80", "--categories", "5",
            "--events-per-user", "15", "--seed", "7"]
    assert run_cli(*args + ["--output", str(a)]) == 0
    assert run_cli(*args + ["--output", str(b)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert "wrote" in capsys.readouterr().out
    users = {line.split(",")[0] for line in a.read_text().splitlines()}
    assert len(users) == 60


def test_cli_block_rows_streams_the_chunked_generator(tmp_path, capsys):
    """--block-rows N writes write_synthetic_log's log (blocks of ~N rows, bounded memory), the
    same for the same arguments, and not the in-memory generator's rows."""
    args = ["synth", "--users", "60", "--items", "80", "--categories", "5",
            "--events-per-user", "15", "--seed", "7"]
    a, b, mem = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "mem.csv"
    assert run_cli(*args + ["--block-rows", "200", "--output", str(a)]) == 0
    assert "blocks of ~200 rows" in capsys.readouterr().out
    rows = synth.write_synthetic_log(b, 60, 80, 5, 15, seed=7, chunk_rows=200, progress=False)
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_text().splitlines()) == rows > 3 * 200  # several blocks
    assert run_cli(*args + ["--block-rows", "0", "--output", str(mem)]) == 0
    assert mem.read_bytes() != a.read_bytes()
    assert {ln.split(",")[0] for ln in a.read_text().splitlines()} == \
        {ln.split(",")[0] for ln in mem.read_text().splitlines()}  # same users, other rows
    assert run_cli(*args + ["--block-rows", "-1", "--output", str(tmp_path / "c.csv")]) == 2
    assert "--block-rows must be >= 0, got -1" in capsys.readouterr().err


def test_cli_takes_counts_from_config(tmp_path):
    path = tmp_path / "ci.csv"
    assert run_cli(*["synth", "--config", "ci-synth", "--output", str(path)]) == 0
    users = np.unique(read_userbehavior(path).user)
    assert len(users) == 3000


@pytest.mark.parametrize("extra,message", [
    (["--users", "0"], "--users must be >= 1"),
    (["--items", "-3"], "--items must be >= 1"),
    (["--config", "no-such-config"], "no-such-config"),
])
def test_cli_bad_arguments(tmp_path, capsys, extra, message):
    out = tmp_path / "x.csv"
    assert run_cli(*["synth", "--users", "5", "--items", "5", "--output", str(out)] + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_existing_file_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "x.csv"
    out.write_text("keep me\n")
    args = ["synth", "--users", "5", "--items", "5", "--output", str(out)]
    assert run_cli(*args) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert run_cli(*args + ["--overwrite"]) == 0
    assert out.read_text() != "keep me\n"


def test_cli_missing_directory(tmp_path, capsys):
    out = tmp_path / "nope" / "x.csv"
    assert run_cli(*["synth", "--users", "5", "--items", "5", "--output", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [[], ["--block-rows", "20"]])
def test_cli_write_failure_leaves_nothing(tmp_path, capsys, monkeypatch, extra):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(synth, "_format_rows", fail)
    out = tmp_path / "x.csv"
    assert run_cli(*["synth", "--users", "5", "--items", "5", "--output", str(out)] + extra) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
