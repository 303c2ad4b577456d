"""Paper 5.1.2 metrics (nann_tf/evaluation/metrics.py) on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from nann_tf.evaluation.metrics import (
    Bootstrap,
    coverage,
    paired_difference,
    per_user_metrics,
    format_summary,
    recall,
    recall_delta,
    scored_fraction,
    summarize,
)

RETRIEVED = np.array([[5, 2, 9], [1, 0, 0], [7, 8, 4]])
BRUTE = np.array([[2, 5, 3], [1, 4, 6], [8, 7, 4]])
TRUTH = np.array([3, 1, 9])


def test_recall_with_one_item_per_user():
    # brute force finds 3 (user 0) and 1 (user 1), not 9 (user 2)
    assert recall(BRUTE, TRUTH, 3) == pytest.approx(2 / 3)
    # retrieval finds only 1 (user 1)
    assert recall(RETRIEVED, TRUTH, 3) == pytest.approx(1 / 3)
    # at M = 2 brute force loses 3 (third in user 0's list)
    assert recall(BRUTE, TRUTH, 2) == pytest.approx(1 / 3)


def test_recall_with_sets_and_users_without_truth():
    truth = [{3, 2}, [1, 99], set()]
    # user 0: {2, 3} both in brute top-3 -> 1; user 1: 1 of {1, 99} -> 1/2; user 2 left out
    assert recall(BRUTE, truth, 3) == pytest.approx(0.75)
    assert recall(RETRIEVED, truth, 3) == pytest.approx(0.5)  # 1/2 and 1/2
    assert recall(BRUTE, np.array([3, 0, 9]), 3) == pytest.approx(0.5)  # 0 = no truth
    assert np.isnan(recall(BRUTE, np.zeros(3, np.int64), 3))


def test_recall_delta():
    assert recall_delta(2 / 3, 1 / 3) == pytest.approx(0.5)
    assert recall_delta(0.4, 0.4) == 0.0
    assert np.isnan(recall_delta(0.0, 0.0))


def test_coverage():
    # user 0: {5,2,9} & {2,5,3} = 2 of 3; user 1: {1} & {1,4,6} = 1 of 3; user 2: 3 of 3
    assert coverage(RETRIEVED, BRUTE, 3) == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    # top-2: 2 of 2, 1 of 2, 2 of 2
    assert coverage(RETRIEVED, BRUTE, 2) == pytest.approx((1 + 0.5 + 1) / 3)
    # a corpus smaller than M: |B| counts real items only; padding never matches padding
    assert coverage(np.array([[2, 0, 0]]), np.array([[1, 2, 0]]), 3) == pytest.approx(0.5)
    assert coverage(np.array([[0, 0]]), np.array([[0, 0]]), 2) == 1.0


def test_scored_fraction_and_summary():
    assert scored_fraction([10, 20, 30], 100) == pytest.approx(0.2)
    out = summarize(RETRIEVED, BRUTE, TRUTH, num_scored=[10, 20, 30], num_items=100, m=[2, 3])
    assert out["users"] == 3
    assert out["recall_all@3"] == pytest.approx(2 / 3)
    assert out["recall_retrieval@3"] == pytest.approx(1 / 3)
    assert out["recall_delta@3"] == pytest.approx(0.5)
    assert out["coverage@3"] == pytest.approx(2 / 3)
    assert out["recall_delta@2"] == pytest.approx(0.0)
    assert out["coverage@2"] == pytest.approx(2.5 / 3)
    assert out["scored_fraction"] == pytest.approx(0.2)
    assert set(summarize(RETRIEVED, BRUTE, m=3)) == {"users", "coverage@3"}
    table = format_summary({"beam": out, "brute": summarize(BRUTE, BRUTE, TRUTH, m=3)})
    lines = table.splitlines()
    assert len(lines) == 3 and lines[0].split()[:3] == ["method", "users", "recall_all@2"]
    assert lines[1].split()[1:4] == ["3", "0.3333", "0.3333"]
    assert lines[2].split()[1] == "3" and lines[2].split()[2] == "-"


def test_bad_input():
    with pytest.raises(ValueError, match="M = 5"):
        coverage(RETRIEVED, BRUTE, 5)
    with pytest.raises(ValueError, match="users"):
        recall(RETRIEVED, np.array([1, 2]), 3)
    with pytest.raises(ValueError, match="int array"):
        coverage(RETRIEVED.astype(float), BRUTE, 3)
    with pytest.raises(ValueError, match="num_items"):
        summarize(RETRIEVED, BRUTE, num_scored=[1, 2, 3], m=3)


# ------------------------------------------------------------------ bootstrap intervals
# The intervals are percentile bootstraps over users. On synthetic draws with a known mean they
# should cover it at about the nominal 95%. Measured with these seeds, 400 trials of 120 users:
# 0.945 (Bernoulli) and 0.918 (Beta; 0.936 over 1500 trials: the percentile bootstrap
# undercovers a little on skewed data); paired: 0.93 over 300 trials. The band allows about
# three binomial standard deviations (sd ~0.011 at 400 trials) around that.
NOMINAL_LO, NOMINAL_HI = 0.90, 0.985


def _coverage_rate(draw, truth, trials=400, users=120):
    rng = np.random.default_rng(7)
    hits = 0
    for t in range(trials):
        b = Bootstrap(users, 1000, seed=t)
        lo, hi = b.interval(b.means(draw(rng, users)))
        hits += lo <= truth <= hi
    return hits / trials


@pytest.mark.parametrize("name,draw,truth", [
    ("bernoulli 0.3 (a recall)", lambda rng, n: (rng.random(n) < 0.3).astype(float), 0.3),
    ("beta(8, 2) (a coverage)", lambda rng, n: rng.beta(8, 2, n), 0.8),
])
def test_bootstrap_interval_covers_a_known_mean_at_about_the_nominal_rate(name, draw, truth):
    rate = _coverage_rate(draw, truth)
    assert NOMINAL_LO <= rate <= NOMINAL_HI, (name, rate)


def test_paired_interval_covers_a_known_difference_and_is_narrower_than_unpaired():
    """Two models on the same users: per-user values share a large user effect, and the second
    is better by 0.02 on average. The paired interval covers 0.02 at about the nominal rate and
    is much narrower than the difference of two separate intervals would suggest."""
    rng = np.random.default_rng(3)
    hits, widths, unpaired = 0, [], []
    trials, users = 300, 150
    for t in range(trials):
        base = rng.beta(5, 2, users) * 0.9  # kept below 0.94: no clipping at 1
        a = {"coverage@10": np.clip(base + rng.normal(0, 0.02, users), 0, 1)}
        b = {"coverage@10": np.clip(base + 0.02 + rng.normal(0, 0.02, users), 0, 1)}
        boot = Bootstrap(users, 1000, seed=t)
        d = paired_difference(b, a, boot)
        lo, hi = d["coverage@10_ci95"]
        hits += lo <= 0.02 <= hi
        widths.append(hi - lo)
        sa = boot.interval(boot.means(a["coverage@10"]))
        unpaired.append(sa[1] - sa[0])
    assert NOMINAL_LO <= hits / trials <= NOMINAL_HI, hits / trials
    assert np.mean(widths) < 0.3 * np.mean(unpaired), (np.mean(widths), np.mean(unpaired))


def test_paired_difference_of_a_model_with_itself_is_exactly_zero():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 30, 50)
    bf = np.stack([rng.permutation(np.arange(1, 30))[:10] for _ in range(50)])
    ret = np.where(rng.random(bf.shape) < 0.8, bf, 0)
    pu = per_user_metrics(ret, bf, truth, [5, 10])
    d = paired_difference(pu, {k: v.copy() for k, v in pu.items()}, Bootstrap(50))
    keys = [k for k in d if not k.endswith("_ci95")]
    assert sorted(keys) == sorted([f"{n}@{m}" for m in (5, 10) for n in
                                   ("recall_all", "recall_retrieval", "recall_delta",
                                    "coverage")])
    for k in keys:
        assert d[k] == 0.0 and d[k + "_ci95"] == [0.0, 0.0], k


def test_summarize_intervals_bracket_each_metric_and_are_reproducible():
    rng = np.random.default_rng(1)
    users = 80
    truth = np.where(rng.random(users) < 0.2, 0, rng.integers(1, 40, users))  # 20% no truth
    bf = np.stack([rng.permutation(np.arange(1, 40))[:20] for _ in range(users)])
    ret = np.where(rng.random(bf.shape) < 0.7, bf, 0)
    plain = summarize(ret, bf, truth, m=[10, 20])
    a = summarize(ret, bf, truth, m=[10, 20], bootstrap=Bootstrap(users, 500, seed=4))
    b = summarize(ret, bf, truth, m=[10, 20], bootstrap=Bootstrap(users, 500, seed=4))
    c = summarize(ret, bf, truth, m=[10, 20], bootstrap=Bootstrap(users, 500, seed=5))
    assert a == b, "same seed, same intervals"
    assert a != c, "another seed draws other resamples"
    for key, value in plain.items():
        assert a[key] == value  # the point estimates do not depend on the bootstrap
        if key == "users":
            continue
        lo, hi = a[key + "_ci95"]
        assert lo <= value <= hi and hi - lo > 0, (key, lo, value, hi)
    # Users without ground truth are left out of each resampled recall mean, as of the point
    # estimate: an interval computed on the users with truth alone is about as wide.
    keep = truth > 0
    only = summarize(ret[keep], bf[keep], truth[keep], m=[10],
                     bootstrap=Bootstrap(int(keep.sum()), 500, seed=4))
    assert only["recall_all@10"] == pytest.approx(a["recall_all@10"])
    w_all = np.diff(a["recall_all@10_ci95"])[0]
    w_only = np.diff(only["recall_all@10_ci95"])[0]
    assert w_all == pytest.approx(w_only, rel=0.25)


def test_bootstrap_bad_arguments_are_named():
    with pytest.raises(ValueError, match="resamples must be >= 100"):
        Bootstrap(10, resamples=5)
    with pytest.raises(ValueError, match="users must be >= 1"):
        Bootstrap(0)
    with pytest.raises(ValueError, match=r"values must be \[10\]"):
        Bootstrap(10).means(np.zeros(9))
    with pytest.raises(ValueError, match="same users"):
        paired_difference({"coverage@5": np.zeros(10)}, {"coverage@5": np.zeros(9)},
                          Bootstrap(10))
    assert np.isnan(Bootstrap(10).interval([np.nan] * 5)).all()
