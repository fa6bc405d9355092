"""Tasks, domains and task sets with their relation matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from builders.tasks import get_task_set, label_jaccard, list_task_sets, same_domain, tasks_frame
from modelset import datasets
from modelset.domains import apply_domain, list_domains
from modelset.errors import SchemaError, UnknownNameError
from modelset.tasks import Task, remap_labels, task_data
from tests.test_datasets import write_fake_fashion


@pytest.mark.parametrize("name", list_domains())
def test_domain_shape_range_determinism(name: str) -> None:
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    a, b = apply_domain(name, x), apply_domain(name, x)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_domain_values() -> None:
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(apply_domain("inverted", x), 1 - x)
    r = apply_domain("rotated", x, {"degrees": 90})
    assert torch.equal(apply_domain("rotated", r, {"degrees": 270}), x)
    const = torch.full((1, 1, 28, 28), 0.3)
    assert torch.allclose(apply_domain("blurred", const, {"sigma": 1.5}), const, atol=1e-6)
    d = apply_domain("downscaled", x, {"factor": 2})
    assert torch.equal(d[..., 0::2, 0::2], d[..., 1::2, 1::2])  # 2×2 blocks are constant
    assert torch.allclose(d.mean(), x.mean(), atol=1e-5)


def test_unknown_domain_suggests() -> None:
    with pytest.raises(UnknownNameError, match="rotated"):
        apply_domain("rotatd", torch.rand(1, 1, 4, 4))
    with pytest.raises(UnknownNameError):
        Task("t", "fashion_mnist", (0, 1), "nope")


def test_task_validation_and_rows() -> None:
    t = Task("t9", "fashion_mnist", (7, 2, 5), "rotated", {"degrees": 90})
    assert t.classes == (2, 5, 7) and t.num_classes == 3
    assert Task.from_row("t9", t.row()) == t
    with pytest.raises(SchemaError, match="t1"):
        Task("t1", "fashion_mnist", (3, 3))


def test_remap_labels() -> None:
    t = Task("t", "fashion_mnist", (9, 2, 5))
    assert remap_labels(t, torch.tensor([2, 5, 9, 9, 2])).tolist() == [0, 1, 2, 2, 0]
    with pytest.raises(SchemaError):
        remap_labels(t, torch.tensor([3]))


def test_task_data_on_fake_files(tmp_path: Path) -> None:
    datasets.clear_cache()
    arrays = write_fake_fashion(tmp_path, n_train=200)
    img, lab = arrays["train"]
    t = Task("t", "fashion_mnist", (1, 4, 6), "inverted")
    x, y = task_data(t, "train", tmp_path, allow_download=False, normalize=False)
    keep = np.isin(lab, [1, 4, 6])
    assert x.shape == (int(keep.sum()), 1, 28, 28)
    assert torch.allclose(x[:, 0], 1 - torch.from_numpy(img[keep]).float() / 255)
    assert y.tolist() == [{1: 0, 4: 1, 6: 2}[int(v)] for v in lab[keep]]
    xn, _ = task_data(t, "train", tmp_path, limit=10, allow_download=False)
    assert xn.shape[0] == 10 and torch.allclose(xn, (x[:10] - 0.2860) / 0.3530)
    datasets.clear_cache()


@pytest.mark.parametrize("name", list_task_sets())
def test_task_sets(name: str) -> None:
    tasks = get_task_set(name)
    df = tasks_frame(tasks)
    assert list(df.index) == [t.task_id for t in tasks]
    j, s = label_jaccard(tasks), same_domain(tasks)
    for m in (j, s):
        assert np.allclose(m.values, m.values.T) and np.allclose(np.diag(m.values), 1.0)


def test_fashion20_relations_are_graded() -> None:
    tasks = get_task_set("fashion20")
    assert len(tasks) >= 20
    j = label_jaccard(tasks).values
    off = j[~np.eye(len(tasks), dtype=bool)]
    assert off.min() == 0.0  # disjoint label sets
    assert 0.85 <= max(v for v in off if v < 1.0) < 1.0  # nearly all shared
    assert (off == 1.0).any()  # same classes in another domain
    assert len({round(v, 3) for v in off}) >= 6  # graded, not just 0/1
    s = same_domain(tasks).values
    assert set(np.unique(s)) == {0.0, 1.0}
    assert len({t.domain for t in tasks}) == 5


def test_unknown_task_set() -> None:
    with pytest.raises(UnknownNameError, match="fashion20"):
        get_task_set("fashion2O")


def test_fashion50_is_shape_blind_graded_and_crossed() -> None:
    from fractions import Fraction

    tasks = get_task_set("fashion50")
    assert len(tasks) == 50 and len({t.task_id for t in tasks}) == 50
    assert {t.num_classes for t in tasks} == {5}  # no parameter shape tells tasks apart
    j = label_jaccard(tasks).values
    off = j[~np.eye(len(tasks), dtype=bool)]
    graded = {Fraction(0), Fraction(1, 9), Fraction(1, 4), Fraction(3, 7), Fraction(2, 3), Fraction(1)}
    assert {Fraction(float(v)).limit_denominator(20) for v in off} == graded
    assert {t.domain for t in tasks} == set(list_domains())  # every registered domain is used
    subsets: dict[tuple[int, ...], set[str]] = {}
    for t in tasks:
        subsets.setdefault(t.classes, set()).add(t.domain)
    assert len(subsets) == 10
    for domains in subsets.values():  # crossed: each subset as it is and in four shifted domains
        assert len(domains) == 5 and "identity" in domains
    for domain in list_domains():  # and each domain holds many label sets
        assert sum(domain in d for d in subsets.values()) >= 8
    s = same_domain(tasks).values
    assert s.sum() < 0.25 * s.size  # most pairs differ in domain


def test_fashion20_stays_the_mixed_class_set() -> None:
    assert {t.num_classes for t in get_task_set("fashion20")} == {2, 5, 9, 10}
