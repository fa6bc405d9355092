"""``python -m benchmarks`` (console script ``modelset-bench``): ``run`` methods on tracks,
render the ``leaderboard`` from result files, ``list`` what is registered."""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Sequence
from typing import Any

from modelset._cli import CommandLine, add_runtime, add_zoo, prog_name
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


def _list(args: argparse.Namespace) -> int:
    from benchmarks.methods import get_method, list_methods
    from benchmarks.tracks import get_track, list_tracks

    for name in list_methods():
        meta = get_method(name).meta
        print(f"method {name:22s} learned={meta.learned!s:5} data={meta.needs_data!s:5} {meta.reference}")
    for name in list_tracks():
        print(f"track  {name:22s} {get_track(name).meta.description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from benchmarks.methods import list_methods
    from benchmarks.runner import run as run_all
    from benchmarks.tracks import list_tracks

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


def _leaderboard(args: argparse.Namespace) -> int:
    from benchmarks.leaderboard import render

    paths = render(args.results, args.out, methods=args.methods)
    print("leaderboard written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _import_user_modules(args: argparse.Namespace) -> None:
    for module in args.imports:  # user methods and tracks register themselves on import
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise ModelSetError(f"--import {module}: {exc}; give an importable module name (on PYTHONPATH)") from exc


def command_line() -> CommandLine:
    """This command line: its parser and commands (``main`` runs it)."""
    cli = CommandLine(prog_name("benchmarks", "modelset-bench"), __doc__, prepare=_import_user_modules)
    cli.parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="MODULE",
        help="import MODULE first (e.g. a file of your own @register_method classes); repeatable")
    run = cli.commands.add("run", "run methods on tracks, one result file per (method, track, fold)", _run)
    add_zoo(run)
    run.add_argument("--results", required=True, metavar="DIR", help="folder for result files")
    run.add_argument("--methods", nargs="+", metavar="NAME", help="method names (default: all registered)")
    run.add_argument("--tracks", nargs="+", metavar="NAME", help="track names (default: all registered)")
    run.add_argument("--folds", nargs="+", type=int, default=None, help="task folds of the set (default: all)")
    run.add_argument("--cache", default=None, metavar="DIR",
                     help="folder of fitted checkpoints to reuse and fill (make lps trains LPS into it)")
    run.add_argument("--set", nargs="*", default=[], metavar="NAME.KEY=VALUE",
                     help="method or track config overrides, e.g. lps.epochs=10 few_shot.episodes=100")
    run.add_argument("--force", action="store_true", help="re-run results that are up to date")
    add_runtime(run)
    board = cli.commands.add("leaderboard", "render leaderboard.{csv,md,html} from result files", _leaderboard)
    board.add_argument("--results", required=True, metavar="DIR", help="folder of result files")
    board.add_argument("--out", required=True, metavar="DIR", help="output folder")
    board.add_argument("--methods", nargs="+", metavar="NAME",
                       help="only these methods (default: every method with results)")
    cli.commands.add("list", "list registered methods and tracks", _list)
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m benchmarks`` on ``argv`` (default ``sys.argv[1:]``); the exit status (1 if a result failed)."""
    return command_line().main(argv)
