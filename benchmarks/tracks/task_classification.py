"""Track: task classification of held-out models of seen tasks, and pair verification.

Each held-out model (never fit on, its task seen in training) is assigned the task whose training
models it is, on average, most similar to: accuracy. Every pair made of a held-out model and
another model of the seen tasks (held-out or training) is scored as same-task or not: ROC AUC,
with the ROC curve for the leaderboard. Each pair has at least one model no method was fit on.
Both are reported per task of the queries (accuracy of its queries; AUC of the pairs they make)
and averaged over tasks. ``heldout_recipe`` runs the same protocol on models of recipe families
no method was fit on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Plot, Track, TrackMeta, register_track, tasks_of
from lps.splits import Split
from modelset.reader import ModelSet


@register_track
class TaskClassification(Track):
    meta = TrackMeta(
        name="task_classification",
        description="held-out models of seen tasks: nearest task by mean similarity (accuracy); pair verification (ROC AUC)",
        primary=("accuracy", "auc"),
        reference="Wang et al. 2019 (LPS) task classification protocol",
        labels={"accuracy": "task acc", "auc": "pair AUC"},
        order=10,
        plots=(Plot("roc", "ROC curves", "Pair verification on held-out models of seen tasks, fold {fold}; AUC in brackets.",
                    metric="auc"),),
    )
    queries_name = "held-out models of seen tasks"

    def _queries(self, split: Split) -> list[str]:
        return list(split.heldout_model_ids)

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if not self._queries(split):
            return f"no {self.queries_name}"
        if len(split.train_tasks) < 2:  # e.g. an imported zoo of one data set: nothing to tell apart
            return f"fewer than 2 training tasks ({len(split.train_tasks)}) to classify models into"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        queries, gallery = self._queries(split), list(split.train_ids)
        q_tasks, g_tasks = tasks_of(ms, queries), tasks_of(ms, gallery)
        sim = method.similarity(ms, queries, gallery).numpy().astype(np.float64)
        names = sorted(set(g_tasks))
        per_task = np.stack([sim[:, g_tasks == t].mean(axis=1) for t in names], axis=1)
        correct = (np.asarray(names)[per_task.argmax(axis=1)] == q_tasks).astype(float)

        # Pairs: each query with every training model and every other query. The AUC of a task
        # pools the pairs of its queries, so one threshold serves all of them, as in verification.
        pair_sim = method.similarity(ms, queries, queries).numpy().astype(np.float64)
        off = ~np.eye(len(queries), dtype=bool)
        scores = np.concatenate([sim, np.where(off, pair_sim, np.nan)], axis=1)
        same = np.concatenate([q_tasks[:, None] == g_tasks[None, :], q_tasks[:, None] == q_tasks[None, :]], axis=1)
        auc = {}
        for task in sorted(set(q_tasks)):
            rows = q_tasks == task
            keep = ~np.isnan(scores[rows])
            auc[task] = metrics.roc_auc(same[rows][keep].astype(float), scores[rows][keep])
        units = metrics.per_unit(q_tasks, accuracy=correct, auc=[auc[t] for t in q_tasks])
        iu = np.triu_indices(len(queries), k=1)
        all_same = np.concatenate([same[:, : len(gallery)].ravel(), same[:, len(gallery) :][iu]]).astype(float)
        all_scores = np.concatenate([sim.ravel(), pair_sim[iu]])
        fpr, tpr = metrics.downsample_curve(*metrics.roc_curve(all_same, all_scores))
        return (
            {
                **{name: metrics.nanmean(values) for name, values in units["metrics"].items()},
                "pooled_auc": metrics.roc_auc(all_same, all_scores),
                "chance_accuracy": 1.0 / len(names),
                "n_queries": len(queries),
                "n_pairs": len(all_scores),
            },
            {"per_unit": units, "roc": {"fpr": fpr, "tpr": tpr}},
        )


@register_track
class HeldoutRecipe(TaskClassification):
    """The same protocol on models trained with recipes no method was fit on (the fold's
    ``heldout_recipe_ids``): beside ``task_classification`` it shows how much of a method's score
    depends on the zoo's own training recipe."""

    meta = TrackMeta(
        name="heldout_recipe",
        description="models of seen tasks trained with held-out recipe families: nearest task (accuracy); pair verification (ROC AUC)",
        primary=("accuracy", "auc"),
        reference="out-of-recipe generalisation; task classification protocol of Wang et al. 2019",
        labels={"accuracy": "out-of-recipe acc", "auc": "out-of-recipe AUC"},
        order=20,
    )
    queries_name = "models of held-out recipe families (the set declares none: folds.heldout_recipe_families)"

    def _queries(self, split: Split) -> list[str]:
        return list(split.heldout_recipe_ids)
