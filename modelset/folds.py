"""Task folds: the evaluation protocol, shipped inside the model set.

Every task is held out in exactly one of ``k`` folds. In a fold:

* ``heldout_tasks`` — no method may fit on any of their models (scored by retrieval, relations,
  transfer selection);
* ``heldout_model_ids`` — of every training task, a fraction of model *families* (a base model
  with all its variants, following ``parent_id``) is held out too (scored by task classification),
  since a pruned twin of a training model would otherwise leak into the test models;
* ``heldout_recipe_ids`` — models of training tasks whose family was trained with a *held-out
  recipe family* (``recipe_family`` column, config ``folds.heldout_recipe_families``): no fold
  ever fits on them, so they measure how well a method carries over to recipes it never saw;
* ``train_ids`` — everything else: the only models a learned method may fit on.

A set with too few tasks for task folds (an imported zoo has one task per data set) gets *model
folds* instead (``unit: "model"``, :func:`make_model_folds`), the protocol of the field on such
zoos (Unterthiner et al. 2020 split the Small CNN Zoo by runs): the base models' families are dealt
into ``k`` folds, per task, each held out exactly once. A model fold trains on every task, holds
out no task (``heldout_tasks`` and ``heldout_task_ids`` are empty), and ``heldout_model_ids``
holds the fold's held-out families; held-out recipe families stay out as in task folds.

The folds are a pure function of the model table, the task list and the fold config; the builder
(or an importer) writes them to ``splits/folds.json`` so that anyone reproduces the exact protocol,
and :meth:`modelset.ModelSet.folds` reads them back. The file's ``unit`` is ``"task"`` when absent.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from modelset._untrusted import parse_json
from modelset.errors import SchemaError

FOLDS_FILE = "splits/folds.json"
FOLDS_SCHEMA = 1
DEFAULT_K = 5
DEFAULT_HOLDOUT_MODEL_FRACTION = 0.2
#: What a fold holds out: whole tasks, or models of every task (see the module docstring).
UNITS = ("task", "model")
#: A fold file larger than this is refused before parsing (ids of ~10^5 models fit easily).
MAX_FOLDS_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Split:
    """Task and model ids of one fold (each tuple sorted)."""

    fold: int
    train_tasks: tuple[str, ...]
    heldout_tasks: tuple[str, ...]
    train_ids: tuple[str, ...]
    heldout_model_ids: tuple[str, ...]  # in-recipe models of training tasks, never fit on
    heldout_task_ids: tuple[str, ...]  # every model of the held-out tasks
    heldout_recipe_ids: tuple[str, ...] = ()  # held-out-recipe models of training tasks

    @property
    def seed(self) -> int:
        """The fold index, which also seeds everything drawn for the fold (pairs, episodes)."""
        return self.fold

    @property
    def unit(self) -> str:
        """``"task"`` for a task fold, ``"model"`` for a model fold (one that holds out no task)."""
        return "task" if self.heldout_tasks else "model"

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.to_dict().items() if isinstance(v, list)}


@dataclass(frozen=True)
class FoldConfig:
    """The ``folds:`` section of a build config."""

    k: int = DEFAULT_K
    seed: int = 0
    holdout_model_fraction: float = DEFAULT_HOLDOUT_MODEL_FRACTION
    heldout_recipe_families: tuple[str, ...] = field(default_factory=tuple)
    unit: str = "task"  # "model": model folds (see make_model_folds)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "folds") -> FoldConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise SchemaError(f"{where}: unknown keys {unknown}; known {sorted(cls.__dataclass_fields__)}")
        if "heldout_recipe_families" in d:
            d["heldout_recipe_families"] = tuple(str(x) for x in d["heldout_recipe_families"] or ())
        cfg = cls(**d)
        if not isinstance(cfg.k, int) or cfg.k < 2:
            raise SchemaError(f"{where}.k: expected an integer ≥ 2, found {cfg.k!r}")
        if not 0 < float(cfg.holdout_model_fraction) < 1:
            raise SchemaError(f"{where}.holdout_model_fraction: expected a number in (0, 1), found {cfg.holdout_model_fraction!r}")
        if cfg.unit not in UNITS:
            raise SchemaError(f"{where}.unit: expected one of {list(UNITS)}, found {cfg.unit!r}")
        return cfg


def family_roots(metadata: pd.DataFrame) -> dict[str, str]:
    """Model id → id of its root ancestor (itself for a base model), following ``parent_id``."""
    parent = {mid: str(p) if isinstance(p, str) and p else "" for mid, p in metadata["parent_id"].items()}
    roots: dict[str, str] = {}
    for mid in parent:
        seen, cur = [], mid
        while parent.get(cur) and parent[cur] in parent and cur not in seen:
            seen.append(cur)
            cur = parent[cur]
        roots[mid] = cur
    return roots


def _indexed(metadata: pd.DataFrame) -> pd.DataFrame:
    if "model_id" in metadata.columns:
        metadata = metadata.set_index("model_id")
    return metadata


def make_folds(metadata: pd.DataFrame, config: FoldConfig | Mapping[str, Any] | None = None) -> list[Split]:
    """The ``k`` folds of a model table (indexed by model id, or with a ``model_id`` column).

    Tasks are shuffled with ``config.seed`` and dealt into ``k`` folds of near-equal size; ``k``
    is lowered so that every fold holds out at least 2 tasks (retrieval needs two) and trains on
    at least 2. Raises ``SchemaError`` when the set has too few tasks or families. With
    ``config.unit == "model"``: :func:`make_model_folds`.
    """
    cfg = config if isinstance(config, FoldConfig) else FoldConfig.from_dict(config)
    if cfg.unit == "model":
        return make_model_folds(metadata, cfg)
    table = _indexed(metadata)
    tasks = sorted(str(t) for t in table["task"].unique())
    if len(tasks) < 4:
        raise SchemaError(f"task folds need at least 4 tasks (2 held out, 2 for training); the set has {len(tasks)}: {tasks}")
    k = min(cfg.k, len(tasks) // 2)
    rng = np.random.default_rng([cfg.seed, 0])
    order = [tasks[i] for i in rng.permutation(len(tasks))]
    groups = [sorted(g.tolist()) for g in np.array_split(np.asarray(order, dtype=object), k)]
    roots = family_roots(table)
    recipe = table["recipe_family"].fillna("").astype(str) if "recipe_family" in table.columns else None
    outside = set(cfg.heldout_recipe_families)
    if outside and recipe is not None:
        known = set(recipe.unique())
        missing = sorted(outside - known)
        if missing:
            raise SchemaError(f"folds.heldout_recipe_families: {missing} are not recipe families of the set ({sorted(known)})")

    def is_outside(mid: str) -> bool:
        return recipe is not None and bool(outside) and str(recipe.get(roots[mid], "")) in outside

    task_of = table["task"].astype(str)
    folds = []
    for f, heldout in enumerate(groups):
        frng = np.random.default_rng([cfg.seed, 1, f])
        train_tasks = [t for t in tasks if t not in heldout]
        train_ids, held_models, held_recipe = [], [], []
        for task in train_tasks:
            members = sorted(task_of.index[task_of == task])
            held_recipe += [m for m in members if is_outside(m)]
            members = [m for m in members if not is_outside(m)]
            families = sorted({roots[m] for m in members})
            if len(families) < 2:
                raise SchemaError(f"task {task!r} has {len(families)} in-recipe model family; a fold needs 2 to hold one out")
            n_hold = min(max(1, math.floor(cfg.holdout_model_fraction * len(families) + 0.5)), len(families) - 1)
            held = set(frng.choice(families, size=n_hold, replace=False).tolist())
            for mid in members:
                (held_models if roots[mid] in held else train_ids).append(mid)
        folds.append(
            Split(
                fold=f,
                train_tasks=tuple(train_tasks),
                heldout_tasks=tuple(heldout),
                train_ids=tuple(sorted(train_ids)),
                heldout_model_ids=tuple(sorted(held_models)),
                heldout_task_ids=tuple(sorted(task_of.index[task_of.isin(heldout)])),
                heldout_recipe_ids=tuple(sorted(held_recipe)),
            )
        )
    return folds


def _outside_recipes(table: pd.DataFrame, roots: dict[str, str], outside: set[str]) -> set[str]:
    """Models whose family root was trained with one of the recipe families ``outside``."""
    if not outside or "recipe_family" not in table.columns:
        return set()
    recipe = table["recipe_family"].fillna("").astype(str)
    missing = sorted(outside - set(recipe.unique()))
    if missing:
        raise SchemaError(f"folds.heldout_recipe_families: {missing} are not recipe families of the set ({sorted(set(recipe))})")
    return {m for m in table.index if str(recipe.get(roots[m], "")) in outside}


def make_model_folds(metadata: pd.DataFrame, config: FoldConfig | Mapping[str, Any] | None = None) -> list[Split]:
    """The ``k`` model folds of a model table (indexed by model id, or with a ``model_id`` column).

    The model families (a base model with its variants) of each task are shuffled with
    ``config.seed`` and dealt in turn into ``k`` folds, so that every fold holds out about ``1/k``
    of every task's families and every family is held out in exactly one fold; ``k`` is lowered
    to the number of families. Every task is a training task of every fold; models of held-out
    recipe families are never trained on. Raises ``SchemaError`` with fewer than 2 families.
    """
    cfg = config if isinstance(config, FoldConfig) else FoldConfig.from_dict(config)
    table = _indexed(metadata)
    tasks = sorted(str(t) for t in table["task"].unique())
    roots = family_roots(table)
    outside = _outside_recipes(table, roots, set(cfg.heldout_recipe_families))
    task_of = table["task"].astype(str)
    dealt: list[str] = []  # families, task by task, each task's in a seeded order
    for t, task in enumerate(tasks):
        families = sorted({roots[m] for m in task_of.index[task_of == task] if m not in outside})
        rng = np.random.default_rng([cfg.seed, 2, t])
        dealt += [families[i] for i in rng.permutation(len(families))]
    if len(dealt) < 2:
        raise SchemaError(f"model folds need at least 2 model families outside held-out recipes; the set has {len(dealt)}")
    k = min(cfg.k, len(dealt))
    fold_of = {family: i % k for i, family in enumerate(dealt)}
    folds = []
    for f in range(k):
        held = sorted(m for m in table.index if m not in outside and fold_of[roots[m]] == f)
        folds.append(
            Split(
                fold=f,
                train_tasks=tuple(tasks),
                heldout_tasks=(),
                train_ids=tuple(sorted(m for m in table.index if m not in outside and fold_of[roots[m]] != f)),
                heldout_model_ids=tuple(held),
                heldout_task_ids=(),
                heldout_recipe_ids=tuple(sorted(outside)),
            )
        )
    return folds


def folds_document(folds: Sequence[Split], config: FoldConfig) -> dict[str, Any]:
    """The JSON document of ``splits/folds.json`` (``unit`` is written for model folds only, so
    that task folds keep the file they always had)."""
    doc: dict[str, Any] = {
        "schema": FOLDS_SCHEMA,
        "k": len(folds),
        "seed": config.seed,
        "holdout_model_fraction": config.holdout_model_fraction,
        "heldout_recipe_families": list(config.heldout_recipe_families),
        "folds": [f.to_dict() for f in folds],
    }
    if config.unit != "task":
        doc["unit"] = config.unit
    return doc


def parse_folds(text: str, metadata: pd.DataFrame, where: str) -> list[Split]:
    """Folds from the text of a fold file, checked against the model table.

    Raises ``SchemaError`` naming ``where`` when the file is malformed, names unknown models, lets
    a fold train on a held-out model, or does not hold out every task exactly once (task folds) or
    every model outside the held-out recipes exactly once and no task (model folds, ``"unit":
    "model"``).
    """
    if len(text) > MAX_FOLDS_BYTES:
        raise SchemaError(f"{where}: {len(text)} bytes, more than the {MAX_FOLDS_BYTES} a fold file may have")
    doc = parse_json(text, where)
    if not isinstance(doc, dict) or doc.get("schema") != FOLDS_SCHEMA or not isinstance(doc.get("folds"), list):
        raise SchemaError(f"{where}: expected an object with schema {FOLDS_SCHEMA} and a 'folds' list")
    unit = doc.get("unit", "task")
    if unit not in UNITS:
        raise SchemaError(f"{where}: unit must be one of {list(UNITS)}, found {unit!r}")
    table = _indexed(metadata)
    known = set(table.index.astype(str))
    names = [f.name for f in Split.__dataclass_fields__.values()]
    folds = []
    for i, entry in enumerate(doc["folds"]):
        if not isinstance(entry, dict) or set(entry) != set(names):
            raise SchemaError(f"{where}: folds[{i}] must have exactly the fields {sorted(names)}")
        values: dict[str, Any] = {"fold": entry["fold"]}
        if entry["fold"] != i:
            raise SchemaError(f"{where}: folds[{i}] has fold number {entry['fold']!r}, expected {i}")
        for name in names[1:]:
            items = entry[name]
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise SchemaError(f"{where}: folds[{i}].{name} must be a list of strings")
            values[name] = tuple(items)
        split = Split(**values)
        ids = {*split.train_ids, *split.heldout_model_ids, *split.heldout_task_ids, *split.heldout_recipe_ids}
        unknown = sorted(ids - known)
        if unknown:
            raise SchemaError(f"{where}: folds[{i}] names models not in the set: {unknown[:5]}")
        leaked = set(split.train_ids) & (set(split.heldout_model_ids) | set(split.heldout_task_ids) | set(split.heldout_recipe_ids))
        if leaked:
            raise SchemaError(f"{where}: folds[{i}] trains on held-out models {sorted(leaked)[:5]}")
        folds.append(split)
    tasks = sorted(str(t) for t in table["task"].unique())
    if unit == "model":
        _check_model_folds(folds, sorted(known), where)
        return folds
    empty = [f.fold for f in folds if not f.heldout_tasks]
    if empty:  # a fold without held-out tasks is a model fold, which the file must say
        raise SchemaError(f"{where}: folds {empty[:5]} hold out no task; task folds hold out at least one (or set \"unit\": \"model\")")
    held = [t for f in folds for t in f.heldout_tasks]
    if sorted(held) != tasks:
        raise SchemaError(f"{where}: every task must be held out in exactly one fold; held out {sorted(held)}, tasks {tasks}")
    return folds


def _check_model_folds(folds: list[Split], models: list[str], where: str) -> None:
    """Model folds hold out no task, and every model outside the held-out recipes exactly once."""
    if not folds:
        raise SchemaError(f"{where}: model folds need at least one fold")
    for split in folds:
        if split.heldout_tasks or split.heldout_task_ids:
            raise SchemaError(f"{where}: folds[{split.fold}] holds out tasks; a model fold (unit 'model') holds out none")
    outside = set(folds[0].heldout_recipe_ids)
    if any(set(f.heldout_recipe_ids) != outside for f in folds):
        raise SchemaError(f"{where}: model folds must hold out the same held-out-recipe models in every fold")
    counts = Counter(m for f in folds for m in f.heldout_model_ids)
    expected = set(models) - outside
    if set(counts) != expected or max(counts.values(), default=0) > 1:
        twice = sorted(m for m, n in counts.items() if n > 1)[:5]
        never = sorted(expected - set(counts))[:5]
        raise SchemaError(
            f"{where}: every model must be held out in exactly one model fold; held out twice: {twice}, never: {never}"
        )
