"""The ModelSet on-disk format, schema version 1.

A model set is a folder::

    modelset.json        header: schema version, name, config, counts, library versions, times
    models.parquet       model table, one row per model (the commit point of every shard)
    tasks.parquet        task table, one row per task
    relations/NAME.csv   ground-truth task × task matrices (index and columns are task ids)
    shards/shard-NNNNN.h5  HDF5 shards holding the parameters
    README.md            the dataset card
    SHA256SUMS           sha256 of every other file (``sha256sum -c`` can check it)

Inside a shard, models of one architecture signature (name + keyword arguments) form a *block*;
a block stores each tensor of each checkpoint as one dataset of shape ``(n_models, *shape)``, so
reading one tensor of many models is one contiguous read. Datasets carry HDF5's Fletcher-32
checksum, so a flipped bit is caught when it is read. Each shard also holds its models' table rows
as JSON, which makes a shard self-describing: the driver of a distributed build can commit a shard
written by a worker. No pickle anywhere.

A set is untrusted input, and the reader holds every file to these rules before using it:

- Every file is a regular file reached through real folders (no symbolic links, FIFOs, devices).
- A shard holds only its own data (``modelset._hdf5``): hard links only, each object linked once;
  no external links, external storage or virtual datasets; tensors chunked with exactly the
  Fletcher-32 filter on every chunk, of an IEEE float or standard integer type of the kind the
  architecture's tensor has (either byte order, read in the native one); ids and rows are 1-D
  variable-length strings. Any other shard is refused before any of its data is read.
- Memory is bounded by evidence. A dataset's declared bytes (shape × element size) must be
  stored in full inside its file, so reading parameters never allocates more than the shard
  files hold (plus the copy handed to the caller). A Parquet table may decode to at most
  ``16 × its size on disk + 64 MiB`` of values (rows × columns and leaf values × 8 bytes, plus
  uncompressed pages, from its footer; text measured while still dictionary-encoded), so the
  peak memory of ``open`` is a small multiple of the model table's size plus a constant
  (measured: a table at the limit, a million rows of four text columns in 11 KB, decodes with
  a peak of 86 MiB for its 64 MiB budget). JSON files (header, release index, ``lps.json``)
  are at most 4 MiB (the index 16 MiB), 64 levels deep, with integers of at most 40 digits;
  ``arch_kwargs`` at most 4096 characters, with sizes from 1 to 2**20.
- Every refusal is a ``ModelSetError`` (``UnsafeFileError`` for the rules above) naming the file,
  dataset or field; ``verify`` applies the same rules to every object of every shard, so a set
  the reader would refuse never verifies, packs or fetches.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modelset.errors import SchemaError

SCHEMA_VERSION = 1
FORMAT_NAME = "modelset"
SHARD_FORMAT_NAME = "modelset-shard"

HEADER_FILE = "modelset.json"
MODELS_FILE = "models.parquet"
TASKS_FILE = "tasks.parquet"
RELATIONS_DIR = "relations"
SHARDS_DIR = "shards"
CARD_FILE = "README.md"
CHECKSUMS_FILE = "SHA256SUMS"
LOCK_FILE = ".lock"

RELEASE_INDEX_FILE = "release.json"

#: Files never listed in SHA256SUMS (a release's index lists SHA256SUMS itself).
UNCHECKED = {CHECKSUMS_FILE, LOCK_FILE, RELEASE_INDEX_FILE}

MODEL_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")

#: Columns a builder must give for every model.
REQUIRED_ROW_COLUMNS = ("task", "dataset", "variant", "parent_id", "seed")
#: Columns the writer adds.
WRITER_COLUMNS = (
    "model_id",
    "architecture",
    "arch_kwargs",
    "n_params",
    "shard",
    "block",
    "index",
    "checkpoints",
)
REQUIRED_TABLE_COLUMNS = REQUIRED_ROW_COLUMNS + WRITER_COLUMNS
REQUIRED_HEADER_KEYS = ("format", "schema_version", "name", "config", "counts", "created")


def shard_name(index: int) -> str:
    return f"{SHARDS_DIR}/shard-{index:05d}.h5"


def shard_index(name: str) -> int:
    match = re.fullmatch(rf"{SHARDS_DIR}/shard-(\d{{5}})\.h5", name)
    if not match:
        raise SchemaError(f"shard name {name!r} does not match '{SHARDS_DIR}/shard-NNNNN.h5'")
    return int(match.group(1))


def check_model_id(model_id: Any) -> str:
    if not isinstance(model_id, str) or not MODEL_ID_PATTERN.match(model_id):
        raise SchemaError(
            f"model id {model_id!r} is not valid: expected 1-200 characters of "
            "letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return model_id


def read_header(root: Path) -> dict[str, Any]:
    """Read and validate ``modelset.json``; ``SchemaError`` names the file and the problem."""
    from modelset._untrusted import read_json

    path = root / HEADER_FILE
    try:
        header = read_json(path, "header", root=root)
    except FileNotFoundError as exc:
        raise SchemaError(f"{path}: header is missing; the folder is not a complete model set") from exc
    validate_header(header, path)
    return header


def validate_header(header: Any, path: Path | str) -> None:
    if not isinstance(header, dict):
        raise SchemaError(f"{path}: header must be a JSON object, found {type(header).__name__}")
    missing = [k for k in REQUIRED_HEADER_KEYS if k not in header]
    if missing:
        raise SchemaError(f"{path}: header lacks required keys {missing}")
    if header["format"] != FORMAT_NAME:
        raise SchemaError(f"{path}: 'format' is {header['format']!r}, expected {FORMAT_NAME!r}")
    version = header["schema_version"]
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"{path}: unknown schema version {version!r}; this reader knows version "
            f"{SCHEMA_VERSION}. Upgrade modelset or rebuild the set."
        )
    if not isinstance(header["counts"], dict) or not isinstance(header["config"], dict):
        raise SchemaError(f"{path}: 'counts' and 'config' must be JSON objects")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a set was written with (read from package metadata: no imports)."""
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "timm", "numpy", "pandas", "pyarrow", "h5py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    import h5py

    versions["hdf5"] = h5py.version.hdf5_version
    return versions
