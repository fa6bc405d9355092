"""Ablation: the LPS second-order features without any learning.

The permutation-invariant features of ``lps.features`` (unit-trace Gram matrices chained along the
layers, and per-layer statistics) are standardised with the training models' mean and standard
deviation, each feature block is weighted by ``1/√size`` so a large Gram does not drown the small
blocks, and models are compared by cosine. What LPS adds over this is the learned network.
"""

from __future__ import annotations

import math

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet


def lps_feature_blocks(ms: ModelSet, ids: list[str], checkpoint: str = "final") -> list[dict[str, torch.Tensor]]:
    """Per model, ``{feature key: flat tensor}`` from ``lps.features`` (keys vary by architecture)."""
    from lps.features import compute_features
    from lps.weights import WeightSpace

    out: list[dict[str, torch.Tensor]] = [{} for _ in ids]
    for chunk, stacked in ms.iter_by_signature(ids, checkpoint, chunk_size=512):
        features = compute_features(WeightSpace.from_stacked(chunk.architecture, chunk.arch_kwargs, stacked)).flat()
        for j, pos in enumerate(chunk.positions):
            out[pos] = {k: v[j].reshape(-1).float() for k, v in features.items()}
    return out


@register_method
class SecondOrderFixed(SimilarityMethod):
    """Embedding: standardised, block-weighted LPS features ``(n, Σ block sizes)``."""

    meta = MethodMeta(
        name="second_order_fixed",
        learned=False,
        needs_data=False,
        invariances=("permutation", "scale"),
        reference="LPS features without learning (Wang et al. 2019, arXiv 1907.11943): ablation",
        description="LPS second-order features, standardised, cosine; no training",
    )

    def _vectorise(self, blocks: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        rows = []
        for feats in blocks:
            parts = []
            for key, size in self.schema:
                value = feats.get(key)
                parts.append(value if value is not None and value.numel() == size else torch.full((size,), float("nan")))
            rows.append(torch.cat(parts))
        return torch.stack(rows)

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        blocks = lps_feature_blocks(ms, train_ids)
        sizes: dict[str, int] = {}
        for feats in blocks:
            for key, value in feats.items():
                sizes.setdefault(key, value.numel())
        self.schema = sorted(sizes.items())
        x = self._vectorise(blocks)
        present = ~torch.isnan(x)
        self.mean = torch.nansum(x, dim=0) / present.sum(dim=0).clamp_min(1)
        centred = torch.where(present, x - self.mean, torch.zeros(()))
        std = (centred.pow(2).sum(dim=0) / present.sum(dim=0).clamp_min(1)).sqrt()
        self.std = torch.where(std > 1e-8, std, torch.ones(()))
        self.weight = torch.cat([torch.full((size,), 1 / math.sqrt(size)) for _, size in self.schema])

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        x = (self._vectorise(lps_feature_blocks(ms, ids, checkpoint)) - self.mean) / self.std
        # Features a model's architecture does not have count as "average" (zero after standardising).
        return torch.nan_to_num(x, nan=0.0) * self.weight
