"""HDF5 shards: write a shard of many models, read tensors of many models in one read each."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
import torch
from h5py import h5d, h5g, h5o, h5s

from modelset import _atomic, _hdf5
from modelset._untrusted import parse_json, regular_file
from modelset.architectures import build_architecture, canonical_kwargs, decode_kwargs
from modelset.architectures._registry import MAX_ARCH_KWARGS_CHARS  # noqa: F401  (its old home)
from modelset.errors import (
    CorruptShardError,
    InvalidParametersError,
    ModelSetError,
    SchemaError,
    UnsafeFileError,
)
from modelset.schema import SCHEMA_VERSION, SHARD_FORMAT_NAME, check_model_id

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
    kwargs_json = canonical_kwargs(record.arch_kwargs)
    expected, kinds = expected_shapes(record.architecture, kwargs_json), expected_kinds(record.architecture, kwargs_json)
    for ckpt, state in record.checkpoints.items():
        if not isinstance(ckpt, str) or not ckpt or "/" in ckpt or ckpt in (".", ".."):
            raise SchemaError(f"model {mid!r}: invalid checkpoint name {ckpt!r}")
        check_state_fits(f"model {mid!r}, checkpoint {ckpt!r}", state, expected, record.architecture)
        for key, tensor in state.items():
            if tensor.dtype not in ALLOWED_DTYPES or ALLOWED_DTYPES[tensor.dtype] != kinds[key]:
                raise InvalidParametersError(
                    f"model {mid!r}, checkpoint {ckpt!r}: tensor {key!r} has dtype {tensor.dtype}; the "
                    f"architecture's tensor is of kind {kinds[key]!r} and the format stores "
                    f"{', '.join(str(d) for d in ALLOWED_DTYPES)} (cast it first)"
                )
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise InvalidParametersError(
                    f"model {mid!r}, checkpoint {ckpt!r}: tensor {key!r} has NaN or Inf values"
                )


#: Tensor dtypes a shard may store, with their numpy kind (the reader's allow-list, ``_hdf5``).
ALLOWED_DTYPES = {
    torch.float16: "f", torch.float32: "f", torch.float64: "f",
    torch.int8: "i", torch.int16: "i", torch.int32: "i", torch.int64: "i", torch.uint8: "u",
}  # fmt: skip

@functools.lru_cache(maxsize=256)
def _spec(architecture: str, kwargs_json: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    kwargs = decode_kwargs(kwargs_json, f"arch_kwargs of architecture {architecture!r}")
    try:
        with torch.device("meta"):
            module = build_architecture(architecture, kwargs)
    except ModelSetError:
        raise
    except (ValueError, TypeError, RuntimeError, NotImplementedError, AttributeError, ArithmeticError,
            RecursionError, MemoryError, IndexError, KeyError) as exc:  # fmt: skip
        raise SchemaError(f"architecture {architecture!r} cannot be built from {kwargs_json[:200]}: {exc}") from exc
    state = module.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    kinds = {k: ALLOWED_DTYPES.get(v.dtype, str(v.dtype)) for k, v in state.items()}
    return shapes, kinds


def expected_shapes(architecture: str, kwargs_json: str) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of an architecture signature (cached: building a module costs time).

    Built on the meta device: the arguments come from a table that may be damaged, and a huge
    declared width must not allocate memory. Bad arguments (unknown keys, values the architecture
    refuses, JSON nested too deep or with huge numbers) raise ``SchemaError``.
    """
    return _spec(architecture, kwargs_json)[0]


def expected_kinds(architecture: str, kwargs_json: str) -> dict[str, str]:
    """Numpy kind of each state-dict tensor ('f' float, 'i' signed, 'u' unsigned) of a signature."""
    return _spec(architecture, kwargs_json)[1]


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

    The shard is built in memory and written in one go once its size is known and that much disk
    space is free: HDF5 itself never writes to disk, so a full disk is a ``DiskFullError`` and
    never a crash inside the HDF5 library. The caller writes to a temporary path and renames it
    into place (``_atomic.atomic_path``).
    """
    image, rows = shard_image(records, shard)
    write_image(Path(path), image, f"shard {shard!r}")
    return rows


def write_image(path: Path, image: bytes, what: str) -> None:
    """Write a file image to ``path``; on a full disk, remove the partial file and raise
    ``DiskFullError`` saying how much space is needed."""
    _atomic.check_free(path.parent, len(image), what)
    try:
        with open(path, "wb") as handle:
            handle.write(image)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        if _atomic.is_disk_full(exc):
            raise _atomic.disk_full(exc, path.parent, len(image), what) from exc
        raise


def shard_image(records: Sequence[ModelRecord], shard: str) -> tuple[bytes, list[dict[str, Any]]]:
    """The bytes of the HDF5 shard holding ``records``, and their table rows."""
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
    # An in-memory file (HDF5's core driver without a backing store): a unique name, since
    # engine threads build shards side by side.
    name = f"modelset-shard-{uuid.uuid4().hex}.h5"
    with h5py.File(name, "w", driver="core", backing_store=False, libver="latest") as h5:
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
        h5.flush()
        image = h5.id.get_file_image()
    return image, rows


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
    """Give a shard written under another name (by a worker) its committed name.

    Edited in memory and written back whole (see ``write_shard_file``: HDF5 never meets a full disk).
    """
    write_image(Path(path), renamed_image(Path(path), shard), f"shard {shard!r}")


def renamed_image(path: Path, shard: str) -> bytes:
    """The bytes of the shard at ``path`` renamed to ``shard`` (its rows checked on the way)."""
    rows = [dict(r, shard=shard) for r in read_shard_rows(path)]
    buffer = io.BytesIO(path.read_bytes())
    with h5py.File(buffer, "r+") as h5:
        h5.attrs["shard"] = shard
        del h5["rows"]
        _write_rows(h5, rows)
    return buffer.getvalue()


def _write_rows(h5: h5py.File, rows: list[dict[str, Any]]) -> None:
    text = [json.dumps(r, sort_keys=True, default=_json_scalar) for r in rows]
    h5.create_dataset("rows", data=np.array(text, dtype=object), dtype=h5py.string_dtype())


def read_shard_rows(path: Path) -> list[dict[str, Any]]:
    """The table rows stored in a shard (for committing a worker's shard)."""
    reader = ShardReader(Path(path))
    try:
        h5 = reader._h5
        try:
            dataset = h5o.open(h5.id, b"rows")
        except _H5_ERRORS as exc:
            raise CorruptShardError(f"{path}: shard has no rows dataset ({exc})") from exc
        if not isinstance(dataset, h5d.DatasetID):
            raise CorruptShardError(f"{path}: 'rows' is not a dataset")
        _hdf5.check_strings(dataset, reader.path, "dataset 'rows'", reader.size)
        try:
            texts = h5["rows"].asstr()[()]
        except (KeyError, OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptShardError(f"{path}: shard cannot be read ({exc})") from exc
        rows = [parse_json(text, f"{path}: rows[{i}]", CorruptShardError) for i, text in enumerate(texts)]
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        if bad is not None:
            raise CorruptShardError(f"{path}: rows[{bad}] is not a JSON object")
        return rows
    finally:
        reader.close()


class StoredTensor(NamedTuple):
    """One tensor of a block: its name, open HDF5 dataset, shape ``(n_models, *shape)`` and dtype."""

    name: str
    dataset: h5d.DatasetID
    shape: tuple[int, ...]
    dtype: np.dtype


#: What h5py raises for a damaged file, a missing object or a failed filter (Fletcher-32).
_H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError)


class ShardReader:
    """Read-only access to one shard; every h5py failure becomes ``CorruptShardError``.

    Parameters are read through h5py's low-level API, with each block's datasets opened and
    checked once: on sets of many small blocks (pruned variants have a block each), the high-level
    objects cost more than the reads themselves.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # A link or FIFO is refused before HDF5 opens it (a FIFO would block open forever).
        try:
            self.size = regular_file(path, "shard")
        except FileNotFoundError as exc:
            raise CorruptShardError(f"{path}: shard is missing; run verify") from exc
        try:
            self._h5 = h5py.File(path, "r")
        except (OSError, ValueError) as exc:
            raise CorruptShardError(f"{path}: shard cannot be opened ({exc}); run verify") from exc
        try:
            _hdf5.check_links(self._h5.id, path)
            fmt = _hdf5.string_attr(self._h5.id, "format", path, "the file's")
        except BaseException:
            self._h5.close()
            raise
        if fmt != SHARD_FORMAT_NAME:
            self._h5.close()
            raise CorruptShardError(f"{path}: not a model set shard (format attribute missing)")
        # Committed shards never change: ids and checked layouts are read once.
        self._ids: dict[int, list[str]] = {}
        self._tensors: dict[tuple[int, str], list[StoredTensor]] = {}
        self._checked: set[tuple[int, str]] = set()

    def close(self) -> None:
        self._tensors.clear()
        self._h5.close()

    def audit(self) -> int:
        """Check every object of the shard against the closed-shard rules (``_hdf5.check_all``);
        return the number of datasets checked. ``verify`` runs this on every shard."""
        return _hdf5.check_all(self._h5.id, self.path, self.size)

    def stored(self, block: int, checkpoint: str, what: str = "read") -> list[StoredTensor]:
        """The tensors of ``checkpoint`` in ``block``, opened (no parameters are read)."""
        key = (block, checkpoint)
        if key in self._tensors:
            return self._tensors[key]
        # An empty or '/'-holding name would address another group (e.g. all checkpoints).
        if not checkpoint or "/" in checkpoint or checkpoint in (".", ".."):
            raise CorruptShardError(f"{self.path}: {what}: invalid checkpoint name {checkpoint!r}")
        try:
            group = h5g.open(self._h5.id, f"blocks/{block:05d}/checkpoints/{checkpoint}".encode())
        except _H5_ERRORS as exc:
            raise CorruptShardError(
                f"{self.path}: {what}: block {block} has no checkpoint {checkpoint!r} ({exc})"
            ) from exc
        tensors = []
        try:
            for name in group:
                dataset = h5o.open(group, name)
                if not isinstance(dataset, h5d.DatasetID):
                    raise TypeError(f"{name.decode(errors='replace')!r} is not a tensor")
                where = f"{what}: block {block}, checkpoint {checkpoint!r}, tensor {name.decode(errors='replace')!r}"
                dtype = _hdf5.check_tensor(dataset, self.path, where, self.size)
                tensors.append(StoredTensor(name.decode(), dataset, tuple(dataset.shape), dtype))
        except UnsafeFileError:
            raise
        except _H5_ERRORS as exc:
            raise CorruptShardError(
                f"{self.path}: {what}: block {block}, checkpoint {checkpoint!r} cannot be listed ({exc})"
            ) from exc
        self._tensors[key] = tensors
        return tensors

    def checked(
        self,
        block: int,
        checkpoint: str,
        what: str,
        expected: Mapping[str, tuple[int, ...]],
        kinds: Mapping[str, str] | None = None,
    ) -> list[StoredTensor]:
        """``stored``, after checking keys, shapes and dtypes against the architecture's
        (``kinds``: numpy kind of each tensor, see ``expected_kinds``)."""
        tensors = self.stored(block, checkpoint, what)
        if (block, checkpoint) in self._checked:
            return tensors
        n_models = self.n_models(block)
        stored = {t.name: t for t in tensors}
        where = f"{self.path}: {what}: block {block}, checkpoint {checkpoint!r}"
        if set(stored) != set(expected):
            raise InvalidParametersError(
                f"{where} does not fit its architecture: stored tensors "
                f"{sorted(set(stored) - set(expected))[:5]} are unexpected and "
                f"{sorted(set(expected) - set(stored))[:5]} are missing (run verify)"
            )
        for key, want in expected.items():
            shape, dtype = stored[key].shape, stored[key].dtype
            if len(shape) < 1 or shape[1:] != tuple(want):
                raise InvalidParametersError(
                    f"{where} does not fit its architecture: tensor {key!r} has shape "
                    f"{list(shape[1:])}, expected {list(want)}"
                )
            if shape[0] != n_models:
                raise CorruptShardError(
                    f"{where}: tensor {key!r} holds {shape[0]} models, but the block lists {n_models}"
                )
            if dtype.kind not in "fiu" or (kinds is not None and kinds.get(key, dtype.kind) != dtype.kind):
                want_kind = {"f": "floats", "i": "integers", "u": "unsigned integers"}.get((kinds or {}).get(key, ""), "numbers")
                raise CorruptShardError(
                    f"{where}: tensor {key!r} is stored as {dtype}, but the architecture's tensor holds {want_kind} (run verify)"
                )
        self._checked.add((block, checkpoint))
        return tensors

    def model_ids(self, block: int) -> list[str]:
        if block in self._ids:
            return self._ids[block]
        try:
            dataset = h5o.open(self._h5.id, f"blocks/{block:05d}/model_ids".encode())
        except _H5_ERRORS as exc:
            raise CorruptShardError(f"{self.path}: block {block} has no readable model ids ({exc})") from exc
        if not isinstance(dataset, h5d.DatasetID):
            raise CorruptShardError(f"{self.path}: block {block}: model_ids is not a dataset")
        _hdf5.check_strings(dataset, self.path, f"block {block}: model_ids", self.size)
        try:
            ids = self._h5[f"blocks/{block:05d}/model_ids"].asstr()[()]
        except (KeyError, OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptShardError(f"{self.path}: block {block} has no readable model ids ({exc})") from exc
        self._ids[block] = list(ids)
        return self._ids[block]

    def shapes(self, block: int, checkpoint: str = "final") -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape[1:] for t in self.stored(block, checkpoint, "shapes")}

    def n_models(self, block: int) -> int:
        return len(self.model_ids(block))

    def read(
        self,
        block: int,
        indices: Sequence[int],
        checkpoint: str,
        what: str,
        expected: Mapping[str, tuple[int, ...]] | None = None,
        out: dict[str, np.ndarray] | None = None,
        rows: Sequence[int] | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Tensors of the models at ``indices`` of ``block``: ``{key: (len(indices), *shape)}``.

        With ``out`` (arrays of many models) and ``rows``, the tensors are written to
        ``out[key][rows]`` instead, and ``out`` is returned. A run of consecutive indices going
        to consecutive rows is one read per tensor straight into place; other selections are read
        in index order and then scattered. With ``expected`` (the architecture's shapes), stored
        keys, shapes and dtypes are checked before anything is read, so a damaged shard declaring
        huge datasets never allocates them.
        """
        if expected is not None:
            tensors = self.checked(block, checkpoint, what, expected, kinds)
        else:
            tensors = self.stored(block, checkpoint, what)
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        dest = np.arange(len(idx)) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(dest) != len(idx):
            raise ValueError(f"read: {len(idx)} indices but {len(dest)} destination rows")
        if out is None:
            out = {t.name: np.empty((len(idx), *t.shape[1:]), dtype=t.dtype) for t in tensors}
        if not len(idx):
            return out
        in_order = _is_run(idx) and _is_run(dest)
        unique, inverse = (idx, None) if in_order else np.unique(idx, return_inverse=True)
        try:
            for tensor in tensors:
                if unique[0] < 0 or unique[-1] >= tensor.shape[0]:
                    raise IndexError(f"model index {int(unique[-1])} outside the {tensor.shape[0]} stored")
                target = out[tensor.name]
                if in_order and target.dtype == tensor.dtype and target.flags.c_contiguous:
                    _read_rows(tensor, int(idx[0]), len(idx), target, int(dest[0]))
                    continue
                values = np.empty((len(unique), *tensor.shape[1:]), dtype=tensor.dtype)
                _read_rows(tensor, unique, len(unique), values, 0)
                target[dest] = values if inverse is None else values[inverse]
        except _H5_ERRORS as exc:
            raise CorruptShardError(
                f"{self.path}: {what}: cannot read block {block} ({exc}); run verify"
            ) from exc
        return out


def _is_run(values: np.ndarray) -> bool:
    """True if ``values`` are consecutive ascending integers."""
    return bool(np.all(np.diff(values) == 1))


def _read_rows(
    tensor: StoredTensor, source: int | np.ndarray, count: int, target: np.ndarray, start: int
) -> None:
    """Read ``count`` rows of ``tensor`` (from row ``source``, or the sorted unique rows
    ``source``) into ``target[start : start + count]``: one HDF5 read, no intermediate copy."""
    inner = tensor.shape[1:]
    view = target[start : start + count]  # C-contiguous: rows of a C-contiguous array
    if view.shape != (count, *inner) or not view.flags.c_contiguous:
        raise ValueError(f"destination {view.shape} does not hold {count} rows of {inner}")
    if count == 0 or 0 in inner:
        return
    if isinstance(source, int) and source == 0 and count == tensor.shape[0]:
        # The whole block: no selections to build, which costs more than a small read.
        tensor.dataset.read(h5s.ALL, h5s.ALL, view)
        return
    zeros = (0,) * len(inner)
    file_space = tensor.dataset.get_space()
    if isinstance(source, int):
        file_space.select_hyperslab((source, *zeros), (count, *inner))
    else:
        runs = np.flatnonzero(np.diff(source) != 1) + 1
        starts, ends = np.r_[0, runs], np.r_[runs, len(source)]
        file_space.select_none()
        for a, b in zip(starts.tolist(), ends.tolist()):
            file_space.select_hyperslab((int(source[a]), *zeros), (b - a, *inner), op=h5s.SELECT_OR)
    tensor.dataset.read(h5s.create_simple(view.shape), file_space, view)
