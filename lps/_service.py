"""The warm search service: ``modelset-lps serve`` keeps torch, an LPS, its calibration and a zoo's
index loaded and answers ``lps search`` over a Unix-domain socket, so a query costs the client's
start-up (no torch, no pandas) plus the query's embedding.

Safety: the socket lives in a private per-user folder (mode 0700; one owned by another user, or
open to others, is refused) and is itself mode 0600; the service answers only its own user (the
peer's uid, ``SO_PEERCRED``), so every checkpoint path it opens is one that user can read, with the
same safe loader as an in-process search. A request is one JSON object of at most
:data:`MAX_REQUEST` bytes read within :data:`REQUEST_TIMEOUT` seconds; a malformed one gets an
error reply and the service goes on. Before every search it checks that the set, the LPS, the
calibration and the index are still those it loaded (``lps.search.ZooSearch.stale``) and reloads
them if not. It exits after ``idle_minutes`` without a request, or on ``serve --stop``.

Protocol (one request per connection; the client closes its writing side, the service answers and
closes): ``{"op": "search", "zoo": DIR, "lps": DIR, "checkpoints": [PATH, ...], "k": 5,
"filters": {...}}`` → ``{"ok": true, "zoo", "lps", "name", "queries": [{"checkpoint", "hits",
"good_match", "notes"} | {"checkpoint", "error"}]}``; ``{"op": "ping"}``; ``{"op": "stop"}``.
Errors are ``{"ok": false, "error": MESSAGE}``; a request for another set or LPS gets
``{"ok": false, "mismatch": MESSAGE}`` (the client then searches in its own process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelset.errors import ModelSetError

log = logging.getLogger(__name__)

#: Largest request, in bytes (thousands of checkpoint paths).
MAX_REQUEST = 1 << 20
#: Largest reply the client reads, in bytes.
MAX_REPLY = 256 << 20
#: Seconds the service waits for a request's bytes.
REQUEST_TIMEOUT = 10.0
#: Seconds the client waits to connect, and for an answer (a reload may rebuild the index).
CONNECT_TIMEOUT = 2.0
ANSWER_TIMEOUT = 600.0
FILTERS = ("architecture", "variant", "task", "min_accuracy")


# -- where the socket is --------------------------------------------------------------------------
def runtime_dir() -> Path:
    """This user's private folder for service sockets: ``$XDG_RUNTIME_DIR/modelset-lps`` or
    ``/tmp/modelset-lps-UID``, created mode 0700. Raises ``ModelSetError`` if it exists but belongs
    to another user, is not a folder, or is open to others."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "modelset-lps" if base and os.path.isdir(base) else Path(tempfile.gettempdir()) / f"modelset-lps-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ModelSetError(f"{folder}: cannot create the search service folder ({exc.strerror})") from exc
    private_folder(folder)
    return folder


def private_folder(folder: Path) -> None:
    """Raise ``ModelSetError`` unless ``folder`` is a real folder of this user that only it can use."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ModelSetError(
            f"{folder}: not a private folder of this user (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}); "
            "the search service refuses it. Remove it, or set XDG_RUNTIME_DIR to a folder of your own"
        )


def default_socket(zoo: str | os.PathLike) -> Path:
    """The socket of the service for the set at ``zoo`` (one per set, named by its real path)."""
    name = hashlib.sha256(str(Path(zoo).resolve()).encode()).hexdigest()[:16]
    return runtime_dir() / f"search-{name}.sock"


def _own_socket(path: Path) -> bool:
    """True if ``path`` is a socket of this user; ``ModelSetError`` if it is another user's."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        raise ModelSetError(f"{path}: exists and is not a socket; remove it or give another --socket")
    if info.st_uid != os.getuid():
        raise ModelSetError(f"{path}: a socket owned by another user (uid {info.st_uid}); the search refuses it")
    return True


# -- client ---------------------------------------------------------------------------------------
def request(path: Path, message: Mapping[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any] | None:
    """Send one request to the service at ``path``: its reply, or None when no service listens."""
    if not _own_socket(path):
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(CONNECT_TIMEOUT)
        try:
            client.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket file left by a service that is gone
        client.settimeout(timeout)
        client.sendall(json.dumps(message).encode())
        client.shutdown(socket.SHUT_WR)
        data = _read(client, MAX_REPLY)
    except TimeoutError as exc:
        raise ModelSetError(f"{path}: the search service did not answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise ModelSetError(f"{path}: the search service failed to answer ({exc})") from exc
    finally:
        client.close()
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise ModelSetError(f"{path}: the search service sent a malformed answer ({exc})") from exc
    if not isinstance(reply, dict):
        raise ModelSetError(f"{path}: the search service sent a malformed answer")
    return reply


def search_via_service(
    zoo: str | os.PathLike, lps: Path, checkpoints: Sequence[Path], k: int, filters: Mapping[str, Any],
    socket_path: str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """The service's answer to a search, or None when no service for this set and LPS runs (the
    caller then searches in its own process). Raises ``ModelSetError`` for an error reply."""
    try:
        path = Path(socket_path) if socket_path is not None else default_socket(zoo)
        if not _own_socket(path):
            return None
    except ModelSetError as exc:  # a folder or socket that is not this user's alone: not used
        log.warning("%s; searching in this process", exc)
        return None
    message = {"op": "search", "zoo": str(Path(zoo).resolve()), "lps": str(Path(lps).resolve()),
               "checkpoints": [str(Path(p).resolve()) for p in checkpoints], "k": int(k), "filters": dict(filters)}  # fmt: skip
    reply = request(path, message)
    if reply is None:
        return None
    if "mismatch" in reply:
        log.info("the search service on %s does not serve this search (%s)", path, reply["mismatch"])
        return None
    if not reply.get("ok"):
        raise ModelSetError(str(reply.get("error", "the search service failed")))
    return reply


def stop(zoo: str | os.PathLike, socket_path: str | os.PathLike | None = None) -> Path | None:
    """Ask the service for ``zoo`` to exit: its socket path, or None if none was running."""
    path = Path(socket_path) if socket_path is not None else default_socket(zoo)
    reply = request(path, {"op": "stop"}, timeout=30.0)
    return path if reply is not None else None


# -- service --------------------------------------------------------------------------------------
def _read(conn: socket.socket, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = conn.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"more than {limit} bytes")
        chunks.append(chunk)


def _peer_uid(conn: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the socket's folder (0700) and mode (0600) alone keep others out
        return None
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid


class Service:
    """Answers search requests for one set with one LPS (:mod:`lps._service`)."""

    def __init__(self, zoo: str | os.PathLike, lps: str | os.PathLike | None = None) -> None:
        from lps.search import ZooSearch

        self.session = ZooSearch.load(zoo, lps)
        self.warm()
        self.zoo = Path(zoo).resolve()
        self.lps = self.session.folder.resolve()
        self.stopping = False

    def warm(self) -> None:
        """Build every zoo signature's shapes once: the first build of some (NSL layers on the meta
        device) imports parts of torch for seconds, which the first query would otherwise pay."""
        from modelset.shards import expected_shapes

        for arch, kwargs, _ in self.session.index.architectures().itertuples(index=False):
            expected_shapes(str(arch), str(kwargs))

    def handle(self, data: bytes) -> dict[str, Any]:
        """The reply to one request's bytes (never raises for bad input)."""
        try:
            message = json.loads(data)
        except ValueError as exc:
            return {"ok": False, "error": f"search service: the request is not JSON ({exc})"}
        if not isinstance(message, dict):
            return {"ok": False, "error": "search service: the request must be a JSON object"}
        op = message.get("op")
        if op == "ping":
            return {"ok": True, "zoo": str(self.zoo), "lps": str(self.lps), "pid": os.getpid()}
        if op == "stop":
            self.stopping = True
            return {"ok": True}
        if op != "search":
            return {"ok": False, "error": f"search service: unknown op {op!r:.40}; expected search, ping or stop"}
        try:
            return self.search(message)
        except ModelSetError as exc:
            return {"ok": False, "error": str(exc)}

    def search(self, message: Mapping[str, Any]) -> dict[str, Any]:
        from lps.search import ZooSearch, answer

        paths, k, filters = message.get("checkpoints"), message.get("k", 5), message.get("filters") or {}
        if not isinstance(paths, list) or not all(isinstance(p, str) and os.path.isabs(p) for p in paths) or not paths:
            raise ModelSetError("search service: 'checkpoints' must be a non-empty list of absolute paths")
        if type(k) is not int or k < 1:
            raise ModelSetError(f"-k must be at least 1, got {k!r:.40}")
        if not isinstance(filters, dict) or set(filters) - set(FILTERS):
            raise ModelSetError(f"search service: 'filters' may only name {', '.join(FILTERS)}")
        for name, value in filters.items():
            if value is not None and not isinstance(value, float if name == "min_accuracy" else str):
                if not (name == "min_accuracy" and type(value) is int):
                    raise ModelSetError(f"search service: filter {name} has a value of type {type(value).__name__}")
        for name, served in (("zoo", self.zoo), ("lps", self.lps)):
            asked = message.get(name)
            if not isinstance(asked, str) or Path(asked).resolve() != served:
                return {"ok": False, "mismatch": f"it serves {name} {served}, not {asked!r:.300}"}
        changed = self.session.stale()
        if changed:
            log.warning("%s changed since loading: reloading", changed)
            self.session = ZooSearch.load(self.zoo, self.lps)
            self.warm()
        queries = answer(self.session, [(Path(p), None) for p in paths], k=k, **filters)
        return {"ok": True, "zoo": str(self.session.zoo), "lps": str(self.session.folder),
                "name": str(self.session.index.name), "queries": queries}  # fmt: skip

    def run(self, path: Path, idle_minutes: float = 30.0, ready: Any = None) -> None:
        """Listen on ``path`` until stopped or idle for ``idle_minutes``; the socket is removed after."""
        path.parent.mkdir(parents=True, exist_ok=True)  # the default folder is made private by default_socket
        if _own_socket(path):
            if request(path, {"op": "ping"}, timeout=10.0) is not None:
                raise ModelSetError(f"{path}: a search service already answers there; stop it with `serve --stop`")
            path.unlink()  # left by a service that is gone
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is created mode 0600
        try:
            server.bind(str(path))
        finally:
            os.umask(old)
        inode = os.lstat(path).st_ino
        idle = max(1.0, idle_minutes * 60.0)
        server.listen(16)
        server.settimeout(min(idle, 30.0))
        last = time.monotonic()
        if ready is not None:
            ready(path)
        try:
            while not self.stopping:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    if time.monotonic() - last >= idle:
                        log.warning("search service idle for %.0f min: exiting", idle_minutes)
                        break
                    continue
                last = time.monotonic()
                with conn:
                    self._serve_one(conn)
        finally:
            server.close()
            try:
                if os.lstat(path).st_ino == inode:
                    path.unlink()
            except FileNotFoundError:
                pass

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            uid = _peer_uid(conn)
            if uid is not None and uid != os.getuid():
                reply: dict[str, Any] = {"ok": False, "error": "search service: it answers only the user that started it"}
            else:
                conn.settimeout(REQUEST_TIMEOUT)
                try:
                    data = _read(conn, MAX_REQUEST)
                except ValueError:
                    data, reply = b"", {"ok": False, "error": f"search service: request larger than {MAX_REQUEST} bytes"}
                else:
                    reply = self.handle(data)
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(json.dumps(reply).encode())
        except OSError as exc:  # a client gone or too slow: the service goes on
            log.warning("search service: a request failed (%s)", exc)
        except Exception:  # a bug must not take the service down for everyone's next query
            log.exception("search service: a request failed")
            try:
                conn.sendall(json.dumps({"ok": False, "error": "search service: internal error (see its log)"}).encode())
            except OSError:
                pass
