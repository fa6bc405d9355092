"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"), STR's baseline.

Trained from scratch. Between steps ``t0`` and ``t0 + n·Δt`` the sparsity of every prunable layer
(each convolution and the linear head; biases stay dense) follows the cubic schedule

    s_t = s_f + (s_i - s_f) · (1 - (t - t0) / (n·Δt))³,   s_i = 0,

and every ``Δt`` steps the smallest-magnitude weights of each layer are masked to reach ``s_t``.
Masked weights are held at zero after every optimiser step, so the stored (final) weights are
exactly sparse. Every layer gets the same sparsity, so the overall sparsity equals ``s_f`` up to
rounding — this uniform budget is what STR's learned, non-uniform budget is compared against.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from builders.variants._common import (
    Parent,
    TaskTensors,
    VariantError,
    finish_model,
    make_optimizer,
    train,
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
    *,
    epochs: int = 3,
    n_train: int | None = 2000,
    lr: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    prune_every: int | None = None,
    extra_row: dict[str, Any] | None = None,
    tag: str = "",
) -> ModelRecord:
    """Train a fresh copy of the parent's architecture with GMP to ``final_sparsity``."""
    if not 0.0 <= final_sparsity < 1.0:
        raise VariantError(f"GMP of {parent.model_id!r}: sparsity must be in [0, 1), got {final_sparsity}")
    hp = parent.hparams()
    lr = hp["lr"] if lr is None else lr
    weight_decay = hp["weight_decay"] if weight_decay is None else weight_decay
    optimizer = optimizer or hp["optimizer"]
    torch.manual_seed(seed)
    model = build_architecture(parent.architecture, dict(parent.arch_kwargs))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = [torch.ones_like(m.weight, dtype=torch.bool) for m in layers]
    x, y = data.train_subset(n_train, seed)
    batch_size = hp["batch_size"]
    steps = epochs * max(1, (len(y) + batch_size - 1) // batch_size)
    every = prune_every or max(1, steps // 40)

    @torch.no_grad()
    def after_step(step: int, total: int) -> None:
        if step % every == 0 or step == total:
            target = gmp_sparsity(step, total, final_sparsity)
            for i, layer in enumerate(layers):
                masks[i] = magnitude_mask(layer.weight * masks[i], target)
        for layer, mask in zip(layers, masks):
            layer.weight.mul_(mask)

    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    train(model, x, y, epochs=epochs, batch_size=batch_size, optimizers=[opt], seed=seed, after_step=after_step)
    row = {
        "family": "str_vs_gmp",
        "target_sparsity": float(final_sparsity),
        "epochs": epochs,
        "n_train": len(y),
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "batch_size": batch_size,
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
    **budget: Any,
) -> list[ModelRecord]:
    """GMP models of the parent's architecture, one per target sparsity, trained from scratch."""
    return [train_gmp(parent, data, seed, float(s), **budget) for s in sparsities]
