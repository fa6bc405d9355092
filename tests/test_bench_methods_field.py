"""The field's encoders as methods: the NFN of Zhou et al. 2023 and the learned probes of Kahana
et al. 2024 on trained models of the mini set: they are invariant to hidden-unit permutations of a
real ``cnn3`` and not to a permutation that breaks the layers' coupling, they learn to tell tasks
apart, nfn refuses architectures it has no layout for (recorded as not applicable), and
``MethodMeta.access`` says how each method reaches a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import modelset
from benchmarks.methods import (
    ACCESS,
    MethodError,
    MethodMeta,
    MethodNotApplicable,
    create_method,
    get_method,
    list_methods,
)
from benchmarks.methods._probes import model_inputs
from benchmarks.results import load_results
from benchmarks.runner import run
from lps.splits import load_folds
from lps.weights import WeightSpace, permute_hidden, to_state_dicts
from modelset.architectures import build_architecture
from modelset.writer import ModelRecord, ModelSetWriter

FIELD = ("nfn", "probe_gen")
# Largest |difference| of an embedding entry between a model and its permuted twin: measured at
# most 6e-8 (nfn and probe_gen alike) on the default, AVX2, SSE4.1 and generic kernels; breaking
# the coupling moved every model's embedding by 1.6e-3 or more.
PERMUTATION_ATOL = 1e-6


@pytest.fixture(scope="module")
def mini(request: pytest.FixtureRequest) -> modelset.ModelSet:
    given = os.environ.get("MODELSET_MINI")
    if given and (Path(given) / "modelset.json").exists():
        return modelset.open(given)
    return request.getfixturevalue("mini_set")


def _cnn3_train_halves(ms: modelset.ModelSet, fold: int = 1) -> tuple[list[str], list[str]]:
    """The fold's training models of ``cnn3``, alternately into a fitting and a scoring half (the
    second fold's training tasks both have 5-way heads, so the head size gives nothing away)."""
    split = load_folds(ms)[fold]
    ids = sorted(i for i in split.train_ids if ms.metadata.at[i, "architecture"] == "cnn3")
    return ids[0::2], ids[1::2]


@pytest.fixture(scope="module")
def twins(mini: modelset.ModelSet, tmp_path_factory: pytest.TempPathFactory) -> modelset.ModelSet:
    """Trained mini models (plain, pruned and NSL ``cnn3``) each beside two copies: hidden units
    permuted (same function) and only the first layer's units permuted (coupling broken)."""
    md = mini.metadata
    chosen = []
    for variant in ("base", "channel_sim", "nsl_full"):
        rows = md[(md["architecture"] == "cnn3") & (md["variant"] == variant)]
        chosen.append(rows.index[0])
    gen = torch.Generator().manual_seed(3)
    records = []
    for mid in chosen:
        row = md.loc[mid]
        kwargs = json.loads(row["arch_kwargs"])
        space = WeightSpace.from_state_dict("cnn3", kwargs, mini.state_dict(mid))
        perms = [torch.randperm(layer.out_features, generator=gen) for layer in space.layers[:-1]]
        permuted = to_state_dicts(permute_hidden(space, perms))[0]
        broken = dict(mini.state_dict(mid))
        broken["conv1.weight"] = broken["conv1.weight"][perms[0]]
        broken["conv1.bias"] = broken["conv1.bias"][perms[0]]
        base = {"task": row["task"], "dataset": row["dataset"], "variant": "base", "parent_id": "", "seed": 0,
                "input_norm": row.get("input_norm", "standard")}
        for suffix, state in (("", mini.state_dict(mid)), ("-perm", permuted), ("-broken", broken)):
            records.append(ModelRecord(f"{mid}{suffix}", "cnn3", kwargs, {"final": state}, dict(base)))
    path = tmp_path_factory.mktemp("field-twins") / "set"
    with ModelSetWriter.open(path, name="twins", config={}) as writer:
        writer.write_shard(records)
        writer.set_tasks(mini.tasks)
        writer.finish({"Summary": "trained models beside permuted copies"})
    return modelset.open(path)


@pytest.mark.parametrize("name", FIELD)
def test_registered_with_the_paper_and_their_access(name: str) -> None:
    assert name in list_methods()
    meta = get_method(name).meta
    assert meta.learned and not meta.needs_data and "permutation" in meta.invariances
    assert {"nfn": "Zhou et al. 2023", "probe_gen": "Kahana et al. 2024"}[name] in meta.reference
    assert meta.access == {"nfn": "weights", "probe_gen": "forward"}[name]


def test_access_defaults_from_needs_data_and_is_validated() -> None:
    assert get_method("weight_stats").meta.access == "weights"
    assert get_method("cka").meta.access == "data"
    assert {get_method(n).meta.access for n in list_methods()} <= set(ACCESS)
    ok = dict(name="x", learned=False, needs_data=False, invariances=(), reference="paper")
    assert MethodMeta(**ok, access="forward").to_dict()["access"] == "forward"
    with pytest.raises(MethodError, match="access must be one of"):
        MethodMeta(**ok, access="gradients")
    with pytest.raises(MethodError, match="contradicts access"):
        MethodMeta(**ok, access="data")
    with pytest.raises(MethodError, match="contradicts access"):
        MethodMeta(**{**ok, "needs_data": True}, access="forward")


@pytest.mark.parametrize("name", FIELD)
def test_hidden_permutations_of_trained_models_leave_the_embedding(
    name: str, mini: modelset.ModelSet, twins: modelset.ModelSet
) -> None:
    fit_ids, _ = _cnn3_train_halves(mini)
    method = create_method(name, steps=5).fit(mini, fit_ids, seed=0)
    originals = [i for i in twins.metadata.index if not i.endswith(("-perm", "-broken"))]
    emb = method.embed(twins, originals)
    perm = method.embed(twins, [f"{i}-perm" for i in originals])
    broken = method.embed(twins, [f"{i}-broken" for i in originals])
    torch.testing.assert_close(perm, emb, atol=PERMUTATION_ATOL, rtol=0)
    # Not blind: the same weights with the coupling between layers broken embed elsewhere.
    assert float((broken - emb).abs().amax(dim=1).min()) > 100 * PERMUTATION_ATOL


@pytest.mark.parametrize("name", FIELD)
def test_learns_to_tell_tasks_apart_on_the_mini_set(name: str, mini: modelset.ModelSet) -> None:
    # Measured over seeds 0-4 (20 steps): same-task minus different-task mean cosine on the
    # scoring half is 1.33-1.78 (nfn) and 0.42-0.74 (probe_gen) after fitting, ≤ 0.03 after one step.
    fit_ids, score_ids = _cnn3_train_halves(mini)
    tasks = mini.metadata.loc[score_ids, "task"].astype(str).to_numpy()
    same = tasks[:, None] == tasks[None, :]
    off = ~np.eye(len(score_ids), dtype=bool)
    assert same[off].any() and (~same).any()

    def gap(steps: int) -> float:
        sim = create_method(name, steps=steps).fit(mini, fit_ids, seed=0).similarity(mini, score_ids, score_ids)
        sim = sim.numpy()
        return float(sim[same & off].mean() - sim[~same].mean())

    untrained, trained = gap(1), gap(20)
    assert trained > 0.25 and trained > untrained + 0.2, (untrained, trained)


def test_nfn_refuses_architectures_without_a_chained_layout(mini: modelset.ModelSet, tmp_path: Path) -> None:
    md = mini.metadata
    resnet = md.index[md["architecture"] != "cnn3"]
    assert len(resnet), "the mini set holds resnet_tiny models"
    fit_ids, _ = _cnn3_train_halves(mini)
    with pytest.raises(MethodNotApplicable, match=rf"{resnet[0]}.*resnet_tiny"):
        create_method("nfn", steps=1).fit(mini, [*fit_ids, resnet[0]], seed=0)
    method = create_method("nfn", steps=1).fit(mini, fit_ids, seed=0)
    with pytest.raises(MethodNotApplicable, match="chained weight spaces only"):
        method.embed(mini, [resnet[0]])
    # The runner records it as not applicable, with the reason, rather than as a failure.
    summary = run(mini, tmp_path, methods=["nfn"], tracks=["retrieval"], folds=[0],
                  method_config={"nfn": {"steps": 1}}, progress=False)
    assert not summary.failed
    (result,) = load_results(tmp_path)
    assert result.status == "not_applicable" and "resnet_tiny" in result.reason


def test_probe_gen_runs_each_model_as_the_set_rebuilds_it(mini: modelset.ModelSet) -> None:
    """The batched functional calls give the logits of ``ms.model(id)`` on the generated probes,
    for plain, NSL and shape-adaptor ``cnn3`` (which runs model by model) and ``resnet_tiny``."""
    fit_ids, _ = _cnn3_train_halves(mini)
    method = create_method("probe_gen", steps=2).fit(mini, fit_ids, seed=0)
    md = mini.metadata
    ids = [md.index[(md["variant"] == v)][0] for v in ("base", "nsl_dynamic_full", "shape_adaptor")]
    ids.append(md.index[md["architecture"] == "resnet_tiny"][0])
    with torch.no_grad():
        for group in method._groups(mini, ids):
            probes = method.encoder.generators["x".join(map(str, group.shape))]()
            logits = method._logits(group, torch.arange(len(group.positions)), probes)
            for row, pos in enumerate(group.positions.tolist()):
                expected = mini.model(ids[pos])(model_inputs(mini, ids[pos], probes))
                torch.testing.assert_close(logits[row], expected, atol=1e-4, rtol=1e-4)


def test_nfn_refuses_a_layout_it_was_not_fit_on(mini: modelset.ModelSet, tmp_path: Path) -> None:
    """The NP layers are sized by the depth and filter sizes they were fit on: a two-layer
    ``cnn3`` is named in the error, not embedded with the wrong layers."""
    kwargs = {"num_classes": 5, "channels": [8, 8], "strides": [2, 2]}
    state = build_architecture("cnn3", kwargs).state_dict()
    row = {"task": "t00", "dataset": "fashion_mnist", "variant": "base", "parent_id": "", "seed": 0}
    with ModelSetWriter.open(tmp_path / "set", name="shallow", config={}) as writer:
        writer.write_shard([ModelRecord("shallow", "cnn3", kwargs, {"final": state}, row)])
        writer.set_tasks(mini.tasks.loc[["t00"]])
        writer.finish({"Summary": "one two-layer cnn3"})
    fit_ids, _ = _cnn3_train_halves(mini)
    method = create_method("nfn", steps=1).fit(mini, fit_ids, seed=0)
    with pytest.raises(MethodNotApplicable, match=r"'shallow'.*fit it on models of that layout"):
        method.embed(modelset.open(tmp_path / "set"), ["shallow"])
