"""The benchmark runner: every method on every track for every task fold, one result file each.

The folds are the model set's own (``splits/folds.json``): every task is held out in exactly one
fold. Each method is fit once per fold on the fold's training models (seeded by the fold number)
and then scored on every track whose result is missing or stale (its input hash changed). A method that fails is recorded as "failed" with the error and is run again
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
from benchmarks.methods import MethodNotApplicable, SimilarityMethod, get_method, list_methods
from benchmarks.results import (
    FINAL_STATUSES,
    Result,
    ResultError,
    folds_digest,
    input_hash,
    read_result,
    result_path,
    write_result,
    zoo_digest,
)
from benchmarks.tracks import Track, get_track, list_tracks
from lps.splits import load_folds
from modelset.reader import ModelSet

log = logging.getLogger(__name__)



@dataclass
class RunSummary:
    """What a run did: paths written, and (method, track, fold) triples skipped as up to date."""

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
    folds: Sequence[int] | None = None,
    method_config: dict[str, dict[str, Any]] | None = None,
    track_config: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> RunSummary:
    """Run ``methods`` × ``tracks`` × ``folds`` on the model set ``zoo``; write into ``results_dir``.

    ``methods`` / ``tracks`` default to every registered one and ``folds`` to every fold of the
    set; unknown names raise ``UnknownNameError`` before anything runs. ``method_config`` maps a
    method name to config overrides (part of the input hash). ``force`` re-runs even up-to-date
    results. ``cache_dir`` is where learned methods keep fitted checkpoints (``make lps`` fills it
    with the LPS of every fold), so a fit with the same inputs is loaded instead of repeated.
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
    for method in instances.values():
        method.cache_dir = Path(cache_dir) if cache_dir is not None else None
    unknown_cfg = sorted(set(method_config) - set(method_names))
    if unknown_cfg:
        log.warning("config given for methods not being run: %s", unknown_cfg)
    splits = load_folds(ms)
    if not splits:
        raise ResultError(f"{ms.root}: the set has no task folds (it needs at least 4 tasks with 2 model families each)")
    chosen = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    bad = [f for f in chosen if not 0 <= f < len(splits)]
    if bad:
        raise ResultError(f"{ms.root}: folds {bad} do not exist; the set has folds 0 to {len(splits) - 1}")

    digest = zoo_digest(ms)
    protocol = folds_digest(ms)
    zoo_info = {"name": ms.name, "path": str(ms.root), "sha256sums_sha256": digest, "models": len(ms)}
    summary = RunSummary()
    results = Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    jobs = [(fold, name) for fold in chosen for name in method_names]
    bar = tqdm(total=len(jobs) * len(track_names), desc="benchmark", disable=not progress)
    for fold, name in jobs:
        method = instances[name]
        meta = method.meta.to_dict()
        todo = []
        for tname, track in track_objs.items():
            h = input_hash(meta, method.config, digest, track.meta.to_dict(), track.config, fold, protocol)
            path = result_path(results, name, tname, fold)
            if not force and _is_current(path, h):
                summary.skipped.append((name, tname, fold))
                bar.update(1)
            else:
                todo.append((tname, track, h))
        if not todo:
            continue
        bar.set_postfix_str(f"{name} fold {fold}")
        split = splits[fold]
        base = {
            "method": name, "fold": int(fold), "method_meta": meta, "method_config": dict(method.config),
            "zoo": zoo_info, "split": split.sizes(),
        }
        fit_seconds, fit_error, fit_na = 0.0, "", ""
        torch.manual_seed(fold)
        try:
            t0 = time.perf_counter()
            method.fit(ms, list(split.train_ids), fold)
            fit_seconds = time.perf_counter() - t0
        except MethodNotApplicable as exc:  # the method cannot read this set's models
            fit_error = fit_na = str(exc)
        except Exception as exc:  # noqa: BLE001  (recorded as "failed" and retried next run)
            log.exception("method %s failed to fit (fold %d)", name, fold)
            fit_error = f"fit failed: {type(exc).__name__}: {exc}"
        for tname, track, h in todo:
            t0 = time.perf_counter()
            fields_: dict[str, Any] = {"status": "not_applicable" if fit_na else "failed", "reason": fit_error}
            if not fit_error:
                try:
                    outcome = track.evaluate(method, ms, split)
                    fields_ = {"status": outcome.status, "reason": outcome.reason,
                               "metrics": outcome.metrics, "curves": outcome.curves}
                except MethodNotApplicable as exc:
                    fields_ = {"status": "not_applicable", "reason": str(exc)}
                except Exception as exc:  # noqa: BLE001
                    log.exception("method %s failed on track %s (fold %d)", name, tname, fold)
                    fields_ = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            result = Result(
                track=tname, input_hash=h, track_meta=track.meta.to_dict(), track_config=dict(track.config),
                timing={"fit_seconds": round(fit_seconds, 3), "eval_seconds": round(time.perf_counter() - t0, 3)},
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **base, **fields_,
            )
            if result.status == "failed":
                summary.failed.append((name, tname, fold))
            summary.written.append(write_result(results, result))
            bar.update(1)
    bar.close()
    summary.seconds = time.perf_counter() - start
    log.info(
        "benchmark on %s (%s): %d written, %d up to date, %d failed in %.1f s",
        ms.name, platform.node() or "?", len(summary.written), len(summary.skipped), len(summary.failed), summary.seconds,
    )
    return summary
