"""Import the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy from
Weights") into a model set of ``cnn3`` models.

The zoo's published layout, one folder per data set (``mnist``, ``fashion_mnist``, ``cifar10``,
``svhn_cropped``), each holding:

- ``weights.npy``: a float matrix, one row per checkpoint, each row the 4,970 parameters of one
  network flattened as TensorFlow stores them: per layer the bias, then the kernel; convolution
  kernels in Keras' HWIO order ``(3, 3, in, out)``, the dense kernel as ``(in, out)``.
- ``metrics.csv.gz``: one row per row of ``weights.npy``: the run's config (``config.*``), the
  run's folder ``modeldir``, ``step`` (the epoch of the checkpoint: 0, 1, 2, 3, 20, 40, 60, 80 or
  86) and the checkpoint's train/test accuracy and loss.
- ``layout.csv``: ``varname,start_idx,end_idx,shape`` per tensor, e.g.
  ``sequential/conv2d/kernel:0,16,160,"(3, 3, 1, 16)"``.

The networks are Keras ``Sequential`` models: three 3×3 ``Conv2D`` with stride 2 and "valid"
padding, each followed by the run's activation (and dropout, a no-op at evaluation), global
average pooling and a dense layer, on one-channel images scaled to [-1, 1] (colour images are
averaged over their channels). That is ``cnn3`` with ``strides=[2, 2, 2]``, ``padding=0`` and the
run's ``activation``; kernels are transposed to torch's OIHW and ``(out, in)``.

Every run (one ``modeldir``) becomes one model with a stable id derived from its data set and
``modeldir``; its checkpoints are named ``init`` (epoch 0), ``epoch_<e>`` and ``final`` (its last
checkpoint; the ``final_epoch`` column says which epoch that is), with the figures of every
checkpoint in the ``checkpoint_metrics`` column (``ModelSet.checkpoint_table``). The set ships model
folds (every run held out once, per data set). The source is untrusted: files
are size-bounded, ``weights.npy`` is memory-mapped without pickle, and every problem is an
``ImportSourceError`` naming the file and row.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from modelset.errors import ModelSetError

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npy"
METRICS_FILE = "metrics.csv.gz"
LAYOUT_FILE = "layout.csv"

#: Checkpoint epochs of the zoo's runs (its README); other epochs are accepted and named alike.
ZOO_EPOCHS = (0, 1, 2, 3, 20, 40, 60, 80, 86)
#: The zoo's convolutions all have stride 2 (``cnn_stride`` of its training script).
ZOO_STRIDE = 2
KERNEL_SIZE = 3

#: Size limits of the source files: the real ones are far below them.
MAX_LAYOUT_BYTES = 1 << 20
MAX_METRICS_BYTES = 1 << 30  # compressed
MAX_METRICS_TEXT = 4 << 30  # decompressed
MAX_ROWS = 50_000_000
MAX_PARAMS = 1 << 22

#: metrics.csv.gz column -> model table column (the builder's names where they match).
CONFIG_COLUMNS = {
    "config.activation": "activation",
    "config.b_init": "b_init",
    "config.dropout": "dropout",
    "config.epochs": "epochs",
    "config.epochs_between_checkpoints": "epochs_between_checkpoints",
    "config.init_std": "init_std",
    "config.l2reg": "weight_decay",
    "config.learning_rate": "lr",
    "config.optimizer": "optimizer",
    "config.random_seed": "seed",
    "config.train_fraction": "train_fraction",
    "config.w_init": "init",
}
#: Config columns that must match the architecture (checked, not stored).
ARCH_COLUMNS = ("config.dataset", "config.dnn_architecture", "config.num_layers", "config.num_units")
METRIC_COLUMNS = ("test_accuracy", "test_loss", "train_accuracy", "train_loss")
REQUIRED_COLUMNS = (*CONFIG_COLUMNS, *ARCH_COLUMNS, "modeldir", "step", *METRIC_COLUMNS)
INT_COLUMNS = ("epochs", "epochs_between_checkpoints", "seed")
TEXT_COLUMNS = ("activation", "b_init", "init", "optimizer")

#: The zoo's data sets: zoo name -> (task id, ModelSet data set, image size, averaged colour channels).
ZOO_DATASETS = {
    "mnist": ("mnist", "mnist", 28, False),
    "fashion_mnist": ("fashion_mnist", "fashion_mnist", 28, False),
    "cifar10": ("cifar10_gs", "cifar10", 32, True),
    "svhn_cropped": ("svhn_gs", "svhn_cropped", 32, True),
}

_VARNAME = re.compile(r"(?:^|/)(conv2d|dense)(?:_(\d{1,4}))?/(kernel|bias):0$")
_SHAPE = re.compile(r"^[(\[]\s*(\d{1,9}(?:\s*,\s*\d{1,9})*)?\s*,?\s*[)\]]$")


class ImportSourceError(ModelSetError):
    """A zoo's source files are missing, malformed or inconsistent; the message names the file
    and row."""


@dataclass(frozen=True)
class Tensor:
    """One tensor of the flat vector: columns ``start:end`` of ``weights.npy``."""

    varname: str
    start: int
    end: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    """The network a ``layout.csv`` describes, as ``cnn3`` sees it."""

    convs: tuple[tuple[Tensor, Tensor], ...]  # (kernel, bias) per convolution, in order
    dense: tuple[Tensor, Tensor]
    n_params: int

    @property
    def in_channels(self) -> int:
        return self.convs[0][0].shape[2]

    @property
    def channels(self) -> list[int]:
        return [kernel.shape[3] for kernel, _ in self.convs]

    @property
    def num_classes(self) -> int:
        return self.dense[0].shape[1]

    def state_dicts(self, rows: np.ndarray) -> list[dict[str, torch.Tensor]]:
        """Flat rows ``(n, n_params)`` → ``n`` cnn3 state dicts (torch layouts, the rows' dtype)."""
        n = rows.shape[0]
        stacked: dict[str, np.ndarray] = {}
        for i, (kernel, bias) in enumerate(self.convs, start=1):
            hwio = rows[:, kernel.start : kernel.end].reshape(n, *kernel.shape)
            stacked[f"conv{i}.weight"] = np.ascontiguousarray(hwio.transpose(0, 4, 3, 1, 2))  # HWIO -> OIHW
            stacked[f"conv{i}.bias"] = np.ascontiguousarray(rows[:, bias.start : bias.end])
        kernel, bias = self.dense
        dense = rows[:, kernel.start : kernel.end].reshape(n, *kernel.shape)
        stacked["head.weight"] = np.ascontiguousarray(dense.transpose(0, 2, 1))  # (in, out) -> (out, in)
        stacked["head.bias"] = np.ascontiguousarray(rows[:, bias.start : bias.end])
        return [{k: torch.from_numpy(v[j]) for k, v in stacked.items()} for j in range(n)]


def _parse_shape(text: str, where: str) -> tuple[int, ...]:
    match = _SHAPE.match(text.strip())
    if not match:
        raise ImportSourceError(
            f"{where}: shape {text[:80]!r} is not a tuple of integers like '(3, 3, 1, 16)'"
        )
    return tuple(int(v) for v in match.group(1).split(",")) if match.group(1) else ()


def read_layout(path: Path) -> Layout:
    """Parse and check a zoo ``layout.csv``: tensors tile ``0..n_params`` without gaps, and form
    3×3 convolutions chained by their channels and a dense head."""
    data = _read_small(path, "layout", MAX_LAYOUT_BYTES)
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ImportSourceError(f"{path}: not a CSV text file ({exc})") from exc
    need = ("varname", "start_idx", "end_idx", "shape")
    if not rows or any(c not in rows[0] for c in need):
        found = list(rows[0]) if rows else []
        raise ImportSourceError(f"{path}: expected columns {list(need)}, found {found}")
    layers: dict[tuple[str, int], dict[str, Tensor]] = {}
    tensors = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}, line {number}"
        try:
            start, end = int(row["start_idx"]), int(row["end_idx"])
        except (TypeError, ValueError) as exc:
            raise ImportSourceError(f"{where}: start_idx/end_idx must be integers ({exc})") from exc
        shape = _parse_shape(row["shape"] or "", where)
        if not 0 <= start <= end <= MAX_PARAMS or end - start != math.prod(shape):
            raise ImportSourceError(f"{where}: columns {start}:{end} cannot hold a tensor of shape {shape}")
        name = (row["varname"] or "").strip()
        match = _VARNAME.search(name)
        if not match:
            raise ImportSourceError(
                f"{where}: varname {name[:80]!r} is not a Keras conv2d/dense kernel or bias (e.g. 'sequential/conv2d/kernel:0')"
            )
        kind, index, part = match.group(1), int(match.group(2) or 0), match.group(3)
        if part in layers.setdefault((kind, index), {}):
            raise ImportSourceError(f"{where}: {name!r} is listed twice")
        tensor = Tensor(name, start, end, shape)
        layers[(kind, index)][part] = tensor
        tensors.append(tensor)
    tensors.sort(key=lambda t: t.start)
    position = 0
    for t in tensors:
        if t.start != position:
            raise ImportSourceError(
                f"{path}: {t.varname!r} starts at column {t.start}, expected {position} (gap or overlap)"
            )
        position = t.end
    for (kind, index), parts in layers.items():
        if set(parts) != {"kernel", "bias"}:
            raise ImportSourceError(
                f"{path}: layer {kind}_{index} lacks its {'kernel' if 'kernel' not in parts else 'bias'}"
            )
    convs = tuple(
        (layers[k]["kernel"], layers[k]["bias"]) for k in sorted(k for k in layers if k[0] == "conv2d")
    )
    denses = [layers[k] for k in layers if k[0] == "dense"]
    if not convs or len(denses) != 1:
        raise ImportSourceError(
            f"{path}: expected convolutions and one dense layer, found {len(convs)} and {len(denses)}"
        )
    width = convs[0][0].shape[2] if len(convs[0][0].shape) == 4 else -1
    for kernel, bias in convs:
        k = kernel.shape
        if len(k) != 4 or k[:2] != (KERNEL_SIZE, KERNEL_SIZE) or k[2] != width or bias.shape != (k[3],):
            raise ImportSourceError(
                f"{path}: {kernel.varname!r} has shape {k} and bias {bias.shape}; cnn3 needs 3×3 HWIO "
                f"kernels (3, 3, {width}, out) with a bias of (out,)"
            )
        width = k[3]
    kernel, bias = denses[0]["kernel"], denses[0]["bias"]
    if len(kernel.shape) != 2 or kernel.shape[0] != width or bias.shape != (kernel.shape[1],):
        raise ImportSourceError(
            f"{path}: dense kernel {kernel.shape} and bias {bias.shape} do not fit {width} channels "
            "(expected (channels, classes) and (classes,))"
        )
    return Layout(convs, (kernel, bias), position)


def _read_small(path: Path, what: str, limit: int) -> bytes:
    if not path.is_file():
        raise ImportSourceError(
            f"{path}: the {what} file is missing; the zoo's folders hold {WEIGHTS_FILE}, {METRICS_FILE} and {LAYOUT_FILE}"
        )
    size = path.stat().st_size
    if size > limit:
        raise ImportSourceError(
            f"{path}: {size} bytes, more than the {limit} a {what} file of the zoo can have"
        )
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ImportSourceError(f"{path}: grew past {limit} bytes while read")
    return data


def read_metrics(path: Path) -> pd.DataFrame:
    """``metrics.csv.gz`` as a table, decompressed within a size bound; columns checked."""
    raw = _read_small(path, "metrics", MAX_METRICS_BYTES)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as fh:
            text = fh.read(MAX_METRICS_TEXT + 1)
    except (OSError, EOFError) as exc:
        raise ImportSourceError(f"{path}: not a gzip file ({exc})") from exc
    if len(text) > MAX_METRICS_TEXT:
        raise ImportSourceError(f"{path}: decompresses to more than {MAX_METRICS_TEXT} bytes")
    try:
        frame = pd.read_csv(io.BytesIO(text), low_memory=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ImportSourceError(f"{path}: not a readable CSV table ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ImportSourceError(f"{path}: lacks the zoo's columns {missing}")
    return frame


@dataclass
class ZooSource:
    """One data set folder of the zoo, read and checked (weights memory-mapped)."""

    folder: Path
    zoo_dataset: str
    layout: Layout
    metrics: pd.DataFrame
    weights: np.ndarray  # (rows, n_params), memory-mapped
    runs: list[np.ndarray]  # per run (in order of first row): its rows, sorted by epoch

    @property
    def task_id(self) -> str:
        return ZOO_DATASETS[self.zoo_dataset][0]

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the source for resuming: sizes, shape and digests of the small files."""
        return {
            "dataset": self.zoo_dataset,
            "weights": {
                "bytes": (self.folder / WEIGHTS_FILE).stat().st_size,
                "shape": list(self.weights.shape),
                "dtype": str(self.weights.dtype),
            },
            "metrics_sha256": _sha256(self.folder / METRICS_FILE),
            "layout_sha256": _sha256(self.folder / LAYOUT_FILE),
        }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_weights(path: Path, n_params: int) -> np.ndarray:
    """``weights.npy`` memory-mapped (no pickle), after checking its header against the file size."""
    if not path.is_file():
        raise ImportSourceError(f"{path}: the weights file is missing")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=10_000)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=10_000)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise ImportSourceError(f"{path}: not a NumPy .npy file ({exc})") from exc
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8) or len(shape) != 2 or fortran:
        raise ImportSourceError(
            f"{path}: expected a C-ordered 2-D float matrix, found dtype {dtype}, shape {shape}, "
            f"{'Fortran' if fortran else 'C'} order"
        )
    if shape[1] != n_params or shape[0] > MAX_ROWS:
        raise ImportSourceError(
            f"{path}: shape {shape}, but layout.csv describes {n_params} parameters per row"
        )
    if offset + shape[0] * shape[1] * dtype.itemsize > size:
        raise ImportSourceError(
            f"{path}: header declares {shape} {dtype} but the file has only {size} bytes (truncated?)"
        )
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _check_runs(metrics: pd.DataFrame, path: Path) -> list[np.ndarray]:
    """Rows of each run (one ``modeldir``), sorted by epoch; a run's config is one value per column."""
    steps = pd.to_numeric(metrics["step"], errors="coerce")
    bad = ~np.isfinite(steps.to_numpy(dtype=float)) | (steps % 1 != 0) | (steps < 0)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ImportSourceError(
            f"{path}, row {row}: step {metrics['step'].iloc[row]!r} is not an epoch number"
        )
    if metrics["modeldir"].isna().any():
        raise ImportSourceError(
            f"{path}, row {int(np.flatnonzero(metrics['modeldir'].isna().to_numpy())[0])}: modeldir is empty"
        )
    codes, _ = pd.factorize(metrics["modeldir"].astype(str), sort=False)
    step_values = steps.to_numpy().astype(np.int64)
    order = np.lexsort((step_values, codes))
    same_run = np.diff(codes[order]) == 0
    twice = same_run & (np.diff(step_values[order]) == 0)
    if twice.any():
        dup = int(order[np.flatnonzero(twice)[0] + 1])
        raise ImportSourceError(
            f"{path}, row {dup}: run {metrics['modeldir'].iloc[dup]!r} has step {step_values[dup]} twice"
        )
    counts = metrics[[*CONFIG_COLUMNS, *ARCH_COLUMNS]].groupby(codes, sort=False).nunique(dropna=False)
    varying = counts.to_numpy() > 1
    if varying.any():
        code, col = (int(v[0]) for v in np.nonzero(varying))
        rows = np.flatnonzero(codes == counts.index[code])
        raise ImportSourceError(
            f"{path}, rows {rows[:9].tolist()}: run {metrics['modeldir'].iloc[rows[0]]!r} changes its "
            f"config column {counts.columns[col]!r} between checkpoints"
        )
    runs = np.split(order, np.flatnonzero(~same_run) + 1) if len(order) else []
    return sorted(runs, key=lambda r: int(r.min()))


def read_source(folder: Path) -> ZooSource:
    """Read and check one data set folder of the zoo (every file, every row of the metrics)."""
    layout = read_layout(folder / LAYOUT_FILE)
    metrics_path = folder / METRICS_FILE
    metrics = read_metrics(metrics_path)
    weights = open_weights(folder / WEIGHTS_FILE, layout.n_params)
    if len(metrics) != weights.shape[0]:
        raise ImportSourceError(
            f"{metrics_path}: {len(metrics)} rows, but {folder / WEIGHTS_FILE} has {weights.shape[0]} rows; "
            "each checkpoint needs one row in both"
        )
    datasets = metrics["config.dataset"].astype(str).unique().tolist()
    if len(datasets) != 1 or datasets[0] not in ZOO_DATASETS:
        raise ImportSourceError(
            f"{metrics_path}: config.dataset is {datasets[:5]}; a folder holds one of the zoo's data sets {sorted(ZOO_DATASETS)}"
        )
    checks = {
        "config.dnn_architecture": (lambda v: str(v) == "cnn", "'cnn'"),
        "config.num_layers": (
            lambda v: _is_int(v) and int(v) == len(layout.convs),
            f"{len(layout.convs)} (layout.csv)",
        ),
        "config.num_units": (
            lambda v: _is_int(v) and all(int(v) == c for c in layout.channels),
            f"{layout.channels} (layout.csv)",
        ),
        "config.activation": (lambda v: str(v) in _activations(), f"one of {sorted(_activations())}"),
    }
    for column, (ok, expected) in checks.items():
        values = metrics[column]
        wrong = [v for v in values.unique() if not ok(v)]  # a handful of distinct values, not every row
        if wrong:
            row = int(np.flatnonzero(values.isin(wrong).to_numpy())[0])
            raise ImportSourceError(
                f"{metrics_path}, row {row}: {column} is {values.iloc[row]!r}, expected {expected}"
            )
    for column in (c for c, name in CONFIG_COLUMNS.items() if name not in TEXT_COLUMNS):
        values = pd.to_numeric(metrics[column], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ImportSourceError(
                f"{metrics_path}, row {row}: {column} is {metrics[column].iloc[row]!r}, not a number"
            )
    accuracy = pd.to_numeric(metrics["test_accuracy"], errors="coerce").to_numpy(dtype=float)
    outside = np.isfinite(accuracy) & ((accuracy < 0) | (accuracy > 1))
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ImportSourceError(
            f"{metrics_path}, row {row}: test_accuracy is {accuracy[row]}, expected a fraction in [0, 1]"
        )
    runs = _check_runs(metrics, metrics_path)
    return ZooSource(folder, datasets[0], layout, metrics, weights, runs)


def _is_int(value: Any) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _activations() -> tuple[str, ...]:
    from modelset.architectures.cnn import ACTIVATIONS

    return tuple(ACTIVATIONS)


def find_sources(src: Path) -> list[Path]:
    """The data set folders under ``src``: ``src`` itself if it holds ``weights.npy``, else its
    subfolders that do (sorted)."""
    if not src.is_dir():
        raise ImportSourceError(f"{src}: not a folder; pass the zoo's folder (or one data set folder of it)")
    if (src / WEIGHTS_FILE).exists():
        return [src]
    found = sorted(p for p in src.iterdir() if p.is_dir() and (p / WEIGHTS_FILE).exists())
    if not found:
        raise ImportSourceError(
            f"{src}: no {WEIGHTS_FILE} in it or in its subfolders; is it the Small CNN Zoo?"
        )
    return found


def _rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted) of ``weights.npy``, through a memory map dropped right after, so the
    pages read do not stay mapped (the whole file would otherwise count as resident)."""
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    try:
        return np.asarray(mapped[rows])
    finally:
        del mapped


def nonfinite_rows(path: Path, n_rows: int, chunk: int = 4096) -> np.ndarray:
    """Indices of the rows of ``weights.npy`` holding NaN or Inf (read in chunks of ``chunk`` rows)."""
    bad = [
        start
        + np.flatnonzero(~np.isfinite(_rows(path, np.arange(start, min(start + chunk, n_rows)))).all(axis=1))
        for start in range(0, n_rows, chunk)
    ]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def checkpoint_name(epoch: int, last: bool) -> str:
    """``final`` for a run's last checkpoint, ``init`` for epoch 0, else ``epoch_<e>``."""
    return "final" if last else "init" if epoch == 0 else f"epoch_{epoch}"


def model_id(task_id: str, modeldir: str) -> str:
    """Stable id of a run: its task and the first 16 hex digits of the sha256 of its ``modeldir``."""
    return f"{task_id}-{hashlib.sha256(modeldir.encode('utf-8')).hexdigest()[:16]}"


def _value(column: str, value: Any) -> Any:
    if column in TEXT_COLUMNS:
        return str(value)
    if column in INT_COLUMNS:
        return int(float(value))
    return float(value)


def run_rows(source: ZooSource) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Per run: model id, its source rows (by epoch) and its model-table row."""
    metrics = source.metrics
    task_id, dataset, _, _ = ZOO_DATASETS[source.zoo_dataset]
    steps = metrics["step"].to_numpy().astype(float).astype(np.int64)
    numbers = {c: pd.to_numeric(metrics[c], errors="coerce").to_numpy(dtype=float) for c in METRIC_COLUMNS}
    for rows in source.runs:
        first = metrics.iloc[rows[0]]
        modeldir = str(first["modeldir"])
        row: dict[str, Any] = {
            "task": task_id,
            "dataset": dataset,
            "domain": "identity",
            "num_classes": source.layout.num_classes,
            "variant": "base",
            "parent_id": "",
            **{name: _value(name, first[column]) for column, name in CONFIG_COLUMNS.items()},
            "input_norm": "minus_one_one",
            "final_epoch": int(steps[rows[-1]]),
            "source_run": modeldir,
        }
        row["complete_run"] = row["final_epoch"] == row["epochs"]
        for metric in METRIC_COLUMNS:
            row[metric] = float(numbers[metric][rows[-1]])
        row["checkpoint_metrics"] = checkpoint_metrics(source, rows, steps, numbers)
        yield model_id(task_id, modeldir), rows, row


def checkpoint_metrics(
    source: ZooSource, rows: np.ndarray, steps: np.ndarray, numbers: dict[str, np.ndarray]
) -> str:
    """The model table's ``checkpoint_metrics`` of one run (JSON text, the builder's contract read
    by ``ModelSet.checkpoint_table``): per checkpoint its ``epoch`` and ``step`` (both the zoo's
    ``step`` column, which counts epochs), ``test_accuracy`` and ``train_loss`` (null when not a
    number). A checkpoint without a finite test accuracy is left out (``read_source`` refused any
    outside [0, 1])."""
    figures: dict[str, dict[str, Any]] = {}
    for i, r in enumerate(rows):
        acc, loss = float(numbers["test_accuracy"][r]), float(numbers["train_loss"][r])
        if not math.isfinite(acc):
            continue
        epoch = int(steps[r])
        figures[checkpoint_name(epoch, i == len(rows) - 1)] = {
            "epoch": epoch, "step": epoch, "test_accuracy": acc, "train_loss": loss if math.isfinite(loss) else None,
        }  # fmt: skip
    return json.dumps(figures, separators=(",", ":"))


def task_table(sources: Sequence[ZooSource]) -> pd.DataFrame:
    """One task per data set: its ten classes, identity domain, and how its inputs were made."""
    rows = {}
    for source in sources:
        task_id, dataset, size, grayscale = ZOO_DATASETS[source.zoo_dataset]
        k = source.layout.num_classes
        rows[task_id] = {
            "dataset": dataset,
            "classes": json.dumps(list(range(k))),
            "domain": "identity",
            "domain_kwargs": "{}",
            "num_classes": k,
            "image_size": size,
            "grayscale": grayscale,  # colour images averaged over their channels
            "input_norm": "minus_one_one",
            "source_dataset": source.zoo_dataset,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "task"
    return frame


def arch_kwargs(layout: Layout, activation: str) -> dict[str, Any]:
    return {
        "activation": activation,
        "channels": layout.channels,
        "in_channels": layout.in_channels,
        "num_classes": layout.num_classes,
        "padding": 0,
        "strides": [ZOO_STRIDE] * len(layout.convs),
    }


LICENSE_TEXT = """The parameters and metrics of this model set are the Small CNN Zoo of Unterthiner, Keysers,
Gelly, Bousquet and Tolstikhin, "Predicting Neural Network Accuracy from Weights" (2020),
released by Google Research under the Creative Commons Attribution 4.0 International licence
(CC BY 4.0): https://creativecommons.org/licenses/by/4.0/
They were converted to this format (tensors transposed to PyTorch layouts, renamed, nothing else
changed) by the ModelSet importer; the conversion is licensed under CC BY 4.0 as well.

The networks were trained on MNIST, Fashion-MNIST, CIFAR-10 and SVHN, which keep their own licences.
"""


def import_cnn_zoo(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    skip_nonfinite: bool = False,
    runs_per_shard: int = 1024,
    name: str = "small-cnn-zoo",
    folds: int = 5,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert the Small CNN Zoo at ``src`` (its folder, or one data set folder of it) into a model
    set at ``out``; return a summary (models, checkpoints, skipped runs per data set).

    Every source file is checked before anything is written. Rows with NaN or Inf parameters
    raise ``ImportSourceError`` unless ``skip_nonfinite``, which leaves out every run with such a
    checkpoint (as the zoo's authors filter them). Writing is atomic per shard of
    ``runs_per_shard`` runs and resumable: run the same command again after an interruption.
    The set ships ``folds`` model folds (``splits/folds.json``, :func:`modelset.folds.make_model_folds`:
    every run held out once, per data set; the field splits this zoo by runs, not data sets),
    none when fewer than 2 runs are imported.
    """
    from tqdm.auto import tqdm

    from modelset import _atomic
    from modelset.card import LICENSE_FILE
    from modelset.errors import SchemaError
    from modelset.folds import FoldConfig, make_model_folds
    from modelset.shards import ModelRecord
    from modelset.writer import ModelSetWriter, write_checksums

    if runs_per_shard < 1:
        raise ValueError(f"runs_per_shard must be positive, got {runs_per_shard}")
    fold_config = FoldConfig.from_dict({"k": folds, "unit": "model"}, "folds")
    sources = [read_source(folder) for folder in find_sources(Path(src))]
    tasks = [s.task_id for s in sources]
    if len(set(tasks)) != len(tasks):
        raise ImportSourceError(f"{src}: two folders hold the same data set ({tasks}); import one of them")
    skipped: dict[str, list[int]] = {}
    for source in sources:
        bad = nonfinite_rows(source.folder / WEIGHTS_FILE, source.weights.shape[0])
        if len(bad) and not skip_nonfinite:
            row = int(bad[0])
            run = source.metrics["modeldir"].iloc[row]
            raise ImportSourceError(
                f"{source.folder / WEIGHTS_FILE}, row {row} (run {run!r}, step {source.metrics['step'].iloc[row]}): "
                f"NaN or Inf parameters ({len(bad)} such rows); pass skip_nonfinite=True (--skip-nonfinite) "
                "to leave out the runs that diverged"
            )
        skipped[source.task_id] = bad.tolist()
    config = {
        "importer": "cnn-zoo",
        "source": "Small CNN Zoo (Unterthiner et al. 2020)",
        "sources": [s.fingerprint() for s in sources],
        "skip_nonfinite": bool(skip_nonfinite),
        "runs_per_shard": int(runs_per_shard),
        "folds": {"unit": "model", "k": fold_config.k, "seed": fold_config.seed},
    }
    summary: dict[str, Any] = {"models": 0, "checkpoints": 0, "skipped_runs": {}}
    with ModelSetWriter.open(out, name, config, overwrite=overwrite) as writer:
        done = writer.model_ids
        writer.set_tasks(task_table(sources))
        total = sum(len(s.runs) for s in sources)
        bar = tqdm(total=total, desc="importing runs", unit="run", disable=not progress)
        for source in sources:
            bad_rows = set(skipped[source.task_id])
            pending: list[tuple[str, np.ndarray, dict[str, Any]]] = []
            n_skipped = 0
            for mid, rows, row in run_rows(source):
                if bad_rows and any(int(r) in bad_rows for r in rows):
                    n_skipped += 1
                    bar.update(1)
                    continue
                summary["models"] += 1
                summary["checkpoints"] += len(rows)
                if mid in done:
                    bar.update(1)
                    continue
                pending.append((mid, rows, row))
                if len(pending) == runs_per_shard:
                    _write(writer, source, pending, ModelRecord)
                    bar.update(len(pending))
                    pending = []
            if pending:
                _write(writer, source, pending, ModelRecord)
                bar.update(len(pending))
            summary["skipped_runs"][source.task_id] = n_skipped
            if n_skipped:
                log.warning("%s: left out %d runs with NaN or Inf parameters", source.folder, n_skipped)
        bar.close()
        try:
            writer.set_folds(make_model_folds(writer.table, fold_config), fold_config)
        except SchemaError as exc:  # a single run: nothing to hold out
            log.warning("%s: no folds written (%s)", out, exc)
        writer.set_header_field(
            "import", {**summary, "checkpoint_names": "init = epoch 0, epoch_<e>, final = last (final_epoch)"}
        )
        writer.finish(
            {
                "How it was made": (
                    'Imported from the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network Accuracy '
                    'from Weights") by `python -m modelset import cnn-zoo`: Keras HWIO kernels transposed to '
                    "PyTorch OIHW, dense kernels transposed, one model per run with its checkpoints "
                    "(`init` = epoch 0, `epoch_<e>`, `final` = its last, see `final_epoch`). "
                    "`weight_decay` is the zoo's Keras L2 coefficient (loss term λ‖w‖²), `seed` its fixed seed."
                )
            }
        )
        # The weights are the zoo authors' work: the licence says so (then the sums cover it).
        _atomic.write_text_atomic(Path(out) / LICENSE_FILE, LICENSE_TEXT)
        write_checksums(Path(out))
    return summary


def _write(writer: Any, source: ZooSource, pending: list, record_cls: type) -> None:
    wanted = np.sort(np.concatenate([rows for _, rows, _ in pending]))  # read in file order
    states = source.layout.state_dicts(_rows(source.folder / WEIGHTS_FILE, wanted))
    records = []
    steps = source.metrics["step"].to_numpy()
    for mid, rows, row in pending:
        at = np.searchsorted(wanted, rows)
        checkpoints = {
            checkpoint_name(int(float(steps[r])), i == len(rows) - 1): states[at[i]]
            for i, r in enumerate(rows)
        }
        records.append(
            record_cls(mid, "cnn3", arch_kwargs(source.layout, row["activation"]), checkpoints, row)
        )
    writer.write_shard(records)
