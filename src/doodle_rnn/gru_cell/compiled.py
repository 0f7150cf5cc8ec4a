"""The compiled GRU cell: `gru_cell.cpp`, built with the machine's C++ compiler and loaded.

Built once (by `scripts/install.sh`, which runs `python -m doodle_rnn.gru_cell`; or on first use) with
`torch.utils.cpp_extension.load` into a folder of this environment, so the build matches this torch.
`-march=native` lets the compiler vectorise the gate loops for this CPU; the build's name carries a
digest of the CPU's flags, so a virtual machine that wakes up on another host CPU builds its own copy
instead of running instructions the CPU lacks. Same interface as `python_kernel.py`.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("gru_cell.cpp")
HEADER = Path(__file__).with_name("gru_cell_kernels.h")  # torch hashes only SOURCE; the name covers both
CFLAGS = ["-O3", "-march=native", "-fno-math-errno"]


def _digest() -> str:
    """8 hex digits naming the sources, the flags, torch, and this CPU's instruction sets (`-march=native`)."""
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        )
    except OSError:
        flags = ""
    text = " ".join([*sorted(flags.split(":")[-1].split()), *CFLAGS, torch.__version__])
    text += SOURCE.read_text() + HEADER.read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def build_dir() -> Path:
    """Where the build lives: $DOODLE_GRU_CELL_DIR, else beside this environment, else the user's cache."""
    if os.environ.get("DOODLE_GRU_CELL_DIR"):
        return Path(os.environ["DOODLE_GRU_CELL_DIR"])
    here = Path(sys.prefix) / "var" / "doodle_rnn"
    if os.access(sys.prefix, os.W_OK):
        return here
    return Path.home() / ".cache" / "doodle_rnn"


@contextmanager
def _ninja_on_path():
    """torch finds `ninja` on PATH; the `ninja` package installs it beside this interpreter."""
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def load_extension(verbose: bool = False):
    """Build (if needed) and import the extension module; raises where it cannot be built."""
    from torch.utils import cpp_extension

    name = f"doodle_gru_cell_{_digest()}"
    folder = build_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    with _ninja_on_path():
        return cpp_extension.load(
            name, [str(SOURCE)], extra_cflags=CFLAGS, build_directory=str(folder), verbose=verbose
        )


def timed_load(verbose: bool = False):
    """(module, seconds it took): a build's time the first time, a load's after."""
    t0 = time.perf_counter()
    mod = load_extension(verbose)
    return mod, time.perf_counter() - t0


class Kernel:
    """The compiled time loop behind the interface of `python_kernel`."""

    def __init__(self, module):
        self.module = module

    def forward(self, x_proj, w_hh, b_hh, counts, starts, mm_dtype, save):
        w_hh_t = w_hh.transpose(1, 2).contiguous()
        if mm_dtype is not None:
            w_hh_t = w_hh_t.to(mm_dtype)
        states, hn_all, gates_all = self.module.scan_forward(
            x_proj.contiguous(), w_hh_t, b_hh.contiguous(), counts, starts, save
        )
        return states, (hn_all, gates_all)

    def backward(self, saved, states, w_hh, g_states, g_final, counts, starts, mm_dtype):
        hn_all, gates_all = saved
        w = w_hh.contiguous() if mm_dtype is None else w_hh.to(mm_dtype).contiguous()
        d_all, sums = self.module.scan_backward(
            g_states, g_final, w, states, hn_all, gates_all, counts, starts
        )
        return d_all, sums[:, states.shape[2] :]
