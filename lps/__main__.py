"""``python -m lps`` (console script ``modelset-lps``): ``train``, ``calibrate``, ``index`` and ``search``.

``train`` fits LPS on the training models of each task fold of the set (``splits/folds.json``)
and saves one checkpoint per fold into ``--out`` (reused by the benchmark's LPS methods, which
score them with the same track code as every other method); ``--all-tasks`` also fits one on every
model, for search. ``calibrate`` turns search scores into probabilities (``lps.calibration``);
``index`` writes the zoo's embeddings beside that LPS (``lps.index``).
``search`` prints the zoo models nearest to one or many checkpoints; ``serve`` keeps a set's search
loaded and answers ``search`` over a private socket in well under a second (``lps._service``).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Heavy modules (torch, pandas, the set reader) are imported inside the commands: a search's
# start-up time is most of its answer time.
from lps.search import SEARCH_DIR, default_lps_folders, resolve_lps
from modelset._cli import CommandLine, add_runtime, add_zoo, prog_name
from modelset.errors import ModelSetError

log = logging.getLogger("lps.search")

#: File endings taken from a folder given to ``lps search``.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def cmd_train(args: argparse.Namespace) -> int:
    import modelset
    from lps.splits import fold, load_folds
    from lps.train import train_cached

    ms = modelset.open(args.zoo)
    out = Path(args.out)
    folds = load_folds(ms)
    chosen = list(range(len(folds))) if args.folds is None else args.folds
    options: dict[str, Any] = {"epochs": args.epochs, "progress": True}
    if args.graded:
        options["graded"] = args.graded
    for index in chosen:
        sp = fold(ms, index)
        print(
            f"fold {index}: training on {len(sp.train_ids)} models of {len(sp.train_tasks)} tasks; "
            f"held out: {len(sp.heldout_task_ids)} models of {len(sp.heldout_tasks)} tasks, "
            f"{len(sp.heldout_model_ids)} models of seen tasks, {len(sp.heldout_recipe_ids)} of held-out recipes",
            flush=True,
        )
        scorer = train_cached(ms, sp.train_ids, out, mode=args.mode, seed=index, **options)
        print(f"fold {index}: LPS in {out} (trained in {scorer.config['train_seconds']:.1f} s)", flush=True)
    if args.all_tasks:
        ids = list(ms.metadata.index)
        scorer = train_cached(ms, ids, out, mode=args.mode, seed=0, label="all", **options)
        scorer.save(out / SEARCH_DIR)
        print(f"LPS on all {len(ids)} models for search: {out / SEARCH_DIR}")
    print("score them with the benchmark tracks: python -m benchmarks run --zoo "
          f"{args.zoo} --methods lps --cache {out} --results RESULTS")
    return 0


def _lps_folder(args: argparse.Namespace) -> Path:
    return resolve_lps(args.lps, args.zoo, None if args.lps else default_lps_folders())


def checkpoint_paths(patterns: list[str]) -> list[Path]:
    """The checkpoint files named by ``patterns``: files, folders (their checkpoint files, sorted)
    and globs (sorted matches). Raises ``ModelSetError`` for a pattern that names none."""
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
        elif path.exists() or not glob.has_magic(pattern):
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        if not found:
            raise ModelSetError(f"{pattern}: no checkpoint files ({', '.join(CHECKPOINT_SUFFIXES)}) there")
        paths += found
    return paths


def cmd_index(args: argparse.Namespace) -> int:
    import modelset
    from lps.index import build_index, describe
    from lps.model import LPS

    folder = _lps_folder(args)
    index = build_index(LPS.load(folder), modelset.open(args.zoo), folder)
    print(f"zoo index written: {describe(index)}")
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ("architecture", "variant", "task", "min_accuracy")}


def try_service(args: argparse.Namespace) -> None:
    """Before a search: let the warm service answer it if one runs for this set and LPS (then this
    process imports neither torch nor pandas and applies no runtime); else say how to start one."""
    if args.func is not cmd_search or args.no_index or args.no_service:
        return
    if args.k < 1:
        raise ModelSetError(f"-k must be at least 1, got {args.k}")
    from lps._service import search_via_service

    paths = checkpoint_paths(args.checkpoint)
    folder = _lps_folder(args)
    reply = search_via_service(args.zoo, folder, paths, args.k, _filters(args), args.socket)
    if reply is None:
        log.info("no search service for %s: searching in this process (start one with `%s serve --zoo %s` for "
                 "sub-second answers)", args.zoo, prog_name("lps", "modelset-lps"), args.zoo)
        return
    # Printed as an in-process search prints them: the paths as given, not as the service saw them.
    reply.update(zoo=str(Path(args.zoo)), lps=str(folder))
    for query, path in zip(reply["queries"], paths):
        query["checkpoint"] = str(path)
    args.func = lambda a: render(reply, a)
    del args.threads  # nothing is computed here: no torch thread count to apply


def cmd_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ModelSetError(f"-k must be at least 1, got {args.k}")
    paths = checkpoint_paths(args.checkpoint)
    from lps.search import ZooSearch, answer, load_checkpoint

    # Every checkpoint is read and checked (finite, dense, known layout) before the zoo is touched:
    # a bad file is refused at once, however large the zoo.
    items: list[tuple[Path, Any]] = []
    errors: list[dict[str, Any]] = []
    for path in paths:
        try:
            items.append((path, load_checkpoint(path)))
        except ModelSetError as exc:
            if len(paths) == 1:
                raise
            errors.append({"checkpoint": str(path), "error": str(exc)})
    session = ZooSearch.load(args.zoo, _lps_folder(args), use_index=not args.no_index)
    queries = answer(session, items, k=args.k, **_filters(args))
    name = getattr(session.index, "name", Path(args.zoo).name)
    return render({"zoo": str(session.zoo), "lps": str(session.folder), "name": str(name), "queries": errors + queries}, args)


def render(reply: dict[str, Any], args: argparse.Namespace) -> int:
    """Print a search's answer (``lps.search.answer``'s entries, from this process or the service)
    as a table, ``--json`` or ``--csv``; errors go to stderr. The exit status: 2 if any failed."""
    queries = reply["queries"]
    done = [q for q in queries if "error" not in q]
    failed = [q for q in queries if "error" in q]
    if len(queries) == 1 and failed:
        raise ModelSetError(failed[0]["error"])
    for q in failed:
        print(f"error: {q['error']}", file=sys.stderr)
    batch = len(args.checkpoint) > 1 or len(queries) > 1
    if args.json:
        found = [
            {"checkpoint": q["checkpoint"], "hits": [{k: _round(v) for k, v in hit.items()} for hit in q["hits"]],
             **({"good_match": q["good_match"]} if q["good_match"] is not None else {}),
             **({"notes": q["notes"]} if q["notes"] else {})}
            for q in done
        ]  # fmt: skip
        head = {"zoo": reply["zoo"], "lps": reply["lps"]}
        print(json.dumps({**head, "queries": found} if batch else {**head, **found[0]}, indent=1))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        for i, q in enumerate(done):
            columns = list(q["hits"][0])
            if i == 0:
                writer.writerow((["checkpoint"] if batch else []) + columns)
            for hit in q["hits"]:
                cells = ["" if hit[c] is None else f"{hit[c]:.6f}" if isinstance(hit[c], float) else hit[c] for c in columns]
                writer.writerow(([q["checkpoint"]] if batch else []) + cells)
    else:
        for i, q in enumerate(done):
            if i:
                print()
            print(f"nearest models in {reply['name']} to {q['checkpoint']} (LPS {reply['lps']}):")
            print(text_table(q["hits"]))
            for note in q["notes"]:
                print(f"note: {note}")
            if q["good_match"] is None:
                print(f"(scores are uncalibrated cosines: `python -m lps calibrate --zoo {args.zoo}` gives probabilities)")
            elif not q["good_match"]:
                print(f"no good match: the best hit solves the same task with probability {q['hits'][0]['p_same_task']:.2f}")
    return 2 if failed else 0


def _round(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def text_table(hits: list[dict[str, Any]]) -> str:
    """Hits as an aligned text table (columns right-aligned, floats to 4 decimals, missing as NaN)."""
    columns = list(hits[0])
    cells = [[("NaN" if v is None and c not in ("model_id", "task", "architecture", "variant") else
               f"{v:.4f}" if isinstance(v, float) else str(v)) for c, v in hit.items()] for hit in hits]  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [" ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += [" ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def cmd_serve(args: argparse.Namespace) -> int:
    from lps._service import Service, default_socket, stop

    if args.stop:
        path = stop(args.zoo, args.socket)
        print(f"search service on {path} stopped" if path else "no search service was running for this set")
        return 0
    path = Path(args.socket) if args.socket else default_socket(args.zoo)
    service = Service(args.zoo, _lps_folder(args))
    service.run(path, args.idle_minutes, ready=lambda p: print(
        f"search service for {args.zoo} (LPS {service.lps}) on {p}; exits after {args.idle_minutes:g} min idle "
        f"or on `serve --stop`", flush=True))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import modelset
    from lps.calibration import fit_calibration
    from lps.splits import load_folds
    from lps.train import train_cached

    ms = modelset.open(args.zoo)
    out = Path(args.out)
    folds = load_folds(ms)
    scorers = [train_cached(ms, f.train_ids, out, mode=args.mode, seed=i, epochs=args.epochs) for i, f in enumerate(folds)]
    calibration = fit_calibration(ms, list(zip(folds, scorers)))
    path = calibration.save(out / SEARCH_DIR)
    for question, figures in calibration.report["questions"].items():
        print(f"{question}: expected calibration error {figures['ece_across_folds']:.4f}, Brier "
              f"{figures['brier_across_folds']:.4f} (base rate alone {figures['brier_of_base_rate']:.4f}) "
              f"over {figures['pairs']} held-out pairs")
    print(f"calibration written to {path}")
    return 0


def command_line() -> CommandLine:
    """This command line: its parser and commands (``main`` runs it)."""
    cli = CommandLine(prog_name("lps", "modelset-lps"), __doc__, prepare=try_service)
    p = cli.commands.add("train", "train LPS on each task fold's training models and save the checkpoints", cmd_train)
    add_zoo(p)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (a checkpoint cache shared with the benchmarks)")
    p.add_argument("--folds", type=int, nargs="*", default=None,
                   help="fold numbers (default: every fold of the set; none with --all-tasks alone)")
    p.add_argument("--all-tasks", action="store_true",
                   help=f"also train on every model, saved as {SEARCH_DIR}/ for search")
    p.add_argument("--mode", choices=("pairs", "contrastive"), default="pairs",
                   help="pairs: a similarity head on pairs of models; contrastive: supervised contrastive "
                        "embeddings (default pairs)")
    p.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    p.add_argument("--graded", default=None, metavar="RELATION",
                   help="relation matrix giving graded pair targets (e.g. label_jaccard)")
    add_runtime(p)
    lps_help = ("LPS checkpoint folder, or make lps's output folder (default: results/lps here, "
                "else in this checkout)")
    c = cli.commands.add(
        "calibrate", "fit the probability that a hit shares the query's task, on the folds' held-out pairs",
        cmd_calibrate)
    add_zoo(c)
    c.add_argument("--out", default="results/lps", metavar="DIR",
                   help="make lps's output folder (fold checkpoints; search/ gets the calibration)")
    c.add_argument("--mode", choices=("pairs", "contrastive"), default="pairs",
                   help="LPS training mode of the fold checkpoints")
    c.add_argument("--epochs", type=int, default=40, help="epochs of the fold checkpoints (a cache miss trains them)")
    add_runtime(c)
    x = cli.commands.add("index", "embed every model of a set and save the zoo index beside the LPS", cmd_index)
    add_zoo(x, "model set folder to index")
    x.add_argument("--lps", default=None, metavar="DIR", help=lps_help)
    add_runtime(x)
    s = cli.commands.add("search", "nearest zoo models to one or many checkpoints", cmd_search)
    s.add_argument("checkpoint", nargs="+",
                   help="your models: .safetensors files or weights-only torch state_dicts, folders of them, "
                        "or globs (quoted)")
    add_zoo(s, "model set folder to search")
    s.add_argument("-k", type=int, default=5, help="how many hits to print (at least 1; default 5)")
    s.add_argument("--lps", default=None, metavar="DIR", help=lps_help)
    s.add_argument("--no-index", action="store_true",
                   help="embed every zoo model now instead of using (or writing) the saved zoo index")
    s.add_argument("--architecture", help="only zoo models of this architecture (e.g. cnn3)")
    s.add_argument("--variant", help="only zoo models of this variant (e.g. base, str, channel_sim)")
    s.add_argument("--task", help="only zoo models of this task id")
    s.add_argument("--min-accuracy", type=float, default=None, help="only zoo models with at least this test accuracy")
    s.add_argument("--no-service", action="store_true",
                   help="search in this process even when a search service (`serve`) runs for this set")
    s.add_argument("--socket", default=None, metavar="PATH",
                   help="the search service's socket (default: one per set in a private per-user folder)")
    out = s.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the hits as JSON")
    out.add_argument("--csv", action="store_true", help="print the hits as CSV")
    add_runtime(s)
    _one_thread(s)
    v = cli.commands.add(
        "serve", "keep the LPS and the zoo index loaded and answer `search` for this set in well under a second",
        cmd_serve)
    add_zoo(v, "model set folder to serve")
    v.add_argument("--lps", default=None, metavar="DIR", help=lps_help)
    v.add_argument("--socket", default=None, metavar="PATH",
                   help="socket to listen on (default: one per set in a private per-user folder)")
    v.add_argument("--idle-minutes", type=float, default=30.0, metavar="MIN",
                   help="exit after this many minutes without a request (default 30)")
    v.add_argument("--stop", action="store_true", help="stop the service running for this set instead")
    add_runtime(v)
    _one_thread(v)
    return cli


def _one_thread(parser: argparse.ArgumentParser) -> None:
    # A query's tensors are tiny: on a busy machine two threads made one query 15x slower (they
    # wait on each other), so search and serve default to one.
    parser.set_defaults(threads=1)
    for action in parser._actions:
        if action.dest == "threads":
            action.help = ("CPU threads for torch (default 1: a query's tensors are small, and more threads "
                           "mostly wait on each other; more help when a stale zoo index is rebuilt)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m lps`` on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    return command_line().main(argv)


if __name__ == "__main__":
    sys.exit(main())
