"""``python -m lps`` (console script ``modelset-lps``): ``train``, ``calibrate``, ``index`` and ``search``.

``train`` fits LPS on the training models of each task fold of the set (``splits/folds.json``)
and saves one checkpoint per fold into ``--out`` (reused by the benchmark's LPS methods, which
score them with the same track code as every other method); ``--all-tasks`` also fits one on every
model, for search. ``calibrate`` turns search scores into probabilities (``lps.calibration``);
``index`` writes the zoo's embeddings beside that LPS (``lps.index``).
``search`` prints the zoo models nearest to one or many checkpoints.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Heavy modules (torch, pandas, the set reader) are imported inside the commands: a search's
# start-up time is most of its answer time.
from lps.search import SEARCH_DIR, default_lps_folders, find_lps
from modelset._cli import CommandLine, add_runtime, add_zoo, prog_name
from modelset.errors import ModelSetError

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
    if args.lps is not None:
        return find_lps(args.lps)
    tried = default_lps_folders()
    found = [p for p in tried if p.exists()]
    if not found:
        raise ModelSetError(
            "no trained LPS found in " + " or ".join(str(p) for p in tried)
            + f"; run `make lps MODELSET={args.zoo}` or give --lps DIR"
        )
    return find_lps(found[0])


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


def cmd_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ModelSetError(f"-k must be at least 1, got {args.k}")
    paths = checkpoint_paths(args.checkpoint)
    from lps.calibration import CALIBRATION_FILE, GOOD_MATCH, Calibration
    from lps.index import load_index
    from lps.model import LPS
    from lps.search import load_checkpoint, search

    # Every checkpoint is read and checked (finite, dense, known layout) before the zoo is touched:
    # a bad file is refused at once, however large the zoo.
    states, failed = [], 0
    for path in paths:
        try:
            states.append((path, load_checkpoint(path)))
        except ModelSetError as exc:
            if len(paths) == 1:
                raise
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    folder = _lps_folder(args)
    scorer = LPS.load(folder)
    calibration = Calibration.load(folder) if (folder / CALIBRATION_FILE).exists() else None
    if args.no_index:
        import modelset

        zoo: Any = modelset.open(args.zoo)
    else:
        zoo = load_index(scorer, args.zoo, folder)
    results = []
    for path, state in states:
        try:
            table = search(
                scorer, zoo, state, k=args.k, source=str(path), architecture=args.architecture,
                variant=args.variant, task=args.task, min_accuracy=args.min_accuracy, calibration=calibration,
            )  # fmt: skip
        except ModelSetError as exc:
            if len(paths) == 1:
                raise
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        results.append((path, table))
    batch = len(paths) > 1
    if args.json:
        found = [
            {"checkpoint": str(p), "hits": json.loads(t.to_json(orient="records", double_precision=6)),
             **({"good_match": bool(t["p_same_task"].iloc[0] >= GOOD_MATCH)} if "p_same_task" in t else {})}
            for p, t in results
        ]
        head = {"zoo": str(zoo.root), "lps": str(folder)}
        print(json.dumps({**head, "queries": found} if batch else {**head, **found[0]}, indent=1))
    elif args.csv:
        for i, (path, table) in enumerate(results):
            if batch:
                table = table.assign(checkpoint=str(path))[["checkpoint", *table.columns]]
            text = table.to_csv(index=False, float_format="%.6f")
            print(text if i == 0 else text.split("\n", 1)[1], end="")
    else:
        for i, (path, table) in enumerate(results):
            if i:
                print()
            print(f"nearest models in {zoo.name} to {path} (LPS {folder}):")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
            if "p_same_task" not in table:
                print(f"(scores are uncalibrated cosines: `python -m lps calibrate --zoo {args.zoo}` gives probabilities)")
            elif table["p_same_task"].iloc[0] < GOOD_MATCH:
                print(f"no good match: the best hit solves the same task with probability {table['p_same_task'].iloc[0]:.2f}")
    return 2 if failed else 0


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
    cli = CommandLine(prog_name("lps", "modelset-lps"), __doc__)
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
    out = s.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the hits as JSON")
    out.add_argument("--csv", action="store_true", help="print the hits as CSV")
    add_runtime(s)
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m lps`` on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    return command_line().main(argv)


if __name__ == "__main__":
    sys.exit(main())
