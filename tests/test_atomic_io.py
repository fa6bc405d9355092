"""The one atomic-write helper: single and multi-file forms replace in order only when the block
completes, leave nothing behind on failure, and keep readable permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from modelset import _atomic


def test_atomic_paths_commit_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.json"
    a.write_text("old")
    order = []
    real = os.replace
    monkeypatch.setattr(_atomic.os, "replace", lambda s, d: (order.append(Path(d).name), real(s, d)))
    with _atomic.atomic_paths(a, b) as (ta, tb):
        assert ta.parent == a.parent and tb.parent == b.parent and ta.name.startswith(_atomic.TMP_PREFIX)
        ta.write_text("new a")
        tb.write_text("new b")
        assert a.read_text() == "old" and not b.exists()  # nothing visible before the block ends
    assert order == ["a.bin", "b.json"]
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert stat.S_IMODE(b.stat().st_mode) & 0o044 == 0o044 & ~_umask()  # readable by others, as umask allows
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.bin", "b.json"]


def test_atomic_paths_failure_renames_nothing(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), _atomic.atomic_paths(a, b) as (ta, tb):
        ta.write_text("new")
        raise RuntimeError("half way")
    assert a.read_text() == "old" and not b.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_atomic_path_is_the_one_file_form(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    with _atomic.atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
