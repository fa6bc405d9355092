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

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import urllib.parse
from pathlib import Path
from typing import Any

from modelset import _io
from modelset.errors import ChecksumError, ExistsError, ModelSetError
from modelset.format import CHECKSUMS_FILE, HEADER_FILE, LOCK_FILE, RELEASE_INDEX_FILE, read_header

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
    digest = _io.sha256_file(root / CHECKSUMS_FILE)[:12]
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", str(header["name"])).strip("-.") or "modelset"
    return f"{name}-v{header['schema_version']}-{digest}"


def pack(path: str | os.PathLike, out: str | os.PathLike, archive: bool = True, check: bool = True) -> Path:
    """Pack the complete model set at ``path`` into ``out/<name>-v<schema>-<hash>/``; return it.

    The set is verified first (``check``): a release never carries a damaged set. Packing the
    same set twice returns the existing release. With ``archive``, ``<release>.tar`` is written
    beside the folder. Refuses (``LockedError``) while a builder is writing the set.
    """
    root = Path(path)
    lock = _hold_write_lock(root)  # no builder may change the set while it is verified and copied
    try:
        return _pack_locked(root, Path(out), archive, check)
    finally:
        if lock is not None:
            os.close(lock)


def _hold_write_lock(root: Path) -> int | None:
    """The set's writer lock (``LockedError`` if a builder holds it); ``None`` on a read-only set."""
    from modelset.writer import ModelSetWriter

    if not (root / HEADER_FILE).exists():
        return None  # not a set: verify or read_header names the problem
    try:
        return ModelSetWriter._lock(root)
    except PermissionError:
        return None  # a read-only copy cannot be written by anyone either


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
    else:
        staging = out_dir / f"{_io.TMP_PREFIX}{name}"
        if staging.exists():
            shutil.rmtree(staging)
        entries = []
        for rel in [*sorted(sums), CHECKSUMS_FILE]:
            src, dst = root / rel, staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            digest = _io.sha256_file(dst)  # hash the copy: the index describes what was written
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
        _io.write_json_atomic(staging / INDEX_FILE, index)
        os.replace(staging, target)
        log.info("packed %d files (%d bytes) into %s", len(entries), index["total_bytes"], target)
    if archive:
        tar_path = out_dir / f"{name}.tar"
        if not tar_path.exists():
            with _io.atomic_path(tar_path) as tmp:
                _write_tar(tmp, target, name)
            log.info("archived %s", tar_path)
    return target


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
        if path.stat().st_size > MAX_INDEX_BYTES:
            raise ReleaseError(f"{path}: release index is larger than {MAX_INDEX_BYTES} bytes")
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{path}: cannot read the release index ({exc})") from exc
    validate_index(index, str(path))
    return index


# -- download -----------------------------------------------------------------------------
class _TooLarge(Exception):
    """Not a ``ValueError``: pooch must not retry a download that is larger than declared."""


class _CappedDownloader:
    """A pooch downloader (HTTP(S) via requests, or file://) that stops past ``limit`` bytes."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout

    def __call__(self, url: str, output_file: Any, pooch: Any = None, check_only: bool = False) -> Any:
        # pooch hands over a temporary path in the staging folder and renames it once hashed.
        with open(output_file, "wb") as out:
            for block in _stream(url, self.limit, self.timeout):
                out.write(block)


def _stream(url: str, limit: int, timeout: float):
    """Yield the bytes at ``url`` in blocks; ``_TooLarge`` once more than ``limit`` arrive."""
    received = 0
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        with open(urllib.parse.unquote(parsed.path), "rb") as handle:
            while block := handle.read(1 << 20):
                received += len(block)
                if received > limit:
                    raise _TooLarge(f"{url}: more than {limit} bytes")
                yield block
        return
    import requests

    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge(f"{url}: server declares {declared} bytes, expected at most {limit}")
        for block in response.iter_content(chunk_size=1 << 20):
            received += len(block)
            if received > limit:
                raise _TooLarge(f"{url}: more than {limit} bytes")
            yield block


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


def _download_index(index_url: str, timeout: float, retries: int) -> dict[str, Any]:
    import requests

    last: Exception | None = None
    for _attempt in range(retries + 1):
        try:
            data = b"".join(_stream(index_url, MAX_INDEX_BYTES, timeout))
            break
        except _TooLarge as exc:
            raise ReleaseError(f"{index_url}: release index is larger than {MAX_INDEX_BYTES} bytes") from exc
        except (requests.RequestException, OSError) as exc:
            last = exc
    else:
        raise ReleaseError(f"{index_url}: cannot download the release index ({last})") from last
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{index_url}: release index is not valid JSON ({exc})") from exc


def _staging_for(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.fetching"


def _file_ok(path: Path, entry: dict[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == entry["size"] and _io.sha256_file(path) == entry["sha256"]


def fetch(
    url: str,
    dest: str | os.PathLike,
    retries: int = 3,
    timeout: float = 60.0,
    overwrite: bool = False,
    check: bool = True,
    max_bytes: int = MAX_FILE_BYTES,
    progress: bool = False,
) -> Path:
    """Download the release at ``url`` (its folder URL or ``release.json`` URL) into ``dest``.

    Every file's size and sha256 is checked against the index; a failed file is retried
    ``retries`` times; files a previous interrupted fetch completed are kept. ``dest`` appears only
    once the whole set is downloaded and verified (``check`` also runs ``modelset.verify``).
    Returns ``dest``. Raises ``ReleaseError``/``ChecksumError`` (``ModelSetError``) on any problem.
    """
    import pooch
    import requests
    from tqdm.auto import tqdm

    from modelset.verify import verify

    dest = Path(dest).absolute()
    base, index_url = _split_url(url)
    index = _download_index(index_url, timeout, retries)
    entries = validate_index(index, index_url, max_bytes=max_bytes)
    total = sum(e["size"] for e in entries)
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
                    _fetch_one(store, rel, entry, base, timeout, pooch, requests)
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
        _fetch_one(store, HEADER_FILE, header_entry, base, timeout, pooch, requests)
        bar.update(header_entry["size"])
    if not _file_ok(staging / HEADER_FILE, header_entry):
        raise ChecksumError(f"{staging / HEADER_FILE}: size or sha256 differs from the index after download")
    _check_sums_agree(staging, entries, index_url)
    if check:
        verify(staging, checksums=False)  # sums were checked per file above; this reads the tensors
    if dest.exists():  # overwrite: move the old one aside first so that dest is never half-replaced
        old = dest.parent / f".{dest.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(staging, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, dest)
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


def _fetch_one(store: Any, rel: str, entry: dict[str, Any], base: str, timeout: float, pooch: Any, requests: Any) -> None:
    downloader = _CappedDownloader(entry["size"], timeout)
    try:
        store.fetch(rel, downloader=downloader)
    except _TooLarge as exc:
        raise ChecksumError(f"{base}{rel}: download is larger than the {entry['size']} bytes the index declares ({exc})") from exc
    except ValueError as exc:  # pooch: hash mismatch after every retry
        raise ChecksumError(
            f"{base}{rel}: sha256 differs from the index after {store.retry_if_failed + 1} attempts "
            f"(expected {entry['sha256']}); the server copy is damaged"
        ) from exc
    except (requests.RequestException, OSError) as exc:
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
