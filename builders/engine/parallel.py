"""Training many models at once: :func:`train_models` splits them into stacks of about equal
work and trains each stack in its own thread.

On the CPU the small kernels of these models leave a core half idle when one call is split across
threads, while separate stacks with single-threaded kernels keep every core busy; the thread
count comes from the caller's :class:`~modelset.runtime.Runtime`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import torch
from tqdm.auto import tqdm

from builders.engine.kernels import kernel_for
from builders.engine.memory import keep_freed_memory_in_process
from builders.engine.recipe import Batches
from builders.engine.spec import TaskTensors, TrainResult, TrainSpec
from builders.engine.stack import train_stack
from modelset.runtime import Runtime

log = logging.getLogger(__name__)


def train_models(
    specs: Iterable[TrainSpec],
    data: Mapping[str, TaskTensors],
    runtime: Runtime | None = None,
    *,
    progress: bool = True,
    inits: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> list[TrainResult]:
    """Train every model of ``specs`` at once; results in the order of ``specs``.

    All specs must share an architecture (apart from ``num_classes``) and a batch size; tasks
    may differ. ``data`` maps task id → :class:`TaskTensors`. ``inits`` optionally maps a model id
    to a state dict to start from (fine-tuning).

    ``runtime`` (default: ``Runtime("cpu")``) gives the device and, on the CPU, the number of
    stacks (``runtime.n_workers``): the models are split into that many stacks,
    each trained by its own thread with single-threaded kernels: the small kernels of these models
    leave a core half idle when one call is split across threads, while separate stacks keep every
    core busy. Training is deterministic on the CPU for a given list of specs and worker count.
    """
    specs = list(specs)
    _check_group(specs, data)
    runtime = runtime if runtime is not None else Runtime("cpu")
    dev = runtime.torch_device
    if dev.type == "cpu":
        keep_freed_memory_in_process()
    parts = split_by_steps(specs, data, runtime.n_workers)
    t0 = time.perf_counter()
    # Counts model-steps, so the time left holds while stacks shrink; the postfix counts models.
    bar = tqdm(total=sum(_steps(specs, data)), desc=f"engine {specs[0].architecture}×{len(specs)}",
               unit="model-step", unit_scale=True, disable=not progress, leave=False)  # fmt: skip
    lock, stop = threading.Lock(), threading.Event()
    finished = 0

    def advance(model_steps: int, models_done: int) -> None:
        nonlocal finished
        if stop.is_set():
            raise _Stopped
        with lock:
            bar.update(model_steps)
            if models_done:
                finished += models_done
                bar.set_postfix(models_done=f"{finished}/{len(specs)}")

    if len(parts) == 1:
        trained = [train_stack(specs, data, dev, inits, advance)]
    else:
        with Runtime.worker_threads(1), ThreadPoolExecutor(len(parts), "engine") as pool:
            futures = [
                pool.submit(_on_one_kernel_thread, train_stack, [specs[i] for i in part], data, dev, inits, advance)
                for part in parts
            ]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for future in futures:
                    if future.done() and future.exception() is not None:
                        raise future.exception()  # type: ignore[misc]
            except BaseException:  # a failed stack or Ctrl-C: the other stacks stop at their next step
                stop.set()
                raise
            trained = [f.result() for f in futures]
    bar.close()
    results: dict[int, TrainResult] = {}
    for part, part_results in zip(parts, trained):
        results.update(zip(part, part_results))
    log.info("trained %d %s models in %.1fs with %d worker(s)", len(specs), specs[0].architecture,
             time.perf_counter() - t0, len(parts))  # fmt: skip
    return [results[i] for i in range(len(specs))]


class _Stopped(Exception):
    """Raised in a worker thread when another stack failed or the caller was interrupted."""


def split_by_steps(specs: list[TrainSpec], data: Mapping[str, TaskTensors], parts: int) -> list[list[int]]:
    """Positions of ``specs`` in at most ``parts`` groups of about equal training steps.

    Longest first, each to the least loaded group (ties to the first): deterministic, so a build
    with a fixed worker count stacks the same models together every time.
    """
    steps = _steps(specs, data)
    groups: list[list[int]] = [[] for _ in range(min(parts, len(specs)))]
    load = [0] * len(groups)
    for i in sorted(range(len(specs)), key=lambda i: -steps[i]):
        g = load.index(min(load))
        groups[g].append(i)
        load[g] += steps[i]
    return [sorted(g) for g in groups]


def _steps(specs: list[TrainSpec], data: Mapping[str, TaskTensors]) -> list[int]:
    """Training steps of each model."""
    return [Batches(s, data[s.task_id].x_train.shape[0]).total for s in specs]


def _on_one_kernel_thread(fn: Callable[..., list[TrainResult]], *args: Any) -> list[TrainResult]:
    """``fn(*args)`` in a worker thread whose kernels use one thread (OpenMP's count is per thread)."""
    with Runtime.worker_threads(1):
        return fn(*args)


def _check_group(specs: list[TrainSpec], data: Mapping[str, TaskTensors]) -> None:
    if not specs:
        raise ValueError("no models to train")
    sigs = {s.signature() for s in specs}
    if len(sigs) != 1:
        raise ValueError(f"models of one engine call must share an architecture; got {sorted(sigs)}")
    first = specs[0]
    try:
        kernel_for(first.architecture).check(first.arch_kwargs)
    except ValueError as exc:
        raise ValueError(f"model {first.model_id}: {exc}") from None
    sizes = {s.batch_size for s in specs}
    if len(sizes) != 1:
        raise ValueError(f"models of one engine call must share a batch size; got {sorted(sizes)}")
    for s in specs:
        if s.task_id not in data:
            raise KeyError(f"model {s.model_id}: no data for task {s.task_id!r}")
        if data[s.task_id].num_classes != s.num_classes:
            raise ValueError(
                f"model {s.model_id}: num_classes {s.num_classes} but task {s.task_id} has "
                f"{data[s.task_id].num_classes}"
            )
        if s.input_norm != "standard" and not data[s.task_id].dataset:
            raise ValueError(
                f"model {s.model_id}: input_norm {s.input_norm!r} needs the data set of task "
                f"{s.task_id} (TaskTensors.dataset) to undo its standardization"
            )
