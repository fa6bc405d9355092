"""Registry of variant recipes: the build config names a recipe, the registry finds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from builders.variants._common import Parent, TaskTensors
from modelset.errors import unknown_name
from modelset.writer import ModelRecord


class Recipe(Protocol):
    """``recipe(parent, data, seed, **params) -> list[ModelRecord]``.

    ``parent`` is the model the variant derives from (pruning methods start from its weights;
    from-scratch methods reuse its task, architecture and hyper-parameters), ``data`` the task's
    train/test tensors, ``seed`` fixes every random choice. Params are recipe-specific budgets and
    method settings, all with defaults.
    """

    def __call__(
        self, parent: Parent, data: TaskTensors, seed: int, **params: object
    ) -> list[ModelRecord]: ...


_RECIPES: dict[str, Recipe] = {}


def register_recipe(name: str) -> Callable[[Recipe], Recipe]:
    """Decorator: register a recipe function under ``name``."""

    def wrap(fn: Recipe) -> Recipe:
        if name in _RECIPES and _RECIPES[name] is not fn:
            raise ValueError(f"variant recipe {name!r} is registered twice")
        _RECIPES[name] = fn
        return fn

    return wrap


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; ``UnknownNameError`` with the closest names otherwise."""
    if name not in _RECIPES:
        raise unknown_name("variant recipe", name, list_recipes())
    return _RECIPES[name]


def list_recipes() -> list[str]:
    """Names of every registered recipe, sorted."""
    return sorted(_RECIPES)
