"""The evaluation protocol's task folds, as LPS and the benchmarks use them.

The folds live in the model set (``splits/folds.json``, see :mod:`modelset.folds`): every task is
held out in exactly one fold, a fraction of model families of the other tasks is held out too, and
models of held-out recipe families are never fit on. Learned methods fit on ``train_ids`` only.
"""

from __future__ import annotations

from modelset.errors import ModelSetError
from modelset.folds import FoldConfig, Split, family_roots, make_folds

__all__ = ["FoldConfig", "Split", "family_roots", "fold", "load_folds", "make_folds"]


def load_folds(ms) -> list[Split]:
    """Every fold of the model set ``ms`` (read from the set; computed for older sets)."""
    return ms.folds


def fold(ms, index: int) -> Split:
    """Fold ``index`` of ``ms``; ``ModelSetError`` naming the valid range otherwise."""
    folds = load_folds(ms)
    if not folds:
        raise ModelSetError(f"{ms.root}: the set has no task folds (it needs at least 4 tasks with 2 model families each)")
    if not 0 <= int(index) < len(folds):
        raise ModelSetError(f"{ms.root}: fold {index} does not exist; the set has folds 0 to {len(folds) - 1}")
    return folds[int(index)]
