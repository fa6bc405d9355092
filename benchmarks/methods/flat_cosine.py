"""Baseline: cosine of the flattened parameter vectors, without any alignment of hidden units.

Permuting a network's hidden units leaves its function unchanged but scrambles this vector,
which is the failure LPS is built to avoid.
"""

from __future__ import annotations

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from benchmarks.methods._weights import _natural_key, load_states, max_flat_size
from modelset.reader import ModelSet


@register_method
class FlatCosine(SimilarityMethod):
    """Embedding: every tensor of the state dict flattened in natural key order and concatenated,
    zero-padded to the largest model of the set (padding does not change cosines)."""

    meta = MethodMeta(
        name="flat_cosine",
        learned=False,
        needs_data=False,
        invariances=(),
        reference="'no alignment' baseline (Wang et al. 2019, arXiv 1907.11943)",
        description="cosine of flattened raw parameters",
    )

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        self.width = max_flat_size(ms)

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        width = self.width
        out = torch.zeros(len(ids), width)
        for row, state in enumerate(load_states(ms, ids, checkpoint)):
            flat = torch.cat([state[k].reshape(-1).float() for k in sorted(state, key=_natural_key)])
            out[row, : min(width, flat.numel())] = flat[:width]
        return out
