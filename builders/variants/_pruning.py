"""Physically narrowing a ``cnn3``: keep some channels of a layer, optionally absorbing the
removed ones into the next layer. Shared by channel-similarity and L1-norm filter pruning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from builders.variants._common import Parent, Regime, TaskTensors, VariantError, fit
from modelset.architectures import build_architecture


def check_prunable(parent: Parent) -> list[int]:
    """The parent's channel widths; ``VariantError`` unless it is a plain strided ``cnn3``."""
    kwargs = dict(parent.arch_kwargs)
    if parent.architecture != "cnn3" or kwargs.get("conv", "conv") != "conv" or kwargs.get(
        "downsample", "stride"
    ) != "stride":
        raise VariantError(
            f"channel pruning of {parent.model_id!r}: expected a plain cnn3 (conv='conv', "
            f"downsample='stride'), found {parent.architecture} with {kwargs}"
        )
    return [int(c) for c in kwargs.get("channels", (16, 16, 16))]


def next_weight_key(layer: int, depth: int) -> str:
    """The weight reading the outputs of ``conv{layer+1}``: the next conv, or the head."""
    return f"conv{layer + 2}.weight" if layer + 1 < depth else "head.weight"


def merge_layer(
    state_dict: Mapping[str, torch.Tensor], layer: int, depth: int, groups: list[list[int]]
) -> dict[str, torch.Tensor]:
    """Keep one channel per group of ``conv{layer+1}`` and fold the others into the next layer.

    ``groups[j] = [representative, *absorbed]``: output channel ``j`` of the narrowed layer is the
    representative; the next layer's input weights of the group are summed onto it, which is
    exact when the absorbed channels' outputs equal the representative's. Singleton groups are
    plain filter removal (L1 pruning). Returns a new state dict.
    """
    sd = {k: v.clone() for k, v in state_dict.items()}
    reps = torch.tensor([g[0] for g in groups])
    sd[f"conv{layer + 1}.weight"] = sd[f"conv{layer + 1}.weight"][reps].clone()
    sd[f"conv{layer + 1}.bias"] = sd[f"conv{layer + 1}.bias"][reps].clone()
    key = next_weight_key(layer, depth)
    nxt = sd[key]  # (out, in, k, k) or (classes, in)
    sd[key] = torch.stack([nxt[:, g].sum(dim=1) for g in groups], dim=1).contiguous()
    return sd


def narrow_kwargs(parent: Parent, channels: list[int]) -> dict[str, Any]:
    kwargs = dict(parent.arch_kwargs)
    kwargs["channels"] = [int(c) for c in channels]
    return kwargs


#: Fine-tuning regime of both pruned twins unless the config overrides a field.
FINETUNE_REGIME = {"lr": 0.01, "weight_decay": 5e-4, "epochs": 2, "n_train": 1000, "batch_size": 64, "warmup": 0.1}


def finetune(
    parent: Parent,
    data: TaskTensors,
    seed: int,
    arch_kwargs: dict[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    regime: Regime,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Fine-tune a narrowed network in ``regime`` (none when ``epochs == 0``); weights and row."""
    torch.manual_seed(seed)
    model = build_architecture(parent.architecture, arch_kwargs)
    model.load_state_dict(dict(state_dict), strict=True)
    x, y = data.train_subset(regime.n_train, seed)
    if regime.epochs > 0:
        fit(model, x, y, regime, seed=seed)
    return model.state_dict(), {"n_train": len(y), "start": "parent", **regime.row()}
