"""The recurrent part of the fused CPU GRU, behind one function: `gru_scan`.

Two kernels compute the same numbers: the compiled cell (`gru_cell.cpp`, see `compiled.py`), whose time
loop and element-wise gate work run as C++ loops the compiler vectorises, and the Python one
(`python_kernel.py`), ~10 tensor operations per step. Which one runs is decided once per process:

- `DOODLE_GRU_CELL=python`: the Python kernel;
- `DOODLE_GRU_CELL=compiled`: the compiled one, and an error where it cannot be built or loaded;
- unset or `auto`: the compiled one where it builds or loads, else the Python one (`status()` says which
  and why; the trainer logs it in one line).

Nothing outside this package knows how the cell is built.
"""

from __future__ import annotations

import functools
import os

import torch

from doodle_rnn.errors import DoodleError
from doodle_rnn.gru_cell import python_kernel

CHOICES = ("auto", "compiled", "python")


class GRUCellError(DoodleError):
    """DOODLE_GRU_CELL names no kernel, or asks for the compiled one where it cannot be had."""


@functools.cache
def _kernel_and_status():
    choice = os.environ.get("DOODLE_GRU_CELL", "auto").strip().lower() or "auto"
    if choice not in CHOICES:
        raise GRUCellError(f"DOODLE_GRU_CELL={choice!r}: use one of {', '.join(CHOICES)}")
    if choice == "python":
        return python_kernel, "Python kernel (DOODLE_GRU_CELL=python)"
    from doodle_rnn.gru_cell import compiled

    try:
        module, _ = compiled.timed_load()
    except Exception as exc:  # no compiler, no headers, a failed build: all mean the same here
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        if choice == "compiled":
            raise GRUCellError(
                f"DOODLE_GRU_CELL=compiled, but the compiled GRU cell could not be built or loaded: {why} "
                "(install a C++ compiler and the Python headers, or unset DOODLE_GRU_CELL)"
            ) from exc
        return python_kernel, f"Python kernel (the compiled cell is unavailable: {why})"
    return compiled.Kernel(module), "compiled (C++, gru_cell.cpp)"


def kernel():
    """The kernel this process uses (built or loaded on first call)."""
    return _kernel_and_status()[0]


def status() -> str:
    """One line: which kernel runs and, for the fallback, why."""
    return _kernel_and_status()[1]


def is_compiled() -> bool:
    """True where this process runs the compiled cell (building or loading it on first call)."""
    return kernel() is not python_kernel


class _GRUScan(torch.autograd.Function):
    """The recurrent part of one GRU layer, all directions at once, over packed, length-sorted drawings.

    x_proj: [D, N, 3H] input projections (x W_ih^T + b_ih, columns [n | r | z]), each direction in its own
    time order, D directions, N packed rows (see the picture in model.py); w_hh: [D, 3H, H]; b_hh:
    [D, 3H]; counts, starts: the rows of each step; last: [B] the packed row of each drawing's final step;
    prev: [N - counts[0]] the packed row of the previous step for every row after step 0. N may exceed
    the packed steps (shape padding): those tail rows stay zero, and their `prev` entries point anywhere.
    mm_dtype: None for products in the inputs' precision, torch.bfloat16 for bf16 products (states, gates
    and gradients stay fp32). Returns the outputs (hidden states) [D, N, H] and the final states [D, B, H].

    Why packed: nothing is computed or stored for padding. With randomly composed batches the longest
    drawing is about 2.5x the mean, so padded buffers were mostly zeros.
    Why a hand-written backward: autograd over a time loop would compute small weight-gradient products
    at every step; here the backward loop only carries the hidden-state gradient and the weight gradients
    come from one large product over all steps afterwards.
    """

    @staticmethod
    def forward(ctx, x_proj, w_hh, b_hh, counts, starts, last, prev, mm_dtype, impl):  # type: ignore[override]
        save = any(ctx.needs_input_grad[:3])
        states, saved = impl.forward(x_proj, w_hh, b_hh, counts, starts, mm_dtype, save)
        final = states[:, last]
        if save:
            ctx.save_for_backward(w_hh, states, prev, *saved)
            ctx.counts, ctx.starts, ctx.mm_dtype, ctx.impl = counts, starts, mm_dtype, impl
        ctx.set_materialize_grads(False)
        return states, final

    @staticmethod
    def backward(ctx, g_states, g_final):  # type: ignore[override]
        w_hh, states, prev, *saved = ctx.saved_tensors
        counts, mm_dtype = ctx.counts, ctx.mm_dtype
        d_all, g_b = ctx.impl.backward(saved, states, w_hh, g_states, g_final, counts, ctx.starts, mm_dtype)
        hidden = states.shape[2]
        g_x_proj = d_all[..., : 3 * hidden] if ctx.needs_input_grad[0] else None  # [n_in | r | z]: a view
        g_w = None
        if ctx.needs_input_grad[1]:
            # sum over steps t >= 1 of d_gates_t^T h_{t-1}; step 0 (h_{-1} = 0) adds nothing
            d_gates_later, h_prev_rows = d_all[:, counts[0] :, hidden:], states[:, prev]
            if mm_dtype is not None:
                d_gates_later, h_prev_rows = d_gates_later.to(mm_dtype), h_prev_rows.to(mm_dtype)
            g_w = torch.stack([torch.mm(d_gates_later[i].t(), h_prev_rows[i]) for i in range(len(states))])
            g_w = g_w.to(w_hh.dtype)
        g_b = g_b if ctx.needs_input_grad[2] else None
        return g_x_proj, g_w, g_b, None, None, None, None, None, None


def gru_scan(x_proj, w_hh, b_hh, counts, starts, last, prev, mm_dtype=None, impl=None):
    """Run `_GRUScan` with this process's kernel (or `impl`, a kernel module/object, for comparisons)."""
    if impl is None:
        impl = kernel() if x_proj.device.type == "cpu" else python_kernel
    return _GRUScan.apply(x_proj, w_hh, b_hh, counts, starts, last, prev, mm_dtype, impl)
