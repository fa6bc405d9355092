"""Track: retrieval among models of held-out tasks (never seen in training).

Each held-out-task model queries all the others; the relevant ones solve the same task. Reports
mAP and CMC rank-1 and rank-5, each the mean over held-out tasks of its queries' values, with the CMC curve and a 2-D map of the method's embeddings of all
test models (held-out models and held-out-task models) coloured by task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import (
    Plot,
    Track,
    TrackMeta,
    embedding_map,
    register_track,
    tasks_of,
    test_ids,
    without_self,
)
from lps.splits import Split
from modelset.reader import ModelSet


@register_track
class Retrieval(Track):
    meta = TrackMeta(
        name="retrieval",
        description="held-out tasks: each model queries the rest; mAP, CMC rank-1 and rank-5",
        primary=("map", "rank1", "rank5"),
        reference="Wang et al. 2019 (LPS) held-out-task retrieval",
        config={"max_rank": 10},
        labels={"map": "mAP", "rank1": "rank-1", "rank5": "rank-5"},
        order=30,
        plots=(
            Plot("cmc", "Retrieval CMC curves", "Fraction of held-out-task queries with a same-task model among the top k."),
            Plot("embedding_map", "Embedding map: {method}",
                 "PCA of unit-norm embeddings of every test model (held-out models and held-out tasks).",
                 prefer=("lps", "lps_contrastive")),
        ),
    )

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if len(set(tasks_of(ms, split.heldout_task_ids))) < 2 if split.heldout_task_ids else True:
            return "fewer than 2 held-out tasks"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        ids = list(split.heldout_task_ids)
        tasks = tasks_of(ms, ids)
        sim = without_self(method.similarity(ms, ids, ids).numpy().astype(np.float64))
        relevant = without_self(tasks[:, None] == tasks[None, :])
        hits = metrics.cmc_hits(relevant, sim, int(self.config["max_rank"]))
        aps = metrics.average_precisions(relevant, sim)
        rank5 = hits[:, min(4, hits.shape[1] - 1)]
        units = metrics.per_unit(tasks, map=aps, rank1=hits[:, 0], rank5=rank5)
        # Chance mAP: the exact expected AP of a random ranking, averaged over the queries.
        chance = float(np.mean([metrics.expected_random_ap(r, relevant.shape[1]) for r in relevant.sum(axis=1) if r]))
        curve = metrics.cmc(relevant, sim, int(self.config["max_rank"]))
        return (
            {
                **{name: metrics.nanmean(values) for name, values in units["metrics"].items()},
                "chance_map": chance,
                "n_queries": len(ids),
            },
            {
                "per_unit": units,
                "cmc": {"rank": list(range(1, len(curve) + 1)), "hit_rate": [round(float(v), 6) for v in curve]},
                "map2d": embedding_map(method, ms, test_ids(split)),
            },
        )
