"""Baseline: cosine of the flattened parameter vectors, without any alignment of hidden units.

Permuting a network's hidden units leaves its function unchanged but scrambles this vector,
which is the failure LPS is built to avoid.
"""

from __future__ import annotations

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet
from modelset.weights import WeightSpace, load_spaces, one_per_signature


def flat_parameters(space: WeightSpace) -> torch.Tensor:
    """Every stored value of the ``B`` models, ``(B, n)`` float32: each layer's weight then bias in
    network order, then the other tensors (batch norms, variants' extras) by name."""
    parts = [t for layer in space.layers for t in (layer.weight, layer.bias) if t is not None]
    parts += [space.extras[k] for k in sorted(space.extras)]
    return torch.cat([t.reshape(space.batch_size, -1).float() for t in parts], dim=1)


@register_method
class FlatCosine(SimilarityMethod):
    """Embedding: every stored tensor flattened (:func:`flat_parameters`) and concatenated,
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
        self.width = max(flat_parameters(space).shape[1] for space in one_per_signature(ms, fold_norms=False))

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        width = self.width
        out = torch.zeros(len(ids), width)
        for positions, space in load_spaces(ms, ids, checkpoint, fold_norms=False):
            flat = flat_parameters(space)[:, :width]
            out[torch.as_tensor(positions), : flat.shape[1]] = flat
        return out
