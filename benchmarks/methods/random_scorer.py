"""Control: random embeddings. Every track must score it at chance."""

from __future__ import annotations

import hashlib

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet


@register_method
class RandomScorer(SimilarityMethod):
    """A Gaussian vector per (model id, seed): independent of the model, so similarities carry
    no information; fixed per id so every track sees the same scorer."""

    meta = MethodMeta(
        name="random",
        learned=False,
        needs_data=False,
        control=True,
        invariances=(),
        reference="control: scores independent of the models",
        description="random Gaussian embedding per model id (chance level)",
        config={"dim": 32},
    )

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        out = []
        for mid in ids:
            key = f"{mid}|{self.seed}" if checkpoint == "final" else f"{mid}|{checkpoint}|{self.seed}"
            digest = hashlib.sha256(key.encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            out.append(torch.randn(int(self.config["dim"]), generator=generator))
        return torch.stack(out)
