"""Command line: ``python -m builders build --config configs/modelset500.yaml --out data/modelset500``."""

from __future__ import annotations

import argparse
import logging
import sys

from modelset.errors import ModelSetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m builders", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or resume building) a model set from a config")
    b.add_argument("--config", required=True, help="YAML config, e.g. configs/modelset500.yaml")
    b.add_argument("--out", required=True, help="output folder, e.g. data/modelset500")
    b.add_argument("--overwrite", action="store_true", help="replace an existing set at --out")
    b.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where shards are trained: this process (default) or a Ray cluster")
    b.add_argument("--ray-address", default=None,
                   help="Ray cluster address (default: RAY_ADDRESS, else a local Ray instance)")
    b.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    b.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from builders.build import build

    try:
        out = build(args.config, args.out, overwrite=args.overwrite, progress=not args.no_progress,
                    executor=args.executor, address=args.ray_address)
    except ModelSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model set written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
