"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), STR's baseline.

Trained in a ``Regime`` (SGD with momentum, warm-up and cosine schedule), from scratch or — as
STR's twin — from the parent's weights, with the same steps as STR. Between steps ``t0`` and ``t0 + n·Δt`` the sparsity of every prunable layer
(each convolution and the linear head; biases stay dense) follows the cubic schedule

    s_t = s_f + (s_i - s_f) · (1 - (t - t0) / (n·Δt))³,   s_i = 0,

and every ``Δt`` steps the smallest-magnitude weights of each layer are masked to reach ``s_t``.
Masked weights are held at zero after every optimiser step, so the stored (final) weights are
exactly sparse. Every layer gets the same sparsity, so the overall sparsity equals ``s_f`` up to
rounding — this uniform budget is what STR's learned, non-uniform budget is compared against.
The schedule spans 20 %–80 % of the steps, as the STR authors' GMP config (epochs 20–79 of 100).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from builders.variants._common import (
    Parent,
    Regime,
    TaskTensors,
    VariantError,
    finish_model,
    fit,
    variant_id,
)
from builders.variants._registry import register_recipe
from modelset.architectures import build_architecture
from modelset.writer import ModelRecord

log = logging.getLogger(__name__)


def gmp_sparsity(step: int, total: int, final: float, start: float = 0.2, end: float = 0.8) -> float:
    """Scheduled sparsity at ``step`` of ``total``: 0 before ``start·total``, cubic to ``final``."""
    t0, t1 = start * total, end * total
    if step <= t0:
        return 0.0
    if step >= t1:
        return final
    return final * (1.0 - (1.0 - (step - t0) / (t1 - t0)) ** 3)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask keeping the ``1 - sparsity`` largest-magnitude entries of ``weight``."""
    n_zero = int(round(sparsity * weight.numel()))
    mask = torch.ones_like(weight, dtype=torch.bool)
    if n_zero > 0:
        # Stable sort breaks ties (e.g. already-pruned zeros) deterministically.
        order = torch.sort(weight.abs().flatten(), stable=True).indices[:n_zero]
        mask.view(-1)[order] = False
    return mask


def train_gmp(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    final_sparsity: float,
    regime: Regime,
    *,
    from_parent: bool = False,
    prune_every: int | None = None,
    extra_row: dict[str, Any] | None = None,
    tag: str = "",
) -> ModelRecord:
    """Train the parent's architecture (from its weights if ``from_parent``) with GMP to
    ``final_sparsity`` in ``regime``; one record."""
    if not 0.0 <= final_sparsity <= 1.0:
        raise VariantError(f"GMP of {parent.model_id!r}: sparsity must be in [0, 1], got {final_sparsity}")
    torch.manual_seed(seed)
    model = parent.model() if from_parent else build_architecture(parent.architecture, dict(parent.arch_kwargs))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = [torch.ones_like(m.weight, dtype=torch.bool) for m in layers]
    x, y = data.train_subset(regime.n_train, seed)
    every = prune_every or max(1, regime.steps(len(y)) // 40)

    @torch.no_grad()
    def after_step(step: int, total: int) -> None:
        if step % every == 0 or step == total:
            target = gmp_sparsity(step, total, final_sparsity)
            for i, layer in enumerate(layers):
                masks[i] = magnitude_mask(layer.weight * masks[i], target)
        for layer, mask in zip(layers, masks):
            layer.weight.mul_(mask)

    fit(model, x, y, regime, seed=seed, after_step=after_step)
    row = {
        "family": "gmp",
        "target_sparsity": float(final_sparsity),
        "n_train": len(y),
        "start": "parent" if from_parent else "scratch",
        **regime.row(),
    }
    row.update(extra_row or {})
    return finish_model(
        parent,
        data,
        variant="gmp",
        model_id=variant_id(parent.model_id, "gmp", tag or f"sp{final_sparsity:.3f}", seed),
        seed=seed,
        architecture=parent.architecture,
        arch_kwargs=dict(parent.arch_kwargs),
        state_dict=model.state_dict(),
        extra=row,
        init_state=init,
    )


@register_recipe("gmp")
def gmp_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    sparsities: list[float] = (0.5, 0.8, 0.9, 0.95),
    from_parent: bool = False,
    **regime: Any,
) -> list[ModelRecord]:
    """GMP models of the parent's architecture, one per target sparsity (``regime`` as STR's)."""
    from builders.variants.soft_threshold import STR_REGIME

    reg = Regime.from_params(regime, **STR_REGIME)
    return [train_gmp(parent, data, seed, float(s), reg, from_parent=from_parent) for s in sparsities]
