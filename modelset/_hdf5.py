"""The closed-shard rules: what an HDF5 shard may contain before the reader touches its data.

HDF5 can make a read reach outside the file (external links, external storage, virtual datasets),
and a dataset can declare far more data than the file holds (unwritten chunks read as fill
values). A shard is accepted only if:

- every link in it is a hard link, and no object is linked twice;
- every dataset the reader uses is stored inside the file, contiguous or chunked, with no
  external storage; parameter tensors are chunked, carry the Fletcher-32 checksum and no other
  filter, on every chunk, and every chunk is stored in full inside the file;
- a dataset's type is on an explicit allow-list (IEEE floats of 16, 32, 64 bits and standard
  integers, either byte order, converted to the native order on read; ids and rows are
  variable-length strings);
- the bytes a dataset declares (shape × element size) are backed by its storage in the file,
  which lies within the file's size: reading it never allocates more than the file holds.

Each violation is an ``UnsafeFileError`` naming the file and the dataset, raised before any of the
dataset's data is read.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from h5py import h5a, h5d, h5l, h5o, h5s, h5t, h5z

from modelset.errors import UnsafeFileError

#: HDF5 types a parameter tensor may have, by numpy kind ('f' float, 'i' signed, 'u' unsigned).
ALLOWED_TENSOR_TYPES = {
    "f": (h5t.IEEE_F16LE, h5t.IEEE_F16BE, h5t.IEEE_F32LE, h5t.IEEE_F32BE, h5t.IEEE_F64LE, h5t.IEEE_F64BE),
    "i": (h5t.STD_I8LE, h5t.STD_I8BE, h5t.STD_I16LE, h5t.STD_I16BE, h5t.STD_I32LE, h5t.STD_I32BE,
          h5t.STD_I64LE, h5t.STD_I64BE),  # fmt: skip
    "u": (h5t.STD_U8LE, h5t.STD_U8BE),
}
# (HDF5 class, size, byte order) -> (kind, type): one exact comparison per dataset.
_TYPE_INDEX = {
    (t.get_class(), t.get_size(), t.get_order()): (kind, t) for kind, types in ALLOWED_TENSOR_TYPES.items() for t in types
}
#: Bytes one variable-length string takes in a dataset's own storage (length + heap id).
VLEN_BYTES = 16
#: Longest string attribute read (architecture names, format tags).
MAX_ATTR_CHARS = 1 << 16
_LINK_KINDS = {h5l.TYPE_SOFT: "a soft link", h5l.TYPE_EXTERNAL: "an external link to another file"}


def check_links(fid, path: Path) -> None:
    """Refuse any link that is not a hard link, and objects reachable under two names."""
    problems: list[str] = []
    seen: dict[int, bytes] = {}

    def visit(name: bytes, info) -> int | None:
        if info.type != h5l.TYPE_HARD:
            kind = _LINK_KINDS.get(info.type, f"a user-defined link (type {info.type})")
            problems.append(f"{name.decode(errors='replace')!r} is {kind}")
            return 1
        if info.u in seen:
            problems.append(
                f"{name.decode(errors='replace')!r} is a second name for {seen[info.u].decode(errors='replace')!r}"
            )
            return 1
        seen[info.u] = name
        return None

    try:
        fid.links.visit(visit, info=True)
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise UnsafeFileError(f"{path}: the shard's links cannot be listed ({exc}); run verify") from exc
    if problems:
        raise UnsafeFileError(
            f"{path}: {problems[0]}; a shard may hold only its own datasets (links could read other "
            "files). The shard was crafted or damaged: fetch the set again from a source you trust"
        )


def _layout_problem(dcpl, file_size: int, storage: int) -> str | None:
    layout = dcpl.get_layout()
    if layout == h5d.VIRTUAL:
        return "is a virtual dataset (its data would come from other files)"
    if dcpl.get_external_count():
        return "uses external storage (its data would come from a file outside the shard)"
    if layout not in (h5d.CONTIGUOUS, h5d.CHUNKED):
        return f"has a layout ({layout}) the format does not write (contiguous or chunked only)"
    if storage > file_size:
        return f"claims {storage} bytes of storage in a file of {file_size} bytes"
    return None


def check_tensor(dataset: h5d.DatasetID, path: Path, where: str, file_size: int) -> np.dtype:
    """Check one parameter dataset against the rules above; return its native-order dtype.

    ``where`` names the dataset in messages (block, checkpoint and tensor).
    """
    dcpl = dataset.get_create_plist()
    storage = dataset.get_storage_size()
    problem = _layout_problem(dcpl, file_size, storage)
    if problem is None and dcpl.get_layout() != h5d.CHUNKED:
        problem = "is not chunked with the Fletcher-32 checksum the format writes"
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())] if problem is None else []
    if problem is None and filters != [h5z.FILTER_FLETCHER32]:
        problem = f"has filters {filters}; the format writes exactly the Fletcher-32 checksum ({h5z.FILTER_FLETCHER32})"
    space = dataset.get_space()
    if problem is None and (space.get_simple_extent_type() != h5s.SIMPLE or dataset.rank < 1):
        problem = "is not an array with a model axis"
    kind = None
    if problem is None:
        ftype = dataset.get_type()
        order = ftype.get_order() if hasattr(ftype, "get_order") else None
        entry = _TYPE_INDEX.get((ftype.get_class(), ftype.get_size(), order))
        kind = entry[0] if entry is not None and ftype.equal(entry[1]) else None
        if kind is None:
            problem = (
                f"has type {dataset.dtype} (HDF5 class {ftype.get_class()}, {ftype.get_size()} bytes), not one "
                "of the allowed IEEE float (16/32/64-bit) or standard integer types"
            )
    if problem is None:
        problem = _chunk_problem(dataset, dcpl, file_size, storage)
    if problem is not None:
        raise UnsafeFileError(f"{path}: {where} {problem}; the shard was crafted or damaged (run verify, fetch the set again)")
    return dataset.dtype.newbyteorder("=")


def _chunk_problem(dataset: h5d.DatasetID, dcpl, file_size: int, storage: int) -> str | None:
    """Every chunk present, stored whole (its bytes + 4 of checksum) within the file, filter on."""
    shape = dataset.shape
    chunk = dcpl.get_chunk()
    itemsize = dataset.get_type().get_size()
    nominal = math.prod(chunk) * itemsize
    declared = math.prod(shape) * itemsize
    expected_chunks = math.prod(-(-s // c) for s, c in zip(shape, chunk)) if declared else 0
    if declared > storage:
        return f"declares {declared} bytes ({list(shape)} × {itemsize}) but stores only {storage}"
    if expected_chunks * (nominal + 4) != storage:
        return f"stores {storage} bytes, not the {expected_chunks} whole chunks of {nominal} bytes its shape needs"
    problems: list[str] = []

    def visit(info) -> None:
        if problems:
            return
        if info.filter_mask != 0:
            problems.append(f"has a chunk at {tuple(info.chunk_offset)} stored without its checksum")
        elif info.size != nominal + 4:
            problems.append(f"has a chunk at {tuple(info.chunk_offset)} of {info.size} bytes, expected {nominal + 4}")
        elif info.byte_offset < 0 or info.byte_offset + info.size > file_size:
            problems.append(f"has a chunk at {tuple(info.chunk_offset)} beyond the end of the file")

    count = dataset.get_num_chunks()
    if count != expected_chunks:
        return f"has {count} chunks stored, its shape needs {expected_chunks}"
    if count:
        dataset.chunk_iter(visit)
    return problems[0] if problems else None


def check_strings(dataset: h5d.DatasetID, path: Path, where: str, file_size: int) -> int:
    """Check a 1-D variable-length string dataset (ids, rows); return its length."""
    dcpl = dataset.get_create_plist()
    storage = dataset.get_storage_size()
    problem = _layout_problem(dcpl, file_size, storage)
    ftype = dataset.get_type()
    if problem is None:
        filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
        if [f for f in filters if f != h5z.FILTER_FLETCHER32]:
            problem = f"has filters {filters}; the format stores strings without compression"
    if problem is None and (not isinstance(ftype, h5t.TypeStringID) or not ftype.is_variable_str()):
        problem = f"holds {dataset.dtype} values, expected variable-length strings"
    if problem is None and (dataset.rank != 1 or dataset.get_space().get_simple_extent_type() != h5s.SIMPLE):
        problem = f"has shape {dataset.shape}, expected a 1-D list"
    if problem is None and dataset.shape[0] * VLEN_BYTES > storage:
        problem = f"declares {dataset.shape[0]} strings but stores only {storage} bytes for them"
    if problem is not None:
        raise UnsafeFileError(f"{path}: {where} {problem}; the shard was crafted or damaged (run verify, fetch the set again)")
    return int(dataset.shape[0])


def string_attr(obj, name: str, path: Path, where: str) -> str | None:
    """A scalar string attribute (``None`` if absent); anything else is ``UnsafeFileError``."""
    if not h5a.exists(obj, name.encode()):
        return None
    attr = h5a.open(obj, name.encode())
    space, ftype = attr.get_space(), attr.get_type()
    if space.get_simple_extent_type() != h5s.SCALAR or not isinstance(ftype, h5t.TypeStringID):
        raise UnsafeFileError(f"{path}: {where} attribute {name!r} must be one string")
    if not ftype.is_variable_str() and ftype.get_size() > MAX_ATTR_CHARS:
        raise UnsafeFileError(f"{path}: {where} attribute {name!r} is longer than {MAX_ATTR_CHARS} bytes")
    value = np.empty((), dtype=attr.dtype)
    attr.read(value)
    item = value.item()
    text = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
    if len(text) > MAX_ATTR_CHARS:
        raise UnsafeFileError(f"{path}: {where} attribute {name!r} is longer than {MAX_ATTR_CHARS} characters")
    return text


def check_all(fid, path: Path, file_size: int) -> int:
    """The whole-file audit of ``verify``: links, then every dataset (tensors under
    ``checkpoints``, strings elsewhere), and their storage together within the file's size.
    Returns the number of datasets checked."""
    check_links(fid, path)
    names: list[bytes] = []

    def collect(name: bytes) -> None:
        names.append(name)

    h5o.visit(fid, collect)
    total = 0
    count = 0
    for name in names:
        info = h5o.get_info(fid, name)
        if info.type != h5o.TYPE_DATASET:
            continue
        dataset = h5o.open(fid, name)
        where = f"dataset {name.decode(errors='replace')!r}"
        if b"/checkpoints/" in name:
            check_tensor(dataset, path, where, file_size)
        else:
            check_strings(dataset, path, where, file_size)
        total += dataset.get_storage_size()
        count += 1
    if total > file_size:
        raise UnsafeFileError(f"{path}: its datasets claim {total} bytes of storage in a file of {file_size} bytes")
    return count
