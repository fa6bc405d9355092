"""Tracks on a small synthetic set with variants, domains and a transfer-affinity matrix: the
variant, relation and transfer tracks score exactly what their definitions say."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import modelset
from benchmarks.methods import create_method
from benchmarks.tracks import get_track, list_tracks
from benchmarks.tracks.few_shot import draw_episodes
from modelset.architectures import build_architecture
from modelset.writer import ModelRecord, ModelSetWriter

N_TASKS, PER_TASK = 6, 4


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> modelset.ModelSet:
    """6 tasks × 4 base models, each base model with one "pruned" twin (half its head zeroed);
    tasks alternate between two domains; transfer affinity = 1 within a domain, else 0, plus a
    task-specific offset so rankings are not all ties."""
    gen = torch.Generator().manual_seed(0)
    kwargs = {"num_classes": 3}
    protos = [{k: torch.randn(v.shape, generator=gen) for k, v in build_architecture("cnn3", kwargs).state_dict().items()}
              for _ in range(N_TASKS)]
    records = []
    for t in range(N_TASKS):
        for i in range(PER_TASK):
            state = {k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in protos[t].items()}
            row = {"task": f"t{t}", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": i,
                   "test_accuracy": 0.8 + 0.01 * i, "flops": 1000.0}
            base_id = f"t{t}-base-{i}"
            records.append(ModelRecord(base_id, "cnn3", kwargs, {"final": state}, row))
            pruned = {k: v.clone() for k, v in state.items()}
            pruned["head.weight"][:, ::2] = 0.0
            vrow = {**row, "variant": "pruned", "parent_id": base_id, "test_accuracy": 0.7, "flops": 600.0}
            records.append(ModelRecord(f"{base_id}-pruned", "cnn3", kwargs, {"final": pruned}, vrow))
    tasks = pd.DataFrame({"dataset": "synthetic", "classes": [[0, 1, 2]] * N_TASKS,
                          "domain": ["identity", "inverted"] * (N_TASKS // 2)}, index=[f"t{t}" for t in range(N_TASKS)])
    domain = tasks["domain"].to_numpy()
    affinity = (domain[:, None] == domain[None, :]).astype(float) + 0.01 * np.arange(N_TASKS)[:, None]
    path = tmp_path_factory.mktemp("zoo") / "set"
    with ModelSetWriter.open(path, name="tracks-test", config={}) as w:
        w.write_shard(records)
        w.set_tasks(tasks)
        w.set_relation("transfer_affinity", pd.DataFrame(affinity, index=tasks.index, columns=tasks.index))
        w.set_relation("same_task", pd.DataFrame(np.eye(N_TASKS), index=tasks.index, columns=tasks.index))
        w.finish({"Summary": "tracks test set"})
    return modelset.open(path)


def test_every_track_scores_the_oracle_on_a_full_set(zoo: modelset.ModelSet) -> None:
    split = zoo.folds[0]
    oracle = create_method("oracle").fit(zoo, list(split.train_ids), 0)
    outcomes = {name: get_track(name)().evaluate(oracle, zoo, split) for name in list_tracks()}
    # The set declares no held-out recipe family and records no recipe (optimizer, lr, ...): those
    # tracks alone have nothing to score.
    expected = {**dict.fromkeys(list_tracks(), "ok"), "heldout_recipe": "not_applicable",
                "hyperparameter_prediction": "not_applicable"}  # fmt: skip
    assert {n: o.status for n, o in outcomes.items()} == expected
    for name, outcome in outcomes.items():  # the aggregate is the mean of the per-task values
        units = outcome.curves.get("per_unit")
        if outcome.status != "ok" or units is None:
            continue
        for metric, values in units["metrics"].items():
            finite = [v for v in values if v is not None]
            if finite:
                assert outcome.metrics[metric] == pytest.approx(np.mean(finite), abs=1e-5), (name, metric)
    variants = outcomes["variant_robustness"]
    # The oracle matches a variant to base models of its task (its own family excluded).
    assert variants.metrics["rank1"] == 1.0 and variants.metrics["map"] == 1.0
    assert variants.metrics["rank1_pruned"] == 1.0
    assert variants.curves["tradeoff"]["pruned"]["flops"][0] == 600.0
    assert set(variants.curves["tradeoff"]) == {"base", "pruned"}
    # Transfer affinity is "same domain": the oracle (same task only) ties every candidate.
    assert outcomes["transfer"].metrics["kendall_tau"] is None
    relations = outcomes["task_relations"]
    assert "spearman_transfer_affinity" in relations.metrics and "spearman_same_task" not in relations.metrics


def test_variant_queries_exclude_their_own_family(zoo: modelset.ModelSet) -> None:
    from benchmarks.tracks.variant_robustness import variant_queries

    split = zoo.folds[0]
    queries = variant_queries(zoo, split)
    assert queries and all(q.endswith("-pruned") and q not in split.train_ids for q in queries)
    # flat cosine: a pruned twin is closest to its own parent; with the parent excluded the
    # nearest base model must come from the task's other (noisy) models.
    flat = create_method("flat_cosine").fit(zoo, list(split.train_ids), 0)
    outcome = get_track("variant_robustness")().evaluate(flat, zoo, split)
    assert outcome.metrics["rank1"] == 1.0  # prototypes are far apart, so the task is still found


def test_transfer_scores_every_held_out_target(zoo: modelset.ModelSet) -> None:
    split = zoo.folds[1]
    ws = create_method("weight_stats").fit(zoo, list(split.train_ids), 1)
    outcome = get_track("transfer")().evaluate(ws, zoo, split)
    assert outcome.status == "ok"
    assert -1.0 <= outcome.metrics["kendall_tau"] <= 1.0 and outcome.metrics["regret"] >= 0.0
    assert outcome.metrics["targets"] == len(split.heldout_tasks)


def test_episodes_are_drawn_per_context_and_reproducible() -> None:
    labels = {"task": np.repeat(np.arange(6), 4).astype(str), "domain": np.tile(["a", "b"], 12)}
    first = draw_episodes(labels, n_way=3, k_shot=1, n_query=2, n_episodes=50, seed=7)
    again = draw_episodes(labels, n_way=3, k_shot=1, n_query=2, n_episodes=50, seed=7)
    assert [e["context"] for e in first] == [e["context"] for e in again]
    assert all(np.array_equal(a["support"], b["support"]) for a, b in zip(first, again))
    assert {e["context"] for e in first} == {"task", "domain"}
    for ep in first:
        n_way = 2 if ep["context"] == "domain" else 3  # the domain context has only two classes
        assert ep["support"].shape == (n_way, 1)
        assert set(ep["query_label"].tolist()) == set(range(n_way))
        assert not set(ep["support"].ravel()) & set(ep["query"].tolist())  # supports are not queries


def test_controls_see_only_what_they_are_given(zoo: modelset.ModelSet) -> None:
    split = zoo.folds[0]
    retrieval = get_track("retrieval")()
    # Every model has the same shapes: shape_only cannot tell tasks apart and lands at chance.
    shapes = create_method("shape_only").fit(zoo, list(split.train_ids), 0)
    outcome = retrieval.evaluate(shapes, zoo, split)
    # Each query ties all 15 others, 7 of them relevant: a tied list scores its relevant fraction.
    assert outcome.metrics["map"] == pytest.approx(7 / 15, abs=1e-6)
    assert outcome.metrics["rank1"] == pytest.approx(7 / 15, abs=1e-6)
    sim = shapes.similarity(zoo, list(zoo.metadata.index[:3]), list(zoo.metadata.index[:3]))
    torch.testing.assert_close(sim, torch.ones(3, 3))
    # recipe_only reads the table's hyper-parameters: here only "seed"-free columns differ by
    # test accuracy, which it must ignore, so every model looks alike too.
    recipe = create_method("recipe_only").fit(zoo, list(split.train_ids), 0)
    assert recipe.embed(zoo, list(zoo.metadata.index[:4])).std(dim=0).max() == 0


def test_shape_only_separates_shapes(tmp_path) -> None:
    records = []
    for t, classes in enumerate([2, 2, 5, 5]):
        kwargs = {"num_classes": classes}
        for i in range(2):
            state = build_architecture("cnn3", kwargs).state_dict()
            row = {"task": f"t{t}", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": i}
            records.append(ModelRecord(f"t{t}-{i}", "cnn3", kwargs, {"final": state}, row))
    with ModelSetWriter.open(tmp_path / "set", name="shapes", config={}) as w:
        w.write_shard(records)
        w.finish()
    ms = modelset.open(tmp_path / "set")
    method = create_method("shape_only").fit(ms, list(ms.metadata.index), 0)
    sim = method.similarity(ms, ["t0-0", "t2-0"], ["t1-1", "t3-1"])
    torch.testing.assert_close(sim, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_unknown_track_suggests_a_name() -> None:
    with pytest.raises(modelset.ModelSetError, match="Did you mean 'retrieval'"):
        get_track("retreival")
