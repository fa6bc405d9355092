"""Channel-similarity pruning (Zhang, Zhao, Ni, Zhang, Deng 2019, arXiv 1908.02620).

Channels whose outputs are (nearly) the same carry redundant information: keep one per group and
let the next layer read it in place of the whole group. The paper's idea (channels of similar
outputs under a probabilistic model of the inputs, grouped by hierarchical clustering, applied to
a trained model) is followed; **the similarity measure is the project's own derivation**, the
*output-moment distance* below, not the paper's equation, whose text the project could not check.

**The project's output-moment distance.** Treat the kernel window ``x ∈ R^D`` (``D = in·k·k``) that a layer sees as a
random vector with mean ``m`` and covariance ``Σ`` (estimated from the layer's actual inputs on
``n_stats`` training images, over all positions). Channel ``i`` outputs the random variable
``y_i = w_iᵀx + b_i``, whose first two moments are

    E[y_i]   = μ_i = w_iᵀm + b_i,          E[y_i²] = w_iᵀΣw_i + μ_i²,

and the expected squared difference of two channels' outputs is

    E[(y_i - y_j)²] = (w_i - w_j)ᵀ Σ (w_i - w_j) + (μ_i - μ_j)².

We use the scale-free distance ``d_ij = E[(y_i - y_j)²] / (E[y_i²] + E[y_j²])`` in ``[0, 2]``
(similarity ``1 - d_ij``): ``d_ij = 0`` iff the two channels give equal outputs for every input
in the support of the model, ``d_ij = 1`` for uncorrelated zero-mean outputs of equal power,
``d_ij = 2`` for opposite ones. With whitened inputs (``Σ = I``, ``m = 0``) it reduces to a
normalised Euclidean distance between filters (plus biases); the input statistics make directions
the data never excites irrelevant.

**Pruning.** Per layer (in order, each on the already-narrowed network), average-linkage
hierarchical clustering (``scipy.cluster.hierarchy``) of the channels under ``d`` is cut into
exactly ``round(keep_ratio · width)`` clusters (``cut_tree``; ``fcluster``'s ``maxclust`` may return
fewer when merge heights tie); each cluster keeps its highest-power channel
(largest ``E[y²]``), and the next layer's input weights of the cluster are summed onto it so the
next layer receives the representative in place of every member (exact when members are equal).
A short fine-tune follows (``_pruning.finetune``: SGD with momentum, warm-up and cosine schedule,
the same for both twins). The result is a physically narrower ``cnn3``. Baseline: L1-norm filter
pruning to the same channel counts, hence the same FLOPs, fine-tuned in the same regime.

**Deviations from the paper:** the similarity is the project's own output-moment distance, not
the paper's metric; one keep ratio for every layer; a fine-tune of two epochs on the task's images
(SGD, warm-up and cosine) in place of the paper's longer fine-tuning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import cut_tree, linkage
from scipy.spatial.distance import squareform

from builders.variants._common import Parent, Regime, TaskTensors, VariantError, finish_model, variant_id
from builders.variants._pruning import FINETUNE_REGIME, check_prunable, finetune, merge_layer, narrow_kwargs
from builders.variants._registry import Comparison, RecipeMeta, register_recipe
from builders.variants.l1_filter import l1_prune
from modelset.architectures import build_architecture
from modelset.writer import ModelRecord

log = logging.getLogger(__name__)


def window_moments(
    inputs: torch.Tensor, kernel: int, stride: int, padding: int, max_rows: int = 50_000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and covariance ``(D, D)`` of the kernel windows of ``inputs`` ``(N, C, H, W)``."""
    patches = F.unfold(inputs, kernel, padding=padding, stride=stride)  # (N, D, L)
    rows = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
    if len(rows) > max_rows:
        idx = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_rows]
        rows = rows[idx]
    mean = rows.mean(0)
    centred = rows - mean
    return mean, centred.T @ centred / max(1, len(rows) - 1)


def output_moments(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel output means ``μ`` ``(C,)`` and the Gram ``G = WΣWᵀ`` ``(C, C)`` (float64)."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    mean, cov = mean.detach().double(), cov.detach().double()
    return w @ mean + bias.detach().double(), w @ cov @ w.T


def channel_distances(
    weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor
) -> np.ndarray:
    """The distance ``d_ij`` of the module docstring between output channels, ``(C, C)``."""
    mu, gram = output_moments(weight, bias, mean, cov)
    var = torch.diagonal(gram)
    diff = var[:, None] + var[None, :] - 2 * gram + (mu[:, None] - mu[None, :]) ** 2
    power = var + mu**2
    d = diff.clamp_min(0) / (power[:, None] + power[None, :]).clamp_min(1e-12)
    d = 0.5 * (d + d.T)
    d.fill_diagonal_(0.0)
    return d.numpy()


def cluster_channels(distance: np.ndarray, power: np.ndarray, n_keep: int) -> list[list[int]]:
    """Groups ``[representative, *members]`` from average-linkage clustering into ``n_keep``.

    The representative is the member with the largest output power; groups are ordered by it.
    """
    n = len(distance)
    if n_keep >= n:
        return [[i] for i in range(n)]
    tree = linkage(squareform(distance, checks=False), method="average")
    labels = cut_tree(tree, n_clusters=n_keep).ravel()
    groups = []
    for label in np.unique(labels):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        rep = max(members, key=lambda i: (power[i], -i))
        groups.append([rep, *[m for m in members if m != rep]])
    return sorted(groups, key=lambda g: g[0])


def layer_inputs(model: torch.nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """The input tensor that ``conv{layer+1}`` receives when ``model`` runs on ``x``."""
    captured: list[torch.Tensor] = []
    conv = getattr(model, f"conv{layer + 1}")
    handle = conv.register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
    return captured[0]


def similarity_prune(
    architecture: str,
    arch_kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    x_stats: torch.Tensor,
    n_keep: list[int],
) -> tuple[dict[str, torch.Tensor], list[int], list[list[list[int]]]]:
    """Cluster and merge every layer of a ``cnn3``; returns weights, channel counts, groups."""
    kwargs = dict(arch_kwargs)
    channels = [int(c) for c in kwargs.get("channels", (16, 16, 16))]
    strides = [int(s) for s in kwargs.get("strides", (2, 2, 1))]
    sd = {k: v.clone() for k, v in state_dict.items()}
    all_groups = []
    for layer in range(len(channels)):
        model = build_architecture(architecture, {**kwargs, "channels": channels})
        model.load_state_dict(sd, strict=True)
        mean, cov = window_moments(layer_inputs(model, layer, x_stats), 3, strides[layer], 1)
        weight, bias = sd[f"conv{layer + 1}.weight"], sd[f"conv{layer + 1}.bias"]
        mu, gram = output_moments(weight, bias, mean, cov)
        power = (torch.diagonal(gram) + mu**2).numpy()
        groups = cluster_channels(channel_distances(weight, bias, mean, cov), power, n_keep[layer])
        sd = merge_layer(sd, layer, len(channels), groups)
        channels[layer] = len(groups)
        all_groups.append(groups)
    return sd, channels, all_groups


def channel_sim_prune(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    keep_ratio: float,
    *,
    n_stats: int = 256,
    regime: Regime,
) -> ModelRecord:
    """Prune every layer of the parent to ``round(keep_ratio · width)`` clusters, then fine-tune."""
    widths = check_prunable(parent)
    if not 0.0 < keep_ratio <= 1.0:
        raise VariantError(f"channel pruning of {parent.model_id!r}: keep_ratio must be in (0, 1], got {keep_ratio}")
    x_stats, _ = data.train_subset(n_stats, seed)
    n_keep = [max(1, round(keep_ratio * w)) for w in widths]
    sd, channels, groups = similarity_prune(
        parent.architecture, parent.arch_kwargs, parent.state_dict, x_stats, n_keep
    )
    kwargs = narrow_kwargs(parent, channels)
    sd, row = finetune(parent, data, seed, kwargs, sd, regime)
    row.update(
        family="channel_sim_vs_l1",
        similarity="output_moment_distance (project's own)",
        width_ratio=sum(channels) / sum(widths),
        keep_ratio=float(keep_ratio),
        channels=json.dumps(channels),
        n_stats=int(len(x_stats)),
        clusters=json.dumps(groups),
        level=f"keep={keep_ratio:g}",
    )
    return finish_model(
        parent,
        data,
        variant="channel_sim",
        model_id=variant_id(parent.model_id, "channel_sim", f"k{keep_ratio:g}", seed),
        seed=seed,
        architecture=parent.architecture,
        arch_kwargs=kwargs,
        state_dict=sd,
        extra=row,
    )


#: How the tables compare this recipe's models (builders/variants/tables.py renders the form).
META = RecipeMeta(Comparison(
    family="channel_sim_vs_l1", title="Channel-similarity vs L1-norm filter pruning at equal FLOPs",
    methods=("channel_sim",), baseline="l1_filter",
    claim="channel similarity ≥ L1-norm filter pruning at equal FLOPs (Zhang et al. 2019)", order=20))


@register_recipe("channel_sim", meta=META)
def channel_sim_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    keep_ratios: list[float] = (0.75, 0.5),
    baseline: bool = True,
    n_stats: int = 256,
    **regime: Any,
) -> list[ModelRecord]:
    """Channel-similarity models per keep ratio, each with an L1-pruned twin of equal FLOPs, both
    fine-tuned in ``FINETUNE_REGIME`` overridden by ``regime``."""
    reg = Regime.from_params(regime, **FINETUNE_REGIME)
    records = []
    for ratio in keep_ratios:
        rec = channel_sim_prune(parent, data, seed, float(ratio), n_stats=n_stats, regime=reg)
        rec.row["match_id"] = rec.model_id
        records.append(rec)
        if baseline:
            channels = json.loads(rec.row["channels"])
            records.append(
                l1_prune(
                    parent, data, seed, channels, tag=f"k{float(ratio):g}",
                    extra_row={"match_id": rec.model_id, "level": rec.row["level"],
                               "keep_ratio": float(ratio), "width_ratio": rec.row["width_ratio"]},
                    regime=reg,
                )
            )
    return records
