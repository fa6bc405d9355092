"""Similarity methods: registry, validated metadata, every method fits and scores, and every
method that claims permutation invariance is unchanged by a hidden-unit permutation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modelset
from benchmarks.methods import (
    MethodError,
    MethodMeta,
    SimilarityMethod,
    create_method,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from benchmarks.methods.cka import linear_cka
from modelset.errors import UnknownNameError
from modelset.synthetic import write_synthetic
from modelset.weights import permute_state_dict
from modelset.writer import ModelRecord, ModelSetWriter

# Learned methods train for a handful of steps here: the tests check wiring and values, not quality.
TINY = {
    "weight_stats_learned": {"steps": 5},
    "deepsets": {"steps": 5},
    "nfn": {"steps": 5},
    "probe_gen": {"steps": 5},
    "lps": {"epochs": 1},
    "lps_contrastive": {"epochs": 1},
    "cka": {"probe_size": 16},
    "prediction_agreement": {"probe_size": 16},
    "task2vec": {"probe_size": 8, "head_steps": 5},
}


@pytest.fixture(scope="module")
def syn(tmp_path_factory: pytest.TempPathFactory) -> modelset.ModelSet:
    return modelset.open(write_synthetic(tmp_path_factory.mktemp("syn") / "set", 24, n_tasks=4, noise=0.2, seed=1))


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, syn: modelset.ModelSet) -> modelset.ModelSet:
    """A set holding one model and the same model with its hidden units permuted."""
    state = syn.state_dict("syn-000000")
    permuted = permute_state_dict("cnn3", {"num_classes": 5}, state, torch.Generator().manual_seed(5))
    row = {"task": "task000", "dataset": "synthetic", "variant": "base", "parent_id": "", "seed": 0}
    path = tmp_path_factory.mktemp("twins") / "set"
    with ModelSetWriter.open(path, name="twins", config={}) as w:
        w.write_shard([
            ModelRecord("orig", "cnn3", {"num_classes": 5}, {"final": state}, {**row, "seed": 0}),
            ModelRecord("perm", "cnn3", {"num_classes": 5}, {"final": permuted}, {**row, "seed": 1}),
        ])
        w.set_tasks(syn.tasks.loc[["task000"]])
        w.finish({"Summary": "a model and its permuted twin"})
    return modelset.open(path)


def _fit(name: str, ms: modelset.ModelSet) -> SimilarityMethod:
    ids = list(ms.metadata.index)
    return create_method(name, **TINY.get(name, {})).fit(ms, ids[:16], seed=0)


def test_registry_lists_builtins_and_suggests_names() -> None:
    names = list_methods()
    for expected in ("lps", "lps_contrastive", "flat_cosine", "weight_stats", "weight_stats_learned",
                     "second_order_fixed", "cka", "prediction_agreement", "deepsets", "task2vec", "random", "oracle"):
        assert expected in names
    with pytest.raises(UnknownNameError, match="Did you mean 'random'"):
        get_method("rndom")


def test_metadata_is_validated() -> None:
    ok = dict(name="x", learned=False, needs_data=False, invariances=(), reference="paper")
    MethodMeta(**ok)
    with pytest.raises(MethodError, match="lower_snake_case"):
        MethodMeta(**{**ok, "name": "Bad Name"})
    with pytest.raises(MethodError, match="unknown invariances"):
        MethodMeta(**{**ok, "invariances": ("rotation",)})
    with pytest.raises(MethodError, match="reference"):
        MethodMeta(**{**ok, "reference": " "})
    with pytest.raises(MethodError, match="learned must be a bool"):
        MethodMeta(**{**ok, "learned": "yes"})
    with pytest.raises(MethodError, match="unknown config keys"):
        create_method("deepsets", stepz=3)


def test_a_method_must_implement_a_step_and_be_fit(syn: modelset.ModelSet) -> None:
    class Empty(SimilarityMethod):
        meta = MethodMeta(name="empty", learned=False, needs_data=False, invariances=(), reference="test")

    with pytest.raises(MethodError, match="implement _embed or _similarity"):
        register_method(Empty)
    with pytest.raises(MethodError, match="call fit"):
        create_method("random").similarity(syn, ["syn-000000"], ["syn-000001"])
    with pytest.raises(MethodError, match="is empty"):
        create_method("random").fit(syn, [], 0)
    with pytest.raises(modelset.ModelSetError, match="syn-00001.*Did you mean"):
        create_method("random").fit(syn, ["syn-00001"], 0)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_fits_and_scores(name: str, syn: modelset.ModelSet) -> None:
    method = _fit(name, syn)
    ids = list(syn.metadata.index)
    queries, gallery = ids[16:], ids[:6]
    sim = method.similarity(syn, queries, gallery)
    assert sim.shape == (len(queries), len(gallery))
    assert torch.isfinite(sim).all()
    if method.has_embedding():
        emb = method.embed(syn, queries)
        assert emb.ndim == 2 and emb.shape[0] == len(queries)
        self_sim = method.similarity(syn, queries, queries)
        # Cosine of an embedding with itself is 1 (a model is most similar to itself).
        np.testing.assert_allclose(torch.diagonal(self_sim).numpy(), 1.0, atol=1e-4)
        # Cached: a second call returns the same values without recomputing.
        assert torch.equal(method.embed(syn, queries), emb)


@pytest.mark.parametrize("name", [n for n in list_methods() if "permutation" in get_method(n).meta.invariances])
def test_permutation_invariance_claims_hold(name: str, syn: modelset.ModelSet, twins: modelset.ModelSet) -> None:
    method = _fit(name, syn)
    emb = method.embed(twins, ["orig", "perm"])
    torch.testing.assert_close(emb[0], emb[1], atol=2e-4, rtol=2e-4)


def test_flat_cosine_is_not_permutation_invariant(syn: modelset.ModelSet, twins: modelset.ModelSet) -> None:
    sim = _fit("flat_cosine", syn).similarity(twins, ["orig"], ["perm"])
    assert float(sim) < 0.9  # the same function, yet far apart position by position


def test_oracle_and_random_embeddings(syn: modelset.ModelSet) -> None:
    ids = list(syn.metadata.index)
    oracle = _fit("oracle", syn).similarity(syn, ids, ids).numpy()
    tasks = syn.metadata.loc[ids, "task"].astype(str).to_numpy()
    np.testing.assert_array_equal(oracle, (tasks[:, None] == tasks[None, :]).astype(np.float32))
    a = _fit("random", syn).embed(syn, ids[:3])
    b = create_method("random").fit(syn, ids[:16], seed=0).embed(syn, ids[:3])
    c = create_method("random").fit(syn, ids[:16], seed=1).embed(syn, ids[:3])
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_linear_cka_matches_its_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 6, generator=gen), torch.randn(20, 4, generator=gen)
    n = x.shape[0]
    h = torch.eye(n) - torch.ones(n, n) / n
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    hsic = lambda a, b: torch.trace(a @ b)  # noqa: E731
    expected = hsic(kx, ky) / torch.sqrt(hsic(kx, kx) * hsic(ky, ky))
    assert linear_cka(x, y) == pytest.approx(float(expected), abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)  # rotation and scale invariant


def test_second_order_features_are_standardised_on_training_models(syn: modelset.ModelSet) -> None:
    method = _fit("second_order_fixed", syn)
    train = list(syn.metadata.index)[:16]
    emb = method.embed(syn, train) / method.weight
    # Per-feature mean over the training models is 0 after standardising.
    np.testing.assert_allclose(emb.mean(dim=0).numpy(), 0.0, atol=1e-3)


def test_a_new_method_is_one_small_class(syn: modelset.ModelSet) -> None:
    @register_method
    class TaskCount(SimilarityMethod):
        meta = MethodMeta(name="test_norms", learned=False, needs_data=False, invariances=("permutation",),
                          reference="test")

        def _embed(self, ms: modelset.ModelSet, ids: list[str]) -> torch.Tensor:
            return torch.stack([torch.stack([v.norm() for v in ms.state_dict(i).values()]) for i in ids])

    try:
        assert "test_norms" in list_methods()
        assert _fit("test_norms", syn).similarity(syn, ["syn-000000"], ["syn-000001"]).shape == (1, 1)
    finally:
        unregister_method("test_norms")
    assert "test_norms" not in list_methods()
