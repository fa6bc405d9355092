"""Control: the task-label oracle. It reads the task column of the model table, so it must reach
the maximum wherever the ground truth is "same task"."""

from __future__ import annotations

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet


@register_method
class TaskOracle(SimilarityMethod):
    """One-hot embedding of each model's task: similarity 1 for the same task, else 0."""

    meta = MethodMeta(
        name="oracle",
        learned=False,
        needs_data=False,
        control=True,
        invariances=("permutation", "scale", "sparsity", "architecture", "function"),
        reference="control: reads the task label from the model table",
        description="one-hot task label (upper bound on task tracks)",
        privileged=True,
    )

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        tasks = sorted(ms.metadata["task"].astype(str).unique())
        lookup = {t: i for i, t in enumerate(tasks)}
        out = torch.zeros(len(ids), len(tasks))
        for row, mid in enumerate(ids):
            out[row, lookup[str(ms.metadata.at[mid, "task"])]] = 1.0
        return out
