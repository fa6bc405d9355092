"""The build config, typed: one :class:`BuildConfig` of frozen pydantic models, loaded from YAML by
:func:`load_config`.

Every section rejects keys it does not know, at every depth, with the file, the full key path and
the closest known key (``configs/x.yaml: variants[2].parent: unknown key; did you mean
'parents'?``). Names the build looks up later (task set, architectures, optimizers and other
recipe knobs, variant recipes and their params, held-out recipe families) are checked here too,
so a typo fails before any model is trained. Every default lives in the models below.

A set's header records the config as :meth:`BuildConfig.to_dict`: the keys the YAML gave, not
the defaults, so the same YAML always records the same header.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from builders.engine import AUGMENTS, INITS, OPTIMIZERS, SCHEDULES
from modelset.errors import ModelSetError, SchemaError
from modelset.folds import FoldConfig
from modelset.tasks import INPUT_NORMS, Task

#: The recipe family of models that no other family claims (and of every model of a config
#: without ``hyperparameters.recipes``).
DEFAULT_FAMILY = "zoo"


class ConfigError(SchemaError):
    """A build config that cannot be built: the message names the file and the key path."""


# -- value types ------------------------------------------------------------------------------


def _number(value: Any) -> float:
    # Keeps ints as ints, so that the header records a YAML's numbers exactly as written.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, found {value!r:.80}")
    return value


def _ordered(value: list[float]) -> list[float]:
    if value[0] > value[1]:
        raise ValueError(f"expected [lo, hi] with lo <= hi, found {value}")
    return value


def _within(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False):
    """A check that every number of a value (a number or a range) lies within bounds."""

    def check(value: Any) -> Any:
        for v in value if isinstance(value, list) else [value]:
            if (lo is not None and (v <= lo if open_lo else v < lo)) or (
                hi is not None and (v >= hi if open_hi else v > hi)
            ):
                left = "(" if open_lo else "["
                right = ")" if open_hi else "]"
                raise ValueError(f"{value} is out of bounds {left}{lo}, {hi}{right}")
        return value

    return check


def _one_of(allowed: tuple[str, ...]):
    def check(values: list[str]) -> list[str]:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ValueError(f"{bad} not in {list(allowed)}")
        return values

    return check


Real = Annotated[float, PlainValidator(_number)]
Range = Annotated[list[Real], Field(min_length=2, max_length=2), AfterValidator(_ordered)]
IntRange = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2), AfterValidator(_ordered)]
PositiveInt = Annotated[int, Field(ge=1)]


def _choices(allowed: tuple[str, ...]) -> Any:
    return Annotated[list[str], Field(min_length=1), AfterValidator(_one_of(allowed))]


class Section(BaseModel):
    """Base of every config section: frozen, strict types, unknown keys refused with a hint."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                raise PydanticCustomError("unknown_key", "unknown key", {"keys": unknown, "known": list(cls.model_fields)})
        return data


S = TypeVar("S", bound=Section)


def _fail(path: str, message: str) -> PydanticCustomError:
    """A config error at ``path`` (a key path below the section that raises it) found by a check
    across keys."""
    return PydanticCustomError("config", "{message}", {"path": path, "message": message})


# -- sections ---------------------------------------------------------------------------------


class DataConfig(Section):
    """``data:``: where the images are and how many of each task's images the models see."""

    root: str | None = None  # None: MODELSET_DATA_ROOT or data/raw
    train_limit: PositiveInt | None = None  # first training images of each task's classes (None: all)
    test_limit: PositiveInt | None = None
    converged_reference: str | None = None  # a JSON of scripts/converged_reference.py, shown in the card


class TaskConfig(Section):
    """One task of an inline ``tasks:`` list (the fields of :class:`modelset.tasks.Task`)."""

    task_id: str
    dataset: str = "fashion_mnist"
    classes: list[int] = Field(min_length=1)
    domain: str = "identity"
    domain_kwargs: dict[str, Any] = Field(default_factory=dict)

    def task(self) -> Task:
        return Task(self.task_id, self.dataset, tuple(self.classes), self.domain, dict(self.domain_kwargs))


class FamilyConfig(Section):
    """One architecture family of ``families:``: every task gets ``models_per_task`` of it."""

    architecture: str
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # num_classes comes from the task
    models_per_task: PositiveInt

    @model_validator(mode="after")
    def _buildable(self) -> FamilyConfig:
        import torch

        from modelset.architectures import build_architecture, list_architectures

        if self.architecture not in list_architectures():
            raise _fail("architecture", _unknown("architecture", self.architecture, list_architectures()))
        try:
            with torch.device("meta"):  # shapes only: no memory, no time
                build_architecture(self.architecture, dict(self.arch_kwargs, num_classes=2))
        except (ModelSetError, ValueError, TypeError) as exc:
            raise _fail("arch_kwargs", f"{self.arch_kwargs} do not build {self.architecture}: {exc}") from None
        return self


class Ranges(Section):
    """The hyper-parameter ranges of a recipe family; each model draws from them on its own
    seeded stream. Choices are lists; ``[lo, hi]`` ranges are log-uniform for ``lr`` and
    ``weight_decay``, uniform (integers, inclusive) for ``epochs``; ``label_smoothing`` and
    ``train_fraction`` take a value or a uniform ``[lo, hi]``. The defaults are the original
    recipe."""

    optimizer: _choices(OPTIMIZERS) = ["sgd", "adam"]
    lr: dict[str, Annotated[Range, AfterValidator(_within(0, open_lo=True))]] = {
        "sgd": [0.03, 0.2], "adam": [0.002, 0.02],
    }  # fmt: skip
    weight_decay: Annotated[Range, AfterValidator(_within(0))] = [1.0e-5, 1.0e-3]
    batch_size: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 64, 128]
    epochs: IntRange = [4, 10]
    schedule: _choices(SCHEDULES) = ["cosine"]
    init: _choices(INITS) = ["default"]
    augment: _choices(AUGMENTS) = ["none"]
    label_smoothing: Annotated[Real | Range, AfterValidator(_within(0, 1, open_hi=True))] = 0.0
    input_norm: _choices(INPUT_NORMS) = ["standard"]
    train_fraction: Annotated[Real | Range, AfterValidator(_within(0, 1, open_lo=True))] = 1.0  # share of the task's images


def _optional(field: Any) -> Any:
    """A field's type, checks included, or ``None``."""
    return (Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation) | None


#: Models per task a recipe family claims: one count for every architecture family, or
#: ``{architecture: count}``.
Claim = Annotated[int, Field(ge=0)] | dict[str, Annotated[int, Field(ge=0)]]

#: A named recipe family's overrides of the top-level ranges (unset: inherited; ``lr`` merges by
#: optimizer), and the models it claims (unset for the one family that takes the others' leftovers).
RecipeOverrides = create_model(
    "RecipeOverrides",
    __base__=Section,
    models_per_task=(Claim | None, None),
    **{name: (_optional(field), None) for name, field in Ranges.model_fields.items()},
)


class RecipeFamily(Ranges):
    """A recipe family resolved: its full ranges and its claim (``None``: the default family)."""

    models_per_task: Claim | None = None

    def claims(self, family: FamilyConfig) -> int:
        """Models per task this recipe family claims of one architecture family."""
        per = self.models_per_task
        if isinstance(per, dict):
            return per.get(family.architecture, 0)
        return per or 0


class Hyperparameters(Ranges):
    """``hyperparameters:``: the ranges, and optional named ``recipes`` families that override
    them for some models of every task (see :meth:`BuildConfig.recipe_families`)."""

    recipes: Annotated[dict[str, RecipeOverrides | None], Field(min_length=1)] | None = None


class TransferConfig(Section):
    """``transfer:``: the transfer-affinity protocol's knobs (all recorded in the model set's
    config and card; see :mod:`builders.transfer`)."""

    enabled: bool = False
    sources_per_task: PositiveInt = 1  # cnn3 base models per task, first by id: one replicate each
    budget: PositiveInt = 500  # target training images
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 32
    optimizer: Annotated[str, AfterValidator(lambda v: _one_of(OPTIMIZERS)([v])[0])] = "adam"
    lr: Annotated[Real, AfterValidator(_within(0, open_lo=True))] = 0.003
    weight_decay: Annotated[Real, AfterValidator(_within(0))] = 1e-4
    seeds: PositiveInt = 1  # runs per (replicate, target): scratch models, and fine-tunes per source model
    chunk: PositiveInt = 64  # models per engine call


class ParentsConfig(Section):
    """Which base models of a ``variants:`` entry get the recipe: the first ``per_task`` of the
    ``architecture`` (by id) in each of ``tasks`` tasks spread evenly over the task list (all if
    unset)."""

    per_task: PositiveInt = 1
    tasks: PositiveInt | None = None
    architecture: str = "cnn3"


class VariantConfig(Section):
    """One ``variants:`` entry: a recipe of :mod:`builders.variants` applied to chosen parents."""

    recipe: str
    parents: ParentsConfig = ParentsConfig()
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)  # the recipe's keyword arguments
    key: str | None = None  # the ``recipe`` column (default: the recipe name); resumes by it

    @property
    def name(self) -> str:
        return self.key if self.key is not None else self.recipe

    @model_validator(mode="after")
    def _recipe_accepts_params(self) -> VariantConfig:
        from builders import variants

        if self.recipe not in variants.list_recipes():
            raise _fail("recipe", _unknown("variant recipe", self.recipe, variants.list_recipes()))
        check_recipe_params(self.recipe, self.params)
        return self


class CheckpointsConfig(Section):
    """Training trajectories of the base models: besides ``init`` and ``final``, keep the
    parameters after every epoch (``every_epoch``) or after the listed ``epochs`` (named
    ``epoch_{e}``; epochs a model does not reach before its last are skipped for it)."""

    every_epoch: bool = False
    epochs: list[PositiveInt] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_way(self) -> CheckpointsConfig:
        if self.every_epoch and self.epochs:
            raise _fail("epochs", "give every_epoch or a list of epochs, not both")
        if len(set(self.epochs)) != len(self.epochs):
            raise _fail("epochs", f"epochs must be distinct, got {self.epochs}")
        return self

    def epochs_for(self, total: int) -> tuple[int, ...]:
        """The kept epochs of a model that trains ``total`` epochs (its last is ``final``)."""
        if self.every_epoch:
            return tuple(range(1, total))
        return tuple(sorted(e for e in self.epochs if e < total))


class FoldsConfig(Section):
    """``folds:``: the task folds of the evaluation protocol (:mod:`modelset.folds`; its
    :class:`~modelset.folds.FoldConfig`, which the reader also uses, holds the defaults)."""

    k: Annotated[int, Field(ge=2)] = FoldConfig.k
    seed: int = FoldConfig.seed
    holdout_model_fraction: Annotated[Real, AfterValidator(_within(0, 1, open_lo=True, open_hi=True))] = (
        FoldConfig.holdout_model_fraction
    )
    heldout_recipe_families: list[str] = Field(default_factory=list)

    def fold_config(self) -> FoldConfig:
        return FoldConfig(self.k, self.seed, self.holdout_model_fraction, tuple(self.heldout_recipe_families))


class BuildConfig(Section):
    """A model set's build config (see ``configs/modelset500.yaml`` for a documented example)."""

    name: str
    description: str | None = None
    seed: int = 0
    threads: PositiveInt = 1  # part of the recipe: CPU results are bit-identical for a fixed count
    device: str = "cpu"  # "cpu", "cuda", "cuda:1" or "auto"
    data: DataConfig = DataConfig()
    tasks: str | Annotated[list[TaskConfig], Field(min_length=1)]  # a task set name, or the tasks
    families: Annotated[list[FamilyConfig], Field(min_length=1)]
    hyperparameters: Hyperparameters = Hyperparameters()
    shard_size: PositiveInt = 50  # models per engine call and per committed shard
    transfer: TransferConfig = TransferConfig()
    variants: list[VariantConfig] = Field(default_factory=list)
    folds: FoldsConfig = FoldsConfig()
    checkpoints: CheckpointsConfig = CheckpointsConfig()

    def task_list(self) -> list[Task]:
        """The config's tasks: its task set's, or the inline list."""
        from builders.tasks import tasks_from_config

        return tasks_from_config(self.tasks)

    def recipe_families(self) -> dict[str, RecipeFamily]:
        """Each recipe family's ranges: the top-level ranges with the family's overrides (``lr``
        merges by optimizer); the default family first, then the others sorted by name.

        Without ``hyperparameters.recipes`` there is one family, :data:`DEFAULT_FAMILY`.
        """
        hp = self.hyperparameters
        base = hp.model_dump(exclude={"recipes"})
        declared = hp.recipes or {DEFAULT_FAMILY: None}
        out: dict[str, RecipeFamily] = {}
        for name in sorted(declared, key=lambda n: (_claim(declared[n]) is not None, n)):
            overrides = declared[name].model_dump(exclude_unset=True) if declared[name] is not None else {}
            if "lr" in overrides:
                overrides["lr"] = {**base["lr"], **overrides["lr"]}
            out[name] = RecipeFamily.model_validate({**base, **overrides})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-able data: the keys it was given (defaults left out), as the
        set's header records it."""
        return self.model_dump(mode="json", exclude_unset=True)

    @model_validator(mode="after")
    def _consistent(self) -> BuildConfig:
        from builders.tasks import list_task_sets

        if isinstance(self.tasks, str) and self.tasks not in list_task_sets():
            raise _fail("tasks", _unknown("task set", self.tasks, list_task_sets()))
        families = self.recipe_families()
        at = "hyperparameters.recipes" if self.hyperparameters.recipes else "hyperparameters"
        defaults = [n for n, f in families.items() if f.models_per_task is None]
        if len(defaults) != 1:
            raise _fail(at, "exactly one recipe family must leave out models_per_task (it takes the "
                            f"models the others leave); got {defaults or 'none'}")  # fmt: skip
        for name, fam in families.items():
            where = f"hyperparameters.recipes.{name}" if self.hyperparameters.recipes else "hyperparameters"
            for opt in fam.optimizer:
                if opt not in fam.lr:
                    raise _fail(f"{where}.lr", f"needs a [lo, hi] range for optimizer {opt!r}")
        for i, fam in enumerate(self.families):
            claimed = sum(f.claims(fam) for f in families.values())
            if claimed > fam.models_per_task:
                raise _fail(f"families[{i}].models_per_task", f"recipe families claim {claimed} "
                            f"{fam.architecture} models per task but the family has only {fam.models_per_task}")  # fmt: skip
        unknown = sorted(set(self.folds.heldout_recipe_families) - set(families))
        if unknown:
            raise _fail("folds.heldout_recipe_families", f"{unknown} are not recipe families of the config "
                        f"({sorted(families)})")  # fmt: skip
        archs = {f.architecture: f.models_per_task for f in self.families}
        for i, entry in enumerate(self.variants):
            if entry.parents.architecture not in archs:
                raise _fail(f"variants[{i}].parents.architecture", f"no family of architecture "
                            f"{entry.parents.architecture!r}; the families are {sorted(archs)}")  # fmt: skip
        if self.transfer.enabled and archs.get("cnn3", 0) < self.transfer.sources_per_task:
            raise _fail("transfer.sources_per_task", f"transfer fine-tunes {self.transfer.sources_per_task} "
                        f"cnn3 base model(s) per task; the families have {archs.get('cnn3', 0)}")  # fmt: skip
        return self


def _claim(overrides: Any) -> Any:
    return None if overrides is None else overrides.models_per_task


def _unknown(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
    return f"unknown {kind} {name!r}; {hint}"


def check_recipe_params(recipe: str, params: Mapping[str, Any]) -> None:
    """Check ``params`` against the recipe's signature: its keyword arguments and, if it takes
    ``**regime``, the fields of :class:`builders.variants._common.Regime`. Raises a ``ValueError``
    naming an unknown param with the closest known one, or a bad regime value."""
    from builders.variants import get_recipe
    from builders.variants._common import Regime

    fn = get_recipe(recipe)
    parameters = list(inspect.signature(fn).parameters.values())[3:]  # after parent, data, seed
    named = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    regime = [f for f in Regime.__dataclass_fields__ if any(p.kind is p.VAR_KEYWORD for p in parameters)]
    for key in params:
        if key not in named + regime:
            close = difflib.get_close_matches(key, named + regime, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(named + regime)}"
            raise _fail(f"params.{key}", f"unknown param of recipe {recipe!r}; {hint}")
    try:
        Regime.from_params({k: v for k, v in params.items() if k in regime and k not in named})
    except ModelSetError as exc:
        raise _fail("params", str(exc)) from None


# -- loading ----------------------------------------------------------------------------------


def load_config(config: str | os.PathLike | Mapping[str, Any] | BuildConfig) -> BuildConfig:
    """The typed config of a YAML file (or of a mapping; a ``BuildConfig`` is returned as is).

    Raises :class:`ConfigError` naming the file and every bad key path.
    """
    if isinstance(config, BuildConfig):
        return config
    if isinstance(config, Mapping):
        data: Any = config
        where = "config"
    else:
        where = str(config)
        try:
            data = yaml.safe_load(Path(config).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config {where} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {where} is not valid YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level, found {type(data).__name__}")
    return load_config_section(BuildConfig, dict(data), where)


def load_config_section(model: type[S], data: Any, where: str) -> S:
    """``data`` validated as the config section ``model``; :class:`ConfigError` with one line
    ``where: key.path: message`` per bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{where}: {line}" for line in _messages(exc))) from None


#: Labels pydantic puts in an error's location for the member of a union it tried.
_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part) in _UNION_TAGS or "[" in str(part):
            continue  # a union member's label, not a key
        else:
            out += f".{part}" if out else str(part)
    return out


def _messages(exc: ValidationError) -> list[str]:
    """``path: message`` lines, one per bad key (a union's failed members joined by "or")."""
    found: dict[str, list[str]] = {}
    for err in exc.errors(include_url=False):
        ctx = err.get("ctx") or {}
        loc = _path(err["loc"])
        if err["type"] == "unknown_key":
            for key in ctx["keys"]:
                close = difflib.get_close_matches(key, ctx["known"], n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(ctx['known'])}"
                found.setdefault(f"{loc}.{key}" if loc else key, []).append(f"unknown key; {hint}")
        elif err["type"] == "config":
            path = f"{loc}.{ctx['path']}" if loc else ctx["path"]
            found.setdefault(path, []).append(ctx["message"])
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] != "value_error":
                msg += f", found {err['input']!r:.80}"
            found.setdefault(loc or "(top level)", []).append(msg)
    return [f"{path}: {' or '.join(dict.fromkeys(msgs))}" for path, msgs in found.items()]
