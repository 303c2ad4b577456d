"""``nann-tf evaluate --sweep``: the Fig. 3/4/6/7a PNGs and CSVs, and the sweep helpers."""

from __future__ import annotations

import csv
import json
import math

import pytest

from nann_tf.evaluation.sweep import (
    CURVE_FIELDS,
    beam_settings,
    diff_fields,
    hnsw_settings,
    metric_fields,
    read_csv,
    write_csv,
)
from nann_tf.search.params import SearchParams, parse_level_values

from conftest import CI_CONFIG, run_cli

USERS = 96
MONOTONE_TOLERANCE = 0.02  # coverage may dip this much when ef grows (different beams)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def no_fgsm(tmp_path_factory, ci_dataset):
    """A briefly trained model without FGSM and its index (for Figs. 4 and 7a)."""
    d = tmp_path_factory.mktemp("no-fgsm")
    assert run_cli("train", "--config", CI_CONFIG, "--data", ci_dataset, "--output",
                   d / "model", "--set", "train.fgsm_eps=0", "--set", "train.epochs=1",
                   "--set", "train.steps_per_epoch=60") == 0
    assert run_cli("build-index", "--model", d / "model", "--data", ci_dataset,
                   "--output", d / "index") == 0
    return d / "model", d / "index"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, attention_model_dir, ci_dataset, ci_index_dir, no_fgsm):
    out = tmp_path_factory.mktemp("sweep")
    nm, ni = no_fgsm
    rc = run_cli("evaluate", "--model", attention_model_dir, "--data", ci_dataset,
                 "--index", ci_index_dir, "--users", USERS, "--ef", "1=50,0=100", "--T", "0=2",
                 "--sweep", out / "figs", "--sweep-scales", "0.5,1,2", "--sweep-T0", "1,2,3",
                 "--sweep-hnsw-ef", "25,50,100,200", "--compare-model", nm,
                 "--compare-index", ni, "--eps-models",
                 f"0:{nm}:{ni},0.0003:{attention_model_dir}:{ci_index_dir}",
                 "--output-json", out / "eval.json")
    assert rc == 0
    return out / "figs", json.loads((out / "eval.json").read_text())


def test_sweep_writes_every_figure_and_csv(sweep):
    figs, res = sweep
    for name in ("fig3_beam_vs_hnsw.png", "fig4_fgsm.png", "fig6_perturbation.png",
                 "fig7a_eps.png"):
        data = (figs / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    assert sorted(p.name for p in figs.iterdir() if p.name.startswith(".")) == [], \
        "no temporary files left behind"
    assert sorted(res["sweep"]["files"]) == sorted(str(p) for p in figs.iterdir())


def test_sweep_csv_is_consistent(sweep):
    figs, res = sweep
    rows = read_csv(figs / "sweep.csv")
    assert list(rows[0]) == CURVE_FIELDS + metric_fields([50]) + diff_fields([50])
    fig3 = [r for r in rows if r["figure"] == "fig3"]
    beam = [r for r in fig3 if r["series"] == "beam"]  # seeded with the history (the default)
    plain = [r for r in fig3 if r["series"] == "beam, no seeds"]
    hnsw = [r for r in fig3 if r["method"] == "hnsw"]
    assert len(beam) == 9 and len(plain) == 9 and len(hnsw) == 4
    assert {r["method"] for r in beam + plain} == {"beam"}
    assert all(r["users"] == USERS for r in rows)
    for series in (beam, plain):
        # Coverage grows with ef for a fixed T_0 (within a tolerance), and so does the cost.
        for t in ("0=1", "0=2", "0=3"):
            pts = sorted((r for r in series if r["T"] == t),
                         key=lambda r: parse_level_values(r["ef"], "ef")[0])
            for a, b in zip(pts, pts[1:]):
                assert b["coverage@50"] >= a["coverage@50"] - MONOTONE_TOLERANCE, (a, b)
                assert b["items_scored"] >= a["items_scored"]
        # ... with T_0 for a fixed ef (more rounds only add items) ...
        for ef in {r["ef"] for r in series}:
            pts = sorted((r for r in series if r["ef"] == ef), key=lambda r: r["T"])
            for a, b in zip(pts, pts[1:]):
                assert b["coverage@50"] >= a["coverage@50"] - MONOTONE_TOLERANCE, (a, b)
    # ... and with HNSW's ef0.
    hnsw.sort(key=lambda r: r["hnsw_ef"])
    for a, b in zip(hnsw, hnsw[1:]):
        assert b["coverage@50"] >= a["coverage@50"] - MONOTONE_TOLERANCE, (a, b)
        assert b["items_scored"] > a["items_scored"]
    # The sweep point at the evaluated parameters equals the table's beam row.
    centre = next(r for r in beam if r["ef"] == "1=50,0=100" and r["T"] == "0=2")
    plain_centre = next(r for r in plain if r["ef"] == "1=50,0=100" and r["T"] == "0=2")
    for key in ("coverage@50", "recall_retrieval@50", "scored_fraction"):
        assert centre[key] == pytest.approx(res["rows"]["beam"][key], abs=1e-12)
        assert plain_centre[key] == pytest.approx(res["rows"]["beam_no_seeds"][key], abs=1e-12)
    # Fig. 4: one curve per model, the same points; Fig. 7a: one point per eps.
    fig4 = [r for r in rows if r["figure"] == "fig4"]
    assert len({r["series"] for r in fig4}) == 2 and len(fig4) == 18
    fig7 = sorted((r for r in rows if r["figure"] == "fig7a"), key=lambda r: r["fgsm_eps"])
    assert [r["fgsm_eps"] for r in fig7] == [0.0, 0.0003]
    assert fig7[1]["coverage@50"] == pytest.approx(centre["coverage@50"], abs=1e-12)
    for r in rows:
        for key in metric_fields([50]):
            assert math.isnan(r[key]) or 0.0 <= r[key] <= 1.0 or key.startswith("recall_delta")
            if "_ci95" not in key and not math.isnan(r[key]):
                assert r[key + "_ci95_lo"] <= r[key] <= r[key + "_ci95_hi"], (key, r)


def test_comparisons_carry_paired_differences(sweep):
    """Fig. 4's second model and Fig. 7a's eps series are compared user by user: each row's
    diff_<metric> is its metric minus that of the model named in `vs` (mean differences equal
    differences of means), with the paired interval around it."""
    figs, res = sweep
    rows = read_csv(figs / "sweep.csv")
    fig4 = [r for r in rows if r["figure"] == "fig4"]
    first = [r for r in fig4 if r["vs"] == ""]
    second = [r for r in fig4 if r["vs"] != ""]
    assert len(first) == len(second) == 9
    for a, b in zip(first, second):
        assert (a["ef"], a["T"]) == (b["ef"], b["T"]) and b["vs"] == a["series"]
        assert b["diff_coverage@50"] == pytest.approx(b["coverage@50"] - a["coverage@50"],
                                                      abs=1e-9)
        assert b["diff_coverage@50_ci95_lo"] <= b["diff_coverage@50"] <= \
            b["diff_coverage@50_ci95_hi"]
    fig7 = sorted((r for r in rows if r["figure"] == "fig7a"), key=lambda r: r["fgsm_eps"])
    assert fig7[0]["vs"] == "" and fig7[1]["vs"] == "eps=0", "paired against FGSM off"
    for key in ("coverage@50", "recall_all@50"):
        assert fig7[1][f"diff_{key}"] == pytest.approx(fig7[1][key] - fig7[0][key], abs=1e-9)
    (eps_diff,) = res["sweep"]["eps_differences"]
    assert eps_diff["series"] == "eps=0.0003" and eps_diff["vs"] == "eps=0"
    assert eps_diff["coverage@50"] == pytest.approx(fig7[1]["diff_coverage@50"], abs=1e-12)
    # --compare-model on its own: the second model's table and the paired difference.
    comp = res["compare"]
    assert comp["fgsm_eps"] == 0.0
    for method in ("brute_force", "beam", "beam_no_seeds", "hnsw"):
        d = comp["difference"][method]
        for key in ("recall_retrieval@50", "coverage@50"):
            assert d[key] == pytest.approx(res["rows"][method][key]
                                           - comp["rows"][method][key], abs=1e-12)
            lo, hi = d[key + "_ci95"]
            assert lo <= d[key] <= hi
    assert comp["difference"]["brute_force"]["coverage@50_ci95"] == [0.0, 0.0]


def test_perturbation_csv_counts_every_top_item(sweep):
    figs, res = sweep
    rows = read_csv(figs / "perturbation.csv")
    series = {r["series"] for r in rows}
    assert len(series) == 2
    for s in series:
        bins = [r for r in rows if r["series"] == s]
        assert sum(r["count"] for r in bins) == USERS * 50
        assert all(r["bin_hi"] > r["bin_lo"] >= 0 for r in bins)
        assert bins[0]["radius"] == pytest.approx(res["sweep"]["perturb_r"])


def test_csv_save_load_same_rows(tmp_path):
    fields = ["figure", "series", "ef", "value", "count"]
    rows = [{"figure": "fig3", "series": "beam", "ef": "1=25,0=50", "value": 0.1 + 0.2,
             "count": 3},
            {"figure": "fig3", "series": "hnsw", "ef": "", "value": float("nan"), "count": 0}]
    path = write_csv(tmp_path / "x.csv", rows, fields)
    back = read_csv(path)
    assert back[0] == rows[0]
    assert back[1]["ef"] == "" and math.isnan(back[1]["value"])
    with open(path) as f:
        assert next(csv.reader(f)) == fields
    with pytest.raises(ValueError):
        write_csv(tmp_path / "y.csv", [{"unknown": 1}], fields)
    assert not (tmp_path / "y.csv").exists() and len(list(tmp_path.iterdir())) == 1


def test_settings_and_level_values():
    p = SearchParams(2, {2: 100, 1: 200, 0: 400}, {1: 1, 0: 3}, 200, 400).checked(3)
    pts = beam_settings(p, (0.5, 1.0, 2.0), (1, 3))
    assert len(pts) == 6
    assert ({2: 100, 1: 200, 0: 400}, {1: 1, 0: 3}) in pts
    assert all(ef[0] >= 200 for ef, _ in pts), "ef_0 never below k"
    assert hnsw_settings(p) == [100, 200, 300, 400, 600]
    assert parse_level_values("2=100, 1=200,0=400", "--ef") == {2: 100, 1: 200, 0: 400}
    for bad in ("2=100,2=3", "x=1", "1=", "-1=3", "2=100,,0=3"):
        with pytest.raises(ValueError, match="--ef"):
            parse_level_values(bad, "--ef")
    with pytest.raises(ValueError, match="ef has no value for level 1"):
        SearchParams(2, {2: 1, 0: 1}, {1: 1, 0: 1}, 10, 10).checked()
    with pytest.raises(ValueError, match="above the index's top level"):
        p.checked(1)
