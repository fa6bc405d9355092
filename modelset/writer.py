"""Write a model set shard by shard, so that a killed build loses nothing it had committed.

Committing a shard is: the HDF5 file is written under a temporary name and renamed into
``shards/``; then the model table (the commit point) is rewritten atomically; then the header and
SHA256SUMS. A reader sees a shard only once the table lists it. Opening a writer on a folder it
had been building resumes: shards a killed writer left outside the table are removed, and the
header and checksums are brought up to date.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from modelset import _atomic
from modelset._untrusted import check_table_bytes, read_bytes
from modelset.errors import ChecksumError, ExistsError, LockedError, SchemaError
from modelset.folds import FOLDS_FILE, FoldConfig, Split, folds_document, parse_folds
from modelset.schema import (
    CARD_FILE,
    CHECKSUMS_FILE,
    FORMAT_NAME,
    HEADER_FILE,
    LOCK_FILE,
    MODELS_FILE,
    RELATIONS_DIR,
    REQUIRED_ROW_COLUMNS,
    SCHEMA_VERSION,
    SHARDS_DIR,
    TASKS_FILE,
    UNCHECKED,
    library_versions,
    read_header,
    shard_index,
    shard_name,
)
from modelset.shards import ModelRecord, read_shard_rows, renamed_image, write_image, write_shard_file

__all__ = ["ModelRecord", "ModelSetWriter", "read_checksums", "write_checksums", "write_lock"]

log = logging.getLogger(__name__)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: Largest SHA256SUMS read: about a million files.
MAX_SUMS_BYTES = 128 << 20


def read_checksums(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` from SHA256SUMS; ``ChecksumError`` if it is malformed."""
    path = root / CHECKSUMS_FILE
    sums: dict[str, str] = {}
    try:
        text = read_bytes(path, "checksum list", MAX_SUMS_BYTES, ChecksumError, root).decode("utf-8")
    except FileNotFoundError as exc:
        raise ChecksumError(f"{path}: missing; the set is incomplete or not a model set") from exc
    except UnicodeDecodeError as exc:
        raise ChecksumError(f"{path}: not a text file ({exc})") from exc
    for number, line in enumerate(text.splitlines(), 1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest) or not rel:
            raise ChecksumError(f"{path}, line {number}: expected '<sha256>  <path>', found {line[:80]!r}")
        sums[rel] = digest
    return sums


def write_checksums(root: Path, rehash_shards: bool = False) -> None:
    """Write SHA256SUMS over every file of the set (``sha256sum -c`` format, sorted paths).

    Committed shards never change, so their recorded sums are reused unless ``rehash_shards``.
    """
    known: dict[str, str] = {}
    if not rehash_shards and (root / CHECKSUMS_FILE).exists():
        known = {k: v for k, v in read_checksums(root).items() if k.startswith(f"{SHARDS_DIR}/")}
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in UNCHECKED or path.name.startswith(_atomic.TMP_PREFIX):
            continue
        digest = known.get(rel) or _atomic.sha256_file(path)
        lines.append(f"{digest}  {rel}\n")
    _atomic.write_text_atomic(root / CHECKSUMS_FILE, "".join(lines))


def _acquire_lock(root: Path) -> int:
    """The file descriptor holding ``root``'s exclusive write lock; ``LockedError`` if it is held."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise LockedError(
            f"{root} is being written by another process (lock {root / LOCK_FILE} is held); "
            "wait for it to finish or stop it first"
        ) from exc
    return fd


@contextlib.contextmanager
def write_lock(root: str | os.PathLike) -> Iterator[None]:
    """Hold the lock an open :class:`ModelSetWriter` holds on the set at ``root``: while inside, no
    writer can open it (a reader that must see the set unchanged, e.g. a release, holds it).

    Raises ``LockedError`` if a writer or another holder has it, and ``PermissionError`` if the
    lock file cannot be created (a read-only copy, which no one can write either).
    """
    fd = _acquire_lock(Path(root))
    try:
        yield
    finally:
        os.close(fd)


class ModelSetWriter:
    """Create or resume a model set at ``root``. Use ``ModelSetWriter.open`` as a context manager.

    Holds an exclusive lock on the folder while open: a second writer gets ``LockedError``.
    """

    def __init__(self, root: Path, header: dict[str, Any], lock_fd: int) -> None:
        self.root = root
        self.header = header
        self._lock_fd = lock_fd
        self._table = self._read_table()

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        name: str,
        config: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> ModelSetWriter:
        """Open ``root`` for writing.

        A missing or empty folder becomes a new set. A set built from the same ``config`` is
        resumed. Anything else (a set with another config, or a folder with other files) is left
        untouched and raises ``ExistsError`` unless ``overwrite`` is true.
        """
        root = Path(root)
        config = dict(config or {})
        root.mkdir(parents=True, exist_ok=True)
        lock_fd = _acquire_lock(root)
        try:
            header_path = root / HEADER_FILE
            contents = [p for p in root.iterdir() if p.name != LOCK_FILE]
            if header_path.exists() and not overwrite:
                header = read_header(root)
                if header["config"] != config:
                    raise ExistsError(
                        f"{root} already holds model set {header['name']!r} built from another "
                        "config; choose another folder or pass overwrite=True (--overwrite) to "
                        "replace it"
                    )
                log.info("resuming model set at %s", root)
            elif contents and not overwrite:
                raise ExistsError(
                    f"{root} exists and is not an empty folder or a model set; refusing to write "
                    "into it (pass overwrite=True / --overwrite to replace its contents)"
                )
            else:
                for path in contents:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                header = {
                    "format": FORMAT_NAME,
                    "schema_version": SCHEMA_VERSION,
                    "name": name,
                    "config": config,
                    "counts": {},
                    "created": _now(),
                    "complete": False,
                    "library_versions": library_versions(),
                }
                _atomic.write_json_atomic(header_path, header)
            writer = cls(root, header, lock_fd)
            writer._recover()
            return writer
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> ModelSetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------
    def _read_table(self) -> pd.DataFrame:
        path = self.root / MODELS_FILE
        if not path.exists():
            return pd.DataFrame()
        return pd.read_parquet(path)

    def _recover(self) -> None:
        """Remove what a killed writer left half-done and refresh header and checksums."""
        removed = _atomic.remove_stale_temporaries(self.root)
        committed = set(self._table["shard"]) if len(self._table) else set()
        shard_dir = self.root / SHARDS_DIR
        if shard_dir.exists():
            for path in shard_dir.iterdir():
                rel = f"{SHARDS_DIR}/{path.name}"
                if rel not in committed:
                    log.warning("removing uncommitted shard %s left by an interrupted build", path)
                    path.unlink()
                    removed.append(path)
        if removed or not (self.root / CHECKSUMS_FILE).exists():
            self._refresh()

    @property
    def model_ids(self) -> set[str]:
        """Ids of every committed model."""
        return set(self._table["model_id"]) if len(self._table) else set()

    @property
    def table(self) -> pd.DataFrame:
        return self._table.copy()

    def _next_shard(self) -> str:
        used = [shard_index(s) for s in self._table["shard"].unique()] if len(self._table) else []
        return shard_name(max(used, default=-1) + 1)

    # -- writing --------------------------------------------------------------------------
    def write_shard(self, records: Sequence[ModelRecord]) -> str:
        """Write ``records`` as one new shard and commit it; return the shard's name."""
        for record in records:
            missing = [c for c in REQUIRED_ROW_COLUMNS if c not in record.row]
            if missing:
                raise SchemaError(f"model {record.model_id!r}: row lacks required columns {missing}")
        dupes = sorted(self.model_ids & {r.model_id for r in records})
        if dupes:
            raise SchemaError(f"models {dupes[:5]} are already in {self.root}; ids must be unique")
        name = self._next_shard()
        target = self.root / name
        with _atomic.atomic_path(target) as tmp:
            write_shard_file(tmp, records, name)
        self._commit_or_remove(name)
        return name

    def commit_shard_file(self, path: str | os.PathLike) -> str:
        """Move a complete shard written elsewhere (e.g. by a worker) into the set and commit it."""
        rows = read_shard_rows(Path(path))
        dupes = sorted(self.model_ids & {r["model_id"] for r in rows})
        if dupes:
            raise SchemaError(f"{path}: models {dupes[:5]} are already in {self.root}")
        name = self._next_shard()
        with _atomic.atomic_path(self.root / name) as tmp:
            write_image(tmp, renamed_image(Path(path), name), f"shard {name!r}")
        self._commit_or_remove(name)
        return name

    def _commit_or_remove(self, name: str) -> None:
        """Commit shard ``name``; if that fails (a full disk), the uncommitted shard is removed."""
        try:
            self._commit(name)
        except BaseException:
            if not len(self._table) or name not in set(self._table["shard"]):  # the table never listed it
                (self.root / name).unlink(missing_ok=True)
            raise

    def _commit(self, name: str) -> None:
        rows = read_shard_rows(self.root / name)
        new = pd.DataFrame(rows)
        table = pd.concat([self._table, new], ignore_index=True) if len(self._table) else new
        # Serialised in memory first: the commit point is written in one checked go.
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        check_table_bytes(buffer.getvalue(), self.root / MODELS_FILE, "model table")
        _atomic.write_bytes_atomic(self.root / MODELS_FILE, buffer.getvalue(), "the model table")
        self._table = table
        self._refresh()
        log.info("committed %s (%d models, %d in the set)", name, len(new), len(table))

    def set_tasks(self, tasks: pd.DataFrame) -> None:
        """Write the task table (index: task id)."""
        frame = tasks.copy()
        frame.index = frame.index.astype(str)
        frame.index.name = "task"
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=True)
        check_table_bytes(buffer.getvalue(), self.root / TASKS_FILE, "task table")
        _atomic.write_bytes_atomic(self.root / TASKS_FILE, buffer.getvalue(), "the task table")
        self._refresh()

    def set_relation(self, name: str, matrix: pd.DataFrame) -> None:
        """Write a task × task ground-truth matrix (rows and columns are task ids)."""
        if not name.replace("_", "").isalnum():
            raise SchemaError(f"relation name {name!r} must be letters, digits and '_'")
        if list(matrix.index) != list(matrix.columns):
            raise SchemaError(f"relation {name!r}: rows and columns must be the same task ids")
        text = matrix.to_csv(index=True, index_label="task", float_format="%.9g")
        _atomic.write_text_atomic(self.root / RELATIONS_DIR / f"{name}.csv", text)
        self._refresh()

    def set_folds(self, folds: Sequence[Split], config: FoldConfig) -> None:
        """Write the task folds of the evaluation protocol (``splits/folds.json``)."""
        doc = folds_document(folds, config)
        parse_folds(json.dumps(doc), self._table, FOLDS_FILE)  # never write folds the reader refuses
        _atomic.write_json_atomic(self.root / FOLDS_FILE, doc)
        self._refresh()

    #: Header keys the writer itself maintains; ``set_header_field`` refuses them.
    _OWN_HEADER_KEYS = frozenset(
        {"format", "schema_version", "name", "config", "counts", "created", "updated", "complete", "library_versions"}
    )

    def set_header_field(self, key: str, value: Any) -> None:
        """Record a JSON-serializable ``value`` under ``key`` in the header (``modelset.json``),
        e.g. ``relation_reliability``; a resumed writer keeps it."""
        if key in self._OWN_HEADER_KEYS:
            raise SchemaError(f"header field {key!r} is maintained by the writer and cannot be set")
        self.header[key] = value
        self._refresh()

    def finish(self, card: Mapping[str, str] | None = None) -> None:
        """Mark the set complete; write its layouts, LICENSE, CITATION.cff, dataset card, header
        counts and checksums."""
        from modelset import citation
        from modelset.card import CITATION_FILE, LICENSE_FILE, render_card
        from modelset.layout import write_layouts
        from modelset.reader import ModelSet

        self.header["complete"] = True
        self._refresh(write_sums=False)
        if len(self._table):
            with ModelSet(self.root) as ms:
                write_layouts(self.root, ms)
        datasets = sorted({str(d) for d in self._table["dataset"]}) if len(self._table) else []
        _atomic.write_text_atomic(self.root / LICENSE_FILE, citation.set_license_text(datasets))
        created = str(self.header.get("created", ""))[:10] or None
        _atomic.write_text_atomic(self.root / CITATION_FILE, citation.citation_cff(str(self.header["name"]), created))
        text = render_card(self.root, self.header, self._table, card or {})
        _atomic.write_text_atomic(self.root / CARD_FILE, text)
        write_checksums(self.root)

    def _refresh(self, write_sums: bool = True) -> None:
        table = self._table
        counts: dict[str, Any] = {
            "models": int(len(table)),
            "shards": int(table["shard"].nunique()) if len(table) else 0,
        }
        if len(table):
            counts["tasks"] = int(table["task"].nunique())
            counts["by_variant"] = {str(k): int(v) for k, v in table["variant"].value_counts().sort_index().items()}
            counts["by_architecture"] = {
                str(k): int(v) for k, v in table["architecture"].value_counts().sort_index().items()
            }
        self.header["counts"] = counts
        self.header["updated"] = _now()
        _atomic.write_json_atomic(self.root / HEADER_FILE, self.header)
        if write_sums:
            write_checksums(self.root)

