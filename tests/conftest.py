from __future__ import annotations

import os

import pytest
import torch

# Tests are small: a single thread keeps timings stable on a shared two-core machine.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DISABLE_IMPORT_WARNING", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
