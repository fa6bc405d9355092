"""Track: task classification of held-out models of seen tasks, and pair verification.

Each held-out model (never fit on, its task seen in training) is assigned the task whose training
models it is, on average, most similar to: accuracy. Every pair made of a held-out model and
another model of the seen tasks (held-out or training) is scored as same-task or not: ROC AUC,
with the ROC curve for the leaderboard. Each pair has at least one model no method was fit on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Track, TrackMeta, register_track, tasks_of
from lps.splits import Split
from modelset.reader import ModelSet


@register_track
class TaskClassification(Track):
    meta = TrackMeta(
        name="task_classification",
        description="held-out models of seen tasks: nearest task by mean similarity (accuracy); pair verification (ROC AUC)",
        primary=("accuracy", "auc"),
        reference="Wang et al. 2019 (LPS) task classification protocol",
    )

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if not split.heldout_model_ids:
            return "no held-out models of seen tasks"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        queries, gallery = list(split.heldout_model_ids), list(split.train_ids)
        q_tasks, g_tasks = tasks_of(ms, queries), tasks_of(ms, gallery)
        sim = method.similarity(ms, queries, gallery).numpy().astype(np.float64)
        names = sorted(set(g_tasks))
        per_task = np.stack([sim[:, g_tasks == t].mean(axis=1) for t in names], axis=1)
        predicted = np.asarray(names)[per_task.argmax(axis=1)]
        accuracy = metrics.accuracy(predicted, q_tasks)

        # Pairs: held-out × training (all of sim) and held-out × held-out (upper triangle).
        pair_sim = method.similarity(ms, queries, queries).numpy().astype(np.float64)
        iu = np.triu_indices(len(queries), k=1)
        same = np.concatenate([(q_tasks[:, None] == g_tasks[None, :]).ravel(), (q_tasks[:, None] == q_tasks[None, :])[iu]])
        scores = np.concatenate([sim.ravel(), pair_sim[iu]])
        same = same.astype(float)
        fpr, tpr = metrics.roc_curve(same, scores)
        fpr_l, tpr_l = metrics.downsample_curve(fpr, tpr)
        return (
            {
                "accuracy": accuracy,
                "auc": metrics.roc_auc(same, scores),
                "chance_accuracy": 1.0 / len(names),
                "n_queries": len(queries),
                "n_pairs": len(scores),
            },
            {"roc": {"fpr": fpr_l, "tpr": tpr_l}},
        )
