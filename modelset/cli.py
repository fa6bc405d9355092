"""``python -m modelset``: inspect and check model sets."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from modelset.errors import ModelSetError

#: Sub-commands: name -> (help, add_arguments, run). Other modules may add theirs.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def wrap(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return wrap


def _format_counts(title: str, counts: dict[str, int]) -> list[str]:
    width = max((len(k) for k in counts), default=0)
    return [f"{title}:"] + [f"  {k:<{width}}  {v:>6}" for k, v in counts.items()]


@command("info", "print a summary of a model set", lambda p: (
    p.add_argument("path"), p.add_argument("--json", action="store_true", help="machine-readable output")))
def _info(args: argparse.Namespace) -> int:
    import modelset

    with modelset.open(args.path) as ms:
        summary = ms.info()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    lines = [
        f"model set {summary['name']!r} at {summary['path']}",
        f"  schema v{summary['schema_version']}, {'complete' if summary['complete'] else 'INCOMPLETE (build in progress or interrupted)'}",
        f"  {summary['models']} models over {summary['tasks']} tasks; relations: {', '.join(summary['relations']) or 'none'}",
    ]
    for column in ("architecture", "variant", "task"):
        lines += _format_counts(f"models per {column}", summary[f"by_{column}"])
    if summary.get("test_accuracy"):
        q = summary["test_accuracy"]
        lines.append("test accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
        lines += [f"  {k:<16} mean {v:.3f}" for k, v in summary["test_accuracy_by_variant"].items()]
    print("\n".join(lines))
    return 0


@command("verify", "check every checksum, table and tensor of a model set", lambda p: p.add_argument("path"))
def _verify(args: argparse.Namespace) -> int:
    import modelset

    report = modelset.verify(args.path)
    print(f"OK: {args.path}: {report['files']} files, {report['models']} models in {report['shards']} shards verified")
    return 0


@command("pack", "pack a built model set into a versioned release folder and .tar archive", lambda p: (
    p.add_argument("path", help="model set folder"),
    p.add_argument("--out", default="dist", help="folder receiving the release (default: dist)"),
    p.add_argument("--no-archive", action="store_true", help="do not write the .tar archive"),
))
def _pack_cli(args: argparse.Namespace) -> int:
    from modelset.release import INDEX_FILE, pack

    target = pack(args.path, args.out, archive=not args.no_archive)
    print(f"release written to {target} (index {target / INDEX_FILE}; archive {target}.tar)")
    return 0


@command("fetch", "download a release, verify every file and install it at DEST", lambda p: (
    p.add_argument("url", help="release folder URL (or its release.json URL)"),
    p.add_argument("dest", help="destination folder"),
    p.add_argument("--retries", type=int, default=3),
    p.add_argument("--overwrite", action="store_true", help="replace DEST if it holds something else"),
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one network read may wait (default 60)"),
    p.add_argument("--file-deadline", type=float, default=None,
                   help="seconds all attempts at one file may take (default: timeout + size at 64 KiB/s)"),
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds the whole fetch may take (default: the sum of the files' defaults)"),
))
def _fetch_cli(args: argparse.Namespace) -> int:
    from modelset.release import fetch

    dest = fetch(args.url, args.dest, retries=args.retries, overwrite=args.overwrite, progress=True,
                 timeout=args.timeout, deadline=args.deadline, file_deadline=args.file_deadline)  # fmt: skip
    print(f"release fetched and verified into {dest}")
    return 0


@command("export", "export a model set for other libraries (Hugging Face datasets: Parquet + card)", lambda p: (
    p.add_argument("path", help="model set folder"),
    p.add_argument("out", help="folder to write (appears only once complete)"),
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: Parquet files and a card for datasets.load_dataset"),
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists"),
))
def _export_cli(args: argparse.Namespace) -> int:
    from modelset.export import export_hf

    out = export_hf(args.path, args.out, overwrite=args.overwrite)
    print(f"Hugging Face export written to {out} (load it with datasets.load_dataset({str(out)!r}))")
    return 0


from modelset.importers import IMPORT_COMMAND  # noqa: E402  (the import sub-command)

COMMANDS["import"] = IMPORT_COMMAND


def main(argv: Sequence[str] | None = None) -> int:

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m modelset", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except ModelSetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
