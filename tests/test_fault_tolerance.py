"""Fault tolerance: SIGKILL a builder at random moments and resume; readers during a build; locks."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import modelset
from modelset.errors import LockedError
from modelset.writer import ModelSetWriter

ROOT = Path(__file__).resolve().parents[1]

# A builder in a child process: writes a synthetic set, resuming whatever was committed before.
BUILDER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from modelset.synthetic import write_synthetic
    print("ready", flush=True)
    write_synthetic(sys.argv[1], int(sys.argv[2]), n_tasks=4, models_per_shard=int(sys.argv[3]),
                    seed=5, overwrite=False)
    print("done", flush=True)
    """
)

HOLDER = textwrap.dedent(
    """
    import sys, time
    from modelset.writer import ModelSetWriter
    with ModelSetWriter.open(sys.argv[1], name="held", config={}):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def _child(script: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )


def _wait_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().strip()
    assert line == expected, f"child said {line!r}, expected {expected!r}"


def _check_exactly_once(path: Path, n_models: int) -> None:
    report = modelset.verify(path)
    assert report["models"] == n_models
    with modelset.open(path) as ms:
        ids = list(ms.metadata.index)
        assert sorted(ids) == [f"syn-{i:06d}" for i in range(n_models)]  # each model once, none lost
        assert ms.header["complete"] is True
        assert len(ms.stacked(ids)["conv1.weight"]) == n_models


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    path, n_models, per_shard = tmp_path / "set", 48, 4
    rng = random.Random(7)
    kills, max_kills = 0, 3
    # Each round a fresh builder resumes the set; the first rounds are killed at a random moment
    # (during start-up, a shard write, a table commit or the checksums), the last runs to the end.
    for _round in range(max_kills + 1):
        proc = _child(BUILDER, str(path), str(n_models), str(per_shard))
        _wait_line(proc, "ready")
        if kills < max_kills:
            # Let the build make progress (one more shard committed), then kill it a random
            # moment later, so every round moves the set forward whatever the machine's speed.
            before, deadline = _committed(path), time.monotonic() + 60
            while proc.poll() is None and _committed(path) <= before and time.monotonic() < deadline:
                time.sleep(0.005)
            try:
                proc.wait(timeout=rng.uniform(0.0, 0.15))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                # Whatever the moment of the kill, what a reader sees is consistent.
                if (path / "modelset.json").exists():
                    with modelset.open(path) as ms:
                        assert len(ms) % per_shard == 0 and ms.metadata.index.is_unique
                        if len(ms):
                            ms.stacked(list(ms.metadata.index))
                continue
        assert proc.wait(timeout=120) == 0, f"builder failed with {proc.returncode} after {kills} kills"
        break
    assert kills >= 2, "the test should interrupt the build at least twice"
    _check_exactly_once(path, n_models)
    assert not list(path.rglob(".tmp-*"))


@pytest.mark.slow
def test_reader_during_build_sees_only_complete_shards(tmp_path: Path) -> None:
    path, n_models, per_shard = tmp_path / "set", 60, 3
    proc = _child(BUILDER, str(path), str(n_models), str(per_shard))
    _wait_line(proc, "ready")
    seen: set[int] = set()
    while proc.poll() is None:
        try:
            ms = modelset.open(path)
        except modelset.ModelSetError:
            continue  # the header is not written yet
        with ms:
            n = len(ms)
            assert n % per_shard == 0, f"reader saw {n} models: a shard was visible before it was complete"
            if n:
                stacked = ms.stacked(list(ms.metadata.index))  # every listed shard is there and readable
                assert stacked["head.weight"].shape[0] == n
        seen.add(n)
        time.sleep(0.01)
    assert proc.returncode == 0
    assert len(seen) >= 2, f"the reader should see the set grow, saw sizes {sorted(seen)}"
    _check_exactly_once(path, n_models)


def test_second_writer_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "set"
    holder = _child(HOLDER, str(path))
    try:
        _wait_line(holder, "locked")
        with pytest.raises(LockedError, match="being written by another process"):
            ModelSetWriter.open(path, name="held", config={})
        # A second builder process is refused too, and leaves the set untouched.
        proc = _child(BUILDER, str(path), "4", "2")
        _wait_line(proc, "ready")
        assert proc.wait(timeout=60) != 0
        assert not (path / "models.parquet").exists()
    finally:
        holder.kill()
        holder.wait()
    # The lock dies with its holder: a killed builder never blocks the next one.
    with ModelSetWriter.open(path, name="held", config={}) as writer:
        assert writer.model_ids == set()


def _mini_config() -> dict:
    """configs/mini.yaml cut down to seconds: cnn3 only, no transfer, small data, shards of two."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "mini.yaml").read_text())
    cfg.update(name="mini-killed", shard_size=2, transfer={"enabled": False}, variants=[])
    cfg["families"] = [{"architecture": "cnn3", "arch_kwargs": {}, "models_per_task": 3}]
    cfg["data"] = dict(cfg.get("data") or {}, train_limit=200, test_limit=100)
    cfg["hyperparameters"] = dict(cfg.get("hyperparameters") or {}, epochs=[1, 2], batch_size=[32])
    return cfg


def _committed(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.read_metadata(path / "models.parquet").num_rows
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_real_mini_build_killed_and_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    import multiprocessing

    import torch

    build = pytest.importorskip("builders.build").build
    cfg = _mini_config()
    try:
        reference = build(cfg, tmp_path / "reference", progress=False)
    except modelset.errors.DataUnavailableError as exc:
        pytest.skip(f"Fashion-MNIST is not available here: {exc}")
    n_models = len(modelset.open(reference))
    # Forked builders start without re-importing torch: each round costs the build, not start-up.
    fork = multiprocessing.get_context("fork")
    path, rng, kills = tmp_path / "killed", random.Random(11), 0
    for _round in range(3):
        before = _committed(path)
        proc = fork.Process(target=build, args=(cfg, path), kwargs={"progress": False})
        proc.start()
        deadline = time.monotonic() + 60
        while proc.is_alive() and _committed(path) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # land inside the training or the commit of a later shard
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.join()
    proc = fork.Process(target=build, args=(cfg, path), kwargs={"progress": False})
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0 and kills >= 1
    assert modelset.verify(path)["models"] == n_models
    with modelset.open(reference) as a, modelset.open(path) as b:
        ids = sorted(a.metadata.index)
        assert sorted(b.metadata.index) == ids  # every model exactly once
        cols = ["test_accuracy", "train_loss", "seed", "lr", "epochs"]
        pd_a, pd_b = a.metadata.loc[ids, cols], b.metadata.loc[ids, cols]
        assert pd_a.equals(pd_b), "a resumed build must equal an uninterrupted one"
        for mid in ids:
            for ckpt in ("init", "final"):
                sa, sb = a.state_dict(mid, ckpt), b.state_dict(mid, ckpt)
                assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), mid
