"""Every metric of the benchmark, in one place: the tracks compute scores only through this module.

Wherever scikit-learn or scipy has the metric, this module calls it and only adds the conventions
of the benchmark: ``scores`` are "higher means more similar / more likely positive"; ``labels`` are
0/1 relevance; a metric that is undefined on its input (one class only, a constant list) is NaN
instead of an exception. The statistics of the leaderboard — bootstrap intervals over held-out
tasks and paired tests between methods — live here too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

#: Resamples of every bootstrap interval (percentile method, fixed seed: intervals are reproducible).
BOOTSTRAP_RESAMPLES = 2000
#: Level of every interval and of the "not significantly different from the best" marks.
CONFIDENCE = 0.95


def _as_1d(x: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")
    return arr


def _two_classes(labels: np.ndarray) -> bool:
    positives = int((labels > 0.5).sum())
    return 0 < positives < labels.size


def accuracy(predicted: np.ndarray | Sequence, truth: np.ndarray | Sequence) -> float:
    """Fraction of positions where ``predicted == truth`` (both ``(n,)``)."""
    p, t = np.asarray(predicted), np.asarray(truth)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"accuracy: shapes {p.shape} and {t.shape} must match and be non-empty")
    return float(skm.accuracy_score(t, p))


def roc_auc(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> float:
    """Area under the ROC curve (scikit-learn); NaN when only one class is present."""
    y, s = _as_1d(labels, "labels"), _as_1d(scores, "scores")
    return float(skm.roc_auc_score(y > 0.5, s)) if _two_classes(y) else float("nan")


def roc_curve(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates ``(m,)`` at every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _as_1d(labels, "labels"), _as_1d(scores, "scores")
    if not _two_classes(y):
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    fpr, tpr, _ = skm.roc_curve(y > 0.5, s, drop_intermediate=False)
    return fpr, tpr


def average_precision(labels: np.ndarray | Sequence, scores: np.ndarray | Sequence) -> float:
    """Average precision of one ranked list (scikit-learn); NaN when there is no positive."""
    y, s = _as_1d(labels, "labels"), _as_1d(scores, "scores")
    if not (y > 0.5).any():
        return float("nan")
    return float(skm.average_precision_score(y > 0.5, s))


def average_precisions(relevance: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each query (row) of ``(n_queries, n_gallery)``; NaN for rows without
    a relevant item."""
    return np.asarray([average_precision(r, s) for r, s in zip(np.asarray(relevance), np.asarray(scores))])


def mean_average_precision(relevance: np.ndarray, scores: np.ndarray) -> float:
    """Mean over queries of the average precision; queries without a relevant item are skipped."""
    return nanmean(average_precisions(relevance, scores))


def cmc_hits(relevance: np.ndarray, scores: np.ndarray, max_rank: int = 10, ties: str = "expected") -> np.ndarray:
    """Per query ``(n_queries, max_rank)``: the probability of a relevant item among its top ``k``
    (column ``k-1``); NaN rows for queries without a relevant item.

    ``ties="expected"`` averages over every order of tied items, so a constant scorer lands
    exactly at chance; ``"pessimistic"`` ranks relevant items after the irrelevant items they tie
    with. (Neither scikit-learn nor scipy has a tie-aware cumulative match characteristic.)
    """
    if ties not in ("expected", "pessimistic"):
        raise ValueError(f"cmc: ties must be 'expected' or 'pessimistic', got {ties!r}")
    rel, sc = np.asarray(relevance, dtype=bool), np.asarray(scores, dtype=np.float64)
    out = np.full((rel.shape[0], max_rank), np.nan)
    for q in range(rel.shape[0]):
        if not rel[q].any():
            continue
        best = sc[q][rel[q]].max()
        g = int((sc[q] > best).sum())  # above the best relevant: all irrelevant
        a = int(((sc[q] == best) & rel[q]).sum())
        b = int(((sc[q] == best) & ~rel[q]).sum())
        for k in range(1, max_rank + 1):
            m = k - g  # places left for the tie group within the top k
            if m <= 0:
                out[q, k - 1] = 0.0
            elif ties == "pessimistic":
                out[q, k - 1] = float(m > b)
            else:  # P(some relevant among the first m of a random order of a + b items)
                out[q, k - 1] = 1.0 if m > b else 1.0 - math.comb(b, m) / math.comb(a + b, m)
    return out


def cmc(relevance: np.ndarray, scores: np.ndarray, max_rank: int = 10, ties: str = "expected") -> np.ndarray:
    """Cumulative match characteristic ``(max_rank,)``: the mean of :func:`cmc_hits` over queries
    that have a relevant item."""
    hits = cmc_hits(relevance, scores, max_rank, ties)
    hits = hits[~np.isnan(hits[:, 0])] if hits.size else hits
    return hits.mean(axis=0) if len(hits) else np.full(max_rank, np.nan)


def spearman(a: np.ndarray | Sequence, b: np.ndarray | Sequence) -> float:
    """Spearman rank correlation (scipy); NaN when either list is constant or shorter than 2."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"spearman: lengths differ ({x.size} vs {y.size})")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def kendall_tau(a: np.ndarray | Sequence, b: np.ndarray | Sequence) -> float:
    """Kendall's τ-b (scipy; ties in either list corrected for). NaN when either list is constant."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"kendall_tau: lengths differ ({x.size} vs {y.size})")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y).statistic)


def r2(truth: np.ndarray | Sequence, predicted: np.ndarray | Sequence) -> float:
    """Coefficient of determination R² of ``predicted`` for ``truth`` (scikit-learn); NaN when
    ``truth`` is constant or shorter than 2 (R² is undefined without variance)."""
    t, p = _as_1d(truth, "truth"), _as_1d(predicted, "predicted")
    if t.size != p.size:
        raise ValueError(f"r2: lengths differ ({t.size} vs {p.size})")
    if t.size < 2 or np.ptp(t) == 0:
        return float("nan")
    return float(skm.r2_score(t, p))


def pairwise_order_accuracy(truth: np.ndarray | Sequence, predicted: np.ndarray | Sequence) -> float:
    """Fraction of pairs with different ``truth`` whose ``predicted`` values are in the same order,
    a tie in ``predicted`` counting one half: ``(1 + D) / 2`` with ``D`` Somers' D of the
    prediction given the truth (scipy). A constant prediction lands exactly at 0.5. NaN when no
    pair differs in ``truth``."""
    t, p = _as_1d(truth, "truth"), _as_1d(predicted, "predicted")
    if t.size != p.size:
        raise ValueError(f"pairwise_order_accuracy: lengths differ ({t.size} vs {p.size})")
    if t.size < 2 or np.ptp(t) == 0:
        return float("nan")
    if np.ptp(p) == 0:
        return 0.5
    return float((1.0 + stats.somersd(t, p).statistic) / 2.0)


def nanmean(values: np.ndarray | Sequence[float | None]) -> float:
    """Mean of the finite values (None and NaN skipped); NaN when there is none."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return float(finite.mean()) if finite.size else float("nan")


def mean_ci95(values: np.ndarray | Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % Student-t interval (scipy); NaN half-width below 2 values."""
    v = _as_1d(values, "values")
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1 or np.ptp(v) == 0:
        return float(v.mean()), float("nan") if v.size == 1 else 0.0
    low, high = stats.t.interval(CONFIDENCE, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return float(v.mean()), float((high - low) / 2)


def bootstrap_ci(values: np.ndarray | Sequence[float], seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` (one per independent unit, e.g. held-out task) and its 95 % bootstrap
    interval ``(mean, low, high)`` (scipy, percentile method). The interval is ``(mean, mean)``
    when all values agree and NaN with fewer than 2 values."""
    v = _as_1d(values, "values")
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(v) == 0:
        return mean, mean, mean
    res = stats.bootstrap(
        (v,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
        method="percentile", random_state=np.random.default_rng(seed),
    )  # fmt: skip
    return mean, float(res.confidence_interval.low), float(res.confidence_interval.high)


def paired_test(a: np.ndarray | Sequence[float], b: np.ndarray | Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test (scipy) on paired values ``a`` and ``b``
    (one pair per unit). 1.0 when every pair is equal; NaN with fewer than 2 pairs."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"paired_test: lengths differ ({x.size} vs {y.size})")
    if x.size < 2:
        return float("nan")
    if np.all(x == y):
        return 1.0
    with warnings.catch_warnings():  # scipy warns about ties and small samples; the p-value stands
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(x, y, zero_method="zsplit").pvalue)


def downsample_curve(x: np.ndarray, y: np.ndarray, max_points: int = 200) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points of a curve (first and last kept) for storing in result files."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size > max_points:
        idx = np.unique(np.linspace(0, x.size - 1, max_points).round().astype(int))
        x, y = x[idx], y[idx]
    return [round(float(v), 6) for v in x], [round(float(v), 6) for v in y]


def expected_random_ap(n_relevant: int, n_items: int) -> float:
    """Expected average precision of a uniformly random ranking of ``n_items`` with
    ``n_relevant`` relevant ones: ``(H_N + (R-1)/(N-1) · (N - H_N)) / N``, ``H_N`` the harmonic
    number. (The fraction ``R/N`` underestimates it on short lists.)"""
    n, r = int(n_items), int(n_relevant)
    if r <= 0 or n <= 0:
        return float("nan")
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    spread = (r - 1) / (n - 1) if n > 1 else 0.0
    return (harmonic + spread * (n - harmonic)) / n


def per_unit(units: Sequence[str], **values: Sequence[float]) -> dict:
    """The ``curves["per_unit"]`` record of a track: the mean of each metric's per-item values
    grouped by unit (e.g. a query's task). ``values`` map a metric name to one value per item,
    aligned with ``units``; NaN items are skipped, units without a finite value give None."""
    units = [str(u) for u in units]
    ids = sorted(set(units))
    out: dict[str, list[float | None]] = {}
    index = np.asarray(units)
    for name, vals in values.items():
        arr = np.asarray(vals, dtype=np.float64)
        if arr.shape != (len(units),):
            raise ValueError(f"per_unit: {name} has {arr.shape} values for {len(units)} items")
        column = []
        for u in ids:
            m = nanmean(arr[index == u])
            column.append(None if math.isnan(m) else round(m, 6))
        out[name] = column
    return {"unit": "task", "ids": ids, "metrics": out}
