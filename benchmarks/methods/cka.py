"""Functional baseline: linear CKA (Kornblith et al. 2019, "Similarity of Neural Network
Representations Revisited") between penultimate activations on a common probe batch.

Linear CKA of activations ``X`` ``(n, p)`` and ``Y`` ``(n, q)`` is the cosine of their centred
Gram matrices ``H X Xᵀ H`` and ``H Y Yᵀ H`` (``H`` the centring matrix), so the normalised,
flattened centred Gram is an embedding whose cosine *is* CKA: N models cost N forward passes.
"""

from __future__ import annotations

import torch

from benchmarks.methods._probes import common_probe, run_models
from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet


def centred_gram(x: torch.Tensor) -> torch.Tensor:
    """``H X Xᵀ H`` ``(n, n)`` for activations ``x`` ``(n, p)``."""
    xc = x - x.mean(dim=0, keepdim=True)
    return xc @ xc.T


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two activation matrices with the same rows (HSIC form, for checks)."""
    kx, ky = centred_gram(x.double()), centred_gram(y.double())
    return float((kx * ky).sum() / (kx.norm() * ky.norm()))


@register_method
class LinearCKA(SimilarityMethod):
    """Embedding: flattened centred Gram of penultimate activations, unit norm ``(n, probe²)``."""

    meta = MethodMeta(
        name="cka",
        learned=False,
        needs_data=True,
        invariances=("permutation", "scale", "function"),
        reference="Kornblith et al. 2019, Similarity of Neural Network Representations Revisited",
        description="linear CKA of penultimate activations on a common probe batch",
        config={"probe_size": 64},
    )

    def _fit_key(self, ms: ModelSet, train_ids: list[str], seed: int) -> object:
        return str(ms.root)  # a fixed probe: the same embeddings for every split and seed

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        # The probe depends on the set only (not the seed), so all seeds score the same inputs.
        self.probe, self.probe_source = common_probe(ms, int(self.config["probe_size"]))

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        grams = [centred_gram(acts.double()) for acts, _ in run_models(ms, ids, self.probe, "cka", checkpoint)]
        flat = torch.stack([g.reshape(-1) for g in grams])
        # A dead network has a zero Gram; a tiny constant keeps its cosine defined (and ~0).
        return torch.nn.functional.normalize(flat + 1e-12, dim=1).float()
