"""Command line: ``python -m lps train`` and ``python -m lps search``.

``train`` fits LPS on the training models of each task fold of the set (``splits/folds.json``)
and saves one checkpoint per fold into ``--out`` (reused by the benchmark's LPS methods, which
score them with the same track code as every other method); ``--all-tasks`` also fits one on every
model, for search. ``search`` prints the zoo models nearest to a user's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

import modelset
from lps.calibration import CALIBRATION_FILE, GOOD_MATCH, Calibration, fit_calibration
from lps.model import LPS
from lps.search import SEARCH_DIR, default_lps_folders, find_lps, load_checkpoint, search
from lps.splits import fold, load_folds
from lps.train import MODES, train_cached
from modelset.errors import ModelSetError


def cmd_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
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


def cmd_search(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.k < 1:
        raise ModelSetError(f"-k must be at least 1, got {args.k}")
    ms = modelset.open(args.zoo)
    if args.lps is not None:
        folder = find_lps(args.lps)
    else:
        tried = default_lps_folders()
        found = [p for p in tried if p.exists()]
        if not found:
            raise ModelSetError(
                "no trained LPS found in " + " or ".join(str(p) for p in tried)
                + f"; run `make lps MODELSET={args.zoo}` or give --lps DIR"
            )
        folder = find_lps(found[0])
    scorer = LPS.load(folder)
    calibration = Calibration.load(folder) if (folder / CALIBRATION_FILE).exists() else None
    state = load_checkpoint(args.checkpoint)
    table = search(
        scorer, ms, state, k=args.k, source=str(args.checkpoint), architecture=args.architecture,
        variant=args.variant, task=args.task, min_accuracy=args.min_accuracy, calibration=calibration,
    )  # fmt: skip
    best = float(table["p_same_task"].iloc[0]) if "p_same_task" in table else None
    if args.json:
        rows = json.loads(table.to_json(orient="records", double_precision=6))
        doc = {"zoo": str(ms.root), "lps": str(folder), "checkpoint": str(args.checkpoint), "hits": rows}
        if best is not None:
            doc["good_match"] = best >= GOOD_MATCH
        print(json.dumps(doc, indent=1))
    elif args.csv:
        print(table.to_csv(index=False, float_format="%.6f"), end="")
    else:
        print(f"nearest models in {ms.name} to {args.checkpoint} (LPS {folder}):")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if best is None:
            print(f"(scores are uncalibrated cosines: run `python -m lps calibrate --zoo {args.zoo}` for probabilities)")
        elif best < GOOD_MATCH:
            print(f"no good match: the best hit solves the same task with probability {best:.2f}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lps", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train LPS on each task fold's training models and save the checkpoints")
    p.add_argument("--zoo", required=True, help="model set folder")
    p.add_argument("--out", required=True, help="output folder (a checkpoint cache shared with the benchmarks)")
    p.add_argument("--folds", type=int, nargs="*", default=None, help="fold numbers (default: every fold of the set; none with --all-tasks alone)")
    p.add_argument("--all-tasks", action="store_true", help=f"also train on every model, saved as {SEARCH_DIR}/ for search")
    p.add_argument("--mode", choices=MODES, default="pairs")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument(
        "--graded", default=None, help="relation matrix giving graded pair targets (e.g. label_jaccard)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_train)
    c = sub.add_parser("calibrate", help="fit the probability that a hit shares the query's task, on the folds' held-out pairs")
    c.add_argument("--zoo", required=True, help="model set folder")
    c.add_argument("--out", default="results/lps", help="make lps's output folder (fold checkpoints; search/ gets the calibration)")
    c.add_argument("--mode", choices=MODES, default="pairs", help="LPS training mode of the fold checkpoints")
    c.add_argument("--epochs", type=int, default=40, help="epochs of the fold checkpoints (a cache miss trains them)")
    c.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    c.set_defaults(func=cmd_calibrate)
    s = sub.add_parser("search", help="nearest zoo models to a checkpoint")
    s.add_argument("checkpoint", help="your model: a .safetensors file or a weights-only torch state_dict")
    s.add_argument("--zoo", required=True, help="model set folder to search")
    s.add_argument("-k", type=int, default=5, help="how many hits to print (at least 1; default 5)")
    s.add_argument("--lps", default=None,
                   help="LPS checkpoint folder, or make lps's output folder (default: results/lps here, "
                        "else in this checkout)")
    s.add_argument("--architecture", help="only zoo models of this architecture (e.g. cnn3)")
    s.add_argument("--variant", help="only zoo models of this variant (e.g. base, str, channel_sim)")
    s.add_argument("--task", help="only zoo models of this task id")
    s.add_argument("--min-accuracy", type=float, default=None, help="only zoo models with at least this test accuracy")
    out = s.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the hits as JSON")
    out.add_argument("--csv", action="store_true", help="print the hits as CSV")
    s.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    s.set_defaults(func=cmd_search)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except ModelSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
