"""End to end: a tiny build on the real Fashion-MNIST files; resume after SIGKILL; determinism."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import modelset
from builders.build import load_config, plan_models, plan_shards
from builders.tasks import get_task_set
from modelset.errors import SchemaError
from modelset.tasks import Task, task_data

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not SYSTEM_FMNIST.is_dir(), reason="needs dataset-fashion-mnist (sudo apt-get install ...)"
)


def tiny_config() -> dict:
    """configs/mini.yaml cut down further so a build takes seconds."""
    cfg = load_config(REPO / "configs" / "mini.yaml")
    cfg["data"] = {"root": None, "train_limit": 400, "test_limit": 200}
    cfg["threads"] = 2  # as ModelSet500: two engine stacks side by side, still bit-reproducible
    cfg["families"] = [
        {"architecture": "cnn3", "arch_kwargs": {"strides": [2, 2, 2]}, "models_per_task": 2},
        {"architecture": "resnet_tiny", "arch_kwargs": {}, "models_per_task": 1},
    ]
    cfg["hyperparameters"] = dict(cfg["hyperparameters"], epochs=[4, 4], batch_size=[32])
    cfg["shard_size"] = 3
    cfg["transfer"] = dict(cfg["transfer"], budget=100, epochs=1)
    cfg["variants"] = []  # the variants hook has its own test
    return cfg


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("build")
    cfg_path = base / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    with pytest.MonkeyPatch.context() as patch:  # this module's data root only
        patch.setenv("MODELSET_DATA_ROOT", str(base / "raw"))
        yield {"base": base, "config": cfg_path}


def _build_cli(env: dict, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "builders",
            "build",
            "--config",
            str(env["config"]),
            "--out",
            str(out),
            "--no-progress",
            "--log-level",
            "WARNING",
        ],  # fmt: skip
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


@pytest.fixture(scope="module")
def clean(env: dict) -> Path:
    out = env["base"] / "clean"
    assert _build_cli(env, out).wait(timeout=300) == 0
    return out


def test_plan_is_deterministic_and_documented() -> None:
    cfg = load_config(REPO / "configs" / "modelset500.yaml")
    tasks = get_task_set(cfg["tasks"])
    a, b = plan_models(cfg, tasks), plan_models(cfg, tasks)
    assert a == b and len(a) == 500 and len({s.model_id for s in a}) == 500
    assert len(tasks) == 50 and {s.architecture for s in a} == {f["architecture"] for f in cfg["families"]}
    assert {s.num_classes for s in a} == {5}  # v2: no head shape tells tasks apart
    hp = cfg["hyperparameters"]
    for s in a:  # inside the documented ranges
        lo, hi = hp["lr"][s.optimizer]
        assert lo <= s.lr <= hi and hp["epochs"][0] <= s.epochs <= hp["epochs"][1]
        assert s.batch_size in hp["batch_size"]
    shards = plan_shards(a, cfg["shard_size"])
    assert sorted(s.model_id for sh in shards for s in sh) == sorted(s.model_id for s in a)
    for sh in shards:
        assert len({(s.signature(), s.batch_size) for s in sh}) == 1 and len(sh) <= 50


def test_bad_config_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ntasks: fashion4\nfamilies: []\nbogus: 1\n")
    with pytest.raises(SchemaError, match=r"c.yaml.*bogus"):
        load_config(p)


@pytest.mark.slow
def test_tiny_build_end_to_end(clean: Path) -> None:
    modelset.verify(clean)
    ms = modelset.open(clean)
    meta = ms.metadata
    assert len(meta) == 12 and meta.index.is_unique
    assert set(meta["variant"]) == {"base"} and set(meta["architecture"]) == {"cnn3", "resnet_tiny"}
    # genuinely trained: every model beats its task's majority-class rate, most by far
    assert (meta["test_accuracy"] > meta["chance_accuracy"]).all()
    assert (meta["test_accuracy"] > meta["chance_accuracy"] + 0.1).mean() >= 0.75
    for col in ("seed", "lr", "weight_decay", "batch_size", "optimizer", "epochs", "below_chance"):
        assert col in meta.columns
    rel = ms.relations
    assert {"label_jaccard", "same_domain", "transfer_affinity"} <= set(rel)
    for name in ("label_jaccard", "same_domain"):
        m = rel[name].values
        assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1.0)
    ta = rel["transfer_affinity"]
    assert ta.shape == (4, 4) and np.isfinite(ta.values).all()
    assert list(ta.index) == list(ms.tasks.index)
    assert "scratch_accuracy" in ms.tasks.columns


@pytest.mark.slow
def test_model_reproduces_recorded_accuracy(clean: Path) -> None:
    ms = modelset.open(clean)
    for mid in ["t01-cnn3-base-0000", "t03-resnet_tiny-base-0000"]:
        row = ms.metadata.loc[mid]
        task = Task.from_row(row["task"], ms.tasks.loc[row["task"]].to_dict())
        x, y = task_data(task, "test", limit=int(row["test_size"]))
        with torch.no_grad():
            acc = int((ms.model(mid)(x).argmax(1) == y).sum()) / len(y)
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_resume_after_sigkill_is_identical(env: dict, clean: Path) -> None:
    out = env["base"] / "killed"
    proc = _build_cli(env, out)
    shards = out / "shards"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and any(shards.glob("*.h5")):
            break  # at least one shard written: kill mid-way, possibly mid-commit
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _build_cli(env, out).wait(timeout=300) == 0  # the same command continues
    modelset.verify(out)
    a, b = modelset.open(clean), modelset.open(out)
    assert sorted(b.metadata.index) == sorted(a.metadata.index)  # every model exactly once
    assert b.metadata.index.is_unique
    for mid in a.metadata.index:  # and identical to an uninterrupted build (determinism)
        for ck in ("init", "final"):
            sa, sb = a.state_dict(mid, ck), b.state_dict(mid, ck)
            assert all(torch.equal(sa[k], sb[k]) for k in sa), (mid, ck)
    cols = ["task", "seed", "lr", "weight_decay", "batch_size", "optimizer", "epochs",
            "test_accuracy", "train_loss"]  # fmt: skip
    assert a.metadata.sort_index()[cols].equals(b.metadata.sort_index()[cols])
    assert a.relations["transfer_affinity"].equals(b.relations["transfer_affinity"])


@pytest.mark.slow
def test_variants_hook_calls_registered_recipes(env: dict) -> None:
    from builders.variants import register_recipe
    from modelset.writer import ModelRecord

    calls: list[str] = []

    @register_recipe("test_halved")
    def halved(parent, data, seed, scale: float = 0.5):  # a stand-in recipe: scaled weights
        calls.append(parent.model_id)
        sd = {k: v * scale for k, v in parent.state_dict.items()}
        row = dict(parent.row, variant="halved", parent_id=parent.model_id, seed=seed)
        row = {k: v for k, v in row.items() if k in ("task", "dataset", "variant", "parent_id", "seed")}
        return [ModelRecord(f"{parent.model_id}-halved-s{seed}", parent.architecture,
                            dict(parent.arch_kwargs), {"final": sd}, row)]  # fmt: skip

    cfg = tiny_config()
    cfg["transfer"] = {"enabled": False}
    cfg["variants"] = [{"recipe": "test_halved", "parents": {"per_task": 1}, "params": {"scale": 0.5}}]
    from builders.build import build

    out = build(cfg, env["base"] / "variants", progress=False)
    ms = modelset.open(out)
    var = ms.metadata[ms.metadata["variant"] == "halved"]
    assert len(var) == 4 and sorted(var["parent_id"]) == sorted(calls)
    assert set(var["recipe"]) == {"test_halved"}
    pid = var["parent_id"].iloc[0]
    torch.testing.assert_close(
        ms.state_dict(var.index[0])["head.bias"], ms.state_dict(pid)["head.bias"] * 0.5
    )
    build(cfg, out, progress=False)  # resuming a finished set calls no recipe again
    assert len(calls) == 4 and len(modelset.open(out).metadata) == len(ms.metadata)


@pytest.mark.slow
def test_resume_keeps_measured_transfer_affinity(clean: Path) -> None:
    from builders.build import _measured_transfer

    ms = modelset.open(clean)
    affinity, scratch = _measured_transfer(clean)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(affinity, ms.relations["transfer_affinity"])
    assert scratch.to_dict() == ms.tasks["scratch_accuracy"].to_dict()
    assert _measured_transfer(clean.parent / "nowhere") is None
