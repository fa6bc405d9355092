"""LPS: Learnable Parameter Similarity (Wang, Lai, Liang, Wang 2019).

A second-order network that learns, from parameters alone, which models solve the same or a
related task. ``lps.weights`` holds weights, ``lps.features`` computes permutation-invariant
second-order features, ``lps.model`` is the network and the ``LPS`` scorer, ``lps.train`` fits it
on training-task models only, ``lps.evaluate`` scores it on held-out tasks and models.
"""

from __future__ import annotations

from lps import train  # a callable module: lps.train(ms, ...) runs lps.train.train
from lps.evaluate import evaluate_lps
from lps.model import LPS
from lps.search import search
from lps.splits import Split, split

__all__ = ["LPS", "Split", "evaluate_lps", "search", "split", "train"]
