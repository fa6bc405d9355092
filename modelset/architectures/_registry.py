"""Registry of architectures: a model set names an architecture and its keyword arguments in its
table, and this registry rebuilds the ``torch.nn.Module`` from them."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from modelset._untrusted import parse_json
from modelset.errors import SchemaError
from modelset.registry import Registry


@dataclass(frozen=True)
class ArchitectureEntry:
    name: str
    factory: Callable[..., torch.nn.Module]
    description: str


_ARCHITECTURES: Registry[ArchitectureEntry] = Registry("architecture")


def register_architecture(name: str) -> Callable[[Callable[..., torch.nn.Module]], Callable]:
    """Decorator: register ``factory(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(factory: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        doc = (inspect.getdoc(factory) or "").split("\n")[0]
        _ARCHITECTURES.add(name, ArchitectureEntry(name, factory, doc))  # equal entry: same factory
        return factory

    return wrap


#: Largest width, class count or stride an architecture accepts from a table (a sane format limit;
#: the shards' sizes bound the real tensors further).
MAX_SIZE = 1 << 20


def positive_ints(name: str, values: Any, length: int | None = None) -> tuple[int, ...]:
    """``values`` (an int or a list of ints) as a tuple, each in ``1..MAX_SIZE``; ``ValueError`` if not."""
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if length is not None and len(items) != length:
        raise ValueError(f"{name} needs {length} values, got {len(items)}")
    if not items or any(type(v) is not int or not 1 <= v <= MAX_SIZE for v in items):
        raise ValueError(f"{name} must be integers from 1 to {MAX_SIZE}, got {values!r:.200}")
    return tuple(items)


def list_architectures() -> list[str]:
    """Names of every registered architecture, sorted."""
    return _ARCHITECTURES.names()


#: Longest ``arch_kwargs`` JSON accepted: a signature is a handful of numbers and names.
MAX_ARCH_KWARGS_CHARS = 4096


def canonical_kwargs(kwargs: Mapping[str, Any] | str | None) -> str:
    """Architecture keyword arguments as canonical JSON (sorted keys, lists not tuples): the
    encoder of the model table's ``arch_kwargs`` column (:func:`decode_kwargs` reads it back)."""
    return json.dumps(decode_kwargs(kwargs), sort_keys=True, separators=(",", ":"))


def decode_kwargs(kwargs: Mapping[str, Any] | str | None, where: str = "arch_kwargs") -> dict[str, Any]:
    """Architecture keyword arguments as a new dict, from the model table's JSON text (or from a
    mapping, copied; ``None`` and ``""`` are ``{}``).

    The text is untrusted: at most :data:`MAX_ARCH_KWARGS_CHARS` characters, within the nesting
    and integer limits of ``modelset._untrusted.parse_json``, and a JSON object; ``SchemaError``
    naming ``where`` otherwise.
    """
    if kwargs is None:
        return {}
    if isinstance(kwargs, Mapping):
        return dict(kwargs)
    if not isinstance(kwargs, str):
        raise SchemaError(f"{where}: expected JSON text or a mapping, found {type(kwargs).__name__}")
    if len(kwargs) > MAX_ARCH_KWARGS_CHARS:
        raise SchemaError(f"{where}: {len(kwargs)} characters, more than the limit of {MAX_ARCH_KWARGS_CHARS}")
    value = parse_json(kwargs or "{}", where)
    if not isinstance(value, dict):
        raise SchemaError(f"{where} must be a JSON object, found {kwargs[:200]}")
    return value


def build_architecture(name: str, kwargs: dict[str, Any] | str | None = None) -> torch.nn.Module:
    """Build the registered architecture ``name`` with ``kwargs`` (a dict or its JSON).

    Raises ``UnknownNameError`` for an unknown name and ``SchemaError`` for arguments the
    factory does not accept.
    """
    factory = _ARCHITECTURES.get(name).factory
    args = decode_kwargs(canonical_kwargs(kwargs))  # a deep copy, lists not tuples
    try:
        return factory(**args)
    except TypeError as exc:
        raise SchemaError(f"architecture {name!r} cannot be built from {args}: {exc}") from exc
