"""Track: variant robustness. The query is a compressed or adapted variant (STR, GMP, channel
similarity, L1 filter pruning, shape adaptor, NSL, ...: the table's ``variant`` column, with a
``parent_id``), the gallery is every base model outside the query's own family (its parent is not
in the gallery, so recognising its own parent does not count). Relevant: base models of the
query's task. Reported overall and per variant family: rank-1 and mAP.

Only variants whose family was not fit on are queries. The track also records the zoo's
accuracy-vs-FLOPs points per family (``flops``, ``test_accuracy`` columns) so the leaderboard can
plot them from result files alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Plot, Track, TrackMeta, register_track, tasks_of
from lps.splits import Split, family_roots
from modelset.reader import ModelSet


def _base(ms: ModelSet) -> pd.Series:
    return ms.metadata["variant"].astype(str) == "base"


def variant_queries(ms: ModelSet, split: Split) -> list[str]:
    """Variant model ids (with a parent in the set) whose family was not fit on."""
    table = ms.metadata
    if "variant" not in table or "parent_id" not in table:
        return []
    parent = table["parent_id"].astype(str).fillna("")
    is_variant = ~_base(ms) & parent.isin(table.index)
    train = set(split.train_ids)
    return sorted(str(m) for m in table.index[is_variant] if m not in train)


def tradeoff_points(ms: ModelSet) -> dict[str, Any]:
    """Per family ("base" included): lists of FLOPs and test accuracy of its models, for plotting."""
    table = ms.metadata
    if not {"variant", "flops", "test_accuracy"} <= set(table.columns):
        return {}
    out = {}
    for family, group in table.groupby(table["variant"].astype(str)):
        g = group[["flops", "test_accuracy"]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(g):
            out[str(family)] = {"flops": g["flops"].astype(float).tolist(), "accuracy": g["test_accuracy"].round(5).tolist()}
    return out


@register_track
class VariantRobustness(Track):
    meta = TrackMeta(
        name="variant_robustness",
        description="query: a variant model; gallery: base models outside its family; rank-1 and mAP per family",
        primary=("rank1", "map"),
        reference="variants of Kusupati et al. 2020, Zhang et al. 2019, Liu et al. 2020, Liu et al. 2019",
        labels={"rank1": "variant rank-1", "map": "variant mAP"},
        order=50,
        plots=(Plot("tradeoff", "Variants: accuracy vs FLOPs",
                    "Each dot a model of the zoo, each cross a family's mean (from the model table)."),),
    )

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if "variant" not in ms.metadata or "parent_id" not in ms.metadata:
            return "the model table has no variant / parent_id columns"
        if not variant_queries(ms, split):
            return "no variant models (variant != 'base' with a parent in the set) outside the training families"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        queries = variant_queries(ms, split)
        gallery = sorted(str(m) for m in ms.metadata.index[_base(ms)])
        roots = family_roots(ms.metadata)
        sim = method.similarity(ms, queries, gallery).numpy().astype(np.float64)
        q_tasks, g_tasks = tasks_of(ms, queries), tasks_of(ms, gallery)
        q_roots = np.array([roots[q] for q in queries])
        g_roots = np.array([roots[g] for g in gallery])
        own = q_roots[:, None] == g_roots[None, :]
        # Excluding the own family: push it below every other gallery item and mark it irrelevant.
        sim = np.where(own, sim.min() - 1.0, sim)
        relevant = (q_tasks[:, None] == g_tasks[None, :]) & ~own
        families = ms.metadata.loc[queries, "variant"].astype(str).to_numpy()
        hits = metrics.cmc_hits(relevant, sim, 1)[:, 0]
        aps = metrics.average_precisions(relevant, sim)
        units = metrics.per_unit(q_tasks, rank1=hits, map=aps)
        found: dict[str, float] = {name: metrics.nanmean(values) for name, values in units["metrics"].items()}
        found["n_queries"] = len(queries)
        per_family = {}
        for family in sorted(set(families)):
            rows = families == family
            per_family[family] = {"rank1": metrics.nanmean(hits[rows]), "map": metrics.nanmean(aps[rows]), "n": int(rows.sum())}
            found[f"rank1_{family}"] = per_family[family]["rank1"]
        return found, {"per_unit": units, "per_family": per_family, "tradeoff": tradeoff_points(ms)}
