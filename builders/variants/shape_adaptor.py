"""Shape Adaptor (Liu, Fan, Qi, Lin, ECCV 2020): learned resizing in place of fixed strides.

The parent's ``cnn3`` is rebuilt with ``downsample="shape_adaptor"``: every convolution runs at
stride 1 and a ``ShapeAdaptor`` before each convolution mixes an ``r1 = 0.5`` branch and an
``r2 = 1`` branch with weights ``1 - σ(α)`` and ``σ(α)``, resizing by ``s(α) = 0.5 + 0.5 σ(α)``.
α starts where the adaptors together resize like the human-designed strides
(``∏ s_i = 1 / ∏ stride_i``) and is learned by its own optimiser (``alpha_optimizer``,
``alpha_lr``), separate from the weights' optimiser, as in the paper. Trained from scratch; the
baseline is the same network with its fixed strides, same budget and seed. The learned scales
(``s_i`` per adaptor) and their product are recorded per model.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch

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

#: How often a diverged run is retrained at half the learning rate before the recipe gives up.
MAX_LR_HALVINGS = 3


def train_from_scratch(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    arch_kwargs: dict[str, Any],
    *,
    epochs: int,
    n_train: int | None,
    alpha_lr: float | None = None,
    alpha_optimizer: str = "adam",
    extra_loss_weight: float = 0.0,
) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Train the parent's architecture with ``arch_kwargs`` from scratch.

    Shape-adaptor α parameters (named ``*.alpha``) get their own optimiser when ``alpha_lr`` is
    given; NSL layers' distance from the identity is added to the loss with weight
    ``extra_loss_weight``. Returns the model, its initial weights and the hyper-parameter row.
    """
    x, y = data.train_subset(n_train, seed)
    hp = parent.hparams()
    # A parent's learning rate can make a bilinear (NSL) network diverge; such a run is retrained
    # from the same start with the rate halved. Runs that converge are untouched by this.
    for halvings in range(MAX_LR_HALVINGS + 1):
        torch.manual_seed(seed)
        model = build_architecture(parent.architecture, arch_kwargs)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        alphas = [p for n, p in model.named_parameters() if n.endswith(".alpha")]
        weights = [p for n, p in model.named_parameters() if not n.endswith(".alpha")]
        optimizers = [make_optimizer(weights, hp["optimizer"], hp["lr"], hp["weight_decay"])]
        if alphas:
            if alpha_lr is None:
                raise VariantError(f"{parent.model_id!r}: shape adaptors need an alpha_lr")
            # No weight decay on α: decay would pull every scale towards 0.75 regardless of the task.
            optimizers.append(make_optimizer(alphas, alpha_optimizer, alpha_lr, 0.0))
        extra_loss = None
        if extra_loss_weight > 0:
            nsl = [m for m in model.modules() if hasattr(m, "identity_deviation")]

            def extra_loss(nsl: list[torch.nn.Module] = nsl) -> torch.Tensor:
                return extra_loss_weight * sum(m.identity_deviation() for m in nsl)

        loss = train(model, x, y, epochs=epochs, batch_size=hp["batch_size"], optimizers=optimizers,
                     seed=seed, extra_loss=extra_loss)
        finite = math.isfinite(loss) and all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())
        if finite:
            break
        if halvings == MAX_LR_HALVINGS:
            raise VariantError(
                f"{parent.model_id!r} with {arch_kwargs}: training diverged even at learning rate {hp['lr']:g}"
            )
        log.warning("%s %s diverged at lr %g; retraining at half the rate", parent.model_id, arch_kwargs, hp["lr"])
        hp = dict(hp, lr=hp["lr"] / 2)
    row = {"epochs": epochs, "n_train": len(y), **hp}
    if halvings:
        row["lr_halvings"] = halvings
    return model, init, row


@register_recipe("shape_adaptor")
def shape_adaptor_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    epochs: int = 3,
    n_train: int | None = 2000,
    alpha_lr: float = 0.05,
    alpha_optimizer: str = "adam",
    baseline: bool = True,
) -> list[ModelRecord]:
    """A shape-adaptor network and (``baseline``) its fixed-stride twin, both from scratch."""
    if parent.architecture != "cnn3":
        raise VariantError(f"shape adaptor of {parent.model_id!r}: expected cnn3, found {parent.architecture}")
    base_kwargs = {**dict(parent.arch_kwargs), "downsample": "stride"}
    sa_kwargs = {**base_kwargs, "downsample": "shape_adaptor"}
    match = variant_id(parent.model_id, "shape_adaptor", "", seed)
    model, init, row = train_from_scratch(
        parent, data, seed, sa_kwargs, epochs=epochs, n_train=n_train,
        alpha_lr=alpha_lr, alpha_optimizer=alpha_optimizer,
    )
    scales = [a.scale() for a in model.shape_adaptors()]
    initial = [a.scale() for a in build_architecture(parent.architecture, sa_kwargs).shape_adaptors()]
    row.update(
        family="shape_adaptor_vs_fixed_stride",
        match_id=match,
        level="",
        alpha_lr=alpha_lr,
        alpha_optimizer=alpha_optimizer,
        scales=json.dumps([round(s, 6) for s in scales]),
        initial_scales=json.dumps([round(s, 6) for s in initial]),
        overall_scale=float(math.prod(scales)),
    )
    records = [
        finish_model(parent, data, variant="shape_adaptor", model_id=match, seed=seed,
                     architecture=parent.architecture, arch_kwargs=sa_kwargs,
                     state_dict=model.state_dict(), extra=row, init_state=init)
    ]
    if baseline:
        model, init, row = train_from_scratch(parent, data, seed, base_kwargs, epochs=epochs, n_train=n_train)
        strides = [int(s) for s in base_kwargs.get("strides", (2, 2, 1))]
        row.update(
            family="shape_adaptor_vs_fixed_stride",
            match_id=match,
            level="",
            scales=json.dumps([1.0 / s for s in strides]),
            overall_scale=float(1.0 / math.prod(strides)),
        )
        records.append(
            finish_model(parent, data, variant="fixed_stride",
                         model_id=variant_id(parent.model_id, "fixed_stride", "", seed), seed=seed,
                         architecture=parent.architecture, arch_kwargs=base_kwargs,
                         state_dict=model.state_dict(), extra=row, init_state=init)
        )
    return records
