"""The foundation: write → verify → read round trips, and every bad input is a ModelSetError."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import modelset
from modelset.architectures import build_architecture
from modelset.errors import (
    ChecksumError,
    CorruptShardError,
    ExistsError,
    InvalidParametersError,
    MissingModelError,
    ModelSetError,
    NotAModelSetError,
    SchemaError,
    UnknownNameError,
)
from modelset.torchdata import ModelDataset, ModelPairDataset
from modelset.writer import ModelRecord, ModelSetWriter

CONFIG = {"test": True}


def make_record(i: int, task: str, num_classes: int = 5, channels=(16, 16, 16)) -> ModelRecord:
    torch.manual_seed(i)
    kwargs = {"num_classes": num_classes, "channels": list(channels)}
    init = build_architecture("cnn3", kwargs).state_dict()
    final = {k: v + 0.1 * torch.randn_like(v) for k, v in init.items()}
    row = {"task": task, "dataset": "toy", "variant": "base", "parent_id": "", "seed": i,
           "lr": 0.01 * (i + 1), "test_accuracy": 0.5 + 0.01 * i}
    return ModelRecord(f"m{i:03d}", "cnn3", kwargs, {"init": init, "final": final}, row)


def write_set(root: Path, records_per_shard: list[list[ModelRecord]]) -> Path:
    with ModelSetWriter.open(root, name="toy", config=CONFIG) as writer:
        for records in records_per_shard:
            writer.write_shard(records)
        tasks = sorted({r.row["task"] for shard in records_per_shard for r in shard})
        writer.set_tasks(pd.DataFrame({"dataset": "toy", "classes": [[0, 1, 2, 3, 4]] * len(tasks)}, index=tasks))
        jac = pd.DataFrame(np.eye(len(tasks)), index=tasks, columns=tasks)
        writer.set_relation("label_jaccard", jac)
        writer.finish({"Summary": "A toy set."})
    return root


@pytest.fixture
def records() -> list[list[ModelRecord]]:
    first = [make_record(i, f"t{i % 2}") for i in range(4)]
    second = [make_record(4, "t0"), make_record(5, "t1", channels=(8, 16, 4))]  # two blocks in one shard
    return [first, second]


@pytest.fixture
def toy(tmp_path: Path, records) -> Path:
    return write_set(tmp_path / "toy", records)


def test_round_trip_tensors_and_metadata(toy: Path, records) -> None:
    report = modelset.verify(toy)
    # 7 data files + LICENSE, CITATION.cff and layouts (index.csv and one per signature: 2)
    assert report == {"files": 12, "models": 6, "shards": 2}
    ms = modelset.open(toy)
    assert list(ms.metadata.index) == [f"m{i:03d}" for i in range(6)]
    assert ms.metadata.index.name == "model_id"
    assert ms.metadata.loc["m002", "lr"] == pytest.approx(0.03)
    assert ms.metadata.loc["m005", "arch_kwargs"] == json.dumps(
        {"channels": [8, 16, 4], "num_classes": 5}, separators=(",", ":"))
    assert ms.metadata.loc["m000", "n_params"] == sum(v.numel() for v in records[0][0].checkpoints["final"].values())
    for record in [r for shard in records for r in shard]:
        for ckpt in ("init", "final"):
            got = ms.state_dict(record.model_id, ckpt)
            assert got.keys() == record.checkpoints[ckpt].keys()
            for key, tensor in record.checkpoints[ckpt].items():
                assert torch.equal(got[key], tensor), (record.model_id, ckpt, key)
    assert list(ms.tasks.index) == ["t0", "t1"]
    assert ms.relations["label_jaccard"].loc["t0", "t0"] == 1.0
    assert ms.header["counts"]["models"] == 6 and ms.header["complete"] is True
    assert "A toy set." in (toy / "README.md").read_text()


def test_model_rebuilt_gives_same_outputs(toy: Path, records) -> None:
    ms = modelset.open(toy)
    record = records[1][1]
    original = build_architecture("cnn3", record.arch_kwargs)
    original.load_state_dict(record.checkpoints["final"])
    x = torch.randn(4, 1, 28, 28)
    rebuilt = ms.model(record.model_id)
    assert not rebuilt.training
    assert torch.equal(rebuilt(x), original.eval()(x))


def test_stacked_reads_many_models_in_order(toy: Path, records) -> None:
    ms = modelset.open(toy)
    ids = ["m003", "m000", "m004", "m002"]  # across shards, out of order
    stacked = ms.stacked(ids, "final")
    assert stacked["conv2.weight"].shape == (4, 16, 16, 3, 3)
    by_id = {r.model_id: r for shard in records for r in shard}
    for i, mid in enumerate(ids):
        assert torch.equal(stacked["head.weight"][i], by_id[mid].checkpoints["final"]["head.weight"])
    chunks = list(ms.iter_stacked(ids, chunk_size=3))
    assert [c[0] for c in chunks] == [ids[:3], ids[3:]]
    assert torch.equal(torch.cat([c[1]["conv1.bias"] for c in chunks]), stacked["conv1.bias"])
    with pytest.raises(SchemaError, match="one architecture"):
        ms.stacked(["m000", "m005"])


@pytest.mark.parametrize(
    "ids",
    [
        ["m003", "m002", "m001", "m000"],  # reversed: read in stored order, then put back
        ["m000", "m002", "m003", "m000"],  # a gap and a repeat within one block
        ["m004", "m001", "m004", "m003", "m000"],  # two shards, repeats, no run at all
    ],
)
def test_stacked_matches_state_dict_for_any_selection(toy: Path, ids: list[str]) -> None:
    ms = modelset.open(toy)
    for checkpoint in ("init", "final"):
        stacked = ms.stacked(ids, checkpoint)
        for i, mid in enumerate(ids):
            for key, tensor in ms.state_dict(mid, checkpoint).items():
                assert torch.equal(stacked[key][i], tensor), (mid, checkpoint, key)


def test_by_signature_groups_ids_in_their_order(toy: Path) -> None:
    ms = modelset.open(toy)
    ids = ["m005", "m003", "m000", "m005", "m001"]  # two signatures, a repeat
    groups = ms.by_signature(ids)
    rows = ms.metadata.loc[ids, ["architecture", "arch_kwargs"]]
    expected = [(key, list(g.index)) for key, g in rows.groupby(["architecture", "arch_kwargs"], sort=True)]
    assert [((g.architecture, g.arch_kwargs), g.ids) for g in groups] == expected
    assert len(groups) == 2
    for g in groups:
        assert [ids[p] for p in g.positions] == g.ids
        assert len(ms.stacked(g.ids)["conv1.weight"]) == len(g.ids)  # each group is one stacked call
    assert ms.by_signature([]) == []
    with pytest.raises(MissingModelError, match="'m999' is not in"):
        ms.by_signature(["m000", "m999"])


def test_iter_by_signature_chunks_every_id_once_in_place(toy: Path) -> None:
    ms = modelset.open(toy)
    ids = ["m005", "m003", "m000", "m005", "m001"]
    seen = []
    for chunk, stacked in ms.iter_by_signature(ids, "init", chunk_size=2):
        assert len(chunk.ids) <= 2 and [ids[p] for p in chunk.positions] == chunk.ids
        for j, mid in enumerate(chunk.ids):
            assert torch.equal(stacked["conv1.weight"][j], ms.state_dict(mid, "init")["conv1.weight"])
        seen.extend(chunk.positions.tolist())
    assert sorted(seen) == list(range(len(ids)))


def test_torch_datasets(toy: Path) -> None:
    ms = modelset.open(toy)
    ds = ModelDataset(ms, ["m000", "m001", "m002"])
    state, target = ds[1]
    assert ds.task_names == ["t0", "t1"] and int(target) == 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch[0]["conv1.weight"].shape == (3, 16, 1, 3, 3)
    pairs = ModelPairDataset(ms, [("m000", "m002"), ("m000", "m001")])
    assert pairs.targets.tolist() == [1.0, 0.0]
    graded = ModelPairDataset(ms, [("m000", "m001")], relation="label_jaccard")
    assert graded.targets.tolist() == [0.0]


def test_writer_refuses_other_folders_and_resumes_same_config(tmp_path: Path, records) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ExistsError, match="not an empty folder"):
        ModelSetWriter.open(other, name="x", config=CONFIG)
    assert (other / "keep.txt").read_text() == "mine"

    root = write_set(tmp_path / "set", records[:1])
    before = (root / "models.parquet").read_bytes()
    with pytest.raises(ExistsError, match="another config"):
        ModelSetWriter.open(root, name="toy", config={"different": 1})
    assert (root / "models.parquet").read_bytes() == before
    with ModelSetWriter.open(root, name="toy", config=CONFIG) as writer:
        assert writer.model_ids == {"m000", "m001", "m002", "m003"}
        with pytest.raises(SchemaError, match="already in"):
            writer.write_shard([make_record(0, "t0")])
        writer.write_shard(records[1])
    assert len(modelset.open(root)) == 6
    with ModelSetWriter.open(root, name="toy", config={"different": 1}, overwrite=True) as writer:
        assert writer.model_ids == set()


def test_uncommitted_shard_is_invisible_and_removed_on_resume(tmp_path: Path, records) -> None:
    root = write_set(tmp_path / "set", records[:1])
    stray = root / "shards" / "shard-00001.h5"
    shutil.copy(root / "shards" / "shard-00000.h5", stray)  # a killed writer's renamed, uncommitted shard
    assert len(modelset.open(root)) == 4
    with ModelSetWriter.open(root, name="toy", config=CONFIG):
        pass
    assert not stray.exists()
    modelset.verify(root)


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    from modelset.errors import LockedError

    with ModelSetWriter.open(tmp_path / "s", name="toy", config=CONFIG):
        with pytest.raises(LockedError, match="another process"):
            ModelSetWriter.open(tmp_path / "s", name="toy", config=CONFIG)


def test_write_lock_excludes_writers_both_ways(tmp_path: Path) -> None:
    from modelset.errors import LockedError
    from modelset.writer import write_lock

    root = tmp_path / "s"
    with ModelSetWriter.open(root, name="toy", config=CONFIG):
        with pytest.raises(LockedError, match="another process"), write_lock(root):
            pass
    with write_lock(root):
        with pytest.raises(LockedError, match="another process"):
            ModelSetWriter.open(root, name="toy", config=CONFIG)
    with ModelSetWriter.open(root, name="toy", config=CONFIG):  # released on leaving
        pass


def test_writer_rejects_bad_models(tmp_path: Path) -> None:
    bad = make_record(0, "t0")
    bad.checkpoints["final"]["conv1.weight"][0, 0, 0, 0] = float("nan")
    wrong = make_record(1, "t0")
    wrong.checkpoints["final"]["head.weight"] = torch.zeros(3, 16)
    with ModelSetWriter.open(tmp_path / "s", name="toy", config=CONFIG) as writer:
        with pytest.raises(InvalidParametersError, match=r"m000.*conv1.weight.*NaN"):
            writer.write_shard([bad])
        with pytest.raises(InvalidParametersError, match=r"m001.*head.weight.*\[3, 16\].*\[5, 16\]"):
            writer.write_shard([wrong])
        with pytest.raises(SchemaError, match="not valid"):
            writer.write_shard([ModelRecord("bad id!", "cnn3", {}, {"final": {}}, make_record(2, "t0").row)])
        with pytest.raises(SchemaError, match="lacks required columns"):
            writer.write_shard([ModelRecord("m9", "cnn3", {}, {"final": {}}, {"task": "t0"})])
        assert writer.model_ids == set()
    assert not list((tmp_path / "s" / "shards").glob("*.h5")) if (tmp_path / "s" / "shards").exists() else True


# -- bad input on the reading side ----------------------------------------------------------------

def test_missing_path_and_not_a_set(tmp_path: Path) -> None:
    with pytest.raises(NotAModelSetError, match="no such file"):
        modelset.open(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotAModelSetError, match="not a model set"):
        modelset.open(tmp_path / "plain")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotAModelSetError, match="is a file"):
        modelset.open(tmp_path / "file")


def test_unknown_schema_version_and_bad_header(toy: Path) -> None:
    header = json.loads((toy / "modelset.json").read_text())
    header["schema_version"] = 7
    (toy / "modelset.json").write_text(json.dumps(header))
    with pytest.raises(SchemaError, match=r"modelset.json.*unknown schema version 7"):
        modelset.open(toy)
    (toy / "modelset.json").write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON"):
        modelset.open(toy)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_truncated_shard(toy: Path) -> None:
    shard = toy / "shards" / "shard-00000.h5"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    before = _snapshot(toy)
    ms = modelset.open(toy)
    with pytest.raises(CorruptShardError, match="shard-00000.h5"):
        ms.state_dict("m000")
    with pytest.raises(ChecksumError, match=r"shard-00000.h5: sha256 mismatch"):
        modelset.verify(toy)
    assert _snapshot(toy) == before  # reading never changes a file


def test_bit_flip_in_parameters_is_caught_on_read(toy: Path) -> None:
    shard = toy / "shards" / "shard-00000.h5"
    with h5py.File(shard, "r") as h5:
        offset = h5["blocks/00000/checkpoints/final/conv2.weight"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 100] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=r"shard-00000.h5.*m001"):
        modelset.open(toy).state_dict("m001")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        modelset.verify(toy)
    with pytest.raises(CorruptShardError, match="shard-00000.h5"):
        modelset.verify(toy, checksums=False)


def test_checksum_mismatch_in_table(toy: Path) -> None:
    sums = (toy / "SHA256SUMS").read_text().replace("models.parquet", "models.parquet.gone")
    (toy / "SHA256SUMS").write_text(sums)
    with pytest.raises(ChecksumError, match="missing"):
        modelset.verify(toy)


def _rewrite_table(root: Path, change) -> None:
    table = pd.read_parquet(root / "models.parquet")
    change(table)
    table.to_parquet(root / "models.parquet", index=False)


def test_manifest_row_whose_model_is_missing(toy: Path) -> None:
    def rename(table: pd.DataFrame) -> None:
        table["model_id"] = table["model_id"].replace("m001", "m099")

    _rewrite_table(toy, rename)
    ms = modelset.open(toy)
    with pytest.raises(MissingModelError, match=r"m099.*should be at block 0, index 1.*'m001'"):
        ms.state_dict("m099")
    with pytest.raises(ModelSetError, match="shard and table disagree"):
        modelset.verify(toy, checksums=False)
    with pytest.raises(MissingModelError, match=r"'m0999' is not in .*Did you mean"):
        ms.state_dict("m0999")


def test_missing_shard_file(toy: Path) -> None:
    (toy / "shards" / "shard-00001.h5").unlink()
    with pytest.raises(MissingModelError, match="shard-00001.h5: shard listed in the model table is missing"):
        modelset.open(toy).state_dict("m004")


def test_nan_parameters_are_refused_on_read(toy: Path) -> None:
    shard = toy / "shards" / "shard-00000.h5"
    with h5py.File(shard, "r+") as h5:
        data = h5["blocks/00000/checkpoints/final/head.bias"]
        values = data[()]
        values[2, 0] = np.inf
        data[...] = values
    ms = modelset.open(toy)
    with pytest.raises(InvalidParametersError, match=r"m002.*head.bias.*NaN or Inf"):
        ms.state_dict("m002")
    with pytest.raises(InvalidParametersError, match=r"\['m002'\].*head.bias"):
        ms.stacked(["m000", "m002"])
    assert torch.isfinite(ms.state_dict("m000")["head.bias"]).all()


def test_parameters_that_do_not_fit_the_architecture(toy: Path) -> None:
    def widen_head(table: pd.DataFrame) -> None:
        table.loc[table.model_id == "m000", "arch_kwargs"] = json.dumps({"num_classes": 7})

    def misname(table: pd.DataFrame) -> None:
        table["architecture"] = table["architecture"].replace("cnn3", "cnn33")

    _rewrite_table(toy, widen_head)
    ms = modelset.open(toy)
    with pytest.raises(InvalidParametersError, match=r"m000.*head.weight.*\[5, 16\], expected \[7, 16\]"):
        ms.model("m000")
    _rewrite_table(toy, misname)
    with pytest.raises(UnknownNameError, match="Did you mean 'cnn3'"):
        modelset.open(toy).model("m001")


@pytest.mark.parametrize("column", ["shard", "architecture", "checkpoints"])
def test_empty_location_cell_names_column_and_model(toy: Path, column: str) -> None:
    def blank(table: pd.DataFrame) -> None:
        table[column] = table[column].astype(object)
        table.loc[table["model_id"] == "m002", column] = None

    _rewrite_table(toy, blank)
    with pytest.raises(SchemaError, match=rf"models.parquet: column '{column}' is empty for models \['m002'\]"):
        modelset.open(toy)


def test_corrupt_table_and_relation(toy: Path) -> None:
    (toy / "relations" / "label_jaccard.csv").write_text("task,t0\nt1,abc\n")
    with pytest.raises(SchemaError, match="label_jaccard.csv"):
        _ = modelset.open(toy).relations
    (toy / "models.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(SchemaError, match=r"models.parquet.*Parquet"):
        modelset.open(toy)


def test_cli_info_and_verify(toy: Path, capsys) -> None:
    from modelset.cli import main

    assert main(["info", "--zoo", str(toy)]) == 0
    out = capsys.readouterr().out
    assert "6 models over 2 tasks" in out and "models per variant" in out and "test accuracy" in out
    assert main(["verify", "--zoo", str(toy)]) == 0
    assert "OK" in capsys.readouterr().out
    (toy / "README.md").write_text("changed")
    assert main(["verify", "--zoo", str(toy)]) == 2
    assert "README.md: sha256 mismatch" in capsys.readouterr().err
