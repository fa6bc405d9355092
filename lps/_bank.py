"""Features of many models, stacked: one tensor per feature key with a presence mask.

A model set mixes architecture signatures (cnn3, pruned cnn3 of many widths, NSL and shape-adaptor
variants, ResNets), whose feature dicts have different keys. A :class:`FeatureBank` puts every
model on the union of keys: a key a model lacks is a zero tensor with ``mask = False``, which the
network sees as such. Features are computed once per signature group from ``ModelSet.stacked``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lps.features import Features, compute_features
from lps.weights import WeightSpace
from modelset.errors import ModelSetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureBank:
    """``tensors[key]``: ``(N, *shape)``; ``masks[key]``: ``(N,)`` bool; keys ``m:*`` are ``(n, n)``
    matrices, ``v:*`` vectors. ``ids`` name the ``N`` models (or are ``None`` for ad-hoc inputs)."""

    tensors: Mapping[str, torch.Tensor]
    masks: Mapping[str, torch.Tensor]
    ids: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(next(iter(self.masks.values())).shape[0]) if self.masks else 0

    def schema(self) -> dict[str, list[int]]:
        return {k: list(v.shape[1:]) for k, v in sorted(self.tensors.items())}

    def subset(self, index: torch.Tensor | Sequence[int]) -> FeatureBank:
        index = torch.as_tensor(index, dtype=torch.long)
        ids = tuple(self.ids[i] for i in index.tolist()) if self.ids is not None else None
        return FeatureBank(
            {k: v[index] for k, v in self.tensors.items()}, {k: v[index] for k, v in self.masks.items()}, ids
        )

    def conform(self, schema: Mapping[str, Sequence[int]]) -> FeatureBank:
        """This bank on exactly the keys of ``schema`` (unknown keys dropped, missing ones masked).

        Raises ``ModelSetError`` if a model has none of the schema's features: it is of a kind
        the network never saw.
        """
        n = len(self)
        shared = [
            k for k in schema if k in self.tensors and list(self.tensors[k].shape[1:]) == list(schema[k])
        ]
        known = torch.zeros(n, dtype=torch.bool)
        for key in shared:
            known |= self.masks[key]
        if n and not bool(known.all()):
            first = int((~known).nonzero()[0])
            name = self.ids[first] if self.ids is not None else f"input {first}"
            present = sorted(k for k in self.tensors if bool(self.masks[k][first]))
            raise ModelSetError(
                f"model {name}: none of its features {present[:6]} is among the features the LPS "
                f"network was trained on {sorted(schema)[:6]}: its architecture is unknown to the network"
            )
        dropped = sorted(set(self.tensors) - set(shared))
        if dropped:
            log.info("features unknown to the network are ignored: %s", dropped[:10])
        tensors, masks = {}, {}
        for key, shape in schema.items():
            if key in shared:
                tensors[key], masks[key] = self.tensors[key], self.masks[key]
            else:
                tensors[key] = torch.zeros(n, *shape)
                masks[key] = torch.zeros(n, dtype=torch.bool)
        return FeatureBank(tensors, masks, self.ids)


def bank_from_groups(
    groups: Sequence[tuple[Sequence[int], Features]], n: int, ids: Sequence[str] | None = None
) -> FeatureBank:
    """Stack per-group features ``(positions, Features)`` into one bank of ``n`` models.

    Every key carries its shape (``m:head.chain@10x10``), so a feature whose size depends on the
    task (a head over 5 or 10 classes) gets one slot per size, named the same whatever the order
    or the mix of models in the bank.
    """
    tensors: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    for positions, features in groups:
        index = torch.as_tensor(list(positions), dtype=torch.long)
        for key, value in features.flat().items():
            shape = tuple(value.shape[1:])
            name = f"{key}@{'x'.join(map(str, shape))}"
            if name not in tensors:
                tensors[name] = torch.zeros(n, *shape)
                masks[name] = torch.zeros(n, dtype=torch.bool)
            tensors[name][index] = value.float()
            masks[name][index] = True
    return FeatureBank(tensors, masks, tuple(ids) if ids is not None else None)


def bank_from_modelset(
    ms, model_ids: Sequence[str], checkpoint: str = "final", chunk_size: int = 512, progress: bool = False
) -> FeatureBank:
    """Features of ``model_ids`` of a ``ModelSet``, computed per architecture signature group."""
    ids = list(model_ids)
    groups: list[tuple[Sequence[int], Features]] = []
    chunks = ms.iter_by_signature(ids, checkpoint, chunk_size)
    for chunk, stacked in tqdm(chunks, desc="LPS features", unit="chunk", disable=not progress, leave=False):
        space = WeightSpace.from_stacked(chunk.architecture, chunk.arch_kwargs, stacked)
        groups.append((chunk.positions, compute_features(space)))
    return bank_from_groups(groups, len(ids), ids)


def bank_from_spaces(spaces: Sequence[WeightSpace]) -> FeatureBank:
    """Features of weight spaces given in order (models numbered across them)."""
    groups, start = [], 0
    for space in spaces:
        groups.append((range(start, start + space.batch_size), compute_features(space)))
        start += space.batch_size
    return bank_from_groups(groups, start)
