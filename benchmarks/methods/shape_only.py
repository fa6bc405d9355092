"""Control: similarity from parameter shapes alone.

Two models are alike exactly when they share an architecture and every tensor shape (e.g. the
classifier's number of classes). Whatever a method scores beyond this control is more than the
shapes give away; on a set whose tasks all share one shape it lands at chance.
"""

from __future__ import annotations

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.architectures import canonical_kwargs
from modelset.errors import SchemaError
from modelset.reader import ModelSet


@register_method
class ShapeOnly(SimilarityMethod):
    """Embedding: one-hot of the model's (architecture, tensor shapes) signature within the set."""

    meta = MethodMeta(
        name="shape_only",
        learned=False,
        needs_data=False,
        control=True,
        invariances=("permutation", "scale", "sparsity"),
        reference="control: architecture and parameter shapes only",
        description="1 when two models have the same architecture and tensor shapes, else 0",
    )

    def _signatures(self, ms: ModelSet) -> dict[str, int]:
        table = ms.metadata
        keys = (table["architecture"].astype(str) + "|" + table["arch_kwargs"].astype(str)).map(_shape_key)
        return {key: i for i, key in enumerate(sorted(set(keys)))}

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        lookup = self._signatures(ms)
        table = ms.metadata.loc[ids]
        keys = (table["architecture"].astype(str) + "|" + table["arch_kwargs"].astype(str)).map(_shape_key)
        out = torch.zeros(len(ids), len(lookup))
        out[torch.arange(len(ids)), torch.tensor([lookup[k] for k in keys])] = 1.0
        return out


def _shape_key(signature: str) -> str:
    """The signature with its keyword arguments in canonical order (they fix every tensor shape)."""
    arch, _, kwargs = signature.partition("|")
    try:
        return f"{arch}|{canonical_kwargs(kwargs)}"
    except SchemaError:
        return signature
