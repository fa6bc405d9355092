"""Registry of variant recipes: the build config names a recipe, the registry finds it.

Each recipe may also declare how its models are compared (:class:`RecipeMeta`): the family it
writes, which variants are the method and which the paper's baseline, the paper's claim, and any
learned vector worth summarising. The variant tables render from these forms alone, so a new
recipe with a comparison is one ``register_recipe(name, meta=RecipeMeta(...))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from builders.variants._common import Parent, TaskTensors
from modelset.registry import Registry
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


@dataclass(frozen=True)
class Comparison:
    """A method against the baseline its paper beats, over the models of one ``family``.

    ``methods``/``baseline``: values of the ``variant`` column; ``title``: the table's heading;
    ``claim``: the paper's qualitative claim and ``claim_variants`` the method variants it is
    about (default: all ``methods``); ``order`` places the table among the others (then family).
    """

    family: str
    title: str
    methods: tuple[str, ...]
    baseline: str
    claim: str = ""
    claim_variants: tuple[str, ...] = ()
    order: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "claim_variants", tuple(self.claim_variants or self.methods))
        if not self.methods:
            raise ValueError(f"comparison {self.family!r}: name at least one method variant")
        stray = sorted(set(self.claim_variants) - set(self.methods))
        if stray:
            raise ValueError(f"comparison {self.family!r}: claim variants {stray} are not among its methods {list(self.methods)}")

    @property
    def variants(self) -> tuple[str, ...]:
        """Method variants, then the baseline: the row order of the table."""
        return (*self.methods, self.baseline)


@dataclass(frozen=True)
class LearnedVector:
    """A per-model vector a recipe learns (JSON list in ``column`` of its ``variant``'s rows),
    summarised as mean ± std per position: rows ``{prefix}{i}`` under ``item``, columns
    ``{value}_mean``/``{value}_std``; written as ``{name}.csv`` under ``title``."""

    name: str
    title: str
    variant: str
    column: str
    item: str
    prefix: str
    value: str


@dataclass(frozen=True)
class RecipeMeta:
    """How a recipe's models are compared and summarised in the variant tables."""

    comparison: Comparison | None = None
    learned: tuple[LearnedVector, ...] = ()


_RECIPES: Registry[Recipe] = Registry("variant recipe")
_META: Registry[RecipeMeta] = Registry("variant recipe metadata")


def register_recipe(name: str, meta: RecipeMeta | None = None) -> Callable[[Recipe], Recipe]:
    """Decorator: register a recipe function under ``name`` (with its ``meta``, if any)."""

    def wrap(fn: Recipe) -> Recipe:
        _RECIPES.add(name, fn)
        if meta is not None:
            describe_recipe(name, meta)
        return fn

    return wrap


def describe_recipe(name: str, meta: RecipeMeta) -> None:
    """Declare how the models of recipe ``name`` are compared (see :class:`RecipeMeta`)."""
    _META.remove(name)
    _META.add(name, meta)


def unregister_recipe(name: str) -> None:
    """Forget recipe ``name`` and its metadata (tests register throw-away recipes)."""
    _RECIPES.remove(name)
    _META.remove(name)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as ``name``; ``UnknownNameError`` with the closest names otherwise."""
    return _RECIPES.get(name)


def recipe_meta(name: str) -> RecipeMeta:
    """What recipe ``name`` declares for the tables (an empty form if it declares nothing)."""
    return _META.get(name) if name in _META else RecipeMeta()


def list_recipes() -> list[str]:
    """Names of every registered recipe, sorted."""
    return _RECIPES.names()


def comparisons() -> list[Comparison]:
    """Every declared comparison, in table order (``order``, then family)."""
    found = [_META.get(n).comparison for n in _META.names()]
    return sorted((c for c in found if c is not None), key=lambda c: (c.order, c.family))


def learned_vectors() -> list[LearnedVector]:
    """Every declared learned vector, by recipe name."""
    return [v for n in _META.names() for v in _META.get(n).learned]
