"""The shared prediction protocol of the tracks that predict a property from weights (accuracy,
hyper-parameters, training progress).

Every method is scored through the same learner, chosen once: its embeddings of the training
items (a model at one checkpoint) go through a fixed preprocessing and a scikit-learn gradient
boosting model with fixed hyper-parameters (histogram gradient boosting, the learner family of
Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights"), seeded by the fold.
A method that gives similarities only is scored by kernel ridge regression on its similarity
matrix (``KernelRidge(kernel="precomputed")``; classes by one-vs-rest regression). Nothing here
depends on the method beyond its embeddings or similarities, so differences between methods are
differences of representation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks import metrics
from benchmarks.methods import SimilarityMethod
from lps.splits import Split
from modelset.reader import ModelSet

#: (model id, checkpoint name)
Item = tuple[str, str]

#: The learner's fixed hyper-parameters, the tracks' default config (no tuning per method or set:
#: one protocol for all). ``max_iter`` ... ``min_samples_leaf`` are the boosting model's;
#: embeddings wider than ``max_components`` are standardised and reduced by PCA fit on the training
#: items (boosting time grows with the width, and raw weights run to thousands of columns; the 56
#: weight statistics of a 4-layer network pass unchanged); ``kernel_alpha`` is the ridge of the
#: kernel regression of similarity-only methods.
PROTOCOL: dict[str, Any] = {
    "max_iter": 100, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 2,
    "max_components": 64, "kernel_alpha": 1.0,
}  # fmt: skip
_BOOSTING_KEYS = ("max_iter", "learning_rate", "max_leaf_nodes", "min_samples_leaf")
#: Training items a PCA is fit on (a seeded sample when there are more).
MAX_PCA_ROWS = 1000


def scored_ids(split: Split) -> tuple[str, ...]:
    """The models a prediction track scores on ``split``: every model of the held-out tasks of a
    task fold; the held-out models of a model fold (``split.unit == "model"``, no held-out task)."""
    return split.heldout_task_ids if split.unit == "task" else split.heldout_model_ids


def units(ms: ModelSet, split: Split, ids: Sequence[str], **values: Sequence[float]) -> dict[str, Any]:
    """The ``curves["per_unit"]`` record of ``values`` (one per model of ``ids``): per held-out
    task on a task fold; on a model fold per task *and fold* (ids ``"<task>@fold<i>"``, unit
    ``"model fold"``), so that a set with one task still gives the leaderboard one unit per fold."""
    tasks = ms.metadata.loc[list(ids), "task"].astype(str).to_numpy()
    if split.unit == "task":
        return metrics.per_unit(tasks, **values)
    record = metrics.per_unit([f"{t}@fold{split.fold}" for t in tasks], **values)
    return {**record, "unit": "model fold"}


def checkpoint_reason(method: SimilarityMethod, items: Sequence[Item], what: str) -> str:
    """Why ``method`` cannot be scored on ``items`` ("" when it can): it reads final checkpoints
    only and ``items`` hold others."""
    others = sorted({c for _, c in items} - {"final"})
    if others and not method.supports_checkpoints():
        shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        return f"method {method.meta.name!r} reads final checkpoints only; {what} needs checkpoints {shown}"
    return ""


def _by_checkpoint(items: Sequence[Item]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for pos, (_, checkpoint) in enumerate(items):
        groups.setdefault(checkpoint, []).append(pos)
    return groups


def embeddings(method: SimilarityMethod, ms: ModelSet, items: Sequence[Item]) -> np.ndarray:
    """The method's embeddings ``(len(items), d)`` float32, one ``embed`` call per checkpoint name."""
    out: np.ndarray | None = None
    for checkpoint, positions in _by_checkpoint(items).items():
        emb = method.embed(ms, [items[p][0] for p in positions], checkpoint).numpy()
        if out is None:
            out = np.zeros((len(items), emb.shape[1]), dtype=np.float32)
        out[positions] = emb
    if out is None:
        raise ValueError("embeddings: no items given")
    return out


def similarities(method: SimilarityMethod, ms: ModelSet, a: Sequence[Item], b: Sequence[Item]) -> np.ndarray:
    """The method's similarities ``(len(a), len(b))`` float64, one call per pair of checkpoint names."""
    out = np.zeros((len(a), len(b)))
    groups_b = _by_checkpoint(b)
    for ca, pa in _by_checkpoint(a).items():
        for cb, pb in groups_b.items():
            sim = method.similarity(ms, [a[p][0] for p in pa], [b[p][0] for p in pb], ca, cb)
            out[np.ix_(pa, pb)] = sim.numpy().astype(np.float64)
    return out


class Learner:
    """The protocol for one fitted method on one fold: ``regress`` and ``classify`` fit on
    training items and predict test items. ``config`` holds the keys of :data:`PROTOCOL` (a
    track's config; missing keys take the defaults)."""

    def __init__(self, method: SimilarityMethod, ms: ModelSet, seed: int, config: dict[str, Any] | None = None) -> None:
        self.method, self.ms, self.seed = method, ms, int(seed)
        self.config = {**PROTOCOL, **{k: v for k, v in (config or {}).items() if k in PROTOCOL}}
        self.kind = "boosting" if method.has_embedding() else "kernel ridge"
        self.boosting = {k: self.config[k] for k in _BOOSTING_KEYS} | {"early_stopping": False, "random_state": self.seed}
        self._memo: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _features(self, train: Sequence[Item], test: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        """Learner inputs of the training and test items, computed once per pair of item lists
        (several targets of one fold share them)."""
        key = (tuple(train), tuple(test))
        if key not in self._memo:
            self._memo = {key: self._compute_features(train, test)}  # keep one: they can be large
        return self._memo[key]

    def _compute_features(self, train: Sequence[Item], test: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "kernel ridge":
            return similarities(self.method, self.ms, train, train), similarities(self.method, self.ms, test, train)
        x = embeddings(self.method, self.ms, [*train, *test])
        x_train, x_test = x[: len(train)], x[len(train) :]
        width = int(self.config["max_components"])
        if x.shape[1] > width:  # PCA of the training items (one thread, as the fits below)
            from sklearn.decomposition import PCA
            from sklearn.preprocessing import StandardScaler

            # Fit on at most MAX_PCA_ROWS training items, so the cost does not grow with the
            # number of checkpoints a set keeps.
            rows = np.random.default_rng(self.seed).permutation(len(train))[:MAX_PCA_ROWS]
            with threadpool_limits(limits=1):
                scaler = StandardScaler().fit(x_train[rows])
                pca = PCA(n_components=min(width, len(rows)), random_state=self.seed).fit(scaler.transform(x_train[rows]))
                x_train, x_test = pca.transform(scaler.transform(x_train)), pca.transform(scaler.transform(x_test))
        return x_train, x_test

    def regress(self, train: Sequence[Item], y: np.ndarray, test: Sequence[Item]) -> np.ndarray:
        """Predictions ``(len(test),)`` of a target ``y`` ``(len(train),)`` of the training items."""
        y = np.asarray(y, dtype=np.float64)
        x_train, x_test = self._features(train, test)
        # One thread: the fits are small, and their result then does not depend on the thread
        # count (two OpenMP threads made a 2,500 x 64 fit 10x slower on a busy 2-core machine).
        with threadpool_limits(limits=1):
            return self._regress(x_train, y, x_test)

    def _regress(self, x_train: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        if self.kind == "kernel ridge":
            from sklearn.kernel_ridge import KernelRidge

            centre = float(y.mean())  # kernel ridge has no intercept
            model = KernelRidge(alpha=float(self.config["kernel_alpha"]), kernel="precomputed").fit(x_train, y - centre)
            return model.predict(x_test) + centre
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(**self.boosting).fit(x_train, y).predict(x_test)

    def classify(self, train: Sequence[Item], labels: Sequence[str], test: Sequence[Item]) -> np.ndarray:
        """Predicted labels ``(len(test),)`` from the training items' ``labels`` (two classes or more)."""
        labels = np.asarray([str(v) for v in labels])
        x_train, x_test = self._features(train, test)
        with threadpool_limits(limits=1):
            return self._classify(x_train, labels, x_test)

    def _classify(self, x_train: np.ndarray, labels: np.ndarray, x_test: np.ndarray) -> np.ndarray:
        classes = np.unique(labels)
        if self.kind == "kernel ridge":
            from sklearn.kernel_ridge import KernelRidge

            onehot = (labels[:, None] == classes[None, :]).astype(np.float64)
            centre = onehot.mean(axis=0)
            scores = KernelRidge(alpha=float(self.config["kernel_alpha"]), kernel="precomputed").fit(x_train, onehot - centre).predict(x_test)
            return classes[np.argmax(scores + centre, axis=1)]
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(**self.boosting).fit(x_train, labels)
        return np.asarray(model.predict(x_test)).astype(str)
