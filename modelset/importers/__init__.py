"""Importers of existing model zoos: ``python -m modelset import KIND SRC --zoo OUT``.

``cnn-zoo``: the Small CNN Zoo (Unterthiner et al. 2020), see :mod:`modelset.importers.cnn_zoo`.
"""

from __future__ import annotations

import argparse

KINDS = ("cnn-zoo",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="cnn-zoo: the Small CNN Zoo (Unterthiner et al. 2020)")
    parser.add_argument(
        "src", help="the zoo's folder (or one data set folder: weights.npy, metrics.csv.gz, layout.csv)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it holds something else")
    parser.add_argument(
        "--skip-nonfinite", action="store_true", help="leave out runs with NaN or Inf parameters"
    )
    parser.add_argument("--runs-per-shard", type=int, default=1024, help="runs per HDF5 shard (default 1024)")
    parser.add_argument("--name", default="small-cnn-zoo", help="name of the model set")
    parser.add_argument("--folds", type=int, default=5, help="model folds of the set's evaluation protocol (default 5)")


def import_zoo(args: argparse.Namespace) -> int:
    from modelset.importers.cnn_zoo import import_cnn_zoo

    summary = import_cnn_zoo(
        args.src,
        args.zoo,
        overwrite=args.overwrite,
        skip_nonfinite=args.skip_nonfinite,
        runs_per_shard=args.runs_per_shard,
        name=args.name,
        folds=args.folds,
    )
    skipped = sum(summary["skipped_runs"].values())
    print(
        f"imported {summary['models']} models ({summary['checkpoints']} checkpoints, {skipped} runs left out) into {args.zoo}"
    )
    return 0


IMPORT_HELP = "import an existing model zoo (cnn-zoo: the Small CNN Zoo) as a model set"
