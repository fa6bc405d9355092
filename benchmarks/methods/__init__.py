"""Similarity methods, registered by name: ``get_method(name)``, ``list_methods()``.

Each method lives in one small file of this package; the imports below are the full list of
built-in methods (a method defined elsewhere registers itself with ``@register_method``).
"""

from __future__ import annotations

from benchmarks.methods import (  # noqa: F401  (imported to register the built-in methods)
    cka,
    deepsets,
    flat_cosine,
    lps_contrastive,
    lps_pairwise,
    nfn,
    oracle,
    prediction_agreement,
    probe_gen,
    random_scorer,
    recipe_only,
    second_order_fixed,
    shape_only,
    task2vec,
    weight_stats,
    weight_stats_learned,
)
from benchmarks.methods._registry import (
    ACCESS,
    INVARIANCES,
    MethodError,
    MethodMeta,
    MethodNotApplicable,
    SimilarityMethod,
    create_method,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

__all__ = [
    "ACCESS",
    "INVARIANCES",
    "MethodError",
    "MethodMeta",
    "MethodNotApplicable",
    "SimilarityMethod",
    "create_method",
    "get_method",
    "list_methods",
    "register_method",
    "unregister_method",
]
