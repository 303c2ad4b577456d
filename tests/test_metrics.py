"""Paper 5.1.2 metrics (nann_tf/evaluation/metrics.py) on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from nann_tf.evaluation.metrics import (
    coverage,
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
