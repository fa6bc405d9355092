"""Metrics of the tracks, written out in numpy so each is short and checked in the tests against
scikit-learn or scipy on known inputs.

Conventions: ``scores`` are "higher means more similar / more likely positive"; ``labels`` are
0/1 relevance. Ties in scores are handled the way the reference libraries handle them (average
ranks for AUC and rank correlations, sklearn's step-wise precision for average precision).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _as_1d(x: np.ndarray | list, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite values, found NaN or Inf")
    return arr


def accuracy(predicted: np.ndarray | list, truth: np.ndarray | list) -> float:
    """Fraction of positions where ``predicted == truth`` (both ``(n,)``)."""
    p, t = np.asarray(predicted), np.asarray(truth)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"accuracy: shapes {p.shape} and {t.shape} must match and be non-empty")
    return float(np.mean(p == t))


def roc_auc(labels: np.ndarray | list, scores: np.ndarray | list) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (average ranks for ties).

    ``labels`` ``(n,)`` 0/1, ``scores`` ``(n,)``. NaN when only one class is present.
    """
    y, s = _as_1d(labels, "labels"), _as_1d(scores, "scores")
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(s)  # average ranks: a tie counts one half, as in sklearn
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray | list, scores: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates ``(m,)`` at every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _as_1d(labels, "labels"), _as_1d(scores, "scores")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.where(np.diff(s))[0], y.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    return fpr, tpr


def average_precision(labels: np.ndarray | list, scores: np.ndarray | list) -> float:
    """Average precision of one ranked list: sum over thresholds of (ΔR) · P (sklearn's definition).

    NaN when there is no positive.
    """
    y, s = _as_1d(labels, "labels"), _as_1d(scores, "scores")
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.where(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    precision = tps / (distinct + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(relevance: np.ndarray, scores: np.ndarray) -> float:
    """Mean over queries (rows) of the average precision; queries without a positive are skipped.

    ``relevance`` and ``scores`` are ``(n_queries, n_gallery)``.
    """
    values = [average_precision(r, s) for r, s in zip(np.asarray(relevance), np.asarray(scores))]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def cmc(relevance: np.ndarray, scores: np.ndarray, max_rank: int = 10, ties: str = "expected") -> np.ndarray:
    """Cumulative match characteristic ``(max_rank,)``: entry ``k-1`` is the fraction of queries
    with a relevant item among their top ``k``. Queries without a relevant item are skipped.

    ``ties="expected"`` (default) averages over every order of tied items, so a constant scorer
    lands exactly at chance; ``"pessimistic"`` ranks relevant items after the irrelevant items
    they tie with.
    """
    if ties not in ("expected", "pessimistic"):
        raise ValueError(f"cmc: ties must be 'expected' or 'pessimistic', got {ties!r}")
    rel, sc = np.asarray(relevance, dtype=bool), np.asarray(scores, dtype=np.float64)
    keep = rel.any(axis=1)
    rel, sc = rel[keep], sc[keep]
    if rel.shape[0] == 0:
        return np.full(max_rank, np.nan)
    best = np.where(rel, sc, -np.inf).max(axis=1)[:, None]
    above = (sc > best).sum(axis=1)  # all irrelevant: best is the top relevant score
    tied_rel = ((sc == best) & rel).sum(axis=1)
    tied_irr = ((sc == best) & ~rel).sum(axis=1)
    out = np.zeros((rel.shape[0], max_rank))
    for q in range(rel.shape[0]):
        a, b, g = int(tied_rel[q]), int(tied_irr[q]), int(above[q])
        for k in range(1, max_rank + 1):
            m = k - g  # places left for the tie group within the top k
            if m <= 0:
                continue
            if ties == "pessimistic":
                out[q, k - 1] = float(m > b)
            else:  # P(some relevant among the first m of a random order of a + b items)
                out[q, k - 1] = 1.0 if m > b else 1.0 - math.comb(b, m) / math.comb(a + b, m)
    return out.mean(axis=0)


def spearman(a: np.ndarray | list, b: np.ndarray | list) -> float:
    """Spearman rank correlation: Pearson correlation of average ranks. NaN if one is constant."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"spearman: lengths differ ({x.size} vs {y.size})")
    return _pearson(stats.rankdata(x), stats.rankdata(y))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def kendall_tau(a: np.ndarray | list, b: np.ndarray | list) -> float:
    """Kendall's τ-b (ties in either list corrected for), O(n²) over pairs. NaN if one is constant."""
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.size != y.size:
        raise ValueError(f"kendall_tau: lengths differ ({x.size} vs {y.size})")
    iu = np.triu_indices(x.size, k=1)
    dx = np.sign(x[:, None] - x[None, :])[iu]
    dy = np.sign(y[:, None] - y[None, :])[iu]
    concordance = float((dx * dy).sum())
    denom = math.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return concordance / denom if denom > 0 else float("nan")


def mean_ci95(values: np.ndarray | list) -> tuple[float, float]:
    """Mean and half-width of its 95 % normal interval (1.96 · std / √n, std with ddof=1)."""
    v = _as_1d(values, "values")
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(1.96 * v.std(ddof=1) / math.sqrt(v.size))


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
