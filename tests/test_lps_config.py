"""The LPS authors' CIFAR-100 protocol, run on a tiny stand-in data set of CIFAR-100's shape."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision

import modelset
from builders.build import build, load_config
from builders.config import BuildConfig
from modelset import datasets
from modelset.errors import DataUnavailableError

REPO = Path(__file__).resolve().parents[1]


def write_fake_cifar100(root: Path, per_class: tuple[int, int] = (8, 2), seed: int = 0) -> None:
    """CIFAR-100's python layout (``cifar-100-python/{train,test,meta}``) with a few images per
    class; torchvision's own reader loads it (the format of the source data set, not of a set)."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    for split, n in (("train", per_class[0]), ("test", per_class[1])):
        labels = np.repeat(np.arange(100), n)
        # class c is brighter in channel c % 3: learnable, so the build's models train
        data = rng.integers(0, 100, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        data[np.arange(len(labels)), labels % 3] += 120
        with open(base / split, "wb") as fh:
            pickle.dump({"data": data.reshape(len(labels), -1), "fine_labels": labels.tolist()}, fh)
    with open(base / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, fh)


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_fake_cifar100(tmp_path / "raw")
    # the stand-in files cannot match torchvision's recorded MD5s of the real archives
    cls = torchvision.datasets.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", None]])
    monkeypatch.setattr(cls, "test_list", [["test", None]])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=None))
    monkeypatch.setenv("MODELSET_DATA_ROOT", str(tmp_path / "raw"))
    datasets.clear_cache()
    yield tmp_path
    datasets.clear_cache()


def _small(config: BuildConfig) -> dict:
    cfg = dict(config.to_dict(), device="cpu")
    cfg["families"] = [dict(cfg["families"][0], models_per_task=2)]
    cfg["hyperparameters"] = dict(cfg["hyperparameters"], epochs=[2, 2], batch_size=[8])
    return cfg


@pytest.mark.slow
def test_lps_protocol_on_stand_in(fake_cifar: Path) -> None:
    cfg = load_config(REPO / "configs" / "lps-cifar100.yaml")
    assert cfg.tasks == "cifar100_pairs"
    out = build(_small(cfg), fake_cifar / "set", progress=False)
    modelset.verify(out)
    ms = modelset.open(out)
    assert len(ms.tasks) == 50 and len(ms.metadata) == 100
    assert ms.tasks.loc["p07", "classes"] == "[14, 15]"
    assert set(ms.metadata["num_classes"]) == {2}
    assert set(ms.metadata["lr"]) == {0.05} and set(ms.metadata["batch_size"]) == {8}
    assert ms.metadata.groupby("task")["seed"].nunique().eq(2).all()  # seeds differ per task
    j = ms.relations["label_jaccard"].values
    assert (j == np.eye(50)).all()  # disjoint pairs
    assert ms.state_dict("p00-cnn3-base-0000")["conv1.weight"].shape == (16, 3, 3, 3)


def test_lps_without_cifar100_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSET_DATA_ROOT", str(tmp_path / "raw"))
    monkeypatch.setenv("MODELSET_OFFLINE", "1")
    datasets.clear_cache()
    cfg = _small(load_config(REPO / "configs" / "lps-cifar100.yaml"))
    with pytest.raises(DataUnavailableError, match=r"cifar100.*CIFAR100.*internet"):
        build(cfg, tmp_path / "set", progress=False)
