"""STR: Soft Threshold weight Reparameterization (Kusupati et al., ICML 2020).

Every convolution and the linear head trains a dense weight ``W`` and one scalar threshold ``s``
and computes with the effective weight

    S(W, s) = sign(W) · relu(|W| - sigmoid(s)),

so weights below the learned threshold are exactly zero. ``s`` starts at ``s_init`` and receives
the same weight decay as ``W``: the decay pushes ``s`` (negative) towards 0, raising the
threshold, while the loss gradient pushes back where weights matter, so each layer finds its own
sparsity; ``s_init`` and the weight decay together set the final sparsity. Trained from scratch.
The stored weights are the effective (sparse) weights of a plain network, so the reader rebuilds
it as the parent's architecture. Baseline: GMP at the same final (measured) sparsity.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from builders.variants._common import (
    Parent,
    TaskTensors,
    finish_model,
    make_optimizer,
    train,
    variant_id,
)
from builders.variants._registry import register_recipe
from builders.variants.gmp import train_gmp
from modelset.architectures import build_architecture
from modelset.writer import ModelRecord

log = logging.getLogger(__name__)


class SoftThreshold(nn.Module):
    """Parametrisation ``W ↦ sign(W)·relu(|W| - sigmoid(s))`` with a learnable scalar ``s``."""

    def __init__(self, s_init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.sign(weight) * torch.relu(weight.abs() - torch.sigmoid(self.s))


def attach_str(model: nn.Module, s_init: float) -> list[SoftThreshold]:
    """Reparameterise the weight of every conv/linear layer of ``model``; return the thresholds."""
    thresholds = []
    for module in [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        st = SoftThreshold(s_init)
        parametrize.register_parametrization(module, "weight", st)
        thresholds.append(st)
    return thresholds


def detach_str(model: nn.Module) -> None:
    """Replace every STR parametrisation by its current effective (sparse) weight."""
    for module in [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]:
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def train_str(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    s_init: float,
    *,
    epochs: int = 3,
    n_train: int | None = 2000,
    lr: float | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
) -> ModelRecord:
    """Train a fresh copy of the parent's architecture with STR; one record with its sparsity."""
    hp = parent.hparams()
    lr = hp["lr"] if lr is None else lr
    weight_decay = hp["weight_decay"] if weight_decay is None else weight_decay
    optimizer = optimizer or hp["optimizer"]
    torch.manual_seed(seed)
    model = build_architecture(parent.architecture, dict(parent.arch_kwargs))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    thresholds = attach_str(model, s_init)
    x, y = data.train_subset(n_train, seed)
    # One optimiser for W and s alike: the paper decays s with the weights' weight decay.
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay)
    train(model, x, y, epochs=epochs, batch_size=hp["batch_size"], optimizers=[opt], seed=seed)
    learned = [float(t.s.detach()) for t in thresholds]
    detach_str(model)
    row = {
        "family": "str_vs_gmp",
        "s_init": float(s_init),
        "learned_thresholds": json.dumps([round(float(torch.sigmoid(torch.tensor(s))), 6) for s in learned]),
        "epochs": epochs,
        "n_train": len(y),
        "lr": lr,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "batch_size": hp["batch_size"],
    }
    return finish_model(
        parent,
        data,
        variant="str",
        model_id=variant_id(parent.model_id, "str", f"si{s_init:g}", seed),
        seed=seed,
        architecture=parent.architecture,
        arch_kwargs=dict(parent.arch_kwargs),
        state_dict=model.state_dict(),
        extra=row,
        init_state=init,
    )


@register_recipe("str")
def str_recipe(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    s_inits: list[float] = (-6.0, -4.0, -3.5, -3.0),
    baseline: bool = True,
    **budget: Any,
) -> list[ModelRecord]:
    """STR models, one per ``s_init`` (sparsity levels), each with a GMP twin at its sparsity.

    The pair shares ``match_id`` (the STR model's id) so tables compare them at matched sparsity.
    """
    records: list[ModelRecord] = []
    for s_init in s_inits:
        rec = train_str(parent, data, seed, float(s_init), **budget)
        rec.row["match_id"] = rec.model_id
        rec.row["level"] = f"s_init={float(s_init):g}"
        records.append(rec)
        if baseline:
            twin = train_gmp(
                parent,
                data,
                seed,
                float(rec.row["sparsity"]),
                tag=f"si{s_init:g}",
                extra_row={"match_id": rec.model_id, "level": rec.row["level"]},
                **budget,
            )
            records.append(twin)
    return records
