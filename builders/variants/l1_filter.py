"""L1-norm filter pruning (Li, Kadav, Durdanovic, Samet, Graf, ICLR 2017), the channel-similarity
baseline.

For each convolution the filters with the smallest ``Σ|W|`` are removed, with the matching input
channels of the next layer (no compensation); norms are computed on the parent's weights for all
layers at once (the paper's "independent" strategy). A short fine-tune follows (the same
regime as channel-similarity pruning). Given the channel
counts chosen by channel-similarity pruning, the two networks have identical shapes and so
exactly the same FLOPs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from builders.variants._common import Parent, Regime, TaskTensors, VariantError, finish_model, variant_id
from builders.variants._pruning import FINETUNE_REGIME, check_prunable, finetune, merge_layer, narrow_kwargs
from builders.variants._registry import register_recipe
from modelset.writer import ModelRecord


def l1_keep(state_dict: Mapping[str, torch.Tensor], layer: int, n_keep: int) -> list[int]:
    """Indices (ascending) of the ``n_keep`` filters of ``conv{layer+1}`` with largest L1 norm."""
    norms = state_dict[f"conv{layer + 1}.weight"].abs().flatten(1).sum(1)
    order = torch.sort(norms, descending=True, stable=True).indices[:n_keep]
    return sorted(int(i) for i in order)


def l1_prune(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    channels: list[int],
    *,
    regime: Regime,
    extra_row: dict[str, Any] | None = None,
    tag: str = "",
) -> ModelRecord:
    """Prune the parent to ``channels`` filters per layer by L1 norm, then fine-tune."""
    widths = check_prunable(parent)
    if len(channels) != len(widths) or any(not 1 <= c <= w for c, w in zip(channels, widths)):
        raise VariantError(
            f"L1 pruning of {parent.model_id!r}: channels {channels} do not fit widths {widths}"
        )
    original = {k: v.clone() for k, v in parent.state_dict.items()}
    keeps = [l1_keep(original, i, c) for i, c in enumerate(channels)]
    sd = original
    for layer, keep in enumerate(keeps):
        sd = merge_layer(sd, layer, len(widths), [[i] for i in keep])
    kwargs = narrow_kwargs(parent, channels)
    sd, row = finetune(parent, data, seed, kwargs, sd, regime)
    row.update(family="channel_sim_vs_l1", channels=json.dumps(list(channels)))
    row.update(extra_row or {})
    return finish_model(
        parent,
        data,
        variant="l1_filter",
        model_id=variant_id(parent.model_id, "l1_filter", tag or "c" + "x".join(map(str, channels)), seed),
        seed=seed,
        architecture=parent.architecture,
        arch_kwargs=kwargs,
        state_dict=sd,
        extra=row,
    )


@register_recipe("l1_filter")
def l1_filter_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    keep_ratios: list[float] = (0.75, 0.5),
    **regime: Any,
) -> list[ModelRecord]:
    """L1-pruned models keeping ``round(r · width)`` filters per layer for each ratio ``r``."""
    widths = check_prunable(parent)
    reg = Regime.from_params(regime, **FINETUNE_REGIME)
    return [
        l1_prune(parent, data, seed, [max(1, round(r * w)) for w in widths], tag=f"k{r:g}",
                 extra_row={"keep_ratio": float(r)}, regime=reg)
        for r in keep_ratios
    ]
