"""Task sets: named lists of tasks that relate in known, graded ways, and their relation matrices.

Tasks of a set relate along two axes:

* **label space** — class subsets of one data set whose overlaps range from none (disjoint halves)
  through partial (4 of 5 shared) to nearly all (9 of 10), measured by the Jaccard index;
* **input domain** — the same classes seen through a different registered domain (inverted,
  rotated, blurred, down-scaled, noisy).

``fashion50`` (ModelSet500 v2) gives every task 5 classes, so no parameter shape tells tasks
apart; ``fashion20`` (ModelSet500 v1) mixes 2-, 5-, 9- and 10-class tasks.

A config names a set (``tasks: fashion50``) or lists tasks inline (a list of mappings with the
fields of :class:`modelset.tasks.Task`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from modelset.errors import SchemaError
from modelset.registry import Registry
from modelset.tasks import Task

if TYPE_CHECKING:
    from builders.config import TaskConfig

TaskSetFn = Callable[[], list[Task]]
_TASK_SETS: Registry[TaskSetFn] = Registry("task set")


def register_task_set(name: str) -> Callable[[TaskSetFn], TaskSetFn]:
    """Decorator: register a function returning a list of tasks under ``name``."""

    def wrap(fn: TaskSetFn) -> TaskSetFn:
        _TASK_SETS.add(name, fn)
        return fn

    return wrap


def list_task_sets() -> list[str]:
    """Names of every registered task set, sorted."""
    return _TASK_SETS.names()


def get_task_set(name: str) -> list[Task]:
    """The tasks of the registered set ``name``; unknown names raise ``UnknownNameError``."""
    tasks = _TASK_SETS.get(name)()
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise SchemaError(f"task set {name!r} repeats task ids: {ids}")
    return tasks


def tasks_from_config(spec: str | Sequence[Mapping[str, Any] | TaskConfig]) -> list[Task]:
    """Tasks from a config value: a registered set's name, or a list of tasks (typed entries of
    the config, or mappings with their fields)."""
    from builders.config import TaskConfig, load_config_section

    if isinstance(spec, str):
        return get_task_set(spec)
    tasks = [
        (entry if isinstance(entry, TaskConfig) else load_config_section(TaskConfig, entry, f"tasks[{i}]")).task()
        for i, entry in enumerate(spec)
    ]
    ids = [t.task_id for t in tasks]
    if len(set(ids)) != len(ids):
        raise SchemaError(f"config tasks repeat task ids: {ids}")
    return tasks


# Fashion-MNIST classes: 0 T-shirt, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt,
# 7 Sneaker, 8 Bag, 9 Ankle boot.
_A = (0, 1, 2, 3, 4)  # clothes
_B = (5, 6, 7, 8, 9)  # disjoint from A
_C = (0, 1, 2, 3, 5)  # shares 4 of 5 with A (Jaccard 2/3)
_D = (0, 2, 4, 6, 8)  # even ids
_E = (1, 3, 5, 7, 9)  # odd ids: disjoint from D
_F = (2, 3, 4, 5, 6)  # straddles A and B (Jaccard 3/7 with A)
_ALL = tuple(range(10))
_NO8 = (0, 1, 2, 3, 4, 5, 6, 7, 9)  # nearly all (Jaccard 9/10 with ALL)
_NO0 = (1, 2, 3, 4, 5, 6, 7, 8, 9)

_ROT = ("rotated", {"degrees": 90})
_INV = ("inverted", {})
_BLUR = ("blurred", {"sigma": 1.0})
_DOWN = ("downscaled", {"factor": 2})
_NOISE = ("noisy", {"std": 0.2, "seed": 0})
_ID = ("identity", {})

# fashion50's ten 5-class subsets: five complementary pairs (Jaccard 0 within a pair), built so
# that between subsets every overlap of 5-of-10 classes occurs: 0 shared (Jaccard 0), 1 (1/9),
# 2 (1/4), 3 (3/7) and 4 (2/3); pairs by Jaccard: 5, 4, 16, 16 and 4.
_FIVE_WAY = (
    (0, 1, 2, 3, 4), (5, 6, 7, 8, 9),  # A and its complement
    (0, 1, 2, 3, 5), (4, 6, 7, 8, 9),  # A with one class swapped (2/3 with A), and complement
    (0, 2, 4, 6, 8), (1, 3, 5, 7, 9),  # even / odd ids
    (0, 2, 4, 6, 9), (1, 3, 5, 7, 8),  # even with one swap (2/3 with even), and complement
    (2, 3, 4, 5, 6), (0, 1, 7, 8, 9),  # a band straddling A and B (3/7 with A), and complement
)  # fmt: skip
# Every subset is seen as it is and through four of the five other domains (a cyclic cross, each
# non-identity domain on 8 subsets): 10 × 5 = 50 tasks.
_SHIFTS = (_INV, _ROT, _BLUR, _DOWN, _NOISE)


def _make(rows: list[tuple[tuple[int, ...], tuple[str, dict]]], dataset: str) -> list[Task]:
    return [
        Task(f"t{i:02d}", dataset, classes, domain, dict(kwargs))
        for i, (classes, (domain, kwargs)) in enumerate(rows)
    ]


@register_task_set("fashion20")
def fashion20() -> list[Task]:
    """20 Fashion-MNIST tasks: 9 class subsets (2 to 10 classes) × 5 input domains."""
    rows = [
        (_A, _ID), (_A, _INV), (_A, _ROT), (_A, _BLUR),
        (_B, _ID), (_B, _DOWN),
        (_C, _ID), (_C, _ROT),
        (_D, _ID), (_D, _BLUR),
        (_E, _ID), (_E, _INV),
        (_F, _ID), (_F, _DOWN),
        (_ALL, _ID), (_ALL, _INV),
        (_NO8, _ID), (_NO0, _ROT),
        ((7, 9), _ID), ((0, 6), _BLUR),
    ]  # fmt: skip
    return _make(rows, "fashion_mnist")


@register_task_set("fashion50")
def fashion50() -> list[Task]:
    """50 Fashion-MNIST tasks, all 5-way: 10 class subsets (Jaccard 0 to 2/3 between them) × 5
    input domains (identity plus four of inverted, rotated, blurred, down-scaled, noisy, in turn).

    Ids ``t00``..``t49`` run subset by subset: ``t{5i}`` is subset ``i`` as it is, ``t{5i+1}``..
    ``t{5i+4}`` the same classes in other domains.
    """
    rows = []
    for i, classes in enumerate(_FIVE_WAY):
        shifts = [d for j, d in enumerate(_SHIFTS) if j != i % len(_SHIFTS)]
        rows += [(classes, domain) for domain in (_ID, *shifts)]
    return _make(rows, "fashion_mnist")


@register_task_set("fashion4")
def fashion4() -> list[Task]:
    """4 Fashion-MNIST tasks for tests and the mini config: same, disjoint and domain-shifted."""
    return _make([(_A, _ID), (_A, _INV), (_B, _ID), ((7, 9), _ROT)], "fashion_mnist")


@register_task_set("cifar100_pairs")
def cifar100_pairs() -> list[Task]:
    """The LPS authors' protocol: 50 binary CIFAR-100 tasks, classes 2i vs 2i+1."""
    return [Task(f"p{i:02d}", "cifar100", (2 * i, 2 * i + 1)) for i in range(50)]


def tasks_frame(tasks: Sequence[Task]) -> pd.DataFrame:
    """The task table: one row per task, indexed by task id."""
    df = pd.DataFrame([t.row() for t in tasks]).set_index("task_id")
    df.index.name = "task"
    return df


def label_jaccard(tasks: Sequence[Task]) -> pd.DataFrame:
    """Symmetric task × task Jaccard index of the label sets (0 across data sets)."""
    ids = [t.task_id for t in tasks]
    rows = []
    for a in tasks:
        row = []
        for b in tasks:
            if a.dataset != b.dataset:
                row.append(0.0)
                continue
            sa, sb = set(a.classes), set(b.classes)
            row.append(len(sa & sb) / len(sa | sb))
        rows.append(row)
    return pd.DataFrame(rows, index=ids, columns=ids)


def _domain_key(t: Task) -> str:
    return f"{t.domain}:{json.dumps(t.domain_kwargs, sort_keys=True)}"


def same_domain(tasks: Sequence[Task]) -> pd.DataFrame:
    """Symmetric task × task indicator (1.0/0.0): same data set and same input domain."""
    ids = [t.task_id for t in tasks]
    rows = [
        [float(a.dataset == b.dataset and _domain_key(a) == _domain_key(b)) for b in tasks] for a in tasks
    ]
    return pd.DataFrame(rows, index=ids, columns=ids)


def static_relations(tasks: Sequence[Task]) -> dict[str, pd.DataFrame]:
    """The relations known from the task definitions alone."""
    return {"label_jaccard": label_jaccard(tasks), "same_domain": same_domain(tasks)}
