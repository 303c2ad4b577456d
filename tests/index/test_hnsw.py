"""HNSW extraction from hnswlib, validation, npz save/load (nann_tf/index/hnsw.py)."""

from __future__ import annotations

import json
import struct

import hnswlib
import numpy as np
import pytest

from nann_tf.index.hnsw import (
    ARRAYS_FILE,
    META_FILE,
    HnswGraph,
    HnswIndexError,
    build_hnsw,
    graph_from_hnswlib,
    load,
)

N, DIM, M = 1500, 6, 6


@pytest.fixture(scope="module")
def data():
    """Integer coordinates: float32 squared distances are exact, so a NumPy replay of hnswlib's
    search compares exactly. Labels are a permutation of 1..N, so internal id != label."""
    rng = np.random.default_rng(7)
    emb = rng.integers(0, 1000, size=(N, DIM)).astype(np.float32)
    labels = rng.permutation(N) + 1
    index = hnswlib.Index(space="l2", dim=DIM)
    index.init_index(max_elements=N, M=M, ef_construction=40, random_seed=3)
    index.add_items(emb, labels, num_threads=1)
    table = np.zeros((N + 1, DIM), np.float32)  # by dense id
    table[labels] = emb
    return emb, labels, table, index


@pytest.fixture(scope="module")
def graph(data):
    return graph_from_hnswlib(data[3])


def _parse_saved_index(path, n_items):
    """hnswlib's own save_index file, read record by record (independent of the pickled state):
    header, data_level0, then per element a uint32 size and its upper-level link blocks."""
    raw = open(path, "rb").read()
    (off0, _max_el, count, rec, label_off, _off_data, max_level, ep, max_m, max_m0, _m, _mult,
     _efc) = struct.unpack_from("<6QiI3QdQ", raw, 0)
    pos = struct.calcsize("<6QiI3QdQ")
    assert count == n_items
    level0, labels, upper = {}, {}, {}
    for i in range(count):
        base = pos + i * rec
        cnt = struct.unpack_from("<H", raw, base + off0)[0]
        level0[i] = list(struct.unpack_from(f"<{cnt}I", raw, base + off0 + 4))
        labels[i] = struct.unpack_from("<Q", raw, base + label_off)[0]
    pos += count * rec
    block = 4 + 4 * max_m
    for i in range(count):
        size = struct.unpack_from("<I", raw, pos)[0]
        pos += 4
        for lvl in range(1, size // block + 1):
            b = pos + (lvl - 1) * block
            cnt = struct.unpack_from("<H", raw, b)[0]
            upper[(i, lvl)] = list(struct.unpack_from(f"<{cnt}I", raw, b + 4))
        pos += size
    return labels, level0, upper, max_level, ep, max_m0


def test_every_link_list_equals_hnswlib_saved_file(data, graph, tmp_path):
    index = data[3]
    index.save_index(str(tmp_path / "index.bin"))
    labels, level0, upper, max_level, ep, _ = _parse_saved_index(tmp_path / "index.bin", N)
    assert graph.max_level == max_level
    assert graph.entry_point == labels[ep]
    # internal -> label differs from the identity (labels permuted vs insertion order)
    assert any(labels[i] != i + 1 for i in range(N))
    for i in range(N):
        assert graph.neighbors(labels[i], 0).tolist() == [labels[j] for j in level0[i]]
    seen_upper = 0
    for (i, lvl), links in upper.items():
        assert graph.neighbors(labels[i], lvl).tolist() == [labels[j] for j in links]
        seen_upper += 1
    assert seen_upper == int(np.clip(graph.node_level[1:], 0, None).sum()) > 0
    for lvl in range(graph.max_level + 1):
        on_level = {labels[i] for i in range(N) if lvl == 0 or (i, lvl) in upper}
        assert graph.start_nodes(lvl).tolist() == sorted(on_level)


def _greedy(graph, table, q):
    """hnswlib's search with ef = 1, k = 1: from the entry point move to the first neighbour of
    minimum distance while it is strictly closer, on every level down to 0."""
    cur = graph.entry_point
    cur_d = float(((table[cur] - q) ** 2).sum())
    for lvl in range(graph.max_level, -1, -1):
        while True:
            nb = graph.neighbors(cur, lvl)
            if nb.size == 0:
                break
            d = ((table[nb] - q) ** 2).sum(axis=1)
            j = int(np.argmin(d))
            if d[j] < cur_d:
                cur, cur_d = int(nb[j]), float(d[j])
            else:
                break
    return cur


def test_greedy_replay_matches_hnswlib_knn_query(data, graph):
    _, _, table, index = data
    rng = np.random.default_rng(1)
    queries = rng.integers(0, 1000, size=(200, DIM)).astype(np.float32)
    index.set_ef(1)
    expected, _ = index.knn_query(queries, k=1, num_threads=1)
    got = [_greedy(graph, table, q) for q in queries]
    assert got == expected[:, 0].astype(int).tolist()


def test_build_hnsw_uses_its_parameters_and_is_deterministic_single_threaded(data, graph):
    emb, labels, table, _ = data
    g1 = build_hnsw(emb, labels=labels, M=M, ef_construction=40, num_threads=1, seed=3)
    g2 = build_hnsw(table, M=M, ef_construction=40, num_threads=1, seed=3)  # [N+1, d] form
    assert (g1.M, g1.ef_construction, g1.seed, g1.num_items) == (M, 40, 3, N)
    assert g1.entry_point == graph.entry_point and g1.max_level == graph.max_level
    for (v, s), (v2, s2) in zip(g1.levels, graph.levels):
        np.testing.assert_array_equal(v, v2)
        np.testing.assert_array_equal(s, s2)
    # Inserted in dense-id order instead: a different but valid graph over the same items.
    g2.validate()
    assert g2.num_items == N


def test_multithreaded_build_structure(data):
    """Level sizes decay like M**-l, and the level-0 links hold each node's nearest neighbour."""
    _, _, table, _ = data
    g = build_hnsw(table, M=M, ef_construction=40, num_threads=2, seed=5)
    g.validate()
    assert g.node_level.dtype == np.int32 and g.node_level[0] == -1
    sizes = [len(g.start_nodes(lvl)) for lvl in range(g.max_level + 1)]
    assert sizes[0] == N and 0.5 * N / M < sizes[1] < 2 * N / M
    v0, s0 = g.levels[0]
    assert s0.shape == (N + 2,) and s0.dtype == np.int64 and v0.dtype == np.int32
    assert (np.diff(s0)[1:] <= 2 * M).all() and np.diff(s0)[0] == 0
    d = ((table[1:, None, :] - table[None, 1:, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1) + 1
    has_nn = np.mean([nearest[i - 1] in g.neighbors(i, 0) for i in range(1, N + 1)])
    assert has_nn > 0.95


def test_build_rejects_bad_input():
    with pytest.raises(ValueError, match="permutation"):
        build_hnsw(np.zeros((3, 2), np.float32), labels=np.array([1, 2, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        build_hnsw(np.array([[0, 0], [1, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        build_hnsw(np.zeros(5, np.float32))


def test_tiny_graphs():
    one = build_hnsw(np.array([[0.0, 0.0], [1.0, 2.0]], np.float32), M=4)
    assert one.num_items == 1 and one.entry_point == 1 and one.neighbors(1, 0).size == 0
    assert one.resolve_start_level(2) == one.max_level
    two = build_hnsw(np.array([[0, 0], [1, 2], [3, 1]], np.float32), M=4)
    assert two.neighbors(1, 0).tolist() == [2] and two.neighbors(2, 0).tolist() == [1]


def test_save_load_roundtrip(graph, tmp_path):
    out = graph.save(tmp_path / "g")
    back = load(out)
    assert back.num_items == graph.num_items and back.max_level == graph.max_level
    assert back.entry_point == graph.entry_point and back.M == graph.M
    np.testing.assert_array_equal(back.node_level, graph.node_level)
    for (v, s), (v2, s2) in zip(back.levels, graph.levels):
        np.testing.assert_array_equal(v, v2)
        np.testing.assert_array_equal(s, s2)
    # Saving again replaces the saved graph as a whole.
    small = build_hnsw(np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32), M=4)
    small.save(out)
    assert HnswGraph.load(out).num_items == 29
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_save_refuses_foreign_directory_and_bad_graph(graph, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        graph.save(foreign)
    assert (foreign / "keep.txt").read_text() == "user data"
    v, s = graph.levels[0]
    bad = HnswGraph(levels=[(np.where(v == v[0], N + 5, v).astype(np.int32), s)]
                    + graph.levels[1:], entry_point=graph.entry_point,
                    max_level=graph.max_level, node_level=graph.node_level, num_items=N)
    with pytest.raises(HnswIndexError, match=f"neighbour id {N + 5}"):
        bad.save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _rewrite(path, **changes):
    with np.load(path / ARRAYS_FILE) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path / ARRAYS_FILE, **arrays)


def _fix_checksum(path):
    from nann_tf.index.hnsw import file_sha256
    meta = json.loads((path / META_FILE).read_text())
    meta["arrays_sha256"] = file_sha256(path / ARRAYS_FILE)
    (path / META_FILE).write_text(json.dumps(meta))


@pytest.mark.parametrize("case,pattern", [
    ("garbage", "checksum mismatch"),
    ("garbage_rehashed", "not a readable npz"),
    ("truncated_zip", "not a readable npz"),
    ("neighbour_out_of_range", "neighbour id"),
    ("truncated_splits", "row_splits must be int"),
    ("splits_decreasing", "must start at 0, not decrease"),
    ("absent_node_linked", "not on level"),
    ("level0_gap", "level 0 must cover every item"),
    ("missing_array", "arrays"),
    ("altered_without_rehash", "checksum mismatch"),
    ("bad_meta", "not valid JSON"),
])
def test_corrupt_index_is_refused(graph, tmp_path, case, pattern):
    d = graph.save(tmp_path / "g")
    arrays = d / ARRAYS_FILE
    v0, s0 = graph.levels[0]
    top = graph.max_level
    if case.startswith("garbage"):
        arrays.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "truncated_zip":
        arrays.write_bytes(arrays.read_bytes()[: arrays.stat().st_size // 2])
    elif case == "neighbour_out_of_range":
        _rewrite(d, level0_values=np.concatenate([[N + 1], v0[1:]]).astype(np.int32))
    elif case == "truncated_splits":
        _rewrite(d, level0_row_splits=s0[:-3])
    elif case == "splits_decreasing":
        s = s0.copy()
        s[5], s[6] = s[6], s[5]
        _rewrite(d, level0_row_splits=s)
    elif case == "absent_node_linked":
        vt, st = graph.levels[1]
        low = int(np.flatnonzero(graph.node_level == 0)[0])
        _rewrite(d, level1_values=np.where(vt == vt[0], low, vt).astype(np.int32))
    elif case == "level0_gap":
        s = s0.copy()
        s[2] = s[1]  # item 1's row becomes empty (item 2 takes its links)
        _rewrite(d, level0_row_splits=s)
    elif case == "missing_array":
        with np.load(arrays) as z:
            kept = {k: z[k] for k in z.files if k != f"level{top}_values"}
        np.savez(arrays, **kept)
    elif case == "altered_without_rehash":
        _rewrite(d, level0_values=v0[::-1].copy())
    elif case == "bad_meta":
        (d / META_FILE).write_text("{not json")
    if case not in ("garbage", "altered_without_rehash", "bad_meta"):
        _fix_checksum(d)
    with pytest.raises(HnswIndexError, match=pattern):
        load(d)
