"""The field's standard tracks — accuracy prediction (Unterthiner et al. 2020), hyper-parameter
prediction (Schürholt et al. 2021/2022) and lineage recovery (Horwitz et al. 2024) — on a small
written set with training trajectories: a method whose embedding holds the answer scores at the
top, a random one near chance, and methods or sets that cannot be scored say why. Plus the
checkpoint parameter of the method interface and ``ms.checkpoint_table``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import modelset
from benchmarks.methods import MethodError, MethodMeta, SimilarityMethod, create_method
from benchmarks.tracks import get_track, list_tracks
from benchmarks.tracks.lineage import checkpoint_epochs
from modelset.architectures import build_architecture
from modelset.errors import MissingModelError, SchemaError
from modelset.folds import FoldConfig, make_folds
from modelset.writer import ModelRecord, ModelSetWriter

N_TASKS, PER_TASK = 6, 6
KWARGS = {"num_classes": 3}
FIELD_TRACKS = ("accuracy_prediction", "hyperparameter_prediction", "lineage")


def _checkpoint_names(epochs: int) -> list[str]:
    return ["init", *[f"epoch_{e}" for e in range(1, epochs)], "final"]


def write_trajectory_set(path: Path, *, optimizers: tuple[str, ...] = ("sgd", "adam"), variants: bool = True,
                         trajectories: bool = True) -> modelset.ModelSet:  # fmt: skip
    """``N_TASKS`` tasks × ``PER_TASK`` base runs of 2-4 epochs, each with checkpoints ``init``,
    ``epoch_{e}``, ``final`` and their figures in ``checkpoint_metrics`` (when ``trajectories``),
    and (when ``variants``) one pruned twin per run that starts (``init``) from the run's final weights,
    with no figures of its own but the table's ``test_accuracy``. The last run of
    each task is of the held-out recipe family "outside"; 3 task folds."""
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    shapes = {k: v.shape for k, v in build_architecture("cnn3", KWARGS).state_dict().items()}
    records = []
    for t in range(N_TASKS):
        proto = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
        for i in range(PER_TASK):
            epochs = 2 + i % 3
            names = _checkpoint_names(epochs) if trajectories else ["final"]
            ceiling = float(rng.uniform(0.55, 0.95))
            start = {k: 0.3 * torch.randn(s, generator=gen) for k, s in shapes.items()}
            states, figures = {}, {}
            for name in names:
                e = 0 if name == "init" else epochs if name == "final" else int(name.split("_")[1])
                progress = e / epochs
                states[name] = {k: start[k] + progress * proto[k] for k in shapes}
                acc = 1 / 3 + (ceiling - 1 / 3) * math.sqrt(progress) + float(rng.normal(0, 0.01))
                figures[name] = {"epoch": e, "step": 10 * e, "test_accuracy": round(min(max(acc, 0.0), 1.0), 4),
                                 "train_loss": None if e == 0 else round(1.1 / (1 + e), 4)}  # fmt: skip
            row = {
                "task": f"t{t}", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": i,
                "recipe_family": "outside" if i == PER_TASK - 1 else "zoo",
                "optimizer": optimizers[i % len(optimizers)], "lr": float(10 ** rng.uniform(-3, -1)),
                "weight_decay": float(10 ** rng.uniform(-5, -3)), "epochs": epochs,
                "test_accuracy": figures["final"]["test_accuracy"],
            }  # fmt: skip
            if trajectories:
                row["checkpoint_metrics"] = json.dumps(figures)
            base_id = f"t{t}-base-{i}"
            records.append(ModelRecord(base_id, "cnn3", KWARGS, states, row))
            if variants:
                pruned = {k: v.clone() for k, v in states["final"].items()}
                pruned["head.weight"][:, ::2] = 0.0
                vrow = {k: v for k, v in row.items() if k != "checkpoint_metrics"}
                vrow |= {"variant": "pruned", "parent_id": base_id, "test_accuracy": round(0.9 * row["test_accuracy"], 4)}
                # As STR and magnitude pruning do, the variant starts from its parent's trained weights.
                twin = {"init": states["final"], "final": pruned}
                records.append(ModelRecord(f"{base_id}-pruned", "cnn3", KWARGS, twin, vrow))
    with ModelSetWriter.open(path, name="field-tracks-test", config={}) as w:
        w.write_shard(records)
        w.set_tasks(pd.DataFrame({"dataset": "synthetic", "classes": [[0, 1, 2]] * N_TASKS},
                                 index=[f"t{t}" for t in range(N_TASKS)]))  # fmt: skip
        folds = FoldConfig(k=3, seed=0, heldout_recipe_families=("outside",))
        w.set_folds(make_folds(w.table, folds), folds)
        w.finish({"Summary": "field tracks test set"})
    return modelset.open(path)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> modelset.ModelSet:
    return write_trajectory_set(tmp_path_factory.mktemp("field") / "set")


# -- methods that hold the answer (test controls, not registered) -------------------------------
def _accuracy(ms: modelset.ModelSet, mid: str, checkpoint: str) -> float:
    """The recorded test accuracy of a checkpoint (trajectory figures, else the table's final)."""
    if not hasattr(ms, "_test_lookup"):
        ms._test_lookup = ms.checkpoint_table.set_index(["model_id", "checkpoint"])["test_accuracy"].to_dict()
    found = ms._test_lookup.get((mid, checkpoint))
    return float(ms.metadata.at[mid, "test_accuracy"]) if found is None else float(found)


class Truth(SimilarityMethod):
    """Embedding: a checkpoint's test accuracy and epoch, and its model's recipe."""

    meta = MethodMeta(name="truth", learned=False, needs_data=False, invariances=(), reference="test control")

    def _embed(self, ms: modelset.ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        epochs = checkpoint_epochs(ms, ids).set_index(["model_id", "checkpoint"])["epoch"]
        rows = []
        for mid in ids:
            r = ms.metadata.loc[mid]
            rows.append([_accuracy(ms, mid, checkpoint), math.log10(r["lr"]), math.log10(r["weight_decay"]),
                         float(r["epochs"]), float(r["optimizer"] == "sgd"), float(epochs[(mid, checkpoint)])])  # fmt: skip
        return torch.tensor(rows)


class TruthKernel(SimilarityMethod):
    """Similarity only: a Gaussian kernel of the checkpoints' test accuracies (kernel ridge path)."""

    meta = MethodMeta(name="truth_kernel", learned=False, needs_data=False, invariances=(), reference="test control")

    def _similarity(self, ms, ids_a, ids_b, checkpoint="final", checkpoint_b=None) -> torch.Tensor:
        a = torch.tensor([_accuracy(ms, m, checkpoint) for m in ids_a])
        b = torch.tensor([_accuracy(ms, m, checkpoint_b or checkpoint) for m in ids_b])
        return torch.exp(-((a[:, None] - b[None, :]) ** 2) / 0.02)


class FinalOnlyKernel(SimilarityMethod):
    """Similarity only, and of final checkpoints only (no ``checkpoint`` argument)."""

    meta = MethodMeta(name="final_only", learned=False, needs_data=False, invariances=(), reference="test control")

    def _similarity(self, ms, ids_a, ids_b) -> torch.Tensor:
        return torch.ones(len(ids_a), len(ids_b))


class Family(SimilarityMethod):
    """Embedding: one-hot of the base model a model descends from (its lineage, given)."""

    meta = MethodMeta(name="family", learned=False, needs_data=False, invariances=(), reference="test control")

    def _embed(self, ms: modelset.ModelSet, ids: list[str], checkpoint: str = "final") -> torch.Tensor:
        bases = sorted(m for m in ms.metadata.index if not str(ms.metadata.at[m, "parent_id"]))
        out = torch.zeros(len(ids), len(bases))
        for row, mid in enumerate(ids):
            out[row, bases.index(str(ms.metadata.at[mid, "parent_id"]) or mid)] = 1.0
        return out


def _score(method: SimilarityMethod, track: str, ms: modelset.ModelSet, fold: int = 0, seed: int | None = None):
    split = ms.folds[fold]
    method.fit(ms, list(split.train_ids), split.seed if seed is None else seed)
    return get_track(track)().evaluate(method, ms, split)


# -- the reader's checkpoint table --------------------------------------------------------------
def test_checkpoint_table_lists_every_checkpoint_of_a_trajectory(zoo: modelset.ModelSet) -> None:
    table = zoo.checkpoint_table
    assert list(table.columns) == ["model_id", "checkpoint", "epoch", "step", "test_accuracy", "train_loss"]
    base = zoo.metadata.index[zoo.metadata["variant"] == "base"]
    assert set(table["model_id"]) == set(base)  # variants carry no trajectory
    assert len(table) == sum(len(str(zoo.metadata.at[m, "checkpoints"]).split(",")) for m in base)
    run = table[table["model_id"] == "t2-base-2"]  # 4 epochs: init, epoch_1..3, final in epoch order
    assert run["checkpoint"].tolist() == ["init", "epoch_1", "epoch_2", "epoch_3", "final"]
    assert run["epoch"].tolist() == [0, 1, 2, 3, 4] and run["step"].tolist() == [0, 10, 20, 30, 40]
    assert math.isnan(run["train_loss"].iloc[0]) and run["train_loss"].iloc[-1] == pytest.approx(0.22)
    final = run[run["checkpoint"] == "final"]["test_accuracy"].iloc[0]
    assert final == pytest.approx(float(zoo.metadata.at["t2-base-2", "test_accuracy"]))
    assert table["epoch"].dtype == np.int64 and table["test_accuracy"].dtype == np.float64


def _set_with_metrics(path: Path, text: str | None) -> modelset.ModelSet:
    state = build_architecture("cnn3", KWARGS).state_dict()
    row = {"task": "t0", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": 0}
    if text is not None:
        row["checkpoint_metrics"] = text
    with ModelSetWriter.open(path, name="metrics", config={}) as w:
        w.write_shard([ModelRecord("m0", "cnn3", KWARGS, {"init": state, "final": state}, row)])
        w.finish()
    return modelset.open(path)


def test_checkpoint_table_is_empty_without_the_column(tmp_path: Path) -> None:
    table = _set_with_metrics(tmp_path / "set", None).checkpoint_table
    assert table.empty and "test_accuracy" in table.columns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected an object mapping checkpoint names"),
        ('{"epoch_9": {"epoch": 9, "step": 1, "test_accuracy": 0.5, "train_loss": null}}', "not among the model's checkpoints"),
        ('{"final": {"epoch": -1, "step": 1, "test_accuracy": 0.5, "train_loss": null}}', "'epoch' must be a non-negative integer"),
        ('{"final": {"epoch": 1.5, "step": 1, "test_accuracy": 0.5, "train_loss": null}}', "'epoch' must be a non-negative integer"),
        ('{"final": {"epoch": 1, "step": 1, "test_accuracy": 1.5, "train_loss": null}}', "'test_accuracy' must be a number in"),
        ('{"final": {"epoch": 1, "step": 1, "test_accuracy": NaN, "train_loss": null}}', "'test_accuracy' must be a number in"),
        ('{"final": {"epoch": 1, "step": 1, "test_accuracy": 0.5, "train_loss": "low"}}', "'train_loss' must be a number or null"),
        ('{"final": 3}', "expected an object, found int"),
        ("[" * 10_000 + "]" * 10_000, "nested more than"),
    ],
)
def test_malformed_checkpoint_metrics_are_refused_by_model_and_column(tmp_path: Path, text: str, message: str) -> None:
    ms = _set_with_metrics(tmp_path / "set", text)
    with pytest.raises(SchemaError, match=message) as info:
        _ = ms.checkpoint_table
    assert "model 'm0'" in str(info.value) and "checkpoint_metrics" in str(info.value)


# -- the two metrics the tracks add ---------------------------------------------------------------
def test_pairwise_order_accuracy_counts_pairs_and_half_ties() -> None:
    from itertools import combinations

    from benchmarks import metrics

    rng = np.random.default_rng(3)
    for _ in range(20):
        truth, predicted = rng.integers(0, 4, 7).astype(float), rng.integers(0, 3, 7).astype(float)
        pairs = [(i, j) for i, j in combinations(range(7), 2) if truth[i] != truth[j]]
        if not pairs:
            continue
        right = [1.0 if (predicted[j] - predicted[i]) * (truth[j] - truth[i]) > 0 else
                 0.5 if predicted[i] == predicted[j] else 0.0 for i, j in pairs]  # fmt: skip
        assert metrics.pairwise_order_accuracy(truth, predicted) == pytest.approx(np.mean(right))
    assert metrics.pairwise_order_accuracy([0, 1, 2], [5, 5, 5]) == 0.5
    assert math.isnan(metrics.pairwise_order_accuracy([1, 1], [0, 1]))
    assert metrics.r2([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0 and math.isnan(metrics.r2([2.0, 2.0], [1.0, 3.0]))


# -- the checkpoint parameter of the method interface -------------------------------------------
def test_methods_embed_any_named_checkpoint(zoo: modelset.ModelSet) -> None:
    ids = ["t0-base-1", "t3-base-2"]
    flat = create_method("flat_cosine").fit(zoo, list(zoo.folds[0].train_ids), 0)
    init, final = flat.embed(zoo, ids, "init"), flat.embed(zoo, ids)
    from benchmarks.methods.flat_cosine import flat_parameters
    from modelset.weights import WeightSpace

    state = zoo.state_dict("t0-base-1", "init")
    row = zoo.metadata.loc["t0-base-1"]
    space = WeightSpace.from_state_dict(row["architecture"], row["arch_kwargs"], state, fold_norms=False)
    expected = flat_parameters(space)[0]
    torch.testing.assert_close(init[0, : expected.numel()], expected)
    assert not torch.allclose(init, final)
    torch.testing.assert_close(flat.embed(zoo, ids, "final"), final)  # cached per checkpoint, not mixed up
    sim = flat.similarity(zoo, ids, ids, "init", "final")
    torch.testing.assert_close(sim, torch.nn.functional.normalize(init, dim=1) @ torch.nn.functional.normalize(final, dim=1).T)
    with pytest.raises(MissingModelError, match="have no checkpoint 'epoch_3'"):
        flat.embed(zoo, ["t0-base-0"], "epoch_3")  # a 2-epoch run
    # Every built-in method reads other checkpoints (the data methods run each checkpoint's model).
    from benchmarks.methods import get_method, list_methods

    assert all(get_method(name).supports_checkpoints() for name in list_methods())


def test_a_method_without_a_checkpoint_argument_refuses_other_checkpoints(zoo: modelset.ModelSet) -> None:
    method = FinalOnlyKernel().fit(zoo, list(zoo.folds[0].train_ids), 0)
    assert not method.supports_checkpoints() and Truth.supports_checkpoints()
    assert method.similarity(zoo, ["t0-base-0"], ["t1-base-0"]).shape == (1, 1)
    with pytest.raises(MethodError, match="'final_only' reads the final checkpoint only, not 'init'"):
        method.similarity(zoo, ["t0-base-0"], ["t1-base-0"], "init")


# -- accuracy prediction ------------------------------------------------------------------------
def _check_units(outcome, metric_names: tuple[str, ...]) -> None:
    units = outcome.curves["per_unit"]
    assert units["unit"] == "task" and units["ids"]
    for name in metric_names:
        values = [v for v in units["metrics"][name] if v is not None]
        assert len(units["metrics"][name]) == len(units["ids"])
        if values:  # the aggregate is the mean over held-out tasks, the unit of the intervals
            assert outcome.metrics[name] == pytest.approx(np.mean(values), abs=1e-5), name


@pytest.mark.parametrize("method", [Truth, TruthKernel], ids=["boosting", "kernel_ridge"])
def test_accuracy_prediction_ranks_checkpoints_when_the_embedding_holds_the_accuracy(zoo, method) -> None:
    for fold in range(len(zoo.folds)):
        outcome = _score(method(), "accuracy_prediction", zoo, fold)
        assert outcome.status == "ok"
        assert outcome.curves["learner"] == ("boosting" if method is Truth else "kernel ridge")
        # Measured 0.947-0.995 (τ) and ≥ 0.987 (R²) over the 3 folds and both learners.
        assert outcome.metrics["kendall_tau"] > 0.9 and outcome.metrics["pooled_kendall_tau"] > 0.9
        assert outcome.metrics["r2"] > 0.95 and outcome.metrics["pooled_r2"] > 0.95
        split = zoo.folds[fold]
        held = zoo.checkpoint_table[zoo.checkpoint_table["model_id"].isin(split.heldout_task_ids)]
        variants = [m for m in split.heldout_task_ids if zoo.metadata.at[m, "variant"] != "base"]
        assert outcome.metrics["n_checkpoints"] == len(held) + len(variants)  # variants: final only
        _check_units(outcome, ("kendall_tau", "r2"))
        assert len(outcome.curves["per_unit"]["ids"]) == len(split.heldout_tasks)


def test_a_random_embedding_predicts_accuracy_at_chance(zoo: modelset.ModelSet) -> None:
    taus = [_score(create_method("random"), "accuracy_prediction", zoo, 0, seed=s).metrics["pooled_kendall_tau"]
            for s in range(6)]  # fmt: skip
    # Measured over 10 seeds: mean 0.03, standard deviation 0.09, extremes -0.08 and 0.22.
    assert abs(float(np.mean(taus))) < 0.15 and max(abs(t) for t in taus) < 0.4


def test_accuracy_prediction_needs_a_method_that_reads_every_checkpoint(zoo: modelset.ModelSet) -> None:
    outcome = _score(FinalOnlyKernel(), "accuracy_prediction", zoo)
    assert outcome.status == "not_applicable"
    assert "'final_only' reads final checkpoints only" in outcome.reason and "init" in outcome.reason


def test_accuracy_prediction_without_trajectories_uses_final_accuracies(tmp_path: Path) -> None:
    ms = write_trajectory_set(tmp_path / "set", trajectories=False)
    assert ms.checkpoint_table.empty
    outcome = _score(FinalOnlyKernel(), "accuracy_prediction", ms)  # final checkpoints only: applicable
    assert outcome.status == "ok" and outcome.metrics["checkpoints_per_model"] == 1.0
    truth = _score(Truth(), "accuracy_prediction", ms)
    assert truth.metrics["pooled_kendall_tau"] > 0.8


# -- hyper-parameter prediction -----------------------------------------------------------------
def test_hyperparameters_are_recovered_when_the_embedding_holds_them(zoo: modelset.ModelSet) -> None:
    for fold in range(len(zoo.folds)):
        outcome = _score(Truth(), "hyperparameter_prediction", zoo, fold)
        m = outcome.metrics
        assert outcome.status == "ok" and outcome.curves["skipped"] == {}
        assert m["optimizer_accuracy"] == 1.0 and m["optimizer_majority_accuracy"] == pytest.approx(0.5)
        assert m["optimizer_ceiling"] == 1.0  # every held-out optimizer is seen in training
        assert m["epochs_kendall_tau"] == 1.0 and m["epochs_r2"] == pytest.approx(1.0)
        # Boosting on 16 training models resolves a continuous target coarsely: measured τ 0.67-0.93
        # within tasks (6 held-out models a task: one swapped pair costs 0.13) and R² ≥ 0.88.
        for target in ("lr", "weight_decay"):
            assert m[f"{target}_kendall_tau"] > 0.5 and m[f"{target}_r2"] > 0.8 and m[f"pooled_{target}_r2"] > 0.8
        _check_units(outcome, ("optimizer_accuracy", "lr_kendall_tau", "lr_r2", "epochs_kendall_tau"))
        base = zoo.metadata.loc[list(zoo.folds[fold].heldout_task_ids), "variant"] == "base"
        assert m["n_models"] == base.sum()


def test_hyperparameter_prediction_skips_constant_and_absent_targets(tmp_path: Path, zoo) -> None:
    ms = write_trajectory_set(tmp_path / "set", optimizers=("adam",), variants=False)
    outcome = _score(Truth(), "hyperparameter_prediction", ms)
    assert outcome.status == "ok"
    assert outcome.curves["skipped"] == {"optimizer": "constant over the base models"}
    assert outcome.metrics["optimizer_accuracy"] is None and outcome.metrics["lr_r2"] > 0.8
    # Nothing to predict at all: not applicable, with every reason.
    records = []
    for t in range(4):
        for i in range(2):
            row = {"task": f"t{t}", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": i}
            records.append(ModelRecord(f"t{t}-{i}", "cnn3", KWARGS, {"final": build_architecture("cnn3", KWARGS).state_dict()}, row))
    with ModelSetWriter.open(tmp_path / "bare", name="bare", config={}) as w:
        w.write_shard(records)
        w.finish()
    bare = modelset.open(tmp_path / "bare")
    outcome = _score(create_method("weight_stats"), "hyperparameter_prediction", bare)
    assert outcome.status == "not_applicable" and "optimizer: column absent" in outcome.reason
    lineage = _score(create_method("weight_stats"), "lineage", bare)
    assert lineage.status == "not_applicable" and "no held-out-task variant" in lineage.reason


# -- lineage ------------------------------------------------------------------------------------
def test_lineage_finds_every_parent_when_the_embedding_encodes_it(zoo: modelset.ModelSet) -> None:
    for fold in range(len(zoo.folds)):
        outcome = _score(Family(), "lineage", zoo, fold)
        m = outcome.metrics
        assert outcome.status == "ok" and m["rank1"] == 1.0 and m["map"] == 1.0
        bases = int((zoo.metadata["variant"] == "base").sum())
        assert m["mean_gallery"] == bases and m["chance_rank1"] == pytest.approx(1 / bases, abs=1e-6)
        split = zoo.folds[fold]
        assert m["n_queries"] == sum(zoo.metadata.loc[list(split.heldout_task_ids), "variant"] == "pruned")
        # The family embedding is the same for every checkpoint of a run: order at chance exactly.
        assert m["order_accuracy"] == 0.5
        _check_units(outcome, ("rank1", "map", "order_accuracy"))
    truth = _score(Truth(), "lineage", zoo)  # the epoch is in the embedding: every pair in order
    # Runs are the 12 held-out base models; a variant's "init" (its parent's final weights) is no
    # start of training.
    assert truth.metrics["order_accuracy"] == 1.0 and truth.metrics["n_runs"] == 12


def test_lineage_at_chance_for_a_random_embedding(zoo: modelset.ModelSet) -> None:
    found = [_score(create_method("random"), "lineage", zoo, 0, seed=s).metrics for s in range(6)]
    # Measured over 10 seeds: rank-1 mean 0.025 (chance 1/36), mAP 0.12 (chance 0.116), order 0.49.
    assert np.mean([f["rank1"] for f in found]) < 0.1
    assert abs(np.mean([f["map"] for f in found]) - found[0]["chance_map"]) < 0.08
    assert abs(np.mean([f["order_accuracy"] for f in found]) - 0.5) < 0.1


def test_lineage_order_needs_a_method_that_reads_every_checkpoint(zoo: modelset.ModelSet, tmp_path: Path) -> None:
    outcome = _score(FinalOnlyKernel(), "lineage", zoo)
    assert outcome.status == "ok" and outcome.metrics["order_accuracy"] is None
    assert "reads final checkpoints only" in outcome.curves["order_not_applicable"]
    # A constant similarity ties every candidate parent: rank-1 exactly at chance.
    assert outcome.metrics["rank1"] == pytest.approx(outcome.metrics["chance_rank1"])
    no_variants = write_trajectory_set(tmp_path / "set", variants=False)
    alone = _score(FinalOnlyKernel(), "lineage", no_variants)
    assert alone.status == "not_applicable" and "checkpoint order" in alone.reason


def test_no_held_out_model_reaches_a_fitted_learner(zoo: modelset.ModelSet, monkeypatch) -> None:
    from benchmarks.tracks import _predict

    seen: list[str] = []
    original = _predict.Learner._compute_features

    def spy(self, train, test):
        seen.extend(m for m, _ in train)
        return original(self, train, test)

    monkeypatch.setattr(_predict.Learner, "_compute_features", spy)
    split = zoo.folds[1]
    assert split.heldout_recipe_ids  # the "outside" family of the training tasks
    for track in FIELD_TRACKS:
        _score(Truth(), track, zoo, 1)
    assert seen and set(seen) <= set(split.train_ids)
    assert not set(seen) & {*split.heldout_recipe_ids, *split.heldout_task_ids, *split.heldout_model_ids}


def test_the_field_tracks_are_registered_with_their_metadata() -> None:
    for name in FIELD_TRACKS:
        assert name in list_tracks()
        meta = get_track(name).meta
        assert meta.reference and meta.lower_is_better == ()
    assert "StatNN" in get_track("accuracy_prediction").meta.reference
    assert get_track("accuracy_prediction").meta.primary == ("kendall_tau", "r2")


# -- the mini set: real trained models, two checkpoints per base model ---------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["flat_cosine", "weight_stats"])
def test_field_tracks_run_on_the_mini_set(mini_set: modelset.ModelSet, method: str) -> None:
    split = mini_set.folds[0]
    fitted = create_method(method).fit(mini_set, list(split.train_ids), split.seed)
    for name in FIELD_TRACKS:
        outcome = get_track(name)().evaluate(fitted, mini_set, split)
        assert outcome.status == "ok", (name, outcome.reason)
        assert set(get_track(name).meta.primary) <= set(outcome.metrics)
        assert outcome.curves["per_unit"]["ids"] == sorted(split.heldout_tasks)
        for key, value in outcome.metrics.items():
            if value is not None and ("tau" in key or "accuracy" in key or key in ("rank1", "map")):
                assert -1.0 <= value <= 1.0, (name, key, value)
    accuracy = get_track("accuracy_prediction")().evaluate(fitted, mini_set, split)
    assert accuracy.metrics["n_checkpoints"] >= len(split.heldout_task_ids)
    lineage = get_track("lineage")().evaluate(fitted, mini_set, split)
    assert lineage.metrics["n_runs"] > 0  # init and final: one pair per run
