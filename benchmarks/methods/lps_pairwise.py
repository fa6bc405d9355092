"""LPS (Wang et al. 2019), trained on pairs of training-task models (``lps.train(mode="pairs")``):
the learned second-order similarity this benchmark is built around."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet


class _LPSBase(SimilarityMethod):
    """Shared by both LPS training modes: ``lps.train`` in ``_fit``, ``LPS.embed`` in ``_embed``."""

    mode: str = "pairs"

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        import lps.train

        kwargs: dict[str, Any] = dict(self.config)
        if self.cache_dir is not None:  # the checkpoint `make lps` trained for this fold, if it matches
            self.scorer = lps.train.train_cached(ms, train_ids, self.cache_dir, mode=self.mode, seed=seed, **kwargs)
        else:
            self.scorer = lps.train.train(ms, train_ids=train_ids, mode=self.mode, seed=seed, **kwargs)

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        return self.scorer.embed(ids, ms=ms, checkpoint=checkpoint)


@register_method
class LPSPairs(_LPSBase):
    """Embedding: the LPS network's output ``(n, dim)``; similarity is its cosine."""

    mode = "pairs"
    meta = MethodMeta(
        name="lps",
        learned=True,
        needs_data=False,
        proposed=True,
        invariances=("permutation", "scale"),
        reference="Wang, Lai, Liang, Wang 2019, Learnable Parameter Similarity (arXiv 1907.11943)",
        description="second-order network trained on same/different-task pairs",
        config={"epochs": 40},
    )
