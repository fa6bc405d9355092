"""Run recipe calls side by side: one kernel thread per call, in worker processes.

A recipe trains a handful of small models one after another, and such kernels gain little from a
second thread; separate calls on separate cores do. Recipes seed torch's process-wide generator, so
the calls run in processes, not threads. Every call runs on one kernel thread wherever it runs, so
a variant's parameters do not depend on the number of workers.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from modelset.runtime import Runtime

log = logging.getLogger(__name__)


def apply_recipe(recipe: Callable[..., Any], parent: Any, data: Any, seed: int, params: dict) -> Any:
    """``recipe(parent, data, seed, **params)`` on one kernel thread."""
    with Runtime.worker_threads(1):
        return recipe(parent, data, seed, **params)


def _worker_init(log_level: int) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")


class _Deferred:
    """A call run when its result is asked for (the in-process stand-in for a ``Future``)."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def result(self) -> Any:
        return self.fn(*self.args)


class RecipePool:
    """Recipe calls on ``workers`` spawned processes, or in this process, in order, when
    ``workers`` is 1 or the recipe cannot be sent to another process (say, a function defined
    inside another function). Results come back through ``.result()``, in any order asked.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._sendable: dict[Callable[..., Any], bool] = {}  # one pickling test per recipe

    def __enter__(self) -> RecipePool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            # On an error, queued calls are dropped; running ones end with their process.
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def submit(
        self, recipe: Callable[..., Any], parent: Any, data: Any, seed: int, params: dict
    ) -> _Guarded | _Deferred:
        args = (recipe, parent, data, seed, params)
        if recipe not in self._sendable:
            self._sendable[recipe] = self.workers > 1 and _can_send(recipe)
        if not self._sendable[recipe]:
            return _Deferred(apply_recipe, *args)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),  # no fork of a threaded torch
                initializer=_worker_init,
                initargs=(logging.getLogger().getEffectiveLevel(),),
            )
        return _Guarded(self._pool.submit(apply_recipe, *args))


class _Guarded:
    """A worker's ``Future`` whose broken pool is reported with its usual cause."""

    def __init__(self, future: Future) -> None:
        self.future = future

    def result(self) -> Any:
        try:
            return self.future.result()
        except BrokenProcessPool as exc:
            raise BrokenProcessPool(
                "a variant worker process died. Workers are spawned and import the main module: "
                "a script that builds must do so under `if __name__ == \"__main__\":`; otherwise "
                "the worker was killed (out of memory?). Set `threads: 1` to run recipes in this process."
            ) from exc


def _can_send(recipe: Callable[..., Any]) -> bool:
    try:
        pickle.dumps(recipe)
    except (pickle.PicklingError, AttributeError, TypeError):
        log.info("recipe %r cannot be sent to a worker process; it runs in this one", recipe)
        return False
    return True
