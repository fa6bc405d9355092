"""``python -m modelset`` (console script ``modelset``): inspect, check, pack, fetch and export
model sets. The set is always ``--zoo DIR``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from modelset._cli import CommandLine, add_path_option, add_zoo, prog_name
from modelset.importers import IMPORT_HELP, import_zoo
from modelset.importers import add_arguments as add_import_arguments


def _format_counts(title: str, counts: dict[str, int]) -> list[str]:
    width = max((len(k) for k in counts), default=0)
    return [f"{title}:"] + [f"  {k:<{width}}  {v:>6}" for k, v in counts.items()]


def _info(args: argparse.Namespace) -> int:
    import modelset

    with modelset.open(args.zoo) as ms:
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


def _verify(args: argparse.Namespace) -> int:
    import modelset

    report = modelset.verify(args.zoo)
    print(f"OK: {args.zoo}: {report['files']} files, {report['models']} models in {report['shards']} shards verified")
    return 0


def _pack_cli(args: argparse.Namespace) -> int:
    from modelset.release import INDEX_FILE, pack

    target = pack(args.zoo, args.out, archive=not args.no_archive)
    archive = f"; archive {target}.tar" if not args.no_archive else ""
    print(f"release written to {target} (index {target / INDEX_FILE}{archive})")
    return 0


def _fetch_cli(args: argparse.Namespace) -> int:
    from modelset.release import fetch

    dest = fetch(args.url, args.zoo, retries=args.retries, overwrite=args.overwrite, progress=True,
                 timeout=args.timeout, deadline=args.deadline, file_deadline=args.file_deadline)  # fmt: skip
    print(f"release fetched and verified into {dest}")
    return 0


def _export_cli(args: argparse.Namespace) -> int:
    from modelset.export import export_hf

    out = export_hf(args.zoo, args.out, overwrite=args.overwrite)
    print(f"Hugging Face export written to {out} (load it with datasets.load_dataset({str(out)!r}))")
    return 0


def command_line() -> CommandLine:
    """This command line: its parser and commands (``main`` runs it)."""
    cli = CommandLine(prog_name("modelset", "modelset"), __doc__)
    info = cli.commands.add("info", "print a summary of a model set", _info)
    add_zoo(info, legacy_positional=True)
    info.add_argument("--json", action="store_true", help="machine-readable output")

    verify = cli.commands.add("verify", "check every checksum, table and tensor of a model set", _verify)
    add_zoo(verify, legacy_positional=True)

    pack = cli.commands.add("pack", "pack a built model set into a versioned release folder and .tar archive", _pack_cli)
    add_zoo(pack, legacy_positional=True)
    pack.add_argument("--out", default="dist", metavar="DIR", help="folder receiving the release (default: dist)")
    pack.add_argument("--no-archive", action="store_true", help="do not write the .tar archive")

    fetch = cli.commands.add("fetch", "download a release, verify every file and install it as the set --zoo", _fetch_cli)
    fetch.add_argument("url", help="release folder URL (or its release.json URL)")
    add_zoo(fetch, "destination folder of the model set", legacy_positional=True)
    fetch.add_argument("--retries", type=int, default=3, help="attempts per file after the first (default 3)")
    fetch.add_argument("--overwrite", action="store_true", help="replace --zoo if it holds something else")
    fetch.add_argument("--timeout", type=float, default=60.0, help="seconds one network read may wait (default 60)")
    fetch.add_argument("--file-deadline", type=float, default=None,
                       help="seconds all attempts at one file may take (default: timeout + size at 64 KiB/s)")
    fetch.add_argument("--deadline", type=float, default=None,
                       help="seconds the whole fetch may take (default: the sum of the files' defaults)")

    export = cli.commands.add(
        "export", "export a model set for other libraries (Hugging Face datasets: Parquet + card)", _export_cli)
    add_zoo(export, legacy_positional=True)
    add_path_option(export, "--out", "folder to write (appears only once complete)", legacy_positional=True)
    export.add_argument("--format", choices=["hf"], default="hf",
                        help="hf: Parquet files and a card for datasets.load_dataset")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    imp = cli.commands.add("import", IMPORT_HELP, import_zoo)
    add_import_arguments(imp)
    add_zoo(imp, "model set folder to write (resumed if interrupted)", legacy_positional=True)

    return cli


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``modelset`` command line on ``argv`` (default: ``sys.argv[1:]``); the exit status."""
    return command_line().main(argv)
