"""Control: similarity from the recorded training recipe alone.

A model is described by the hyper-parameters in its row of the model table — optimizer, learning
rate, weight decay, batch size, epochs and, where the set records them, schedule, initialisation,
augmentation, label smoothing, input normalisation and data budget — never by its weights. A
method that does not beat this control has learned how models were trained, not what they solve.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from benchmarks.methods._registry import MethodMeta, SimilarityMethod, register_method
from modelset.reader import ModelSet

#: Numeric recipe columns, compared on a log scale (all are positive rates, sizes or counts).
LOG_COLUMNS = ("lr", "weight_decay", "batch_size", "epochs", "train_size")
LINEAR_COLUMNS = ("label_smoothing",)
CATEGORICAL_COLUMNS = ("optimizer", "schedule", "init", "augment", "input_norm")


@register_method
class RecipeOnly(SimilarityMethod):
    """Embedding: standardised recipe features (statistics of the fold's training models) and
    one-hot categorical choices; cosine similarity."""

    meta = MethodMeta(
        name="recipe_only",
        learned=False,
        needs_data=False,
        control=True,
        invariances=("permutation", "scale", "sparsity", "architecture"),
        reference="control: the recorded hyper-parameters only",
        description="optimizer, lr, weight decay, batch size, epochs (and schedule, init, augmentation, ... when recorded)",
    )

    def _fit(self, ms: ModelSet, train_ids: list[str], seed: int) -> None:
        table = ms.metadata
        self.numeric = [c for c in (*LOG_COLUMNS, *LINEAR_COLUMNS) if c in table.columns]
        self.categories = {
            c: sorted(table[c].fillna("").astype(str).unique()) for c in CATEGORICAL_COLUMNS if c in table.columns
        }
        values = self._numeric(table.loc[train_ids])
        self.mean = np.nanmean(values, axis=0) if values.size else np.zeros(0)
        std = np.nanstd(values, axis=0) if values.size else np.zeros(0)
        self.std = np.where(std > 0, std, 1.0)

    def _numeric(self, rows: pd.DataFrame) -> np.ndarray:
        cols = []
        for c in self.numeric:
            v = pd.to_numeric(rows[c], errors="coerce").to_numpy(dtype=np.float64)
            cols.append(np.log(np.clip(v, 1e-12, None)) if c in LOG_COLUMNS else v)
        return np.stack(cols, axis=1) if cols else np.zeros((len(rows), 0))

    def _embed(self, ms: ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        rows = ms.metadata.loc[ids]
        numeric = np.nan_to_num((self._numeric(rows) - self.mean) / self.std)
        parts = [numeric]
        for c, levels in self.categories.items():
            onehot = (rows[c].fillna("").astype(str).to_numpy()[:, None] == np.asarray(levels)[None, :]).astype(np.float64)
            parts.append(onehot)
        out = torch.tensor(np.concatenate(parts, axis=1), dtype=torch.float32)
        # A constant column set would give zero vectors: a tiny shared offset keeps cosine defined.
        return torch.cat([out, torch.full((len(ids), 1), 1e-3)], dim=1)
