"""Architectures a model set can name; ``build_architecture`` rebuilds them from the table."""

from modelset.architectures import cnn, resnet  # noqa: F401  (they register their architectures)
from modelset.architectures._registry import (
    build_architecture,
    canonical_kwargs,
    decode_kwargs,
    list_architectures,
    register_architecture,
)

__all__ = ["build_architecture", "canonical_kwargs", "decode_kwargs", "list_architectures", "register_architecture"]
