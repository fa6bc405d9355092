"""The benchmark runner: every method on every track for every seed, one result file each.

For each seed the split (``lps.splits.split``) is drawn once; each method is fit once on the
split's training models and then scored on every track whose result is missing or stale (its
input hash changed). A method that fails is recorded as "failed" with the error and is run again
next time; a track a set cannot support is recorded as "not_applicable" with the reason.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import modelset
from benchmarks.methods import SimilarityMethod, get_method, list_methods
from benchmarks.results import (
    FINAL_STATUSES,
    Result,
    ResultError,
    input_hash,
    read_result,
    result_path,
    write_result,
    zoo_digest,
)
from benchmarks.tracks import Track, get_track, list_tracks
from lps.splits import split as make_split
from modelset.reader import ModelSet

log = logging.getLogger(__name__)

MIN_LEARNED_SEEDS = 3


@dataclass
class RunSummary:
    """What a run did: paths written, and (method, track, seed) triples skipped as up to date."""

    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str, int]] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    seconds: float = 0.0


def _is_current(path: Path, expected_hash: str) -> bool:
    if not path.exists():
        return False
    try:
        old = read_result(path)
    except ResultError as exc:
        log.warning("re-running: %s", exc)
        return False
    return old.input_hash == expected_hash and old.status in FINAL_STATUSES


def run(
    zoo: str | os.PathLike | ModelSet,
    results_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    tracks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    method_config: dict[str, dict[str, Any]] | None = None,
    track_config: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    progress: bool = True,
) -> RunSummary:
    """Run ``methods`` × ``tracks`` × ``seeds`` on the model set ``zoo``; write into ``results_dir``.

    ``methods`` / ``tracks`` default to every registered one; unknown names raise
    ``UnknownNameError`` before anything runs. ``method_config`` maps a method name to config
    overrides (part of the input hash). ``force`` re-runs even up-to-date results.
    """
    start = time.perf_counter()
    ms = zoo if isinstance(zoo, ModelSet) else modelset.open(zoo)
    method_names = list(methods) if methods else list_methods()
    track_names = list(tracks) if tracks else list_tracks()
    method_config = method_config or {}
    track_config = track_config or {}
    instances: dict[str, SimilarityMethod] = {}
    for name in method_names:  # resolve every name first, so a typo fails before hours of work
        instances[name] = get_method(name)(**method_config.get(name, {}))
    track_objs: dict[str, Track] = {name: get_track(name)(**track_config.get(name, {})) for name in track_names}
    unknown_cfg = sorted(set(method_config) - set(method_names))
    if unknown_cfg:
        log.warning("config given for methods not being run: %s", unknown_cfg)
    learned = [n for n, m in instances.items() if m.meta.learned]
    if learned and len(seeds) < MIN_LEARNED_SEEDS:
        log.warning("learned methods %s run on %d seed(s); the leaderboard asks for at least %d", learned, len(seeds), MIN_LEARNED_SEEDS)

    digest = zoo_digest(ms)
    zoo_info = {"name": ms.name, "path": str(ms.root), "sha256sums_sha256": digest, "models": len(ms)}
    summary = RunSummary()
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, name) for seed in seeds for name in method_names]
    bar = tqdm(total=len(jobs) * len(track_names), desc="benchmark", disable=not progress)
    for seed, name in jobs:
        method = instances[name]
        meta = method.meta.to_dict()
        todo = []
        for tname, track in track_objs.items():
            h = input_hash(meta, method.config, digest, track.meta.to_dict(), track.config, seed)
            path = result_path(results, name, tname, seed)
            if not force and _is_current(path, h):
                summary.skipped.append((name, tname, seed))
                bar.update(1)
            else:
                todo.append((tname, track, h))
        if not todo:
            continue
        bar.set_postfix_str(f"{name} seed {seed}")
        split = make_split(ms, seed)
        base = {
            "method": name, "seed": int(seed), "method_meta": meta, "method_config": dict(method.config),
            "zoo": zoo_info, "split": {k: len(v) for k, v in split.to_dict().items() if isinstance(v, list)},
        }
        fit_seconds, fit_error = 0.0, ""
        torch.manual_seed(seed)
        try:
            t0 = time.perf_counter()
            method.fit(ms, list(split.train_ids), seed)
            fit_seconds = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001  (recorded as "failed" and retried next run)
            log.exception("method %s failed to fit (seed %d)", name, seed)
            fit_error = f"fit failed: {type(exc).__name__}: {exc}"
        for tname, track, h in todo:
            t0 = time.perf_counter()
            fields_: dict[str, Any] = {"status": "failed", "reason": fit_error}
            if not fit_error:
                try:
                    outcome = track.evaluate(method, ms, split)
                    fields_ = {"status": outcome.status, "reason": outcome.reason,
                               "metrics": outcome.metrics, "curves": outcome.curves}
                except Exception as exc:  # noqa: BLE001
                    log.exception("method %s failed on track %s (seed %d)", name, tname, seed)
                    fields_ = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            result = Result(
                track=tname, input_hash=h, track_meta=track.meta.to_dict(), track_config=dict(track.config),
                timing={"fit_seconds": round(fit_seconds, 3), "eval_seconds": round(time.perf_counter() - t0, 3)},
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **base, **fields_,
            )
            if result.status == "failed":
                summary.failed.append((name, tname, seed))
            summary.written.append(write_result(results, result))
            bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - start
    log.info(
        "benchmark on %s (%s): %d written, %d up to date, %d failed in %.1f s",
        ms.name, platform.node() or "?", len(summary.written), len(summary.skipped), len(summary.failed), summary.seconds,
    )
    return summary
