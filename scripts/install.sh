#!/usr/bin/env bash
# Install everything doodle-rnn needs into ./.venv on a fresh machine (idempotent).
# torch goes first, pinned to the CPU wheel, so the project's looser range installs nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ -z "${DOODLE_SKIP_BROWSER:-}" ]; then
  # Debian's Chromium drives the browser tests of the drawing page (test tools cannot download one here).
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade "pip>=24,<27"
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
# The compiled GRU cell (C++, built for this torch and CPU; ~30 s of CPU): says what it did and how long
# it took, and where it cannot be built, that training uses the Python kernel (the install goes on).
.venv/bin/python -m doodle_rnn.gru_cell
# ONNX Runtime Web for `doodle export --web` (pinned in package.json / package-lock.json; MIT).
if command -v npm >/dev/null 2>&1; then
  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error \
    || echo "warning: npm ci failed; doodle export --web and its browser tests will be skipped" >&2
else
  echo "warning: npm not found; doodle export --web and its browser tests will be skipped" >&2
fi
echo "installed: $(.venv/bin/python -c 'import doodle_rnn, torch; print("doodle-rnn", doodle_rnn.__version__, "torch", torch.__version__)')"
