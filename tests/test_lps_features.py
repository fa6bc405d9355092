"""Weight container and invariant features: random hidden-unit permutations leave a network's
outputs and its LPS features unchanged; a permutation that breaks the coupling changes them."""

from __future__ import annotations

import pytest
import torch

from lps.features import STATS_SIZE, compute_features
from lps.weights import WeightSpace, permute_hidden, to_state_dicts
from modelset.architectures import build_architecture
from modelset.errors import InvalidParametersError

CNN_CASES = {
    "cnn3": {"num_classes": 5},
    "pruned": {"num_classes": 5, "channels": [9, 13, 6]},
    "sparse": {"num_classes": 5},
    "nsl_full": {"num_classes": 5, "conv": "nsl_full"},
    "nsl_diag": {"num_classes": 5, "conv": "nsl_diag"},
    "nsl_dynamic": {"num_classes": 5, "conv": "nsl_dynamic", "nsl_hidden": 4},
    "shape_adaptor": {"num_classes": 5, "downsample": "shape_adaptor"},
}


def _trained_like(name: str, kwargs: dict, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A cnn3 whose every tensor is random (NSL M away from I, α away from its start)."""
    gen = torch.Generator().manual_seed(seed)
    net = build_architecture("cnn3", kwargs).eval()
    state = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in net.state_dict().items()}
    for key in state:
        if key.endswith(".M"):
            state[key] = torch.eye(state[key].shape[0]) + 0.1 * state[key]
        if key.endswith(".m"):
            state[key] = 1.0 + 0.3 * state[key]
    if name == "sparse":  # STR/GMP twins are plain cnn3 with most weights at exactly zero
        state = {k: v * (torch.rand(v.shape, generator=gen) > 0.8) for k, v in state.items()}
    net.load_state_dict(state)
    return net, state


def _random_perms(space: WeightSpace, gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randperm(layer.out_features, generator=gen) for layer in space.layers[:-1]]


def _assert_same_features(a, b, atol: float = 2e-5) -> None:
    fa, fb = a.flat(), b.flat()
    assert fa.keys() == fb.keys()
    for key in fa:
        torch.testing.assert_close(fa[key], fb[key], atol=atol, rtol=1e-4, msg=f"feature {key} changed")


@pytest.mark.parametrize("name", sorted(CNN_CASES))
def test_hidden_permutation_keeps_outputs_and_features(name: str) -> None:
    kwargs = CNN_CASES[name]
    net, state = _trained_like(name, kwargs)
    space = WeightSpace.from_state_dict("cnn3", kwargs, state)
    gen = torch.Generator().manual_seed(1)
    permuted = permute_hidden(space, _random_perms(space, gen))
    # The permutation really moved weights, yet the network computes the same function.
    assert not torch.equal(permuted.layers[0].weight, space.layers[0].weight)
    twin = build_architecture("cnn3", kwargs).eval()
    twin.load_state_dict(to_state_dicts(permuted)[0])
    x = torch.randn(4, 1, 28, 28, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), atol=1e-5, rtol=1e-4)
    _assert_same_features(compute_features(space), compute_features(permuted))


@pytest.mark.parametrize("name", ["cnn3", "pruned", "nsl_full"])
def test_breaking_the_coupling_changes_features(name: str) -> None:
    kwargs = CNN_CASES[name]
    _, state = _trained_like(name, kwargs)
    space = WeightSpace.from_state_dict("cnn3", kwargs, state)
    first = space.layers[0]
    perm = torch.randperm(first.out_features, generator=torch.Generator().manual_seed(3))
    # Permute layer 1's outputs but not layer 2's inputs: a different network.
    broken = space.map_layers(
        lambda i, layer: (
            layer if i else type(layer)(layer.name, layer.weight[:, perm], layer.bias[:, perm], layer.form)
        )
    )
    before, after = compute_features(space).matrices, compute_features(broken).matrices
    torch.testing.assert_close(after["conv1.gram"], before["conv1.gram"])  # layer 1 alone is blind to it
    assert (after["conv2.gram"] - before["conv2.gram"]).abs().max() > 1e-3
    assert (after["head.chain"] - before["head.chain"]).abs().max() > 1e-3


def test_per_model_permutations_in_a_batch() -> None:
    kwargs = CNN_CASES["cnn3"]
    states = [_trained_like("cnn3", kwargs, seed=s)[1] for s in range(3)]
    stacked = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    space = WeightSpace.from_stacked("cnn3", kwargs, stacked)
    gen = torch.Generator().manual_seed(5)
    perms = [
        torch.stack([torch.randperm(layer.out_features, generator=gen) for _ in range(3)])
        for layer in space.layers[:-1]
    ]
    features = compute_features(space)
    _assert_same_features(features, compute_features(permute_hidden(space, perms)))
    # Different models do get different features.
    assert (features.matrices["conv2.gram"][0] - features.matrices["conv2.gram"][1]).abs().max() > 1e-3


def test_feature_sizes_do_not_depend_on_channels() -> None:
    full = compute_features(
        WeightSpace.from_state_dict("cnn3", CNN_CASES["cnn3"], _trained_like("cnn3", CNN_CASES["cnn3"])[1])
    )
    pruned = compute_features(
        WeightSpace.from_state_dict(
            "cnn3", CNN_CASES["pruned"], _trained_like("pruned", CNN_CASES["pruned"])[1]
        )
    )
    assert {k: v.shape for k, v in full.matrices.items()} == {k: v.shape for k, v in pruned.matrices.items()}
    assert full.matrices["conv1.gram"].shape == (1, 10, 10)  # 1 input channel × 3 × 3 + bias
    assert full.matrices["conv2.gram"].shape == (1, 90, 90)
    assert full.vectors["conv1.stats"].shape == (1, STATS_SIZE)
    for key, gram in full.matrices.items():  # unit trace, symmetric PSD
        assert torch.allclose(torch.diagonal(gram, dim1=1, dim2=2).sum(-1), torch.ones(1)), key
        torch.testing.assert_close(gram, gram.transpose(1, 2))
        assert torch.linalg.eigvalsh(gram.double()).min() > -1e-5


def test_sparsity_and_variant_statistics_are_reported() -> None:
    _, sparse = _trained_like("sparse", CNN_CASES["sparse"])
    zeros = compute_features(WeightSpace.from_state_dict("cnn3", CNN_CASES["sparse"], sparse)).vectors[
        "conv2.stats"
    ][0, 4]
    expected = float((sparse["conv2.weight"] == 0).float().mean())
    assert zeros.item() == pytest.approx(expected)
    _, adapted = _trained_like("shape_adaptor", CNN_CASES["shape_adaptor"])
    sa = compute_features(WeightSpace.from_state_dict("cnn3", CNN_CASES["shape_adaptor"], adapted)).vectors[
        "shape_adaptor"
    ]
    alphas = torch.stack([adapted[f"sa{i}.alpha"].reshape(()) for i in range(2)])  # never after the last conv
    torch.testing.assert_close(sa[0, :2], torch.sigmoid(alphas))


def test_container_is_explicit_and_checks_shapes() -> None:
    kwargs = CNN_CASES["cnn3"]
    _, state = _trained_like("cnn3", kwargs)
    # Key order of the state dict must not matter.
    reversed_state = dict(reversed(list(state.items())))
    space = WeightSpace.from_state_dict("cnn3", kwargs, reversed_state)
    assert [layer.name for layer in space.layers] == ["conv1", "conv2", "conv3", "head"]
    assert space.layers[1].weight.shape == (1, 16, 16, 3, 3) and space.layers[3].weight.shape == (1, 5, 16)
    with pytest.raises(TypeError):
        space.extras["x"] = torch.zeros(1)  # immutable
    bad = dict(state, **{"conv2.weight": torch.zeros(16, 15, 3, 3)})
    with pytest.raises(InvalidParametersError, match=r"conv2.weight.*\[16, 15, 3, 3\].*\[16, 16, 3, 3\]"):
        WeightSpace.from_state_dict("cnn3", kwargs, bad)
    with pytest.raises(InvalidParametersError, match="missing tensors \\['head.bias'\\]"):
        WeightSpace.from_state_dict("cnn3", kwargs, {k: v for k, v in state.items() if k != "head.bias"})


def test_resnet_inner_permutation_keeps_generic_features() -> None:
    import modelset.architectures.resnet  # noqa: F401  (registers resnet_tiny)

    gen = torch.Generator().manual_seed(0)
    net = build_architecture("resnet_tiny", {"num_classes": 5}).eval()
    state = {
        k: (torch.randn(v.shape, generator=gen) * 0.3 if v.is_floating_point() else v)
        for k, v in net.state_dict().items()
    }
    for key in state:
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 0.5
    net.load_state_dict(state)
    width = state["layer2.0.conv1.weight"].shape[0]
    perm = torch.randperm(width, generator=gen)
    twin_state = dict(state)
    for key in (
        "layer2.0.conv1.weight",
        "layer2.0.bn1.weight",
        "layer2.0.bn1.bias",
        "layer2.0.bn1.running_mean",
        "layer2.0.bn1.running_var",
    ):
        twin_state[key] = state[key][perm]
    twin_state["layer2.0.conv2.weight"] = state["layer2.0.conv2.weight"][:, perm]
    twin = build_architecture("resnet_tiny", {"num_classes": 5}).eval()
    twin.load_state_dict(twin_state)
    x = torch.randn(2, 1, 28, 28, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), net(x), atol=1e-5, rtol=1e-4)
    a = compute_features(WeightSpace.from_state_dict("resnet_tiny", {"num_classes": 5}, state))
    b = compute_features(WeightSpace.from_state_dict("resnet_tiny", {"num_classes": 5}, twin_state))
    _assert_same_features(a, b)
    assert a.matrices["stem.gram"].shape == (1, 50, 50) and a.matrices["head.gram"].shape == (1, 5, 5)


def test_a_fully_pruned_layer_has_finite_features() -> None:
    from lps.features import layer_statistics
    from lps.weights import Layer

    weight = torch.zeros(3, 4, 2, 3, 3)  # three models whose layer STR or GMP pruned away entirely
    weight[1] = torch.randn(4, 2, 3, 3)
    stats = layer_statistics(Layer("conv2", weight, torch.zeros(3, 4)))
    assert torch.isfinite(stats).all()
    assert stats[0, 4] == 1.0 and stats[1, 4] < 1.0  # the fraction of zeros says what happened
