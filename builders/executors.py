"""Executors: where the shards of a build are trained — in this process, or on a Ray cluster.

A shard is the unit of work. ``map_shards(fn, specs, staging, shared)`` calls
``fn(spec, shared, path)`` for every shard spec, where ``fn`` trains the shard and writes a complete
shard file at ``path`` (``modelset.shards.write_shard_file``); it yields ``(spec, shard_file)`` in
the order of ``specs``, each file complete in ``staging``. The driver then commits each file with
``ModelSetWriter.commit_shard_file`` and deletes it, so only the driver ever touches the set::

    executor = get_executor("ray", address=None)          # or "local" (the default)
    staging = out.parent / f".{out.name}.staging"          # beside the set, never inside it
    with executor:
        for spec, path in executor.map_shards(train_shard, todo, staging, shared=data):
            writer.commit_shard_file(path)
            path.unlink()

The staging folder must be outside the set: the writer checksums every file inside it.

On Ray, each shard is one task (``max_retries``: a worker killed mid-shard is run again from
scratch); the worker sends the shard's bytes back through the object store, so workers need no
shared file system; the driver writes them to ``staging`` under a temporary name and renames them.
A retried task yields one result, and the driver commits each spec once: nothing is duplicated.
``fn`` must be a module-level function (Ray imports it by name on the workers).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from modelset import _atomic
from modelset.errors import ModelSetError
from modelset.registry import Registry

log = logging.getLogger(__name__)

S = TypeVar("S")
ShardFn = Callable[[Any, Any, Path], None]


class ExecutorError(ModelSetError):
    """A shard could not be built by the executor (the message names the shard)."""


def _staged(staging: Path, number: int) -> Path:
    return staging / f"work-{number:05d}.h5"


class LocalExecutor:
    """Train the shards one after another in this process."""

    name = "local"

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map_shards(
        self, fn: ShardFn, specs: Sequence[S], staging: str | os.PathLike, shared: Any = None
    ) -> Iterator[tuple[S, Path]]:
        staging = Path(staging)
        staging.mkdir(parents=True, exist_ok=True)
        for number, spec in enumerate(specs):
            target = _staged(staging, number)
            with _atomic.atomic_path(target) as tmp:
                fn(spec, shared, tmp)
            yield spec, target


def _run_shard(fn: ShardFn, spec: Any, shared: Any, threads: int) -> bytes:
    """A Ray task: build one shard into a private temporary file and return its bytes."""
    from modelset.runtime import Runtime

    Runtime(threads=threads).apply()  # one shard per CPU: no oversubscription on the worker
    with tempfile.TemporaryDirectory(prefix="modelset-shard-") as folder:
        path = Path(folder) / "shard.h5"
        fn(spec, shared, path)
        return path.read_bytes()


class RayExecutor:
    """Train shards as Ray tasks on the cluster at ``address`` (default: ``RAY_ADDRESS``, or a
    local instance started for the build).

    ``max_retries`` re-runs a task whose worker died; ``max_in_flight`` bounds how many finished
    shards wait in the object store for the driver; ``cpus_per_shard`` is the Ray resource request
    and the torch thread count of a task (a build passes its config's ``threads``).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        max_retries: int = 3,
        max_in_flight: int | None = None,
        cpus_per_shard: int = 1,
        num_cpus: int | None = None,
    ) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.cpus_per_shard = cpus_per_shard
        self.num_cpus = num_cpus
        self._started = False

    def __enter__(self) -> RayExecutor:
        self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False

    def _connect(self) -> None:
        import ray

        if ray.is_initialized():
            return
        # Workers import the builder's functions by name: give them this checkout on their path.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
        kwargs: dict[str, Any] = {
            "runtime_env": {"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": str(self.cpus_per_shard)}},
            "include_dashboard": False,
            "log_to_driver": False,
        }
        if self.address:
            kwargs["address"] = self.address
        elif self.num_cpus:
            kwargs["num_cpus"] = self.num_cpus
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ExecutorError(f"cannot connect to the Ray cluster at {self.address or 'a new local instance'}: {exc}") from exc
        self._started = True
        log.info("Ray cluster: %s", ray.cluster_resources())

    def map_shards(
        self, fn: ShardFn, specs: Sequence[S], staging: str | os.PathLike, shared: Any = None
    ) -> Iterator[tuple[S, Path]]:
        import ray
        from ray.exceptions import RayError

        self._connect()
        staging = Path(staging)
        staging.mkdir(parents=True, exist_ok=True)
        remote = ray.remote(num_cpus=self.cpus_per_shard, max_retries=self.max_retries)(_run_shard)
        shared_ref = ray.put(shared)  # shipped to the object store once, not once per shard
        limit = self.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        pending: deque[tuple[int, Any, Any]] = deque()
        items = iter(enumerate(specs))

        def submit() -> None:
            while len(pending) < limit:
                nxt = next(items, None)
                if nxt is None:
                    return
                number, spec = nxt
                pending.append((number, spec, remote.remote(fn, spec, shared_ref, self.cpus_per_shard)))

        submit()
        try:
            while pending:
                number, spec, ref = pending.popleft()  # in spec order: commits are reproducible
                try:
                    data = ray.get(ref)
                except RayError as exc:
                    raise ExecutorError(
                        f"shard {number} ({_describe(spec)}) failed on Ray after "
                        f"{self.max_retries} retries: {exc}"
                    ) from exc
                submit()
                target = _staged(staging, number)
                _atomic.write_bytes_atomic(target, data)
                yield spec, target
        finally:
            for _, _, ref in pending:  # the caller stopped early: do not leave work running
                ray.cancel(ref, force=True)


def _describe(spec: Any) -> str:
    if isinstance(spec, (list, tuple)) and spec:
        first = getattr(spec[0], "model_id", spec[0])
        return f"{len(spec)} models from {first!r}"
    return repr(spec)[:120]


def _local(address: str | None = None, **kwargs: Any) -> LocalExecutor:
    return LocalExecutor()  # in this process: no cluster address, no options


#: Executor factories by name: ``factory(address=None, **kwargs) -> executor``.
EXECUTORS: Registry[Callable[..., Any]] = Registry("executor")
EXECUTORS.add("local", _local)
EXECUTORS.add("ray", RayExecutor)


def get_executor(name: str = "local", address: str | None = None, **kwargs: Any) -> LocalExecutor | RayExecutor:
    """The executor called ``name`` ("local" or "ray"); ``address`` is the Ray cluster's."""
    return EXECUTORS.get(name)(address=address, **kwargs)

