"""A saved LPS scorer and a user's checkpoint are untrusted input too: bounded before they are
allocated, and every problem is one ``ModelSetError`` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lps.__main__ import main
from lps.model import LPS, LPSNet
from lps.search import load_checkpoint
from modelset.errors import InvalidParametersError, ModelSetError
from modelset.synthetic import write_synthetic


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    net = LPSNet({"m:conv1": [4, 4], "v:head": [3]}, dim=8, proj=2, hidden=16)
    return LPS(net).save(tmp_path / "lps")


def _config(folder: Path, **changes) -> None:
    config = json.loads((folder / "lps.json").read_text())
    config.update(changes)
    (folder / "lps.json").write_text(json.dumps(config))


def test_saved_scorer_round_trips(saved: Path) -> None:
    loaded = LPS.load(saved)
    assert loaded.net.hidden == 16 and loaded.dim == 8


@pytest.mark.parametrize(("hidden", "message"), [(100_000, "'hidden' must be an integer from 1 to"),
                                                 (4096, "do not fit the network"),
                                                 ("16", "'hidden' must be an integer")])  # fmt: skip
def test_huge_or_mismatched_hidden_is_refused_before_allocation(saved: Path, hidden, message: str) -> None:
    """hidden = 100,000 would allocate 40 GB; 4,096 fits the limits but not the 16-wide tensors
    the file stores (a 64 MB layer). Both are refused from the sizes alone."""
    _config(saved, hidden=hidden)
    with pytest.raises(ModelSetError, match=message):
        LPS.load(saved)


@pytest.mark.parametrize("text", ["[" * 50_000 + "]" * 50_000, '{"format": "lps-v1", "dim": 1' + "0" * 5000 + "}",
                                  '{"format": "lps-v1", "schema": ' + '{"a":' * 80 + "1" + "}" * 80 + "}"])  # fmt: skip
def test_deep_or_huge_number_config_is_refused(saved: Path, text: str) -> None:
    (saved / "lps.json").write_text(text)
    with pytest.raises(ModelSetError, match="lps.json: JSON is nested|lps.json: not valid JSON"):
        LPS.load(saved)


def test_non_finite_scorer_tensors_are_refused(saved: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(saved / "lps.safetensors"))
    tensors["metric.weight"][0, 0] = float("nan")
    save_file(tensors, str(saved / "lps.safetensors"))
    with pytest.raises(ModelSetError, match="metric.weight.*not finite"):
        LPS.load(saved)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_search_refuses_non_finite_checkpoints_up_front(saved: Path, tmp_path: Path, value: float, capsys) -> None:
    zoo = write_synthetic(tmp_path / "zoo", 4, n_tasks=2, seed=0)
    from modelset import open as open_set

    with open_set(zoo) as ms:
        state = ms.state_dict(ms.metadata.index[0])
    state["conv2.weight"][0, 0, 0, 0] = value
    save_file(state, str(tmp_path / "mine.safetensors"))
    with pytest.raises(InvalidParametersError, match=r"mine.safetensors: tensors \['conv2.weight'\] hold NaN or Inf"):
        load_checkpoint(tmp_path / "mine.safetensors")
    code = main(["search", str(tmp_path / "mine.safetensors"), "--zoo", str(zoo), "--lps", str(saved)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "NaN or Inf" in err


def test_compressed_torch_checkpoint_is_refused_before_loading(tmp_path: Path) -> None:
    """torch.save stores entries uncompressed; a deflated 400 MB tensor in a small file is a bomb."""
    import zipfile

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1000)}, plain)
    assert set(load_checkpoint(plain)) == {"w"}
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data + b"\0" * (100 << 20) if info.filename.endswith("/data/0") else data)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ModelSetError, match="bomb.pt: its entries .* declare more data than the file holds"):
        load_checkpoint(bomb)
