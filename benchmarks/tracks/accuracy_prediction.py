"""Track: accuracy prediction from weights (Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights").

The items are checkpoints: every named checkpoint of a model whose test accuracy the set records
(``ms.checkpoint_table``, from the ``checkpoint_metrics`` column of a set with training
trajectories; for a model without one, its final checkpoint and the table's ``test_accuracy``).
The shared learner (:mod:`benchmarks.tracks._predict`) is fit on the method's embeddings of the
training models' checkpoints and predicts the accuracy of every checkpoint of the held-out tasks'
models (on a model fold, which holds out no task: of the fold's held-out models, as the paper's
split by runs). Scored per held-out task (per task and fold on model folds) — Kendall τ (scipy)
and R² (scikit-learn) over the task's checkpoints — and pooled over all held-out checkpoints, as
the paper reports it. With ``weight_stats`` this track is the paper's StatNN baseline: per-layer
weight statistics and gradient boosting.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._predict import PROTOCOL, Item, Learner, checkpoint_reason, scored_ids, units
from benchmarks.tracks._registry import Track, TrackMeta, TrackOutcome, register_track, tasks_of
from lps.splits import Split
from modelset.reader import ModelSet

#: At most this many (truth, prediction) points are stored for the leaderboard's scatter plot.
MAX_POINTS = 400


def accuracy_items(ms: ModelSet, ids: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Checkpoints of ``ids`` with a recorded test accuracy: columns ``model_id``, ``checkpoint``,
    ``epoch`` (NaN where unknown), ``test_accuracy``; trajectory figures first, then the final
    checkpoint of models without any."""
    wanted = pd.Index([str(i) for i in ids])
    table = ms.checkpoint_table
    traj = table[table["model_id"].isin(wanted)][["model_id", "checkpoint", "epoch", "test_accuracy"]]
    rest = wanted.difference(pd.Index(traj["model_id"].unique()), sort=False)
    if "test_accuracy" in ms.metadata.columns and len(rest):
        acc = pd.to_numeric(ms.metadata.loc[rest, "test_accuracy"], errors="coerce")
        epochs = (pd.to_numeric(ms.metadata.loc[rest, "epochs"], errors="coerce")
                  if "epochs" in ms.metadata.columns else pd.Series(np.nan, index=rest))  # fmt: skip
        final = pd.DataFrame({"model_id": rest, "checkpoint": "final", "epoch": epochs.to_numpy(dtype=float),
                              "test_accuracy": acc.to_numpy(dtype=float)})  # fmt: skip
        traj = pd.concat([traj.astype({"epoch": float}), final], ignore_index=True)
    return traj[np.isfinite(traj["test_accuracy"].to_numpy(dtype=float))].reset_index(drop=True)


def _items(frame: pd.DataFrame) -> list[Item]:
    return list(zip(frame["model_id"].astype(str), frame["checkpoint"].astype(str)))


@register_track
class AccuracyPrediction(Track):
    meta = TrackMeta(
        name="accuracy_prediction",
        description=(
            "test accuracy of every checkpoint of held-out-task models, predicted from weights by one shared "
            "learner fit on the training models' checkpoints; Kendall τ and R² per held-out task"
        ),
        primary=("kendall_tau", "r2"),
        reference=(
            "Unterthiner et al. 2020, Predicting Neural Network Accuracy from Weights (with weight_stats: their "
            "StatNN baseline, per-layer statistics + gradient boosting); Schürholt et al. 2021, Self-Supervised "
            "Representation Learning on Neural Network Weights; Schürholt et al. 2022, Model Zoos"
        ),
        config=dict(PROTOCOL),
        labels={"kendall_tau": "accuracy τ", "r2": "accuracy R²"},
        order=80,
    )

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if "test_accuracy" not in ms.metadata.columns and ms.checkpoint_table.empty:
            return "the set records no test accuracy (no test_accuracy or checkpoint_metrics column)"
        if len(accuracy_items(ms, split.train_ids)) < 2:
            return "fewer than 2 training checkpoints with a recorded test accuracy"
        if accuracy_items(ms, scored_ids(split)).empty:
            held = "held-out-task model" if split.unit == "task" else "held-out model"
            return f"no checkpoint of a {held} has a recorded test accuracy"
        return ""

    def evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> TrackOutcome:
        if not self.not_applicable(ms, split):
            items = _items(accuracy_items(ms, split.train_ids)) + _items(accuracy_items(ms, scored_ids(split)))
            reason = checkpoint_reason(method, items, "accuracy prediction")
            if reason:
                return TrackOutcome("not_applicable", reason=reason)
        return super().evaluate(method, ms, split)

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        train, test = accuracy_items(ms, split.train_ids), accuracy_items(ms, scored_ids(split))
        truth = test["test_accuracy"].to_numpy(dtype=float)
        learner = Learner(method, ms, split.seed, self.config)
        predicted = learner.regress(_items(train), train["test_accuracy"].to_numpy(dtype=float), _items(test))
        tasks = tasks_of(ms, test["model_id"].tolist())
        tau, r2 = {}, {}
        for task in sorted(set(tasks)):
            rows = tasks == task
            tau[task], r2[task] = metrics.kendall_tau(truth[rows], predicted[rows]), metrics.r2(truth[rows], predicted[rows])
        per_unit = units(ms, split, test["model_id"].tolist(), kendall_tau=[tau[t] for t in tasks], r2=[r2[t] for t in tasks])
        keep = np.unique(np.linspace(0, len(truth) - 1, min(MAX_POINTS, len(truth))).round().astype(int))
        return (
            {
                **{name: metrics.nanmean(values) for name, values in per_unit["metrics"].items()},
                "pooled_kendall_tau": metrics.kendall_tau(truth, predicted),
                "pooled_r2": metrics.r2(truth, predicted),
                "n_checkpoints": len(test),
                "n_models": test["model_id"].nunique(),
                "n_train_checkpoints": len(train),
                "checkpoints_per_model": len(test) / max(1, test["model_id"].nunique()),
            },
            {
                "per_unit": per_unit,
                "learner": learner.kind,
                "scatter": {
                    "truth": [round(float(v), 5) for v in truth[keep]],
                    "predicted": [round(float(v), 5) for v in predicted[keep]],
                    "checkpoint": test["checkpoint"].astype(str).to_numpy()[keep].tolist(),
                },
            },
        )
