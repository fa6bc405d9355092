"""Benchmark tracks, registered by name: ``get_track(name)``, ``list_tracks()``.

The imports below are the full list of built-in tracks.
"""

from __future__ import annotations

from benchmarks.tracks import (  # noqa: F401  (imported to register the built-in tracks)
    accuracy_prediction,
    few_shot,
    hyperparameter_prediction,
    lineage,
    retrieval,
    task_classification,
    task_relations,
    transfer,
    variant_robustness,
)
from benchmarks.tracks._registry import (
    Plot,
    Track,
    TrackError,
    TrackMeta,
    TrackOutcome,
    get_track,
    list_tracks,
    register_track,
    unregister_track,
)

__all__ = ["Plot", "Track", "TrackError", "TrackMeta", "TrackOutcome", "get_track", "list_tracks", "register_track", "unregister_track"]
