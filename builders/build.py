"""Build a model set from a config: plan → shards of models → train → write → relations → finish.

The plan is a pure function of the config: every model's hyper-parameters and seed are drawn from
a random stream keyed by (config seed, task, family, index), and models are cut into shards
deterministically (same architecture and batch size, sorted by epochs). A shard is the unit of
work and of commit: it is trained by one engine call and written atomically by the writer. A
killed build, run again with the same command, skips committed shards and retrains the others
exactly as before, so the finished set is identical to an uninterrupted build.

The config is a :class:`builders.config.BuildConfig` (its sections, their keys and defaults are
documented there and in ``configs/modelset500.yaml``), checked completely before any training.
"""

from __future__ import annotations

import dataclasses
import functools
import json
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
from tqdm.auto import tqdm

from builders.config import DEFAULT_FAMILY, BuildConfig, DataConfig, RecipeFamily, load_config
from builders.engine import TaskTensors, TrainResult, TrainSpec, train_images, train_models
from builders.executors import get_executor
from builders.tasks import static_relations, tasks_frame
from builders.transfer import protocol_text, transfer_affinity
from builders.variants._card import card_text as variant_card_text
from builders.variants._pool import RecipePool
from builders.variants.flops import count_flops
from modelset.architectures import build_architecture, canonical_kwargs, decode_kwargs
from modelset.errors import NotAModelSetError, SchemaError
from modelset.folds import make_folds
from modelset.runtime import Runtime
from modelset.shards import write_shard_file
from modelset.tasks import Task, task_data
from modelset.writer import ModelRecord, ModelSetWriter

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_FAMILY", "RELIABILITY_FIELD", "build", "load_config", "plan_models", "plan_shards",
           "recipe_families"]  # fmt: skip

#: Header field of measured relation reliabilities: ``{relation: reliability(...) dict}``.
RELIABILITY_FIELD = "relation_reliability"


def recipe_families(cfg: BuildConfig) -> dict[str, RecipeFamily]:
    """Each recipe family's ranges, the default family first (see
    :meth:`builders.config.BuildConfig.recipe_families`)."""
    return cfg.recipe_families()


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def plan_models(cfg: BuildConfig, tasks: Sequence[Task]) -> list[TrainSpec]:
    """Every base model of the config, with hyper-parameters drawn from the documented ranges.

    Each model's draws come from its own stream ``SeedSequence([seed, task, family, index])``, so
    adding tasks or families never changes the models already planned. Within each architecture
    family of a task, the last indices go to the recipe families that claim models (by name), the
    others to the default family; the recipe knobs are drawn after the original hyper-parameters,
    so a config without them plans exactly the models it always did.
    """
    families = cfg.recipe_families()
    specs = []
    for ti, task in enumerate(tasks):
        for fi, fam in enumerate(cfg.families):
            arch = fam.architecture
            kwargs = dict(fam.arch_kwargs, num_classes=task.num_classes)
            n = fam.models_per_task
            owners: list[str] = []
            for name, hp in families.items():
                if hp.models_per_task is not None:
                    owners += [name] * hp.claims(fam)
            owners = [next(iter(families))] * (n - len(owners)) + owners
            for i in range(n):
                hp = families[owners[i]]
                rng = np.random.default_rng([cfg.seed, ti, fi, i])
                opt = str(rng.choice(hp.optimizer))
                lo, hi = hp.lr[opt]
                specs.append(
                    TrainSpec(
                        model_id=f"{task.task_id}-{arch}-base-{i:04d}",
                        task_id=task.task_id,
                        architecture=arch,
                        arch_kwargs=kwargs,
                        seed=int(rng.integers(0, 2**31 - 1)),
                        lr=round(_log_uniform(rng, lo, hi), 6),
                        weight_decay=round(_log_uniform(rng, *hp.weight_decay), 8),
                        batch_size=int(rng.choice(hp.batch_size)),
                        optimizer=opt,
                        epochs=int(rng.integers(hp.epochs[0], hp.epochs[1] + 1)),
                        schedule=str(rng.choice(hp.schedule)),
                        init=str(rng.choice(hp.init)),
                        augment=str(rng.choice(hp.augment)),
                        label_smoothing=round(_uniform(rng, hp.label_smoothing), 4),
                        input_norm=str(rng.choice(hp.input_norm)),
                        train_fraction=round(_uniform(rng, hp.train_fraction), 3),
                        recipe_family=owners[i],
                    )
                )
                kept = cfg.checkpoints.epochs_for(specs[-1].epochs)
                if kept:
                    specs[-1] = dataclasses.replace(specs[-1], checkpoint_epochs=kept)
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
    tasks: Sequence[Task], data: DataConfig, train_limit: int | None = None
) -> dict[str, TaskTensors]:
    """Each task's training slice (``train_limit`` images, default the config's) and test set,
    domain applied, as in-memory tensors."""
    limit = train_limit if train_limit is not None else data.train_limit
    out = {}
    for t in tasks:
        x, y = task_data(t, "train", data.root, limit=limit)
        xt, yt = task_data(t, "test", data.root, limit=data.test_limit)
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
    if res.trajectory:
        row["checkpoint_metrics"] = json.dumps(res.trajectory, separators=(",", ":"))
    return ModelRecord(
        model_id=s.model_id,
        architecture=s.architecture,
        arch_kwargs=dict(s.arch_kwargs),
        checkpoints={"init": res.init, **res.checkpoints, "final": res.final},
        row=row,
    )


def _runtime(cfg: BuildConfig) -> Runtime:
    """The build's runtime: a fixed thread count (and so a fixed number of engine stacks) and
    deterministic kernels make CPU builds bit-reproducible."""
    return Runtime(device=cfg.device, threads=cfg.threads)


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
    config: str | os.PathLike | Mapping[str, Any] | BuildConfig,
    out: str | os.PathLike,
    overwrite: bool = False,
    progress: bool = True,
    executor: str = "local",
    address: str | None = None,
) -> Path:
    """Build (or resume building) the model set of ``config`` (a YAML path, a mapping or a
    ``BuildConfig``; checked completely before anything is trained) into ``out``; returns ``out``.

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
    tasks = cfg.task_list()
    by_id = {t.task_id: t for t in tasks}
    specs = plan_models(cfg, tasks)
    shards = plan_shards(specs, cfg.shard_size)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with ModelSetWriter.open(out, name=cfg.name, config=cfg.to_dict(), overwrite=overwrite) as w:
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
        data = load_task_tensors(tasks, cfg.data)
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
        if cfg.transfer.enabled:
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
            card["Relation: transfer_affinity"] = protocol_text(cfg.transfer, cfg.transfer.sources_per_task, rel)
            timings["transfer_s"] = time.perf_counter() - t0
        w.set_tasks(tasks_df)
        if cfg.data.converged_reference:
            card["Converged reference"] = _reference_text(cfg.data.converged_reference, w.table)

        if cfg.variants:
            t0 = time.perf_counter()
            _variants(w, out, cfg, tasks, runtime, progress)
            card["Variant families"] = variant_card_text([v.model_dump(exclude_unset=True) for v in cfg.variants])
            timings["variants_s"] = time.perf_counter() - t0
        fold_cfg = cfg.folds.fold_config()
        w.set_folds(make_folds(w.table, fold_cfg), fold_cfg)
        w.finish(card=card)
    timings["total_s"] = time.perf_counter() - t_start
    log.info("built %s in %.1fs (%s)", out, timings["total_s"], timings)
    return out


def _build_text(cfg: BuildConfig, tasks: Sequence[Task], specs: Sequence[TrainSpec]) -> str:
    fams = ", ".join(f"{f.architecture} × {f.models_per_task}" for f in cfg.families)
    families = cfg.recipe_families()
    counts = {name: sum(s.recipe_family == name for s in specs) for name in families}
    recipes = " ".join(
        f"Recipe family `{name}` ({counts[name]} models): {_recipe_text(hp)}." for name, hp in families.items()
    )
    return (
        f"{len(specs)} base models over {len(tasks)} tasks ({fams} per task), trained by the "
        "multi-model engine of `builders/engine.py` (stacked parameters, one forward/backward for "
        "all models of a shard; numerically the same as one-model-at-a-time training). "
        f"Each task uses the first {_limit(cfg.data.train_limit)} training images of its "
        f"classes and the first {_limit(cfg.data.test_limit)} test images. Per model, drawn "
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


def _limit(n: int | None) -> str:
    return "all" if n is None else str(n)


def _recipe_text(hp: RecipeFamily) -> str:
    """One recipe family's ranges in words."""
    def span(v: Any) -> str:
        return f"uniform in {v}" if isinstance(v, list) else f"{v}"

    return (
        f"optimizer from {hp.optimizer}, learning rate log-uniform in "
        f"{ {o: hp.lr[o] for o in hp.optimizer} } by optimizer, weight decay log-uniform "
        f"in {hp.weight_decay}, batch size from {hp.batch_size}, epochs uniform in "
        f"{hp.epochs}, schedule from {hp.schedule}, init from {hp.init}, augment from "
        f"{hp.augment}, label smoothing {span(hp.label_smoothing)}, input_norm from "
        f"{hp.input_norm}, train_fraction {span(hp.train_fraction)}"
    )


def _measured_transfer(out: Path) -> tuple[pd.DataFrame, pd.Series] | None:
    """Transfer affinity and scratch accuracies an interrupted build had already committed (their
    reliability, written before the task table, is in the header).

    All are deterministic for a config, so measuring them again would give the same numbers.
    """
    import modelset

    try:
        ms = modelset.open(out)
    except NotAModelSetError:
        return None
    with ms:  # the set as far as it was committed
        if "transfer_affinity" not in ms.relations or "scratch_accuracy" not in ms.tasks.columns:
            return None
        return ms.relations["transfer_affinity"], ms.tasks["scratch_accuracy"]


def _transfer(
    w: ModelSetWriter,
    out: Path,
    cfg: BuildConfig,
    tasks: Sequence[Task],
    runtime: Runtime,
    progress: bool,
) -> tuple[pd.DataFrame, pd.Series, dict[str, Any] | None]:
    """Measure transfer affinity from the first ``sources_per_task`` cnn3 base models of each task
    (by id; the r-th of every task forms replicate r). Returns the matrix, scratch accuracies and
    the reliability of the matrix (``None`` with one source per task)."""
    import modelset

    tc = cfg.transfer
    table = w.table.set_index("model_id")
    ms = modelset.open(out)
    sources: dict[str, list] = {}
    for t in tasks:
        rows = table[(table["task"] == t.task_id) & (table["variant"] == "base")
                     & (table["architecture"] == "cnn3")].sort_index()  # fmt: skip
        for mid in list(rows.index)[:tc.sources_per_task]:
            kwargs = decode_kwargs(rows.loc[mid, "arch_kwargs"])
            sources.setdefault(t.task_id, []).append((mid, "cnn3", kwargs, ms.state_dict(mid)))
    budget = load_task_tensors(tasks, cfg.data, train_limit=tc.budget)
    bar = tqdm(total=1, desc="transfer affinity", unit="chunk", disable=not progress)

    def on_chunk(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    result = transfer_affinity(
        tasks, budget, sources, tc, seed=cfg.seed, runtime=runtime,
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


def _variants(
    w: ModelSetWriter,
    out: Path,
    cfg: BuildConfig,
    tasks: Sequence[Task],
    runtime: Runtime,
    progress: bool,
) -> None:
    """Apply each ``variants:`` entry's recipe to its parents; one shard per entry, so that the
    variants of all parents that share an architecture signature are one block (a bulk read of
    them is one read per tensor, not one per parent).

    Entries are :class:`builders.config.VariantConfig`; an entry's ``name`` (its ``key``, default
    the recipe name) is written to the ``recipe`` column, and is how a resumed build knows a
    (parent, entry) is done.
    """
    import modelset
    from builders import variants as variant_registry

    ms = modelset.open(out)
    vdata: dict[str, Any] = {}
    tensors = load_task_tensors(tasks, cfg.data)
    for t in tasks:
        d = tensors[t.task_id]
        vdata[t.task_id] = d
    # Every (entry, parent) call is queued at once so the workers never wait for an entry to end;
    # shards are still written entry by entry, in order.
    plans: list[tuple[str, list[tuple[str, Any, Any]]]] = []
    table = w.table.set_index("model_id")  # nothing is written before every call is queued
    with RecipePool(runtime.n_threads) as pool:
        for ei, entry in enumerate(cfg.variants):
            recipe = variant_registry.get_recipe(entry.recipe)
            key = entry.name
            par = entry.parents
            base = table[(table["variant"] == "base") & (table["architecture"] == par.architecture)].sort_index()
            chosen = variant_registry.spread_tasks([t.task_id for t in tasks], par.tasks)
            parents = [mid for t in chosen for mid in list(base[base["task"] == t].index)[:par.per_task]]
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
                    arch_kwargs=decode_kwargs(row["arch_kwargs"]),
                    state_dict=ms.state_dict(pid),
                    row=row.to_dict(),
                )
                seed = entry.seed * 1_000_003 + ei * 10_007 + pi
                data = vdata[str(row["task"])]
                calls.append((pid, data, pool.submit(recipe, parent, data, seed, dict(entry.params))))
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
