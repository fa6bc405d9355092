"""Command line: ``python -m benchmarks run|leaderboard|list``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from typing import Any

from modelset.errors import ModelSetError


def _parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["lps.epochs=5", "deepsets.steps=20"]`` → ``{"lps": {"epochs": 5}, ...}`` (JSON values)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot or not name or not field:
            raise SystemExit(f"--set {item!r}: expected NAME.KEY=VALUE, e.g. lps.epochs=5")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(name, {})[field] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first (e.g. a file of your own @register_method classes); repeatable")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run methods on tracks, one result file per (method, track, fold)")
    run.add_argument("--zoo", required=True, help="model set folder")
    run.add_argument("--results", required=True, help="folder for result files")
    run.add_argument("--methods", nargs="+", help="method names (default: all registered)")
    run.add_argument("--tracks", nargs="+", help="track names (default: all registered)")
    run.add_argument("--folds", nargs="+", type=int, default=None, help="task folds of the set (default: all)")
    run.add_argument("--cache", default=None, metavar="DIR",
                     help="folder of fitted checkpoints to reuse and fill (make lps trains LPS into it)")
    run.add_argument("--set", nargs="*", default=[], metavar="NAME.KEY=VALUE",
                     help="method or track config overrides, e.g. lps.epochs=10 few_shot.episodes=100")
    run.add_argument("--force", action="store_true", help="re-run results that are up to date")
    board = sub.add_parser("leaderboard", help="render leaderboard.{csv,md,html} from result files")
    board.add_argument("--results", required=True, help="folder of result files")
    board.add_argument("--out", required=True, help="output folder")
    board.add_argument("--methods", nargs="+", help="only these methods (default: every method with results)")
    sub.add_parser("list", help="list registered methods and tracks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        for module in args.imports:  # user methods and tracks register themselves on import
            importlib.import_module(module)
        if args.command == "list":
            from benchmarks.methods import get_method, list_methods
            from benchmarks.tracks import get_track, list_tracks

            for name in list_methods():
                meta = get_method(name).meta
                print(f"method {name:22s} learned={meta.learned!s:5} data={meta.needs_data!s:5} {meta.reference}")
            for name in list_tracks():
                print(f"track  {name:22s} {get_track(name).meta.description}")
            return 0
        if args.command == "run":
            import torch

            from benchmarks.methods import list_methods
            from benchmarks.runner import run as run_all
            from benchmarks.tracks import list_tracks

            torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
            overrides = _parse_sets(args.set)
            tracks = set(list_tracks())
            method_cfg = {k: v for k, v in overrides.items() if k not in tracks}
            track_cfg = {k: v for k, v in overrides.items() if k in tracks}
            unknown = sorted(set(method_cfg) - set(list_methods()))
            if unknown:
                from modelset.errors import unknown_name

                raise unknown_name("method or track in --set", unknown[0], list_methods() + sorted(tracks))
            start = time.perf_counter()
            summary = run_all(args.zoo, args.results, args.methods, args.tracks, args.folds, method_cfg, track_cfg,
                              args.force, cache_dir=args.cache)
            print(
                f"{len(summary.written)} result files written, {len(summary.skipped)} up to date, "
                f"{len(summary.failed)} failed, in {time.perf_counter() - start:.1f} s; results in {args.results}"
            )
            return 1 if summary.failed else 0
        from benchmarks.leaderboard import render

        paths = render(args.results, args.out, methods=args.methods)
        print("leaderboard written: " + ", ".join(str(p) for p in paths.values()))
        return 0
    except (ModelSetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
