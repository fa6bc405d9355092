"""Tasks: a classification problem defined by a data set, a subset of its classes and a domain.

A task's labels are remapped to ``0..k-1`` in the order of its sorted classes, so a model of the
task has a ``k``-way head whatever the original class ids were. :func:`task_data` gives a task's
inputs (domain applied) and remapped labels, which is what ``ModelSet.model(id)`` runs on and what
benchmarks use as probe data.

Models expect their inputs in one of :data:`INPUT_NORMS` (the model table's ``input_norm``
column): ``"standard"``, the data set's per-channel standardization, or ``"minus_one_one"``,
pixels scaled to [-1, 1] as in the Small CNN Zoo (Unterthiner et al. 2020). ``task_data(task,
split, input_norm=row["input_norm"])`` gives a model its own inputs; :func:`convert_input_norm`
turns standardized inputs (e.g. probe batches) into another norm.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from modelset._untrusted import parse_json
from modelset.datasets import dataset_info, load_tensors
from modelset.domains import apply_domain, get_domain
from modelset.errors import SchemaError

#: Input normalizations a model may expect (the ``input_norm`` column of the model table).
INPUT_NORMS = ("standard", "minus_one_one")


@dataclass(frozen=True)
class Task:
    """One row of a model set's task table.

    ``classes`` are original class ids of ``dataset`` (stored sorted); ``domain`` names a
    registered input domain with its JSON-able ``domain_kwargs``.
    """

    task_id: str
    dataset: str
    classes: tuple[int, ...]
    domain: str = "identity"
    domain_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        classes = tuple(sorted(int(c) for c in self.classes))
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise SchemaError(
                f"task {self.task_id!r}: needs at least 2 distinct classes, got {list(self.classes)}"
            )
        object.__setattr__(self, "classes", classes)
        get_domain(self.domain)  # fail early on an unknown domain name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def row(self) -> dict[str, Any]:
        """The task as a flat table row (classes and kwargs as canonical JSON)."""
        d = asdict(self)
        d["classes"] = json.dumps(list(self.classes))
        d["domain_kwargs"] = json.dumps(self.domain_kwargs, sort_keys=True)
        d["num_classes"] = self.num_classes
        return d

    @classmethod
    def from_row(cls, task_id: str, row: dict[str, Any]) -> Task:
        """Rebuild a task from a table row (as written by :meth:`row`)."""
        try:
            classes = row["classes"]
            kwargs = row.get("domain_kwargs") or {}
            return cls(
                task_id=str(task_id),
                dataset=str(row["dataset"]),
                classes=tuple(parse_json(classes, f"task {task_id!r} classes") if isinstance(classes, str) else classes),
                domain=str(row.get("domain") or "identity"),
                domain_kwargs=parse_json(kwargs, f"task {task_id!r} domain_kwargs") if isinstance(kwargs, str) else dict(kwargs),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise SchemaError(f"task {task_id!r}: bad task row {dict(row)}: {exc}") from exc


def task_indices(task: Task, labels: torch.Tensor) -> torch.Tensor:
    """Positions ``(n,)`` of the examples whose label is one of the task's classes, in order."""
    wanted = torch.tensor(task.classes, dtype=labels.dtype)
    return torch.nonzero(torch.isin(labels, wanted), as_tuple=False).flatten()


def remap_labels(task: Task, labels: torch.Tensor) -> torch.Tensor:
    """Original labels of the task's classes → ``0..k-1`` in sorted-class order."""
    lut = torch.full((int(labels.max()) + 1 if labels.numel() else 1,), -1, dtype=torch.int64)
    for new, old in enumerate(task.classes):
        if old < lut.numel():
            lut[old] = new
    out = lut[labels]
    if (out < 0).any():
        raise SchemaError(f"task {task.task_id!r}: labels outside its classes {list(task.classes)}")
    return out


def task_data(
    task: Task,
    split: str,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    allow_download: bool | None = None,
    normalize: bool = True,
    input_norm: str = "standard",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A task's inputs and labels for ``split``: what the task's models were trained and tested on.

    Returns ``x`` ``(n, C, H, W)`` float32 and ``y`` ``(n,)`` int64 in ``0..k-1``. The images get
    the task's domain (on [0, 1] pixels), then, if ``normalize``, the data set's per-channel
    standardization ``(x - mean) / std`` (fixed constants of :class:`DatasetInfo`, the same for
    every domain, so a domain shift stays a shift), converted to ``input_norm`` (see
    :func:`convert_input_norm`; pass a model's ``input_norm`` column to get its inputs). ``limit``
    keeps the first ``limit`` examples of the task (in data set order, so the same slice
    everywhere).
    """
    x_all, y_all = load_tensors(task.dataset, split, root, allow_download)
    idx = task_indices(task, y_all)
    if limit is not None:
        idx = idx[:limit]
    x = apply_domain(task.domain, x_all[idx], task.domain_kwargs)
    if normalize:
        info = dataset_info(task.dataset)
        mean = torch.tensor(info.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(info.std, dtype=x.dtype).view(1, -1, 1, 1)
        x = convert_input_norm((x - mean) / std, task.dataset, input_norm)
    return x, remap_labels(task, y_all[idx])


def input_norm_affine(dataset: str, input_norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)``, each ``(C,)``: ``x * scale + shift`` maps standardized inputs of
    ``dataset`` to ``input_norm`` (``"standard"``: ones and zeros; ``"minus_one_one"``: ``2 p - 1``
    for pixels ``p = x * std + mean`` in [0, 1])."""
    if input_norm not in INPUT_NORMS:
        raise SchemaError(f"input_norm {input_norm!r} is not one of {INPUT_NORMS}")
    info = dataset_info(dataset)
    mean = torch.tensor(info.mean, dtype=torch.float32)
    std = torch.tensor(info.std, dtype=torch.float32)
    if input_norm == "standard":
        return torch.ones_like(mean), torch.zeros_like(mean)
    return 2.0 * std, 2.0 * mean - 1.0


def convert_input_norm(x: torch.Tensor, dataset: str, input_norm: str) -> torch.Tensor:
    """Standardized inputs ``x`` ``(n, C, H, W)`` of ``dataset`` (what ``task_data`` gives by
    default) as ``input_norm`` expects them; the same tensor for ``"standard"``.

    The training engine converts its batches with these same operations, so a model sees
    bit-identical inputs at training time and through this function.
    """
    if input_norm == "standard":
        return x
    scale, shift = input_norm_affine(dataset, input_norm)
    c = scale.shape[0]
    return x * scale.view(1, c, 1, 1).to(x) + shift.view(1, c, 1, 1).to(x)
