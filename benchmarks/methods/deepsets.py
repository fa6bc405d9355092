"""Baseline: a learned permutation-invariant encoder of weights in the style of deep sets and
neural functionals (Zaheer et al. 2017; Zhou et al. 2023, "Permutation Equivariant Neural
Functionals").

Each layer is a *set* of neurons. A neuron is described by features that do not depend on the
order of the neurons around it: quantiles of its incoming weights, its bias, and quantiles of its
outgoing weights (the column of the next layer). A shared MLP ``φ`` encodes every neuron, mean and
max pooling over the neurons of a layer give a layer code, and an MLP ``ρ`` over the layer codes
gives the embedding. Permuting hidden units permutes set elements only, so the embedding is
exactly unchanged. Trained with a supervised contrastive loss on training-task models.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from benchmarks.methods._train import fit_contrastive, task_labels
from benchmarks.methods.weight_stats import max_layers
from modelset.reader import ModelSet
from modelset.weights import WeightSpace, load_spaces

QUANTILES = torch.linspace(0, 1, 9)
ELEMENT_DIM = 2 * len(QUANTILES) + 3  # incoming quantiles, outgoing quantiles, bias, in/out norms


def neuron_sets(space: WeightSpace, n_layers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per model of the weight space (layers in network order, batch norms not folded), per-neuron
    features ``(n_layers, width_max, ELEMENT_DIM)`` and a mask ``(n_layers, width_max)``.

    A deeper model keeps its first ``n_layers - 1`` layers and its head (in the last slot).
    """
    found = list(space.layers)
    if len(found) > n_layers:
        found = found[: n_layers - 1] + found[-1:]
    out = []
    for b in range(space.batch_size):
        weights = [layer.weight[b].float().reshape(layer.out_features, -1) for layer in found]  # (out, fan_in)
        biases = [
            layer.bias[b].float() if layer.bias is not None else torch.zeros(layer.out_features) for layer in found
        ]
        out.append(_model_sets(weights, biases, n_layers))
    return out


def _model_sets(
    weights: list[torch.Tensor], biases: list[torch.Tensor], n_layers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One model's neuron sets from its layers' weights ``(out, fan_in)`` and biases ``(out,)``."""
    slots = list(range(len(weights) - 1)) + [n_layers - 1]
    sets = []
    for i, w in enumerate(weights):
        incoming = torch.quantile(w, QUANTILES, dim=1).T  # (out, 9), order of inputs does not matter
        if i + 1 < len(weights) and weights[i + 1].shape[1] % w.shape[0] == 0:
            nxt = weights[i + 1]
            # Columns of the next layer that read neuron j (a conv kernel spans several columns).
            outgoing_w = nxt.reshape(nxt.shape[0], w.shape[0], -1).permute(1, 0, 2).reshape(w.shape[0], -1)
        else:
            outgoing_w = torch.zeros(w.shape[0], 1)
        outgoing = torch.quantile(outgoing_w, QUANTILES, dim=1).T
        norms = torch.stack([w.norm(dim=1), outgoing_w.norm(dim=1)], dim=1)
        sets.append(torch.cat([incoming, outgoing, biases[i][:, None], norms], dim=1))
    width = max(s.shape[0] for s in sets)
    feats = torch.zeros(n_layers, width, ELEMENT_DIM)
    mask = torch.zeros(n_layers, width, dtype=torch.bool)
    for slot, s in zip(slots, sets):
        feats[slot, : s.shape[0]] = s
        mask[slot, : s.shape[0]] = True
    return feats, mask


def _pad_batch(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(f.shape[1] for f, _ in items)
    feats = torch.zeros(len(items), items[0][0].shape[0], width, ELEMENT_DIM)
    mask = torch.zeros(len(items), items[0][0].shape[0], width, dtype=torch.bool)
    for i, (f, m) in enumerate(items):
        feats[i, :, : f.shape[1]] = f
        mask[i, :, : f.shape[1]] = m
    return feats, mask


class DeepSetEncoder(nn.Module):
    """``(B, L, W, E)`` neuron features with mask ``(B, L, W)`` → embeddings ``(B, dim)``."""

    def __init__(self, n_layers: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(ELEMENT_DIM, elementwise_affine=False)
        self.slot = nn.Parameter(torch.zeros(n_layers, hidden))  # which layer a neuron belongs to
        self.phi = nn.Sequential(nn.Linear(ELEMENT_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.rho = nn.Sequential(nn.Linear(2 * n_layers * hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.phi(self.norm(feats)) + self.slot[None, :, None, :])
        m = mask[..., None].float()
        count = m.sum(dim=2).clamp_min(1.0)
        mean = (h * m).sum(dim=2) / count
        peak = h.masked_fill(~mask[..., None], float("-inf")).amax(dim=2)
        peak = torch.where(mask.any(dim=2, keepdim=True), peak, torch.zeros_like(peak))
        return self.rho(torch.cat([mean, peak], dim=2).flatten(1))


@register_method
class DeepSets(SimilarityMethod):
    """Embedding: ``ρ(pool φ(neuron features))`` ``(n, dim)`` trained on training-task models."""

    meta = MethodMeta(
        name="deepsets",
        learned=True,
        needs_data=False,
        invariances=("permutation",),
        reference="Zaheer et al. 2017 Deep Sets; Zhou et al. 2023 Permutation Equivariant Neural Functionals",
        description="per-neuron features, shared encoder, set pooling per layer; contrastive training",
        config={"hidden": 32, "dim": 32, "steps": 150, "lr": 3e-3, "batch_size": 64},
    )

    def _sets(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> tuple[torch.Tensor, torch.Tensor]:
        items: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(ids)  # type: ignore[list-item]
        for positions, space in load_spaces(ms, ids, checkpoint, fold_norms=False):
            for pos, item in zip(positions, neuron_sets(space, self.n_layers)):
                items[pos] = item
        return _pad_batch(items)

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        self.n_layers = max_layers(ms)
        feats, mask = self._sets(ms, train_ids)
        labels = task_labels(ms.metadata.loc[train_ids, "task"].astype(str).tolist())
        c = self.config
        torch.manual_seed(seed)
        self.encoder = DeepSetEncoder(self.n_layers, int(c["hidden"]), int(c["dim"]))
        self.losses = fit_contrastive(
            self.encoder, lambda idx: self.encoder(feats[idx], mask[idx]), len(train_ids), labels,
            int(c["steps"]), float(c["lr"]), int(c["batch_size"]), seed,
        )

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        out = []
        with torch.no_grad():
            for start in range(0, len(ids), 256):
                feats, mask = self._sets(ms, ids[start : start + 256], checkpoint)
                out.append(self.encoder(feats, mask))
        return torch.cat(out)
