"""End to end on the mini model set (configs/mini.yaml): the controls land at chance and at the
maximum on real trained models, and every track either scores or says why it cannot.

Uses the session fixture ``mini_set`` when conftest provides one; otherwise builds the set once
for this module (about a minute on two cores), or reuses the folder named by ``MODELSET_MINI``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import modelset
from benchmarks.results import load_results
from benchmarks.runner import run
from modelset.errors import DataUnavailableError

pytestmark = pytest.mark.slow
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mini.yaml"


@pytest.fixture(scope="module")
def mini(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> modelset.ModelSet:
    try:  # a session-wide mini set shared with the other test files, when conftest provides one
        return request.getfixturevalue("mini_set")
    except pytest.FixtureLookupError:
        pass
    given = os.environ.get("MODELSET_MINI")
    if given and (Path(given) / "modelset.json").exists():
        return modelset.open(given)
    build = pytest.importorskip("builders.build").build
    out = tmp_path_factory.mktemp("mini") / "mini"
    try:
        build(CONFIG, out, progress=False)
    except DataUnavailableError as exc:
        pytest.skip(f"mini set cannot be built here: {exc}")
    return modelset.open(out)


def _values(results: list, method: str, track: str, metric: str) -> list[float]:
    return [r.metrics[metric] for r in results if (r.method, r.track) == (method, track)
            and r.status == "ok" and r.metrics.get(metric) is not None]


def test_controls_on_the_mini_set(mini: modelset.ModelSet, tmp_path: Path) -> None:
    # Both task folds of the mini set (its random vectors are fixed per model and fold).
    run(mini, tmp_path, methods=["random", "oracle"], progress=False)
    results = load_results(tmp_path)
    assert not [r for r in results if r.status == "failed"]
    for track, metric in [("task_classification", "accuracy"), ("task_classification", "auc"),
                          ("retrieval", "map"), ("retrieval", "rank1")]:
        assert _values(results, "oracle", track, metric) == [1.0, 1.0], (track, metric)
    auc = np.mean(_values(results, "random", "task_classification", "auc"))
    assert abs(auc - 0.5) < 0.2
    mean_ap = np.mean(_values(results, "random", "retrieval", "map"))
    assert abs(mean_ap - np.mean(_values(results, "random", "retrieval", "chance_map"))) < 0.1
    few = np.mean(_values(results, "random", "few_shot", "accuracy"))
    assert abs(few - np.mean(_values(results, "random", "few_shot", "chance_accuracy"))) < 0.15
    # Flexible few-shot: 0 at chance; the task oracle knows label sets and domains, not variants.
    # (two folds of a four-task set: a random scorer's score per fold spreads by about ±0.2)
    assert abs(np.mean(_values(results, "random", "few_shot", "flex_score"))) < 0.2
    assert np.mean(_values(results, "oracle", "few_shot", "flex_score")) > 0.3
    # The mini set has measured transfer affinities and label overlaps: those tracks run.
    statuses = {(r.track, r.status) for r in results if r.method == "random"}
    assert ("transfer", "ok") in statuses and ("task_relations", "ok") in statuses


def test_data_methods_feed_each_model_its_own_input_norm(mini: modelset.ModelSet) -> None:
    import torch

    from benchmarks.methods._probes import model_inputs
    from modelset.tasks import convert_input_norm

    table = mini.metadata
    outside = table.index[table["input_norm"].fillna("standard") != "standard"]
    standard = table.index[table["input_norm"].fillna("standard") == "standard"]
    assert len(outside) and len(standard)  # the mini set trains both kinds
    x = torch.randn(4, 1, 28, 28)
    assert model_inputs(mini, standard[0], x) is x
    converted = model_inputs(mini, outside[0], x)
    torch.testing.assert_close(converted, convert_input_norm(x, "fashion_mnist", table.at[outside[0], "input_norm"]))
    assert not torch.equal(converted, x)
