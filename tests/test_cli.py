"""`doodle --help` and every `doodle <command> --help` explain themselves, in a real subprocess."""

from __future__ import annotations

import subprocess
import sys

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
