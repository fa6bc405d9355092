"""``python -m builders`` (console script ``modelset-build``): build a model set from a config,
``build --config configs/modelset500.yaml --zoo data/modelset500``; ``variants tables|list`` as
``python -m builders.variants``.

The build's threads and device are the config's ``threads`` and ``device`` (they fix the number
of training stacks, so a set is rebuilt bit for bit), not command-line options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from builders.variants.__main__ import add_commands as add_variant_commands
from modelset._cli import CommandLine, add_path_option, prog_name


def _build(args: argparse.Namespace) -> int:
    from builders.build import build

    out = build(args.config, args.zoo, overwrite=args.overwrite, progress=not args.no_progress,
                executor=args.executor, address=args.ray_address)
    print(f"model set written to {out}")
    return 0


def command_line() -> CommandLine:
    """This command line: its parser and commands (``main`` runs it)."""
    # A build runs for minutes to hours: it reports its shards and timings at INFO by default.
    cli = CommandLine(prog_name("builders", "modelset-build"), __doc__, log_level="INFO")
    b = cli.commands.add("build", "build (or resume building) a model set from a config", _build)
    b.add_argument("--config", required=True, metavar="YAML", help="build config, e.g. configs/modelset500.yaml")
    add_path_option(b, "--zoo", "model set folder to write, e.g. data/modelset500", legacy_options=("--out",))
    b.add_argument("--overwrite", action="store_true", help="replace an existing set at --zoo")
    b.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where shards are trained: this process (default) or a Ray cluster")
    b.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance)")
    b.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    add_variant_commands(cli.commands.group("variants", "the variant recipes and the comparison tables of a set"))
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m builders`` on ``argv`` (default ``sys.argv[1:]``); the exit status."""
    return command_line().main(argv)


if __name__ == "__main__":
    sys.exit(main())
