"""Probe inputs for the data-dependent methods, and running zoo models on them.

The common probe batch takes the first few test examples of every task of the set (each with its
task's domain applied), so every model sees the same inputs. When a task's source data is not on
the machine (a synthetic set, an offline machine), the probe falls back to seeded uniform noise
images and says so: the methods record ``probe_source`` so the fallback is visible in results.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from modelset.architectures import decode_kwargs
from modelset.errors import ModelSetError
from modelset.reader import ModelSet
from modelset.tasks import Task, convert_input_norm, task_data

log = logging.getLogger(__name__)

NOISE_SHAPE = (28, 28)


def _in_channels(ms: ModelSet) -> int:
    kwargs = decode_kwargs(str(ms.metadata["arch_kwargs"].iloc[0]))
    return int(kwargs.get("in_channels", 1))


def noise_probe(ms: ModelSet, n: int, seed: int = 0) -> torch.Tensor:
    """Uniform noise images ``(n, C, 28, 28)`` in [0, 1], ``C`` from the first model's kwargs."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, _in_channels(ms), *NOISE_SHAPE), generator=generator)


def task_probe(ms: ModelSet, task_id: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test examples of one task: ``x`` ``(n, C, H, W)``, ``y`` ``(n,)``.

    Raises ``ModelSetError`` (e.g. ``DataUnavailableError``) when the data cannot be had.
    """
    if task_id not in ms.tasks.index:
        raise ModelSetError(f"task {task_id!r} is not in the task table of {ms.root}")
    task = Task.from_row(task_id, ms.tasks.loc[task_id].to_dict())
    return task_data(task, "test", limit=n, allow_download=False)


def common_probe(ms: ModelSet, n: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    """A probe batch ``(≤n, C, H, W)`` shared by all models, and where it came from.

    Takes ``ceil(n / n_tasks)`` test examples of each task, in task order, then the first ``n``.
    """
    tasks = sorted(ms.metadata["task"].astype(str).unique())
    per_task = max(1, -(-n // max(1, len(tasks))))
    try:
        parts = [task_probe(ms, t, per_task)[0] for t in tasks]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1:
            raise ModelSetError(f"tasks of {ms.root} have inputs of different shapes {sorted(shapes)}")
        return torch.cat(parts)[:n], "task data (test split)"
    except (ModelSetError, ValueError, OSError) as exc:
        log.warning("probe: task data unavailable (%s); using uniform noise images", exc)
        return noise_probe(ms, n, seed), f"uniform noise (task data unavailable: {exc})"


def penultimate(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate activations ``(B, p)`` and logits ``(B, k)`` of ``model`` on ``x``.

    Uses ``model.embed`` when the model has it (the zoo's small CNN), else the input of the last
    ``nn.Linear`` (the classifier of timm models and most others).
    """
    if hasattr(model, "embed"):
        feats = model.embed(x)
        head = getattr(model, "head", None)
        return feats, head(feats) if head is not None else model(x)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise ModelSetError(f"{type(model).__name__}: no embed() and no nn.Linear head to read activations from")
    captured: list[torch.Tensor] = []
    handle = linears[-1].register_forward_hook(lambda _m, inp, _out: captured.append(inp[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].reshape(x.shape[0], -1), logits


@torch.no_grad()
def run_models(
    ms: ModelSet, ids: Sequence[str], x: torch.Tensor, desc: str = "probe", checkpoint: str = "final"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(activations (B, p), logits (B, k))`` of each model of ``ids`` (at ``checkpoint``) on the
    batch ``x`` (standardized, as ``task_data`` gives it), each model seeing it in its own input norm."""
    out = []
    for mid in tqdm(ids, desc=desc, leave=False, disable=len(ids) < 200):
        out.append(penultimate(ms.model(mid, checkpoint), model_inputs(ms, mid, x)))
    return out


def model_inputs(ms: ModelSet, model_id: str, x: torch.Tensor) -> torch.Tensor:
    """The standardized batch ``x`` as model ``model_id`` expects its inputs (its ``input_norm``
    column: the data set's standardization, or pixels in [-1, 1] for some recipes)."""
    row = ms.metadata.loc[model_id]
    norm = row.get("input_norm") if "input_norm" in ms.metadata.columns else None
    if not isinstance(norm, str) or norm in ("", "standard"):
        return x
    return convert_input_norm(x, str(row["dataset"]), norm)
