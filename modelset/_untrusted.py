"""Reading a model set's files as untrusted input.

A set comes from strangers, so before a file is parsed: it must be a regular file reached without
symbolic links (a FIFO would block forever, a link could point anywhere); a JSON file must be small
and shallow, with integers of sane size; a Parquet table's declared rows, values and uncompressed
sizes must fit a budget proportional to its size on disk, and its strings are measured while still
dictionary-encoded, before they are decoded. Every refusal is a ``ModelSetError`` naming the file.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from modelset.errors import ModelSetError, SchemaError, UnsafeFileError

#: Largest JSON file read (header, lps.json): a header lists a config and counts, never megabytes.
MAX_JSON_BYTES = 4 << 20
#: Deepest nesting of lists and objects accepted in a JSON file.
MAX_JSON_DEPTH = 64
#: Most digits of a JSON integer (a count or a size never needs more).
MAX_INT_DIGITS = 40
#: A table may decode to at most ``TABLE_EXPANSION`` times its size on disk plus ``TABLE_SLACK``.
TABLE_EXPANSION = 16
TABLE_SLACK = 64 << 20
MAX_TABLE_COLUMNS = 4096


def regular_file(path: Path, what: str, root: Path | None = None) -> int:
    """Size of ``path`` after checking it is a regular file, not a link, reached from ``root``
    (if given) through real folders only. ``FileNotFoundError`` if it does not exist."""
    path = Path(path)
    parts = [path]
    if root is not None:
        rel = path.relative_to(root)
        parts = [root / Path(*rel.parts[: i + 1]) for i in range(len(rel.parts))]
    for number, part in enumerate(parts):
        info = os.lstat(part)
        if stat.S_ISLNK(info.st_mode):
            raise UnsafeFileError(
                f"{part}: {what} is a symbolic link; a model set holds regular files only (a link "
                "could make the reader read any file). Replace it by the file it points to, or "
                "fetch the set again"
            )
        if number < len(parts) - 1 and not stat.S_ISDIR(info.st_mode):
            raise UnsafeFileError(f"{part}: expected a folder on the way to {path}")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise UnsafeFileError(
            f"{path}: {what} is {kind}; a model set holds regular files only (reading a FIFO or "
            "device could block forever). Replace it by the real file, or fetch the set again"
        )
    return info.st_size


def regular_folder(path: Path, root: Path) -> None:
    """Check that ``path`` (inside ``root``) is a real folder reached without symbolic links."""
    rel = Path(path).relative_to(root)
    for i in range(len(rel.parts)):
        part = root / Path(*rel.parts[: i + 1])
        info = os.lstat(part)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise UnsafeFileError(
                f"{part}: expected a folder of the model set, found a symbolic link or a file; a set "
                "holds regular files and folders only. Fetch the set again"
            )


def set_files(root: Path) -> list[str]:
    """Relative paths of every file under ``root``; a link or special file is ``UnsafeFileError``."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        base = Path(folder)
        for name in [*dirs, *files]:
            info = os.lstat(base / name)
            if stat.S_ISLNK(info.st_mode) or not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a regular file"
                raise UnsafeFileError(
                    f"{base / name}: is {kind}; a model set holds regular files and folders only "
                    "(a link could point anywhere, a FIFO blocks reads). Remove it or fetch the set again"
                )
        found += [(base / name).relative_to(root).as_posix() for name in files]
    return sorted(found)


def read_bytes(path: Path, what: str, max_bytes: int, error: type[ModelSetError] = SchemaError,
               root: Path | None = None) -> bytes:  # fmt: skip
    """The bytes of a regular file of at most ``max_bytes`` (opened without following links or
    blocking, so a file swapped for a FIFO after the check cannot hang the reader)."""
    size = regular_file(path, what, root)
    if size > max_bytes:
        raise error(f"{path}: {what} is {size} bytes, more than the limit of {max_bytes}; it is not a file this format writes")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeFileError(f"{path}: {what} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{path}: {what} grew past the limit of {max_bytes} bytes while read")
    return data


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits (at most {MAX_INT_DIGITS} are accepted)")
    return int(text)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json(data: bytes | str, where: str, error: type[ModelSetError] = SchemaError) -> Any:
    """Parse JSON text, refusing nesting deeper than ``MAX_JSON_DEPTH`` and huge integers."""
    try:
        value = json.loads(data, parse_int=_parse_int)
    except RecursionError:
        raise error(f"{where}: JSON is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise error(f"{where}: not valid JSON ({str(exc)[:200]})") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{where}: JSON is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def read_json(path: Path, what: str, error: type[ModelSetError] = SchemaError, max_bytes: int = MAX_JSON_BYTES,
              root: Path | None = None) -> Any:  # fmt: skip
    """Parse the JSON file ``path`` within the limits above; ``error`` names the file."""
    return parse_json(read_bytes(path, what, max_bytes, error, root), str(path), error)


def table_budget(size: int) -> int:
    """Bytes a table of ``size`` bytes on disk may decode to (the bound stated in ``format``)."""
    return TABLE_EXPANSION * size + TABLE_SLACK


def read_parquet(path: Path, what: str, root: Path | None = None):
    """A Parquet table as a pandas DataFrame, decoded only if its declared sizes fit the budget.

    Checked from the footer before any page is read: columns, rows, leaf values and uncompressed
    sizes. String columns are read dictionary-encoded and their decoded length is summed before
    they are decoded, so a tiny run-length-encoded column cannot expand to gigabytes.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    size = regular_file(path, what, root)
    budget = table_budget(size)
    try:
        meta = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SchemaError(f"{path}: {what} cannot be read as a Parquet table ({exc}); run verify") from exc
    _check_footer(meta, schema, size, path, what)
    strings = []
    for field in schema:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
            strings.append(field.name)
        elif _has_string_leaf(field.type):
            raise SchemaError(f"{path}: {what} column {field.name!r} nests strings ({field.type}); the format stores text in flat columns")
    try:
        table = pq.read_table(path, read_dictionary=strings)
        decoded = 0
        for name in strings:
            for chunk in table.column(name).chunks:
                if isinstance(chunk, pa.DictionaryArray):
                    lengths = pc.binary_length(chunk.dictionary).take(chunk.indices)
                    decoded += int(pc.sum(lengths).as_py() or 0) + 8 * len(chunk)
        if decoded > budget:
            raise UnsafeFileError(
                f"{path}: {what}'s text columns decode to {decoded} bytes, more than {budget} bytes "
                f"for a {size}-byte file; the table is damaged or crafted. Fetch the set again"
            )
        table = table.cast(schema)
        return table.to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise SchemaError(f"{path}: {what} cannot be read as a Parquet table ({str(exc)[:300]}); run verify") from exc


def _check_footer(meta: Any, schema: Any, size: int, path: Path | str, what: str) -> None:
    """Refuse a table whose footer declares more values than ``table_budget(size)``."""
    budget = table_budget(size)
    if meta.num_columns > MAX_TABLE_COLUMNS or len(schema) > MAX_TABLE_COLUMNS:
        raise SchemaError(f"{path}: {what} has {meta.num_columns} columns, more than {MAX_TABLE_COLUMNS}")
    declared = 0
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for column in range(row_group.num_columns):
            chunk = row_group.column(column)
            declared += 8 * max(chunk.num_values, 0) + max(chunk.total_uncompressed_size, 0)
    declared += 8 * max(meta.num_rows, 0) * max(meta.num_columns, 1)
    if declared > budget:
        raise UnsafeFileError(
            f"{path}: {what} declares {meta.num_rows} rows and about {declared} bytes of values, "
            f"more than {budget} bytes for a {size}-byte file ({TABLE_EXPANSION}× its size + "
            f"{TABLE_SLACK >> 20} MiB); the table is damaged or crafted. Fetch the set again"
        )


def check_table_bytes(data: bytes, path: Path, what: str) -> None:
    """The writer's side of the budget: ``SchemaError`` if a reader would refuse this table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.read_metadata(pa.BufferReader(data))
    try:
        _check_footer(meta, meta.schema.to_arrow_schema(), len(data), path, what)
    except UnsafeFileError as exc:
        raise SchemaError(f"{exc} (refusing to write a table that readers would refuse)") from None


def _has_string_leaf(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _has_string_leaf(kind.value_type)
    if pa.types.is_struct(kind):
        return any(_has_string_leaf(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _has_string_leaf(kind.key_type) or _has_string_leaf(kind.item_type)
    return False
