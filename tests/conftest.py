from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests are small: a single thread keeps timings stable on a shared two-core machine.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A command line run in-process applies its runtime (torch's thread count): restore it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mini_set(tmp_path_factory: pytest.TempPathFactory):
    """The model set of ``configs/mini.yaml``, built once per test session (about a minute).

    ``MODELSET_MINI`` may name an already built copy to reuse. Read-only: tests that change a set
    build their own.
    """
    import modelset

    given = os.environ.get("MODELSET_MINI")
    if given and (Path(given) / "modelset.json").exists():
        return modelset.open(given)
    from builders.build import build
    from modelset.errors import DataUnavailableError

    out = tmp_path_factory.mktemp("mini") / "mini"
    try:
        build(REPO / "configs" / "mini.yaml", out, progress=False)
    except DataUnavailableError as exc:
        pytest.skip(f"the mini set cannot be built here: {exc}")
    return modelset.open(out)
