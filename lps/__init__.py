"""LPS: Learnable Parameter Similarity (Wang, Lai, Liang, Wang 2019).

A second-order network that learns, from parameters alone, which models solve the same or a
related task. ``lps.weights`` holds weights, ``lps.features`` computes permutation-invariant
second-order features, ``lps.model`` is the network and the ``LPS`` scorer, ``lps.train`` fits it
on the training models of a task fold (``lps.splits``), ``lps.search(checkpoint, zoo)`` finds the
zoo models nearest to a checkpoint. Scores are computed by the benchmark tracks (``benchmarks``),
the one place where metrics live.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lps import search, train
    from lps.model import LPS
    from lps.splits import Split, fold, load_folds

__all__ = ["LPS", "Split", "fold", "load_folds", "search", "train"]

# torch is imported on first use of these names: `python -m lps search` runs this file first, and
# a search answered by the warm service (lps._service) must not pay torch's start-up.
_LAZY = {"LPS": "lps.model", "Split": "lps.splits", "fold": "lps.splits",
         "load_folds": "lps.splits"}


def __getattr__(name: str) -> Any:
    if name in ("train", "search"):
        # Callable submodules: lps.train(ms, ...) runs lps.train.train, lps.search(checkpoint, zoo)
        # lps.search.search (importing a submodule binds its name here, so the module is the name).
        value: Any = importlib.import_module(f"lps.{name}")
    elif name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    else:
        raise AttributeError(f"module 'lps' has no attribute {name!r}")
    globals()[name] = value
    return value
