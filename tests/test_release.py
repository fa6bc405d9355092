"""Releases: pack a set, serve it on 127.0.0.1, fetch it back (retry, resume, bad indexes)."""

from __future__ import annotations

import functools
import http.server
import json
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import modelset
from modelset.errors import ChecksumError, ExistsError, ModelSetError, NotAModelSetError
from modelset.release import INDEX_FILE, ReleaseError, fetch, pack, validate_index
from modelset.synthetic import write_synthetic


class ReleaseServer:
    """A static file server on 127.0.0.1 that logs requests and can inject faults per path."""

    def __init__(self, root: Path) -> None:
        self.requests: Counter[str] = Counter()
        self.fail_first: set[str] = set()  # answer 500 once, then serve normally
        self.corrupt: set[str] = set()  # serve flipped bytes, always
        self.oversize: set[str] = set()  # serve the file plus extra bytes
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                rel = self.path.lstrip("/").split("/", 1)[-1]
                server.requests[rel] += 1
                if rel in server.fail_first:
                    server.fail_first.discard(rel)
                    self.send_error(500, "injected failure")
                    return
                if rel in server.corrupt or rel in server.oversize:
                    data = bytearray((root / self.path.lstrip("/")).read_bytes())
                    if rel in server.corrupt:
                        data[len(data) // 2] ^= 0xFF
                    else:
                        data += b"x" * 4096
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(bytes(data))
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReleaseServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("set") / "syn", 12, n_tasks=3, models_per_shard=4, seed=3)


@pytest.fixture(scope="module")
def release(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(built, tmp_path_factory.mktemp("dist"))


@pytest.fixture()
def server(release: Path) -> Iterator[ReleaseServer]:
    with ReleaseServer(release.parent) as srv:
        yield srv


def _url(server: ReleaseServer, release: Path) -> str:
    return f"{server.url}/{release.name}/"


def test_pack_writes_versioned_folder_index_and_archive(built: Path, release: Path) -> None:
    assert release.name.startswith("synthetic-12-v1-") and len(release.name.rsplit("-", 1)[1]) == 12
    index = json.loads((release / INDEX_FILE).read_text())
    paths = {e["path"] for e in index["files"]}
    assert {"modelset.json", "models.parquet", "tasks.parquet", "README.md", "SHA256SUMS"} <= paths
    assert {"shards/shard-00000.h5", "shards/shard-00002.h5", "relations/same_task.csv"} <= paths
    for entry in index["files"]:
        assert (release / entry["path"]).stat().st_size == entry["size"]
        assert (release / entry["path"]).read_bytes() == (built / entry["path"]).read_bytes()
    assert index["models"] == 12 and index["schema_version"] == 1
    with tarfile.open(release.parent / f"{release.name}.tar") as tar:
        names = set(tar.getnames())
    assert f"{release.name}/{INDEX_FILE}" in names and f"{release.name}/shards/shard-00001.h5" in names
    assert pack(built, release.parent) == release  # idempotent: same content, same release


def test_pack_refuses_incomplete_set(tmp_path: Path) -> None:
    from modelset.writer import ModelSetWriter

    with ModelSetWriter.open(tmp_path / "partial", name="partial", config={}):
        pass
    with pytest.raises(ModelSetError, match="not complete"):
        pack(tmp_path / "partial", tmp_path / "dist", check=False)


def test_pack_cli(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelset.cli import main

    assert main(["pack", "--zoo", str(built), "--out", str(tmp_path / "dist")]) == 0
    assert "release written to" in capsys.readouterr().out
    assert len(list((tmp_path / "dist").glob("*.tar"))) == 1


def test_fetch_roundtrip_over_http(built: Path, release: Path, server: ReleaseServer, tmp_path: Path) -> None:
    dest = modelset.fetch(_url(server, release), tmp_path / "got")
    assert modelset.verify(dest)["models"] == 12
    with modelset.open(built) as a, modelset.open(dest) as b:
        assert list(a.metadata.index) == list(b.metadata.index)
        for key, value in a.stacked(list(a.metadata.index)).items():
            assert torch.equal(value, b.stacked(list(a.metadata.index))[key])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got"]  # no staging left behind
    # Fetching again is a no-op that only reads the index.
    before = sum(server.requests.values())
    fetch(_url(server, release), dest)
    assert sum(server.requests.values()) == before + 1


def test_fetch_retries_a_failed_file(release: Path, server: ReleaseServer, tmp_path: Path) -> None:
    server.fail_first.add("shards/shard-00001.h5")
    dest = fetch(f"{_url(server, release)}{INDEX_FILE}", tmp_path / "got", retries=1)
    assert server.requests["shards/shard-00001.h5"] == 2
    assert modelset.verify(dest)["models"] == 12


def test_fetch_resumes_and_never_leaves_a_valid_partial_set(
    release: Path, server: ReleaseServer, tmp_path: Path
) -> None:
    bad = "shards/shard-00001.h5"
    server.corrupt.add(bad)
    dest = tmp_path / "got"
    with pytest.raises(ChecksumError, match="shard-00001.h5"):
        fetch(_url(server, release), dest, retries=0)
    assert not dest.exists()
    staging = tmp_path / ".got.fetching"
    assert (staging / "shards/shard-00000.h5").exists() and not (staging / bad).exists()
    with pytest.raises(NotAModelSetError):  # the header comes last: a partial set does not open
        modelset.open(staging)
    server.corrupt.clear()
    server.requests.clear()
    fetch(_url(server, release), dest)
    # Only the missing shard and the header are downloaded again (plus the index).
    assert set(server.requests) == {INDEX_FILE, bad, "modelset.json"}
    assert modelset.verify(dest)["models"] == 12 and not staging.exists()


def test_fetch_rejects_download_larger_than_declared(release: Path, server: ReleaseServer, tmp_path: Path) -> None:
    server.oversize.add("tasks.parquet")
    with pytest.raises(ChecksumError, match="larger than"):
        fetch(_url(server, release), tmp_path / "got", retries=0)
    assert not (tmp_path / "got").exists()


def test_fetch_refuses_to_replace_other_content(release: Path, server: ReleaseServer, tmp_path: Path) -> None:
    (tmp_path / "got").mkdir()
    (tmp_path / "got" / "mine.txt").write_text("keep me")
    with pytest.raises(ExistsError):
        fetch(_url(server, release), tmp_path / "got")
    assert (tmp_path / "got" / "mine.txt").read_text() == "keep me"
    fetch(_url(server, release), tmp_path / "got", overwrite=True)
    assert not (tmp_path / "got" / "mine.txt").exists() and modelset.verify(tmp_path / "got")


def _mutated_index(release: Path, mutate) -> dict:
    index = json.loads((release / INDEX_FILE).read_text())
    mutate(index)
    return index


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda ix: ix["files"][0].update(path="../escape.txt"), "unsafe"),
        (lambda ix: ix["files"][0].update(path="/etc/passwd"), "unsafe"),
        (lambda ix: ix["files"][0].update(path="shards/../../x"), "unsafe"),
        (lambda ix: ix["files"][0].update(size=10**30), "more than the limit"),
        (lambda ix: ix["files"][0].update(size="12"), "non-negative integer"),
        (lambda ix: ix["files"][0].update(sha256="zz"), "64 lowercase hex"),
        (lambda ix: ix["files"][0].pop("sha256"), "lacks keys"),
        (lambda ix: ix.pop("files"), "lacks required keys"),
        (lambda ix: ix.update(files={"a": 1}), "non-empty list"),
        (lambda ix: ix["files"].append(dict(ix["files"][0])), "listed twice"),
        (lambda ix: ix.update(format="zip"), "format"),
    ],
)
def test_fetch_rejects_bad_index(release: Path, tmp_path: Path, mutate, message: str) -> None:
    index = _mutated_index(release, mutate)
    with pytest.raises(ReleaseError, match=message):
        validate_index(index, "index")
    # The same index served over HTTP: refused before anything is written.
    served = tmp_path / "served" / "rel"
    served.mkdir(parents=True)
    (served / INDEX_FILE).write_text(json.dumps(index))
    with ReleaseServer(tmp_path / "served") as srv:
        with pytest.raises(ReleaseError, match=message):
            fetch(f"{srv.url}/rel/", tmp_path / "out" / "got")
    assert not (tmp_path / "out" / "got").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out" / "escape.txt").exists()


def test_fetch_ignores_links_planted_in_the_staging_folder(release: Path, server: ReleaseServer, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shard-00000.h5").write_text("not yours")
    staging = tmp_path / "dl" / ".got.fetching"
    staging.mkdir(parents=True)
    (staging / "shards").symlink_to(outside, target_is_directory=True)
    dest = fetch(_url(server, release), tmp_path / "dl" / "got")
    assert (outside / "shard-00000.h5").read_text() == "not yours" and len(list(outside.iterdir())) == 1
    assert not (dest / "shards").is_symlink() and modelset.verify(dest)["models"] == 12


def test_pack_refuses_a_set_being_written(built: Path, tmp_path: Path) -> None:
    from modelset.errors import LockedError
    from modelset.writer import ModelSetWriter

    copy = tmp_path / "set"
    import shutil

    shutil.copytree(built, copy)
    header = json.loads((copy / "modelset.json").read_text())
    with ModelSetWriter.open(copy, name=header["name"], config=header["config"]):
        with pytest.raises(LockedError, match="being written"):
            pack(copy, tmp_path / "dist")
    assert pack(copy, tmp_path / "dist").name.startswith("synthetic-12-v1-")
