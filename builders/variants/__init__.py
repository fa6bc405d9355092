"""Variant recipes: compressed and adapted twins of zoo models, stored as families of the set.

Each recipe takes a parent model, its task's tensors, a seed and params, and returns
``ModelRecord``s (the method's variant and, for the paper's comparison, its baseline):

- ``str`` — Soft Threshold Reparameterization (Kusupati et al. 2020), with GMP at matched sparsity;
- ``gmp`` — gradual magnitude pruning (Zhu & Gupta 2017) alone, at a given sparsity;
- ``channel_sim`` — channel-similarity pruning (Zhang et al. 2019), with L1 pruning at equal FLOPs;
- ``l1_filter`` — L1-norm filter pruning (Li et al. 2017) alone, at given channel counts;
- ``shape_adaptor`` — Shape Adaptor (Liu, Lin, Wang, Zhang, Perazzi, Johns 2020), with the fixed-stride network;
- ``nsl`` — Neural Similarity Learning (Liu et al. 2019), static and dynamic, with plain conv.

Each module's docstring gives the method's regime and every remaining deviation from its authors'.
"""

from __future__ import annotations

import importlib

from builders.variants._common import Parent, TaskTensors, spread_tasks
from builders.variants._registry import Recipe, get_recipe, list_recipes, register_recipe

# Each recipe module registers itself with @register_recipe; importing them here makes the
# registry complete for whoever imports the package.
for _module in ("soft_threshold", "gmp", "channel_similarity", "l1_filter", "shape_adaptor", "nsl"):
    importlib.import_module(f"builders.variants.{_module}")

__all__ = ["Parent", "Recipe", "TaskTensors", "get_recipe", "list_recipes", "register_recipe", "spread_tasks"]
