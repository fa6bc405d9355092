"""Shared pieces of the variant recipes: inputs, the training regime a method shares with its
twin (``Regime``, ``fit``), scoring and records.

Every recipe stores its model as ``(architecture, arch_kwargs, state_dict)`` and computes the
recorded ``test_accuracy`` on a model *rebuilt* from exactly those, so ``ms.model(id)``
reproduces it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from builders.engine import TaskTensors  # the one task-data type; recipes use its test set and train_subset
from builders.variants.flops import count_flops, count_sparse_flops
from modelset.architectures import build_architecture
from modelset.errors import ModelSetError
from modelset.writer import ModelRecord

log = logging.getLogger(__name__)


class VariantError(ModelSetError):
    """A recipe cannot be applied to its parent model or data."""


@dataclass(frozen=True)
class Parent:
    """The model a variant derives from: its table row, architecture and final weights."""

    model_id: str
    architecture: str
    arch_kwargs: Mapping[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    row: Mapping[str, Any] = field(default_factory=dict)

    def model(self) -> nn.Module:
        """The parent rebuilt from its architecture and weights (train mode)."""
        model = build_architecture(self.architecture, dict(self.arch_kwargs))
        model.load_state_dict({k: v.clone() for k, v in self.state_dict.items()}, strict=True)
        return model


@dataclass(frozen=True)
class Regime:
    """The training regime a method and its baseline twin share: SGD with momentum, a linear
    warm-up over ``warmup`` of the steps, then a cosine decay to 0 (per step), as in the STR and
    shape-adaptor authors' code. ``n_train`` images (all if None) for ``epochs`` epochs."""

    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    batch_size: int = 64
    epochs: int = 3
    n_train: int | None = 1000
    warmup: float = 0.1

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **defaults: Any) -> Regime:
        """A regime from a recipe's params (keys as the fields) over ``defaults``; ``VariantError``
        names any other key."""
        unknown = sorted(set(params) - set(cls.__dataclass_fields__))
        if unknown:
            raise VariantError(
                f"unknown params {unknown} for a variant recipe; regime fields are {sorted(cls.__dataclass_fields__)}"
            )
        fields = {**defaults, **params}
        try:
            regime = cls(**fields)
        except TypeError as exc:
            raise VariantError(f"variant training regime {fields}: {exc}") from exc
        if regime.lr <= 0 or regime.epochs < 0 or regime.batch_size < 1 or not 0 <= regime.warmup < 1:
            raise VariantError(
                f"variant training regime {regime}: needs lr > 0, epochs >= 0, batch_size >= 1, 0 <= warmup < 1"
            )
        return regime

    def steps(self, n: int) -> int:
        """Optimiser steps of the regime on ``n`` examples."""
        return self.epochs * max(1, (n + self.batch_size - 1) // self.batch_size)

    def row(self) -> dict[str, Any]:
        """The regime as table columns (the same for a method and its twin)."""
        return {"optimizer": "sgd_nesterov" if self.nesterov else "sgd", "lr": self.lr,
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "epochs": self.epochs, "schedule": "warmup_cosine",
                "warmup": self.warmup}


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor at ``step`` (0-based) of ``total``: linear warm-up, then cosine to 0."""
    n_warm = int(round(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    progress = (step - n_warm) / max(1, total - n_warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    regime: Regime,
    *,
    seed: int,
    groups: list[dict[str, Any]] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    before_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    after_step: Callable[[int, int], None] | None = None,
) -> float:
    """Train ``model`` on ``x`` ``(n, C, H, W)``, ``y`` ``(n,)`` in ``regime``; last epoch's mean loss.

    ``groups`` are SGD parameter groups (e.g. a different weight decay for some parameters;
    default: every parameter with the regime's decay); their learning rates follow the regime's
    schedule. ``before_step(step, xb, yb)`` runs before each weight step (a side update such as
    the shape adaptors' α step); ``after_step(step, total)`` after it (pruning schedules).
    """
    groups = groups if groups is not None else [{"params": list(model.parameters())}]
    opt = torch.optim.SGD(groups, lr=regime.lr, momentum=regime.momentum, nesterov=regime.nesterov,
                          weight_decay=regime.weight_decay)
    total = regime.steps(len(y))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: warmup_cosine(t, total, regime.warmup))
    generator = torch.Generator().manual_seed(seed)
    step, mean_loss = 0, float("nan")
    model.train()
    for _ in range(regime.epochs):
        order = torch.randperm(len(y), generator=generator)
        running, batches = 0.0, 0
        for start in range(0, len(y), regime.batch_size):
            idx = order[start : start + regime.batch_size]
            if before_step is not None:
                before_step(step, x[idx], y[idx])
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if after_step is not None:
                after_step(step, total)
            running += float(loss.detach())
            batches += 1
        mean_loss = running / max(1, batches)
    return mean_loss


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``x`` ``(n, C, H, W)``, ``y`` ``(n,)``."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        correct += int((model(x[start : start + batch_size]).argmax(1) == y[start : start + batch_size]).sum())
    return correct / max(1, len(y))


def prunable_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Weight tensors (convolutions and linear layers, ``ndim >= 2``) in state-dict order."""
    return [k for k, v in state_dict.items() if k.endswith(".weight") and v.ndim >= 2]


def sparsity_report(state_dict: Mapping[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Zero fraction over all prunable weights, and per prunable tensor (biases excluded)."""
    keys = prunable_keys(state_dict)
    zeros = sum(int((state_dict[k] == 0).sum()) for k in keys)
    total = sum(state_dict[k].numel() for k in keys)
    per_layer = {k.removesuffix(".weight"): float((state_dict[k] == 0).float().mean()) for k in keys}
    return zeros / max(1, total), per_layer


def finish_model(
    parent: Parent,
    data: TaskTensors,
    *,
    variant: str,
    model_id: str,
    seed: int,
    architecture: str,
    arch_kwargs: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    extra: Mapping[str, Any],
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> ModelRecord:
    """Rebuild the variant from what will be stored, score it and fill its table row."""
    sd = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    model = build_architecture(architecture, arch_kwargs)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise VariantError(
            f"variant {model_id!r}: weights do not fit {architecture}({arch_kwargs}): {exc}"
        ) from exc
    model.eval()
    acc = accuracy(model, data.x_test, data.y_test)
    sparsity, per_layer = sparsity_report(sd)
    row: dict[str, Any] = {
        "task": parent.row.get("task", ""),
        "dataset": parent.row.get("dataset", ""),
        "variant": variant,
        "parent_id": parent.model_id,
        "seed": int(seed),
        "test_accuracy": acc,
        "sparsity": sparsity,
        "layer_sparsity": json.dumps(per_layer, sort_keys=True),
        "n_nonzero": int(sum(int((v != 0).sum()) for v in sd.values())),
        "flops": count_flops(model, data.input_shape),
        "flops_sparse": count_sparse_flops(model, data.input_shape),
    }
    row.update(extra)
    # A model run alone (no twin) is its own comparison group.
    row.setdefault("family", variant)
    row.setdefault("match_id", model_id)
    row.setdefault("level", "")
    checkpoints = {"final": sd}
    if init_state is not None:
        checkpoints["init"] = {k: v.detach().clone() for k, v in init_state.items()}
    log.info("variant %s: accuracy %.4f sparsity %.3f flops %d", model_id, acc, sparsity, row["flops"])
    return ModelRecord(
        model_id=model_id,
        architecture=architecture,
        arch_kwargs=dict(arch_kwargs),
        checkpoints=checkpoints,
        row=row,
    )


def variant_id(parent_id: str, variant: str, tag: str, seed: int) -> str:
    """Stable id: ``{parent}-{variant}[-{tag}]-s{seed}`` (tag holds the level, e.g. ``k0.5``)."""
    tag = f"-{tag}" if tag else ""
    return f"{parent_id}-{variant}{tag}-s{seed}"


#: How often a diverged from-scratch run is retrained at half the learning rate before giving up.
MAX_LR_HALVINGS = 3


def train_scratch(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    arch_kwargs: dict[str, Any],
    regime: Regime,
    *,
    setup: Callable[[nn.Module, Regime], dict[str, Any]] | None = None,
) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Train the parent's architecture with ``arch_kwargs`` from scratch in ``regime``.

    ``setup(model, regime)`` returns extra ``fit`` arguments (``groups``, ``before_step``, ...)
    for the freshly built model. A run whose loss or weights are not finite is retrained from the
    same start with the learning rate halved (at most ``MAX_LR_HALVINGS`` times; recorded in
    ``lr_halvings``). Returns the trained model, its initial weights and the regime's row.
    """
    x, y = data.train_subset(regime.n_train, seed)
    for halvings in range(MAX_LR_HALVINGS + 1):
        torch.manual_seed(seed)
        model = build_architecture(parent.architecture, arch_kwargs)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        extra = setup(model, regime) if setup is not None else {}
        loss = fit(model, x, y, regime, seed=seed, **extra)
        if math.isfinite(loss) and all(bool(torch.isfinite(v).all()) for v in model.state_dict().values()):
            break
        if halvings == MAX_LR_HALVINGS:
            raise VariantError(
                f"{parent.model_id!r} with {arch_kwargs}: training diverged even at learning rate {regime.lr:g}"
            )
        log.warning("%s %s diverged at lr %g; retraining at half the rate", parent.model_id, arch_kwargs, regime.lr)
        regime = Regime(**{**regime.__dict__, "lr": regime.lr / 2})
    return model, init, {"n_train": len(y), "start": "scratch", "lr_halvings": halvings, **regime.row()}


def spread_tasks(task_ids: list[str], n: int | None) -> list[str]:
    """``n`` of ``task_ids`` spread evenly over the list (every k-th, k = len / n; all if ``n`` is
    None or at least the length), in their order: the tasks whose models get a config's variants."""
    if n is None or n >= len(task_ids):
        return list(task_ids)
    if n < 1:
        raise VariantError(f"variants: parents.tasks must be at least 1, got {n}")
    return [task_ids[(i * len(task_ids)) // n] for i in range(n)]
