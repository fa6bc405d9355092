"""The weight space LPS reads: :mod:`modelset.weights`, re-exported under its historical name."""

from __future__ import annotations

from modelset.weights import (
    Layer,
    LayoutFn,
    WeightSpace,
    cnn3_layout,
    generic_layout,
    load_spaces,
    one_per_signature,
    permute_hidden,
    permute_state_dict,
    random_hidden_perms,
    register_layout,
    to_state_dicts,
)

__all__ = [
    "Layer",
    "LayoutFn",
    "WeightSpace",
    "cnn3_layout",
    "generic_layout",
    "load_spaces",
    "one_per_signature",
    "permute_hidden",
    "permute_state_dict",
    "random_hidden_perms",
    "register_layout",
    "to_state_dicts",
]
