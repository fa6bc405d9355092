"""``python -m builders.variants`` (also ``modelset-build variants``): the variant recipes and the
comparison tables of a built set, e.g. ``tables --zoo data/mini --out results/variants``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelset._cli import CommandLine, Commands, add_zoo, prog_name


def _list(args: argparse.Namespace) -> int:
    from builders.variants import list_recipes

    sys.stdout.write("\n".join(list_recipes()) + "\n")
    return 0


def _tables(args: argparse.Namespace) -> int:
    import modelset
    from builders.variants.tables import write_tables

    written = write_tables(modelset.open(args.zoo).metadata, args.out)
    sys.stdout.write(f"variant tables written to {args.out}: {', '.join(p.name for p in written.values())}\n")
    return 0


def add_commands(commands: Commands) -> None:
    """The ``tables`` and ``list`` commands (shared with ``python -m builders variants``)."""
    tables = commands.add("tables", "write the variant comparison tables of a model set", _tables)
    add_zoo(tables, legacy_options=("--modelset",))
    tables.add_argument("--out", default="results/variants", metavar="DIR",
                        help="output folder (default: results/variants)")
    commands.add("list", "list the registered variant recipes", _list)


def command_line() -> CommandLine:
    """This command line: its parser and commands (``main`` runs it)."""
    cli = CommandLine(prog_name("builders.variants", "modelset-build variants"), __doc__)
    add_commands(cli.commands)
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m builders.variants`` on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    return command_line().main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
