"""Where work runs: the device, the CPU threads and the parallel workers.

A :class:`Runtime` is made once, from a config or a command line, and passed down to whatever
trains or evaluates. :meth:`Runtime.apply` and :meth:`Runtime.worker_threads` are the only places
in the project that set torch's global thread count; library code reads the runtime it was given,
never ``torch.get_num_threads()``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: a command that only talks to a service never needs it
    import torch


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Runtime:
    """``device``: "cpu", "cuda", "cuda:1" or "auto" (CUDA when present).
    ``threads``: CPU threads for torch's intra-op pool (``None``: every core this process may use).
    ``workers``: parallel stacks or processes for work that splits (``None``: one per thread)."""

    device: str = "auto"
    threads: int | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"runtime {name} must be a positive integer, got {value!r}")
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"runtime device must be a string such as 'cpu' or 'cuda', got {self.device!r}")

    @property
    def n_threads(self) -> int:
        return self.threads if self.threads is not None else _default_threads()

    @property
    def n_workers(self) -> int:
        """Parallel workers; always 1 on a GPU, where one stack fills the device."""
        if self.torch_device.type != "cpu":
            return 1
        return self.workers if self.workers is not None else self.n_threads

    @property
    def torch_device(self) -> torch.device:
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def with_(self, **changes: object) -> Runtime:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def apply(self) -> Runtime:
        """Set torch's intra-op thread count for this process (call once, at the entry point)."""
        import torch

        torch.set_num_threads(self.n_threads)
        return self

    @staticmethod
    @contextlib.contextmanager
    def worker_threads(threads: int = 1) -> Iterator[None]:
        """Within the block, torch in *this* thread uses ``threads`` threads (OpenMP's count is
        per thread); restored after. Parallel workers run their share under it so that
        ``workers`` stacks side by side do not oversubscribe the cores."""
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
