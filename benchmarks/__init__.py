"""Benchmarks: similarity methods behind one interface, tracks that score them on a model set,
a runner that writes one result file per (method, track, seed), and a leaderboard rendered from
those files alone.

>>> from benchmarks.methods import get_method, list_methods
>>> from benchmarks.tracks import get_track, list_tracks
"""

from __future__ import annotations
