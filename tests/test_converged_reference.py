"""The card's "Converged reference" section: measured references beside the set's own base models."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from builders.build import _reference_text, load_config
from modelset.errors import SchemaError

REPO = Path(__file__).resolve().parents[1]


def test_section_gives_the_gap_of_the_base_models(tmp_path: Path) -> None:
    proto = {"epochs": 15, "batch_size": 128, "lrs": [0.006], "seeds": 2}
    record = {"references": {
        "full": {"protocol": proto, "tasks": {"t00": {"acc": [0.90, 0.92]}, "t01": {"acc": [0.80, 0.80]}}},
        "budget": {"protocol": dict(proto, epochs=30), "tasks": {"t00": {"acc": [0.85, 0.87]}, "t01": {"acc": [0.78, 0.78]}}},
    }}  # fmt: skip
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(record))
    table = pd.DataFrame({
        "task": ["t00", "t00", "t00", "t01", "t01", "t01"],
        "variant": ["base"] * 5 + ["str"],
        "architecture": ["cnn3"] * 6,
        "test_accuracy": [0.80, 0.84, 0.88, 0.70, 0.74, 0.10],
    })  # fmt: skip
    text = _reference_text(str(path), table)
    assert "| t00 | 0.910 ± 0.014 | 0.860 ± 0.014 | 0.840 | -0.070 | -0.020 |" in text
    assert "| t01 | 0.800 ± 0.000 | 0.780 ± 0.000 | 0.720 | -0.080 | -0.060 |" in text  # variants ignored
    # gaps per model: t00 -0.11, -0.07, -0.03; t01 -0.10, -0.06 against full: median -0.07
    assert "-0.070 against `full`" in text and "30 epochs" in text


def test_a_missing_reference_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="nowhere.json.*converged_reference.py"):
        _reference_text(str(tmp_path / "nowhere.json"), pd.DataFrame())


def test_modelset500_names_a_readable_reference() -> None:
    cfg = load_config(REPO / "configs" / "modelset500.yaml")
    path = REPO / cfg.data.converged_reference
    refs = json.loads(path.read_text())["references"]
    assert {"full", "budget"} <= set(refs)
    for kind in refs.values():
        assert kind["tasks"] and all(0.2 < a <= 1 for t in kind["tasks"].values() for a in t["acc"])
