"""Track: task relations. A method's task × task similarity (mean similarity between models of the
two tasks, over all models that were not fit on) is compared with each ground-truth relation
matrix of the set (e.g. ``label_jaccard``, ``transfer_affinity``) task by task: the Spearman
correlation of the task's row (its similarity to every other task) with the relation's row,
averaged over tasks and relations (``spearman_mean``); ``pooled_spearman_*`` correlates all
off-diagonal entries at once. Relations whose off-diagonal entries are constant (``same_task``)
carry no ranking and are skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Plot, Track, TrackMeta, register_track, tasks_of, test_ids
from lps.splits import Split
from modelset.reader import ModelSet


def usable_relations(ms: ModelSet, tasks: list[str]) -> dict[str, np.ndarray]:
    """Relation matrices restricted to ``tasks`` (in that order) whose off-diagonal varies."""
    out = {}
    off = ~np.eye(len(tasks), dtype=bool)
    for name, frame in sorted(ms.relations.items()):
        if not set(tasks) <= set(frame.index):
            continue
        matrix = frame.loc[tasks, tasks].to_numpy(dtype=np.float64)
        if np.isfinite(matrix[off]).all() and np.ptp(matrix[off]) > 0:
            out[name] = matrix
    return out


def task_similarity(sim: np.ndarray, tasks: np.ndarray, names: list[str]) -> np.ndarray:
    """Mean model similarity per task pair ``(T, T)`` (distinct models only on the diagonal)."""
    out = np.zeros((len(names), len(names)))
    eye = np.eye(len(tasks), dtype=bool)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            block = (tasks[:, None] == a) & (tasks[None, :] == b) & ~eye
            out[i, j] = sim[block].mean() if block.any() else np.nan
    return out


@register_track
class TaskRelations(Track):
    meta = TrackMeta(
        name="task_relations",
        description="Spearman correlation of the method's task x task similarity with ground-truth relations",
        primary=("spearman_mean",),
        reference="Taskonomy-style task relations (Zamir et al. 2018); Achille et al. 2019",
        labels={"spearman_mean": "relations ρ"},
        order=40,
        plots=(Plot("task_matrices", "Task × task similarity",
                    "Ground-truth relations (first panels) beside each method's mean model similarity per task pair."),),
    )

    def _tasks(self, ms: ModelSet, split: Split) -> list[str]:
        return sorted(set(tasks_of(ms, test_ids(split))))

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        tasks = self._tasks(ms, split)
        if len(tasks) < 3:
            return f"fewer than 3 tasks among the test models ({len(tasks)})"
        if not usable_relations(ms, tasks):
            return f"no relation matrix with varying off-diagonal entries (the set has {sorted(ms.relations) or 'none'})"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        ids = test_ids(split)
        names = self._tasks(ms, split)
        sim = method.similarity(ms, ids, ids).numpy().astype(np.float64)
        matrix = task_similarity(sim, tasks_of(ms, ids), names)
        # A symmetric score: the method's view of (a, b) and (b, a) is averaged.
        matrix = (matrix + matrix.T) / 2
        off = ~np.eye(len(names), dtype=bool) & np.isfinite(matrix)
        found: dict[str, float] = {}
        relations = usable_relations(ms, names)
        per_task: dict[str, list[float]] = {}
        for name, truth in relations.items():
            found[f"pooled_spearman_{name}"] = metrics.spearman(matrix[off], truth[off])
            # Per task: does the method order the other tasks as the relation does?
            per_task[f"spearman_{name}"] = [metrics.spearman(matrix[i, off[i]], truth[i, off[i]]) for i in range(len(names))]
        rows = np.asarray(list(per_task.values()), dtype=np.float64)
        per_task["spearman_mean"] = [metrics.nanmean(rows[:, i]) for i in range(len(names))]
        units = metrics.per_unit(names, **per_task)
        found.update({name: metrics.nanmean(values) for name, values in units["metrics"].items()})
        curves = {
            "per_unit": units,
            "tasks": names,
            "matrix": np.round(np.nan_to_num(matrix), 5).tolist(),
            "truth": {k: np.round(v, 5).tolist() for k, v in relations.items()},
        }
        return found, curves
