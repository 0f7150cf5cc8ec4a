"""`python -m doodle_rnn.gru_cell`: build (or find) the compiled GRU cell and say what happened.

Run by `scripts/install.sh`. Exit status 0 either way: without a compiler the project still works, on the
Python kernel, and this says so.
"""

from __future__ import annotations

import shutil
import sys

from doodle_rnn.gru_cell import compiled


def main() -> int:
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        print("compiled GRU cell: no C++ compiler (c++/g++) on PATH; training uses the Python kernel")
        return 0
    try:
        _, secs = compiled.timed_load(verbose="-v" in sys.argv)
    except Exception as exc:
        why = " ".join(str(exc).split())[:300]
        print(f"compiled GRU cell: build failed with {cxx} ({why}); training uses the Python kernel")
        return 0
    print(f"compiled GRU cell: ready in {secs:.1f} s with {cxx} (build folder {compiled.build_dir()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
