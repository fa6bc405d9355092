"""Learned encoder: a permutation-equivariant neural functional (Zhou et al. 2023, "Permutation
Equivariant Neural Functionals"), built from the ``nfn`` package's layers.

Each model's layers (``lps.weights.WeightSpace``, network order) become an ``nfn``
``WeightSpaceFeatures`` with one channel: convolution weights ``(B, 1, out, in, kh, kw)``, the
head ``(B, 1, out, in)``, biases ``(B, 1, out)``. Two NP layers (``NPLinear``, equivariant to
permutations of every layer's units, input and output ones included) with ReLUs, the invariant
``NPPool`` and an MLP give the embedding. NP rather than HNP layers: HNP's parameters are tied to
the number of input channels and classes, and one set holds 2-way and 5-way heads. The layers
have no parameter per unit, so one encoder reads every width (pruned twins are narrower); models
are batched per architecture signature.

Only chained weight spaces (``WeightSpace.chain``: ``cnn3`` and its variants) have the
neuron coupling the layers assume; other architectures are refused with
:class:`~benchmarks.methods._registry.MethodNotApplicable`. NSL layers enter with their raw
``weight`` (their extra tensors are not read). Each layer's weights and biases are divided by
their standard deviation over the training models. Trained with the shared supervised
contrastive loss on training-task models.
"""

from __future__ import annotations

import logging

import torch
from nfn.common import WeightSpaceFeatures, network_spec_from_wsfeat
from nfn.layers import NPLinear, NPPool, TupleOp
from torch import nn

from benchmarks.methods._registry import MethodMeta, MethodNotApplicable, SimilarityMethod, register_method
from benchmarks.methods._train import fit_contrastive, task_labels
from lps.weights import WeightSpace
from modelset.reader import ModelSet

log = logging.getLogger(__name__)


def weight_space_features(space: WeightSpace) -> WeightSpaceFeatures:
    """``nfn`` features of a chained weight space: per layer a weight ``(B, 1, out, in[, kh, kw])``
    and a bias ``(B, 1, out)`` (zeros for a layer without one)."""
    weights, biases = [], []
    for layer in space.layers:
        w = layer.weight.to(torch.float32)
        b = layer.bias.to(torch.float32) if layer.bias is not None else w.new_zeros(w.shape[:2])
        weights.append(w.unsqueeze(1))
        biases.append(b.unsqueeze(1))
    return WeightSpaceFeatures(weights, biases)


def layout_key(feats: WeightSpaceFeatures) -> tuple[tuple[int, ...], ...]:
    """What the NP layers' parameters depend on: the number of layers and each one's filter size."""
    return tuple(tuple(w.shape[4:]) for w in feats.weights)


class NFNEncoder(nn.Module):
    """``WeightSpaceFeatures`` of ``B`` models (one channel) → embeddings ``(B, dim)``."""

    def __init__(self, feats: WeightSpaceFeatures, hidden: int, dim: int, depth: int) -> None:
        super().__init__()
        spec = network_spec_from_wsfeat(feats)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [NPLinear(spec, 1 if i == 0 else hidden, hidden), TupleOp(nn.ReLU())]
        self.body = nn.Sequential(*layers)
        self.pool = NPPool(spec)
        width = hidden * NPPool.get_num_outs(spec)
        self.head = nn.Sequential(nn.Linear(width, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, feats: WeightSpaceFeatures) -> torch.Tensor:
        return self.head(self.pool(self.body(feats)).flatten(1))


@register_method
class NFN(SimilarityMethod):
    """Embedding: ``MLP(NPPool(NP layers(weights)))`` ``(n, dim)`` fit on training-task models."""

    meta = MethodMeta(
        name="nfn",
        learned=True,
        needs_data=False,
        invariances=("permutation",),
        reference="Zhou et al. 2023, Permutation Equivariant Neural Functionals (the nfn package)",
        description="NP layers, invariant pooling and an MLP over chained weights; contrastive training",
        config={"hidden": 8, "dim": 32, "depth": 2, "steps": 100, "lr": 3e-3, "batch_size": 32},
    )
    kernel_threads = 1  # tiny ops: a second thread cost 20x on two busy cores

    def _groups(
        self, ms: ModelSet, ids: list[str], layout: tuple[tuple[int, ...], ...] | None, checkpoint: str = "final"
    ) -> list[tuple[torch.Tensor, WeightSpaceFeatures]]:
        """Per architecture signature: positions ``(b,)`` in ``ids`` and the models' features,
        which must have ``layout`` (see :func:`layout_key`) unless it is ``None``."""
        out = []
        for group in ms.by_signature(ids):
            space = WeightSpace.from_stacked(group.architecture, group.arch_kwargs, ms.stacked(group.ids, checkpoint))
            if not space.chain:
                raise MethodNotApplicable(
                    f"method 'nfn' reads chained weight spaces only (cnn3 and its variants); model "
                    f"{group.ids[0]!r} of {ms.root} is {group.architecture} {group.arch_kwargs} "
                    f"({len(group.ids)} such models among those asked for): leave it out or use a "
                    "method that reads any architecture (weight_stats, deepsets, lps)"
                )
            feats = weight_space_features(space)
            if layout is not None and layout_key(feats) != layout:
                raise MethodNotApplicable(
                    f"method 'nfn' was fit on networks with layers of filter sizes {layout}; model "
                    f"{group.ids[0]!r} of {ms.root} has {layout_key(feats)}: fit it on models of that layout"
                )
            out.append((torch.as_tensor(group.positions, dtype=torch.long), feats))
        return out

    def _scaled(self, feats: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return WeightSpaceFeatures(
            [w / s for w, s in zip(feats.weights, self.weight_scale)],
            [b / s for b, s in zip(feats.biases, self.bias_scale)],
        )

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        groups = self._groups(ms, train_ids, None)
        layouts = {layout_key(f) for _, f in groups}
        if len(layouts) > 1:
            raise MethodNotApplicable(
                f"method 'nfn': the training models of {ms.root} mix layer layouts {sorted(layouts)}; "
                "one encoder reads one layout (same depth and filter sizes)"
            )
        self.layout = layouts.pop()
        n_layers = len(self.layout)
        # One scale per layer (weights, biases), pooled over the training models of every width.
        self.weight_scale = [torch.cat([f.weights[i].flatten() for _, f in groups]).std().clamp_min(1e-8)
                             for i in range(n_layers)]
        self.bias_scale = [torch.cat([f.biases[i].flatten() for _, f in groups]).std().clamp_min(1e-8)
                           for i in range(n_layers)]
        groups = [(pos, self._scaled(f)) for pos, f in groups]
        group_of = torch.empty(len(train_ids), dtype=torch.long)
        row_of = torch.empty(len(train_ids), dtype=torch.long)
        for g, (pos, _) in enumerate(groups):
            group_of[pos], row_of[pos] = g, torch.arange(len(pos))

        c = self.config
        torch.manual_seed(seed)
        self.encoder = NFNEncoder(groups[0][1], int(c["hidden"]), int(c["dim"]), int(c["depth"]))

        def encode(index: torch.Tensor) -> torch.Tensor:
            # Models of one signature share tensor shapes: encode each group, then restore order.
            parts, where = [], []
            for g, (_, feats) in enumerate(groups):
                mine = torch.nonzero(group_of[index] == g).flatten()
                if len(mine):
                    rows = row_of[index[mine]]
                    parts.append(self.encoder(feats.map(lambda t, rows=rows: t[rows])))
                    where.append(mine)
            return torch.cat(parts)[torch.argsort(torch.cat(where))]

        labels = task_labels(ms.metadata.loc[train_ids, "task"].astype(str).tolist())
        self.losses = fit_contrastive(
            self.encoder, encode, len(train_ids), labels, int(c["steps"]), float(c["lr"]), int(c["batch_size"]), seed
        )

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        out = torch.empty(len(ids), int(self.config["dim"]))
        with torch.no_grad():
            for pos, feats in self._groups(ms, ids, self.layout, checkpoint):
                feats = self._scaled(feats)
                for start in range(0, len(pos), 256):
                    part = feats.map(lambda t, s=start: t[s : s + 256])
                    out[pos[start : start + 256]] = self.encoder(part)
        return out
