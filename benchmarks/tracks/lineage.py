"""Track: lineage recovery (Horwitz et al. 2024, "Unsupervised Model Tree Heritage Recovery",
MoTHer): where a model came from, from its weights.

- **Parent.** Each variant of a held-out task (``parent_id`` set: pruned, sparse or adapted from a
  base model) is a query; the gallery is every base model of the set with the query's
  architecture, ranked by the method's similarity; relevant is the base model the variant's family
  descends from. Rank-1 and mAP (scikit-learn average precision per query). No held-out-task
  model, variant or parent, was fit on; variants of held-out recipe families are never fit on
  either (they are outside the split's ``train_ids``).
- **Order.** For the checkpoints of one training run of a base model (``init``, ``epoch_{e}``,
  ``final``), which is later. The shared learner (:mod:`benchmarks.tracks._predict`) is fit to the epoch of every
  checkpoint of the training models' runs and predicts the epoch of the held-out runs'
  checkpoints; a run is scored by the fraction of its checkpoint pairs in the right order (a tie
  counts one half). The same learner for every method, so no method's similarity scale matters.

Both are reported per held-out task (the intervals' unit) and averaged over tasks. On a model fold
(no held-out task: an imported zoo split by runs) the fold's held-out models take the place of the
held-out tasks' models, and the unit is a task in one fold.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._predict import PROTOCOL, Item, Learner, checkpoint_reason, scored_ids, units
from benchmarks.tracks._registry import Track, TrackMeta, TrackOutcome, register_track
from lps.splits import Split, family_roots
from modelset.reader import ModelSet

_EPOCH = re.compile(r"^epoch_(\d+)$")


def _is_base(ms: ModelSet) -> pd.Series:
    table = ms.metadata
    if "variant" in table.columns:
        return table["variant"].astype(str) == "base"
    return table["parent_id"].fillna("").astype(str) == ""


def parent_queries(ms: ModelSet, ids: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Variant id → the base model its family descends from, for the variants among ``ids`` whose
    root is a base model of the set."""
    table = ms.metadata
    if "parent_id" not in table.columns:
        return {}
    parent = table["parent_id"].fillna("").astype(str)
    roots = family_roots(table)
    base = _is_base(ms)
    out = {}
    for mid in ids:
        mid = str(mid)
        if parent[mid] in table.index and not base[mid] and base.get(roots[mid], False):
            out[mid] = roots[mid]
    return out


def checkpoint_epochs(ms: ModelSet, ids: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """Every checkpoint of ``ids`` whose epoch is known, ``model_id``, ``checkpoint``, ``epoch``:
    from ``ms.checkpoint_table`` where recorded, else from the name (``init`` 0, ``epoch_{e}`` e,
    ``final`` the model's ``epochs`` column, or one past its last named epoch)."""
    recorded = ms.checkpoint_table.set_index(["model_id", "checkpoint"])["epoch"].to_dict()
    epochs = (pd.to_numeric(ms.metadata["epochs"], errors="coerce")
              if "epochs" in ms.metadata.columns else pd.Series(np.nan, index=ms.metadata.index))  # fmt: skip
    rows = []
    for mid in ids:
        mid = str(mid)
        named: dict[str, float] = {}
        for name in str(ms.metadata.at[mid, "checkpoints"]).split(","):
            match = _EPOCH.match(name)
            if (mid, name) in recorded:
                named[name] = float(recorded[(mid, name)])
            elif name == "init":
                named[name] = 0.0
            elif match:
                named[name] = float(match.group(1))
            elif name == "final":
                named[name] = float("nan")
        if "final" in named and np.isnan(named["final"]):
            known = [v for k, v in named.items() if k != "final"]
            e = float(epochs[mid])
            named["final"] = e if np.isfinite(e) and (not known or e > max(known)) else (max(known) + 1 if known else np.nan)
        rows += [(mid, name, e) for name, e in named.items() if np.isfinite(e)]
    return pd.DataFrame(rows, columns=["model_id", "checkpoint", "epoch"])


def runs(ms: ModelSet, ids: list[str] | tuple[str, ...]) -> pd.DataFrame:
    """The checkpoints (see :func:`checkpoint_epochs`) of the base models among ``ids`` with at
    least two checkpoints of different epochs: the runs whose order can be scored.

    Variants are left out: a fine-tuned variant's ``init`` is its parent's trained weights (STR
    and magnitude pruning start there), so its epoch 0 would contradict the parent's final epoch.
    """
    base = _is_base(ms)
    table = checkpoint_epochs(ms, [m for m in ids if base[str(m)]])
    spread = table.groupby("model_id")["epoch"].transform("nunique")
    return table[spread >= 2].reset_index(drop=True)


def _held(split: Split) -> str:
    return "held-out-task" if split.unit == "task" else "held-out"


def _items(frame: pd.DataFrame) -> list[Item]:
    return list(zip(frame["model_id"].astype(str), frame["checkpoint"].astype(str)))


@register_track
class Lineage(Track):
    meta = TrackMeta(
        name="lineage",
        description=(
            "parent of each held-out-task variant among the base models of its architecture (rank-1, mAP); "
            "which of two checkpoints of a held-out run is later, by one shared learner (pairwise accuracy)"
        ),
        primary=("rank1", "map", "order_accuracy"),
        reference="Horwitz et al. 2024, Unsupervised Model Tree Heritage Recovery (MoTHer)",
        config=dict(PROTOCOL),
        labels={"rank1": "parent rank-1", "map": "parent mAP", "order_accuracy": "checkpoint order"},
        order=100,
    )

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if parent_queries(ms, scored_ids(split)):
            return ""
        if not runs(ms, split.train_ids).empty and not runs(ms, scored_ids(split)).empty:
            return ""
        return f"no {_held(split)} variant with a base-model parent, and no held-out run with two or more checkpoints"

    def evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> TrackOutcome:
        if not self.not_applicable(ms, split) and not parent_queries(ms, scored_ids(split)):
            items = _items(runs(ms, split.train_ids)) + _items(runs(ms, scored_ids(split)))
            reason = checkpoint_reason(method, items, "checkpoint order")
            if reason:
                return TrackOutcome("not_applicable", reason=f"no {_held(split)} variant with a parent; {reason}")
        return super().evaluate(method, ms, split)

    def _parents(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[list[str], dict[str, np.ndarray]]:
        queries = parent_queries(ms, scored_ids(split))
        ids = sorted(queries)
        out = {name: np.full(len(ids), np.nan) for name in ("rank1", "map", "chance_rank1", "chance_map", "gallery")}
        if not ids:
            return ids, out
        arch = ms.metadata["architecture"].astype(str)
        base = _is_base(ms)
        position = {q: i for i, q in enumerate(ids)}
        for architecture in sorted(set(arch[ids])):
            group = [q for q in ids if arch[q] == architecture]
            gallery = sorted(str(m) for m in ms.metadata.index[(base & (arch == architecture)).to_numpy()])
            sim = method.similarity(ms, group, gallery).numpy().astype(np.float64)
            relevant = np.asarray(gallery)[None, :] == np.asarray([queries[q] for q in group])[:, None]
            rows = [position[q] for q in group]
            out["rank1"][rows] = metrics.cmc_hits(relevant, sim, 1)[:, 0]
            out["map"][rows] = metrics.average_precisions(relevant, sim)
            out["chance_rank1"][rows] = 1.0 / len(gallery)
            out["chance_map"][rows] = metrics.expected_random_ap(1, len(gallery))
            out["gallery"][rows] = len(gallery)
        return ids, out

    def _order(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[list[str], np.ndarray, str, str]:
        train, test = runs(ms, split.train_ids), runs(ms, scored_ids(split))
        if train.empty or test.empty:
            held = "the held-out tasks" if split.unit == "task" else "the held-out models"
            return [], np.zeros(0), f"no run with two or more checkpoints in the training models or {held}", ""
        reason = checkpoint_reason(method, _items(train) + _items(test), "checkpoint order")
        if reason:
            return [], np.zeros(0), reason, ""
        learner = Learner(method, ms, split.seed, self.config)
        predicted = learner.regress(_items(train), train["epoch"].to_numpy(dtype=float), _items(test))
        ids = sorted(test["model_id"].unique())
        model = test["model_id"].to_numpy()
        scores = np.array([
            metrics.pairwise_order_accuracy(test["epoch"].to_numpy(dtype=float)[model == m], predicted[model == m]) for m in ids
        ])  # fmt: skip
        return ids, scores, "", learner.kind

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        queries, parents = self._parents(method, ms, split)
        run_ids, order, order_reason, learner = self._order(method, ms, split)
        n_q, n_r = len(queries), len(run_ids)
        per_unit = units(
            ms, split, list(queries) + list(run_ids),
            rank1=np.concatenate([parents["rank1"], np.full(n_r, np.nan)]),
            map=np.concatenate([parents["map"], np.full(n_r, np.nan)]),
            order_accuracy=np.concatenate([np.full(n_q, np.nan), order]),
        )
        found: dict[str, float] = {name: metrics.nanmean(values) for name, values in per_unit["metrics"].items()}
        found |= {
            "chance_rank1": metrics.nanmean(parents["chance_rank1"]),
            "chance_map": metrics.nanmean(parents["chance_map"]),
            "mean_gallery": metrics.nanmean(parents["gallery"]),
            "n_queries": n_q,
            "n_runs": n_r,
            "pooled_order_accuracy": metrics.nanmean(order),
        }
        curves: dict[str, Any] = {"per_unit": per_unit, "learner": learner}
        if not queries:
            curves["parent_not_applicable"] = f"no {_held(split)} variant with a base-model parent"
        if order_reason:
            curves["order_not_applicable"] = order_reason
        return found, curves
