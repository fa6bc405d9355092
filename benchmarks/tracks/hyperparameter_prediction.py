"""Track: hyper-parameter prediction from weights (Schürholt et al. 2021, "Self-Supervised
Representation Learning on Neural Network Weights for Model Characteristic Prediction"; Schürholt
et al. 2022, "Model Zoos: A Dataset of Diverse Populations of Neural Network Models";
Unterthiner et al. 2020).

From the final weights of a held-out task's base model, predict how it was trained: the
optimizer (accuracy), the log learning rate, the log weight decay and the number of epochs
(Kendall τ and R²). The shared learner (:mod:`benchmarks.tracks._predict`) is fit on the method's
embeddings of the training base models. On a model fold (no held-out task: an imported zoo split
by runs) the held-out base models are the fold's held-out models. Every target is scored per
held-out task (unit of the intervals; per task and fold on model folds) and pooled. A target
whose column is absent or constant is skipped and listed in the outcome; a value ≤ 0 of a
log-scale target (no weight decay) is set one decade below the smallest positive value so that
it stays the smallest.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._predict import PROTOCOL, Learner, scored_ids, units
from benchmarks.tracks._registry import Track, TrackMeta, register_track, tasks_of
from lps.splits import Split
from modelset.reader import ModelSet

#: target → kind: "class" (accuracy), "log" or "linear" (Kendall τ and R² of the value).
TARGETS: dict[str, str] = {"optimizer": "class", "lr": "log", "weight_decay": "log", "epochs": "linear"}


def base_ids(ms: ModelSet, ids: list[str] | tuple[str, ...]) -> list[str]:
    """The base models (``variant == "base"``, or no ``parent_id`` where the set has no variant
    column) among ``ids``."""
    table = ms.metadata.loc[list(ids)]
    if "variant" in table.columns:
        keep = table["variant"].astype(str) == "base"
    elif "parent_id" in table.columns:
        keep = table["parent_id"].fillna("").astype(str) == ""
    else:
        keep = pd.Series(True, index=table.index)
    return [str(m) for m in table.index[keep.to_numpy()]]


def target_values(ms: ModelSet, target: str, ids: list[str]) -> pd.Series:
    """The target's values for ``ids`` (str for classes, float for numbers; NaN when unknown)."""
    column = ms.metadata.loc[ids, target]
    if TARGETS[target] == "class":
        return column.map(lambda v: str(v) if pd.notna(v) else np.nan)
    values = pd.to_numeric(column, errors="coerce").astype(float)
    if TARGETS[target] == "log":
        every = pd.to_numeric(ms.metadata[target], errors="coerce")  # the floor is the set's, not the fold's
        positive = every[every > 0]
        floor = float(positive.min()) / 10 if len(positive) else 1.0
        values = np.log10(values.where(~(values <= 0), floor))
    return values


def skipped_targets(ms: ModelSet, train: list[str], test: list[str]) -> dict[str, str]:
    """Targets that cannot be scored on this fold, with the reason."""
    out = {}
    for target in TARGETS:
        if target not in ms.metadata.columns:
            out[target] = "column absent"
            continue
        values = target_values(ms, target, train + test).dropna()
        train_values = target_values(ms, target, train).dropna()
        if values.nunique() < 2:
            out[target] = "constant over the base models"
        elif train_values.nunique() < 2:
            out[target] = "constant over the training base models"
        elif target_values(ms, target, test).dropna().empty:
            out[target] = "unknown for every held-out base model"
    return out


@register_track
class HyperparameterPrediction(Track):
    meta = TrackMeta(
        name="hyperparameter_prediction",
        description=(
            "held-out-task base models: optimizer (accuracy), log learning rate, log weight decay and epochs "
            "(Kendall τ, R²) predicted from final weights by one shared learner"
        ),
        primary=("optimizer_accuracy", "lr_kendall_tau"),  # weight decay and epochs: the track's own table
        reference=(
            "Schürholt et al. 2021, Self-Supervised Representation Learning on Neural Network Weights for Model "
            "Characteristic Prediction; Schürholt et al. 2022, Model Zoos; Unterthiner et al. 2020"
        ),
        config=dict(PROTOCOL),
        labels={"optimizer_accuracy": "optimizer acc", "lr_kendall_tau": "lr τ"},
        order=90,
    )

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        train, test = base_ids(ms, split.train_ids), base_ids(ms, scored_ids(split))
        if len(train) < 2 or not test:
            held = "held-out-task" if split.unit == "task" else "held-out"
            return f"needs at least 2 training base models and one {held} base model"
        skipped = skipped_targets(ms, train, test)
        if len(skipped) == len(TARGETS):
            return "no target can be scored: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        train, test = base_ids(ms, split.train_ids), base_ids(ms, scored_ids(split))
        skipped = skipped_targets(ms, train, test)
        learner = Learner(method, ms, split.seed, self.config)
        tasks = tasks_of(ms, test)
        found: dict[str, float] = {}
        per_item: dict[str, np.ndarray] = {}
        for target, kind in TARGETS.items():
            names = [f"{target}_accuracy"] if kind == "class" else [f"{target}_kendall_tau", f"{target}_r2"]
            if target in skipped:
                found.update({n: float("nan") for n in names} | {f"pooled_{n}": float("nan") for n in names})
                continue
            y_train, y_test = target_values(ms, target, train), target_values(ms, target, test)
            fit_rows, test_rows = y_train.notna().to_numpy(), y_test.notna().to_numpy()
            fit_items = [(m, "final") for m, keep in zip(train, fit_rows) if keep]
            test_items = [(m, "final") for m, keep in zip(test, test_rows) if keep]
            truth = y_test.to_numpy()[test_rows]
            t_tasks = tasks[test_rows]
            if kind == "class":
                predicted = learner.classify(fit_items, y_train.to_numpy()[fit_rows].tolist(), test_items)
                correct = (predicted == truth.astype(str)).astype(float)
                values = {names[0]: _spread(test_rows, correct)}
                found[f"pooled_{names[0]}"] = metrics.accuracy(predicted, truth.astype(str))
                # The majority optimizer of the training models: what a method gets from the prior alone.
                majority = pd.Series(y_train.to_numpy()[fit_rows]).value_counts().index[0]
                found[f"{target}_majority_accuracy"] = metrics.accuracy(np.full(len(truth), majority), truth.astype(str))
                # Classes no training model has (e.g. an optimizer only a held-out recipe family uses)
                # cannot be predicted by any method: the reachable maximum.
                seen = set(y_train.to_numpy()[fit_rows].astype(str))
                found[f"{target}_ceiling"] = float(np.mean([t in seen for t in truth.astype(str)]))
            else:
                predicted = learner.regress(fit_items, y_train.to_numpy(dtype=float)[fit_rows], test_items)
                truth = truth.astype(float)
                tau, r2 = {}, {}
                for task in sorted(set(t_tasks)):
                    rows = t_tasks == task
                    tau[task] = metrics.kendall_tau(truth[rows], predicted[rows])
                    r2[task] = metrics.r2(truth[rows], predicted[rows])
                values = {
                    names[0]: _spread(test_rows, np.array([tau[t] for t in t_tasks])),
                    names[1]: _spread(test_rows, np.array([r2[t] for t in t_tasks])),
                }
                found[f"pooled_{names[0]}"] = metrics.kendall_tau(truth, predicted)
                found[f"pooled_{names[1]}"] = metrics.r2(truth, predicted)
            per_item.update(values)
        per_unit = units(ms, split, test, **per_item)
        found.update({name: metrics.nanmean(values) for name, values in per_unit["metrics"].items()})
        found["n_models"], found["n_train_models"] = len(test), len(train)
        return found, {"per_unit": per_unit, "skipped": skipped, "learner": learner.kind}


def _spread(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` of the rows where ``rows`` is True, NaN elsewhere: aligned with every test model."""
    out = np.full(rows.shape, np.nan)
    out[rows] = values
    return out
