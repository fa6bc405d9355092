"""Task folds ship inside the set: written by the writer, read back by the reader, checked by
verify, and refused with a clear error when a file was tampered with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelset
from modelset.errors import ModelSetError, SchemaError
from modelset.folds import FOLDS_FILE, FoldConfig, make_folds, make_model_folds
from modelset.synthetic import write_synthetic
from modelset.writer import ModelSetWriter, write_checksums


@pytest.fixture()
def with_folds(tmp_path: Path) -> Path:
    path = write_synthetic(tmp_path / "set", 60, n_tasks=6, noise=0.3)
    config = FoldConfig(k=3, seed=5)
    with ModelSetWriter.open(path, name="synthetic-60", config=modelset.open(path).header["config"]) as w:
        w.set_folds(make_folds(w.table, config), config)
        w.finish()
    return path


def test_written_folds_are_read_back_and_verified(with_folds: Path) -> None:
    ms = modelset.open(with_folds)
    assert (with_folds / FOLDS_FILE).exists()
    assert ms.folds == make_folds(ms.metadata, {"k": 3, "seed": 5})
    assert [len(f.heldout_tasks) for f in ms.folds] == [2, 2, 2]
    assert FOLDS_FILE in (with_folds / "SHA256SUMS").read_text()
    modelset.verify(with_folds)


def test_a_set_without_a_fold_file_gets_the_default_folds(tmp_path: Path) -> None:
    ms = modelset.open(write_synthetic(tmp_path / "set", 40, n_tasks=10, noise=0.3))
    assert len(ms.folds) == 5 and ms.folds == make_folds(ms.metadata)


def _tamper(path: Path, change) -> None:
    doc = json.loads((path / FOLDS_FILE).read_text())
    change(doc)
    (path / FOLDS_FILE).write_text(json.dumps(doc))
    write_checksums(path)  # as an attacker would: the checksums prove nothing about intent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["folds"][0]["train_ids"].append(d["folds"][0]["heldout_task_ids"][0]), "trains on held-out models"),
        (lambda d: d["folds"][1]["heldout_tasks"].append(d["folds"][0]["heldout_tasks"][0]), "held out in exactly one fold"),
        (lambda d: d["folds"][0]["train_ids"].append("no-such-model"), "names models not in the set"),
        (lambda d: d["folds"][0].update(fold=2), "has fold number 2, expected 0"),
        (lambda d: d["folds"][0].pop("train_ids"), "must have exactly the fields"),
        (lambda d: d.update(schema=7), "schema 1"),
        (lambda d: d["folds"][0].update(train_ids=[1, 2]), "list of strings"),
    ],
)
def test_tampered_folds_are_refused_by_name(with_folds: Path, change, message: str) -> None:
    _tamper(with_folds, change)
    with pytest.raises(SchemaError, match=message) as info:
        _ = modelset.open(with_folds).folds
    assert FOLDS_FILE in str(info.value)
    with pytest.raises(ModelSetError, match=message):
        modelset.verify(with_folds)


def test_folds_that_are_not_json_or_too_deep_are_refused(with_folds: Path) -> None:
    (with_folds / FOLDS_FILE).write_text("[" * 100_000)
    with pytest.raises(SchemaError, match="not valid JSON|nested more than 64 levels"):
        _ = modelset.open(with_folds).folds
    (with_folds / FOLDS_FILE).write_text("{not json")
    with pytest.raises(SchemaError, match="not valid JSON|nested more than 64 levels"):
        _ = modelset.open(with_folds).folds


def test_fold_config_is_validated() -> None:
    with pytest.raises(SchemaError, match="folds.k: expected an integer ≥ 2"):
        FoldConfig.from_dict({"k": 1})
    with pytest.raises(SchemaError, match="holdout_model_fraction"):
        FoldConfig.from_dict({"holdout_model_fraction": 1.5})


def test_a_typo_in_the_fold_config_fails_before_any_training(tmp_path: Path) -> None:
    import yaml

    from builders.build import load_config

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "mini.yaml").read_text())
    cfg["folds"] = {"k": 2, "heldout_recipe_famillies": ["outside"]}
    with pytest.raises(SchemaError, match="folds\\.heldout_recipe_famillies: unknown key; did you mean 'heldout_recipe_families'"):
        load_config(cfg)


def test_the_mini_build_ships_its_folds(mini_set) -> None:
    folds = mini_set.folds
    assert (mini_set.root / FOLDS_FILE).exists() and len(folds) == 2
    assert sorted(t for f in folds for t in f.heldout_tasks) == sorted(mini_set.tasks.index)


@pytest.fixture()
def with_model_folds(tmp_path: Path) -> Path:
    path = write_synthetic(tmp_path / "set", 30, n_tasks=2, noise=0.3)
    config = FoldConfig(k=4, seed=1, unit="model")
    with ModelSetWriter.open(path, name="synthetic-30", config=modelset.open(path).header["config"]) as w:
        w.set_folds(make_folds(w.table, config), config)
        w.finish()
    return path


def test_a_set_of_few_tasks_gets_model_folds(with_model_folds: Path) -> None:
    ms = modelset.open(with_model_folds)
    with pytest.raises(SchemaError, match="at least 4 tasks"):
        make_folds(ms.metadata)  # too few tasks for task folds
    folds = ms.folds
    assert folds == make_model_folds(ms.metadata, {"k": 4, "seed": 1}) != make_model_folds(ms.metadata, {"k": 4, "seed": 2})
    assert json.loads((with_model_folds / FOLDS_FILE).read_text())["unit"] == "model"
    tasks = ms.metadata["task"]
    held = [m for f in folds for m in f.heldout_model_ids]
    assert sorted(held) == sorted(ms.metadata.index)  # every model held out exactly once
    for f in folds:
        assert f.unit == "model" and f.heldout_tasks == () and f.heldout_task_ids == ()
        assert f.train_tasks == tuple(sorted(set(tasks)))
        assert sorted([*f.train_ids, *f.heldout_model_ids]) == sorted(ms.metadata.index)
        # dealt per task: every fold holds out 7 or 8 of the 30 models, of both tasks
        assert len(f.heldout_model_ids) in (7, 8) and set(tasks[list(f.heldout_model_ids)]) == set(tasks)
    assert "4 model folds" in (with_model_folds / "README.md").read_text()
    modelset.verify(with_model_folds)


def test_task_folds_keep_their_file(with_folds: Path) -> None:
    doc = json.loads((with_folds / FOLDS_FILE).read_text())
    assert "unit" not in doc and all(f.unit == "task" for f in modelset.open(with_folds).folds)


def _hold_out_twice(doc: dict) -> None:
    model = doc["folds"][0]["heldout_model_ids"][0]
    doc["folds"][1]["train_ids"].remove(model)
    doc["folds"][1]["heldout_model_ids"].append(model)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_hold_out_twice, "held out twice"),
        (lambda d: d["folds"][1]["heldout_model_ids"].clear(), "held out in exactly one model fold"),
        (lambda d: d["folds"][0]["heldout_tasks"].append("t0"), "a model fold \\(unit 'model'\\) holds out none"),
        (lambda d: d.update(unit="family"), "unit must be one of"),
        (lambda d: d.pop("unit"), "hold out no task; task folds hold out at least one"),
    ],
)
def test_tampered_model_folds_are_refused_by_name(with_model_folds: Path, change, message: str) -> None:
    _tamper(with_model_folds, change)
    with pytest.raises(SchemaError, match=message) as info:
        _ = modelset.open(with_model_folds).folds
    assert FOLDS_FILE in str(info.value)
