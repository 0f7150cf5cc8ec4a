"""`doodle --help` and every `doodle <command> --help` explain themselves, in a real subprocess."""

from __future__ import annotations

import re
import subprocess
import sys

from doodle_rnn import __version__
from doodle_rnn.cli import COMMANDS


def _doodle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "doodle_rnn", *args], capture_output=True, text=True, timeout=60
    )


def test_top_level_help_lists_every_command_without_importing_torch() -> None:
    r = _doodle("--help")
    assert r.returncode == 0
    for name in COMMANDS:
        assert name.replace("_", "-") in r.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, doodle_rnn.cli as c; c.build_parser(); print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "False"  # building every command's parser stays light


def test_every_command_help_documents_its_flags_and_defaults() -> None:
    for name in COMMANDS:
        r = _doodle(name.replace("_", "-"), "--help")
        assert r.returncode == 0, (name, r.stderr)
        assert "usage: doodle" in r.stdout and "options:" in r.stdout
        assert "-h, --help" in r.stdout
    r = _doodle("train", "--help")
    assert "(default: 192)" in r.stdout and "--resume" in r.stdout and "--batching" in r.stdout


def test_no_command_prints_help_and_fails() -> None:
    r = _doodle()
    assert r.returncode == 2 and "usage: doodle" in r.stdout


def _help_entries(command: str) -> list[str]:
    """One string per option of `doodle COMMAND --help`, line wrapping undone."""
    flat = " ".join(_doodle(command, "--help").stdout.split(" options: ", 1)[-1].split())
    entries: list[str] = []
    for part in re.split(r" (?=--[a-z])", flat):
        if entries and entries[-1].endswith(","):  # `--augment, --no-augment`
            entries[-1] += " " + part
        else:
            entries.append(part)
    return entries


def test_help_shows_only_defaults_that_inform() -> None:
    switches = ("--no-", "--all ", "--recognized-only", "--strict", "--resume", "--overwrite")
    for name in COMMANDS:
        for entry in _help_entries(name.replace("_", "-")):
            assert "(default: None)" not in entry, (name, entry)
            assert entry.count("(default") <= 1, (name, entry)  # never doubled
            if entry.startswith(switches):
                assert "(default: True)" not in entry and "(default: False)" not in entry, (name, entry)
    train = {e.split()[0].rstrip(","): e for e in _help_entries("train")}
    assert "(default" not in train["--data"] and "(default" not in train["--out"]  # required
    assert train["--lr"].endswith("(default: 0.002)") and train["--augment"].endswith("(default: True)")
    assert train["--num-threads"].count("(default") == 1
    # a pair of switches for one setting: only the one that is the default says so
    prepare = {e.split()[0]: e for e in _help_entries("prepare")}
    assert prepare["--recognized-only"].endswith("(the default)") and "default" not in prepare["--all"]


def test_version() -> None:
    r = _doodle("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"doodle-rnn {__version__}"


def test_every_library_error_is_a_doodle_error_mapped_once_by_the_cli(tmp_path) -> None:
    """Errors a user can fix share one base (a ValueError), which `doodle` prints as `error: ...`, exit 2."""
    import importlib
    import inspect
    import pkgutil

    import doodle_rnn
    from doodle_rnn.errors import DoodleError

    found = {}
    for info in pkgutil.walk_packages(doodle_rnn.__path__, "doodle_rnn."):
        if info.name.startswith(("doodle_rnn.server", "doodle_rnn.commands")) or info.name.endswith(
            "__main__"
        ):
            continue  # the server maps its own errors to HTTP answers; commands raise UserError
        mod = importlib.import_module(info.name)
        for name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, Exception) and not name.startswith("_"):
                found[name] = cls
    assert {"CacheError", "CheckpointError", "DataFormatError", "DownloadError", "EvalError", "ExportError",
            "InferenceError", "QuickstartError", "ShippedModelError", "TrainError",
            "UnknownClassError"} <= set(found)  # fmt: skip
    assert [n for n, c in found.items() if not issubclass(c, DoodleError)] == []
    assert issubclass(DoodleError, ValueError)
    # a library error that no command catches itself: printed once, cleanly, by cli.py
    r = _doodle(
        "download", "--classes", "cow", "--out", str(tmp_path / "d"), "--base-url", "ftp://example.org/"
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr == "error: base URL must start with http:// or https://, got 'ftp://example.org/'\n"
