"""The data layer: torchvision layout from fake IDX files, seeding from the system copy, errors."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modelset import datasets
from modelset.errors import ChecksumError, DataUnavailableError, UnknownNameError

SYSTEM_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _idx_images(n: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    header = np.array([0x00000803, n, 28, 28], dtype=">i4").tobytes()
    return header + img.tobytes(), img


def _idx_labels(n: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    lab = rng.integers(0, 10, size=n, dtype=np.uint8)
    header = np.array([0x00000801, n], dtype=">i4").tobytes()
    return header + lab.tobytes(), lab


def write_fake_fashion(root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Tiny IDX files in torchvision's layout ``root/FashionMNIST/raw``; returns the arrays."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        img_bytes, img = _idx_images(n, rng)
        lab_bytes, lab = _idx_labels(n, rng)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(img_bytes)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(lab_bytes)
        out[split] = (img, lab)
    return out


@pytest.fixture(autouse=True)
def _fresh_cache():
    datasets.clear_cache()
    yield
    datasets.clear_cache()


def test_fake_idx_round_trip(tmp_path: Path) -> None:
    arrays = write_fake_fashion(tmp_path)
    x, y = datasets.load_tensors("fashion_mnist", "train", tmp_path, allow_download=False)
    img, lab = arrays["train"]
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (50,) and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(img).float() / 255.0)
    assert torch.equal(y, torch.from_numpy(lab).long())
    xt, _ = datasets.load_tensors("fashion_mnist", "test", tmp_path, allow_download=False)
    assert xt.shape == (20, 1, 28, 28)
    # cached: the same objects come back
    assert datasets.load_tensors("fashion_mnist", "train", tmp_path)[0] is x


def test_missing_data_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSET_SYSTEM_DATASETS", str(tmp_path / "nothing"))
    with pytest.raises(DataUnavailableError) as info:
        datasets.load_tensors("fashion_mnist", "train", tmp_path / "root", allow_download=False)
    msg = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "internet" in msg and str(tmp_path / "root") in msg


def test_cifar100_missing_names_download(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="CIFAR100.*internet|internet.*CIFAR100"):
        datasets.get_dataset("cifar100", "train", tmp_path, allow_download=False)


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(UnknownNameError, match="fashion_mnist"):
        datasets.dataset_info("fashion_mnst")


def test_data_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELSET_DATA_ROOT", str(tmp_path))
    assert datasets.data_root() == tmp_path
    monkeypatch.delenv("MODELSET_DATA_ROOT")
    assert datasets.data_root() == Path("data/raw")


def test_damaged_system_archive_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "sys" / "fashion-mnist"
    src.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):  # fmt: skip
        with gzip.open(src / f"{name}.gz", "wb") as fh:
            fh.write(b"\x00" * 100)  # right names, wrong size
    monkeypatch.setenv("MODELSET_SYSTEM_DATASETS", str(tmp_path / "sys"))
    with pytest.raises(ChecksumError, match=r"train-images-idx3-ubyte.gz.*100 bytes.*47040016"):
        datasets.seed_from_system("fashion_mnist", tmp_path / "root")
    # nothing half-written is left in the torchvision layout
    assert not any((tmp_path / "root" / "FashionMNIST" / "raw").iterdir())


@pytest.mark.skipif(not SYSTEM_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_seed_from_debian_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSET_SYSTEM_DATASETS", raising=False)
    x, y = datasets.load_tensors("fashion_mnist", "test", tmp_path, allow_download=False)
    assert x.shape == (10000, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    assert abs(float(x.mean()) - 0.2860) < 0.01  # the data set's known mean
    raw = tmp_path / "FashionMNIST" / "raw"
    assert sorted(os.listdir(raw)) == sorted(
        [
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
        ]  # fmt: skip
    )
