"""Honest splits: held-out tasks, and held-out models of the seen tasks.

``split(ms, seed)`` draws a fraction of tasks that no learned method may see (scored by
retrieval) and, within the remaining tasks, a fraction of model *families* held out (scored by task
classification and pair verification). A family is a base model with all its variants (the
``parent_id`` chain): a pruned or sparse twin of a training model would otherwise leak into the
held-out models. Methods fit on ``train_ids`` only. The split is a pure function of the model
table and the seed, so every method is scored on the same models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from modelset.errors import ModelSetError


@dataclass(frozen=True)
class Split:
    """Task and model ids of one split (all sorted)."""

    seed: int
    train_tasks: tuple[str, ...]
    heldout_tasks: tuple[str, ...]
    train_ids: tuple[str, ...]
    heldout_model_ids: tuple[str, ...]  # models of train tasks, never used for fitting
    heldout_task_ids: tuple[str, ...]  # every model of the held-out tasks

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def family_roots(metadata) -> dict[str, str]:
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


def split(
    ms, seed: int = 0, holdout_task_fraction: float = 0.25, holdout_model_fraction: float = 0.2
) -> Split:
    """Split ``ms`` (a ``ModelSet`` or its metadata table) for seed ``seed``.

    At least two tasks are held out (retrieval needs two) and at least two remain for training;
    per training task at least one family is held out and one kept. Raises ``ModelSetError`` when
    the set has too few tasks or families.
    """
    metadata = getattr(ms, "metadata", ms)
    if not 0 < holdout_task_fraction < 1 or not 0 < holdout_model_fraction < 1:
        raise ModelSetError(
            f"holdout fractions must be in (0, 1), got tasks {holdout_task_fraction}, models {holdout_model_fraction}"
        )
    tasks = sorted(str(t) for t in metadata["task"].unique())
    if len(tasks) < 4:
        raise ModelSetError(
            f"a split needs at least 4 tasks (2 held out, 2 for training); the set has {len(tasks)}: {tasks}"
        )
    rng = np.random.default_rng(seed)
    n_out = min(max(2, round(holdout_task_fraction * len(tasks))), len(tasks) - 2)
    heldout_tasks = sorted(rng.choice(tasks, size=n_out, replace=False).tolist())
    train_tasks = [t for t in tasks if t not in heldout_tasks]
    roots = family_roots(metadata)
    task_of = metadata["task"].astype(str)
    train_ids, heldout_models = [], []
    for task in train_tasks:
        members = sorted(task_of.index[task_of == task])
        families = sorted({roots[m] for m in members})
        if len(families) < 2:
            raise ModelSetError(
                f"task {task!r} has {len(families)} model family; a split needs 2 to hold one out"
            )
        n_hold = min(max(1, math.floor(holdout_model_fraction * len(families) + 0.5)), len(families) - 1)
        held = set(rng.choice(families, size=n_hold, replace=False).tolist())
        for mid in members:
            (heldout_models if roots[mid] in held else train_ids).append(mid)
    heldout_task_ids = sorted(task_of.index[task_of.isin(heldout_tasks)])
    return Split(
        seed,
        tuple(train_tasks),
        tuple(heldout_tasks),
        tuple(sorted(train_ids)),
        tuple(sorted(heldout_models)),
        tuple(heldout_task_ids),
    )
