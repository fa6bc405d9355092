"""Variant layers and recipes: STR, GMP, channel-similarity and L1 pruning, shape adaptor, NSL."""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from builders.variants import Parent, TaskTensors, get_recipe, list_recipes
from builders.variants._common import accuracy, sparsity_report
from builders.variants._pool import RecipePool
from builders.variants.channel_similarity import channel_distances, similarity_prune
from builders.variants.flops import conv_flops, count_flops, count_sparse_flops
from builders.variants.gmp import gmp_sparsity, magnitude_mask
from builders.variants.str import SoftThreshold, attach_str, detach_str
from modelset.architectures import build_architecture
from modelset.architectures.layers import NSLConv2d, ShapeAdaptor, shape_adaptor_alpha
from modelset.errors import UnknownNameError

N_CLASSES = 4
SIZE = 12
TINY = {"epochs": 1, "n_train": 96}
TINY_FT = {"finetune_epochs": 1, "n_train": 96}


def _synthetic(seed: int = 0, n: int = 160) -> TaskTensors:
    """Learnable toy task: each class is a fixed random pattern plus noise, ``(n, 1, 12, 12)``."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(N_CLASSES, 1, SIZE, SIZE, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = patterns[y] + 0.3 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return TaskTensors(x[:96], y[:96], x[96:], y[96:])


@pytest.fixture(scope="module")
def data() -> TaskTensors:
    return _synthetic()


@pytest.fixture(scope="module")
def parent(data: TaskTensors) -> Parent:
    torch.manual_seed(1)
    kwargs = {"num_classes": N_CLASSES, "channels": [8, 8, 8]}
    model = build_architecture("cnn3", kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    row = {"task": "t00", "dataset": "synthetic", "lr": 1e-2, "weight_decay": 1e-4,
           "batch_size": 32, "optimizer": "adam"}
    return Parent("t00-cnn3-base-0000", "cnn3", kwargs, model.state_dict(), row)


# -- registry -------------------------------------------------------------------------------


def test_registry_lists_every_recipe_and_suggests_close_names() -> None:
    assert {"str", "gmp", "channel_sim", "l1_filter", "shape_adaptor", "nsl"} <= set(list_recipes())
    with pytest.raises(UnknownNameError, match="Did you mean 'shape_adaptor'"):
        get_recipe("shape_adapter")


# -- STR and GMP ----------------------------------------------------------------------------


def test_soft_threshold_values_and_gradient_reaches_s() -> None:
    st = SoftThreshold(s_init=0.0)  # threshold sigmoid(0) = 0.5
    w = torch.tensor([-1.0, -0.4, 0.2, 0.5, 0.9])
    assert torch.allclose(st(w), torch.tensor([-0.5, 0.0, 0.0, 0.0, 0.4]))
    model = build_architecture("cnn3", {"num_classes": 3, "channels": [4, 4, 4]})
    thresholds = attach_str(model, s_init=-3.0)
    assert len(thresholds) == 4  # three convolutions and the head
    F.cross_entropy(model(torch.randn(8, 1, SIZE, SIZE)), torch.arange(8) % 3).backward()
    assert all(t.s.grad is not None and t.s.grad.abs() > 0 for t in thresholds)
    detach_str(model)
    assert set(model.state_dict()) == set(build_architecture("cnn3", {"num_classes": 3, "channels": [4, 4, 4]}).state_dict())


def test_gmp_schedule_and_mask() -> None:
    assert gmp_sparsity(0, 100, 0.9) == 0.0
    assert gmp_sparsity(100, 100, 0.9) == 0.9
    assert gmp_sparsity(50, 100, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    w = torch.tensor([0.1, -3.0, 0.2, 2.0, -0.05, 1.0, 0.0, 0.3])
    mask = magnitude_mask(w, 0.5)
    assert mask.tolist() == [False, True, False, True, False, True, False, True]


def test_str_measured_zero_fraction_equals_reported(parent: Parent, data: TaskTensors) -> None:
    records = get_recipe("str")(parent, data, seed=0, s_inits=[-2.0], **TINY)
    str_rec, gmp_rec = records
    assert [r.row["variant"] for r in records] == ["str", "gmp"]
    sd = str_rec.checkpoints["final"]
    weights = [sd[k] for k in ("conv1.weight", "conv2.weight", "conv3.weight", "head.weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros > 0.3  # sInit = -2 thresholds at 0.12: well above most initial weights
    assert str_rec.row["sparsity"] == pytest.approx(zeros, abs=1e-12)
    per_layer = json.loads(str_rec.row["layer_sparsity"])
    assert per_layer["conv2"] == pytest.approx(float((sd["conv2.weight"] == 0).float().mean()))
    # GMP twin: same sparsity up to per-layer rounding, uniform across layers, same match id.
    assert gmp_rec.row["match_id"] == str_rec.model_id == str_rec.row["match_id"]
    assert gmp_rec.row["sparsity"] == pytest.approx(zeros, abs=0.02)
    gmp_layers = json.loads(gmp_rec.row["layer_sparsity"])
    assert max(gmp_layers.values()) - min(gmp_layers.values()) < 0.05
    # Sparsity-aware FLOPs are smaller than dense FLOPs for a sparse network.
    assert str_rec.row["flops_sparse"] < str_rec.row["flops"]


# -- FLOPs and channel pruning --------------------------------------------------------------


def _cnn3_flops(channels: list[int], classes: int, size: int = 28) -> int:
    h1 = (size - 1) // 2 + 1
    h2 = (h1 - 1) // 2 + 1
    c1, c2, c3 = channels
    return (conv_flops(1, c1, 3, h1, h1) + conv_flops(c1, c2, 3, h2, h2)
            + conv_flops(c2, c3, 3, h2, h2) + 2 * c3 * classes)


def test_flops_are_counted_and_match_closed_form() -> None:
    model = build_architecture("cnn3", {"num_classes": 10})
    assert count_flops(model, (1, 28, 28)) == _cnn3_flops([16, 16, 16], 10)
    with torch.no_grad():
        model.conv2.weight[:, :8] = 0  # half of conv2 zero
    dense = conv_flops(16, 16, 3, 7, 7)
    assert count_sparse_flops(model, (1, 28, 28)) == _cnn3_flops([16, 16, 16], 10) - dense // 2


def test_channel_similarity_pruned_network_has_reported_channels_and_flops(parent: Parent, data: TaskTensors) -> None:
    sim, l1 = get_recipe("channel_sim")(parent, data, seed=0, keep_ratios=[0.5], **TINY_FT)
    assert (sim.row["variant"], l1.row["variant"]) == ("channel_sim", "l1_filter")
    for rec in (sim, l1):
        assert rec.arch_kwargs["channels"] == json.loads(rec.row["channels"]) == [4, 4, 4]
        sd = rec.checkpoints["final"]
        assert sd["conv1.weight"].shape == (4, 1, 3, 3)
        assert sd["conv2.weight"].shape == (4, 4, 3, 3)
        assert sd["head.weight"].shape == (N_CLASSES, 4)
        assert rec.row["flops"] == _cnn3_flops([4, 4, 4], N_CLASSES, SIZE)
    assert sim.row["flops"] == l1.row["flops"]  # matched FLOPs by construction
    clusters = json.loads(sim.row["clusters"])
    assert [sorted(i for g in layer for i in g) for layer in clusters] == [list(range(8))] * 3


def test_identical_channels_pruned_to_one_per_cluster_leave_outputs_unchanged() -> None:
    torch.manual_seed(3)
    kwargs = {"num_classes": 5, "channels": [12, 12, 6]}
    model = build_architecture("cnn3", kwargs)
    with torch.no_grad():
        # Layer 1: 3 distinct filters, each repeated 4 times; layer 2: 4 distinct, 3 times each.
        model.conv1.weight.copy_(model.conv1.weight[:3].repeat(4, 1, 1, 1))
        model.conv1.bias.copy_(model.conv1.bias[:3].repeat(4))
        model.conv2.weight.copy_(model.conv2.weight[:4].repeat(3, 1, 1, 1))
        model.conv2.bias.copy_(model.conv2.bias[:4].repeat(3))
    x = torch.randn(16, 1, SIZE, SIZE)
    d = channel_distances(model.conv1.weight, model.conv1.bias, torch.zeros(9), torch.eye(9).double())
    assert d[0, 3] == pytest.approx(0.0, abs=1e-9) and d[0, 1] > 0.01
    sd, channels, groups = similarity_prune("cnn3", kwargs, model.state_dict(), x, [3, 4, 6])
    assert channels == [3, 4, 6]
    assert sorted(sorted(g) for g in groups[0]) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    pruned = build_architecture("cnn3", {**kwargs, "channels": channels})
    pruned.load_state_dict(sd, strict=True)
    with torch.no_grad():
        assert torch.allclose(pruned(x), model(x), atol=1e-5)


# -- shape adaptor --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [-3.0, -1.0, 0.0, 1.5, 4.0])
def test_shape_adaptor_output_size_follows_sigma_alpha(alpha: float) -> None:
    sa = ShapeAdaptor(alpha)
    out = sa(torch.randn(2, 3, 28, 28))
    scale = 0.5 + 0.5 * torch.sigmoid(torch.tensor(alpha)).item()
    assert sa.scale() == pytest.approx(scale)
    assert out.shape == (2, 3, round(28 * scale), round(28 * scale))


def test_shape_adaptor_alpha_gets_gradient_and_init_matches_strides() -> None:
    sa = ShapeAdaptor(0.3)
    sa(torch.randn(2, 3, 16, 16)).square().mean().backward()
    assert sa.alpha.grad is not None and sa.alpha.grad.abs() > 0
    model = build_architecture("cnn3", {"downsample": "shape_adaptor"})
    scales = [a.scale() for a in model.shape_adaptors()]
    assert math.prod(scales) == pytest.approx(1 / 4, rel=1e-5)  # strides (2, 2, 1)
    assert shape_adaptor_alpha(1 / 4, 3) == pytest.approx(model.sa0.alpha.item(), abs=1e-6)
    with pytest.raises(ValueError, match="not reachable"):
        shape_adaptor_alpha(1 / 16, 3)


# -- NSL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_static_nsl_with_identity_equals_convolution_exactly(stride: int) -> None:
    x = torch.randn(3, 4, 11, 11)
    for form in ("full", "diag"):
        layer = NSLConv2d(4, 6, 3, stride, 1, form=form)
        expected = F.conv2d(x, layer.weight, layer.bias, stride, 1)
        assert torch.equal(layer(x), expected)
        assert layer.identity_deviation().item() == 0.0
    dynamic = NSLConv2d(4, 6, 3, stride, 1, form="dynamic")  # identity residual at init
    expected = F.conv2d(x, dynamic.weight, dynamic.bias, stride, 1)
    assert torch.allclose(dynamic(x), expected, atol=1e-5)


def test_nsl_matrix_changes_the_similarity() -> None:
    layer = NSLConv2d(2, 3, 3, 1, 1, form="full")
    with torch.no_grad():
        layer.M.mul_(2.0)  # M = 2I doubles the bilinear term
    x = torch.randn(1, 2, 5, 5)
    expected = 2 * F.conv2d(x, layer.weight, None, 1, 1) + layer.bias.reshape(1, -1, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-6)


# -- every recipe: rebuildable, accuracy reproduced -----------------------------------------

RECIPE_PARAMS = {
    "str": {"s_inits": [-3.0], **TINY},
    "gmp": {"sparsities": [0.8], **TINY},
    "channel_sim": {"keep_ratios": [0.5], **TINY_FT},
    "l1_filter": {"keep_ratios": [0.5], **TINY_FT},
    "shape_adaptor": TINY,
    "nsl": TINY,
}


@pytest.mark.parametrize("name", sorted(RECIPE_PARAMS))
def test_recipe_models_rebuild_and_reproduce_accuracy(name: str, parent: Parent, data: TaskTensors) -> None:
    records = get_recipe(name)(parent, data, seed=2, **RECIPE_PARAMS[name])
    assert records
    for rec in records:
        for column in ("task", "dataset", "variant", "parent_id", "seed", "family", "match_id",
                       "sparsity", "layer_sparsity", "flops", "test_accuracy"):
            assert column in rec.row, (name, column)
        assert rec.row["parent_id"] == parent.model_id and rec.row["seed"] == 2
        model = build_architecture(rec.architecture, rec.arch_kwargs)
        model.load_state_dict(rec.checkpoints["final"], strict=True)
        assert accuracy(model, data.x_test, data.y_test) == rec.row["test_accuracy"]
        assert sparsity_report(rec.checkpoints["final"])[0] == rec.row["sparsity"]
    if name == "shape_adaptor":
        scales = json.loads(records[0].row["scales"])
        assert len(scales) == 3 and all(0.5 <= s <= 1.0 for s in scales)


@pytest.mark.slow
def test_variants_round_trip_through_a_model_set(tmp_path, parent: Parent, data: TaskTensors) -> None:
    import modelset
    from modelset.writer import ModelSetWriter

    records = []
    for name in ("str", "channel_sim", "shape_adaptor", "nsl"):
        records += get_recipe(name)(parent, data, seed=0, **RECIPE_PARAMS[name])
    with ModelSetWriter.open(tmp_path / "ms", name="variants-test") as writer:
        writer.write_shard(records)
        writer.finish()
    ms = modelset.open(tmp_path / "ms")
    for rec in records:
        model = ms.model(rec.model_id)
        assert accuracy(model, data.x_test, data.y_test) == pytest.approx(rec.row["test_accuracy"])
        assert ms.metadata.loc[rec.model_id, "variant"] == rec.row["variant"]


# -- comparison tables ----------------------------------------------------------------------


def _fake_metadata() -> pd.DataFrame:
    rows = []
    for task in ("t0", "t1"):
        for seed in (0, 1):
            match = f"{task}-str-{seed}"
            rows.append({"task": task, "seed": seed, "variant": "str", "family": "str_vs_gmp",
                         "match_id": match, "level": "s_init=-3", "test_accuracy": 0.8 + 0.01 * seed,
                         "sparsity": 0.9, "flops": 1000, "flops_sparse": 100, "n_params": 50})
            rows.append({"task": task, "seed": seed, "variant": "gmp", "family": "str_vs_gmp",
                         "match_id": match, "level": "s_init=-3", "test_accuracy": 0.7,
                         "sparsity": 0.9, "flops": 1000, "flops_sparse": 100, "n_params": 50})
    rows.append({"task": "t0", "seed": 0, "variant": "shape_adaptor", "family": "shape_adaptor_vs_fixed_stride",
                 "match_id": "sa", "level": "", "test_accuracy": 0.5, "sparsity": 0.0, "flops": 3000,
                 "flops_sparse": 3000, "n_params": 53, "scales": "[0.6, 0.7, 0.8]"})
    return pd.DataFrame(rows)


def test_comparison_tables_values_and_files(tmp_path) -> None:
    from builders.variants.tables import comparison_table, write_tables

    table = comparison_table(_fake_metadata(), "str_vs_gmp")
    assert list(table["variant"]) == ["str", "gmp"]
    str_row, gmp_row = table.iloc[0], table.iloc[1]
    assert str_row["n_models"] == 4 and str_row["n_tasks"] == 2
    assert str_row["accuracy_mean"] == pytest.approx(0.805)
    assert str_row["accuracy_std"] == pytest.approx(torch.tensor([0.8, 0.81, 0.8, 0.81]).std().item(), rel=1e-4)
    assert str_row["delta_vs_baseline_mean"] == pytest.approx(0.105)
    assert gmp_row["accuracy_std"] == pytest.approx(0.0)
    written = write_tables(_fake_metadata(), tmp_path / "out")
    text = written["markdown"].read_text()
    assert "0.8050 ± 0.0058" in text and "+0.1050" in text
    assert "no models of this family" in text  # channel pruning absent from this fake set
    assert written["plot"].stat().st_size > 1000
    assert (tmp_path / "out" / "shape_adaptor_scales.csv").read_text().startswith("adaptor,scale_mean")


def _same_value(a: object, b: object) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # NaN


def test_recipe_pool_gives_the_same_variants_in_workers_and_in_process(parent: Parent, data: TaskTensors) -> None:
    calls = [("str", 2), ("nsl", 3), ("str", 4)]
    in_process = [RecipePool(1).submit(get_recipe(n), parent, data, s, RECIPE_PARAMS[n]).result() for n, s in calls]
    threads = torch.get_num_threads()
    with RecipePool(2) as pool:
        futures = [pool.submit(get_recipe(n), parent, data, s, RECIPE_PARAMS[n]) for n, s in calls]
        in_workers = [f.result() for f in reversed(futures)][::-1]  # asked in any order
    assert torch.get_num_threads() == threads
    for a, b in zip(in_process, in_workers):
        assert [r.model_id for r in a] == [r.model_id for r in b]
        for ra, rb in zip(a, b):
            assert ra.row.keys() == rb.row.keys()
            assert all(_same_value(ra.row[k], rb.row[k]) for k in ra.row), ra.model_id
            for ck, state in ra.checkpoints.items():
                assert all(torch.equal(state[k], rb.checkpoints[ck][k]) for k in state), (ra.model_id, ck)


def test_recipe_pool_runs_a_local_recipe_in_this_process(parent: Parent, data: TaskTensors) -> None:
    def local(parent: Parent, data: TaskTensors, seed: int, scale: int = 1) -> list[int]:
        return [seed * scale, torch.get_num_threads()]

    torch.set_num_threads(2)
    try:
        with RecipePool(2) as pool:
            assert pool.submit(local, parent, data, 5, {"scale": 3}).result() == [15, 1]  # one thread
            assert pool._pool is None  # no worker process was started for it
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        RecipePool(0)


def _dying_recipe(parent: Parent, data: TaskTensors, seed: int) -> list:
    os._exit(1)  # a worker killed mid-call (or one that re-ran an unguarded script and failed)


def test_recipe_pool_names_the_cause_of_a_dead_worker(parent: Parent, data: TaskTensors) -> None:
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool, match="if __name__ == "), RecipePool(2) as pool:
        pool.submit(_dying_recipe, parent, data, 0, {}).result()

