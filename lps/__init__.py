"""LPS: Learnable Parameter Similarity (Wang, Lai, Liang, Wang 2019).

A second-order network that learns, from parameters alone, which models solve the same or a
related task. ``lps.weights`` holds weights, ``lps.features`` computes permutation-invariant
second-order features, ``lps.model`` is the network and the ``LPS`` scorer, ``lps.train`` fits it
on the training models of a task fold (``lps.splits``). Scores are computed by the benchmark
tracks (``benchmarks``), the one place where metrics live.
"""

from __future__ import annotations

from lps import train  # a callable module: lps.train(ms, ...) runs lps.train.train
from lps.model import LPS
from lps.search import search
from lps.splits import Split, fold, load_folds

__all__ = ["LPS", "Split", "fold", "load_folds", "search", "train"]
