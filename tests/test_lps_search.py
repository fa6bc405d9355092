"""`lps search` on the mini set: the Python call equals the command line, any width or class count
of a zoo architecture is searched, untrained and non-finite checkpoints are answered clearly."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import lps
from lps.__main__ import main
from lps.calibration import fit_calibration
from lps.model import CONFIG_FILE
from lps.search import LPS_CONFIG, match_signature
from modelset.architectures import build_architecture


@pytest.fixture(scope="module")
def searchable(mini_set, tmp_path_factory):
    """The mini set with an LPS on all its models and a calibration from its folds' LPS."""
    ms = mini_set
    folder = tmp_path_factory.mktemp("lps") / "search"
    lps.train(ms, train_ids=list(ms.metadata.index), epochs=6, seed=0).save(folder)
    folds = [(f, lps.train(ms, train_ids=f.train_ids, epochs=6, seed=f.fold)) for f in ms.folds]
    fit_calibration(ms, folds).save(folder)
    return ms, folder


def _base(ms) -> str:
    table = ms.metadata
    return str(table.index[(table["variant"] == "base") & (table["architecture"] == "cnn3")
                           & (table["num_classes"] == 5)][0])  # fmt: skip


def _widened(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same network with every hidden unit doubled (each copy's outgoing weights halved): a
    cnn3 of twice the width that computes the same function (Net2Net, Chen et al. 2016)."""
    out = dict(state)
    for i in (1, 2, 3):
        w, b = state[f"conv{i}.weight"], state[f"conv{i}.bias"]
        out[f"conv{i}.weight"], out[f"conv{i}.bias"] = torch.cat([w, w]), torch.cat([b, b])
    for nxt in ("conv2.weight", "conv3.weight"):
        w = out[nxt]
        out[nxt] = torch.cat([w, w], dim=1) / 2
    out["head.weight"] = torch.cat([state["head.weight"]] * 2, dim=1) / 2
    return out


def test_the_lps_config_name_without_torch_is_the_models() -> None:
    assert LPS_CONFIG == CONFIG_FILE


def test_every_zoo_model_is_read_as_a_signature_of_the_zoo(mini_set) -> None:
    from modelset.shards import expected_shapes

    signatures = set(map(tuple, mini_set.architectures()[["architecture", "arch_kwargs"]].to_numpy()))
    for mid in mini_set.metadata.index:
        state = mini_set.state_dict(mid)
        signature = match_signature(mini_set, state)
        assert signature.exact and (signature.architecture, signature.arch_kwargs) in signatures
        assert expected_shapes(signature.architecture, signature.arch_kwargs) == {k: tuple(v.shape) for k, v in state.items()}


def test_python_search_equals_the_command_line_json(searchable, tmp_path, capsys) -> None:
    ms, folder = searchable
    mid = _base(ms)
    save_file(ms.state_dict(mid), str(tmp_path / "q.safetensors"))
    table = lps.search(tmp_path / "q.safetensors", ms.root, lps=folder, k=6)
    assert isinstance(table, pd.DataFrame) and len(table) == 6 and table["model_id"].iloc[0] == mid
    assert main(["search", str(tmp_path / "q.safetensors"), "--zoo", str(ms.root), "--lps", str(folder),
                 "-k", "6", "--json", "--no-service"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    cli = pd.DataFrame(doc["hits"])
    assert list(cli.columns) == list(table.columns)
    pd.testing.assert_frame_equal(cli, table, check_exact=False, atol=1e-6, rtol=0)
    assert doc["good_match"] == table.attrs["good_match"]
    # Filters behave alike.
    filtered = lps.search(tmp_path / "q.safetensors", ms.root, lps=folder, k=3, variant="base", min_accuracy=0.5)
    assert (filtered["variant"] == "base").all() and (filtered["test_accuracy"] >= 0.5).all()


def test_other_widths_and_class_counts_are_searched(searchable, tmp_path) -> None:
    ms, folder = searchable
    mid = _base(ms)
    state = ms.state_dict(mid)
    wide = _widened(state)
    signature = match_signature(ms, wide)
    assert json.loads(signature.arch_kwargs)["channels"] == [32, 32, 32] and not signature.exact
    hits = lps.search(wide, ms.root, lps=folder, k=5)
    assert len(hits) == 5 and "channels\":[32,32,32]" in hits.attrs["notes"][0]
    # Unit-trace Grams and the head's map are unchanged by the widening: the source stays near.
    assert mid in list(hits["model_id"])
    # A 3-class head (three of the five classes): head.map has a size the LPS never saw, so both
    # sides are compared without it and the output says so.
    three = dict(state, **{"head.weight": state["head.weight"][:3], "head.bias": state["head.bias"][:3]})
    assert json.loads(match_signature(ms, three).arch_kwargs)["num_classes"] == 3
    hits = lps.search(three, ms.root, lps=folder, k=5)
    assert len(hits) == 5 and hits["score"].is_monotonic_decreasing
    assert any("head.map" in note and "compared without" in note for note in hits.attrs["notes"])
    # Another depth: a fourth convolution, its features unknown to the LPS, the rest compared.
    torch.manual_seed(0)
    deep = build_architecture("cnn3", {"channels": [16] * 4, "num_classes": 5, "strides": [2, 2, 2, 2]}).state_dict()
    assert json.loads(match_signature(ms, deep).arch_kwargs)["strides"] == [2, 2, 2, 2]
    assert len(lps.search(deep, ms.root, lps=folder, k=3)) == 3
    # A 32-channel, 3-class cnn3 written to a file goes through the command line.
    torch.manual_seed(0)
    net = build_architecture("cnn3", {"channels": [32, 32, 32], "num_classes": 3, "strides": [2, 2, 2]})
    save_file(net.state_dict(), str(tmp_path / "wide3.safetensors"))
    assert main(["search", str(tmp_path / "wide3.safetensors"), "--zoo", str(ms.root), "--lps", str(folder),
                 "--no-service"]) == 0  # fmt: skip


def test_an_untrained_network_is_no_good_match(searchable, tmp_path, capsys) -> None:
    ms, folder = searchable
    torch.manual_seed(1)
    net = build_architecture("cnn3", {"num_classes": 5, "strides": [2, 2, 2]})
    save_file(net.state_dict(), str(tmp_path / "untrained.safetensors"))
    table = lps.search(tmp_path / "untrained.safetensors", ms.root, lps=folder, k=3)
    assert table.attrs["good_match"] is False
    assert main(["search", str(tmp_path / "untrained.safetensors"), "--zoo", str(ms.root), "--lps", str(folder),
                 "--no-service"]) == 0  # fmt: skip
    assert "no good match" in capsys.readouterr().out


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_checkpoint_is_refused_in_one_line(searchable, tmp_path, capsys, value) -> None:
    ms, folder = searchable
    state = ms.state_dict(_base(ms))
    state["conv2.weight"][0, 0, 0, 0] = value
    save_file(state, str(tmp_path / "bad.safetensors"))
    code = main(["search", str(tmp_path / "bad.safetensors"), "--zoo", str(ms.root), "--lps", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "bad.safetensors: tensors ['conv2.weight'] hold NaN or Inf" in err[0]
