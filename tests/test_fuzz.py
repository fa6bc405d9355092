"""Property-based fuzzing of bad files: shards, tables, headers, checksums, relations and release
indexes are truncated, bit-flipped, retyped, resized and stripped of keys. Opening, reading,
verifying and fetching must only ever raise ``ModelSetError`` subclasses (with a message), never
another exception, never hang, and never write outside the destination."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import modelset
from modelset.errors import ModelSetError
from modelset.release import INDEX_FILE, fetch, pack
from modelset.synthetic import write_synthetic
from modelset.writer import write_checksums

CASES: Counter[str] = Counter()
# 20 examples per property by default (160 cases, CI); MODELSET_FUZZ_EXAMPLES=500 for a campaign.
FUZZ = settings(
    max_examples=int(os.environ.get("MODELSET_FUZZ_EXAMPLES", "20")),
    deadline=10_000,  # a hang shows up as a deadline failure
    derandomize=True,  # fixed seed: CI runs the same cases
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

FILES = [
    "modelset.json",
    "models.parquet",
    "tasks.parquet",
    "SHA256SUMS",
    "relations/same_task.csv",
    "shards/shard-00000.h5",
    "shards/shard-00001.h5",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("fuzz") / "set", 8, n_tasks=2, models_per_shard=4, seed=1,
                           checkpoints=("init", "final"))  # fmt: skip


def exercise(path: Path) -> None:
    """Everything a user does with a set; only ``ModelSetError`` may escape."""
    try:
        with modelset.open(path) as ms:
            _ = ms.tasks, ms.relations, ms.info()
            ids = list(ms.metadata.index)
            for mid in ids[:3]:
                ms.state_dict(mid)
                ms.model(mid, checkpoint="init")
            if ids:
                for _chunk in ms.iter_stacked(ids, chunk_size=5):
                    pass
    except ModelSetError as exc:
        assert str(exc), "errors must carry a message"
    for checksums in (True, False):
        try:
            modelset.verify(path, checksums=checksums)
        except ModelSetError as exc:
            assert str(exc)


# -- byte-level damage --------------------------------------------------------------------
byte_mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), min_size=1, max_size=8)),
    st.tuples(st.just("garbage"), st.binary(max_size=256)),
    st.tuples(st.just("delete"), st.none()),
    st.tuples(st.just("zero-block"), st.floats(0, 1)),
)


def damage(path: Path, op: str, arg) -> None:
    if op == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if op == "truncate":
        data = data[: int(len(data) * arg)]
    elif op == "flip":
        for where, bit in arg:
            if data:
                data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    elif op == "garbage":
        data = bytearray(arg)
    elif op == "zero-block":
        start = int(arg * len(data))
        data[start : start + 512] = bytes(len(data[start : start + 512]))
    path.write_bytes(bytes(data))


@FUZZ
@given(target=st.sampled_from(FILES), mutation=byte_mutation, resum=st.booleans())
def test_damaged_bytes(base: Path, target: str, mutation, resum: bool) -> None:
    CASES["bytes"] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set"
        shutil.copytree(base, path)
        damage(path / target, *mutation)
        if resum and target != "SHA256SUMS":
            write_checksums(path, rehash_shards=True)  # damage that checksums no longer catch
        exercise(path)


# -- structural damage: wrong types, missing keys, huge declared sizes -------------------
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)


@FUZZ
@given(key=st.sampled_from(["format", "schema_version", "name", "config", "counts", "created", "complete"]),
       value=json_value, drop=st.booleans())  # fmt: skip
def test_header_fields(base: Path, key: str, value, drop: bool) -> None:
    CASES["header"] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set"
        shutil.copytree(base, path)
        header = json.loads((path / "modelset.json").read_text())
        if drop:
            header.pop(key, None)
        else:
            header[key] = value
        (path / "modelset.json").write_text(json.dumps(header))
        write_checksums(path)
        exercise(path)


TABLE_COLUMNS = ["model_id", "architecture", "arch_kwargs", "shard", "block", "index", "checkpoints", "task",
                 "parent_id", "n_params"]  # fmt: skip
table_value = st.one_of(
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "../../etc/passwd", "/etc/passwd", "shards/shard-99999.h5", "shards/shard-00001.h5",
                     "cnn3", "resnet_tiny", "{", '{"num_classes": 1e9}', '{"channels": [100000, 100000, 100000]}',
                     "final", "init,final,bogus", "syn-000001", "x" * 300]),  # fmt: skip
    st.text(max_size=12),
    st.none(),
)


@FUZZ
@example(column="checkpoints", row=0, value="", op="set")  # found by a 300-example campaign
@given(column=st.sampled_from(TABLE_COLUMNS), row=st.integers(0, 7), value=table_value,
       op=st.sampled_from(["set", "set-all", "drop-column", "duplicate-row"]))  # fmt: skip
def test_model_table_cells(base: Path, column: str, row: int, value, op: str) -> None:
    CASES["table"] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set"
        shutil.copytree(base, path)
        table = pd.read_parquet(path / "models.parquet")
        if op == "drop-column":
            table = table.drop(columns=[column])
        elif op == "duplicate-row":
            table = pd.concat([table, table.iloc[[row]]], ignore_index=True)
        else:
            table[column] = table[column].astype(object)
            if op == "set-all":
                table[column] = [value] * len(table)
            else:
                table.at[row, column] = value
        try:
            table.to_parquet(path / "models.parquet", index=False)
        except (ValueError, TypeError, OverflowError, ArithmeticError, Exception):  # noqa: B030
            table.astype(str).to_parquet(path / "models.parquet", index=False)  # mixed types: store as text
        write_checksums(path)
        exercise(path)


@FUZZ
@given(op=st.sampled_from(["attr-format", "attr-schema", "drop-model-ids", "drop-rows", "drop-tensor",
                           "resize-tensor", "retype-tensor", "rename-id", "nan", "wrong-rows", "huge-shape"]),
       shard=st.sampled_from(["shards/shard-00000.h5", "shards/shard-00001.h5"]), value=json_value)  # fmt: skip
def test_shard_structure(base: Path, op: str, shard: str, value) -> None:
    CASES["shard"] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set"
        shutil.copytree(base, path)
        with h5py.File(path / shard, "r+") as h5:
            group = h5["blocks/00000"]
            ckpt = group["checkpoints/final"]
            if op == "attr-format":
                h5.attrs["format"] = str(value)
            elif op == "attr-schema":
                h5.attrs["schema_version"] = str(value)
            elif op == "drop-model-ids":
                del group["model_ids"]
            elif op == "drop-rows":
                del h5["rows"]
            elif op == "drop-tensor":
                del ckpt["conv2.weight"]
            elif op == "resize-tensor":
                data = ckpt["head.bias"][()]
                del ckpt["head.bias"]
                ckpt.create_dataset("head.bias", data=data[:, :2])
            elif op == "retype-tensor":
                data = ckpt["conv1.bias"][()]
                del ckpt["conv1.bias"]
                ckpt.create_dataset("conv1.bias", data=data.astype(np.int64))
            elif op == "rename-id":
                del group["model_ids"]
                group.create_dataset("model_ids", data=np.array(["other"] * 4, dtype=object), dtype=h5py.string_dtype())
            elif op == "nan":
                data = ckpt["conv1.weight"][()]
                data[1, 0, 0, 0, 0] = np.nan
                ckpt["conv1.weight"][...] = data
            elif op == "wrong-rows":
                del h5["rows"]
                h5.create_dataset("rows", data=np.array([json.dumps(value)], dtype=object), dtype=h5py.string_dtype())
            elif op == "huge-shape":
                # A declared shape of ~2**40 floats that is never materialised on disk.
                del ckpt["conv3.weight"]
                ckpt.create_dataset("conv3.weight", shape=(4, 2**20, 2**18), dtype="f4", chunks=(1, 64, 64))
        write_checksums(path, rehash_shards=True)
        exercise(path)


@FUZZ
@given(text=st.text(max_size=200) | st.sampled_from(["task,task000\ntask000,x\n", "a,b\nc,1\n", ",\n", "task\n"]))
def test_relation_files(base: Path, text: str) -> None:
    CASES["relation"] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set"
        shutil.copytree(base, path)
        (path / "relations/same_task.csv").write_text(text)
        write_checksums(path)
        exercise(path)


# -- HDF5-level tampering: links, external storage, virtual datasets, types, layouts, sizes ---
SECRET = np.full(4096, 7.25, dtype="<f4")  # what a crafted shard tries to smuggle in as parameters
H5_OPS = ["external", "external-relative", "external-link", "soft-link", "hard-link", "virtual", "virtual-missing",
          "big-endian", "float16", "float64", "int32", "odd-float", "contiguous", "compact", "no-checksum", "gzip",
          "shuffle", "unwritten", "huge-declared", "ids-int", "ids-huge", "ids-gzip", "extra-link"]  # fmt: skip
TENSORS = ["conv1.weight", "conv1.bias", "conv2.weight", "conv3.bias", "head.weight", "head.bias"]


def _tamper(h5: h5py.File, op: str, name: str, secret: Path, rows: int) -> None:
    data = h5[name][()]
    block = name.split("/checkpoints/")[0]

    def swap(**kwargs) -> None:
        del h5[name]
        h5.create_dataset(name, **kwargs)

    if op in ("external", "external-relative"):
        target = str(secret) if op == "external" else secret.name
        swap(shape=data.shape, dtype="f4", external=[(target, 0, data.size * 4)])
    elif op == "external-link":
        del h5[name]
        h5[name] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/x")
    elif op == "soft-link":
        del h5[name]
        h5[name] = h5py.SoftLink("/" + name.replace("/final/", "/init/") if "/final/" in name else "/rows")
    elif op == "hard-link":
        other = name.replace("/final/", "/init/") if "/final/" in name else name.replace("/init/", "/final/")
        del h5[name]
        h5[name] = h5[other]
    elif op in ("virtual", "virtual-missing"):
        source = secret.with_suffix(".h5") if op == "virtual" else secret.with_name("missing.h5")
        layout = h5py.VirtualLayout(shape=data.shape, dtype="f4")
        layout[:] = h5py.VirtualSource(str(source), "x", shape=data.shape)
        del h5[name]
        h5.create_virtual_dataset(name, layout, fillvalue=0)
    elif op in ("big-endian", "float16", "float64", "int32"):
        dtype = {"big-endian": ">f4", "float16": "<f2", "float64": "<f8", "int32": "<i4"}[op]
        swap(data=data.astype(dtype), chunks=data.shape, fletcher32=True)
    elif op == "odd-float":
        ftype = h5py.h5t.IEEE_F32LE.copy()
        ftype.set_fields(31, 21, 10, 0, 21)
        ftype.set_ebias(511)
        del h5[name]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(data.shape)
        dcpl.set_fletcher32()
        h5py.h5d.create(h5.id, name.encode(), ftype, h5py.h5s.create_simple(data.shape), dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, data)
    elif op == "contiguous":
        swap(data=data)
    elif op == "compact":
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        del h5[name]
        h5py.h5d.create(h5.id, name.encode(), h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple(data.shape), dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, data)
    elif op == "no-checksum":
        swap(data=data, chunks=data.shape)
    elif op in ("gzip", "shuffle"):
        swap(data=data, chunks=data.shape, fletcher32=True, compression="gzip" if op == "gzip" else None,
             shuffle=op == "shuffle")  # fmt: skip
    elif op == "unwritten":
        swap(shape=data.shape, dtype="f4", chunks=(1, *data.shape[1:]), fletcher32=True)
        h5[name][0] = data[0]
    elif op == "huge-declared":
        swap(shape=(rows, 1 << 20, *data.shape[1:]), dtype="f4", chunks=(1, 1 << 10, *data.shape[1:]), fletcher32=True)
    elif op == "ids-int":
        del h5[f"{block}/model_ids"]
        h5[f"{block}/model_ids"] = np.arange(rows)
    elif op == "ids-huge":
        del h5[f"{block}/model_ids"]
        h5.create_dataset(f"{block}/model_ids", shape=(1 << 26,), dtype=h5py.string_dtype(), chunks=(1 << 16,))
    elif op == "ids-gzip":
        ids = h5[f"{block}/model_ids"].asstr()[()]
        del h5[f"{block}/model_ids"]
        h5.create_dataset(f"{block}/model_ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype(),
                          compression="gzip")  # fmt: skip
    elif op == "extra-link":
        h5["blocks/extra"] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/x")


def _read_all(path: Path) -> dict[str, np.ndarray] | None:
    """Every tensor of every model (both checkpoints), or ``None`` if the reader refused."""
    try:
        with modelset.open(path) as ms:
            ids = list(ms.metadata.index)
            return {f"{c}/{k}": v.numpy() for c in ("init", "final") for k, v in ms.stacked(ids, c).items()}
    except ModelSetError as exc:
        assert str(exc)
        return None


@FUZZ
@given(op=st.sampled_from(H5_OPS), tensor=st.sampled_from(TENSORS), checkpoint=st.sampled_from(["init", "final"]),
       shard=st.sampled_from(["shards/shard-00000.h5", "shards/shard-00001.h5"]))  # fmt: skip
def test_hdf5_tampering(base: Path, op: str, tensor: str, checkpoint: str, shard: str) -> None:
    """Whatever is done to a shard at the HDF5 level, with checksums recomputed: the reader either
    refuses it with a ``ModelSetError`` or returns the original values (converted to the native
    order and to what the file stores); it never returns another file's bytes; and ``verify``
    passes only sets the reader reads."""
    CASES["hdf5"] += 1
    with tempfile.TemporaryDirectory() as folder:
        sandbox = Path(folder)
        secret = sandbox / "secret.bin"
        secret.write_bytes(SECRET.tobytes())
        with h5py.File(secret.with_suffix(".h5"), "w") as h5:
            h5["x"] = np.full((4, 16), 7.25, dtype="f4")
        path = sandbox / "set"
        shutil.copytree(base, path)
        original = _read_all(path)
        assert original is not None
        with h5py.File(path / shard, "r+") as h5:
            _tamper(h5, op, f"blocks/00000/checkpoints/{checkpoint}/{tensor}", secret, 4)
        write_checksums(path, rehash_shards=True)
        cwd = os.getcwd()
        os.chdir(sandbox)  # a relative external path would resolve here, next to the secret
        try:
            got = _read_all(path)
            try:
                modelset.verify(path)
                verified = True
            except ModelSetError as exc:
                assert str(exc)
                verified = False
        finally:
            os.chdir(cwd)
        assert got is not None or not verified, f"{op}: verify passed a set the reader refuses"
        if got is not None:
            assert op in ("big-endian", "float16", "float64", "shuffle"), f"{op} was not refused"
            for key, value in got.items():
                assert value.dtype.isnative
                tolerance = 2e-3 if op == "float16" else 0
                np.testing.assert_allclose(value, original[key], rtol=tolerance, atol=tolerance, err_msg=f"{op} {key}")


# -- declared sizes in tables and JSON ----------------------------------------------------
@settings(FUZZ, deadline=30_000)  # a million-row table within budget is decoded and verified: seconds
@given(target=st.sampled_from(["modelset.json", "models.parquet", "tasks.parquet"]),
       kind=st.sampled_from(["deep", "big-int", "many-rows", "long-text"]),
       amount=st.integers(1, 6))  # fmt: skip
def test_declared_sizes(base: Path, target: str, kind: str, amount: int) -> None:
    """JSON nested ``10**amount``-deep or with ``10**amount``-digit numbers, tables declaring up to
    ten million rows or gigabytes of repeated text in a few KB: refused or read within budget."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    CASES["sizes"] += 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "set"
        shutil.copytree(base, path)
        if target.endswith(".json"):
            header = json.loads((path / target).read_text())
            n = 10**amount
            if kind in ("deep", "many-rows"):
                text = json.dumps(header)[:-1] + ', "extra": ' + "[" * n + "]" * n + "}"
            else:
                text = json.dumps(header)[:-1] + ', "extra": 1' + "0" * n + "}"
            (path / target).write_text(text)
        else:
            rows = 10 ** (amount + 1)
            text = "x" if kind != "long-text" else "y" * 4096
            column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, "int32")), pa.array([text]))
            table = pq.read_table(path / target)
            extra = {name: column for name in table.column_names} if kind in ("many-rows", "long-text") else {}
            if extra:
                pq.write_table(pa.table(extra), path / target, compression="zstd", row_group_size=rows,
                               store_schema=False)  # fmt: skip
            else:
                pq.write_table(table, path / target)
        write_checksums(path)
        exercise(path)


# -- release indexes ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def release(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack(base, tmp_path_factory.mktemp("dist"), archive=False)


UNSAFE_PATHS = ["../escape.txt", "/tmp/escape.txt", "shards/../../escape.txt", "./modelset.json", "..", "",
                "a//b", "C:\\escape.txt", "shards/.hidden", "release.json", "x" * 2000, "modelset.json/x"]  # fmt: skip


@FUZZ
@given(
    entry=st.integers(0, 11),
    field=st.sampled_from(["path", "size", "sha256", "<entry>", "<top>"]),
    value=json_value | st.sampled_from(UNSAFE_PATHS) | st.integers(2**40, 2**80),
    drop=st.booleans(),
)
def test_release_index(release: Path, entry: int, field: str, value, drop: bool) -> None:
    CASES["index"] += 1
    index = json.loads((release / INDEX_FILE).read_text())
    files = index["files"]
    item = files[entry % len(files)]
    if field == "<entry>":
        files[entry % len(files)] = value
    elif field == "<top>":
        key = ["format", "release_version", "files", "name", "schema_version"][entry % 5]
        index.pop(key) if drop else index.__setitem__(key, value)
    elif drop:
        item.pop(field)
    else:
        item[field] = value
    with tempfile.TemporaryDirectory() as folder:
        sandbox = Path(folder)
        served = sandbox / "served"
        shutil.copytree(release, served)
        (served / INDEX_FILE).write_text(json.dumps(index))
        outer = sandbox / "out"
        dest = outer / "inner" / "got"
        try:
            fetch(str(served), dest, retries=0)
            assert modelset.verify(dest)["models"] == 8  # a harmless mutation: the release is intact
        except ModelSetError as exc:
            assert str(exc)
            assert not dest.exists()
        written = {p.relative_to(outer).as_posix() for p in outer.rglob("*")} if outer.exists() else set()
        allowed = ("inner", "inner/got", "inner/.got.fetching")
        assert all(w.startswith(allowed) for w in written), f"wrote outside the destination: {written}"
        assert not (sandbox / "escape.txt").exists() and not Path("/tmp/escape.txt").exists()


def test_zz_report_fuzz_cases() -> None:
    """Runs last in this file: records how many fuzz cases ran (quoted in the release notes)."""
    total = sum(CASES.values())
    print(f"\nfuzz cases run: {total} ({dict(CASES)})")
    if CASES:
        assert total >= 5 * FUZZ.max_examples * 0.8
