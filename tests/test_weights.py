"""The one weight space (``modelset.weights``): batch-norm folding, reading many models, the
state-dict permutation the synthetic sets use, and the one supervised contrastive loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.methods.weight_stats import STATS_PER_LAYER, weight_statistics
from lps.train import supervised_contrastive
from modelset import weights
from modelset.architectures import build_architecture
from modelset.errors import InvalidParametersError
from modelset.weights import WeightSpace, load_spaces, one_per_signature, permute_state_dict

RESNET = {"num_classes": 5}


def _random_state(architecture: str, kwargs: dict, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A module in eval mode whose every float tensor is random (running variances positive)."""
    gen = torch.Generator().manual_seed(seed)
    net = build_architecture(architecture, kwargs).eval()
    state = {}
    for key, value in net.state_dict().items():
        if not value.is_floating_point():
            state[key] = value
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        else:
            state[key] = 0.3 * torch.randn(value.shape, generator=gen)
    net.load_state_dict(state)
    return net, state


def test_permute_state_dict_keeps_function_and_draw_order() -> None:
    kwargs = {"num_classes": 5}
    net, state = _random_state("cnn3", kwargs)
    permuted = permute_state_dict("cnn3", kwargs, state, torch.Generator().manual_seed(3))
    assert list(permuted) == list(state)
    assert not torch.equal(permuted["conv1.weight"], state["conv1.weight"])
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    twin = build_architecture("cnn3", kwargs).eval()
    twin.load_state_dict(permuted)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), atol=1e-5, rtol=1e-5)
    # One randperm per hidden layer, in layer order: the draws synthetic sets were written with.
    gen = torch.Generator().manual_seed(3)
    expected = {k: v.clone() for k, v in state.items()}
    for i, nxt in ((1, "conv2"), (2, "conv3"), (3, "head")):
        perm = torch.randperm(expected[f"conv{i}.weight"].shape[0], generator=gen)
        expected[f"conv{i}.weight"] = expected[f"conv{i}.weight"][perm]
        expected[f"conv{i}.bias"] = expected[f"conv{i}.bias"][perm]
        expected[f"{nxt}.weight"] = expected[f"{nxt}.weight"][:, perm]
    for key in state:
        assert torch.equal(permuted[key], expected[key]), key


def test_permute_state_dict_refuses_unchained_layouts() -> None:
    _, state = _random_state("resnet_tiny", RESNET)
    with pytest.raises(InvalidParametersError, match="resnet_tiny: hidden-unit permutation needs a chained layout"):
        permute_state_dict("resnet_tiny", RESNET, state, torch.Generator().manual_seed(0))


def test_batch_norms_fold_on_request() -> None:
    net, state = _random_state("resnet_tiny", RESNET)
    raw = WeightSpace.from_state_dict("resnet_tiny", RESNET, state, fold_norms=False)
    folded = WeightSpace.from_state_dict("resnet_tiny", RESNET, state)
    assert [layer.name for layer in raw.layers] == [layer.name for layer in folded.layers]
    assert raw.layers[0].norm == "bn1" and raw.layers[-1].norm is None
    assert all(layer.norm is None for layer in folded.layers)
    # Unfolded layers hold the stored tensors; folding later equals folding on reading.
    assert torch.equal(raw.layers[0].weight[0], state["conv1.weight"]) and raw.layers[0].bias is None
    refolded = raw.fold_norms()
    for a, b in zip(refolded.layers, folded.layers):
        assert torch.equal(a.weight, b.weight) and (a.bias is None) == (b.bias is None)
    # The folded stem is conv1 followed by bn1 in eval mode.
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    stem = folded.layers[0]
    with torch.no_grad():
        expected = net.bn1(net.conv1(x))
        got = F.conv2d(x, stem.weight[0], stem.bias[0], stride=net.conv1.stride, padding=net.conv1.padding)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_reading_a_layout_leaves_the_global_rng_alone() -> None:
    _, state = _random_state("resnet_tiny", RESNET)
    weights._module_plan.cache_clear()
    torch.manual_seed(7)
    WeightSpace.from_state_dict("resnet_tiny", RESNET, state)  # builds the module for its layout
    after = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(3))


def test_load_spaces_follows_the_ids(mini_set) -> None:
    ids = list(mini_set.metadata.index)
    rng = np.random.default_rng(0)
    wanted = [ids[i] for i in rng.permutation(len(ids))[:12]] + [ids[0]]  # shuffled, one repeat
    spaces = load_spaces(mini_set, wanted, fold_norms=False)
    seen = sorted(int(p) for positions, _ in spaces for p in positions)
    assert seen == list(range(len(wanted)))
    for positions, space in spaces:
        assert space.batch_size == len(positions)
        for j, pos in enumerate(positions):
            stored = mini_set.state_dict(wanted[pos])
            tensors = space.tensors()
            assert tensors.keys() == stored.keys()
            for key, value in stored.items():
                assert torch.equal(tensors[key][j], value), (wanted[pos], key)
    signatures = {tuple(r) for r in mini_set.metadata[["architecture", "arch_kwargs"]].values}
    firsts = one_per_signature(mini_set)
    assert len(firsts) == len(signatures) and all(s.batch_size == 1 for s in firsts)


def test_nsl_meta_networks_are_not_layers_of_the_statistics() -> None:
    kwargs = {"num_classes": 5, "conv": "nsl_dynamic", "nsl_hidden": 4}
    _, state = _random_state("cnn3", kwargs)
    space = WeightSpace.from_state_dict("cnn3", kwargs, state, fold_norms=False)
    assert [layer.name for layer in space.layers] == ["conv1", "conv2", "conv3", "head"]
    assert "conv1.meta1.weight" in space.extras
    stats = weight_statistics(space, 6).reshape(6, STATS_PER_LAYER)
    assert stats[:3].abs().sum(1).gt(0).all() and stats[5].abs().sum() > 0
    assert torch.equal(stats[3:5], torch.zeros(2, STATS_PER_LAYER))  # the head fills the last slot


def _supcon_reference(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al. 2020, eq. 2 (L_out), one anchor at a time."""
    losses = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = torch.logsumexp(torch.stack([z[i] @ z[a] / temperature for a in others]), 0)
        losses.append(-torch.stack([z[i] @ z[p] / temperature - denom for p in positives]).mean())
    return torch.stack(losses).mean()


def test_supervised_contrastive_matches_the_paper() -> None:
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(9, 4, generator=gen, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0])  # label 3 has no positive: skipped
    for temperature in (0.1, 0.5):
        torch.testing.assert_close(supervised_contrastive(z, labels, temperature), _supcon_reference(z, labels, temperature))
    # Clustered embeddings score lower than the same points with scrambled labels.
    clustered = F.normalize(torch.eye(3, dtype=torch.float64).repeat_interleave(3, 0) + 0.01 * z[:, :3], dim=1)
    grouped = torch.arange(3).repeat_interleave(3)
    assert supervised_contrastive(clustered, grouped) < supervised_contrastive(clustered, grouped[torch.randperm(9, generator=gen)])


def test_supervised_contrastive_without_positives_is_a_zero_with_a_graph() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    loss = supervised_contrastive(F.normalize(z, dim=1), torch.arange(4))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
