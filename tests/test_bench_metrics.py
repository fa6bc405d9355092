"""The benchmark metrics agree with scikit-learn and scipy on known and random inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from benchmarks import metrics


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = labels * 0.8 + rng.normal(size=200)
    scores[:20] = np.round(scores[:20])  # some ties
    return labels, scores


def test_roc_auc_matches_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = scored
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_matches_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = scored
    fpr, tpr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(labels, scores))


def test_average_precision_matches_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    labels, scores = scored
    assert metrics.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-12
    )
    assert metrics.average_precision([0, 1, 0, 1], [4, 3, 2, 1]) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_map_and_cmc_on_known_lists() -> None:
    relevance = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.2, 0.3], [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    # Query 3 has no relevant item and is skipped; query 2 finds its item at rank 3.
    assert metrics.mean_average_precision(relevance, scores) == pytest.approx((1.0 + 1 / 3) / 2)
    np.testing.assert_allclose(metrics.cmc(relevance, scores, max_rank=4), [0.5, 0.5, 1.0, 1.0])
    # A constant scorer lands at chance: 1 relevant among 4 is in the top k with probability k/4.
    np.testing.assert_allclose(metrics.cmc(relevance[:1], np.zeros((1, 4)), 4), [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(metrics.cmc(relevance[:1], np.zeros((1, 4)), 4, ties="pessimistic"), [0, 0, 0, 1])
    # Two relevant of four, all tied: P(hit in top 1) = 1/2, top 2 = 1 - 1/6.
    np.testing.assert_allclose(metrics.cmc([[1, 1, 0, 0]], np.zeros((1, 4)), 2), [0.5, 5 / 6])


def test_cmc_expected_ties_match_random_tie_breaking() -> None:
    rng = np.random.default_rng(2)
    relevance = rng.random((30, 12)) < 0.3
    relevance[:, 0] = True
    scores = rng.integers(0, 3, (30, 12)).astype(float)  # many ties
    simulated = np.mean([metrics.cmc(relevance, scores + 1e-6 * rng.random(scores.shape), 5) for _ in range(3000)], axis=0)
    np.testing.assert_allclose(metrics.cmc(relevance, scores, 5), simulated, atol=0.01)


def test_rank_correlations_match_scipy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=40)
    b = a + rng.normal(size=40)
    b_ties = np.round(b)
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert metrics.spearman(a, b_ties) == pytest.approx(stats.spearmanr(a, b_ties).statistic, abs=1e-12)
    assert metrics.kendall_tau(a, b_ties) == pytest.approx(stats.kendalltau(a, b_ties).statistic, abs=1e-12)
    assert metrics.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))


def test_accuracy_and_interval() -> None:
    assert metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    mean, half = metrics.mean_ci95([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5
    assert half == pytest.approx(stats.t.ppf(0.975, 3) * np.std([0, 1, 0, 1], ddof=1) / 2)
    with pytest.raises(ValueError, match="finite"):
        metrics.roc_auc([0, 1], [np.nan, 1.0])


def test_expected_random_ap_matches_simulation() -> None:
    rng = np.random.default_rng(3)
    for n, r in [(7, 1), (7, 3), (12, 5), (5, 5)]:
        labels = np.zeros(n)
        labels[:r] = 1
        simulated = np.mean([metrics.average_precision(labels, rng.random(n)) for _ in range(4000)])
        assert metrics.expected_random_ap(r, n) == pytest.approx(simulated, abs=0.015)
    assert metrics.expected_random_ap(1, 4) == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4)


def test_bootstrap_interval_covers_the_mean_and_is_reproducible() -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(0.6, 0.1, size=40)
    mean, low, high = metrics.bootstrap_ci(values)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    # The percentile interval of the mean is close to the normal one: ±1.96 standard errors.
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.2)
    assert metrics.bootstrap_ci(values) == (mean, low, high)
    assert metrics.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert np.isnan(metrics.bootstrap_ci([0.3])[1])


def test_paired_test_detects_a_consistent_difference() -> None:
    rng = np.random.default_rng(5)
    a = rng.normal(size=30)
    assert metrics.paired_test(a + 0.5, a) < 0.001
    assert metrics.paired_test(a + rng.normal(0, 0.01, 30), a) > 0.01
    assert metrics.paired_test(a, a) == 1.0
    assert metrics.paired_test(a + 0.5, a) == pytest.approx(stats.wilcoxon(a + 0.5, a).pvalue)


def test_per_unit_groups_items_by_task() -> None:
    units = metrics.per_unit(["b", "a", "b", "a", "c"], acc=[1.0, 0.0, 0.0, 1.0, np.nan])
    assert units == {"unit": "task", "ids": ["a", "b", "c"], "metrics": {"acc": [0.5, 0.5, None]}}
    with pytest.raises(ValueError, match="acc has"):
        metrics.per_unit(["a"], acc=[1.0, 2.0])
