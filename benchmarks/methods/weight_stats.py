"""Baseline: per-layer weight statistics (Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights"), compared by cosine.

Each layer's weights and biases are summarised by their mean, variance and the 0, 25, 50, 75 and
100 % quantiles: 14 numbers per layer that do not change when hidden units are permuted.
"""

from __future__ import annotations

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet
from modelset.weights import WeightSpace, load_spaces, one_per_signature

QUANTILES = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
STATS_PER_LAYER = 14


def _stats(values: torch.Tensor) -> torch.Tensor:
    v = values.reshape(-1).double()
    return torch.cat([v.mean()[None], v.var(unbiased=False)[None], torch.quantile(v, QUANTILES.double())]).float()


def max_layers(ms: ModelSet) -> int:
    """The largest number of layers (convolutions and linear maps) of any model of the set."""
    return max(len(space.layers) for space in one_per_signature(ms, fold_norms=False))


def weight_statistics(space: WeightSpace, n_layers: int) -> torch.Tensor:
    """Features ``(B, n_layers * 14)`` of a weight space's ``B`` models (its layers in network
    order, batch norms not folded): per layer, 7 statistics of its weights then of its bias (a
    missing bias counts as zeros).

    Layers beyond the model's depth are zero; a deeper model's extra layers are dropped, except
    that the classifier head always fills the last slot so heads are compared with heads.
    """
    found = list(space.layers)
    if len(found) > n_layers:
        found = found[: n_layers - 1] + found[-1:]
    out = torch.zeros(space.batch_size, n_layers, STATS_PER_LAYER)
    slots = list(range(len(found) - 1)) + [n_layers - 1]
    for slot, layer in zip(slots, found):
        for b in range(space.batch_size):
            bias = layer.bias[b] if layer.bias is not None else torch.zeros(layer.out_features)
            out[b, slot] = torch.cat([_stats(layer.weight[b].float()), _stats(bias.float())])
    return out.reshape(space.batch_size, -1)


@register_method
class WeightStats(SimilarityMethod):
    """Embedding: standardised per-layer statistics (mean and std from the training models)."""

    meta = MethodMeta(
        name="weight_stats",
        learned=False,
        needs_data=False,
        invariances=("permutation",),
        reference="Unterthiner et al. 2020, Predicting Neural Network Accuracy from Weights",
        description="per-layer mean, variance, quantiles; cosine",
    )

    def features(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        """Raw statistics ``(len(ids), n_layers * 14)``."""
        out = torch.zeros(len(ids), self.n_layers * STATS_PER_LAYER)
        for positions, space in load_spaces(ms, ids, checkpoint, fold_norms=False):
            out[torch.as_tensor(positions)] = weight_statistics(space, self.n_layers)
        return out

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        self.n_layers = max_layers(ms)
        train = self.features(ms, train_ids)
        self.mean = train.mean(dim=0)
        # Constant features (empty slots) get unit scale so they stay zero instead of dividing by 0.
        self.std = train.std(dim=0).clamp_min(1e-8).where(train.std(dim=0) > 1e-8, torch.ones(1))

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        return (self.features(ms, ids, checkpoint) - self.mean) / self.std
