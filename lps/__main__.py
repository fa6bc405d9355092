"""Command line: ``python -m lps train`` and ``python -m lps search``.

``train`` fits LPS on each seed's split (training tasks only), scores it and the flattened-weight
cosine baseline on the same held-out tasks and models, writes ``seed{s}/lps.{json,safetensors}``,
``results.json`` and ``results.md`` into ``--out`` and prints the table (mean ± std over seeds).
``search`` prints the zoo models nearest to a user's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import modelset
from lps.evaluate import METRICS, evaluate_flattened_cosine, evaluate_lps, summarize
from lps.model import LPS
from lps.search import find_lps, load_checkpoint, search
from lps.splits import split
from lps.train import MODES, train
from modelset.errors import ModelSetError

LABELS = {
    "heldout_task_map": "held-out tasks: mAP",
    "heldout_task_rank1": "held-out tasks: rank-1",
    "heldout_task_rank5": "held-out tasks: rank-5",
    "heldout_model_task_accuracy": "held-out models: task accuracy",
    "heldout_model_knn_accuracy": "held-out models: 5-NN accuracy",
    "heldout_model_auc": "held-out models: pair AUC",
}


def results_table(summary: dict[str, dict[str, Any]], n_seeds: int) -> str:
    """A Markdown table: one row per metric, one column per method, ``mean ± std``."""
    methods = list(summary)
    lines = [
        f"| metric ({n_seeds} seeds, mean ± std) | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for metric in METRICS:
        cells = [f"{summary[m][metric]['mean']:.3f} ± {summary[m][metric]['std']:.3f}" for m in methods]
        lines.append(f"| {LABELS[metric]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    ms = modelset.open(args.zoo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        sp = split(ms, seed, args.holdout_tasks, args.holdout_models)
        print(
            f"seed {seed}: training on {len(sp.train_ids)} models of {len(sp.train_tasks)} tasks; "
            f"holding out {len(sp.heldout_task_ids)} models of {len(sp.heldout_tasks)} tasks "
            f"and {len(sp.heldout_model_ids)} models of seen tasks",
            flush=True,
        )
        scorer = train(
            ms,
            train_tasks=sp.train_tasks,
            train_ids=sp.train_ids,
            mode=args.mode,
            seed=seed,
            epochs=args.epochs,
            graded=args.graded,
            progress=True,
        )
        scorer.config["split"] = {
            k: v for k, v in sp.to_dict().items() if k in ("seed", "train_tasks", "heldout_tasks")
        }
        scorer.save(out / f"seed{seed}")
        start = time.perf_counter()
        lps_scores = evaluate_lps(scorer, ms, sp)
        embed_seconds = time.perf_counter() - start
        runs.append(
            {
                "seed": seed,
                "train_seconds": scorer.config["train_seconds"],
                "evaluate_seconds": round(embed_seconds, 2),
                "split": {k: len(v) for k, v in sp.to_dict().items() if isinstance(v, list)},
                "lps": lps_scores,
                "flattened_cosine": evaluate_flattened_cosine(ms, sp),
            }
        )
        print(
            f"seed {seed}: trained in {scorer.config['train_seconds']:.1f} s; LPS {_short(lps_scores)}",
            flush=True,
        )
    label = f"LPS ({args.mode})"
    summary = {
        label: summarize([r["lps"] for r in runs]),
        "flattened cosine": summarize([r["flattened_cosine"] for r in runs]),
    }
    table = results_table(summary, len(runs))
    report = {
        "modelset": ms.name,
        "zoo": str(ms.root),
        "models": len(ms),
        "mode": args.mode,
        "epochs": args.epochs,
        "seeds": list(args.seeds),
        "holdout_task_fraction": args.holdout_tasks,
        "holdout_model_fraction": args.holdout_models,
        "runs": runs,
        "summary": summary,
    }
    _write_atomic(out / "results.json", json.dumps(report, indent=2, sort_keys=True))
    _write_atomic(out / "results.md", f"# LPS on {ms.name}\n\n{table}\n")
    print(table)
    print(f"LPS checkpoints and results written to {out}")
    return 0


def _short(scores: dict[str, float]) -> str:
    return ", ".join(f"{k.removeprefix('heldout_')}={v:.3f}" for k, v in scores.items())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cmd_search(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    ms = modelset.open(args.zoo)
    scorer = LPS.load(find_lps(args.lps))
    state = load_checkpoint(args.checkpoint)
    table = search(scorer, ms, state, k=args.k, source=str(args.checkpoint))
    print(f"nearest models in {ms.name} to {args.checkpoint}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lps", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train LPS on each seed's split, score it beside flattened cosine")
    p.add_argument("--zoo", required=True, help="model set folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--mode", choices=MODES, default="pairs")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--holdout-tasks", type=float, default=0.25, help="fraction of tasks held out")
    p.add_argument(
        "--holdout-models", type=float, default=0.2, help="fraction of model families held out per seen task"
    )
    p.add_argument(
        "--graded", default=None, help="relation matrix giving graded pair targets (e.g. label_jaccard)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_train)
    s = sub.add_parser("search", help="nearest zoo models to a checkpoint")
    s.add_argument("checkpoint", help=".safetensors or torch state_dict file")
    s.add_argument("--zoo", required=True)
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--lps", default="results/lps", help="LPS checkpoint folder (or a folder of seed folders)")
    s.add_argument("--threads", type=int, default=1)
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
