"""Parameter layouts: where each tensor of an architecture sits in one flattened vector.

A model set ships one CSV per architecture signature (architecture + keyword arguments) under
``layouts/``, like the Small CNN Zoo's ``layout.csv`` (Unterthiner et al. 2020), so that NumPy or
JAX users can cut flattened weights back into tensors without this package::

    tensor,shape,offset,size,dtype
    conv1.weight,"[16, 1, 3, 3]",0,144,float32

Rows come in the module's ``state_dict`` order; ``offset`` counts elements (not bytes) from the
start of the vector, and the vector holds every tensor (buffers included) as float32.
``dtype`` is the stored type: cast a slice back to it to get the tensor exactly (integer buffers
such as BatchNorm's ``num_batches_tracked`` are exact in float32 below 2**24).

The file of a signature is ``layouts/<architecture>-<h>.csv`` where ``<h>`` is the first 12 hex
digits of the sha256 of the model table's ``arch_kwargs`` string (canonical JSON), so it can be
found from a model's row, or from its shard block's attributes, with the standard library alone.
``layouts/index.csv`` lists every file with its signature, length and model count.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from modelset import _atomic
from modelset.errors import InvalidParametersError, SchemaError

if TYPE_CHECKING:
    from modelset.reader import ModelSet

LAYOUTS_DIR = "layouts"
LAYOUT_INDEX = "index.csv"
LAYOUT_COLUMNS = ("tensor", "shape", "offset", "size", "dtype")
#: Integers up to this magnitude are exact in float32.
FLOAT32_EXACT_INT = 1 << 24


@dataclass(frozen=True)
class TensorSlot:
    """One tensor's place in the flattened vector: ``vector[offset : offset + size]``."""

    tensor: str
    shape: tuple[int, ...]
    offset: int
    size: int
    dtype: str


@dataclass(frozen=True)
class Layout:
    """The flattened layout of one architecture signature."""

    architecture: str
    arch_kwargs: str  # canonical JSON, as in the model table
    slots: tuple[TensorSlot, ...]

    @property
    def length(self) -> int:
        """Length of the flattened vector."""
        return self.slots[-1].offset + self.slots[-1].size if self.slots else 0

    @property
    def file_name(self) -> str:
        return layout_file_name(self.architecture, self.arch_kwargs)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(LAYOUT_COLUMNS)
        for s in self.slots:
            writer.writerow([s.tensor, json.dumps(list(s.shape)), s.offset, s.size, s.dtype])
        return out.getvalue()

    def flatten(self, tensors: Mapping[str, np.ndarray], leading: int = 0) -> np.ndarray:
        """Concatenate ``tensors`` in layout order as float32.

        ``leading`` is the number of batch dimensions in front of each tensor's shape: with
        ``leading=1`` and tensors ``(n, *shape)`` the result is ``(n, length)``. Integer tensors
        too large for float32 raise ``InvalidParametersError``.
        """
        parts = []
        for s in self.slots:
            value = np.asarray(tensors[s.tensor])
            batch = value.shape[:leading]
            if value.shape[leading:] != s.shape:
                raise InvalidParametersError(
                    f"{self.architecture} {self.arch_kwargs}: tensor {s.tensor!r} has shape "
                    f"{list(value.shape[leading:])}, the layout says {list(s.shape)}"
                )
            if value.dtype.kind in "iub" and value.size and np.abs(value.astype(np.int64)).max() > FLOAT32_EXACT_INT:
                raise InvalidParametersError(
                    f"{self.architecture}: integer tensor {s.tensor!r} holds values beyond 2**24, "
                    "which float32 cannot hold exactly"
                )
            parts.append(value.reshape((*batch, s.size)).astype(np.float32, copy=False))
        return np.concatenate(parts, axis=leading)

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """Cut ``vector`` ``(..., length)`` into ``{tensor: (..., *shape)}`` of the stored dtypes."""
        vector = np.asarray(vector)
        if vector.shape[-1] != self.length:
            raise InvalidParametersError(
                f"{self.architecture} {self.arch_kwargs}: vector of length {vector.shape[-1]}, "
                f"the layout has {self.length}"
            )
        batch = vector.shape[:-1]
        return {
            s.tensor: vector[..., s.offset : s.offset + s.size].reshape((*batch, *s.shape)).astype(s.dtype)
            for s in self.slots
        }


def layout_file_name(architecture: str, arch_kwargs: str) -> str:
    """``<architecture>-<first 12 hex digits of sha256(arch_kwargs)>.csv``."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", architecture):
        raise SchemaError(f"architecture name {architecture!r} cannot name a layout file")
    digest = hashlib.sha256(arch_kwargs.encode("utf-8")).hexdigest()[:12]
    return f"{architecture}-{digest}.csv"


def make_layout(architecture: str, arch_kwargs: str, dtypes: Mapping[str, str] | None = None) -> Layout:
    """The layout of a signature, in ``state_dict`` order; ``dtypes`` gives stored dtypes by
    tensor name (default: the module's own)."""
    import torch

    from modelset.architectures import build_architecture

    with torch.device("meta"):
        state = build_architecture(architecture, arch_kwargs).state_dict()
    slots, offset = [], 0
    for name, tensor in state.items():
        shape = tuple(int(d) for d in tensor.shape)
        size = math.prod(shape)
        dtype = (dtypes or {}).get(name) or str(tensor.dtype).removeprefix("torch.")
        slots.append(TensorSlot(name, shape, offset, size, str(dtype)))
        offset += size
    return Layout(architecture, arch_kwargs, tuple(slots))


def read_layout(path: str | Path, architecture: str = "", arch_kwargs: str = "") -> Layout:
    """Read a layout CSV; ``SchemaError`` names the file and the bad row."""
    path = Path(path)
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SchemaError(f"{path}: layout cannot be read ({exc})") from exc
    slots, offset = [], 0
    for number, row in enumerate(rows, 2):
        try:
            shape = tuple(int(d) for d in json.loads(row["shape"]))
            slot = TensorSlot(row["tensor"], shape, int(row["offset"]), int(row["size"]), row["dtype"])
            np.dtype(slot.dtype)
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{path}, line {number}: bad layout row {row} ({exc})") from exc
        if slot.offset != offset or slot.size != math.prod(shape):
            raise SchemaError(f"{path}, line {number}: offset or size of {slot.tensor!r} does not follow the rows before")
        slots.append(slot)
        offset += slot.size
    return Layout(architecture, arch_kwargs, tuple(slots))


def set_layouts(ms: ModelSet) -> list[tuple[Layout, list[str]]]:
    """Every signature of the open model set ``ms`` with its layout (dtypes as stored) and its
    model ids, sorted by architecture and keyword arguments."""
    out = []
    for group in ms.by_signature(ms.metadata.index.tolist()):
        stored = ms.state_dict(group.ids[0])
        dtypes = {k: str(v.numpy().dtype) for k, v in stored.items()}
        out.append((make_layout(group.architecture, group.arch_kwargs, dtypes), group.ids))
    return out


def write_layouts(root: Path, ms: ModelSet) -> list[Path]:
    """Write ``layouts/*.csv`` and ``layouts/index.csv`` for the open set ``ms`` at ``root``;
    drop layout files of signatures no longer in the set. Returns the written paths."""
    folder = root / LAYOUTS_DIR
    written, index = [], []
    for layout, ids in set_layouts(ms):
        path = folder / layout.file_name
        _atomic.write_text_atomic(path, layout.to_csv())
        written.append(path)
        index.append(
            {"file": layout.file_name, "architecture": layout.architecture, "arch_kwargs": layout.arch_kwargs,
             "length": layout.length, "tensors": len(layout.slots), "models": len(ids)}
        )
    if index:
        frame = pd.DataFrame(index)
        _atomic.write_text_atomic(folder / LAYOUT_INDEX, frame.to_csv(index=False, lineterminator="\n"))
        written.append(folder / LAYOUT_INDEX)
    if folder.exists():
        keep = {p.name for p in written}
        for stale in folder.glob("*.csv"):
            if stale.name not in keep:
                stale.unlink()
    return written
