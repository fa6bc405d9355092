"""Measured transfer affinity between tasks (Taskonomy-style, Zamir et al. 2018), with its own
test–retest reliability.

For every ordered pair (source S, target T): a model trained on S is fine-tuned on a small budget
of T's training images (its classification head replaced by a freshly initialized one, since S's
class order means nothing on T), and compared with a model trained from scratch on the same
budget, with exactly the source's architecture and kwargs, the same optimizer, schedule and seed
(hence the same data order and the same fresh head). The affinity is the gain in test accuracy:

    transfer_affinity[S, T] = acc(fine-tune S-model on T) - acc(scratch on T)

Rows are sources, columns targets; the matrix is not symmetric.

Each pair is measured in several independent **replicates**: replicate ``r`` fine-tunes the
``r``-th source model of every task (models trained with their own drawn recipe and seed) and
compares it with its own scratch models (their own seeds). Replicates with even and odd ``r`` form
two independent halves; the Spearman correlation of the two halves' off-diagonal affinities is the
ground truth's test–retest reliability, and the Spearman–Brown formula gives the reliability of
the full (averaged) matrix. All runs use the multi-model engine.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from builders.config import TransferConfig  # the protocol's knobs: the build config's transfer section
from builders.engine import TaskTensors, TrainSpec, train_models
from modelset.architectures import build_architecture, canonical_kwargs, decode_kwargs
from modelset.runtime import Runtime
from modelset.tasks import Task

log = logging.getLogger(__name__)

#: A source model: ``(model_id, architecture, arch_kwargs, final_state_dict)``.
Source = tuple[str, str, dict, dict[str, torch.Tensor]]


@dataclass
class TransferResult:
    """What :func:`transfer_affinity` measured.

    ``affinity``: task × task DataFrame (rows source, columns target), the mean over replicates.
    ``scratch``: per-task Series of scratch test accuracy (mean over replicates and seeds).
    ``replicates``: one affinity matrix per replicate. ``reliability``: see :func:`reliability`
    (``None`` with a single replicate).
    """

    affinity: pd.DataFrame
    scratch: pd.Series
    replicates: list[pd.DataFrame]
    reliability: dict[str, float | int | str | None] | None


def reliability(half_a: pd.DataFrame, half_b: pd.DataFrame) -> dict[str, float | int | str | None]:
    """Test–retest reliability of a relation measured twice independently.

    ``half_a``, ``half_b``: task × task matrices (same index and columns). Returns
    ``spearman_halves`` (Spearman ρ between the off-diagonal entries of the two halves, pairs
    missing in either skipped; ``None`` if a half is constant), ``spearman_brown`` (2ρ / (1 + ρ): the reliability of their
    average), ``n_pairs``, ``spearman_within_target`` (mean over targets of ρ between the halves'
    columns: how reproducible the ranking of sources for one target is, as the transfer track
    uses it; ``None`` when no target has 3 varying pairs) and a ``description``.
    """
    if list(half_a.index) != list(half_b.index) or list(half_a.columns) != list(half_b.columns):
        raise ValueError("the two halves must have the same tasks in the same order")
    a, b = half_a.to_numpy(dtype=float), half_b.to_numpy(dtype=float)
    off = ~np.eye(a.shape[0], a.shape[1], dtype=bool)
    keep = off & np.isfinite(a) & np.isfinite(b)
    n = int(keep.sum())
    if n < 3:
        raise ValueError(f"reliability needs at least 3 measured off-diagonal pairs, got {n}")
    if np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:  # a constant half: no rank correlation
        log.warning("a half of the relation is constant over its %d pairs: reliability undefined", n)
        rho = None
    else:
        rho = float(spearmanr(a[keep], b[keep]).statistic)
    within = []
    for j in range(a.shape[1]):
        col = keep[:, j]
        if col.sum() >= 3 and np.ptp(a[col, j]) > 0 and np.ptp(b[col, j]) > 0:
            within.append(float(spearmanr(a[col, j], b[col, j]).statistic))
    return {
        "spearman_halves": rho,
        "spearman_brown": None if rho is None else _spearman_brown(rho),
        "n_pairs": n,
        "spearman_within_target": float(np.mean(within)) if within else None,
        "description": (
            "Spearman correlation of the off-diagonal transfer affinities measured by two independent "
            "halves (different source models, scratch and fine-tuning seeds), and its Spearman-Brown "
            "correction 2r/(1+r): the reliability of the published matrix, their average. "
            "spearman_within_target: mean over targets of the same correlation among one target's sources."
        ),
    }


def _spearman_brown(rho: float) -> float:
    return 2 * rho / (1 + rho) if rho > -1 else -1.0


@functools.lru_cache(maxsize=32)
def head_keys(architecture: str, kwargs_json: str) -> frozenset[str]:
    """State-dict keys whose shape depends on ``num_classes`` (the classification head)."""
    kwargs = {k: v for k, v in decode_kwargs(kwargs_json).items() if k != "num_classes"}
    a = build_architecture(architecture, dict(kwargs, num_classes=2)).state_dict()
    b = build_architecture(architecture, dict(kwargs, num_classes=3)).state_dict()
    return frozenset(k for k in a if a[k].shape != b[k].shape)


def _run_seed(seed: int, replicate: int, run: int, target: int) -> int:
    return ((seed * 1_009 + replicate) * 1_009 + run) * 100_003 + target


def plan_transfer(
    tasks: Sequence[Task],
    sources: Mapping[str, Sequence[Source]],
    cfg: TransferConfig,
    seed: int = 0,
) -> tuple[list[TrainSpec], dict[str, dict[str, torch.Tensor]]]:
    """Every scratch and fine-tuning run of the protocol, and the fine-tunes' initial weights.

    ``sources`` maps a task id → its source models; the ``r``-th model of every task belongs to
    replicate ``r``. Scratch ids are ``scratch|{target}|{r}|{run}``, fine-tune ids
    ``ft|{source task}|{target}|{model}|{r}|{run}``; a fine-tune and its scratch model share
    architecture, kwargs, hyper-parameters and seed. All sources must share one architecture
    signature (``ValueError`` otherwise); the initial weights leave out the head.
    """
    ids = [t.task_id for t in tasks]
    unknown = sorted(set(sources) - set(ids))
    if unknown:
        raise ValueError(f"transfer sources of unknown tasks {unknown}")
    flat = [s for t in ids for s in sources.get(t, [])]
    if not flat:
        raise ValueError("transfer affinity needs at least one source model")
    sigs = {f"{arch}:{canonical_kwargs({k: v for k, v in kw.items() if k != 'num_classes'})}"
            for _, arch, kw, _ in flat}  # fmt: skip
    if len(sigs) != 1:
        raise ValueError(
            f"transfer sources must share one architecture and kwargs (scratch models copy them); got {sorted(sigs)}"
        )
    _, arch, kwargs0, _ = flat[0]
    base_kwargs = {k: v for k, v in kwargs0.items() if k != "num_classes"}
    head = head_keys(arch, canonical_kwargs(base_kwargs))
    n_rep = max(len(v) for v in sources.values())
    specs: list[TrainSpec] = []
    inits: dict[str, dict[str, torch.Tensor]] = {}

    def spec(model_id: str, tgt: Task, run_seed: int) -> TrainSpec:
        return TrainSpec(model_id, tgt.task_id, arch, dict(base_kwargs, num_classes=tgt.num_classes), run_seed,
                         cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.optimizer, cfg.epochs)  # fmt: skip

    for ti, tgt in enumerate(tasks):
        for r in range(n_rep):
            for run in range(cfg.seeds):
                run_seed = _run_seed(seed, r, run, ti)
                specs.append(spec(f"scratch|{tgt.task_id}|{r}|{run}", tgt, run_seed))
                for src in ids:
                    if len(sources.get(src, [])) <= r:
                        continue
                    mid, _, _, sd = sources[src][r]
                    sid = f"ft|{src}|{tgt.task_id}|{mid}|{r}|{run}"
                    specs.append(spec(sid, tgt, run_seed))
                    inits[sid] = {k: v for k, v in sd.items() if k not in head}
    return specs, inits


def transfer_affinity(
    tasks: Sequence[Task],
    data: Mapping[str, TaskTensors],
    sources: Mapping[str, Sequence[Source]],
    cfg: TransferConfig,
    seed: int = 0,
    runtime: Runtime | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> TransferResult:
    """Measure the affinity matrix and its reliability.

    ``data`` holds each task's *budget* training slice and its test set. ``sources`` maps a
    source task id → list of source models (see :func:`plan_transfer`).
    """
    specs, inits = plan_transfer(tasks, sources, cfg, seed)
    # The engine trains one signature per call; chunks keep memory bounded.
    chunks = [specs[i : i + cfg.chunk] for i in range(0, len(specs), cfg.chunk)]
    acc: dict[str, float] = {}
    for ci, chunk in enumerate(chunks):
        for res in train_models(chunk, data, runtime, progress=progress, inits=inits):
            acc[res.spec.model_id] = res.test_accuracy
        if on_chunk is not None:
            on_chunk(ci + 1, len(chunks))
    return summarize(tasks, acc)


def summarize(tasks: Sequence[Task], acc: Mapping[str, float]) -> TransferResult:
    """Affinity matrices, scratch accuracies and reliability from run accuracies keyed by the ids
    of :func:`plan_transfer`."""
    ids = [t.task_id for t in tasks]
    scratch_runs: dict[tuple[str, int], list[float]] = {}
    ft_runs: dict[tuple[str, str, int], list[float]] = {}
    for key, value in acc.items():
        parts = key.split("|")
        if parts[0] == "scratch":
            scratch_runs.setdefault((parts[1], int(parts[2])), []).append(value)
        else:
            ft_runs.setdefault((parts[1], parts[2], int(parts[4])), []).append(value)
    n_rep = 1 + max(r for _, r in scratch_runs)
    replicates = []
    for r in range(n_rep):
        m = pd.DataFrame(math.nan, index=ids, columns=ids)
        for (src, tgt, rr), vals in ft_runs.items():
            if rr == r:
                m.loc[src, tgt] = float(np.mean(vals)) - float(np.mean(scratch_runs[(tgt, r)]))
        replicates.append(m)
    affinity = _mean_frames(replicates)
    scratch = pd.Series(
        {t: float(np.mean([v for (tt, _), vals in scratch_runs.items() if tt == t for v in vals])) for t in ids},
        name="scratch_accuracy",
    )
    rel = None
    if n_rep >= 2:
        rel = reliability(_mean_frames(replicates[0::2]), _mean_frames(replicates[1::2]))
        log.info("transfer affinity reliability: halves rho %.3f, Spearman-Brown %.3f over %d pairs",
                 rel["spearman_halves"], rel["spearman_brown"], rel["n_pairs"])  # fmt: skip
    for m in [affinity, *replicates]:
        m.index.name = "source"
        m.columns.name = "target"
    return TransferResult(affinity, scratch, replicates, rel)


def _mean_frames(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Element-wise mean, skipping entries missing in some frames."""
    stacked = np.stack([f.to_numpy(dtype=float) for f in frames])
    with np.errstate(invalid="ignore"):
        counts = np.isfinite(stacked).sum(0)
        mean = np.where(counts > 0, np.nansum(stacked, 0) / np.maximum(counts, 1), np.nan)
    return pd.DataFrame(mean, index=frames[0].index, columns=frames[0].columns)


def protocol_text(
    cfg: TransferConfig, n_sources: int, rel: Mapping[str, float | int | str | None] | None = None
) -> str:
    """The "Relation: transfer_affinity" section of the dataset card."""
    text = (
        "Transfer affinity (Taskonomy-style, Zamir et al. 2018). For each ordered pair of tasks "
        f"(source S, target T), each of the first {n_sources} cnn3 base model(s) of S (by id) is "
        f"fine-tuned on the first {cfg.budget} training images of T for {cfg.epochs} epochs "
        f"({cfg.optimizer}, lr {cfg.lr}, weight decay {cfg.weight_decay}, batch {cfg.batch_size}, "
        "cosine schedule), all layers trainable, with the classification head replaced by a freshly "
        "initialized one. Models with exactly the sources' architecture and kwargs are trained from "
        "scratch on T with the same budget, optimizer and seed (same data order, same fresh head), "
        f"{cfg.seeds} seed(s) per source model. `relations/transfer_affinity` holds fine-tuned test "
        "accuracy on T minus scratch test accuracy on T, averaged over the replicates (rows: source, "
        "columns: target; not symmetric). The task table's `scratch_accuracy` column holds the "
        "scratch accuracies. Replicate r uses the r-th source model of every task and its own scratch "
        "and fine-tuning seeds, so even and odd replicates are two independent measurements."
    )
    if rel is None:
        return text + " With a single replicate, the matrix's reliability was not measured."
    if rel.get("spearman_halves") is None:
        return text + " One half of the measurement was constant, so its reliability is undefined."
    within = rel.get("spearman_within_target")
    within_text = "n/a" if within is None else f"{float(within):.3f}"
    return text + (
        f"\n\nReliability (test-retest, measured by this build): the two halves' off-diagonal "
        f"affinities ({rel['n_pairs']} pairs) have Spearman ρ = {float(rel['spearman_halves']):.3f}; "
        f"the Spearman-Brown reliability of their average, the published matrix, is "
        f"{float(rel['spearman_brown']):.3f}. Ranking the sources of one target, as the transfer "
        f"track does, the halves agree with mean ρ = {within_text} over "
        "targets. The same figures are in `modelset.json` under `relation_reliability`."
    )
