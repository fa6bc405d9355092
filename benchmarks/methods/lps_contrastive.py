"""LPS trained in the contrastive mode (``lps.train(mode="contrastive")``): instance invariance
under weight-space augmentations plus task invariance, after the flexible few-shot paper
(Ren et al. 2020)."""

from __future__ import annotations

from benchmarks.methods._registry import MethodMeta, register_method
from benchmarks.methods.lps_pairwise import _LPSBase


@register_method
class LPSContrastive(_LPSBase):
    """Embedding: the LPS network's output ``(n, dim)`` after contrastive training."""

    mode = "contrastive"
    meta = MethodMeta(
        name="lps_contrastive",
        learned=True,
        needs_data=False,
        proposed=True,
        invariances=("permutation", "scale"),
        reference="LPS (Wang et al. 2019) with contrastive pretraining after Ren et al. 2020 (arXiv 2012.05895)",
        description="second-order network, instance + task contrastive training",
        config={"epochs": 40},
    )
