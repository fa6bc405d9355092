"""The warm search service: same answers as a search in the process, reloads a stale index,
survives bad requests, refuses other users' sockets; the client falls back when none runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file

import lps
from lps import _service
from lps.__main__ import main
from lps.index import INDEX_TENSORS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(mini_set, tmp_path_factory):
    """A service on the mini set (its own LPS and index in a temporary folder), in a subprocess."""
    ms = mini_set
    root = tmp_path_factory.mktemp("svc")
    folder = root / "lps" / "search"
    lps.train(ms, train_ids=list(ms.metadata.index), epochs=3, seed=0).save(folder)
    sock = root / "s.sock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lps", "serve", "--zoo", str(ms.root), "--lps", str(folder),
                             "--socket", str(sock), "--idle-minutes", "5", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    deadline = time.monotonic() + 60
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the service did not start: {proc.communicate()[1].decode()[-2000:]}")
        time.sleep(0.1)
    yield ms, folder, sock, proc
    if proc.poll() is None:
        _service.request(sock, {"op": "stop"})
        proc.wait(timeout=30)
    assert not sock.exists()


def _query(ms, tmp_path) -> Path:
    path = tmp_path / "q.safetensors"
    save_file(ms.state_dict(ms.metadata.index[2]), str(path))
    return path


def _search(ms, folder, sock, query, *extra: str) -> list[str]:
    return ["search", str(query), "--zoo", str(ms.root), "--lps", str(folder), "--socket", str(sock), "-k", "4", *extra]


def test_the_service_answers_as_the_process_does(served, tmp_path, capsys, monkeypatch) -> None:
    ms, folder, sock, _ = served
    query = _query(ms, tmp_path)
    for fmt in ("--json", "--csv", None):
        extra = [fmt] if fmt else []
        assert main(_search(ms, folder, sock, query, *extra)) == 0
        through_service = capsys.readouterr().out
        assert main(_search(ms, folder, sock, query, *extra, "--no-service")) == 0
        assert through_service == capsys.readouterr().out
    assert main(_search(ms, folder, sock, query, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["model_id"] == ms.metadata.index[2]
    # Relative paths are the client's, and printed as given.
    monkeypatch.chdir(tmp_path)
    assert main(_search(ms, folder, sock, Path(query.name))) == 0
    through_service = capsys.readouterr().out
    assert main(_search(ms, folder, sock, Path(query.name), "--no-service")) == 0
    assert through_service == capsys.readouterr().out and f"to {query.name} (LPS" in through_service
    # The client imports neither torch nor pandas.
    code = ("import sys, lps.__main__ as m; s = m.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'heavy import'; sys.exit(s)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, *_search(ms, folder, sock, query, "--json")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hits"][0]["model_id"] == ms.metadata.index[2]


def test_bad_requests_get_an_error_and_the_service_survives(served, tmp_path) -> None:
    ms, folder, sock, proc = served
    for payload in (b"{not json", b"[1, 2]", json.dumps({"op": "search", "checkpoints": ["relative.pt"]}).encode(),
                    json.dumps({"op": "dance"}).encode(), b"x" * (_service.MAX_REQUEST + 10)):  # fmt: skip
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(sock))
            try:
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
            except BrokenPipeError:  # the oversized request is cut short by the reply
                pass
            reply = json.loads(client.makefile("rb").read())
        assert reply["ok"] is False and reply["error"]
    assert _service.request(sock, {"op": "ping"})["pid"] == proc.pid
    # An unreadable checkpoint is one failed query, not a failed service.
    message = {"op": "search", "zoo": str(ms.root), "lps": str(folder), "checkpoints": [str(tmp_path / "none.pt")], "k": 2}
    reply = _service.request(sock, message)
    assert reply["ok"] and "no such checkpoint file" in reply["queries"][0]["error"]


def test_a_stale_index_is_reloaded(served, tmp_path, capsys) -> None:
    ms, folder, sock, proc = served
    query = _query(ms, tmp_path)
    assert main(_search(ms, folder, sock, query, "--json")) == 0
    before = capsys.readouterr().out
    # Retrained LPS weights: the service sees the digest change, reloads (rebuilding the index).
    lps.train(ms, train_ids=list(ms.metadata.index), epochs=3, seed=5).save(folder)
    stamp = (folder / INDEX_TENSORS).stat().st_mtime_ns
    assert main(_search(ms, folder, sock, query, "--json")) == 0
    after = capsys.readouterr().out
    assert after != before and (folder / INDEX_TENSORS).stat().st_mtime_ns != stamp
    assert main(_search(ms, folder, sock, query, "--json", "--no-service")) == 0
    assert capsys.readouterr().out == after and proc.poll() is None


def test_without_a_service_the_search_runs_here(mini_set, served, tmp_path, capsys, caplog) -> None:
    ms, folder, _, _ = served
    query = _query(ms, tmp_path)
    with caplog.at_level(logging.INFO, logger="lps.search"):
        assert main(_search(ms, folder, tmp_path / "none.sock", query, "--json")) == 0
    assert "no search service" in caplog.text and "serve --zoo" in caplog.text
    assert json.loads(capsys.readouterr().out)["hits"][0]["model_id"] == ms.metadata.index[2]
    # A service for another LPS does not answer: the search runs here.
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lps"):
        assert main(_search(ms, other, served[2], query, "--json")) == 0
    assert "does not serve this search" in caplog.text and json.loads(capsys.readouterr().out)["lps"] == str(other)


def test_the_socket_folder_is_private(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = _service.runtime_dir()
    assert folder == tmp_path / "modelset-lps" and (folder.stat().st_mode & 0o777) == 0o700
    sock = _service.default_socket(tmp_path / "zoo")
    assert sock.parent == folder and sock.name.startswith("search-")
    folder.chmod(0o755)
    with pytest.raises(_service.ModelSetError, match="not a private folder"):
        _service.runtime_dir()
    (tmp_path / "plain").write_text("")
    with pytest.raises(_service.ModelSetError, match="is not a socket"):
        _service.request(tmp_path / "plain", {"op": "ping"})
    # A search does not use a folder or socket it refuses: it runs in its own process.
    assert _service.search_via_service(tmp_path / "zoo", tmp_path, [tmp_path / "q.pt"], 3, {}) is None
    assert _service.search_via_service(tmp_path / "zoo", tmp_path, [tmp_path / "q.pt"], 3, {}, tmp_path / "plain") is None


def test_idle_exit_and_one_service_per_socket(served, tmp_path) -> None:
    ms, folder, sock, _ = served
    service = _service.Service(ms.root, folder)
    with pytest.raises(_service.ModelSetError, match="already answers there"):
        service.run(sock)
    # Idle for its idle time (here 1 s, the least): it exits and removes its socket.
    mine = tmp_path / "idle.sock"
    started = time.monotonic()
    service.run(mine, idle_minutes=0.0, ready=lambda path: path.exists() or pytest.fail("no socket"))
    assert 0.9 < time.monotonic() - started < 30 and not mine.exists()
