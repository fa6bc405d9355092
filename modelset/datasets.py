"""A small data layer over torchvision's dataset classes.

Each source data set is read by the standard torchvision class (so its own integrity checks
apply). Files come from, in order:

1. the torchvision layout under the data root (``<root>/FashionMNIST/raw/...``), if already there;
2. a Debian data package (``sudo apt-get install dataset-fashion-mnist`` puts gzipped IDX files in
   ``/usr/share/datasets/fashion-mnist``): the archives are checked against torchvision's recorded
   MD5 sums, decompressed to a temporary name and renamed into torchvision's layout;
3. torchvision's own download, when the machine is online.

When none works, :class:`~modelset.errors.DataUnavailableError` says how to get the data.

The data root defaults to ``data/raw``; the environment variable ``MODELSET_DATA_ROOT`` overrides
it, and ``MODELSET_SYSTEM_DATASETS`` overrides the Debian folder ``/usr/share/datasets``.
Whole data sets are small, so :func:`load_tensors` keeps them in memory as tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from modelset import _atomic
from modelset.errors import ChecksumError, DataUnavailableError
from modelset.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_ROOT = "data/raw"
SYSTEM_DATASETS = "/usr/share/datasets"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What the data layer knows about one source data set.

    ``tv_class`` names the torchvision class; ``system_dir`` the folder (under the system data sets
    folder) a Debian package installs its gzipped files into, or ``""`` when there is no package.
    """

    name: str
    tv_class: str
    channels: int
    size: int
    num_classes: int
    apt_package: str = ""
    system_dir: str = ""
    classes: tuple[str, ...] = field(default_factory=tuple)
    # Per-channel mean and std of the training images in [0, 1]: tasks standardize with them.
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)


_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

#: Source data sets the layer knows, by name.
DATASETS: Registry[DatasetInfo] = Registry("dataset")
for _info in (
    DatasetInfo(
        "fashion_mnist", "FashionMNIST", 1, 28, 10, apt_package="dataset-fashion-mnist",
        system_dir="fashion-mnist", classes=_FASHION_CLASSES, mean=(0.2860,), std=(0.3530,),
    ),
    DatasetInfo(
        "mnist", "MNIST", 1, 28, 10, system_dir="mnist",
        classes=tuple(str(i) for i in range(10)), mean=(0.1307,), std=(0.3081,),
    ),
    DatasetInfo(
        "kmnist", "KMNIST", 1, 28, 10, system_dir="kmnist", mean=(0.1918,), std=(0.3483,)
    ),
    DatasetInfo(
        "cifar10", "CIFAR10", 3, 32, 10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    DatasetInfo(
        "cifar100", "CIFAR100", 3, 32, 100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
):  # fmt: skip
    DATASETS.add(_info.name, _info)


def list_datasets() -> list[str]:
    """Names of every source data set the layer knows."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; unknown names raise ``UnknownNameError``."""
    return DATASETS.get(name)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$MODELSET_DATA_ROOT``, else ``data/raw``."""
    if root is None:
        root = os.environ.get("MODELSET_DATA_ROOT", DEFAULT_ROOT)
    return Path(root)


def _tv_class(info: DatasetInfo) -> type:
    import torchvision.datasets as tvd

    return getattr(tvd, info.tv_class)


def _system_dir(info: DatasetInfo) -> Path | None:
    if not info.system_dir:
        return None
    base = Path(os.environ.get("MODELSET_SYSTEM_DATASETS", SYSTEM_DATASETS))
    return base / info.system_dir


def _md5(path: Path) -> str:
    digest = hashlib.md5()  # torchvision records MD5 sums, so that is what we can compare
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Decompressed sizes of the IDX files of the 28×28 data sets (header + payload): a copy of another
# size is truncated or not the data set, whatever its name says.
_IDX_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}


def _dpkg_md5(package: str, path: Path) -> str | None:
    """The MD5 dpkg recorded for ``path`` when it installed ``package``, or None if unknown."""
    info = Path("/var/lib/dpkg/info")
    rel = str(path.resolve()).lstrip("/")
    for name in (f"{package}.md5sums", f"{package}:all.md5sums", f"{package}:amd64.md5sums"):
        sums = info / name
        if not sums.is_file():
            continue
        for line in sums.read_text().splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2 and parts[1].strip() == rel:
                return parts[0]
    return None


def seed_from_system(name: str, root: str | os.PathLike | None = None) -> bool:
    """Copy a Debian package's gzipped IDX files into torchvision's layout under ``root``.

    Each archive is checked against the MD5 sum dpkg recorded when it installed the package (the
    Debian archives are recompressed, so torchvision's sums of the upstream archives do not apply),
    decompressed to a temporary name, checked for its IDX size and renamed into place, so an
    interrupted copy never leaves a half-written file. torchvision then checks the IDX headers when
    it reads them. Returns False when the package's folder or one of its files is absent; raises
    ``ChecksumError`` when a file is present but damaged.
    """
    info = dataset_info(name)
    src = _system_dir(info)
    resources = getattr(_tv_class(info), "resources", None)
    if src is None or resources is None or not src.is_dir():
        return False
    archives = [src / os.path.basename(url) for url, _ in resources]
    if not all(a.is_file() for a in archives):
        missing = [str(a) for a in archives if not a.is_file()]
        log.warning("system copy of %s is incomplete, missing %s", name, ", ".join(missing))
        return False
    raw = data_root(root) / info.tv_class / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        target = raw / archive.name[: -len(".gz")]
        if target.is_file():
            continue
        recorded = _dpkg_md5(info.apt_package, archive) if info.apt_package else None
        if recorded is not None and (found := _md5(archive)) != recorded:
            raise ChecksumError(
                f"{archive}: MD5 {found} differs from {recorded} recorded by dpkg for "
                f"{info.apt_package}; reinstall it with "
                f"`sudo apt-get install --reinstall {info.apt_package}`."
            )
        with _atomic.atomic_path(target) as tmp:  # renamed into place only once complete and checked
            try:
                with gzip.open(archive, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            except (OSError, EOFError) as exc:
                raise ChecksumError(f"{archive}: cannot be decompressed ({exc}); is it damaged?") from exc
            expected = _IDX_SIZES.get(target.name)
            size = tmp.stat().st_size
            if expected is not None and size != expected:
                raise ChecksumError(
                    f"{archive}: decompresses to {size} bytes, expected {expected} for {target.name}."
                )
    log.info("seeded %s from %s into %s", name, src, raw)
    return True


def _how_to_get(info: DatasetInfo, root: Path) -> str:
    ways = []
    if info.apt_package:
        ways.append(f"install the Debian package (`sudo apt-get install {info.apt_package}`)")
    ways.append(f"run once on a machine with internet access so torchvision downloads it into {root}")
    ways.append(
        f"or copy torchvision's {info.tv_class} files into {root / info.tv_class} "
        "(set MODELSET_DATA_ROOT to use another root)"
    )
    return "; ".join(ways) + "."


def get_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> torch.utils.data.Dataset:
    """The torchvision data set ``name`` (``split`` is "train" or "test") read from ``root``.

    Tries the files already under ``root``, then the Debian package, then torchvision's download
    (``allow_download`` None means: unless the environment sets ``MODELSET_OFFLINE=1``).
    Raises ``DataUnavailableError`` naming the data set, the root and how to get the data.
    """
    if allow_download is None:
        allow_download = os.environ.get("MODELSET_OFFLINE", "0") in ("", "0")
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root_path = data_root(root)
    cls = _tv_class(info)
    train = split == "train"

    def attempt(download: bool) -> torch.utils.data.Dataset:
        return cls(str(root_path), train=train, download=download)

    try:
        return attempt(False)
    except RuntimeError:
        pass  # torchvision's "Dataset not found or corrupted": try the other sources
    if seed_from_system(name, root_path):
        return attempt(False)
    errors = "download not allowed"
    if allow_download:
        try:
            return attempt(True)
        except Exception as exc:  # noqa: BLE001  (URLError, HTTPError, OSError, RuntimeError ...)
            errors = f"download failed: {type(exc).__name__}: {exc}"
    sysdir = _system_dir(info)
    where = f" nor in {sysdir}" if sysdir is not None else ""
    raise DataUnavailableError(
        f"{name} ({split}) is not under {root_path / info.tv_class}{where}, and {errors}. "
        f"To get it: {_how_to_get(info, root_path)}"
    )


_CACHE: dict[tuple[str, str, str], tuple[torch.Tensor, torch.Tensor]] = {}
_CACHE_LOCK = threading.Lock()


def load_tensors(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory: images ``(N, C, H, W)`` float32 in [0, 1], labels ``(N,)`` int64.

    Cached per (name, split, root) for the life of the process; callers must not modify the
    returned tensors in place.
    """
    key = (name, split, str(data_root(root).resolve()))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    ds = get_dataset(name, split, root, allow_download)
    data = ds.data
    data = torch.from_numpy(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    if data.ndim == 3:  # MNIST family: (N, H, W)
        data = data.unsqueeze(1)
    else:  # CIFAR: (N, H, W, C) numpy
        data = data.permute(0, 3, 1, 2)
    x = data.contiguous().to(torch.float32).div_(255.0)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    with _CACHE_LOCK:
        _CACHE[key] = (x, y)
    return x, y


def clear_cache() -> None:
    """Forget every cached split (tests use it to reload from a new root)."""
    with _CACHE_LOCK:
        _CACHE.clear()
