"""Neural Similarity Learning (Liu, Liu, Rehg, Song, "Neural Similarity Learning", NeurIPS 2019)
as a zoo family: every convolution of the parent's ``cnn3`` becomes an ``NSLConv2d`` computing the
bilinear similarity ``wᵀ M x`` over the kernel window (``modelset.architectures.layers``).

**As in the authors' code** (``nsl_image_recog``): ``M`` is spatial, ``9×9`` over the 3×3 window
positions, shared across input channels. Forms: ``nsl_full`` (static ``M``, initialised to ``I``,
L2 regulariser 5e-3 on ``M`` as the authors' ``l2_regularizer(5e-3)``), ``nsl_diag`` (static
diagonal, initialised to ones, not regularised), ``nsl_dynamic_full`` and ``nsl_dynamic_diag``
(``M(x_p) = I + g(x)_p`` per output position from a two-layer meta-network whose first layer is
normalised by the input window's norm and whose weights start at 0.1 and 0.001 of the He scale,
so ``M`` starts at ``I``; the meta-network's weights take the weights' decay). Trained from
scratch in the shared from-scratch regime (SGD, momentum 0.9, warm-up and cosine schedule, weight
decay 5e-4); the baseline twin is the plain convolution network in the same regime, data, steps
and seed. Rows of one parent and seed share ``match_id``.

**Deviations, forced by the zoo's network or budget:** the meta-network is ``nsl_hidden = 16``
channels wide (the authors': 128 for the full, 64 for the diagonal form, on 128-channel layers),
without batch normalisation (``cnn3`` has none, the authors' diagonal meta-network has it); the
authors' static diagonal code initialises the mask to ``eye(3)`` flattened (a zero at six of nine
positions), the paper's identity initialisation (all ones) is used here; SGD with warm-up and
cosine instead of the authors' step schedule; a few epochs on the task's images.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from builders.variants._common import (
    Parent,
    Regime,
    TaskTensors,
    VariantError,
    finish_model,
    train_scratch,
    variant_id,
)
from builders.variants._registry import Comparison, RecipeMeta, register_recipe
from builders.variants.shape_adaptor import SCRATCH_REGIME
from modelset.writer import ModelRecord

NSL_VARIANTS = ("nsl_full", "nsl_diag", "nsl_dynamic_full", "nsl_dynamic_diag")

#: The authors' L2 regulariser on the static full ``M`` (``l2_regularizer(5e-3)``: gradient 5e-3·M).
M_DECAY = 5e-3


def nsl_groups(model: nn.Module, regime: Regime, m_decay: float) -> dict[str, Any]:
    """SGD parameter groups: static full ``M`` with ``m_decay``, diagonal ``m`` undecayed, the rest
    with the regime's weight decay."""
    full = [p for name, p in model.named_parameters() if name.endswith(".M")]
    diag = [p for name, p in model.named_parameters() if name.endswith(".m")]
    special = {id(p) for p in (*full, *diag)}
    rest = [p for p in model.parameters() if id(p) not in special]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if full:
        groups.append({"params": full, "weight_decay": m_decay})
    if diag:
        groups.append({"params": diag, "weight_decay": 0.0})
    return {"groups": groups}


#: How the tables compare this recipe's models (builders/variants/tables.py renders the form).
META = RecipeMeta(Comparison(
    family="nsl_vs_conv",
    title="NSL (static full, static diagonal, dynamic full, dynamic diagonal) vs convolution",
    methods=("nsl_full", "nsl_diag", "nsl_dynamic_full", "nsl_dynamic_diag"), baseline="conv",
    claim="dynamic NSL ≥ convolution (Liu et al. 2019)", claim_variants=("nsl_dynamic_full", "nsl_dynamic_diag"),
    order=40))


@register_recipe("nsl", meta=META)
def nsl_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    forms: list[str] = NSL_VARIANTS,
    m_decay: float = M_DECAY,
    nsl_hidden: int = 16,
    baseline: bool = True,
    **regime: Any,
) -> list[ModelRecord]:
    """One NSL network per form in ``forms`` and (``baseline``) the plain-conv network, all from
    scratch in the same regime (``SCRATCH_REGIME`` overridden by ``regime``)."""
    if parent.architecture != "cnn3":
        raise VariantError(f"NSL of {parent.model_id!r}: expected cnn3, found {parent.architecture}")
    unknown = [f for f in forms if f not in NSL_VARIANTS]
    if unknown:
        raise VariantError(f"NSL of {parent.model_id!r}: forms {unknown} are not among {NSL_VARIANTS}")
    reg = Regime.from_params(regime, **SCRATCH_REGIME)
    match = variant_id(parent.model_id, "nsl", "", seed)
    plain = {**dict(parent.arch_kwargs), "conv": "conv"}
    jobs: list[tuple[str, dict[str, Any]]] = [(form, {**plain, "conv": form, "nsl_hidden": nsl_hidden}) for form in forms]
    if baseline:
        jobs.append(("conv", plain))
    records = []
    for variant, kwargs in jobs:
        model, init, row = train_scratch(parent, data, seed, kwargs, reg,
                                         setup=lambda m, r: nsl_groups(m, r, m_decay))
        row.update(family="nsl_vs_conv", match_id=match, level="", m_decay=m_decay if variant == "nsl_full" else 0.0)
        records.append(
            finish_model(parent, data, variant=variant,
                         model_id=variant_id(parent.model_id, variant, "", seed), seed=seed,
                         architecture=parent.architecture, arch_kwargs=kwargs,
                         state_dict=model.state_dict(), extra=row, init_state=init)
        )
    return records
