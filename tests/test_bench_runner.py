"""Runner, result files and leaderboard: controls land at chance and at the maximum, re-runs skip
finished results, tracks a set cannot support are recorded as not applicable, and a method
defined in this file reaches the leaderboard without touching any other code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import modelset
from benchmarks import leaderboard
from benchmarks.methods import MethodMeta, SimilarityMethod, register_method, unregister_method
from benchmarks.results import ResultError, load_results, read_result, result_path
from benchmarks.runner import run
from benchmarks.tracks import list_tracks
from modelset.synthetic import write_synthetic

FOLDS = (0, 1, 2, 3, 4)  # 10 tasks: five folds of two held-out tasks
FAST_TRACKS = {"few_shot": {"episodes": 100}}


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> modelset.ModelSet:
    # 10 tasks × 12 models: enough pairs and queries for the chance checks to be tight.
    return modelset.open(write_synthetic(tmp_path_factory.mktemp("syn") / "set", 120, n_tasks=10, noise=0.3))


@pytest.fixture(scope="module")
def controls(syn: modelset.ModelSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("controls")
    run(syn, out, methods=["random", "oracle"], folds=FOLDS, track_config=FAST_TRACKS, progress=False)
    return out


def _metric(results_dir: Path, method: str, track: str, metric: str) -> list[float]:
    values = []
    for fold in FOLDS:
        result = read_result(result_path(results_dir, method, track, fold))
        assert result.status == "ok", result.reason
        values.append(result.metrics[metric])
    return values


def test_oracle_reaches_the_maximum(controls: Path) -> None:
    for track, metric in [("task_classification", "accuracy"), ("task_classification", "auc"),
                          ("retrieval", "map"), ("retrieval", "rank1"), ("retrieval", "rank5")]:
        assert _metric(controls, "oracle", track, metric) == [1.0] * len(FOLDS), (track, metric)


def test_random_lands_at_chance(controls: Path) -> None:
    acc = np.mean(_metric(controls, "random", "task_classification", "accuracy"))
    chance = np.mean(_metric(controls, "random", "task_classification", "chance_accuracy"))
    assert abs(acc - chance) < 0.15
    assert abs(np.mean(_metric(controls, "random", "task_classification", "auc")) - 0.5) < 0.05
    mean_ap = np.mean(_metric(controls, "random", "retrieval", "map"))
    chance_map = np.mean(_metric(controls, "random", "retrieval", "chance_map"))
    assert abs(mean_ap - chance_map) < 0.12


def test_missing_metadata_is_recorded_as_not_applicable(controls: Path) -> None:
    # Every synthetic task shares one label set and one domain and there are no variants, so no
    # grouping cuts across another: flexible few-shot has no context to draw.
    for track in ("variant_robustness", "transfer", "task_relations", "few_shot"):
        result = read_result(result_path(controls, "random", track, 0))
        assert result.status == "not_applicable"
        assert result.reason  # says why, e.g. "the set has no 'transfer_affinity' relation"
    assert "transfer_affinity" in read_result(result_path(controls, "random", "transfer", 0)).reason


def test_result_files_are_typed_and_complete(controls: Path) -> None:
    results = load_results(controls)
    assert len(results) == 2 * len(list_tracks()) * len(FOLDS)
    r = read_result(result_path(controls, "oracle", "retrieval", 1))
    assert (r.method, r.track, r.fold, r.schema_version) == ("oracle", "retrieval", 1, 2)
    units = r.curves["per_unit"]
    assert units["unit"] == "task" and len(units["ids"]) == 2 and units["metrics"]["map"] == [1.0, 1.0]
    assert len(r.input_hash) == 64 and r.zoo["models"] == 120
    assert r.curves["cmc"]["hit_rate"][0] == 1.0
    assert r.method_meta["privileged"] is True and r.split["train_ids"] > 0


def test_bad_result_files_raise_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x__retrieval__fold0.json"
    bad.write_text("{not json")
    with pytest.raises(ResultError, match="x__retrieval__fold0.json.*JSON"):
        read_result(bad)
    bad.write_text(json.dumps({"schema_version": 2, "method": "x"}))
    with pytest.raises(ResultError, match="missing fields"):
        read_result(bad)
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ResultError, match="schema_version 99, expected 2"):
        read_result(bad)


def test_rerun_skips_finished_results_and_redoes_changed_ones(syn: modelset.ModelSet, tmp_path: Path) -> None:
    kwargs = dict(methods=["random", "weight_stats"], tracks=["retrieval"], folds=[0], progress=False)
    first = run(syn, tmp_path, **kwargs)
    assert len(first.written) == 2 and not first.skipped
    mtime = os.stat(result_path(tmp_path, "weight_stats", "retrieval", 0)).st_mtime_ns
    second = run(syn, tmp_path, **kwargs)
    assert not second.written and len(second.skipped) == 2
    assert os.stat(result_path(tmp_path, "weight_stats", "retrieval", 0)).st_mtime_ns == mtime
    # A changed config of one method re-runs that method only.
    third = run(syn, tmp_path, method_config={"random": {"dim": 8}}, **kwargs)
    assert [p.name for p in third.written] == ["random__retrieval__fold0.json"]
    # A failed result is retried: corrupt the file's status.
    path = result_path(tmp_path, "weight_stats", "retrieval", 0)
    data = json.loads(path.read_text())
    data["status"] = "failed"
    path.write_text(json.dumps(data))
    again = run(syn, tmp_path, method_config={"random": {"dim": 8}}, **kwargs)
    assert [p.name for p in again.written] == ["weight_stats__retrieval__fold0.json"]


class _LayerNorms(SimilarityMethod):
    """A user's method: the norm of every tensor of the model, compared by cosine."""

    meta = MethodMeta(name="test_layer_norms", learned=False, needs_data=False, invariances=("permutation",),
                      reference="a test", description="norm of every parameter tensor")

    def _embed(self, ms: modelset.ModelSet, ids: list[str]) -> torch.Tensor:
        return torch.stack([torch.stack([v.norm() for _, v in sorted(ms.state_dict(i).items())]) for i in ids])


def test_a_method_defined_here_appears_on_the_leaderboard(syn: modelset.ModelSet, controls: Path, tmp_path: Path) -> None:
    register_method(_LayerNorms)
    try:
        results = tmp_path / "runs"
        for src in controls.glob("*.json"):  # the controls' results, plus the new method's own run
            (results / src.name).parent.mkdir(exist_ok=True)
            (results / src.name).write_text(src.read_text())
        summary = run(syn, results, methods=["test_layer_norms"], folds=FOLDS, track_config=FAST_TRACKS, progress=False)
        assert len(summary.written) == len(list_tracks()) * len(FOLDS) and not summary.failed
        paths = leaderboard.render(results, tmp_path / "board")
    finally:
        unregister_method("test_layer_norms")
    md = paths["md"].read_text()
    assert "| test_layer_norms |" in md
    csv = paths["csv"].read_text().splitlines()
    assert csv[0].startswith("method,learned,needs_data")
    rows = {line.split(",")[0]: line for line in csv[1:]}
    assert set(rows) == {"test_layer_norms", "random", "oracle"}
    # Controls are listed last, the contender first.
    assert csv[1].startswith("test_layer_norms")
    page = paths["html"].read_text()
    # Plots of the tracks that apply to the synthetic set (few-shot has no cross-cutting context there).
    assert "test_layer_norms" in page and page.count("src='data:image/png;base64,") >= 2
    assert "http://" not in page and "https://" not in page  # self-contained: opens offline


def test_leaderboard_is_a_pure_function_of_result_files(controls: Path, tmp_path: Path) -> None:
    a = leaderboard.render(controls, tmp_path / "a")
    b = leaderboard.render(controls, tmp_path / "b")
    for kind in ("csv", "md", "html"):
        assert a[kind].read_bytes() == b[kind].read_bytes(), kind
    frame = leaderboard.leaderboard_frame(load_results(controls))
    oracle = frame.set_index("method").loc["oracle"]
    assert oracle["retrieval.map.mean"] == 1.0 and oracle["retrieval.map.low"] == oracle["retrieval.map.high"] == 1.0
    assert oracle["retrieval.map.n"] == 10  # every task is a unit: each held out in one fold
    assert oracle["variant_robustness.rank1.status"] == "n/a"
    random = frame.set_index("method").loc["random"]
    assert random["retrieval.map.low"] < random["retrieval.map.mean"] < random["retrieval.map.high"]
    with pytest.raises(ResultError, match="folds \\[7\\] do not exist; the set has folds 0 to 4"):
        run(load_results(controls)[0].zoo["path"], tmp_path / "x", methods=["random"], folds=[7], progress=False)


def test_significance_marks_and_lps_line(tmp_path: Path) -> None:
    """Built from result files alone: a method that wins on every task is the only bold cell; one
    that ties the best within noise is bold too; the LPS line names the best weight-only rival."""
    from benchmarks.results import Result, write_result

    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(20)]
    base = rng.uniform(0.3, 0.6, len(tasks))
    scores = {"lps": base + 0.2, "weight_stats": base + 0.2 + rng.normal(0, 0.01, len(tasks)),
              "flat_cosine": base, "random": base - 0.2}
    for name, values in scores.items():
        meta = {"name": name, "learned": name == "lps", "needs_data": False, "control": name == "random",
                "privileged": False, "proposed": name == "lps", "invariances": [], "reference": "test"}
        for f in range(2):
            part = slice(f * 10, f * 10 + 10)
            units = {"unit": "task", "ids": tasks[part], "metrics": {"map": [float(v) for v in values[part]]}}
            write_result(tmp_path, Result(
                method=name, track="retrieval", fold=f, status="ok", input_hash="x", method_meta=meta, method_config={},
                track_meta={"name": "retrieval", "primary": ["map"]}, track_config={}, zoo={"name": "t", "models": 1},
                metrics={"map": float(values[part].mean())}, curves={"per_unit": units}))
    results = load_results(tmp_path)
    methods, columns, cells = leaderboard.table(results)
    best = leaderboard._best(methods, columns, cells, results)
    assert ("lps", "retrieval", "map") in best and ("weight_stats", "retrieval", "map") in best
    assert ("flat_cosine", "retrieval", "map") not in best and ("random", "retrieval", "map") not in best
    assert cells[("lps", "retrieval", "map")].n == 20
    [line] = leaderboard.lps_versus_baseline(results)
    assert line["baseline"] in ("weight_stats", "flat_cosine") and line["units"] == 20
    md = leaderboard.markdown(results)
    assert f"lps − {line['baseline']} on `retrieval` map" in md and "Wilcoxon" in md
    assert "Controls (random) are listed last" in md
