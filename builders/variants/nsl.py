"""Neural Similarity Learning (Liu, Liu, Rehg, Song, NeurIPS 2019) as a zoo family.

Every convolution of the parent's ``cnn3`` becomes an ``NSLConv2d`` computing ``wᵀ M x`` over the
kernel window, ``M`` initialised to the identity; the loss adds ``reg · Σ_layers ‖M - I‖²_F``
(for dynamic NSL, the mean squared residual ``‖M(x_p) - I‖²`` over positions) so the learned
similarity stays close to the inner product unless the task pays for leaving it. Forms:
static full, static diagonal and dynamic (``M`` predicted per position, identity residual; see
``modelset.architectures.layers``). Trained from scratch; the baseline is the plain convolution
network with the same budget and seed. Rows of one parent and seed share ``match_id``.
"""

from __future__ import annotations

from typing import Any

from builders.variants._common import Parent, TaskTensors, VariantError, finish_model, variant_id
from builders.variants._registry import register_recipe
from builders.variants.shape_adaptor import train_from_scratch
from modelset.writer import ModelRecord

NSL_VARIANTS = ("nsl_full", "nsl_diag", "nsl_dynamic")


@register_recipe("nsl")
def nsl_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    forms: list[str] = NSL_VARIANTS,
    reg: float = 1e-4,
    epochs: int = 3,
    n_train: int | None = 2000,
    nsl_hidden: int = 8,
    baseline: bool = True,
) -> list[ModelRecord]:
    """One NSL network per form in ``forms`` and (``baseline``) the plain-conv network."""
    if parent.architecture != "cnn3":
        raise VariantError(f"NSL of {parent.model_id!r}: expected cnn3, found {parent.architecture}")
    unknown = [f for f in forms if f not in NSL_VARIANTS]
    if unknown:
        raise VariantError(f"NSL of {parent.model_id!r}: forms {unknown} are not among {NSL_VARIANTS}")
    match = variant_id(parent.model_id, "nsl", "", seed)
    plain = {**dict(parent.arch_kwargs), "conv": "conv"}
    jobs: list[tuple[str, dict[str, Any], float]] = [
        (form, {**plain, "conv": form, "nsl_hidden": nsl_hidden}, reg) for form in forms
    ]
    if baseline:
        jobs.append(("conv", plain, 0.0))
    records = []
    for variant, kwargs, weight in jobs:
        model, init, row = train_from_scratch(
            parent, data, seed, kwargs, epochs=epochs, n_train=n_train, extra_loss_weight=weight
        )
        deviation = sum(float(m.identity_deviation().detach()) for m in model.modules()
                        if hasattr(m, "identity_deviation") and m.form != "dynamic")
        row.update(family="nsl_vs_conv", match_id=match, level="", nsl_reg=weight,
                   identity_deviation=deviation)
        records.append(
            finish_model(parent, data, variant=variant,
                         model_id=variant_id(parent.model_id, variant, "", seed), seed=seed,
                         architecture=parent.architecture, arch_kwargs=kwargs,
                         state_dict=model.state_dict(), extra=row, init_state=init)
        )
    return records
