"""What every command line of the project shares.

- the model set is ``--zoo DIR``; older spellings (a positional ``PATH``, ``--modelset``) still
  parse, hidden from ``--help``, with a deprecation warning;
- logging is ``-v`` (INFO; ``-vv`` DEBUG) or ``--log-level LEVEL``, before or after the command;
- commands that compute take ``--threads N`` (and ``--device`` where the work honours it);
  :meth:`CommandLine.main` turns them into a :class:`~modelset.runtime.Runtime`, applies it once
  (the one place a command line sets torch's thread count) and hands it to the command as
  ``args.runtime``;
- a :class:`~modelset.errors.ModelSetError` is printed as ``error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from modelset.errors import ModelSetError
from modelset.runtime import Runtime

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: Exit status of a command refused with a ModelSetError (argparse itself uses 2 for bad usage).
ERROR_STATUS = 2

Command = Callable[[argparse.Namespace], Any]
log = logging.getLogger(__name__)


def prog_name(module: str, script: str) -> str:
    """``script`` when run as that console script, else ``python -m module``."""
    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _logging_options(default_level: str, *, on_command: bool) -> argparse.ArgumentParser:
    # Given before the command they land in the top parser's defaults; repeated on every command
    # with SUPPRESS defaults, so that `-v` after the command adds to (not resets) the one before.
    unset = argparse.SUPPRESS if on_command else None
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if on_command else 0,
                       help="log more: -v INFO, -vv DEBUG")
    group.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=unset, metavar="LEVEL",
                       help=f"log level, one of {', '.join(LOG_LEVELS)} (default {default_level}; overrides -v)")
    return parent


class Commands:
    """The sub-commands of one parser: :meth:`add` a command, :meth:`group` a nested set."""

    def __init__(self, parser: argparse.ArgumentParser, parent: argparse.ArgumentParser, depth: int = 0) -> None:
        self._parent = parent
        self._depth = depth
        self._sub = parser.add_subparsers(dest=f"command_{depth}", required=True, metavar="COMMAND",
                                          title="commands", help="run `COMMAND --help` for its options")

    def add(self, name: str, help: str, func: Command, description: str | None = None) -> argparse.ArgumentParser:
        parser = self._sub.add_parser(name, help=help, description=description or help, parents=[self._parent])
        parser.set_defaults(func=func, _parser=parser)
        return parser

    def group(self, name: str, help: str) -> Commands:
        parser = self._sub.add_parser(name, help=help, description=help, parents=[self._parent])
        return Commands(parser, self._parent, self._depth + 1)


class CommandLine:
    """A command line with sub-commands and the shared options. ``log_level`` is its default
    level; ``prepare(args)`` runs before any command."""

    def __init__(
        self, prog: str, description: str | None, *, log_level: str = "WARNING", prepare: Command | None = None
    ) -> None:
        self.log_level = log_level
        self.prepare = prepare  # run after logging is set up, before any command (errors reported alike)
        self.parser = argparse.ArgumentParser(
            prog=prog, description=description, parents=[_logging_options(log_level, on_command=False)],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.commands = Commands(self.parser, _logging_options(log_level, on_command=True))

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse ``argv`` and resolve the deprecated spellings (no logging set up, nothing applied)."""
        args = self.parser.parse_args(argv)
        for check in getattr(args, "_checks", ()):
            check(args)
        return args

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse, set up logging, apply the runtime (if the command takes one) and run the command:
        its exit status, or 2 after printing a ``ModelSetError``."""
        args = self.parse(argv)
        setup_logging(args, self.log_level)
        for message in getattr(args, "_deprecated", ()):
            log.warning(message)
        try:
            if self.prepare is not None:
                self.prepare(args)
            if hasattr(args, "threads"):
                args.runtime = runtime_from_args(args)
            return args.func(args)
        except (ModelSetError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return ERROR_STATUS


def setup_logging(args: argparse.Namespace, default_level: str = "WARNING") -> int:
    """Configure the root logger from ``--log-level`` / ``-v``; returns the level."""
    if getattr(args, "log_level", None):
        level = getattr(logging, args.log_level)
    else:
        verbose = getattr(args, "verbose", 0)
        level = getattr(logging, default_level)
        if verbose:
            level = min(level, logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger().setLevel(level)
    return level


def add_runtime(parser: argparse.ArgumentParser, *, device: bool = False) -> None:
    """``--threads N`` (and ``--device`` if the command's work honours it)."""
    group = parser.add_argument_group("runtime")
    group.add_argument("--threads", type=positive_int, default=None, metavar="N",
                       help="CPU threads for torch (default: every core this process may use)")
    if device:
        group.add_argument("--device", default="auto", metavar="DEVICE",
                           help="cpu, cuda, cuda:N or auto (default auto: CUDA when present)")


def runtime_from_args(args: argparse.Namespace) -> Runtime:
    """The command's :class:`Runtime`, applied: torch's thread count is set here and nowhere else
    on the way from a command line to the library. Without ``--device`` the work runs on the CPU."""
    return Runtime(device=getattr(args, "device", "cpu"), threads=args.threads).apply()


def _note(args: argparse.Namespace, name: str, value: Any) -> None:
    items = list(getattr(args, name, ()))
    items.append(value)
    setattr(args, name, items)


def add_path_option(
    parser: argparse.ArgumentParser,
    flag: str,
    help: str,
    *,
    required: bool = True,
    default: str | None = None,
    legacy_options: Sequence[str] = (),
    legacy_positional: bool = False,
) -> None:
    """``flag DIR`` (e.g. ``--zoo``), plus hidden deprecated spellings: other option strings and,
    with ``legacy_positional``, an optional positional argument (in the order they are added)."""
    dest = flag.lstrip("-").replace("-", "_")
    parser.add_argument(flag, dest=dest, metavar="DIR", default=default, help=f"{help} (required)" if required else help)
    for option in legacy_options:
        parser.add_argument(option, dest=f"_legacy_opt_{dest}", default=None, help=argparse.SUPPRESS)
    if legacy_positional:
        parser.add_argument(f"_legacy_pos_{dest}", nargs="?", default=None, help=argparse.SUPPRESS)

    def check(args: argparse.Namespace) -> None:
        given = [(o, v) for o, v in ((flag, getattr(args, dest)),
                                     ("/".join(legacy_options), getattr(args, f"_legacy_opt_{dest}", None)),
                                     ("a positional argument", getattr(args, f"_legacy_pos_{dest}", None)))
                 if v is not None and not (o == flag and v == default)]
        if len(given) > 1:
            args._parser.error(f"{flag} given twice ({' and '.join(o for o, _ in given)}); give {flag} DIR once")
        if given and given[0][0] != flag:
            setattr(args, dest, given[0][1])
            _note(args, "_deprecated", f"{given[0][0]} for {flag} is deprecated: write {flag} {given[0][1]}")
        if required and getattr(args, dest) is None:
            args._parser.error(f"the following arguments are required: {flag}")

    checks = list(parser.get_default("_checks") or [])
    parser.set_defaults(_checks=[*checks, check])


def add_zoo(parser: argparse.ArgumentParser, help: str = "model set folder", **kwargs: Any) -> None:
    """The model set: always ``--zoo DIR``."""
    add_path_option(parser, "--zoo", help, **kwargs)
