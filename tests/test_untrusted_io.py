"""No hangs and no debris: a slow-drip server cannot keep ``fetch`` alive past its deadlines, a full
disk is a ``DiskFullError`` that says how much space is needed and leaves nothing half-written, and
a killed ``pack`` leaves nothing that the next ``pack`` does not remove."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import modelset
from modelset.errors import DiskFullError
from modelset.release import INDEX_FILE, FetchTimeoutError, fetch, pack
from modelset.synthetic import write_synthetic
from modelset.writer import ModelRecord, ModelSetWriter

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("small") / "set", 4, n_tasks=2, models_per_shard=2, seed=2)


@pytest.fixture(scope="module")
def release(small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(small, tmp_path_factory.mktemp("dist"), archive=False)


# -- 4. no hangs --------------------------------------------------------------------------
class DripServer:
    """HTTP on 127.0.0.1 serving ``root``; files named in ``slow`` are sent one byte every
    ``interval`` seconds (at most ``budget`` seconds per connection, so the test always ends)."""

    def __init__(self, root: Path, slow: set[str], interval: float = 0.05, budget: float = 20.0) -> None:
        self.root, self.slow, self.interval, self.budget = root, slow, interval, budget
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            request = conn.recv(65536).decode("latin-1")
            rel = request.split(" ")[1].lstrip("/")
            path = self.root / rel
            if not path.is_file():
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            data = path.read_bytes()
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode())
            if rel.split("/", 1)[-1] not in self.slow:
                conn.sendall(data)
                return
            end = time.monotonic() + self.budget
            for byte in data:
                if self.stop.is_set() or time.monotonic() > end:
                    return
                conn.sendall(bytes([byte]))
                time.sleep(self.interval)

    def __enter__(self) -> DripServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("which", ["file", "release"])
def test_slow_drip_server_hits_the_deadline(release: Path, tmp_path: Path, which: str) -> None:
    """Each byte arrives well within the 5 s read timeout, so only a deadline can stop it."""
    with DripServer(release.parent, slow={"shards/shard-00000.h5"}) as server:
        limits = {"file_deadline": 1.0} if which == "file" else {"deadline": 1.5}
        started = time.monotonic()
        with pytest.raises(FetchTimeoutError, match="shard-00000.h5: the download of .* did not finish within") as info:
            fetch(f"{server.url}/{release.name}/", tmp_path / "got", retries=2, timeout=5.0, **limits)
        elapsed = time.monotonic() - started
    assert ("per-file deadline" if which == "file" else "whole fetch") in str(info.value)
    assert elapsed < 10.0, elapsed  # deadline plus local work, never the drip's 20 s
    assert not (tmp_path / "got").exists()
    # The files that did arrive are kept: a fetch with time enough resumes.
    with DripServer(release.parent, slow=set()) as server:
        got = fetch(f"{server.url}/{release.name}/", tmp_path / "got", retries=0)
    assert modelset.verify(got)["models"] == 4


def test_stalled_server_is_cut_at_the_deadline(release: Path, tmp_path: Path) -> None:
    """A server that sends nothing after its headers: the read is cut at the deadline, not after
    the (long) read timeout."""
    with DripServer(release.parent, slow={"shards/shard-00001.h5"}, interval=30.0) as server:
        started = time.monotonic()
        with pytest.raises(FetchTimeoutError):
            fetch(f"{server.url}/{release.name}/", tmp_path / "got", retries=0, timeout=30.0, file_deadline=1.0)
        assert time.monotonic() - started < 10.0


def test_fetch_cli_takes_deadlines(release: Path, tmp_path: Path, capsys) -> None:
    from modelset.cli import main

    with DripServer(release.parent, slow={"shards/shard-00000.h5"}) as server:
        code = main(["fetch", f"{server.url}/{release.name}/", "--zoo", str(tmp_path / "got"), "--retries", "0",
                     "--file-deadline", "0.5"])  # fmt: skip
    assert code == 2 and "did not finish within its per-file deadline of 0 s" in capsys.readouterr().err


def test_fifo_in_a_release_folder_does_not_hang(release: Path, tmp_path: Path) -> None:
    import shutil

    served = tmp_path / "served"
    shutil.copytree(release, served)
    (served / "tasks.parquet").unlink()
    os.mkfifo(served / "tasks.parquet")
    with pytest.raises(modelset.ModelSetError, match="FIFO"):
        fetch(str(served), tmp_path / "got", retries=0)


@pytest.mark.parametrize("tail", ['"x": ' + "[" * 100_000 + "]" * 100_000, '"x": ' + "7" * 5000])
def test_deep_or_huge_number_release_index(release: Path, tmp_path: Path, tail: str) -> None:
    import shutil

    from modelset.release import ReleaseError

    served = tmp_path / "served"
    shutil.copytree(release, served)
    text = (served / INDEX_FILE).read_text().rstrip().rstrip("}") + ", " + tail + "}"
    (served / INDEX_FILE).write_text(text)
    with pytest.raises(ReleaseError, match=r"release.json: (JSON is nested more than 64|not valid JSON \(an integer of 5000 digits)"):
        fetch(str(served), tmp_path / "got", retries=0)
    with DripServer(served.parent, slow=set()) as server, pytest.raises(ReleaseError, match="release.json"):
        fetch(f"{server.url}/served/", tmp_path / "got", retries=0)
    assert not (tmp_path / "got").exists()


# -- 5. full disk -------------------------------------------------------------------------
@pytest.fixture()
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full-disk test needs root to mount a small tmpfs")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _records(n: int, width: int, start: int = 0) -> list[ModelRecord]:
    from modelset.architectures import build_architecture

    kwargs = {"num_classes": 5, "channels": [width, width, width]}
    state = build_architecture("cnn3", kwargs).state_dict()
    row = {"task": "t0", "dataset": "toy", "variant": "base", "parent_id": "", "seed": 0}
    return [ModelRecord(f"m{start + i:04d}", "cnn3", kwargs, {"final": state}, dict(row, seed=i)) for i in range(n)]


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system until ``leave`` bytes are free."""
    import shutil

    free = shutil.disk_usage(folder).free
    if free > leave:
        (folder / "ballast").write_bytes(b"\0" * (free - leave))


def test_full_disk_while_writing_a_shard(tiny_disk: Path) -> None:
    """A 2.4 MB shard on a 2 MiB disk: refused up front with the space needed (HDF5 never meets
    the full disk, so it cannot crash), and the set stays as it was."""
    root = tiny_disk / "set"
    with ModelSetWriter.open(root, name="toy", config={}) as writer:
        writer.write_shard(_records(2, 8))
        before = sorted(p.name for p in root.rglob("*"))
        with pytest.raises(DiskFullError, match=r"shard 'shards/shard-00001.h5' needs .* \(\d+ bytes\) of disk space"):
            writer.write_shard(_records(4, 128, start=10))  # 4 × ~150k params × 4 bytes
        assert sorted(p.name for p in root.rglob("*")) == before
    with modelset.open(root) as ms:
        assert len(ms) == 2 and ms.state_dict("m0000")["head.bias"].shape == (5,)


def test_enospc_during_the_table_commit_removes_the_uncommitted_shard(tiny_disk: Path, monkeypatch) -> None:
    """The free-space check passes, then the disk fills up (another process): the table write
    fails with ENOSPC; the staging file and the uncommitted shard are removed."""
    from modelset import _atomic

    root = tiny_disk / "set"
    with ModelSetWriter.open(root, name="toy", config={}) as writer:
        writer.write_shard(_records(2, 8))
        real = _atomic.atomic_path
        fill = {"armed": True}

        @contextlib.contextmanager
        def filling(path):
            with real(path) as tmp:
                if fill["armed"] and Path(path).name == "models.parquet":
                    fill["armed"] = False
                    _fill(tiny_disk, 0)
                yield tmp

        monkeypatch.setattr(_atomic, "atomic_path", filling)
        with pytest.raises(DiskFullError, match="the disk filled up while writing the model table .* needs about"):
            writer.write_shard(_records(2, 8, start=10))
        (tiny_disk / "ballast").unlink()
        assert sorted(p.name for p in (root / "shards").iterdir()) == ["shard-00000.h5"]
        assert not [p for p in root.rglob(".tmp-*")]
        assert len(pd.read_parquet(root / "models.parquet")) == 2


def test_full_disk_while_packing(small: Path, tiny_disk: Path) -> None:
    _fill(tiny_disk, 64 << 10)
    with pytest.raises(DiskFullError, match=r"packing .* needs .* of disk space, only .* are free"):
        pack(small, tiny_disk / "dist")
    assert [p.name for p in (tiny_disk / "dist").iterdir()] == [".pack.lock"]


def test_enospc_in_the_middle_of_pack_cleans_its_staging(small: Path, tiny_disk: Path, monkeypatch) -> None:
    import shutil

    from modelset import release as release_module

    real_copy = shutil.copyfile
    copies = {"n": 0}

    def copy_then_fill(src, dst, *args, **kwargs):
        copies["n"] += 1
        if copies["n"] == 3:
            _fill(tiny_disk, 0)
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(release_module.shutil, "copyfile", copy_then_fill)
    with pytest.raises(DiskFullError, match="the disk filled up while writing release .* needs about"):
        pack(small, tiny_disk / "dist")
    assert [p.name for p in (tiny_disk / "dist").iterdir()] == [".pack.lock"]


def test_killed_pack_leaves_nothing_the_next_pack_keeps(small: Path, tmp_path: Path) -> None:
    """SIGKILL in the middle of writing the archive (and, before that, of copying the folder):
    the next pack removes the debris and writes a complete release."""
    out = tmp_path / "dist"
    script = (
        "import os, signal, sys\n"
        "from modelset import release\n"
        "stage = sys.argv[3]\n"
        "if stage == 'copy':\n"
        "    real = release.shutil.copyfile\n"
        "    def copy(src, dst, *a, **k):\n"
        "        real(src, dst, *a, **k)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    release.shutil.copyfile = copy\n"
        "else:\n"
        "    def tar(path, folder, name):\n"
        "        path.write_bytes(b'partial archive')\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    release._write_tar = tar\n"
        "release.pack(sys.argv[1], sys.argv[2])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for stage in ("copy", "tar"):
        done = subprocess.run([sys.executable, "-c", script, str(small), str(out), stage], env=env, timeout=120)
        assert done.returncode == -9
        assert [p for p in out.iterdir() if p.name.startswith(".tmp-")], f"the {stage} kill left no debris to test"
    target = pack(small, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([".pack.lock", target.name, f"{target.name}.tar"])
    assert modelset.verify(target)["models"] == 4
    import tarfile

    with tarfile.open(out / f"{target.name}.tar") as tar:
        assert f"{target.name}/{INDEX_FILE}" in tar.getnames()


def test_writes_say_how_much_space_they_need(tmp_path: Path, monkeypatch) -> None:
    """Without a small disk: the check itself, with the free space reported as 1 KiB."""
    import shutil

    from modelset import _atomic

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(_atomic.shutil, "disk_usage", lambda p: usage._replace(free=1024))
    with pytest.raises(DiskFullError, match=r"needs 9.8 KiB \(10000 bytes\) of disk space, only 1.0 KiB are free"):
        _atomic.write_bytes_atomic(tmp_path / "x.bin", np.zeros(10000, "u1").tobytes())
    assert list(tmp_path.iterdir()) == []
