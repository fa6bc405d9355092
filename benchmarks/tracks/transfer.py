"""Track: transfer source selection. For each held-out target task, every base model of another
task is a candidate source; a method ranks candidates by their mean similarity to the target
task's models. The ranking is compared with the measured transfer gain of fine-tuning from the
candidate's task to the target (``ms.relations["transfer_affinity"]``, rows = source task,
columns = target task): Kendall τ-b, and the top-1 regret (best achievable gain minus the gain of
the top-ranked candidate). Averaged over target tasks. The result also records the ground truth's
test-retest reliability (``relation_reliability`` in the set's header: two independent halves of
the measurement, Spearman-Brown corrected), which the leaderboard shows beside the column.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from benchmarks.tracks._registry import Track, TrackMeta, register_track, tasks_of
from lps.splits import Split
from modelset.reader import ModelSet

RELATION = "transfer_affinity"


@register_track
class TransferSelection(Track):
    meta = TrackMeta(
        name="transfer",
        description="rank source models for each held-out target task; Kendall tau vs measured transfer gain, top-1 regret",
        primary=("kendall_tau", "regret"),
        lower_is_better=("regret",),
        reference="Taskonomy-style transfer affinity (Zamir et al. 2018); Achille et al. 2019 model selection",
        labels={"kendall_tau": "transfer τ", "regret": "regret"},
        order=70,
        reliability="ground_truth_reliability",
    )

    def _targets(self, ms: ModelSet, split: Split) -> list[str]:
        if RELATION not in ms.relations:
            return []
        known = set(ms.relations[RELATION].index)
        return [t for t in split.heldout_tasks if t in known]

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        if RELATION not in ms.relations:
            return f"the set has no {RELATION!r} relation (it has {sorted(ms.relations) or 'none'})"
        if not self._targets(ms, split):
            return f"no held-out task appears in {RELATION!r}"
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        affinity = ms.relations[RELATION]
        table = ms.metadata
        base = table.index[table["variant"].astype(str) == "base"] if "variant" in table else table.index
        base = sorted(str(m) for m in base)
        base_tasks = tasks_of(ms, base)
        taus, regrets, per_target = [], [], {}
        for target in self._targets(ms, split):
            targets = [m for m, t in zip(base, base_tasks) if t == target]
            candidates = [m for m, t in zip(base, base_tasks) if t != target and t in affinity.index]
            if not targets or len(candidates) < 2:
                continue
            scores = method.similarity(ms, candidates, targets).numpy().astype(np.float64).mean(axis=1)
            gain = affinity.loc[tasks_of(ms, candidates), target].to_numpy(dtype=np.float64)
            tau = metrics.kendall_tau(scores, gain)
            regret = float(gain.max() - gain[int(np.argmax(scores))])
            taus.append(tau)
            regrets.append(regret)
            per_target[target] = {"kendall_tau": tau, "regret": regret, "candidates": len(candidates)}
        targets = sorted(per_target)
        units = metrics.per_unit(targets, kendall_tau=[per_target[t]["kendall_tau"] for t in targets],
                                 regret=[per_target[t]["regret"] for t in targets])  # fmt: skip
        reliability = (ms.header.get("relation_reliability") or {}).get(RELATION) or {}
        return (
            {
                **{name: metrics.nanmean(values) for name, values in units["metrics"].items()},
                "targets": len(regrets),
                # The ground truth's own test-retest reliability bounds what any method can reach.
                "ground_truth_reliability": float(reliability.get("spearman_brown", float("nan"))),
            },
            {"per_unit": units, "per_target": per_target},
        )
