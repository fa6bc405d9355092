"""Shared helpers of the weight-space methods: reading parameters of many models at once and
putting a state dict into a layer list that does not depend on dict order."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modelset.reader import ModelSet


def load_states(ms: ModelSet, ids: Sequence[str], checkpoint: str = "final") -> list[dict[str, torch.Tensor]]:
    """State dicts of ``ids`` in order, read with one ``stacked`` call per architecture signature."""
    out: list[dict[str, torch.Tensor] | None] = [None] * len(ids)
    for group in ms.by_signature(ids):
        stacked = ms.stacked(group.ids, checkpoint)
        for j, pos in enumerate(group.positions):
            out[pos] = {k: v[j] for k, v in stacked.items()}
    return out  # type: ignore[return-value]


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class Layer:
    """One linear or convolutional layer: ``weight`` ``(out, fan_in)`` (kernels flattened) and
    ``bias`` ``(out,)`` (zeros when the layer has none)."""

    name: str
    weight: torch.Tensor
    bias: torch.Tensor


def layers(state: dict[str, torch.Tensor]) -> list[Layer]:
    """The layers of a state dict in network order: every ``*.weight`` with 2+ dimensions, sorted
    by its name with numbers compared as numbers (``conv2`` before ``conv10``, ``head`` last).

    Extra tensors of variants (NSL's ``M``, shape adaptors' ``alpha``) are not layers.
    """
    names = [k for k, v in state.items() if k.endswith(".weight") and v.ndim >= 2 and not k.startswith("meta")]
    names = [k for k in names if ".meta." not in k]
    # Classifier heads come last whatever their name sorts to.
    head = [k for k in names if k.split(".")[0] in ("head", "fc", "classifier")]
    body = sorted((k for k in names if k not in head), key=_natural_key)
    out = []
    for name in body + sorted(head, key=_natural_key):
        w = state[name].to(torch.float32)
        w2 = w.reshape(w.shape[0], -1)
        b = state.get(name[: -len("weight")] + "bias")
        b = b.to(torch.float32).reshape(-1) if b is not None else torch.zeros(w.shape[0])
        out.append(Layer(name[: -len(".weight")], w2, b))
    return out


def one_per_signature(ms: ModelSet) -> list[dict[str, torch.Tensor]]:
    """One state dict of each architecture signature of the set (to size padded features)."""
    return [ms.state_dict(group.ids[0]) for group in ms.by_signature(ms.metadata.index)]


def max_flat_size(ms: ModelSet) -> int:
    """The largest number of stored values of any model of the set."""
    return max(sum(v.numel() for v in s.values()) for s in one_per_signature(ms))


def max_layers(ms: ModelSet) -> int:
    """The largest number of layers (see :func:`layers`) of any model of the set."""
    return max(len(layers(s)) for s in one_per_signature(ms))
