"""Baseline: the weight statistics of Unterthiner et al. 2020 with a learned metric on top.

A small MLP projects the standardised statistics and is trained with a supervised contrastive
loss on models of the training tasks, so similarity reflects which statistics tell tasks apart.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.methods._registry import MethodMeta, register_method
from benchmarks.methods._train import fit_contrastive, task_labels
from benchmarks.methods.weight_stats import WeightStats
from modelset.reader import ModelSet


@register_method
class WeightStatsLearned(WeightStats):
    """Embedding: ``MLP(standardised statistics)`` ``(n, dim)`` fit on training-task models."""

    meta = MethodMeta(
        name="weight_stats_learned",
        learned=True,
        needs_data=False,
        invariances=("permutation",),
        reference="Unterthiner et al. 2020 statistics + supervised contrastive metric (Khosla et al. 2020)",
        description="per-layer statistics, MLP trained with a contrastive loss on training tasks",
        config={"dim": 32, "hidden": 64, "steps": 200, "lr": 3e-3, "batch_size": 128},
    )

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        super()._fit(ms, train_ids, seed)
        x = (self.features(ms, train_ids) - self.mean) / self.std
        labels = task_labels(ms.metadata.loc[train_ids, "task"].astype(str).tolist())
        torch.manual_seed(seed)
        c = self.config
        self.net = nn.Sequential(nn.Linear(x.shape[1], c["hidden"]), nn.ReLU(), nn.Linear(c["hidden"], c["dim"]))
        self.losses = fit_contrastive(
            self.net, lambda idx: self.net(x[idx]), len(x), labels, c["steps"], c["lr"], c["batch_size"], seed
        )

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        with torch.no_grad():
            return self.net(super()._embed(ms, ids, checkpoint))
