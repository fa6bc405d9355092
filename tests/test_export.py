"""``python -m modelset export --format hf``: Parquet files that ``datasets.load_dataset`` reads
offline, with the same tensors as ``ms.stacked``."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import yaml

import modelset
from modelset.errors import ExistsError
from modelset.export import ExportError, export_hf
from modelset.layout import layout_file_name, read_layout
from modelset.synthetic import write_synthetic

datasets = pytest.importorskip("datasets")


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network at all: any connection attempt fails the test. Returns a fresh cache folder."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not the user's cache
    return tmp_path / "hf-cache"


def _load(out: Path, config: str | None, cache: Path, split: str = "full"):
    """Columns as NumPy arrays (the numpy format reads float64 columns as float32: plain too)."""
    ds = datasets.load_dataset(str(out), config, split=split, cache_dir=str(cache))
    return ds.with_format("numpy")[:], ds[:]


def test_export_gives_the_tensors_of_stacked(mini_set, tmp_path: Path, offline: Path) -> None:
    out = export_hf(mini_set.root, tmp_path / "hf")
    card = (out / "README.md").read_text()
    meta = yaml.safe_load(card[4:].split("\n---\n", 1)[0])
    signatures = mini_set.architectures()
    assert len(meta["configs"]) == len(signatures)
    assert sum(bool(c.get("default")) for c in meta["configs"]) == 1
    default = next(c["config_name"] for c in meta["configs"] if c.get("default"))
    table = mini_set.metadata
    for arch, kwargs, n in signatures.itertuples(index=False):
        config = layout_file_name(arch, kwargs).removesuffix(".csv")
        rows, plain = _load(out, config, offline)
        layout = read_layout(out / "layouts" / f"{config}.csv")
        ids = table.index[(table["architecture"] == arch) & (table["arch_kwargs"] == kwargs)]
        expected_rows = sum(len(str(c).split(",")) for c in table.loc[ids, "checkpoints"])
        assert len(rows["model_id"]) == expected_rows and set(rows["model_id"]) == set(ids) and len(ids) == n
        params = rows["parameters"]
        assert params.dtype == np.float32 and params.shape == (expected_rows, layout.length)
        for checkpoint in sorted(set(rows["checkpoint"])):
            pick = rows["checkpoint"] == checkpoint
            got_ids = list(rows["model_id"][pick])
            stacked = mini_set.stacked(got_ids, checkpoint)
            for key, value in layout.unflatten(params[pick]).items():
                assert np.array_equal(value, stacked[key].numpy()), (config, checkpoint, key)
        assert plain["test_accuracy"] == table.loc[plain["model_id"], "test_accuracy"].tolist()
        assert "shard" not in rows and "block" not in rows  # location columns mean nothing here
    # the card's example runs as written
    example = card.split("```python\n", 1)[1].split("```", 1)[0].replace("'PATH'", repr(str(out)))
    namespace: dict = {}
    exec(example, namespace)
    n_final = int(((table["architecture"] == "cnn3") & (table["arch_kwargs"] == '{"num_classes":5,"strides":[2,2,2]}')).sum())
    assert default == layout_file_name("cnn3", '{"num_classes":5,"strides":[2,2,2]}').removesuffix(".csv")
    assert namespace["vectors"].shape == (n_final, 4885) and namespace["vectors"].dtype == np.float32
    whole = datasets.load_dataset(str(out), cache_dir=str(offline))  # no config: the default one
    folds = [f"fold{f.fold}_{kind}" for f in mini_set.folds for kind in ("train", "heldout_models", "heldout_tasks")]
    # Fold splits with no model of the default signature are left out.
    assert "full" in whole and set(whole) - {"full"} <= set(folds)
    assert {f"fold{f.fold}_train" for f in mini_set.folds} <= set(whole)
    assert set(whole["full"]["model_id"]) == set(_load(out, default, offline)[1]["model_id"])


def test_export_declares_fold_splits(tmp_path: Path, offline: Path) -> None:
    from tests.test_card import _with_folds

    root = write_synthetic(tmp_path / "syn", 16, n_tasks=4, models_per_shard=8, seed=5)
    doc = _with_folds(root)
    out = export_hf(root, tmp_path / "hf")
    config = layout_file_name("cnn3", '{"num_classes":5}').removesuffix(".csv")
    loaded = datasets.load_dataset(str(out), config, cache_dir=str(offline))
    expected = {"full"} | {f"fold{i}_{r}" for i in range(2) for r in ("train", "heldout_models", "heldout_tasks")}
    assert set(loaded) == expected
    for i, fold in enumerate(doc["folds"]):
        assert sorted(loaded[f"fold{i}_train"]["model_id"]) == sorted(fold["train_ids"])
        assert sorted(loaded[f"fold{i}_heldout_models"]["model_id"]) == sorted(fold["heldout_model_ids"])
        assert sorted(loaded[f"fold{i}_heldout_tasks"]["model_id"]) == sorted(fold["heldout_task_ids"])
    assert sorted(loaded["full"]["model_id"]) == sorted(modelset.open(root).metadata.index)
    # each model is stored once, whatever the number of folds
    parts = list((out / "data" / config).glob("*.parquet"))
    import pyarrow.parquet as pq

    assert sum(pq.read_metadata(p).num_rows for p in parts) == 16


def test_export_refuses_to_replace_and_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modelset.cli import main

    root = write_synthetic(tmp_path / "syn", 6, n_tasks=3, seed=6)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ExistsError, match=r"hf exists"):
        export_hf(root, out)
    assert main(["export", "--format", "hf", "--zoo", str(root), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "mine.txt").read_text() == "keep me"
    assert main(["export", "--format", "hf", "--zoo", str(root), "--out", str(out), "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "README.md").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]  # no staging left behind
    header = json.loads((root / "modelset.json").read_text())
    assert header["name"] in (out / "README.md").read_text()
    with pytest.raises(ExportError, match="inside the model set"):
        export_hf(root, root / "hf")
    modelset.verify(root)  # untouched


def test_the_set_itself_loads_its_tables(mini_set, offline: Path) -> None:
    """The set's own card declares its model and task tables as configs."""
    models = datasets.load_dataset(str(mini_set.root), cache_dir=str(offline))
    assert list(models) == ["train"] and sorted(models["train"]["model_id"]) == sorted(mini_set.metadata.index)
    tasks = datasets.load_dataset(str(mini_set.root), "tasks", cache_dir=str(offline))
    assert list(tasks["train"]["task"]) == list(mini_set.tasks.index)
