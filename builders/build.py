"""Build a model set from a config: plan → shards of models → train → write → relations → finish.

The plan is a pure function of the config: every model's hyper-parameters and seed are drawn from
a random stream keyed by (config seed, task, family, index), and models are cut into shards
deterministically (same architecture and batch size, sorted by epochs). A shard is the unit of
work and of commit: it is trained by one engine call and written atomically by the writer. A
killed build, run again with the same command, skips committed shards and retrains the others
exactly as before, so the finished set is identical to an uninterrupted build.

Config sections (see ``configs/modelset500.yaml`` for a documented example): ``name``, ``seed``,
``threads``, ``device``, ``data`` (``root``, ``train_limit``, ``test_limit``), ``tasks`` (a task
set name or a list), ``families`` (architecture, arch_kwargs, models_per_task),
``hyperparameters`` (the ranges, and optional named ``recipes`` families that override them for
some models of every task; see :func:`recipe_families`), ``shard_size``, ``transfer`` (see :mod:`builders.transfer`)
and ``variants`` (recipes of ``builders.variants`` applied to chosen base models).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from builders.engine import (
    AUGMENTS,
    INITS,
    OPTIMIZERS,
    SCHEDULES,
    TaskTensors,
    TrainResult,
    TrainSpec,
    train_images,
    train_models,
)
from builders.executors import get_executor
from builders.tasks import static_relations, tasks_frame, tasks_from_config
from builders.transfer import TransferConfig, protocol_text, transfer_affinity
from builders.variants._card import card_text as variant_card_text
from builders.variants._pool import RecipePool
from builders.variants.flops import count_flops
from modelset.architectures import build_architecture, canonical_kwargs
from modelset.errors import SchemaError
from modelset.folds import FoldConfig, make_folds
from modelset.format import RELATIONS_DIR, TASKS_FILE
from modelset.runtime import Runtime
from modelset.shards import write_shard_file
from modelset.tasks import INPUT_NORMS, Task, task_data
from modelset.writer import ModelRecord, ModelSetWriter

log = logging.getLogger(__name__)

#: Header field of measured relation reliabilities: ``{relation: reliability(...) dict}``.
RELIABILITY_FIELD = "relation_reliability"

DEFAULT_HPARAMS: dict[str, Any] = {
    "optimizer": ["sgd", "adam"],
    "lr": {"sgd": [0.03, 0.2], "adam": [0.002, 0.02]},  # log-uniform per optimizer
    "weight_decay": [1.0e-5, 1.0e-3],  # log-uniform
    "batch_size": [32, 64, 128],
    "epochs": [4, 10],  # uniform integer, inclusive
    # The recipe knobs below default to the original recipe (choices, or a value / [lo, hi] range).
    "schedule": ["cosine"],
    "init": ["default"],
    "augment": ["none"],
    "label_smoothing": 0.0,  # a value, or [lo, hi] uniform
    "input_norm": ["standard"],
    "train_fraction": 1.0,  # a value, or [lo, hi] uniform: share of the task's training images
}
#: Keys of ``hyperparameters`` that take a list of choices, and the values allowed.
_CHOICES: dict[str, tuple[Any, ...]] = {
    "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "init": INITS, "augment": AUGMENTS,
    "input_norm": INPUT_NORMS, "batch_size": (),
}  # fmt: skip
#: Keys that take ``[lo, hi]`` (or, for the last two, also a single value).
_RANGES = ("weight_decay", "epochs", "label_smoothing", "train_fraction")
#: The recipe family of models that no other family claims (and of every model of a config
#: without ``recipes``).
DEFAULT_FAMILY = "zoo"
_TOP_KEYS = {
    "name", "seed", "threads", "device", "data", "tasks", "families", "hyperparameters",
    "shard_size", "transfer", "variants", "description", "folds",
}  # fmt: skip


def load_config(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A config as a validated dict (from a YAML file path or a mapping)."""
    if isinstance(config, Mapping):
        cfg = dict(config)
        where = "config"
    else:
        where = str(config)
        try:
            cfg = yaml.safe_load(Path(config).read_text())
        except FileNotFoundError as exc:
            raise SchemaError(f"config {where} does not exist") from exc
        except yaml.YAMLError as exc:
            raise SchemaError(f"config {where} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise SchemaError(f"config {where}: expected a mapping at the top level")
    unknown = set(cfg) - _TOP_KEYS
    if unknown:
        raise SchemaError(f"config {where}: unknown keys {sorted(unknown)}; known {sorted(_TOP_KEYS)}")
    for key in ("name", "tasks", "families"):
        if key not in cfg:
            raise SchemaError(f"config {where}: missing required key {key!r}")
    FoldConfig.from_dict(cfg.get("folds"), where=f"config {where}: folds")  # fail before any training
    for i, fam in enumerate(cfg["families"]):
        if "architecture" not in fam or "models_per_task" not in fam:
            raise SchemaError(f"config {where}: families[{i}] needs architecture and models_per_task")
    _check_hparams(cfg, where)
    return cfg


def _hparams(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The top-level ranges (defaults filled in), without ``recipes``."""
    hp = dict(DEFAULT_HPARAMS)
    hp.update({k: v for k, v in (cfg.get("hyperparameters") or {}).items() if k != "recipes"})
    return hp


def recipe_families(cfg: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each recipe family's ranges: the top-level ranges with the family's overrides (``lr``
    merges by optimizer); the default family first, then the others sorted by name.

    Without ``hyperparameters.recipes`` there is one family, :data:`DEFAULT_FAMILY`. Each entry
    keeps its ``models_per_task`` (``None`` for the default family, which takes the models that
    the others leave).
    """
    base = _hparams(cfg)
    declared = dict((cfg.get("hyperparameters") or {}).get("recipes") or {DEFAULT_FAMILY: {}})
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(declared, key=lambda n: ("models_per_task" in (declared[n] or {}), str(n))):
        overrides = dict(declared[name] or {})
        hp = dict(base, models_per_task=overrides.pop("models_per_task", None))
        if "lr" in overrides:
            hp["lr"] = {**base["lr"], **overrides.pop("lr")}
        hp.update(overrides)
        out[str(name)] = hp
    return out


def _family_counts(fam_spec: Mapping[str, Any], family: Mapping[str, Any]) -> int:
    """Models per task a recipe family claims of one architecture family."""
    per = family.get("models_per_task")
    if isinstance(per, Mapping):
        return int(per.get(str(fam_spec["architecture"]), 0))
    return int(per or 0)


def _check_hparams(cfg: Mapping[str, Any], where: str) -> None:
    """Validate ``hyperparameters`` (ranges, choices and recipe families) with errors that name
    the key and what it allows."""
    hp_cfg = cfg.get("hyperparameters") or {}
    if not isinstance(hp_cfg, Mapping):
        raise SchemaError(f"config {where}: hyperparameters must be a mapping")
    known = set(DEFAULT_HPARAMS)
    unknown = set(hp_cfg) - known - {"recipes"}
    if unknown:
        raise SchemaError(
            f"config {where}: unknown hyperparameters {sorted(unknown)}; known {sorted(known | {'recipes'})}"
        )
    recipes = hp_cfg.get("recipes")
    if recipes is not None and (not isinstance(recipes, Mapping) or not recipes):
        raise SchemaError(f"config {where}: hyperparameters.recipes must map family names to their ranges")
    for name, over in (recipes or {}).items():
        if over is not None and not isinstance(over, Mapping):
            raise SchemaError(f"config {where}: recipe family {name!r} must be a mapping of ranges")
        bad = set(over or {}) - known - {"models_per_task"}
        if bad:
            raise SchemaError(
                f"config {where}: recipe family {name!r}: unknown keys {sorted(bad)}; known "
                f"{sorted(known | {'models_per_task'})}"
            )
    families = recipe_families(cfg)
    defaults = [n for n, f in families.items() if f["models_per_task"] is None]
    if len(defaults) != 1:
        raise SchemaError(
            f"config {where}: exactly one recipe family must leave out models_per_task (it takes the "
            f"models the others leave); got {defaults or 'none'}"
        )
    for name, hp in families.items():
        at = f"config {where}: recipe family {name!r}" if recipes else f"config {where}: hyperparameters"
        for key, allowed in _CHOICES.items():
            values = hp[key]
            if not isinstance(values, list) or not values:
                raise SchemaError(f"{at}: {key} must be a non-empty list of choices, got {values!r}")
            if allowed and set(values) - set(allowed):
                raise SchemaError(f"{at}: {key} {sorted(set(values) - set(allowed))} not in {list(allowed)}")
        for opt in hp["optimizer"]:
            rng = hp["lr"].get(opt) if isinstance(hp["lr"], Mapping) else None
            if not (isinstance(rng, list) and len(rng) == 2 and 0 < rng[0] <= rng[1]):
                raise SchemaError(f"{at}: lr needs a [lo, hi] range for optimizer {opt!r}, got {rng!r}")
        for key in _RANGES:
            lo, hi = _bounds(hp[key], f"{at}: {key}", single=key in ("label_smoothing", "train_fraction"))
            ok = {"weight_decay": 0 <= lo, "epochs": 1 <= lo, "label_smoothing": 0 <= lo and hi < 1,
                  "train_fraction": 0 < lo and hi <= 1}[key]  # fmt: skip
            if not ok:
                raise SchemaError(f"{at}: {key} [{lo}, {hi}] is out of bounds")
        per = hp["models_per_task"]
        if per is not None:
            values = per.values() if isinstance(per, Mapping) else [per]
            if not all(isinstance(v, int) and v >= 0 for v in values):
                raise SchemaError(
                    f"{at}: models_per_task must be a count or {{architecture: count}}, got {per!r}"
                )
    for i, fam in enumerate(cfg["families"]):
        claimed = sum(_family_counts(fam, f) for f in families.values())
        if claimed > int(fam["models_per_task"]):
            raise SchemaError(
                f"config {where}: recipe families claim {claimed} {fam['architecture']} models per "
                f"task but families[{i}] has only {fam['models_per_task']}"
            )


def _bounds(value: Any, what: str, single: bool) -> tuple[float, float]:
    """``(lo, hi)`` of a ``[lo, hi]`` range (or of a single value where ``single``)."""
    if single and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value)
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        if value[0] <= value[1]:
            return float(value[0]), float(value[1])
    raise SchemaError(
        f"{what} must be {'a value or ' if single else ''}[lo, hi] with lo <= hi, got {value!r}"
    )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def plan_models(cfg: Mapping[str, Any], tasks: Sequence[Task]) -> list[TrainSpec]:
    """Every base model of the config, with hyper-parameters drawn from the documented ranges.

    Each model's draws come from its own stream ``SeedSequence([seed, task, family, index])``, so
    adding tasks or families never changes the models already planned. Within each architecture
    family of a task, the last indices go to the recipe families that claim models (by name), the
    others to the default family; the recipe knobs are drawn after the original hyper-parameters,
    so a config without them plans exactly the models it always did.
    """
    families = recipe_families(cfg)
    seed = int(cfg.get("seed", 0))
    specs = []
    for ti, task in enumerate(tasks):
        for fi, fam in enumerate(cfg["families"]):
            arch = str(fam["architecture"])
            kwargs = dict(fam.get("arch_kwargs") or {})
            kwargs["num_classes"] = task.num_classes
            n = int(fam["models_per_task"])
            owners: list[str] = []
            for name, hp in families.items():
                if hp["models_per_task"] is not None:
                    owners += [name] * _family_counts(fam, hp)
            owners = [next(iter(families))] * (n - len(owners)) + owners
            for i in range(n):
                hp = families[owners[i]]
                rng = np.random.default_rng([seed, ti, fi, i])
                opt = str(rng.choice(hp["optimizer"]))
                lo, hi = hp["lr"][opt]
                specs.append(
                    TrainSpec(
                        model_id=f"{task.task_id}-{arch}-base-{i:04d}",
                        task_id=task.task_id,
                        architecture=arch,
                        arch_kwargs=kwargs,
                        seed=int(rng.integers(0, 2**31 - 1)),
                        lr=round(_log_uniform(rng, lo, hi), 6),
                        weight_decay=round(_log_uniform(rng, *hp["weight_decay"]), 8),
                        batch_size=int(rng.choice(hp["batch_size"])),
                        optimizer=opt,
                        epochs=int(rng.integers(hp["epochs"][0], hp["epochs"][1] + 1)),
                        schedule=str(rng.choice(hp["schedule"])),
                        init=str(rng.choice(hp["init"])),
                        augment=str(rng.choice(hp["augment"])),
                        label_smoothing=round(_uniform(rng, hp["label_smoothing"]), 4),
                        input_norm=str(rng.choice(hp["input_norm"])),
                        train_fraction=round(_uniform(rng, hp["train_fraction"]), 3),
                        recipe_family=owners[i],
                    )
                )
    return specs


def _uniform(rng: np.random.Generator, value: float | Sequence[float]) -> float:
    """A single value as is, or a uniform draw from ``[lo, hi]``."""
    if isinstance(value, (int, float)):
        return float(value)
    return float(rng.uniform(float(value[0]), float(value[1])))


def plan_shards(specs: Sequence[TrainSpec], shard_size: int) -> list[list[TrainSpec]]:
    """Cut the models into shards the engine trains in one call (one architecture and batch
    size per shard; sorted by epochs so models leave the stack close together)."""
    groups: dict[tuple[str, int], list[TrainSpec]] = {}
    for s in specs:
        groups.setdefault((s.signature(), s.batch_size), []).append(s)
    shards = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda s: (s.epochs, s.task_id, s.model_id))
        n = math.ceil(len(members) / shard_size)
        size = math.ceil(len(members) / n)  # even shards rather than a small remainder
        shards.extend(members[i : i + size] for i in range(0, len(members), size))
    return shards


def load_task_tensors(
    tasks: Sequence[Task], cfg: Mapping[str, Any], train_limit: int | None = None
) -> dict[str, TaskTensors]:
    """Each task's training slice and test set, domain applied, as in-memory tensors."""
    data_cfg = dict(cfg.get("data") or {})
    root = data_cfg.get("root")
    limit = train_limit if train_limit is not None else data_cfg.get("train_limit")
    test_limit = data_cfg.get("test_limit")
    out = {}
    for t in tasks:
        x, y = task_data(t, "train", root, limit=limit)
        xt, yt = task_data(t, "test", root, limit=test_limit)
        out[t.task_id] = TaskTensors(x, y, xt, yt, t.num_classes, t.dataset)
    return out


@functools.lru_cache(maxsize=64)
def _flops(architecture: str, kwargs_json: str, input_shape: tuple[int, ...]) -> int:
    """Counted FLOPs of one forward pass, per architecture signature (the same for every seed)."""
    return count_flops(build_architecture(architecture, kwargs_json), input_shape)


def _record(res: TrainResult, task: Task, data: TaskTensors) -> ModelRecord:
    s = res.spec
    flops = _flops(s.architecture, canonical_kwargs(dict(s.arch_kwargs)), tuple(data.x_train.shape[1:]))
    row = {
        "task": s.task_id,
        "dataset": task.dataset,
        "domain": task.domain,
        "num_classes": task.num_classes,
        "variant": "base",
        "parent_id": "",
        "seed": s.seed,
        "lr": s.lr,
        "weight_decay": s.weight_decay,
        "batch_size": s.batch_size,
        "optimizer": s.optimizer,
        "epochs": s.epochs,
        "schedule": s.schedule,
        "init": s.init,
        "augment": s.augment,
        "label_smoothing": s.label_smoothing,
        "input_norm": s.input_norm,
        "train_fraction": s.train_fraction,
        "recipe_family": s.recipe_family,
        "steps": res.steps,
        "train_size": train_images(s, int(data.x_train.shape[0])),  # images this model saw
        "test_size": int(data.x_test.shape[0]),
        "train_loss": round(res.train_loss, 6),
        "test_accuracy": res.test_accuracy,
        "flops": flops,
        "flops_sparse": flops,  # base models are dense
        "chance_accuracy": res.chance,
        "below_chance": res.below_chance,
    }
    return ModelRecord(
        model_id=s.model_id,
        architecture=s.architecture,
        arch_kwargs=dict(s.arch_kwargs),
        checkpoints={"init": res.init, "final": res.final},
        row=row,
    )


def _runtime(cfg: Mapping[str, Any]) -> Runtime:
    """The build's runtime: a fixed thread count (and so a fixed number of engine stacks) and
    deterministic kernels make CPU builds bit-reproducible."""
    return Runtime(device=str(cfg.get("device", "cpu")), threads=int(cfg.get("threads", 1)))


def _setup_torch(runtime: Runtime) -> None:
    runtime.apply()
    torch.use_deterministic_algorithms(True, warn_only=True)


def train_shard(shard: Sequence[TrainSpec], shared: Mapping[str, Any], path: Path) -> None:
    """Train one shard and write it as a complete shard file at ``path`` (an executor's unit).

    Module level so that Ray workers can import it; sets up torch as ``build`` does, since a
    worker is a fresh process.
    """
    runtime: Runtime = shared["runtime"]
    _setup_torch(runtime)
    data, tasks = shared["data"], shared["tasks"]
    results = train_models(shard, data, runtime, progress=shared["progress"])
    for r in results:
        bad = [k for k, v in r.final.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            s = r.spec
            raise SchemaError(
                f"model {s.model_id!r} diverged: non-finite parameters {bad[:3]} after training "
                f"({s.optimizer}, lr {s.lr}, init {s.init}, schedule {s.schedule}, batch {s.batch_size}); "
                "narrow the config's hyperparameters.lr range for this optimizer and run the build again"
            )
    records = [_record(r, tasks[r.spec.task_id], data[r.spec.task_id]) for r in results]
    write_shard_file(path, records, "staging")


def build(
    config: str | os.PathLike | Mapping[str, Any],
    out: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> Path:
    """Build (or resume building) the model set of ``config`` into ``out``; returns ``out``.

    ``executor`` says where shards are trained: ``"local"`` (this process) or ``"ray"`` (a Ray
    cluster at ``address``, or ``RAY_ADDRESS``, or a local instance). Either way this process
    alone commits the shards into ``out``. With ``threads`` above 1, variant recipes run in
    spawned worker processes, which import the calling script: call ``build`` from a script under
    ``if __name__ == "__main__":``.
    """
    cfg = load_config(config)
    out = Path(out)
    runtime = _runtime(cfg)
    _setup_torch(runtime)
    tasks = tasks_from_config(cfg["tasks"])
    by_id = {t.task_id: t for t in tasks}
    specs = plan_models(cfg, tasks)
    shards = plan_shards(specs, int(cfg.get("shard_size", 50)))
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with ModelSetWriter.open(out, name=str(cfg["name"]), config=cfg, overwrite=overwrite) as w:
        done = w.model_ids
        todo = [sh for sh in shards if any(s.model_id not in done for s in sh)]
        if not todo and w.header.get("complete"):
            log.info("%s is already complete (%d models); nothing to do", out, len(done))
            return out
        measured = _measured_transfer(out)  # a resumed build keeps what it had measured
        # Tasks and static relations first, so a partial set is already usable.
        w.set_tasks(tasks_frame(tasks))
        for name, df in static_relations(tasks).items():
            w.set_relation(name, df)
        log.info("%d models in %d shards; %d shards to train", len(specs), len(shards), len(todo))
        data = load_task_tensors(tasks, cfg)
        bar = tqdm(total=len(specs), initial=len(specs) - sum(len(sh) for sh in todo),
                   desc="base models", unit="model", disable=not progress)  # fmt: skip
        shared = {"data": data, "tasks": by_id, "runtime": runtime,
                  "progress": progress and executor == "local"}
        staging = out.parent / f".{out.name}.staging"  # beside the set: the set checksums its files
        # A shard's engine runs one stack per thread (the recipe's thread count): a Ray task asks
        # for that many CPUs.
        ray_kwargs = {"cpus_per_shard": runtime.n_threads} if executor == "ray" else {}
        with get_executor(executor, address=address, **ray_kwargs) as runner:
            for shard, path in runner.map_shards(train_shard, todo, staging, shared):
                w.commit_shard_file(path)
                path.unlink()
                bar.update(len(shard))
        bar.close()
        timings["base_models_s"] = time.perf_counter() - t_start
        del data, shared  # the training slices of every task (~0.6 GB for ModelSet500): not needed below

        tasks_df = tasks_frame(tasks)
        card: dict[str, str] = {"How it was made": _build_text(cfg, tasks, specs)}
        tcfg = cfg.get("transfer") or {}
        if tcfg.get("enabled", False):
            t0 = time.perf_counter()
            if measured is not None:
                aff, scratch = measured
                rel = (w.header.get(RELIABILITY_FIELD) or {}).get("transfer_affinity")
                log.info("transfer affinity already measured; kept")
            else:
                aff, scratch, rel = _transfer(w, out, cfg, tasks, runtime, progress)
            w.set_relation("transfer_affinity", aff)
            if rel is not None:  # before the task table: a resumed build finds it with the matrix
                w.set_header_field(RELIABILITY_FIELD, {"transfer_affinity": rel})
            tasks_df["scratch_accuracy"] = scratch.reindex(tasks_df.index)
            card["Relation: transfer_affinity"] = protocol_text(*_transfer_config(cfg), rel)
            timings["transfer_s"] = time.perf_counter() - t0
        w.set_tasks(tasks_df)
        reference = (cfg.get("data") or {}).get("converged_reference")
        if reference:
            card["Converged reference"] = _reference_text(reference, w.table)

        if cfg.get("variants"):
            t0 = time.perf_counter()
            _variants(w, out, cfg, tasks, runtime, progress)
            card["Variant families"] = variant_card_text(cfg["variants"])
            timings["variants_s"] = time.perf_counter() - t0
        fold_cfg = FoldConfig.from_dict(cfg.get("folds"))
        w.set_folds(make_folds(w.table, fold_cfg), fold_cfg)
        w.finish(card=card)
    timings["total_s"] = time.perf_counter() - t_start
    log.info("built %s in %.1fs (%s)", out, timings["total_s"], timings)
    return out


def _build_text(cfg: Mapping[str, Any], tasks: Sequence[Task], specs: Sequence[TrainSpec]) -> str:
    data_cfg = cfg.get("data") or {}
    fams = ", ".join(f"{f['architecture']} × {f['models_per_task']}" for f in cfg["families"])
    families = recipe_families(cfg)
    counts = {name: sum(s.recipe_family == name for s in specs) for name in families}
    recipes = " ".join(
        f"Recipe family `{name}` ({counts[name]} models): {_recipe_text(hp)}." for name, hp in families.items()
    )
    return (
        f"{len(specs)} base models over {len(tasks)} tasks ({fams} per task), trained by the "
        "multi-model engine of `builders/engine.py` (stacked parameters, one forward/backward for "
        "all models of a shard; numerically the same as one-model-at-a-time training). "
        f"Each task uses the first {data_cfg.get('train_limit', 'all')} training images of its "
        f"classes and the first {data_cfg.get('test_limit', 'all')} test images. Per model, drawn "
        f"from its own seeded stream and recorded in the model table. {recipes} SGD has momentum "
        "0.9; Adam and SGD use L2 weight decay, AdamW decoupled decay. Schedules: `cosine` decays "
        "to 0, `warmup_cosine` after a linear warm-up over the first 10% of steps, `step` divides "
        "the rate by 10 at 50% and 75% of the steps. `init` re-draws convolution and linear "
        "weights (biases zero) or keeps torch's (`default`). `augment`: random shifts of up to 2 "
        "pixels with edge padding and/or horizontal flips. `train_size` is the number of training "
        "images a model saw (a seeded subset where `train_fraction` < 1). Models expect inputs "
        "in their `input_norm`: `standard` (the data set's standardization) or `minus_one_one` "
        "(pixels scaled to [-1, 1]); `modelset.tasks.task_data(task, split, "
        "input_norm=row['input_norm'])` gives them. `below_chance` flags models whose test "
        "accuracy is within 2 points of the majority-class rate. Same config and seed give "
        "identical parameters on the CPU."
    )


def _recipe_text(hp: Mapping[str, Any]) -> str:
    """One recipe family's ranges in words."""
    def span(v: Any) -> str:
        return f"uniform in {v}" if isinstance(v, list) else f"{v}"

    return (
        f"optimizer from {hp['optimizer']}, learning rate log-uniform in "
        f"{ {o: hp['lr'][o] for o in hp['optimizer']} } by optimizer, weight decay log-uniform "
        f"in {hp['weight_decay']}, batch size from {hp['batch_size']}, epochs uniform in "
        f"{hp['epochs']}, schedule from {hp['schedule']}, init from {hp['init']}, augment from "
        f"{hp['augment']}, label smoothing {span(hp['label_smoothing'])}, input_norm from "
        f"{hp['input_norm']}, train_fraction {span(hp['train_fraction'])}"
    )


def _transfer_config(cfg: Mapping[str, Any]) -> tuple[TransferConfig, int]:
    tcfg = dict(cfg.get("transfer") or {})
    n_sources = int(tcfg.pop("sources_per_task", 1))
    return TransferConfig.from_dict(tcfg), n_sources


def _measured_transfer(out: Path) -> tuple[pd.DataFrame, pd.Series] | None:
    """Transfer affinity and scratch accuracies an interrupted build had already committed (their
    reliability, written before the task table, is in the header).

    All are deterministic for a config, so measuring them again would give the same numbers.
    """
    relation = out / RELATIONS_DIR / "transfer_affinity.csv"
    tasks = out / TASKS_FILE
    if not (relation.exists() and tasks.exists()):
        return None
    frame = pd.read_parquet(tasks)
    if "scratch_accuracy" not in frame.columns:
        return None
    aff = pd.read_csv(relation, index_col=0)
    aff.index = aff.index.astype(str)
    aff.columns = aff.columns.astype(str)
    return aff, frame["scratch_accuracy"]


def _transfer(
    w: ModelSetWriter,
    out: Path,
    cfg: Mapping[str, Any],
    tasks: Sequence[Task],
    runtime: Runtime,
    progress: bool,
) -> tuple[pd.DataFrame, pd.Series, dict[str, Any] | None]:
    """Measure transfer affinity from the first ``sources_per_task`` cnn3 base models of each task
    (by id; the r-th of every task forms replicate r). Returns the matrix, scratch accuracies and
    the reliability of the matrix (``None`` with one source per task)."""
    import modelset

    tc, n_sources = _transfer_config(cfg)
    table = w.table.set_index("model_id")
    ms = modelset.open(out)
    sources: dict[str, list] = {}
    for t in tasks:
        rows = table[(table["task"] == t.task_id) & (table["variant"] == "base")
                     & (table["architecture"] == "cnn3")].sort_index()  # fmt: skip
        for mid in list(rows.index)[:n_sources]:
            kwargs = _kwargs(rows.loc[mid, "arch_kwargs"])
            sources.setdefault(t.task_id, []).append((mid, "cnn3", kwargs, ms.state_dict(mid)))
    budget = load_task_tensors(tasks, cfg, train_limit=tc.budget)
    bar = tqdm(total=1, desc="transfer affinity", unit="chunk", disable=not progress)

    def on_chunk(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = transfer_affinity(
        tasks, budget, sources, tc, seed=int(cfg.get("seed", 0)), runtime=runtime,
        progress=progress, on_chunk=on_chunk,
    )  # fmt: skip
    bar.close()
    return result.affinity, result.scratch, result.reliability


def _reference_text(path: str, table: pd.DataFrame) -> str:
    """The card's "Converged reference" section: the figures of ``scripts/converged_reference.py``
    (a JSON file; relative paths are from the repository root) beside this set's cnn3 base models."""
    import json

    file = Path(path) if Path(path).is_absolute() else Path(__file__).resolve().parents[1] / path
    try:
        refs = json.loads(file.read_text())["references"]
        kinds = [k for k in ("full", "budget") if k in refs]
        tasks = sorted(refs[kinds[0]]["tasks"])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise SchemaError(
            f"data.converged_reference: cannot read {file} ({exc!r}); write it with "
            "`python scripts/converged_reference.py --json FILE` or remove the key"
        ) from exc
    base = table[(table["variant"] == "base") & (table["architecture"] == "cnn3")]
    lines = ["| task | " + " | ".join(f"converged, {k}" for k in kinds) + " | base cnn3 median | "
             + " | ".join(f"gap to {k}" for k in kinds) + " |",
             "|---" * (2 * len(kinds) + 2) + "|"]  # fmt: skip
    gaps: dict[str, list[float]] = {k: [] for k in kinds}
    for task in tasks:
        accs = base.loc[base["task"] == task, "test_accuracy"].astype(float)
        median = float(accs.median()) if len(accs) else float("nan")
        cells, gap_cells = [], []
        for k in kinds:
            runs = np.asarray(refs[k]["tasks"][task]["acc"], dtype=float)
            sd = float(runs.std(ddof=1)) if len(runs) > 1 else 0.0
            cells.append(f"{runs.mean():.3f} ± {sd:.3f}")
            gap_cells.append(f"{median - runs.mean():+.3f}")
            gaps[k] += list(accs - runs.mean())
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {median:.3f} | " + " | ".join(gap_cells) + " |")
    protocols = "; ".join(
        f"`{k}`: {p['epochs']} epochs, batch {p['batch_size']}, learning rate tuned over {p['lrs']}, "
        f"{p['seeds']} seeds" for k, p in ((k, refs[k]["protocol"]) for k in kinds)
    )
    summary = ", ".join(f"{float(np.median(g)):+.3f} against `{k}`" for k, g in gaps.items() if g) or "n/a"
    return (
        "How far the zoo's cnn3 base models are from a cnn3 trained to convergence on the same task, "
        "measured by `scripts/converged_reference.py`: Adam with a cosine schedule, the learning rate "
        "chosen on held-out training images, test accuracy mean ± std over seeds. `full` trains "
        "on every training image of the task's classes but the last 500 (its validation images), "
        "`budget` on the set's own training slice (`data.train_limit` images; validation: the 500 "
        f"after it). {protocols}.\n\n" + "\n".join(lines)
        + f"\n\nMedian over these tasks' cnn3 base models of (accuracy − converged reference): {summary}."
    )


def _kwargs(value: Any) -> dict[str, Any]:
    import json

    return json.loads(value) if isinstance(value, str) else dict(value)


def _variants(
    w: ModelSetWriter,
    out: Path,
    cfg: Mapping[str, Any],
    tasks: Sequence[Task],
    runtime: Runtime,
    progress: bool,
) -> None:
    """Apply each ``variants:`` entry's recipe to its parents; one shard per entry, so that the
    variants of all parents that share an architecture signature are one block (a bulk read of
    them is one read per tensor, not one per parent).

    Entry fields: ``recipe`` (a name of ``builders.variants``), ``parents`` (``per_task``: how many
    base models per task, first by id; ``tasks``: how many tasks, spread evenly over the task list
    (every k-th), default all; ``architecture``: default cnn3), ``seed``, ``params``
    (passed to the recipe), ``key`` (default: the recipe name; written to the ``recipe`` column,
    and how a resumed build knows a (parent, entry) is done).
    """
    import modelset
    from builders import variants as variant_registry

    ms = modelset.open(out)
    vdata: dict[str, Any] = {}
    tensors = load_task_tensors(tasks, cfg)
    for t in tasks:
        d = tensors[t.task_id]
        vdata[t.task_id] = d
    # Every (entry, parent) call is queued at once so the workers never wait for an entry to end;
    # shards are still written entry by entry, in order.
    plans: list[tuple[str, list[tuple[str, Any, Any]]]] = []
    table = w.table.set_index("model_id")  # nothing is written before every call is queued
    with RecipePool(runtime.n_threads) as pool:
        for ei, entry in enumerate(cfg["variants"]):
            recipe = variant_registry.get_recipe(str(entry["recipe"]))
            key = str(entry.get("key", entry["recipe"]))
            par = dict(entry.get("parents") or {})
            per_task = int(par.get("per_task", 1))
            arch = str(par.get("architecture", "cnn3"))
            base = table[(table["variant"] == "base") & (table["architecture"] == arch)].sort_index()
            chosen = variant_registry.spread_tasks([t.task_id for t in tasks], par.get("tasks"))
            parents = [mid for t in chosen for mid in list(base[base["task"] == t].index)[:per_task]]
            finished = set()
            if "recipe" in table.columns:
                finished = set(table.loc[table["recipe"] == key, "parent_id"])
            calls = []
            for pi, pid in enumerate(parents):
                if pid in finished:
                    continue
                row = ms.metadata.loc[pid]
                parent = variant_registry.Parent(
                    model_id=pid,
                    architecture=str(row["architecture"]),
                    arch_kwargs=_kwargs(row["arch_kwargs"]),
                    state_dict=ms.state_dict(pid),
                    row=row.to_dict(),
                )
                seed = int(entry.get("seed", 0)) * 1_000_003 + ei * 10_007 + pi
                data = vdata[str(row["task"])]
                calls.append((pid, data, pool.submit(recipe, parent, data, seed, dict(entry.get("params") or {}))))
            plans.append((key, calls))
        bar = tqdm(total=sum(len(c) for _, c in plans), desc="variants", unit="parent", disable=not progress)
        for key, calls in plans:
            bar.set_description(f"variants {key}")
            shard: list = []
            for pid, data, call in calls:
                records = call.result()
                for rec in records:
                    rec.row["recipe"] = key
                    rec.row.setdefault("test_size", int(data.y_test.shape[0]))
                    rec.row.setdefault("parent_id", pid)
                shard.extend(records)
                bar.update(1)
            if shard:
                w.write_shard(shard)
        bar.close()
