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
from builders.variants._common import VariantError, accuracy, sparsity_report, spread_tasks, warmup_cosine
from builders.variants._pool import RecipePool
from builders.variants.channel_similarity import channel_distances, similarity_prune
from builders.variants.flops import conv_flops, count_flops, count_sparse_flops
from builders.variants.gmp import gmp_sparsity, magnitude_mask
from builders.variants.soft_threshold import SoftThreshold, attach_str, detach_str
from modelset.architectures import build_architecture
from modelset.architectures.layers import NSLConv2d, ShapeAdaptor, shape_adaptor_alpha
from modelset.errors import UnknownNameError

N_CLASSES = 4
SIZE = 12
TINY = {"epochs": 1, "n_train": 96, "batch_size": 32}
TINY_FT = {"epochs": 1, "n_train": 96, "batch_size": 32}


def _synthetic(seed: int = 0, n: int = 160) -> TaskTensors:
    """Learnable toy task: each class is a fixed random pattern plus noise, ``(n, 1, 12, 12)``."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.rand(N_CLASSES, 1, SIZE, SIZE, generator=g)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = patterns[y] + 0.3 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return TaskTensors(x[:96], y[:96], x[96:], y[96:], N_CLASSES)


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


def test_str_sparsity_emerges_from_a_near_zero_threshold(parent: Parent, data: TaskTensors) -> None:
    records = get_recipe("str")(parent, data, seed=0, st_decays=[0.0, 2.0], **{**TINY, "epochs": 4})
    assert [r.row["variant"] for r in records] == ["str", "gmp", "str", "gmp"]
    no_decay, decayed = records[0], records[2]
    trace = json.loads(decayed.row["sparsity_trace"])
    assert trace[0][0] == 0 and trace[-1][0] == 12  # 3 batches × 4 epochs
    assert trace[0][1] < 0.05  # sInit = -6: the threshold starts near zero
    assert trace[-1][1] > 0.3 and trace[-1][1] > trace[len(trace) // 2][1] > trace[0][1]  # it emerges
    assert no_decay.row["sparsity"] < 0.1 < 0.3 < decayed.row["sparsity"]  # decay on s drives it
    sd = decayed.checkpoints["final"]
    weights = [sd[k] for k in ("conv1.weight", "conv2.weight", "conv3.weight", "head.weight")]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert decayed.row["sparsity"] == pytest.approx(zeros, abs=1e-12) == pytest.approx(trace[-1][1], abs=1e-4)
    per_layer = json.loads(decayed.row["layer_sparsity"])
    assert per_layer["conv2"] == pytest.approx(float((sd["conv2.weight"] == 0).float().mean()))
    # Both twins start from the parent ("init" checkpoint) and share the regime and match id.
    str_rec, gmp_rec = records[2], records[3]
    for rec in (str_rec, gmp_rec):
        assert all(torch.equal(rec.checkpoints["init"][k], parent.state_dict[k]) for k in parent.state_dict)
    same = ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "schedule", "n_train")
    assert {k: str_rec.row[k] for k in same} == {k: gmp_rec.row[k] for k in same}
    assert gmp_rec.row["match_id"] == str_rec.model_id == str_rec.row["match_id"]
    assert gmp_rec.row["sparsity"] == pytest.approx(zeros, abs=0.02)
    gmp_layers = json.loads(gmp_rec.row["layer_sparsity"])
    assert max(gmp_layers.values()) - min(gmp_layers.values()) < 0.05
    assert str_rec.row["flops_sparse"] < str_rec.row["flops"]


def test_str_decay_on_s_is_its_own_parameter_group(parent: Parent, data: TaskTensors) -> None:
    """Without loss gradient (s far below the weights) only the decay moves s: with SGD momentum
    0.9 at a constant rate, s shrinks geometrically, by ``st_decay`` and not the weights' decay."""
    from builders.variants._common import Regime
    from builders.variants.soft_threshold import train_str

    regime = Regime(lr=0.1, weight_decay=0.0, epochs=1, n_train=32, batch_size=32, warmup=0.0, nesterov=False)
    rec = train_str(parent, data, 0, 0.5, regime, s_init=-40.0)
    learned = json.loads(rec.row["learned_thresholds"])
    # One step, cosine factor 1 at step 0: s = -40 · (1 - 0.1 · 0.5) = -38; sigmoid(-38) ≈ 3e-17.
    assert all(t == pytest.approx(0.0, abs=1e-12) for t in learned)
    with pytest.raises(VariantError, match="st_decay must be >= 0"):
        train_str(parent, data, 0, -1.0, regime)


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
    assert sim.row["width_ratio"] == 0.5 and "project's own" in sim.row["similarity"]


def test_clustering_returns_exactly_the_asked_number_of_groups() -> None:
    from builders.variants.channel_similarity import cluster_channels

    # Four identical channels and four distinct: the merge heights tie at 0, where fcluster's
    # maxclust would stop short of some counts; cut_tree gives every count exactly.
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.zeros(4, 3), torch.randn(4, 3, generator=gen) * 5]).double()
    distance = torch.cdist(points, points).numpy()
    for n_keep in range(1, 9):
        groups = cluster_channels(distance, distance.sum(1), n_keep)
        assert len(groups) == n_keep
        assert sorted(i for g in groups for i in g) == list(range(8))


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
    x = torch.randn(2, 3, 28, 28)
    out = sa(x)
    scale = 0.5 + 0.5 * torch.sigmoid(torch.tensor(alpha)).item()
    assert sa.scale() == pytest.approx(scale)
    assert out.shape == (2, 3, int(28 * scale), int(28 * scale))


def test_shape_adaptor_mixes_max_pool_and_identity() -> None:
    x = torch.randn(2, 3, 8, 8)
    low = ShapeAdaptor(-30.0)  # σ(α) ≈ 0: the max-pooled branch, at half size
    assert torch.allclose(low(x), F.max_pool2d(x, 2, 2), atol=1e-6)
    high = ShapeAdaptor(30.0)  # σ(α) ≈ 1: the input itself
    assert torch.allclose(high(x), x, atol=1e-6)


def test_shape_adaptors_follow_conv_relu_blocks_and_start_by_the_authors_heuristic() -> None:
    sa = ShapeAdaptor(0.3)
    sa(torch.randn(2, 3, 16, 16)).square().mean().backward()
    assert sa.alpha.grad is not None and sa.alpha.grad.abs() > 0
    model = build_architecture("cnn3", {"downsample": "shape_adaptor", "strides": [2, 2, 2]})
    adaptors = model.shape_adaptors()
    assert len(adaptors) == 2 and not hasattr(model, "sa2")  # never after the last layer
    assert math.prod(a.scale() for a in adaptors) == pytest.approx(0.5, rel=1e-3)  # 28 → 14
    assert all(c.stride == (1, 1) for c in model.convs())
    shapes = []
    model.conv2.register_forward_hook(lambda _m, args, _o: shapes.append(args[0].shape[-1]))
    model(torch.randn(1, 1, 28, 28))
    assert shapes == [int(28 * adaptors[0].scale())]  # conv1 → ReLU → sa0 → conv2
    # The heuristic: two adaptors resizing 28 → 7 are each at r1 = 0.5, the floor σ(α) = 1e-4.
    assert 1 / (1 + math.exp(-shape_adaptor_alpha(28, 7, 2))) == pytest.approx(1e-4, rel=1e-3)
    assert shape_adaptor_alpha(28, 14, 2) == pytest.approx(math.log(0.41431 / 0.58569), abs=1e-3)


def test_alpha_moves_only_on_its_own_steps(parent: Parent, data: TaskTensors) -> None:
    from builders.variants._common import Regime, fit
    from builders.variants.shape_adaptor import alpha_stepper

    regime = Regime(lr=0.05, epochs=1, n_train=96, batch_size=32)
    model = build_architecture("cnn3", {**parent.arch_kwargs, "downsample": "shape_adaptor"})
    history = []
    extra = alpha_stepper(model, regime, 96, alpha_lr=0.5, alpha_every=2)
    fit(model, data.x_train, data.y_train, regime, seed=0,
        after_step=lambda step, total: history.append(float(model.sa0.alpha.detach())), **extra)
    # Steps 0 and 2 update α (before the weights' step); step 1 leaves it where step 0 put it.
    assert history[0] != float(build_architecture("cnn3", {**parent.arch_kwargs, "downsample": "shape_adaptor"}).sa0.alpha.detach())
    assert history[1] == history[0] and history[2] != history[1]


# -- NSL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [1, 2])
def test_nsl_at_identity_equals_convolution(stride: int) -> None:
    x = torch.randn(3, 4, 11, 11)
    for form in ("full", "diag"):
        layer = NSLConv2d(4, 6, 3, stride, 1, form=form)
        assert torch.equal(layer(x), F.conv2d(x, layer.weight, layer.bias, stride, 1))
    for form in ("dynamic_full", "dynamic_diag"):
        layer = NSLConv2d(4, 6, 3, stride, 1, form=form)
        with torch.no_grad():
            layer.meta2.weight.zero_()  # g(x) = 0: M(x) = I exactly
        expected = F.conv2d(x, layer.weight, layer.bias, stride, 1)
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_nsl_matrix_is_spatial_and_shared_across_channels() -> None:
    layer = NSLConv2d(2, 3, 3, 1, 1, form="full")
    assert layer.M.shape == (9, 9)
    assert NSLConv2d(16, 16, 3, 1, 1, form="diag").m.shape == (9,)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.M.copy_(torch.eye(9)[perm])  # M permutes the window positions of every channel alike
    x = torch.randn(1, 2, 5, 5)
    w = layer.weight.reshape(3, 2, 9)
    expected_w = torch.zeros_like(w)
    expected_w[:, :, perm] = w  # (Mᵀw)_s = Σ_r M[r, s] w_r = w_{r: perm[r] = s}
    expected = F.conv2d(x, expected_w.reshape(3, 2, 3, 3), layer.bias, 1, 1)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_dynamic_full_nsl_applies_the_predicted_matrix_per_position() -> None:
    torch.manual_seed(0)
    layer = NSLConv2d(2, 3, 3, 1, 1, form="dynamic_full")
    with torch.no_grad():
        layer.meta2.weight.normal_(0, 0.1)
    x = torch.randn(1, 2, 4, 4)
    residual = layer.similarity_residual(x)  # (1, 9, 9, 16)
    patches = F.unfold(x, 3, padding=1).reshape(1, 2, 9, 16)
    w = layer.weight.reshape(3, 2, 9)
    p = 5  # one output position, by hand: wᵀ (I + R_p) x_p per channel
    m = torch.eye(9) + residual[0, :, :, p]
    by_hand = torch.einsum("ocr,rs,cs->o", w, m, patches[0, :, :, p]) + layer.bias
    assert torch.allclose(layer(x).reshape(3, 16)[:, p], by_hand, atol=1e-5)


def test_nsl_regularisers_are_the_authors(parent: Parent) -> None:
    from builders.variants._common import Regime
    from builders.variants.nsl import nsl_groups

    model = build_architecture("cnn3", {"conv": "nsl_full"})
    groups = nsl_groups(model, Regime(), 5e-3)["groups"]
    assert [g.get("weight_decay") for g in groups] == [None, 5e-3]  # M: L2 5e-3; the rest: the regime's
    assert sum(p.numel() for p in groups[1]["params"]) == 3 * 81
    model = build_architecture("cnn3", {"conv": "nsl_diag"})
    assert [g.get("weight_decay") for g in nsl_groups(model, Regime(), 5e-3)["groups"]] == [None, 0.0]


# -- every recipe: rebuildable, accuracy reproduced -----------------------------------------

RECIPE_PARAMS = {
    "str": {"st_decays": [1.0], **TINY},
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
        assert len(scales) == 2 and all(0.5 <= s <= 1.0 for s in scales)
    if len(records) > 1:  # a method and its twin: one regime
        same = ("optimizer", "lr", "weight_decay", "batch_size", "epochs", "schedule", "n_train")
        assert len({tuple(str(r.row.get(k)) for k in same) for r in records}) == 1, name


def test_regime_schedule_and_task_spread(parent: Parent, data: TaskTensors) -> None:
    factors = [warmup_cosine(t, 20, 0.1) for t in range(20)]
    assert factors[:2] == [0.5, 1.0] and factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))  # cosine decreases after warm-up
    tasks = [f"t{i:02d}" for i in range(50)]
    assert spread_tasks(tasks, 25) == tasks[::2] and spread_tasks(tasks, None) == tasks
    assert spread_tasks(tasks, 10) == tasks[::5] and len(spread_tasks(tasks, 13)) == 13
    with pytest.raises(VariantError, match="parents.tasks must be at least 1"):
        spread_tasks(tasks, 0)
    with pytest.raises(VariantError, match="unknown params"):
        get_recipe("nsl")(parent, data, 0, finetune_epochs=1)


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
    # Paired over the two parents (tasks here): Δ per parent is 0.105 twice, a zero-width interval.
    assert str_row["n_parents"] == 2
    assert str_row["delta_ci95_low"] == pytest.approx(0.105) == pytest.approx(str_row["delta_ci95_high"])
    claims = pd.read_csv(written["claims"])
    # The interval lies above 0, but two parents cannot make a Wilcoxon test significant: a verdict
    # needs both, so none is claimed.
    assert claims.loc[claims["comparison"] == "str_vs_gmp", "verdict"].tolist() == ["no difference detected"]
    assert "no models of this family" in text  # channel pruning absent from this fake set
    assert written["plot"].stat().st_size > 1000
    assert (tmp_path / "out" / "shape_adaptor_scales.csv").read_text().startswith("adaptor,scale_mean")


def test_a_new_recipe_reaches_the_tables_through_its_metadata(tmp_path) -> None:
    """A recipe declaring a comparison and a learned vector gets its table, claim and summary
    without any edit to the table code."""
    from builders.variants._registry import (
        Comparison,
        LearnedVector,
        RecipeMeta,
        register_recipe,
        unregister_recipe,
    )
    from builders.variants.tables import write_tables

    meta = RecipeMeta(
        Comparison(family="toy_vs_plain", title="Toy vs plain", methods=("toy",), baseline="plain",
                   claim="toy ≥ plain (a test)", order=0),
        learned=(LearnedVector(name="toy_gates", title="Toy gates", variant="toy", column="gates",
                               item="gate", prefix="g", value="gate"),),
    )
    register_recipe("toy_recipe", meta=meta)(lambda parent, data, seed, **params: [])
    try:
        rows = [{"task": f"t{i}", "seed": 0, "variant": v, "family": "toy_vs_plain", "match_id": f"m{i}",
                 "level": "", "test_accuracy": acc + 0.01 * i, "gates": "[0.25, 0.75]"}
                for i in range(3) for v, acc in (("toy", 0.6), ("plain", 0.5))]
        written = write_tables(pd.concat([_fake_metadata(), pd.DataFrame(rows)], ignore_index=True), tmp_path)
        text = written["markdown"].read_text()
        assert text.index("## Toy vs plain") < text.index("## STR vs GMP")  # order=0: first table
        toy = pd.read_csv(written["toy_vs_plain"])
        assert list(toy["variant"]) == ["toy", "plain"]
        assert toy.loc[0, "delta_vs_baseline_mean"] == pytest.approx(0.1)
        claims = pd.read_csv(written["claims"])
        assert claims.loc[claims["comparison"] == "toy_vs_plain", "claim"].tolist() == ["toy ≥ plain (a test)"]
        gates = pd.read_csv(written["toy_gates"])
        assert list(gates.columns) == ["gate", "gate_mean", "gate_std"]
        assert gates["gate_mean"].tolist() == pytest.approx([0.25, 0.75])
        assert "## Toy gates" in text
    finally:
        unregister_recipe("toy_recipe")
    assert "toy_recipe" not in list_recipes()


def test_comparison_claim_variants_must_be_methods() -> None:
    from builders.variants._registry import Comparison

    with pytest.raises(ValueError, match=r"claim variants \['other'\]"):
        Comparison(family="f", title="t", methods=("a",), baseline="b", claim="c", claim_variants=("other",))


def test_card_lists_each_recipes_deviations() -> None:
    from builders.variants._card import card_text, deviations

    for recipe in ("str", "channel_sim", "shape_adaptor", "nsl"):
        assert deviations(recipe).startswith("**Deviations"), recipe
    text = card_text([{"recipe": "nsl", "parents": {"tasks": 3}, "params": {"epochs": 1}}])
    assert "- `nsl` on parents {'tasks': 3}, params epochs=1. **Deviations" in text
    assert "``" not in text and "\n\n- " in text


def test_paired_stats_interval_and_wilcoxon() -> None:
    from scipy import stats

    from builders.variants.tables import paired_stats

    deltas = [0.02, 0.05, -0.01, 0.04, 0.03, 0.06, 0.01, 0.02]
    low, high, p = paired_stats(deltas)
    assert low < sum(deltas) / len(deltas) < high and low > -0.01
    assert p == pytest.approx(stats.wilcoxon(deltas).pvalue)
    assert all(math.isnan(v) for v in paired_stats([0.1]))


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

