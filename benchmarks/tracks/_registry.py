"""The track interface and its registry.

A track is a validated form (:class:`TrackMeta`) plus a class implementing ``_evaluate``: given a
method already fit on the split's training models, it returns metrics and the curves the
leaderboard plots. The public :meth:`Track.evaluate` checks that the model set has what the track
needs (else an outcome "not applicable" with the reason, never a crash), validates and rounds the
metrics. Pairs, episodes and candidate lists are drawn from the split and seed only, never from
the method, so every method is scored on the same ones.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from benchmarks.methods import SimilarityMethod
from lps.splits import Split
from modelset.errors import ModelSetError
from modelset.reader import ModelSet
from modelset.registry import Registry

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class TrackError(ModelSetError):
    """A track was declared wrongly or produced malformed metrics."""


@dataclass(frozen=True)
class Plot:
    """A leaderboard figure drawn from a track's result files.

    ``kind`` names a figure of :mod:`benchmarks._plots` (which curves it reads); ``title`` and
    ``caption`` may use ``{fold}`` (the fold shown) and ``{method}`` (the method shown, for a
    one-method figure); ``metric``: the metric a figure quotes per method (an ROC legend's AUC);
    ``prefer``: methods shown first by a one-method figure."""

    kind: str
    title: str
    caption: str
    metric: str = ""
    prefer: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackMeta:
    """What a track measures and how the leaderboard shows it.

    ``primary``: the metrics shown in the main leaderboard table, in order.
    ``lower_is_better``: metrics where smaller is better (e.g. regret; the header gets a ↓).
    Presentation only (not part of a result's record or hash): ``labels`` maps a primary metric
    to its column header (default ``track.metric``); ``order`` places the track's columns, sections
    and notes on the leaderboard (then by name); ``plots``: its figures; ``reliability``: the
    metric holding the test–retest reliability of the track's ground truth, noted under the main
    table and flagged in the header when low."""

    name: str
    description: str
    primary: tuple[str, ...]
    reference: str = ""
    lower_is_better: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    order: int = 100
    plots: tuple[Plot, ...] = ()
    reliability: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise TrackError(f"track name {self.name!r}: expected lower_snake_case")
        object.__setattr__(self, "primary", tuple(self.primary))
        object.__setattr__(self, "lower_is_better", tuple(self.lower_is_better))
        object.__setattr__(self, "plots", tuple(self.plots))
        if not self.primary:
            raise TrackError(f"track {self.name!r}: declare at least one primary metric")
        stray = sorted(set(self.labels) - set(self.primary))
        if stray:
            raise TrackError(f"track {self.name!r}: labels for {stray}, which are not primary metrics {list(self.primary)}")
        if not all(isinstance(p, Plot) for p in self.plots):
            raise TrackError(f"track {self.name!r}: plots must be Plot(kind, title, caption) entries")

    def to_dict(self) -> dict[str, Any]:
        """The record a result file keeps and hashes: what the track measures, not how it is shown."""
        return {
            "name": self.name,
            "description": self.description,
            "primary": list(self.primary),
            "reference": self.reference,
            "lower_is_better": list(self.lower_is_better),
            "config": dict(self.config),
        }

    def label(self, metric: str) -> str:
        """Column header of ``metric``: its label, ``↓`` appended where lower is better."""
        text = self.labels.get(metric, f"{self.name}.{metric}")
        return f"{text} ↓" if metric in self.lower_is_better else text


@dataclass
class TrackOutcome:
    """What a track found for one method: ``status`` is ``"ok"`` or ``"not_applicable"``."""

    status: str
    metrics: dict[str, float | None] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class Track:
    """Base class: set ``meta``, implement ``_evaluate`` (and ``_not_applicable`` if the track
    needs metadata that some model sets lack)."""

    meta: ClassVar[TrackMeta]

    def __init__(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(self.meta.config))
        if unknown:
            raise TrackError(f"track {self.meta.name!r}: unknown config keys {unknown}; known {sorted(self.meta.config)}")
        self.config: dict[str, Any] = {**self.meta.config, **config}

    def evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> TrackOutcome:
        """Score the fitted ``method`` on ``ms`` with ``split`` (template method)."""
        reason = self.not_applicable(ms, split)
        if reason:
            log.info("track %s not applicable to %s: %s", self.meta.name, ms.root, reason)
            return TrackOutcome("not_applicable", reason=reason)
        if not method.fitted:
            raise TrackError(f"track {self.meta.name!r}: method {method.meta.name!r} must be fit first")
        metrics, curves = self._evaluate(method, ms, split)
        clean: dict[str, float | None] = {}
        for key, value in metrics.items():
            if not isinstance(value, (int, float, np.floating, np.integer)):
                raise TrackError(f"track {self.meta.name!r}: metric {key!r} is {type(value).__name__}, expected a number")
            clean[key] = None if math.isnan(float(value)) else round(float(value), 6)
        missing = [m for m in self.meta.primary if m not in clean]
        if missing:
            raise TrackError(f"track {self.meta.name!r}: primary metrics {missing} were not reported")
        return TrackOutcome("ok", clean, curves)

    def not_applicable(self, ms: ModelSet, split: Split) -> str:
        """Why this track cannot run on ``ms`` ("" when it can)."""
        return self._not_applicable(ms, split)

    def _not_applicable(self, ms: ModelSet, split: Split) -> str:
        return ""

    def _evaluate(self, method: SimilarityMethod, ms: ModelSet, split: Split) -> tuple[dict[str, float], dict[str, Any]]:
        raise NotImplementedError


_TRACKS: Registry[type[Track]] = Registry("benchmark track")
T = TypeVar("T", bound=type[Track])


def register_track(cls: T) -> T:
    """Class decorator: register a :class:`Track` subclass under ``cls.meta.name``."""
    meta = getattr(cls, "meta", None)
    if not isinstance(meta, TrackMeta):
        raise TrackError(f"{cls.__name__}: a registered track needs a TrackMeta as class attribute 'meta'")
    try:
        return _TRACKS.add_class(meta.name, cls)
    except ValueError as exc:
        raise TrackError(str(exc)) from None


def unregister_track(name: str) -> None:
    """Forget the track ``name`` (tests register throw-away tracks)."""
    _TRACKS.remove(name)


def list_tracks() -> list[str]:
    """Names of every registered track, sorted."""
    return _TRACKS.names()


def get_track(name: str) -> type[Track]:
    """The class registered as ``name``; ``UnknownNameError`` with close names otherwise."""
    return _TRACKS.get(name)


# -- helpers shared by the tracks ------------------------------------------------------------
def tasks_of(ms: ModelSet, ids: list[str] | tuple[str, ...]) -> np.ndarray:
    """Task names ``(n,)`` of model ids."""
    return ms.metadata.loc[list(ids), "task"].astype(str).to_numpy()


def without_self(matrix: np.ndarray) -> np.ndarray:
    """``(n, n)`` → ``(n, n-1)``: each row without its diagonal entry (a query is not its own match)."""
    n = matrix.shape[0]
    return matrix[~np.eye(n, dtype=bool)].reshape(n, n - 1)


def embedding_map(method: SimilarityMethod, ms: ModelSet, ids: list[str]) -> dict[str, Any]:
    """A 2-D PCA map of the method's (unit-norm) embeddings of ``ids`` with their tasks, or {}."""
    if not method.has_embedding() or len(ids) < 3:
        return {}
    from sklearn.decomposition import PCA

    emb = method.embed(ms, ids).numpy().astype(np.float64)
    if emb.shape[1] < 2:
        return {}
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    xy = PCA(n_components=2, random_state=0).fit_transform(emb)
    return {
        "x": [round(float(v), 5) for v in xy[:, 0]],
        "y": [round(float(v), 5) for v in xy[:, 1]],
        "task": tasks_of(ms, ids).tolist(),
        "ids": list(ids),
    }


def test_ids(split: Split) -> list[str]:
    """Every model that is not fit on: held-out models of seen tasks, then held-out-task models."""
    return list(split.heldout_model_ids) + list(split.heldout_task_ids)
