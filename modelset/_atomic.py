"""Atomic file writes and checksums: every write goes to a temporary name in the same folder and is
renamed into place only once complete, so a crash never leaves a half-written file visible."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
#: Errors that mean the disk (or the user's quota) is full.
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_free(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raise ``DiskFullError`` unless ``folder``'s file system has ``needed`` bytes free."""
    from modelset.errors import DiskFullError

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed > free:
        raise DiskFullError(
            f"{folder}: {what} needs {_human(needed)} ({needed} bytes) of disk space, only "
            f"{_human(free)} are free; free some space or write elsewhere (nothing was changed)"
        )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL


def disk_full(exc: OSError, folder: str | os.PathLike, needed: int, what: str):
    """The ``DiskFullError`` for an ``ENOSPC`` met while writing ``needed`` bytes of ``what``."""
    from modelset.errors import DiskFullError

    return DiskFullError(
        f"{folder}: the disk filled up while writing {what} ({exc.strerror}); it needs about "
        f"{_human(needed)} ({needed} bytes) free. Partial files were removed; free some space and run again"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[tuple[Path, ...]]:
    """Yield a temporary path beside each of ``paths``; if the block succeeds, rename each onto
    its path in the order given, else remove them all and rename none.

    Each file is replaced atomically, the group is not: give last the file that vouches for the
    others (e.g. one recording their hash), so a reader that checks it never trusts a mix.
    """
    targets = [Path(p) for p in paths]
    temporaries: list[Path] = []
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
            os.close(fd)
            temporaries.append(Path(tmp))
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a data set is for everyone to read
        yield tuple(temporaries)
        for tmp in temporaries:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        for tmp, path in zip(temporaries, targets):
            os.replace(tmp, path)
        for folder in dict.fromkeys(path.parent for path in targets):
            _fsync_dir(folder)
    finally:
        for tmp in temporaries:
            if tmp.exists():
                tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes, what: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically; a full disk is ``DiskFullError``, leaving nothing behind."""
    path = Path(path)
    what = what or path.name
    check_free(path.parent, len(data), what)
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(exc, path.parent, len(data), what) from exc
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries a killed writer left behind; return what was removed."""
    removed = []
    for tmp in Path(folder).rglob(f"{TMP_PREFIX}*"):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    return removed


def replace_folder(staging: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the complete folder ``staging`` to ``dest``; an existing ``dest`` is first moved aside
    and removed afterwards, so that ``dest`` is never half-replaced."""
    staging, dest = Path(staging), Path(dest)
    if dest.exists():
        old = dest.parent / f"{TMP_PREFIX}{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)
