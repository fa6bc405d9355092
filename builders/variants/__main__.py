"""``python -m builders.variants tables --modelset PATH --out results/variants``."""

from __future__ import annotations

import argparse
import logging
import sys

import modelset
from builders.variants import list_recipes
from builders.variants.tables import write_tables


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builders.variants", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    tables = sub.add_parser("tables", help="write the variant comparison tables of a model set")
    tables.add_argument("--modelset", required=True, help="model set folder")
    tables.add_argument("--out", default="results/variants", help="output folder")
    sub.add_parser("list", help="list the registered variant recipes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "list":
        sys.stdout.write("\n".join(list_recipes()) + "\n")
        return 0
    try:
        ms = modelset.open(args.modelset)
        written = write_tables(ms.metadata, args.out)
    except modelset.ModelSetError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(f"variant tables written to {args.out}: {', '.join(p.name for p in written.values())}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
