"""Distributed builds on Ray: shards as the unit of work, committed by the driver; retries of killed
workers never duplicate a model; the result equals the local executor's."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch

import modelset
from builders.executors import ExecutorError, LocalExecutor, RayExecutor, get_executor
from modelset.architectures import build_architecture
from modelset.errors import UnknownNameError
from modelset.runtime import Runtime
from modelset.shards import ModelRecord, write_shard_file
from modelset.writer import ModelSetWriter

ray = pytest.importorskip("ray")

SHARDS = [[f"m-{s}-{i}" for i in range(3)] for s in range(4)]


def synthetic_shard(ids: list[str], shared: dict, path: Path) -> None:
    """A shard of random ``cnn3`` models, each a pure function of its id (so any run agrees)."""
    marker_dir = shared.get("die_once_in")
    if marker_dir is not None and ids[0] in shared.get("die", [ids[0]]):
        marker = Path(marker_dir) / f"{ids[0]}.died"
        if not marker.exists():  # first attempt at this shard: die hard, half-way through
            marker.write_text("killed")
            path.write_bytes(b"half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
    kwargs = {"num_classes": 4}
    shapes = {k: v.shape for k, v in build_architecture("cnn3", kwargs).state_dict().items()}
    records = []
    for mid in ids:
        gen = torch.Generator().manual_seed(sum(map(ord, mid)) * 7919 + len(mid))
        state = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
        row = {"task": f"t{mid[2]}", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": 0,
               "test_accuracy": float(torch.rand(1, generator=gen))}  # fmt: skip
        records.append(ModelRecord(mid, "cnn3", kwargs, {"final": state}, row))
    write_shard_file(path, records, "staging")


def _build(out: Path, executor, shared: dict) -> Path:
    """The driver side of a distributed build: commit each finished shard once."""
    with ModelSetWriter.open(out, name="raytest", config={"shards": SHARDS}) as writer:
        done = writer.model_ids
        todo = [ids for ids in SHARDS if not set(ids) <= done]
        with executor:
            for _ids, path in executor.map_shards(synthetic_shard, todo, out.parent / f".staging-{out.name}", shared):
                writer.commit_shard_file(path)
                path.unlink()
        writer.finish()
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    # Ray ships this test module's functions by value: the workers need not import the tests.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})  # fmt: skip
    yield
    ray.shutdown()


def _assert_same_sets(a: Path, b: Path) -> None:
    with modelset.open(a) as x, modelset.open(b) as y:
        assert list(x.metadata.index) == list(y.metadata.index)
        assert x.metadata["test_accuracy"].tolist() == y.metadata["test_accuracy"].tolist()
        ids = list(x.metadata.index)
        sx, sy = x.stacked(ids), y.stacked(ids)
        assert sx.keys() == sy.keys() and all(torch.equal(sx[k], sy[k]) for k in sx)


@pytest.mark.slow
def test_worker_killed_mid_shard_is_retried_without_duplicates(ray_cluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    local = _build(tmp_path / "local", LocalExecutor(), {})
    shared = {"die_once_in": str(markers), "die": [SHARDS[2][0]]}
    on_ray = _build(tmp_path / "ray", RayExecutor(max_retries=2), shared)
    assert len(list(markers.iterdir())) == 1  # the first worker of shard 2 was killed mid-shard
    assert not list((tmp_path / ".staging-ray").iterdir())
    report = modelset.verify(on_ray)
    assert report["models"] == 12 and report["shards"] == len(SHARDS)
    _assert_same_sets(local, on_ray)


@pytest.mark.slow
def test_ray_gives_up_with_a_clear_error_after_retries(ray_cluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    with pytest.raises(ExecutorError, match="failed on Ray after 0 retries"):
        _build(tmp_path / "ray", RayExecutor(max_retries=0), {"die_once_in": str(markers)})
    with modelset.open(tmp_path / "ray") as ms:  # nothing half-built was committed
        assert len(ms) == 0


def test_get_executor_names() -> None:
    assert isinstance(get_executor("local"), LocalExecutor)
    assert isinstance(get_executor("ray", address="ray://nowhere:1"), RayExecutor)
    with pytest.raises(UnknownNameError, match="Did you mean 'ray'"):
        get_executor("rayy")


def test_local_executor_leaves_no_partial_file_when_a_shard_fails(tmp_path: Path) -> None:
    def broken(ids: list[str], shared: object, path: Path) -> None:
        path.write_bytes(b"partial")
        raise RuntimeError("training diverged")

    with pytest.raises(RuntimeError):
        list(LocalExecutor().map_shards(broken, [["a"]], tmp_path))
    assert list(tmp_path.iterdir()) == []


def mini_shard(specs: list, shared: dict, path: Path) -> None:
    """Train one shard of the real builder on a Ray worker (what ``build --executor ray`` does)."""
    from builders.build import _record, train_models

    torch.use_deterministic_algorithms(True, warn_only=True)  # as build() does: bitwise CPU results
    data, tasks = shared["data"], shared["tasks"]
    results = train_models(specs, data, Runtime("cpu"), progress=False)
    write_shard_file(path, [_record(r, tasks[r.spec.task_id], data[r.spec.task_id]) for r in results], "staging")


@pytest.mark.slow
def test_mini_build_on_ray_equals_local_build(ray_cluster, tmp_path: Path) -> None:
    from builders.build import build, load_config
    from tests.test_fault_tolerance import _mini_config

    cfg = load_config(_mini_config())
    try:
        local = build(cfg, tmp_path / "local", progress=False)
    except modelset.errors.DataUnavailableError as exc:
        pytest.skip(f"Fashion-MNIST is not available here: {exc}")
    out = build(cfg, tmp_path / "ray", progress=False, executor="ray")
    assert not (tmp_path / ".ray.staging").exists() or not list((tmp_path / ".ray.staging").iterdir())
    assert modelset.verify(out)["models"] == len(modelset.open(local))
    with modelset.open(local) as a, modelset.open(out) as b:
        ids = sorted(a.metadata.index)
        assert sorted(b.metadata.index) == ids
        cols = ["task", "seed", "lr", "epochs", "train_loss", "test_accuracy", "n_params"]
        assert a.metadata.loc[ids, cols].equals(b.metadata.loc[ids, cols])
        for mid in ids:
            for ckpt in ("init", "final"):
                sa, sb = a.state_dict(mid, ckpt), b.state_dict(mid, ckpt)
                assert all(torch.equal(sa[k], sb[k]) for k in sa), mid
        assert a.relations.keys() == b.relations.keys()
