"""A model set is untrusted input. Sets tampered as an attacker would (SHA256SUMS recomputed after
the change, so checksums do not help) must be refused with a ``ModelSetError`` naming the file:
nothing outside the set is read, no small file costs a large allocation, nothing hangs."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import modelset
from modelset import _untrusted
from modelset.errors import ModelSetError, SchemaError, UnsafeFileError
from modelset.release import pack
from modelset.synthetic import write_synthetic
from modelset.writer import write_checksums

SHARD = "shards/shard-00000.h5"
TENSOR = "blocks/00000/checkpoints/final/conv1.bias"  # (4 models, 16) float32


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("base") / "set", 8, n_tasks=2, models_per_shard=4, seed=1,
                           checkpoints=("init", "final"))  # fmt: skip


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A file outside the set that a crafted shard tries to read (stands in for a system file)."""
    path = tmp_path / "secret.bin"
    path.write_bytes(np.full(64, 7.25, dtype="f4").tobytes() * 4)
    return path


def tampered(base: Path, tmp_path: Path, change: Callable[[h5py.File], None], shard: str = SHARD) -> Path:
    """A copy of ``base`` with ``change`` applied to a shard and every checksum recomputed."""
    path = tmp_path / "set"
    shutil.copytree(base, path)
    with h5py.File(path / shard, "r+") as h5:
        change(h5)
    write_checksums(path, rehash_shards=True)
    return path


def replace(h5: h5py.File, name: str, **kwargs) -> None:
    del h5[name]
    h5.create_dataset(name, **kwargs)


def all_refused(path: Path, expect: type[ModelSetError], *words: str) -> None:
    """Every way of reading the tampered tensor, verify and pack refuse with ``expect``."""
    with modelset.open(path) as ms:
        mid = ms.metadata.index[0]
        attempts = [lambda: ms.state_dict(mid), lambda: ms.model(mid), lambda: ms.stacked(list(ms.metadata.index[:4]))]
        for attempt in attempts:
            with pytest.raises(expect) as info:
                attempt()
            message = str(info.value)
            assert SHARD in message.replace(os.sep, "/"), message
            for word in words:
                assert word in message, message
    with pytest.raises(expect):
        modelset.verify(path)
    with pytest.raises(expect):
        pack(path, path.parent / "dist", archive=False)
    dist = path.parent / "dist"
    assert not dist.exists() or [p.name for p in dist.iterdir()] == [".pack.lock"]


# -- 1. a closed reader -------------------------------------------------------------------
def test_external_storage_is_refused(base: Path, tmp_path: Path, secret: Path) -> None:
    def change(h5: h5py.File) -> None:
        replace(h5, TENSOR, shape=(4, 16), dtype="f4", external=[(str(secret), 0, 256)])

    path = tampered(base, tmp_path, change)
    all_refused(path, UnsafeFileError, "conv1.bias", "external storage")


def test_relative_external_storage_is_refused(base: Path, tmp_path: Path, secret: Path, monkeypatch) -> None:
    monkeypatch.chdir(secret.parent)  # a relative external path resolves against the working folder

    def change(h5: h5py.File) -> None:
        replace(h5, TENSOR, shape=(4, 16), dtype="f4", external=[(secret.name, 0, 256)])

    all_refused(tampered(base, tmp_path, change), UnsafeFileError, "external storage")


def test_external_link_is_refused(base: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["x"] = np.full((4, 16), 7.25, dtype="f4")

    def change(h5: h5py.File) -> None:
        del h5[TENSOR]
        h5[TENSOR] = h5py.ExternalLink(str(other), "/x")

    all_refused(tampered(base, tmp_path, change), UnsafeFileError, "external link")


def test_soft_link_and_second_hard_link_are_refused(base: Path, tmp_path: Path) -> None:
    def soft(h5: h5py.File) -> None:
        del h5[TENSOR]
        h5[TENSOR] = h5py.SoftLink("/blocks/00000/checkpoints/init/conv1.bias")

    all_refused(tampered(base, tmp_path / "soft", soft), UnsafeFileError, "soft link")

    def hard(h5: h5py.File) -> None:
        del h5[TENSOR]
        h5[TENSOR] = h5["blocks/00000/checkpoints/init/conv1.bias"]

    all_refused(tampered(base, tmp_path / "hard", hard), UnsafeFileError, "second name")


@pytest.mark.parametrize("source_exists", [True, False])
def test_virtual_dataset_is_refused(base: Path, tmp_path: Path, source_exists: bool) -> None:
    source = tmp_path / "source.h5"
    if source_exists:
        with h5py.File(source, "w") as h5:
            h5["x"] = np.full((4, 16), 7.25, dtype="f4")

    def change(h5: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(4, 16), dtype="f4")
        layout[:] = h5py.VirtualSource(str(source), "x", shape=(4, 16))
        del h5[TENSOR]
        h5.create_virtual_dataset(TENSOR, layout, fillvalue=0)

    all_refused(tampered(base, tmp_path, change), UnsafeFileError, "virtual dataset")


@pytest.mark.parametrize("kind", ["contiguous", "no-checksum", "gzip", "unwritten-chunks"])
def test_layouts_and_filters_outside_the_format_are_refused(base: Path, tmp_path: Path, kind: str) -> None:
    def change(h5: h5py.File) -> None:
        data = h5[TENSOR][()]
        if kind == "contiguous":
            replace(h5, TENSOR, data=data)
        elif kind == "no-checksum":
            replace(h5, TENSOR, data=data, chunks=(4, 16))
        elif kind == "gzip":
            replace(h5, TENSOR, data=data, chunks=(4, 16), fletcher32=True, compression="gzip")
        else:
            replace(h5, TENSOR, shape=data.shape, dtype="f4", chunks=(1, 16), fletcher32=True)
            h5[TENSOR][0] = data[0]  # three of four chunks never written (would read as zeros)

    all_refused(tampered(base, tmp_path, change), UnsafeFileError, "conv1.bias")


def test_other_byte_order_is_converted_and_odd_types_refused(base: Path, tmp_path: Path) -> None:
    with modelset.open(base) as ms:
        want = ms.stacked(list(ms.metadata.index[:4]))["conv1.bias"]

    def big_endian(h5: h5py.File) -> None:
        replace(h5, TENSOR, data=h5[TENSOR][()].astype(">f4"), chunks=(4, 16), fletcher32=True)

    path = tampered(base, tmp_path / "be", big_endian)
    with modelset.open(path) as ms:
        got = ms.stacked(list(ms.metadata.index[:4]))["conv1.bias"]
        assert got.numpy().dtype == np.dtype("float32") and got.numpy().dtype.isnative
        assert np.array_equal(got.numpy(), want.numpy())
        assert np.array_equal(ms.state_dict(ms.metadata.index[1])["conv1.bias"].numpy(), want[1].numpy())
    modelset.verify(path)

    def integers(h5: h5py.File) -> None:
        replace(h5, TENSOR, data=np.zeros((4, 16), "i4"), chunks=(4, 16), fletcher32=True)

    all_refused(tampered(base, tmp_path / "int", integers), ModelSetError, "conv1.bias")

    def odd_float(h5: h5py.File) -> None:  # a 32-bit float with a 10-bit exponent: not IEEE
        ftype = h5py.h5t.IEEE_F32LE.copy()
        ftype.set_fields(31, 21, 10, 0, 21)
        ftype.set_ebias(511)
        del h5[TENSOR]
        space = h5py.h5s.create_simple((4, 16))
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4, 16))
        dcpl.set_fletcher32()
        h5py.h5d.create(h5.id, TENSOR.encode(), ftype, space, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.zeros((4, 16), "f4"))

    all_refused(tampered(base, tmp_path / "odd", odd_float), UnsafeFileError, "not one of the allowed")


def test_ids_stored_as_integers_are_refused(base: Path, tmp_path: Path) -> None:
    def change(h5: h5py.File) -> None:
        replace(h5, "blocks/00000/model_ids", data=np.arange(4))

    path = tampered(base, tmp_path, change)
    with modelset.open(path) as ms, pytest.raises(UnsafeFileError, match="model_ids .*strings"):
        ms.state_dict(ms.metadata.index[0])
    with pytest.raises(UnsafeFileError):
        modelset.verify(path)


def test_unused_link_in_a_shard_fails_open_and_verify(base: Path, tmp_path: Path) -> None:
    def change(h5: h5py.File) -> None:
        h5["extra"] = h5py.ExternalLink("/etc/hostname", "/")

    path = tampered(base, tmp_path, change)
    with pytest.raises(UnsafeFileError, match="'extra' is an external link"):
        modelset.verify(path)


def test_shard_symlinked_outside_the_set_is_refused(base: Path, tmp_path: Path) -> None:
    path = tmp_path / "set"
    shutil.copytree(base, path)
    outside = tmp_path / "outside.h5"
    shutil.move(path / SHARD, outside)
    (path / SHARD).symlink_to(outside)
    with modelset.open(path) as ms, pytest.raises(UnsafeFileError, match="symbolic link"):
        ms.state_dict(ms.metadata.index[0])
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        modelset.verify(path)
    shutil.rmtree(path / "relations")
    (path / "relations").symlink_to(base / "relations", target_is_directory=True)
    with modelset.open(path) as ms, pytest.raises(UnsafeFileError, match="relations"):
        _ = ms.relations


@pytest.mark.parametrize("target", ["modelset.json", "models.parquet", "tasks.parquet", SHARD,
                                    "relations/same_task.csv", "SHA256SUMS"])  # fmt: skip
def test_fifo_in_place_of_a_file_does_not_hang(base: Path, tmp_path: Path, target: str) -> None:
    path = tmp_path / "set"
    shutil.copytree(base, path)
    (path / target).unlink()
    os.mkfifo(path / target)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with modelset.open(path) as ms:
                _ = ms.tasks, ms.relations
                ms.stacked(list(ms.metadata.index))
        except ModelSetError as exc:
            errors.append(exc)
        try:
            modelset.verify(path)
        except ModelSetError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # unblock the reader so the test process can exit, then fail
        fd = os.open(path / target, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail(f"reading a set with a FIFO at {target} blocked")
    assert errors and all("FIFO" in str(e) or "not a regular file" in str(e) for e in errors), errors


# -- 2. memory bounded by evidence --------------------------------------------------------
def test_huge_num_classes_backed_by_nothing_is_refused(base: Path, tmp_path: Path) -> None:
    """A row declares a million classes; the shard declares a matching head of unwritten chunks
    (256 MB if allocated). Refused from the declared sizes alone; past the format's limit of
    2**20 the number itself is refused."""
    path = tmp_path / "set"
    shutil.copytree(base, path)
    table = pd.read_parquet(path / "models.parquet")
    first = table["shard"] == SHARD
    table.loc[first, "arch_kwargs"] = json.dumps({"num_classes": 1_000_000}, separators=(",", ":"))
    table.to_parquet(path / "models.parquet", index=False)
    with h5py.File(path / SHARD, "r+") as h5:
        final = "blocks/00000/checkpoints/final"
        replace(h5, f"{final}/head.weight", shape=(4, 1_000_000, 16), dtype="f4", chunks=(1, 1 << 14, 16), fletcher32=True)
        replace(h5, f"{final}/head.bias", shape=(4, 1_000_000), dtype="f4", chunks=(1, 1 << 16), fletcher32=True)
    write_checksums(path, rehash_shards=True)
    with modelset.open(path) as ms:
        ids = list(ms.metadata.index[first.to_numpy()])
        for read in (lambda: ms.state_dict(ids[0]), lambda: ms.stacked(ids), lambda: ms.model(ids[0])):
            with pytest.raises(UnsafeFileError, match="head.* declares .* but stores only"):
                read()
    with pytest.raises(ModelSetError):
        modelset.verify(path)
    table.loc[first, "arch_kwargs"] = json.dumps({"num_classes": 50_000_000}, separators=(",", ":"))
    table.to_parquet(path / "models.parquet", index=False)
    with modelset.open(path) as ms, pytest.raises(SchemaError, match="num_classes must be integers from 1 to"):
        ms.state_dict(ids[0])


def test_huge_id_list_backed_by_nothing_is_refused(base: Path, tmp_path: Path) -> None:
    def change(h5: h5py.File) -> None:
        replace(h5, "blocks/00000/model_ids", shape=(50_000_000,), dtype=h5py.string_dtype(), chunks=(1 << 16,))

    path = tampered(base, tmp_path, change)
    with modelset.open(path) as ms, pytest.raises(UnsafeFileError, match="declares 50000000 strings"):
        ms.state_dict(ms.metadata.index[0])


def _rle_table(path: Path, rows: int, text: str = "x") -> None:
    """A table of ``rows`` identical rows: run-length encoding makes it tiny on disk."""
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, "int32")), pa.array([text]))
    # Without the Arrow schema, a reader sees a plain string column (as pandas writes it).
    pq.write_table(pa.table({"model_id": column}), path, compression="zstd", row_group_size=rows, store_schema=False)


def test_small_parquet_declaring_millions_of_rows_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "models.parquet"
    _rle_table(path, 10_000_000)
    assert path.stat().st_size < 2_000_000
    with pytest.raises(UnsafeFileError, match="declares 10000000 rows"):
        _untrusted.read_parquet(path, "model table")


def test_text_that_decodes_past_the_budget_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.parquet"
    _rle_table(path, 200_000, "y" * 4096)  # 800 MB once decoded, a few KB on disk
    assert path.stat().st_size < 100_000
    with pytest.raises(UnsafeFileError, match="decode to"):
        _untrusted.read_parquet(path, "task table")


def test_tables_within_budget_read_as_before(base: Path) -> None:
    for name in ("models.parquet", "tasks.parquet"):
        got = _untrusted.read_parquet(base / name, name)
        pd.testing.assert_frame_equal(got, pd.read_parquet(base / name))


# -- 3. one error type --------------------------------------------------------------------
@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 70 + "1" + "}" * 70,
                                  '{"n": ' + "9" * 5000 + "}", '{"n": 1' + "0" * 50 + "}"])  # fmt: skip
def test_deep_or_huge_number_json_header(base: Path, tmp_path: Path, text: str) -> None:
    path = tmp_path / "set"
    shutil.copytree(base, path)
    (path / "modelset.json").write_text(text)
    with pytest.raises(SchemaError, match=r"modelset.json: .*(nested|digits)"):
        modelset.open(path)


@pytest.mark.parametrize("kwargs", ['{"strides":[0,2,1]}', '{"strides":[2,2,0],"downsample":"shape_adaptor"}',
                                    '{"num_classes":0}', '{"channels":[16,-1,16]}', '{"num_classes":1e400}',
                                    '{"num_classes":' + "9" * 50 + "}", '{"channels":' + "[" * 80 + "]" * 80 + "}",
                                    '{"num_classes":true}'])  # fmt: skip
def test_bad_arch_kwargs_are_schema_errors(base: Path, tmp_path: Path, kwargs: str) -> None:
    path = tmp_path / "set"
    shutil.copytree(base, path)
    table = pd.read_parquet(path / "models.parquet")
    table["arch_kwargs"] = kwargs
    table.to_parquet(path / "models.parquet", index=False)
    write_checksums(path)
    with modelset.open(path) as ms:
        mid = ms.metadata.index[0]
        for read in (lambda: ms.state_dict(mid), lambda: ms.model(mid), lambda: ms.stacked([mid])):
            with pytest.raises(SchemaError, match="arch"):
                read()
    with pytest.raises(SchemaError):
        modelset.verify(path)


def test_writer_refuses_a_table_readers_would_refuse(tmp_path: Path) -> None:
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(2_000_000, "int32")), pa.array(["x"]))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({f"c{i}": column for i in range(4)}), sink, compression="zstd", row_group_size=2_000_000)
    with pytest.raises(SchemaError, match="refusing to write a table that readers would refuse"):
        _untrusted.check_table_bytes(sink.getvalue().to_pybytes(), tmp_path / "models.parquet", "model table")


def test_tampered_release_never_fetches(base: Path, tmp_path: Path, secret: Path) -> None:
    """A release whose shard reads another file, with SHA256SUMS and the index recomputed."""
    from modelset import _atomic
    from modelset.release import INDEX_FILE, fetch

    release = pack(base, tmp_path / "dist", archive=False)
    with h5py.File(release / SHARD, "r+") as h5:
        replace(h5, TENSOR, shape=(4, 16), dtype="f4", external=[(str(secret), 0, 256)])
    write_checksums(release, rehash_shards=True)
    index = json.loads((release / INDEX_FILE).read_text())
    for entry in index["files"]:
        entry.update(size=(release / entry["path"]).stat().st_size, sha256=_atomic.sha256_file(release / entry["path"]))
    (release / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(UnsafeFileError, match="external storage"):
        fetch(str(release), tmp_path / "got", retries=0)
    assert not (tmp_path / "got").exists()
