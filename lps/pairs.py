"""Pair sampling over training-task models: positives against hard and easy negatives.

Each anchor gets one positive (another model of its task), one *hard* negative and one *easy*
negative (a model of a uniformly drawn other task). A hard negative is, when current embeddings
are given, the most similar other-task model among a few random candidates (online mining);
otherwise a model of the other task most related to the anchor's by the ``hardness`` relation
(e.g. label overlap), or a random one. Targets are 1 for positives and 0 for negatives, or, with a
``graded`` relation, the relation value of the two tasks (clipped to [0, 1]), so that a negative
sharing most classes with the anchor's task is pushed away less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from modelset.errors import ModelSetError


@dataclass(frozen=True)
class Pairs:
    """``first``, ``second``: model positions ``(P,)``; ``target`` in [0, 1] ``(P,)``; ``kind``
    0 positive, 1 hard negative, 2 easy negative."""

    first: torch.Tensor
    second: torch.Tensor
    target: torch.Tensor
    kind: torch.Tensor


class PairSampler:
    """Draws balanced pairs among ``N`` models given their task labels ``(N,)``."""

    def __init__(
        self,
        tasks: Sequence[str],
        hardness: pd.DataFrame | None = None,
        graded: pd.DataFrame | None = None,
        seed: int = 0,
        candidates: int = 16,
    ) -> None:
        self.tasks = np.asarray([str(t) for t in tasks])
        self.names, self.labels = np.unique(self.tasks, return_inverse=True)
        if len(self.names) < 2:
            raise ModelSetError(f"pair sampling needs models of at least 2 tasks, found {list(self.names)}")
        self.members = [np.flatnonzero(self.labels == t) for t in range(len(self.names))]
        self.rng = np.random.default_rng(seed)
        self.candidates = candidates
        self.hardness = self._matrix(hardness, "hardness")
        self.graded = self._matrix(graded, "graded")

    def _matrix(self, frame: pd.DataFrame | None, what: str) -> np.ndarray | None:
        if frame is None:
            return None
        missing = [t for t in self.names if t not in frame.index or t not in frame.columns]
        if missing:
            raise ModelSetError(f"{what} relation lacks tasks {missing[:5]} of the training models")
        return frame.loc[list(self.names), list(self.names)].to_numpy(dtype=float)

    def sample(
        self, anchors: np.ndarray | None = None, n: int = 64, embeddings: torch.Tensor | None = None
    ) -> Pairs:
        """Three pairs per anchor (positive, hard, easy); ``anchors`` default to ``n`` random models."""
        if anchors is None:
            anchors = self.rng.integers(0, len(self.tasks), size=n)
        first, second, kind = [], [], []
        for a in anchors:
            t = self.labels[a]
            same = self.members[t]
            others = same[same != a]
            if len(others):
                first.append(a), second.append(int(self.rng.choice(others))), kind.append(0)
            first.append(a), second.append(self._hard(a, t, embeddings)), kind.append(1)
            other_task = self.rng.choice([u for u in range(len(self.names)) if u != t])
            first.append(a), second.append(int(self.rng.choice(self.members[other_task]))), kind.append(2)
        first_t, second_t = torch.tensor(first), torch.tensor(second)
        kind_t = torch.tensor(kind)
        la, lb = self.labels[first], self.labels[second]
        if self.graded is not None:
            target = np.clip(self.graded[la, lb], 0.0, 1.0)
            target[la == lb] = 1.0
        else:
            target = (la == lb).astype(float)
        return Pairs(first_t, second_t, torch.tensor(target, dtype=torch.float32), kind_t)

    def _hard(self, anchor: int, task: int, embeddings: torch.Tensor | None) -> int:
        negatives = np.flatnonzero(self.labels != task)
        if embeddings is not None:
            pool = self.rng.choice(negatives, size=min(self.candidates, len(negatives)), replace=False)
            scores = embeddings[pool] @ embeddings[anchor]
            return int(pool[int(torch.argmax(scores))])
        if self.hardness is not None:
            related = self.hardness[task].copy()
            related[task] = -np.inf
            best = np.flatnonzero(related == related.max())
            return int(self.rng.choice(self.members[int(self.rng.choice(best))]))
        return int(self.rng.choice(negatives))
