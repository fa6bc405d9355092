"""Result files: one typed JSON file per (method, track, fold), the only input of the leaderboard.

A file records the method's metadata and config, the track's metadata and config, the fold, the
split's sizes, the metrics, the curves the leaderboard plots, timings, and an ``input_hash`` over
everything that determines the result (method metadata and config, the model set's SHA256SUMS,
track config, fold, schema version). The runner skips a (method, track, fold) whose file exists
with the same hash and a final status ("ok" or "not_applicable").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from modelset import _atomic
from modelset.errors import ModelSetError
from modelset.reader import ModelSet
from modelset.schema import CHECKSUMS_FILE

SCHEMA_VERSION = 2  # 2: results per task fold (``fold``), per-unit values in curves
STATUSES = ("ok", "not_applicable", "failed")
FINAL_STATUSES = ("ok", "not_applicable")


class ResultError(ModelSetError):
    """A result file is missing fields, has the wrong schema version or cannot be parsed."""


@dataclass
class Result:
    """One (method, track, fold) outcome. ``metrics`` values are floats or None (NaN);
    ``curves["per_unit"]`` holds the per-task values the leaderboard's intervals and tests use."""

    method: str
    track: str
    fold: int
    status: str
    input_hash: str
    method_meta: dict[str, Any]
    method_config: dict[str, Any]
    track_meta: dict[str, Any]
    track_config: dict[str, Any]
    zoo: dict[str, Any]
    metrics: dict[str, float | None] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    split: dict[str, int] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ResultError(f"result {self.method}/{self.track}/fold {self.fold}: status {self.status!r} not in {STATUSES}")

    @property
    def learned(self) -> bool:
        return bool(self.method_meta.get("learned", False))


def result_path(results_dir: str | os.PathLike, method: str, track: str, fold: int) -> Path:
    """``{results_dir}/{method}__{track}__fold{fold}.json``."""
    return Path(results_dir) / f"{method}__{track}__fold{fold}.json"


def _finite(value: Any) -> Any:
    """JSON has no NaN: NaN and infinities become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_result(results_dir: str | os.PathLike, result: Result) -> Path:
    """Write ``result`` atomically (temporary name, then rename); returns its path."""
    path = result_path(results_dir, result.method, result.track, result.fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(asdict(result)), indent=1, sort_keys=True, allow_nan=False)
    _atomic.write_text_atomic(path, text + "\n")
    return path


def read_result(path: str | os.PathLike) -> Result:
    """Parse and validate one result file; ``ResultError`` names the file and the problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ResultError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ResultError(f"{path}: schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    names = {f.name for f in fields(Result)}
    required = {f.name for f in fields(Result) if f.default is MISSING and f.default_factory is MISSING}
    missing = sorted(n for n in required if n not in data)
    if missing:
        raise ResultError(f"{path}: missing fields {missing}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ResultError(f"{path}: unknown fields {unknown}")
    try:
        return Result(**data)
    except (TypeError, ResultError) as exc:
        raise ResultError(f"{path}: {exc}") from exc


def load_results(results_dir: str | os.PathLike) -> list[Result]:
    """Every result file of ``results_dir``, sorted by (track, method, fold)."""
    folder = Path(results_dir)
    if not folder.is_dir():
        raise ResultError(f"{folder}: no such results folder (run `python -m benchmarks run` first)")
    results = [read_result(p) for p in sorted(folder.glob("*__*__fold*.json"))]
    return sorted(results, key=lambda r: (r.track, r.method, r.fold))


def zoo_digest(ms: ModelSet) -> str:
    """SHA256 of the model set's SHA256SUMS file: changes whenever any file of the set changes."""
    path = ms.root / CHECKSUMS_FILE
    if not path.exists():
        raise ResultError(f"{path}: missing; the model set is incomplete (finish or verify it before benchmarking)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folds_digest(ms: ModelSet) -> str:
    """SHA256 of the set's task folds: a result is stale when the protocol changes."""
    doc = [split.to_dict() for split in ms.folds]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def input_hash(
    method_meta: dict[str, Any], method_config: dict[str, Any], zoo: str, track_meta: dict[str, Any],
    track_config: dict[str, Any], fold: int, folds: str = "",
) -> str:
    """SHA256 over everything a result depends on, as canonical JSON."""
    payload = {
        "schema_version": SCHEMA_VERSION,
        "method_meta": method_meta,
        "method_config": method_config,
        "zoo": zoo,
        "track_meta": track_meta,
        "track_config": track_config,
        "fold": int(fold),
        "folds": folds,
    }
    text = json.dumps(_finite(payload), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
