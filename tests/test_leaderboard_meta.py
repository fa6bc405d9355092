"""The leaderboard renders a track from its declared metadata alone: a track defined in this file
gets its column labels, direction, order, figure and ground-truth note without any edit to the
renderer, and presentation metadata stays out of the result record (and its hash)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import leaderboard
from benchmarks.results import Result, load_results, write_result
from benchmarks.tracks import Plot, Track, TrackError, TrackMeta, get_track, register_track, unregister_track

META = TrackMeta(
    name="toy_track",
    description="a track defined by a test",
    primary=("hits", "cost"),
    lower_is_better=("cost",),
    labels={"hits": "toy hits"},
    order=5,  # before every built-in track
    plots=(Plot("cmc", "Toy CMC", "Toy curves of fold {fold}."),),
    reliability="truth_reliability",
)


@pytest.fixture
def toy_track():
    @register_track
    class Toy(Track):
        meta = META

    yield Toy
    unregister_track("toy_track")


def _write(folder: Path, track: str, track_meta: dict, metrics: dict[str, float], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(6)]
    for name in ("alpha", "beta"):
        meta = {"name": name, "learned": False, "needs_data": False, "control": False, "privileged": False,
                "invariances": [], "reference": "test"}
        per = {k: [float(v) for v in rng.uniform(0, 1, len(tasks))] for k in track_meta["primary"]}
        write_result(folder, Result(
            method=name, track=track, fold=0, status="ok", input_hash="x", method_meta=meta, method_config={},
            track_meta=track_meta, track_config={}, zoo={"name": "t", "models": 1},
            metrics={**{k: float(np.mean(v)) for k, v in per.items()}, **metrics},
            curves={"per_unit": {"unit": "task", "ids": tasks, "metrics": per},
                    "cmc": {"rank": [1, 2], "hit_rate": [0.5, 1.0]}}))


def test_new_track_renders_from_its_metadata(toy_track, tmp_path: Path) -> None:
    _write(tmp_path, "toy_track", META.to_dict(), {"truth_reliability": 0.2})
    _write(tmp_path, "retrieval", get_track("retrieval").meta.to_dict(), {}, seed=1)
    results = load_results(tmp_path)
    _, columns, _ = leaderboard.table(results)
    assert columns[:2] == [("toy_track", "hits"), ("toy_track", "cost")]  # order=5 puts it first
    assert columns[2][0] == "retrieval"
    md = leaderboard.markdown(results)
    header = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert "toy hits (ground truth not reproducible)" in header
    assert "toy_track.cost ↓ (ground truth not reproducible)" in header  # no label: track.metric, ↓ from direction
    assert "| mAP | rank-1 | rank-5 |" in header  # built-in labels declared on the retrieval track
    assert "Ground truth of `toy_track`: test–retest reliability 0.200" in md
    # the reliability metric is noted under the table, not listed among the track's details
    assert "truth_reliability" not in md.split("## toy_track", 1)[1].split("##", 1)[0]
    titles = [title for title, _, _ in leaderboard.figures(results)]
    assert titles == ["Toy CMC", "Retrieval CMC curves"]


def test_unknown_track_falls_back_to_recorded_metadata(tmp_path: Path) -> None:
    _write(tmp_path, "elsewhere", {"name": "elsewhere", "description": "d", "primary": ["score"]}, {})
    results = load_results(tmp_path)
    md = leaderboard.markdown(results)
    assert "| elsewhere.score |" in md
    assert leaderboard.figures(results) == []


def test_presentation_stays_out_of_the_record() -> None:
    record = META.to_dict()
    assert set(record) == {"name", "description", "primary", "reference", "lower_is_better", "config"}
    plain = TrackMeta(name="toy_track", description="a track defined by a test", primary=("hits", "cost"),
                      lower_is_better=("cost",))
    assert plain.to_dict() == record  # so result hashes do not change with labels or plots


def test_labels_must_name_primary_metrics() -> None:
    with pytest.raises(TrackError, match=r"labels for \['recall'\]"):
        TrackMeta(name="bad", description="", primary=("hits",), labels={"recall": "R"})


def test_unknown_figure_kind_is_named(toy_track, tmp_path: Path) -> None:
    bad = TrackMeta(name="toy_bad", description="", primary=("hits",), plots=(Plot("rocc", "t", "c"),))

    @register_track
    class Bad(Track):
        meta = bad

    try:
        _write(tmp_path, "toy_bad", bad.to_dict(), {})
        with pytest.raises(KeyError, match="rocc.*roc"):
            leaderboard.figures(load_results(tmp_path))
    finally:
        unregister_track("toy_bad")


def test_access_column_and_weight_only_baselines() -> None:
    """The board says how each method reaches a model; only parameter readers are weight-only
    baselines, and results written before ``access`` existed read it from ``needs_data``."""
    from benchmarks import leaderboard

    assert leaderboard.access({"needs_data": True}) == "data"
    assert leaderboard.access({"needs_data": False}) == "weights"
    assert leaderboard.access({"access": "forward", "needs_data": False}) == "forward"
    assert leaderboard.weight_only({"access": "weights"})
    assert not leaderboard.weight_only({"access": "forward"})
    assert not leaderboard.weight_only({"access": "weights", "proposed": True})
    assert not leaderboard.weight_only({"access": "weights", "control": True})
