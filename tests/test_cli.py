"""The five command lines share one style (``modelset._cli``): the set is ``--zoo DIR``, logging is
``-v``/``--log-level``, ``--threads`` is applied once through a ``Runtime`` and handed to the
command, every option has help, and each package has a console script."""

from __future__ import annotations

import argparse
import builtins
import importlib
import logging
import pkgutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import benchmarks.cli
import builders.__main__
import builders.variants.__main__
import lps.__main__
import modelset.cli
from modelset import _cli
from modelset.runtime import Runtime

REPO = Path(__file__).resolve().parents[1]
CLIS = {
    "modelset": modelset.cli,
    "builders": builders.__main__,
    "builders.variants": builders.variants.__main__,
    "lps": lps.__main__,
    "benchmarks": benchmarks.cli,
}
#: Every command that reads or writes a model set, per command line.
SET_COMMANDS = {
    "modelset": {"info", "verify", "pack", "fetch", "export", "import"},
    "builders": {"build", "variants tables"},
    "builders.variants": {"tables"},
    "lps": {"train", "calibrate", "index", "search", "serve"},
    "benchmarks": {"run"},
}
#: Commands that compute (and so take --threads).
THREADED = {"lps": {"train", "calibrate", "index", "search", "serve"}, "benchmarks": {"run"}}


def _commands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command path, parser) of every leaf command under ``parser``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _commands(child, f"{path} {name}".strip())


@pytest.fixture(autouse=True)
def _keep_root_level():
    root = logging.getLogger()
    before = root.level
    yield
    root.setLevel(before)


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_option_has_help_and_the_set_is_zoo(name: str) -> None:
    top = CLIS[name].command_line().parser
    commands = dict(_commands(top))
    for path, parser in [("", top), *commands.items()]:
        for action in parser._actions:
            if action.help != argparse.SUPPRESS:
                assert action.help and action.help.strip(), f"{name} {path}: {action.option_strings or action.dest} has no help"
    for path, parser in commands.items():
        visible = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        assert "--modelset" not in visible
        assert ("--zoo" in visible) == (path in SET_COMMANDS[name]), f"{name} {path}"
        assert {"-v", "--log-level"} <= visible, f"{name} {path}"
        assert ("--threads" in visible) == (path in THREADED.get(name, set())), f"{name} {path}"


def test_zoo_is_required_and_given_once(capsys: pytest.CaptureFixture[str]) -> None:
    cli = modelset.cli.command_line()
    with pytest.raises(SystemExit) as exc:
        cli.parse(["info"])
    assert exc.value.code == 2 and "required: --zoo" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse(["info", "a", "--zoo", "b"])
    assert "--zoo given twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "argv", "zoo"),
    [
        ("modelset", ["info", "old/set"], "old/set"),
        ("modelset", ["fetch", "https://host/r/", "old/dest"], "old/dest"),
        ("builders", ["build", "--config", "c.yaml", "--out", "old/set"], "old/set"),
        ("builders.variants", ["tables", "--modelset", "old/set"], "old/set"),
        ("builders", ["variants", "tables", "--modelset", "old/set"], "old/set"),
    ],
)
def test_old_spellings_parse_as_deprecated_aliases(name: str, argv: list[str], zoo: str) -> None:
    args = CLIS[name].command_line().parse(argv)
    assert args.zoo == zoo
    assert len(args._deprecated) == 1 and f"--zoo {zoo}" in args._deprecated[0]
    new = CLIS[name].command_line().parse([a for a in argv if a != zoo and a not in ("--out", "--modelset")] + ["--zoo", zoo])
    assert new.zoo == zoo and not getattr(new, "_deprecated", [])


def test_export_takes_zoo_and_out_or_its_old_positionals() -> None:
    cli = modelset.cli.command_line()
    old = cli.parse(["export", "set", "hf"])
    new = cli.parse(["export", "--zoo", "set", "--out", "hf"])
    assert (old.zoo, old.out) == (new.zoo, new.out) == ("set", "hf")


@pytest.mark.parametrize(
    ("name", "argv", "level"),
    [
        ("lps", ["index", "--zoo", "z"], logging.WARNING),
        ("lps", ["-v", "index", "--zoo", "z"], logging.INFO),
        ("lps", ["index", "--zoo", "z", "-v"], logging.INFO),
        ("lps", ["index", "--zoo", "z", "-vv"], logging.DEBUG),
        ("lps", ["--log-level", "error", "index", "--zoo", "z", "-v"], logging.ERROR),
        ("benchmarks", ["leaderboard", "--results", "r", "--out", "o", "--log-level", "debug"], logging.DEBUG),
        ("builders", ["build", "--config", "c", "--zoo", "z"], logging.INFO),
        ("builders", ["build", "--config", "c", "--zoo", "z", "--log-level", "WARNING"], logging.WARNING),
    ],
)
def test_log_level_before_or_after_the_command(name: str, argv: list[str], level: int) -> None:
    cli = CLIS[name].command_line()
    assert _cli.setup_logging(cli.parse(argv), cli.log_level) == level
    assert logging.getLogger().level == level


def test_threads_enter_once_and_reach_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    applied: list[int] = []
    real_apply = Runtime.apply

    def apply(self: Runtime) -> Runtime:
        applied.append(self.n_threads)
        return real_apply(self)

    monkeypatch.setattr(Runtime, "apply", apply)
    seen: dict[str, object] = {}
    cli = _cli.CommandLine("demo", None)
    work = cli.commands.add("work", "a command that computes", lambda a: seen.update(runtime=a.runtime, torch=torch.get_num_threads()) or 0)
    _cli.add_runtime(work)
    assert cli.main(["work", "--threads", "3"]) == 0
    assert applied == [3] and seen == {"runtime": Runtime(device="cpu", threads=3), "torch": 3}
    on_device = cli.commands.add("device", "a command whose work honours --device", lambda a: seen.update(runtime=a.runtime) or 0)
    _cli.add_runtime(on_device, device=True)
    assert cli.main(["device", "--device", "cpu"]) == 0
    assert seen["runtime"] == Runtime(device="cpu", threads=None) and applied[-1] == Runtime().n_threads
    # A real command: the runtime is applied before the command fails on the missing set.
    applied.clear()
    assert benchmarks.cli.main(["run", "--zoo", "/nonexistent/set", "--results", "/nonexistent/r", "--threads", "1"]) == 2
    assert applied == [1]


def test_threads_must_be_a_positive_integer(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit):
            lps.__main__.command_line().parse(["train", "--zoo", "z", "--out", "o", "--threads", bad])
        assert "positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CLIS))
def test_no_command_line_sets_torch_threads_itself(name: str) -> None:
    assert "set_num_threads" not in Path(CLIS[name].__file__).read_text()


def test_console_scripts_run_the_same_command_lines(capsys: pytest.CaptureFixture[str]) -> None:
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {"modelset": modelset.cli, "modelset-build": builders.__main__, "modelset-lps": lps.__main__,
                "modelset-bench": benchmarks.cli}  # fmt: skip
    assert set(scripts) == set(expected)
    for script, target in scripts.items():
        module, _, func = target.partition(":")
        assert importlib.import_module(module) is expected[script] and func == "main"
        monkeypatch_argv = [script, "--help"]
        old_argv = sys.argv
        sys.argv = monkeypatch_argv
        try:
            with pytest.raises(SystemExit) as exc:
                getattr(expected[script], func)(["--help"])
        finally:
            sys.argv = old_argv
        assert exc.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: {script} ")


def test_python_m_prog_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        lps.__main__.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: python -m lps ")


SHADOWING_LEFT: set[str] = set()


def test_module_names_shadow_nothing() -> None:
    taken = set(sys.stdlib_module_names) | set(dir(builtins)) | set(CLIS)
    shadowing = set()
    for package in ("modelset", "builders", "lps", "benchmarks"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.rsplit(".", 1)[1] in taken:
                shadowing.add(info.name)
    assert shadowing == SHADOWING_LEFT


def test_renamed_modules_keep_their_registered_names() -> None:
    from benchmarks.methods import get_method
    from builders.variants import get_recipe

    assert sys.modules[get_recipe("str").__module__].__name__ == "builders.variants.soft_threshold"
    assert get_method("random").__module__ == "benchmarks.methods.random_scorer"
    assert get_method("lps").__module__ == "benchmarks.methods.lps_pairwise"


def test_info_old_and_new_spelling_print_the_same(mini_set, capsys: pytest.CaptureFixture[str]) -> None:
    assert modelset.cli.main(["info", "--zoo", str(mini_set.root)]) == 0
    new = capsys.readouterr().out
    assert modelset.cli.main(["info", str(mini_set.root)]) == 0
    assert capsys.readouterr().out == new and f"models over {mini_set.tasks.shape[0]} tasks" in new


@pytest.mark.slow
def test_bench_run_and_leaderboard_from_the_command_line(mini_set, tmp_path: Path, capsys) -> None:
    runs, board = tmp_path / "runs", tmp_path / "board"
    argv = ["run", "--zoo", str(mini_set.root), "--results", str(runs), "--methods", "random",
            "--tracks", "task_classification", "--folds", "0", "--threads", "1"]  # fmt: skip
    assert benchmarks.cli.main(argv) == 0
    assert "1 result files written" in capsys.readouterr().out
    assert benchmarks.cli.main(argv) == 0
    assert "0 result files written, 1 up to date" in capsys.readouterr().out
    assert benchmarks.cli.main(["leaderboard", "--results", str(runs), "--out", str(board)]) == 0
    assert "random" in (board / "leaderboard.csv").read_text()
    assert builders.__main__.main(["variants", "tables", "--zoo", str(mini_set.root), "--out", str(tmp_path / "v")]) == 0
    assert (tmp_path / "v" / "variants.md").exists()
