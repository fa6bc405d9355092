"""Measured transfer affinity between tasks (Taskonomy-style, Zamir et al. 2018).

For every ordered pair (source S, target T): a model trained on S is fine-tuned on a small budget
of T's training images (its head replaced by a fresh one of T's size), and compared with models
trained from scratch on the same budget with the same optimizer, schedule and seeds. The affinity
is the gain in test accuracy on T:

    transfer_affinity[S, T] = acc(fine-tune S-model on T) - acc(scratch on T)

averaged over the sources' representative models and seeds. Rows are sources, columns targets;
the matrix is not symmetric. All runs use the multi-model engine, so the 20 × 20 pairs of the
default set cost about as much as training a few dozen models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from builders.engine import TaskTensors, TrainSpec, train_models
from modelset.tasks import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferConfig:
    """The protocol's knobs (all recorded in the model set's config and card)."""

    budget: int = 500  # target training images
    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 0.003
    weight_decay: float = 1e-4
    seeds: int = 2  # scratch models per target; fine-tunes per (source model, target)
    chunk: int = 64  # models per engine call

    @classmethod
    def from_dict(cls, d: Mapping | None) -> TransferConfig:
        d = dict(d or {})
        d.pop("enabled", None)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"transfer config: unknown keys {sorted(unknown)}")
        return cls(**d)


def protocol_text(cfg: TransferConfig, n_sources: int) -> str:
    """The protocol paragraph of the dataset card."""
    return (
        "Transfer affinity (Taskonomy-style). For each ordered pair of tasks (source S, target T), "
        f"{n_sources} model(s) of S per source are fine-tuned on the first {cfg.budget} training "
        f"images of T for {cfg.epochs} epochs ({cfg.optimizer}, lr {cfg.lr}, weight decay "
        f"{cfg.weight_decay}, batch {cfg.batch_size}, cosine schedule), all layers trainable, with "
        "the classification head replaced by a freshly initialized one of T's size; "
        f"{cfg.seeds} seed(s) each. The same budget, optimizer and seeds train models from scratch "
        "on T. `relations/transfer_affinity` holds mean fine-tuned test accuracy on T minus mean "
        "scratch test accuracy on T (rows: source, columns: target; not symmetric). "
        "The task table's `scratch_accuracy` column holds the scratch accuracies."
    )


def transfer_affinity(
    tasks: Sequence[Task],
    data: Mapping[str, TaskTensors],
    sources: Mapping[str, Sequence[tuple[str, str, dict, dict[str, torch.Tensor]]]],
    cfg: TransferConfig,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """Measure the affinity matrix.

    ``data`` holds each task's *budget* training slice and its test set. ``sources`` maps a
    source task id → list of ``(model_id, architecture, arch_kwargs, final_state_dict)``.
    Returns ``(affinity, scratch_accuracy)``: a task × task DataFrame and a per-task Series.
    """
    ids = [t.task_id for t in tasks]
    if not any(sources.values()):
        raise ValueError("transfer affinity needs at least one source model")
    # Scratch models use the sources' architecture, so the comparison isolates the initialization.
    _, arch0, kwargs0, _ = next(v for v in sources.values() if v)[0]
    specs: list[TrainSpec] = []
    inits: dict[str, dict[str, torch.Tensor]] = {}
    for ti, tgt in enumerate(tasks):
        for r in range(cfg.seeds):
            run_seed = seed * 100_003 + ti * 101 + r
            specs.append(
                TrainSpec(
                    f"scratch|{tgt.task_id}|{r}",
                    tgt.task_id,
                    "cnn3",
                    {"num_classes": tgt.num_classes},
                    run_seed,
                    cfg.lr,
                    cfg.weight_decay,
                    cfg.batch_size,
                    cfg.optimizer,
                    cfg.epochs,
                )  # fmt: skip
            )
            for src in tasks:
                for mid, arch, kwargs, sd in sources.get(src.task_id, []):
                    kw = dict(kwargs, num_classes=tgt.num_classes)
                    sid = f"ft|{src.task_id}|{tgt.task_id}|{mid}|{r}"
                    specs.append(
                        TrainSpec(
                            sid,
                            tgt.task_id,
                            arch,
                            kw,
                            run_seed,
                            cfg.lr,
                            cfg.weight_decay,
                            cfg.batch_size,
                            cfg.optimizer,
                            cfg.epochs,
                        )  # fmt: skip
                    )
                    inits[sid] = sd
    # Group by architecture signature (the engine trains one signature per call).
    groups: dict[str, list[TrainSpec]] = {}
    for s in specs:
        groups.setdefault(s.signature(), []).append(s)
    acc: dict[str, float] = {}
    chunks = [g[i : i + cfg.chunk] for g in groups.values() for i in range(0, len(g), cfg.chunk)]
    for ci, chunk in enumerate(chunks):
        for res in train_models(chunk, data, device=device, progress=progress, inits=inits):
            acc[res.spec.model_id] = res.test_accuracy
        if on_chunk is not None:
            on_chunk(ci + 1, len(chunks))
    scratch = pd.Series(
        {t: sum(acc[f"scratch|{t}|{r}"] for r in range(cfg.seeds)) / cfg.seeds for t in ids},
        name="scratch_accuracy",
    )
    aff = pd.DataFrame(float("nan"), index=ids, columns=ids)
    for src in ids:
        for tgt in ids:
            vals = [v for k, v in acc.items() if k.startswith(f"ft|{src}|{tgt}|")]
            if vals:
                aff.loc[src, tgt] = sum(vals) / len(vals) - scratch[tgt]
    aff.index.name = "source"
    aff.columns.name = "target"
    return aff, scratch
