"""An imported Small CNN Zoo runs on the benchmark: its model folds (the field's split by runs)
feed the prediction tracks, the task tracks say why they do not apply, and the leaderboard renders.

The zoo is written by the test in the zoo's layout with a signal a method can learn: the test
accuracy rises over a run and sets the weights' scale, the learning rate their mean."""

from __future__ import annotations

import json
import math

import pytest

import modelset
from modelset.importers.cnn_zoo import import_cnn_zoo
from tests.test_import_cnn_zoo import write_zoo

pytestmark = pytest.mark.slow
METHODS = ("weight_stats", "flat_cosine")
N_RUNS = 30


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory):
    from benchmarks.cli import main

    root = tmp_path_factory.mktemp("zoo-bench")
    write_zoo(root / "src" / "mnist", n_runs=N_RUNS, learnable=True, shuffle=True, seed=3)
    import_cnn_zoo(root / "src", root / "out", progress=False)
    code = main(["run", "--zoo", str(root / "out"), "--results", str(root / "results"), "--methods", *METHODS])
    assert code == 0
    return root


def _results(root, track: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "results").rglob("*.json")) if json.loads(p.read_text()).get("track") == track]


def test_imported_zoo_ships_model_folds(board) -> None:
    with modelset.open(board / "out") as ms:
        folds = ms.folds
        assert len(folds) == 5 and all(f.unit == "model" and not f.heldout_task_ids for f in folds)
        assert sorted(m for f in folds for m in f.heldout_model_ids) == sorted(ms.metadata.index)
        assert {len(f.heldout_model_ids) for f in folds} == {N_RUNS // 5}
        assert len(ms.checkpoint_table) == 9 * N_RUNS
    modelset.verify(board / "out")


@pytest.mark.parametrize("method", METHODS)
def test_prediction_tracks_score_the_held_out_runs(board, method: str) -> None:
    for track, metric in (("accuracy_prediction", "kendall_tau"), ("hyperparameter_prediction", "lr_kendall_tau")):
        results = [r for r in _results(board, track) if r["method"] == method]
        assert len(results) == 5 and all(r["status"] == "ok" for r in results), [r.get("reason") for r in results]
        for r in results:
            assert math.isfinite(r["metrics"][metric])
            units = r["curves"]["per_unit"]
            assert units["unit"] == "model fold" and units["ids"] == [f"mnist@fold{r['fold']}"]
        if track == "accuracy_prediction":
            assert all(r["metrics"]["n_models"] == N_RUNS // 5 for r in results)
            assert all(r["metrics"]["n_checkpoints"] == 9 * N_RUNS // 5 for r in results)
    tau = [r["metrics"]["kendall_tau"] for r in _results(board, "accuracy_prediction") if r["method"] == "weight_stats"]
    # The accuracy sets the weights' scale, which weight statistics read off directly.
    assert min(tau) > 0.8, tau


def test_checkpoint_order_is_scored_on_the_held_out_runs(board) -> None:
    results = _results(board, "lineage")
    assert len(results) == 10 and all(r["status"] == "ok" for r in results)
    for r in results:
        assert r["metrics"]["n_runs"] == N_RUNS // 5 and r["metrics"]["n_queries"] == 0  # no variants to trace
        assert 0.5 < r["metrics"]["order_accuracy"] <= 1.0  # accuracy rises with the epoch, and sets the scale


def test_task_tracks_say_why_they_do_not_apply(board) -> None:
    for track in ("retrieval", "task_classification", "task_relations", "transfer"):
        results = _results(board, track)
        assert results and all(r["status"] == "not_applicable" and r["reason"] for r in results), track


def test_the_leaderboard_renders(board) -> None:
    from benchmarks.cli import main

    assert main(["leaderboard", "--results", str(board / "results"), "--out", str(board / "board")]) == 0
    text = (board / "board" / "leaderboard.md").read_text()
    assert "accuracy τ" in text and "weight_stats" in text
    assert "model folds [0, 1, 2, 3, 4]" in text and "every model is held out in exactly one fold" in text
