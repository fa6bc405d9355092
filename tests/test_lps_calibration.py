"""Calibrated search scores: probabilities fit on the folds' held-out pairs, checked across folds."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lps
import modelset
from lps.calibration import CALIBRATION_FILE, Calibration, expected_calibration_error, fit_calibration
from lps.search import search_zoo
from modelset.errors import ModelSetError
from modelset.synthetic import write_synthetic


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    ms = modelset.open(write_synthetic(tmp_path_factory.mktemp("zoo") / "syn", 80, n_tasks=8, noise=0.3, seed=1))
    folds = ms.folds  # 8 tasks: 4 folds of 2 held-out tasks
    scorers = [lps.train(ms, train_ids=f.train_ids, seed=f.fold, epochs=4) for f in folds]
    return ms, scorers, fit_calibration(ms, list(zip(folds, scorers)))


def test_probabilities_rise_with_the_score_and_match_the_held_out_frequencies(calibrated) -> None:
    ms, _, calibration = calibrated
    assert set(calibration.curves) == {"same_task", "same_labels", "same_domain"}
    grid = np.linspace(-1, 1, 41)
    p = calibration.probability("same_task", grid)
    assert np.all(np.diff(p) >= 0) and p.min() >= 0 and p.max() <= 1
    report = calibration.report["questions"]["same_task"]
    # 8 tasks of 10 models: a pair shares its task with probability 9/79.
    assert report["base_rate"] == pytest.approx(9 / 79, abs=1e-6)
    assert report["ece_across_folds"] < 0.1
    assert report["brier_across_folds"] < report["brier_of_base_rate"]  # better than knowing the base rate


def test_expected_calibration_error_of_known_predictions() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20_000)
    truth = rng.uniform(size=p.size) < p
    assert expected_calibration_error(truth, p) < 0.02  # calibrated by construction
    assert expected_calibration_error(truth, np.full(p.size, 0.9)) > 0.3


def test_save_load_and_a_damaged_file(calibrated, tmp_path) -> None:
    _, _, calibration = calibrated
    calibration.save(tmp_path)
    again = Calibration.load(tmp_path)
    scores = np.linspace(-0.5, 1.0, 7)
    np.testing.assert_allclose(again.probability("same_task", scores), calibration.probability("same_task", scores))
    doc = json.loads((tmp_path / CALIBRATION_FILE).read_text())
    doc["curves"]["same_task"]["probability"][0] = 7.0
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(doc))
    with pytest.raises(ModelSetError, match=r"calibration.json: not an LPS calibration .*outside \[0, 1\]"):
        Calibration.load(tmp_path)


def test_search_shows_probabilities(calibrated) -> None:
    ms, scorers, calibration = calibrated
    mid = ms.metadata.index[3]
    hits = search_zoo(scorers[0], ms, ms.state_dict(mid), k=4, calibration=calibration)
    assert {"p_same_task", "p_same_labels", "p_same_domain"} <= set(hits.columns)
    assert hits["p_same_task"].is_monotonic_decreasing and hits["model_id"].iloc[0] == mid
    with pytest.raises(ModelSetError, match="at least 2 task folds"):
        fit_calibration(ms, [(ms.folds[0], scorers[0])])


def test_search_command_prints_probabilities_and_the_verdict(calibrated, tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    from lps.__main__ import main

    ms, scorers, calibration = calibrated
    folder = tmp_path / "lps" / "search"
    scorers[0].save(folder)
    calibration.save(folder)
    mid = ms.metadata.index[3]
    save_file(ms.state_dict(mid), str(tmp_path / "q.safetensors"))
    args = ["search", str(tmp_path / "q.safetensors"), "--zoo", str(ms.root), "--lps", str(folder), "-k", "3"]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["hits"][0]["model_id"] == mid and "p_same_task" in doc["hits"][0]
    assert doc["good_match"] == (doc["hits"][0]["p_same_task"] >= 0.5)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "p_same_task" in out and ("no good match" in out) == (not doc["good_match"])
