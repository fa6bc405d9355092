"""HDF5 shards: write a shard of many models, read tensors of many models in one read each."""

from __future__ import annotations

import functools
import json
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from modelset.architectures import build_architecture, canonical_kwargs
from modelset.errors import CorruptShardError, InvalidParametersError, ModelSetError, SchemaError
from modelset.format import SCHEMA_VERSION, SHARD_FORMAT_NAME, check_model_id

#: Target bytes of one HDF5 chunk: large enough for fast bulk reads, small enough that reading
#: one model does not decode much more than it needs.
CHUNK_BYTES = 1 << 20


@dataclass
class ModelRecord:
    """One model to write: its id, architecture, checkpoints and table row.

    ``checkpoints`` maps a checkpoint name ("init", "final", ...) to a state dict of tensors;
    "final" is required. ``row`` holds scalar table columns (see ``format.REQUIRED_ROW_COLUMNS``).
    """

    model_id: str
    architecture: str
    arch_kwargs: dict[str, Any]
    checkpoints: Mapping[str, Mapping[str, torch.Tensor]]
    row: dict[str, Any] = field(default_factory=dict)

    def signature(self) -> tuple:
        """Models with equal signatures are stored together in one block."""
        final = self.checkpoints["final"]
        shapes = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(final.items()))
        return (self.architecture, canonical_kwargs(self.arch_kwargs), tuple(sorted(self.checkpoints)), shapes)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").contiguous().numpy()


def validate_record(record: ModelRecord) -> None:
    """Check id, checkpoints, finiteness and fit to the declared architecture."""
    check_model_id(record.model_id)
    mid = record.model_id
    if "final" not in record.checkpoints:
        raise SchemaError(f"model {mid!r}: checkpoints {sorted(record.checkpoints)} lack 'final'")
    expected = expected_shapes(record.architecture, canonical_kwargs(record.arch_kwargs))
    for ckpt, state in record.checkpoints.items():
        check_state_fits(f"model {mid!r}, checkpoint {ckpt!r}", state, expected, record.architecture)
        for key, tensor in state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise InvalidParametersError(
                    f"model {mid!r}, checkpoint {ckpt!r}: tensor {key!r} has NaN or Inf values"
                )


@functools.lru_cache(maxsize=256)
def expected_shapes(architecture: str, kwargs_json: str) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of an architecture signature (cached: building a module costs time).

    Built on the meta device: the arguments come from a table that may be damaged, and a huge
    declared width must not allocate memory. Bad arguments raise ``SchemaError``.
    """
    try:
        with torch.device("meta"):
            module = build_architecture(architecture, kwargs_json)
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError, OverflowError) as exc:
        if isinstance(exc, ModelSetError):
            raise
        raise SchemaError(f"architecture {architecture!r} cannot be built from {kwargs_json[:200]}: {exc}") from exc
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_state_fits(
    where: str,
    shapes: Mapping[str, Any],
    expected: Mapping[str, tuple],
    architecture: str,
) -> None:
    """Raise ``InvalidParametersError`` if ``shapes`` (tensors or shapes) do not fit ``expected``.

    ``where`` names what is checked in the message, e.g. ``"model 'm1', checkpoint 'final'"``.
    """
    found = {k: tuple(getattr(v, "shape", v)) for k, v in shapes.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        raise InvalidParametersError(
            f"{where} does not fit architecture {architecture!r}: "
            f"missing tensors {missing}, unexpected tensors {extra}"
        )
    for key, shape in expected.items():
        if found[key] != shape:
            raise InvalidParametersError(
                f"{where} does not fit architecture {architecture!r}: tensor {key!r} has shape "
                f"{list(found[key])}, expected {list(shape)}"
            )


def write_shard_file(path: Path, records: Sequence[ModelRecord], shard: str) -> list[dict[str, Any]]:
    """Write ``records`` into a new HDF5 file at ``path``; return their table rows.

    The caller writes to a temporary path and renames it into place (``_io.atomic_path``).
    """
    if not records:
        raise SchemaError(f"shard {shard!r}: no models to write")
    seen: set[str] = set()
    for record in records:
        validate_record(record)
        if record.model_id in seen:
            raise SchemaError(f"shard {shard!r}: model {record.model_id!r} appears twice")
        seen.add(record.model_id)

    blocks: OrderedDict[tuple, list[ModelRecord]] = OrderedDict()
    for record in records:
        blocks.setdefault(record.signature(), []).append(record)

    rows: list[dict[str, Any]] = []
    with h5py.File(path, "w", libver="latest") as h5:
        h5.attrs["format"] = SHARD_FORMAT_NAME
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["shard"] = shard
        for b, (signature, members) in enumerate(blocks.items()):
            architecture, kwargs_json, checkpoints, _ = signature
            group = h5.create_group(f"blocks/{b:05d}")
            group.attrs["architecture"] = architecture
            group.attrs["arch_kwargs"] = kwargs_json
            ids = [r.model_id for r in members]
            group.create_dataset("model_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            for ckpt in checkpoints:
                cgroup = group.create_group(f"checkpoints/{ckpt}")
                for key in members[0].checkpoints[ckpt]:
                    stacked = np.stack([_to_numpy(r.checkpoints[ckpt][key]) for r in members])
                    row_bytes = max(1, stacked[0].nbytes)
                    rows_per_chunk = max(1, min(len(members), CHUNK_BYTES // row_bytes))
                    cgroup.create_dataset(
                        key,
                        data=stacked,
                        chunks=(rows_per_chunk, *stacked.shape[1:]) if stacked.ndim > 1 else (rows_per_chunk,),
                        fletcher32=True,
                    )
            n_params = sum(int(math.prod(v.shape)) for v in members[0].checkpoints["final"].values())
            for i, record in enumerate(members):
                row = dict(record.row)
                row.update(
                    model_id=record.model_id,
                    architecture=architecture,
                    arch_kwargs=kwargs_json,
                    n_params=n_params,
                    shard=shard,
                    block=b,
                    index=i,
                    checkpoints=",".join(checkpoints),
                )
                rows.append(row)
        _write_rows(h5, rows)
    return rows


def _json_scalar(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"table values must be scalars, found {type(value).__name__}")


def rename_shard(path: Path, shard: str) -> None:
    """Give a shard written under another name (by a worker) its committed name."""
    rows = [dict(r, shard=shard) for r in read_shard_rows(path)]
    with h5py.File(path, "r+") as h5:
        h5.attrs["shard"] = shard
        del h5["rows"]
        _write_rows(h5, rows)


def _write_rows(h5: h5py.File, rows: list[dict[str, Any]]) -> None:
    text = [json.dumps(r, sort_keys=True, default=_json_scalar) for r in rows]
    h5.create_dataset("rows", data=np.array(text, dtype=object), dtype=h5py.string_dtype())


def read_shard_rows(path: Path) -> list[dict[str, Any]]:
    """The table rows stored in a shard (for committing a worker's shard)."""
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("format") != SHARD_FORMAT_NAME:
                raise CorruptShardError(f"{path}: not a model set shard (format attribute missing)")
            return [json.loads(s) for s in h5["rows"].asstr()[()]]
    except (OSError, KeyError, ValueError) as exc:
        raise CorruptShardError(f"{path}: shard cannot be read ({exc})") from exc


class ShardReader:
    """Read-only access to one shard; every h5py failure becomes ``CorruptShardError``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._h5 = h5py.File(path, "r")
        except (OSError, ValueError) as exc:
            raise CorruptShardError(f"{path}: shard cannot be opened ({exc}); run verify") from exc
        if self._h5.attrs.get("format") != SHARD_FORMAT_NAME:
            self._h5.close()
            raise CorruptShardError(f"{path}: not a model set shard (format attribute missing)")
        self._ids: dict[int, list[str]] = {}  # committed shards never change: read ids once

    def close(self) -> None:
        self._h5.close()

    def _group(self, block: int, checkpoint: str, what: str) -> h5py.Group:
        try:
            # An empty or '/'-holding name would address another group (e.g. all checkpoints).
            if not checkpoint or "/" in checkpoint or checkpoint in (".", ".."):
                raise KeyError(f"invalid checkpoint name {checkpoint!r}")
            group = self._h5[f"blocks/{block:05d}/checkpoints/{checkpoint}"]
            if not isinstance(group, h5py.Group):
                raise ValueError("expected a group of tensors")
            return group
        except (KeyError, OSError, ValueError) as exc:
            raise CorruptShardError(
                f"{self.path}: {what}: block {block} has no checkpoint {checkpoint!r} ({exc})"
            ) from exc

    def _check_layout(
        self, group: h5py.Group, block: int, checkpoint: str, what: str, expected: Mapping[str, tuple[int, ...]]
    ) -> None:
        n_models = self.n_models(block)
        try:
            stored = {k: (tuple(d.shape), d.dtype) for k, d in group.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptShardError(f"{self.path}: {what}: block {block} cannot be listed ({exc})") from exc
        where = f"{self.path}: {what}: block {block}, checkpoint {checkpoint!r}"
        if set(stored) != set(expected):
            raise InvalidParametersError(
                f"{where} does not fit its architecture: stored tensors "
                f"{sorted(set(stored) - set(expected))[:5]} are unexpected and "
                f"{sorted(set(expected) - set(stored))[:5]} are missing (run verify)"
            )
        for key, want in expected.items():
            shape, dtype = stored[key]
            if shape[1:] != tuple(want):
                raise InvalidParametersError(
                    f"{where} does not fit its architecture: tensor {key!r} has shape "
                    f"{list(shape[1:])}, expected {list(want)}"
                )
            if shape[0] != n_models:
                raise CorruptShardError(
                    f"{where}: tensor {key!r} holds {shape[0]} models, but the block lists {n_models}"
                )
            if dtype.kind not in "fiub":
                raise CorruptShardError(f"{where}: tensor {key!r} has non-numeric dtype {dtype}")

    def model_ids(self, block: int) -> list[str]:
        if block in self._ids:
            return self._ids[block]
        try:
            self._ids[block] = list(self._h5[f"blocks/{block:05d}/model_ids"].asstr()[()])
            return self._ids[block]
        except (KeyError, OSError, ValueError) as exc:
            raise CorruptShardError(f"{self.path}: block {block} has no readable model ids ({exc})") from exc

    def shapes(self, block: int, checkpoint: str = "final") -> dict[str, tuple[int, ...]]:
        group = self._group(block, checkpoint, "shapes")
        try:
            return {k: tuple(d.shape[1:]) for k, d in group.items()}
        except (AttributeError, OSError, ValueError) as exc:  # a sub-group where a tensor belongs
            raise CorruptShardError(f"{self.path}: block {block}, checkpoint {checkpoint!r}: not a tensor ({exc})") from exc

    def n_models(self, block: int) -> int:
        return len(self.model_ids(block))

    def read(
        self,
        block: int,
        indices: Sequence[int],
        checkpoint: str,
        what: str,
        expected: Mapping[str, tuple[int, ...]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Tensors of the models at ``indices`` of ``block``: ``{key: (len(indices), *shape)}``.

        A run of consecutive indices is one slice read per tensor; otherwise the sorted indices
        are read in one selection and put back in the asked order. With ``expected`` (the
        architecture's shapes), stored keys, shapes and dtypes are checked before anything is
        read, so a damaged shard declaring huge datasets never allocates them.
        """
        group = self._group(block, checkpoint, what)
        if expected is not None:
            self._check_layout(group, block, checkpoint, what, expected)
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        contiguous = len(idx) > 0 and sorted_idx[-1] - sorted_idx[0] + 1 == len(idx) and np.all(np.diff(sorted_idx) == 1)
        out: dict[str, np.ndarray] = {}
        try:
            for key, dataset in group.items():
                if contiguous and np.all(order == np.arange(len(order))):
                    # The common bulk case: read straight into the result, no reordering copy.
                    data = np.empty((len(idx), *dataset.shape[1:]), dtype=dataset.dtype)
                    if len(idx):
                        dataset.read_direct(data, np.s_[int(sorted_idx[0]) : int(sorted_idx[-1]) + 1])
                    out[key] = data
                    continue
                if contiguous:
                    data = dataset[int(sorted_idx[0]) : int(sorted_idx[-1]) + 1]
                elif len(np.unique(sorted_idx)) == len(sorted_idx):
                    data = dataset[sorted_idx]
                else:
                    unique, inverse = np.unique(sorted_idx, return_inverse=True)
                    data = dataset[unique][inverse]
                restored = np.empty_like(data)
                restored[order] = data
                out[key] = restored
        except (OSError, ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise CorruptShardError(f"{self.path}: {what}: cannot read block {block} ({exc}); run verify") from exc
        return out
