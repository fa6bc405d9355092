"""A model that diverges stops the build with its name and recipe, before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from builders.build import train_shard
from builders.engine import TaskTensors, TrainSpec
from modelset.errors import SchemaError
from modelset.runtime import Runtime
from modelset.tasks import Task


def test_a_diverged_model_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x, xt = torch.randn(64, 1, 28, 28, generator=gen), torch.randn(32, 1, 28, 28, generator=gen)
    y, yt = torch.randint(0, 3, (64,), generator=gen), torch.randint(0, 3, (32,), generator=gen)
    data = {"t0": TaskTensors(x, y, xt, yt, 3)}
    task = Task("t0", "fashion_mnist", (0, 1, 2))
    spec = TrainSpec("t0-cnn3-base-0000", "t0", "cnn3", {"num_classes": 3}, 1, 1.0e6, 0.0, 32, "sgd", 2)
    shared = {"data": data, "tasks": {"t0": task}, "runtime": Runtime("cpu", threads=1), "progress": False}
    with pytest.raises(SchemaError, match=r"model 't0-cnn3-base-0000' diverged: non-finite parameters .*sgd, lr 1000000.0"):
        train_shard([spec], shared, tmp_path / "shard.h5")
    assert not (tmp_path / "shard.h5").exists()
