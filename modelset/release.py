"""Releases: pack a built model set into a versioned folder and archive, and fetch one safely.

A release is a folder ``<name>-v<schema>-<hash>/`` holding the set's files unchanged (shards,
tables, relations, dataset card, SHA256SUMS, header) plus ``release.json``, an index listing every
file with its size and sha256. ``<hash>`` is the start of the sha256 of SHA256SUMS, so two releases
with the same name and schema but other content never share a folder name. Beside the folder,
``<name>-v<schema>-<hash>.tar`` holds the same folder as one archive.

``fetch(url, dest)`` downloads a release with pooch into a hidden staging folder beside ``dest``,
checks every size and sha256 (files that already pass are kept, so an interrupted fetch resumes),
downloads the header last (a staging folder never opens as a model set), verifies the set and only
then renames the staging folder onto ``dest``. The index is untrusted input: its paths, sizes and
hashes are validated before anything is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import logging
import os
import re
import shutil
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from modelset import _atomic
from modelset._untrusted import parse_json, read_json, regular_file
from modelset.errors import ChecksumError, ExistsError, LockedError, ModelSetError, UnsafeFileError
from modelset.schema import CHECKSUMS_FILE, HEADER_FILE, LOCK_FILE, RELEASE_INDEX_FILE, read_header

__all__ = ["INDEX_FILE", "fetch", "pack", "read_index", "validate_index"]

log = logging.getLogger(__name__)

INDEX_FILE = RELEASE_INDEX_FILE
RELEASE_FORMAT = "modelset-release"
RELEASE_VERSION = 1
#: Largest index accepted: an index lists files, it is never large.
MAX_INDEX_BYTES = 16 << 20
#: Largest file and release a fetch accepts unless told otherwise (guards against huge declared sizes).
MAX_FILE_BYTES = 1 << 40
MAX_FILES = 1_000_000
#: Slowest transfer rate (bytes/s) the default fetch deadlines allow.
MIN_RATE = 64 << 10
#: A release path: relative, '/'-separated, no empty, hidden, '.' or '..' components.
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REQUIRED_INDEX_KEYS = ("format", "release_version", "name", "schema_version", "files")


class ReleaseError(ModelSetError):
    """A release index, download or pack request is not valid."""


# -- pack ---------------------------------------------------------------------------------
def release_name(root: Path) -> str:
    """``<name>-v<schema>-<hash12>`` of the set at ``root`` (hash of its SHA256SUMS)."""
    header = read_header(root)
    digest = _atomic.sha256_file(root / CHECKSUMS_FILE)[:12]
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", str(header["name"])).strip("-.") or "modelset"
    return f"{name}-v{header['schema_version']}-{digest}"


def pack(path: str | os.PathLike, out: str | os.PathLike, archive: bool = True, check: bool = True) -> Path:
    """Pack the complete model set at ``path`` into ``out/<name>-v<schema>-<hash>/``; return it.

    The set is verified first (``check``): a release never carries a damaged set. Packing the
    same set twice returns the existing release. With ``archive``, ``<release>.tar`` is written
    beside the folder. Refuses (``LockedError``) while a builder is writing the set.
    """
    from modelset.writer import write_lock

    root = Path(path)
    with contextlib.ExitStack() as held:
        if (root / HEADER_FILE).exists():  # else not a set: verify or read_header names the problem
            try:  # no builder may change the set while it is verified and copied
                held.enter_context(write_lock(root))
            except PermissionError:
                pass  # a read-only copy cannot be written by anyone either
        held.callback(os.close, _hold_out_lock(Path(out)))
        return _pack_locked(root, Path(out), archive, check)


PACK_LOCK = ".pack.lock"


def _hold_out_lock(out: Path) -> int:
    """Lock ``out`` for this pack, then remove what a killed pack left there (its staging folder
    and archive temporaries): with the lock held, no other pack is writing them."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / PACK_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise LockedError(f"{out}: another pack is writing into this folder ({out / PACK_LOCK} is held); wait for it") from exc
    for stale in sorted(out.glob(f"{_atomic.TMP_PREFIX}*")):
        log.warning("removing %s left by an interrupted pack", stale)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    return fd


def _pack_locked(root: Path, out: Path, archive: bool, check: bool) -> Path:
    from modelset.verify import verify
    from modelset.writer import read_checksums

    if check:
        verify(root)
    header = read_header(root)
    if not header.get("complete", False):
        raise ReleaseError(
            f"{root}: the model set is not complete (its build was interrupted or is running); "
            "finish the build before packing it"
        )
    sums = read_checksums(root)
    out_dir = out
    out_dir.mkdir(parents=True, exist_ok=True)
    name = release_name(root)
    target = out_dir / name
    if target.exists():
        read_index(target / INDEX_FILE)  # an existing release with this content hash is this release
        log.info("release %s exists already", target)
    files = [*sorted(sums), CHECKSUMS_FILE]
    sizes = sum((root / rel).stat().st_size for rel in files)
    tar_path = out_dir / f"{name}.tar"
    # What this pack writes: the folder's copies and index, the archive (512-byte headers and padding).
    needed = (0 if target.exists() else sizes + (64 << 10) * 1 + 256 * len(files))
    needed += 0 if not archive or tar_path.exists() else sizes + 2048 * (len(files) + 8)
    _atomic.check_free(out_dir, needed, f"packing {name}")
    if not target.exists():
        staging = out_dir / f"{_atomic.TMP_PREFIX}{name}"
        try:
            _copy_release(root, staging, target, files, sums, header, name)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if _atomic.is_disk_full(exc):
                raise _atomic.disk_full(exc, out_dir, needed, f"release {name}") from exc
            raise
    if archive and not tar_path.exists():
        try:
            with _atomic.atomic_path(tar_path) as tmp:
                _write_tar(tmp, target, name)
        except OSError as exc:
            if _atomic.is_disk_full(exc):
                raise _atomic.disk_full(exc, out_dir, needed, f"archive {tar_path.name}") from exc
            raise
        log.info("archived %s", tar_path)
    return target


def _copy_release(
    root: Path, staging: Path, target: Path, files: list[str], sums: dict[str, str], header: dict[str, Any], name: str
) -> None:
    """Copy the set's files into ``staging`` with their index, then rename it onto ``target``."""
    entries = []
    for rel in files:
        src, dst = root / rel, staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        digest = _atomic.sha256_file(dst)  # hash the copy: the index describes what was written
        if rel in sums and digest != sums[rel]:
            raise ChecksumError(f"{src}: sha256 changed while packing ({sums[rel]} -> {digest})")
        entries.append({"path": rel, "size": dst.stat().st_size, "sha256": digest})
    index = {
        "format": RELEASE_FORMAT,
        "release_version": RELEASE_VERSION,
        "name": str(header["name"]),
        "release": name,
        "schema_version": header["schema_version"],
        "models": int(header.get("counts", {}).get("models", 0)),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "total_bytes": sum(e["size"] for e in entries),
        "files": entries,
    }
    _atomic.write_json_atomic(staging / INDEX_FILE, index)
    _atomic.replace_folder(staging, target)
    log.info("packed %d files (%d bytes) into %s", len(entries), index["total_bytes"], target)


def _write_tar(tar_path: Path, folder: Path, arcname: str) -> None:
    # Reproducible: sorted members, fixed owner and time, so the archive's hash depends on content.
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=arcname, recursive=False, filter=clean)
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=f"{arcname}/{path.relative_to(folder).as_posix()}", recursive=False, filter=clean)


# -- index --------------------------------------------------------------------------------
def validate_index(index: Any, source: str, max_bytes: int = MAX_FILE_BYTES) -> list[dict[str, Any]]:
    """Check a release index; return its file entries ``[{path, size, sha256}]``.

    Raises ``ReleaseError`` naming ``source`` and the bad entry for wrong types, missing keys,
    unsafe paths (absolute, '..', hidden), duplicates, sizes beyond ``max_bytes``, bad hashes.
    """
    if not isinstance(index, dict):
        raise ReleaseError(f"{source}: release index must be a JSON object, found {type(index).__name__}")
    missing = [k for k in _REQUIRED_INDEX_KEYS if k not in index]
    if missing:
        raise ReleaseError(f"{source}: release index lacks required keys {missing}")
    if index["format"] != RELEASE_FORMAT:
        raise ReleaseError(f"{source}: 'format' is {index['format']!r}, expected {RELEASE_FORMAT!r}")
    if index["release_version"] != RELEASE_VERSION:
        raise ReleaseError(
            f"{source}: release version {index['release_version']!r} is not {RELEASE_VERSION}; "
            "upgrade modelset"
        )
    files = index["files"]
    if not isinstance(files, list) or not files:
        raise ReleaseError(f"{source}: 'files' must be a non-empty list, found {type(files).__name__}")
    if len(files) > MAX_FILES:
        raise ReleaseError(f"{source}: lists {len(files)} files, more than the limit {MAX_FILES}")
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = 0
    for number, entry in enumerate(files):
        where = f"{source}: files[{number}]"
        if not isinstance(entry, dict):
            raise ReleaseError(f"{where}: expected an object with path, size, sha256, found {type(entry).__name__}")
        lacking = [k for k in ("path", "size", "sha256") if k not in entry]
        if lacking:
            raise ReleaseError(f"{where}: lacks keys {lacking}")
        rel, size, digest = entry["path"], entry["size"], entry["sha256"]
        rel = _check_release_path(rel, where)
        if type(size) is not int or size < 0:
            raise ReleaseError(f"{where} ({rel}): size must be a non-negative integer, found {size!r}")
        if size > max_bytes:
            raise ReleaseError(f"{where} ({rel}): declares {size} bytes, more than the limit of {max_bytes}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ReleaseError(f"{where} ({rel}): sha256 must be 64 lowercase hex digits, found {digest!r:.80}")
        if rel in seen:
            raise ReleaseError(f"{where}: path {rel!r} is listed twice")
        if any(rel.startswith(f"{other}/") or other.startswith(f"{rel}/") for other in seen):
            raise ReleaseError(f"{where}: path {rel!r} is both a file and a folder in the index")
        seen.add(rel)
        total += size
        entries.append({"path": rel, "size": size, "sha256": digest})
    if total > max_bytes:
        raise ReleaseError(f"{source}: files total {total} bytes, more than the limit of {max_bytes}")
    for required in (HEADER_FILE, CHECKSUMS_FILE):
        if required not in seen:
            raise ReleaseError(f"{source}: release index does not list {required}")
    return entries


def _check_release_path(rel: Any, where: str) -> str:
    if not isinstance(rel, str):
        raise ReleaseError(f"{where}: path must be a string, found {type(rel).__name__}")
    parts = rel.split("/")
    if len(rel) > 1024 or not all(_PATH_PART.match(p) for p in parts) or rel in (INDEX_FILE, LOCK_FILE):
        raise ReleaseError(
            f"{where}: unsafe or invalid path {rel!r:.200}: expected a relative path of "
            "letters, digits, '_', '.', '-' parts (no '..', absolute or hidden parts)"
        )
    return rel


def read_index(path: Path) -> dict[str, Any]:
    """Read and validate a local ``release.json``."""
    try:
        index = read_json(path, "release index", ReleaseError, MAX_INDEX_BYTES)
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read the release index ({exc})") from exc
    validate_index(index, str(path))
    return index


# -- download -----------------------------------------------------------------------------
class _TooLarge(Exception):
    """Not a ``ValueError``: pooch must not retry a download that is larger than declared."""


class _PastDeadline(Exception):
    """A download ran past its deadline (not retried: the deadline covers every attempt)."""


class FetchTimeoutError(ReleaseError):
    """A download did not finish within its deadline (per file or for the whole release)."""


class _CappedDownloader:
    """A pooch downloader (HTTP(S) via requests, or file://) that stops past ``limit`` bytes or
    past ``deadline`` (a ``time.monotonic()`` value)."""

    def __init__(self, limit: int, timeout: float, deadline: float | None = None) -> None:
        self.limit = limit
        self.timeout = timeout
        self.deadline = deadline

    def __call__(self, url: str, output_file: Any, pooch: Any = None, check_only: bool = False) -> Any:
        # pooch hands over a temporary path in the staging folder and renames it once hashed.
        with open(output_file, "wb") as out:
            for block in _stream(url, self.limit, self.timeout, self.deadline):
                out.write(block)


def _stream(url: str, limit: int, timeout: float, deadline: float | None = None):
    """Yield the bytes at ``url`` in blocks; ``_TooLarge`` once more than ``limit`` arrive,
    ``_PastDeadline`` once ``deadline`` (monotonic seconds) passes.

    The deadline is checked after every read, and a read blocked past it is cut off by closing
    the socket's read side, so a server that sends one byte at a time cannot keep a fetch alive.
    """
    received = 0

    def over_deadline() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise _PastDeadline(f"{url}: not complete by its deadline ({received} bytes received)")

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        try:
            regular_file(path, "release file")  # a FIFO would block the read forever
        except UnsafeFileError as exc:
            raise OSError(str(exc)) from exc
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                received += len(block)
                if received > limit:
                    raise _TooLarge(f"{url}: more than {limit} bytes")
                over_deadline()
                yield block
        return
    import requests

    over_deadline()
    read_timeout = timeout if deadline is None else max(0.01, min(timeout, deadline - time.monotonic()))
    with requests.get(url, stream=True, timeout=(timeout, read_timeout)) as response:
        response.raise_for_status()
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge(f"{url}: server declares {declared} bytes, expected at most {limit}")
        watchdog = None
        if deadline is not None:
            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (response.raw,))
            watchdog.daemon = True
            watchdog.start()
        try:
            while True:
                try:
                    block = response.raw.read1(1 << 20, decode_content=True)
                except Exception:
                    over_deadline()  # a read cut off by the watchdog is a deadline, not a network error
                    raise
                if not block:
                    break
                received += len(block)
                if received > limit:
                    raise _TooLarge(f"{url}: more than {limit} bytes")
                over_deadline()
                yield block
            over_deadline()
        finally:
            if watchdog is not None:
                watchdog.cancel()


def _cut(raw: Any) -> None:
    """Unblock a read stuck past the deadline (urllib3 shuts the socket's read side down)."""
    with contextlib.suppress(Exception):
        raw.shutdown()


def _split_url(url: str) -> tuple[str, str]:
    """``(base URL ending in '/', index URL)`` for a release folder URL or its index URL."""
    if "://" not in url:  # a local folder or index path
        url = Path(url).resolve().as_uri() + ("/" if Path(url).is_dir() else "")
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise ReleaseError(f"{url}: unsupported URL scheme {scheme!r}; expected http, https or file")
    if url.endswith(".json"):
        return url.rsplit("/", 1)[0] + "/", url
    base = url if url.endswith("/") else url + "/"
    return base, base + INDEX_FILE


def _download_index(index_url: str, timeout: float, retries: int, deadline: float | None = None) -> dict[str, Any]:
    import requests

    last: Exception | None = None
    for _attempt in range(retries + 1):
        try:
            data = b"".join(_stream(index_url, MAX_INDEX_BYTES, timeout, deadline))
            break
        except _TooLarge as exc:
            raise ReleaseError(f"{index_url}: release index is larger than {MAX_INDEX_BYTES} bytes") from exc
        except _PastDeadline as exc:
            raise FetchTimeoutError(
                f"{index_url}: the release index did not arrive within the fetch deadline ({exc}); "
                "check the URL and the connection, or raise the deadline (--deadline)"
            ) from exc
        except (requests.RequestException, OSError) as exc:
            last = exc
    else:
        raise ReleaseError(f"{index_url}: cannot download the release index ({last})") from last
    return parse_json(data, index_url, ReleaseError)


def _staging_for(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.fetching"


def _file_ok(path: Path, entry: dict[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == entry["size"] and _atomic.sha256_file(path) == entry["sha256"]


def fetch(
    url: str,
    dest: str | os.PathLike,
    retries: int = 3,
    timeout: float = 60.0,
    overwrite: bool = False,
    check: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
    progress: bool = False,
    deadline: float | None = None,
    file_deadline: float | None = None,
    min_rate: float = MIN_RATE,
) -> Path:
    """Download the release at ``url`` (its folder URL or ``release.json`` URL) into ``dest``.

    Every file's size and sha256 is checked against the index; a failed file is retried
    ``retries`` times; files a previous interrupted fetch completed are kept. ``dest`` appears only
    once the whole set is downloaded and verified (``check`` also runs ``modelset.verify``).
    Returns ``dest``. Raises ``ReleaseError``/``ChecksumError`` (``ModelSetError``) on any problem.

    No download can hang: ``timeout`` bounds each network read, ``file_deadline`` (seconds) all
    attempts at one file, and ``deadline`` (seconds) the whole fetch. Unset deadlines allow
    ``timeout`` plus the declared size at ``min_rate`` bytes per second, per file and summed for the
    release. Past a deadline: ``FetchTimeoutError``; completed files are kept for the next fetch.
    """
    import pooch
    import requests
    from tqdm.auto import tqdm

    from modelset.verify import verify

    dest = Path(dest).absolute()
    start = time.monotonic()
    allowance = _allowance(MAX_INDEX_BYTES, timeout, min_rate)
    base, index_url = _split_url(url)
    index = _download_index(index_url, timeout, retries, start + (allowance if deadline is None else deadline))
    entries = validate_index(index, index_url, max_bytes=max_bytes)
    total = sum(e["size"] for e in entries)
    if deadline is None:
        deadline = allowance + sum(_allowance(e["size"], timeout, min_rate) for e in entries)
    release_end = start + deadline
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if total > free:
        raise ReleaseError(f"{index_url}: release needs {total} bytes, only {free} are free in {dest.parent}")
    if dest.exists():
        if _matches(dest, entries):
            log.info("%s already holds this release", dest)
            return dest
        if not overwrite:
            raise ExistsError(f"{dest} exists and does not hold this release; pass overwrite=True (--overwrite)")

    staging = _staging_for(dest)
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        staging.unlink()
    staging.mkdir(exist_ok=True)
    _clean_staging(staging, {e["path"] for e in entries})
    # The header goes last: until it is there, the staging folder is not a model set at all.
    order = sorted(entries, key=lambda e: (e["path"] == HEADER_FILE, e["path"]))
    registry = {e["path"]: f"sha256:{e['sha256']}" for e in entries}
    store = pooch.create(path=staging, base_url=base, registry=registry, retry_if_failed=retries)
    header_entry = next(e for e in entries if e["path"] == HEADER_FILE)
    kept = 0
    failures: list[ModelSetError] = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="fetch", disable=not progress) as bar:
        for entry in order:
            rel = entry["path"]
            target = staging / rel
            if rel == HEADER_FILE:
                continue
            if _file_ok(target, entry):
                kept += 1
            else:
                try:
                    _fetch_one(store, rel, entry, base, timeout, pooch, requests, release_end, file_deadline, min_rate)
                except ModelSetError as exc:  # go on: a later fetch then resumes with only the failures
                    failures.append(exc)
            bar.update(entry["size"])
        if failures:
            log.error("%d of %d files failed; run fetch again to resume", len(failures), len(entries))
            raise failures[0]
        # Check what pooch wrote before the header makes the folder a model set.
        for entry in order:
            if entry["path"] != HEADER_FILE and not _file_ok(staging / entry["path"], entry):
                raise ChecksumError(f"{staging / entry['path']}: size or sha256 differs from the index after download")
        _fetch_one(store, HEADER_FILE, header_entry, base, timeout, pooch, requests, release_end, file_deadline, min_rate)
        bar.update(header_entry["size"])
    if not _file_ok(staging / HEADER_FILE, header_entry):
        raise ChecksumError(f"{staging / HEADER_FILE}: size or sha256 differs from the index after download")
    _check_sums_agree(staging, entries, index_url)
    if check:
        verify(staging, checksums=False)  # sums were checked per file above; this reads the tensors
    _atomic.replace_folder(staging, dest)  # an existing dest is never half-replaced
    log.info("fetched %d files (%d kept from an earlier attempt) into %s", len(entries), kept, dest)
    return dest


def _clean_staging(staging: Path, wanted: set[str]) -> None:
    """Drop what the index does not list, and every symlink, without following any link: a
    planted link must not make the fetch write (or delete) outside the staging folder."""
    for folder, dirs, files in os.walk(staging, followlinks=False):
        base = Path(folder)
        for name in list(dirs):
            if (base / name).is_symlink():
                (base / name).unlink()
                dirs.remove(name)
        for name in files:
            path = base / name
            if path.is_symlink() or not path.is_file() or path.relative_to(staging).as_posix() not in wanted:
                path.unlink()


def _allowance(size: int, timeout: float, min_rate: float) -> float:
    """Seconds a file of ``size`` bytes may take by default: one timeout plus its size at ``min_rate``."""
    return timeout + size / max(min_rate, 1.0)


def _fetch_one(
    store: Any,
    rel: str,
    entry: dict[str, Any],
    base: str,
    timeout: float,
    pooch: Any,
    requests: Any,
    release_end: float | None = None,
    file_deadline: float | None = None,
    min_rate: float = MIN_RATE,
) -> None:
    seconds = _allowance(entry["size"], timeout, min_rate) if file_deadline is None else file_deadline
    end = time.monotonic() + seconds
    which = f"its per-file deadline of {seconds:.0f} s (--file-deadline)"
    if release_end is not None and release_end < end:
        end, which = release_end, "the deadline of the whole fetch (--deadline)"
    downloader = _CappedDownloader(entry["size"], timeout, end)
    try:
        store.fetch(rel, downloader=downloader)
    except _TooLarge as exc:
        raise ChecksumError(f"{base}{rel}: download is larger than the {entry['size']} bytes the index declares ({exc})") from exc
    except _PastDeadline as exc:
        raise FetchTimeoutError(
            f"{base}{rel}: the download of {entry['size']} bytes did not finish within {which}; the "
            "server is too slow or stalls. Run fetch again to resume (complete files are kept), or "
            "allow more time"
        ) from exc
    except ValueError as exc:  # pooch: hash mismatch after every retry
        raise ChecksumError(
            f"{base}{rel}: sha256 differs from the index after {store.retry_if_failed + 1} attempts "
            f"(expected {entry['sha256']}); the server copy is damaged"
        ) from exc
    except (requests.RequestException, OSError) as exc:
        if _atomic.is_disk_full(exc):
            raise _atomic.disk_full(exc, store.path, entry["size"], f"{rel} of the release") from exc
        raise ReleaseError(f"{base}{rel}: download failed ({exc}); run fetch again to resume") from exc


def _check_sums_agree(staging: Path, entries: list[dict[str, Any]], source: str) -> None:
    """The index and the set's own SHA256SUMS must describe the same files."""
    from modelset.writer import read_checksums

    sums = read_checksums(staging)
    indexed = {e["path"]: e["sha256"] for e in entries if e["path"] != CHECKSUMS_FILE}
    if sums != indexed:
        differ = sorted(set(sums.items()) ^ set(indexed.items()))[:3]
        raise ChecksumError(f"{source}: index and {CHECKSUMS_FILE} disagree on {differ}")


def _matches(dest: Path, entries: list[dict[str, Any]]) -> bool:
    try:
        return all(_file_ok(dest / e["path"], e) for e in entries)
    except OSError:
        return False


def release_digest(folder: Path) -> str:
    """sha256 of a release's index file (to pin a release in a paper or a config)."""
    return hashlib.sha256((folder / INDEX_FILE).read_bytes()).hexdigest()
