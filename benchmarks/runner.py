"""What the benchmark drivers share (`ranges.py`, `bench_gru_cell.py`): a script's arguments after `--`,
one run of a benchmark script read back as its last JSON line, and [min, max] of numbers over runs.

Why a module: both drivers run another benchmark as a subprocess and summarise its JSON; one copy of that
keeps their outputs alike (the README quotes both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def after_dashes(rest: Sequence[str]) -> list[str]:
    """`argparse.REMAINDER` keeps a leading `--`; the arguments for the benchmark are what follows it."""
    return list(rest[1:] if rest[:1] == ["--"] else rest)


def run_json(cmd: Sequence[str], env: dict[str, str], cwd: str | Path | None = None) -> dict:
    """Run one benchmark and return the JSON object on its last stdout line; a failure shows its output."""
    r = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout + r.stderr, file=sys.stderr)
        raise SystemExit(f"{' '.join(map(str, cmd))}: exit status {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict, keyed by their dotted path."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


def numeric_ranges(records: Sequence[dict]) -> dict[str, list[float]]:
    """[min, max] over `records` of every numeric field (dotted path) that all of them have."""
    flat = [flatten(r) for r in records]
    shared = set.intersection(*(set(f) for f in flat)) if flat else set()
    return {k: [min(f[k] for f in flat), max(f[k] for f in flat)] for k in sorted(shared)}
