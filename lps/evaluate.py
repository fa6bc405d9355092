"""Scores on a split: held-out tasks (retrieval) and held-out models of seen tasks.

All scores are functions of one similarity matrix over the split's models, so LPS and any baseline
(here: flattened-weight cosine) are scored on exactly the same models and pairs.

- **Held-out tasks, retrieval**: every held-out-task model queries all other held-out-task models;
  relevant = same task. mAP (scikit-learn's average precision per query, averaged) and CMC rank-1
  and rank-5 (a relevant model among the top k).
- **Held-out models of seen tasks**: *task accuracy* — each held-out model is assigned the seen task
  whose training models it is most similar to on average (nearest class mean for a dot-product
  similarity); *kNN accuracy* — majority task of its 5 most similar training models; *AUC* — pair
  verification (same task or not) over all pairs of held-out models, ROC AUC.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from lps.splits import Split

METRICS = (
    "heldout_task_map",
    "heldout_task_rank1",
    "heldout_task_rank5",
    "heldout_model_task_accuracy",
    "heldout_model_knn_accuracy",
    "heldout_model_auc",
)


def split_ids(split: Split) -> list[str]:
    """Every model a split scores: training, held-out-model and held-out-task ids, in that order."""
    return [*split.train_ids, *split.heldout_model_ids, *split.heldout_task_ids]


def retrieval_scores(sim: np.ndarray, labels: Sequence[Any], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """mAP and CMC rank-k of a square similarity ``(N, N)`` among models with ``labels``."""
    labels = np.asarray(labels)
    aps, hits = [], {k: [] for k in ks}
    for i in range(len(labels)):
        others = np.arange(len(labels)) != i
        relevant = labels[others] == labels[i]
        if not relevant.any():
            continue
        scores = sim[i, others]
        aps.append(average_precision_score(relevant, scores))
        ranked = relevant[np.argsort(-scores, kind="stable")]
        for k in ks:
            hits[k].append(bool(ranked[:k].any()))
    out = {"map": float(np.mean(aps)) if aps else float("nan")}
    out.update({f"rank{k}": float(np.mean(v)) if v else float("nan") for k, v in hits.items()})
    return out


def evaluate_similarity(
    sim: np.ndarray, ids: Sequence[str], task_of: Mapping[str, str], split: Split
) -> dict[str, float]:
    """The split's scores from a similarity ``sim`` ``(N, N)`` over ``ids`` (⊇ the split's ids)."""
    pos = {m: i for i, m in enumerate(ids)}
    sim = np.asarray(sim, dtype=np.float64)
    out: dict[str, float] = {}
    held = [pos[m] for m in split.heldout_task_ids]
    retrieval = retrieval_scores(sim[np.ix_(held, held)], [task_of[m] for m in split.heldout_task_ids])
    out["heldout_task_map"] = retrieval["map"]
    out["heldout_task_rank1"] = retrieval["rank1"]
    out["heldout_task_rank5"] = retrieval["rank5"]

    train = [pos[m] for m in split.train_ids]
    train_tasks = np.asarray([task_of[m] for m in split.train_ids])
    names = sorted(set(train_tasks))
    queries = [pos[m] for m in split.heldout_model_ids]
    truth = np.asarray([task_of[m] for m in split.heldout_model_ids])
    block = sim[np.ix_(queries, train)]  # (Q, T)
    means = np.stack([block[:, train_tasks == t].mean(1) for t in names], 1)
    out["heldout_model_task_accuracy"] = float(np.mean(np.asarray(names)[means.argmax(1)] == truth))
    k = min(5, len(train))
    nearest = np.argsort(-block, axis=1, kind="stable")[:, :k]
    votes = [Counter(train_tasks[row]).most_common(1)[0][0] for row in nearest]
    out["heldout_model_knn_accuracy"] = float(np.mean(np.asarray(votes) == truth))
    iu, ju = np.triu_indices(len(queries), k=1)
    same = truth[iu] == truth[ju]
    pair_scores = sim[np.ix_(queries, queries)][iu, ju]
    out["heldout_model_auc"] = (
        float(roc_auc_score(same, pair_scores)) if 0 < same.sum() < len(same) else float("nan")
    )
    return out


def flattened_cosine(ms, ids: Sequence[str], checkpoint: str = "final") -> np.ndarray:
    """Cosine ``(N, N)`` of flattened parameters (keys sorted by name), the no-alignment baseline.

    Models of different signatures have vectors of different lengths: the shorter are zero-padded
    (a comparison without alignment, which is the point of this baseline).
    """
    ids = list(ids)
    vectors: list[torch.Tensor | None] = [None] * len(ids)
    for group in ms.by_signature(ids):
        stacked = ms.stacked(group.ids, checkpoint)
        flat = torch.cat([stacked[k].reshape(len(group.ids), -1).float() for k in sorted(stacked)], 1)
        for row, p in enumerate(group.positions):
            vectors[p] = flat[row]
    length = max(v.numel() for v in vectors)
    matrix = torch.stack([torch.nn.functional.pad(v, (0, length - v.numel())) for v in vectors])
    matrix = torch.nn.functional.normalize(matrix, dim=1)
    return (matrix @ matrix.T).numpy()


def evaluate_lps(scorer, ms, split: Split, checkpoint: str = "final") -> dict[str, float]:
    """Scores of a trained ``LPS`` on ``split`` (cosine of its embeddings)."""
    ids = split_ids(split)
    emb = scorer.embed(ids, ms=ms, checkpoint=checkpoint)
    task_of = ms.metadata["task"].astype(str).to_dict()
    return evaluate_similarity((emb @ emb.T).numpy(), ids, task_of, split)


def evaluate_flattened_cosine(ms, split: Split, checkpoint: str = "final") -> dict[str, float]:
    ids = split_ids(split)
    task_of = ms.metadata["task"].astype(str).to_dict()
    return evaluate_similarity(flattened_cosine(ms, ids, checkpoint), ids, task_of, split)


def summarize(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Mean, std (over seeds, ``ddof=0``) and the values of every metric in ``runs``."""
    out = {}
    for metric in METRICS:
        values = [float(r[metric]) for r in runs if metric in r]
        finite = [v for v in values if np.isfinite(v)]
        out[metric] = {
            "mean": float(np.mean(finite)) if finite else float("nan"),
            "std": float(np.std(finite)) if finite else float("nan"),
            "values": values,
        }
    return out
