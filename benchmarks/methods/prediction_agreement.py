"""Functional baseline: prediction agreement, the fraction of a common probe batch on which two
models predict the same class index.

One-hot predictions ``(n, k_max)`` flattened and scaled by ``1/√n`` have unit norm, and the
inner product of two of them is exactly the agreement, so it is an embedding method.
"""

from __future__ import annotations

import math

import torch

from benchmarks.methods._probes import common_probe, run_models
from benchmarks.methods._registry import MethodError, MethodMeta, SimilarityMethod, register_method
from modelset.architectures import decode_kwargs
from modelset.reader import ModelSet


@register_method
class PredictionAgreement(SimilarityMethod):
    """Embedding: scaled one-hot argmax predictions on the probe batch ``(n_models, n·k_max)``."""

    meta = MethodMeta(
        name="prediction_agreement",
        learned=False,
        needs_data=True,
        invariances=("permutation", "scale", "function"),
        reference="prediction agreement on shared inputs (e.g. Fort et al. 2019, Deep Ensembles: a loss landscape perspective)",
        description="fraction of probe inputs with the same predicted class",
        config={"probe_size": 64},
    )

    def _fit_key(self, ms: ModelSet, train_ids: list[str], seed: int) -> object:
        return str(ms.root)  # a fixed probe: the same embeddings for every split and seed

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        self.probe, self.probe_source = common_probe(ms, int(self.config["probe_size"]))
        # The widest head of the set fixes the embedding width (read from the architecture kwargs).
        kwargs = [decode_kwargs(str(k)) for k in ms.metadata["arch_kwargs"].unique()]
        self.k_max = max(int(k.get("num_classes", 10)) for k in kwargs)

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        outputs = run_models(ms, ids, self.probe, "agreement", checkpoint)
        n = self.probe.shape[0]
        wider = [mid for mid, (_, logits) in zip(ids, outputs) if logits.shape[1] > self.k_max]
        if wider:
            raise MethodError(f"prediction_agreement: models {wider[:3]} have more than {self.k_max} outputs")
        out = torch.zeros(len(ids), n, self.k_max)
        for row, (_, logits) in enumerate(outputs):
            out[row, torch.arange(n), logits.argmax(dim=1)] = 1.0
        return out.reshape(len(ids), -1) / math.sqrt(n)
