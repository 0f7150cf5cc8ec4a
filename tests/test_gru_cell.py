"""The compiled GRU cell (doodle_rnn.gru_cell): equal to nn.GRU and to the Python kernel, gradcheck,
deterministic for a seed, and the fallback to the Python kernel where it is asked for or unavailable.

The compiled cell is built by scripts/install.sh; these tests fail (not skip) where a C++ compiler exists
but the cell is not in use, so a broken build cannot hide behind the fallback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from doodle_rnn import gru_cell
from doodle_rnn.gru_cell import python_kernel
from doodle_rnn.model import GRUClassifier, ModelConfig, gru_final_states

HAVE_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None
FORCED_PYTHON = os.environ.get("DOODLE_GRU_CELL", "").lower() == "python"
needs_compiled = pytest.mark.skipif(
    not HAVE_COMPILER or FORCED_PYTHON, reason="no C++ compiler, or DOODLE_GRU_CELL=python"
)


def _batch(lengths, seed, dtype, features=3):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    x = torch.randn(len(lengths), max(lengths), features, generator=g, dtype=dtype)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    return x, lens


def _final_states_and_grads(gru, x, lens, impl, mm_dtype=None):
    """Final states of the fused path with kernel `impl`, and the gradients of a weighted sum of them."""
    gru.zero_grad()
    x = x.clone().requires_grad_(True)
    out = gru_final_states(gru, x, lens, training=True, mm_dtype=mm_dtype, impl=impl)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=out.dtype)
    (out * w).sum().backward()
    return [out.detach(), x.grad] + [p.grad.clone() for p in gru.parameters()]


@needs_compiled
def test_the_compiled_cell_is_in_use_where_a_compiler_exists():
    assert gru_cell.is_compiled(), gru_cell.status()
    assert gru_cell.status().startswith("compiled")


@needs_compiled
@pytest.mark.parametrize("bidirectional", [True, False])
def test_compiled_equals_nn_gru_in_fp32_with_lengths_and_padding(bidirectional):
    """The float32 path training uses: outputs and every gradient within float32 rounding of nn.GRU's."""
    torch.manual_seed(11)
    cfg = ModelConfig(num_classes=6, hidden_size=40, bidirectional=bidirectional, dropout=0.0)
    m = GRUClassifier(cfg)
    x, lens = _batch([23, 1, 17, 23, 5, 40, 2, 9], seed=12, dtype=torch.float32)
    x[1, 1:] = 77.0  # garbage in the padding is never read
    y = torch.randint(0, 6, (8,), generator=torch.Generator().manual_seed(13))
    results = {}
    for impl in ("packed", "fused"):
        m.impl = impl
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(m(xi, lens), y)
        loss.backward()
        results[impl] = [loss.detach(), xi.grad] + [p.grad.clone() for p in m.gru.parameters()]
    for a, b in zip(results["fused"], results["packed"], strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


@needs_compiled
@pytest.mark.parametrize("mm_dtype", [None, torch.bfloat16])
def test_compiled_equals_the_python_kernel(mm_dtype):
    """Same numbers as today's kernel: float32 to rounding; with bf16 products within bf16 rounding."""
    torch.manual_seed(14)
    gru = torch.nn.GRU(3, 32, num_layers=2, bidirectional=True, batch_first=True)
    x, lens = _batch([30, 4, 30, 11, 1, 26], seed=15, dtype=torch.float32)
    compiled = _final_states_and_grads(gru, x, lens, gru_cell.kernel(), mm_dtype)
    python = _final_states_and_grads(gru, x, lens, python_kernel, mm_dtype)
    tol = 1e-5 if mm_dtype is None else 0.02
    for a, b in zip(compiled, python, strict=True):
        assert (a - b).abs().max() <= tol * b.abs().max(), (a - b).abs().max()


@needs_compiled
def test_compiled_passes_gradcheck_in_float64():
    torch.manual_seed(5)
    gru = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x, lens = _batch([4, 2, 3], seed=6, dtype=torch.float64)
    x.requires_grad_(True)

    def f(x, *params):
        return gru_final_states(gru, x, lens, training=False, impl=gru_cell.kernel())

    assert torch.autograd.gradcheck(f, (x, *gru.parameters()))


@needs_compiled
def test_compiled_is_deterministic_for_a_seed():
    """A training step's loss and gradients are bit-identical from run to run."""

    def run():
        torch.manual_seed(21)
        m = GRUClassifier(ModelConfig(num_classes=4, hidden_size=24, dropout=0.2)).train()
        x, lens = _batch([19, 7, 19, 3], seed=22, dtype=torch.float32)
        loss = m(x, lens).logsumexp(1).sum()
        loss.backward()
        return [loss.detach()] + [p.grad for p in m.parameters()]

    for a, b in zip(run(), run(), strict=True):
        assert torch.equal(a, b)


@needs_compiled
def test_compiled_scan_gives_the_same_bits_with_one_or_two_threads():
    """Each direction's loop runs whole on one thread, so the thread count does not change the numbers."""
    from doodle_rnn.gru_cell import gru_scan

    torch.manual_seed(23)
    gru = torch.nn.GRU(3, 16, bidirectional=True, batch_first=True)
    x, lens = _batch([12, 12, 5, 1], seed=24, dtype=torch.float32)
    lens_sorted = lens.sort(descending=True).values
    counts = [int((lens_sorted > t).sum()) for t in range(int(lens_sorted[0]))]
    starts = [sum(counts[:t]) for t in range(len(counts))]
    rows = sum(counts)
    x_proj = torch.randn(2, rows, 48, generator=torch.Generator().manual_seed(25))
    w_hh = torch.stack([gru.weight_hh_l0, gru.weight_hh_l0_reverse]).detach()
    b_hh = torch.stack([gru.bias_hh_l0, gru.bias_hh_l0_reverse]).detach()
    last = torch.arange(4)  # any rows: only the gradient's path matters here
    prev = torch.arange(rows - counts[0])

    def run(threads: int):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            xp, w, b = (t.clone().requires_grad_(True) for t in (x_proj, w_hh, b_hh))
            states, final = gru_scan(xp, w, b, counts, starts, last, prev)
            (states.sin().sum() + final.cos().sum()).backward()
            # not w.grad: that is one torch.mm after the loop, whose blocking may follow the threads
            return [states.detach(), final.detach(), xp.grad, b.grad]
        finally:
            torch.set_num_threads(before)

    for a, b in zip(run(1), run(2), strict=True):
        assert torch.equal(a, b)


def test_python_kernel_when_asked_and_a_bad_choice_is_an_error():
    """DOODLE_GRU_CELL=python: the fallback runs (a real subprocess) and trains the same numbers."""
    code = (
        "import torch; from doodle_rnn import gru_cell; from doodle_rnn.gru_cell import python_kernel;"
        "print(gru_cell.status()); assert gru_cell.kernel() is python_kernel;"
        "from doodle_rnn.model import GRUClassifier, ModelConfig; torch.manual_seed(0);"
        "m = GRUClassifier(ModelConfig(num_classes=3, hidden_size=8, dropout=0.0));"
        "x = torch.randn(2, 5, 3); m(x, torch.tensor([5, 2])).sum().backward();"
        "print(float(m.gru.weight_hh_l0.grad.abs().sum()))"
    )
    env = {**os.environ, "DOODLE_GRU_CELL": "python"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    status, grad = out.stdout.splitlines()
    assert status == "Python kernel (DOODLE_GRU_CELL=python)"
    assert float(grad) > 0
    env["DOODLE_GRU_CELL"] = "magic"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "DOODLE_GRU_CELL='magic': use one of auto, compiled, python" in bad.stderr


def test_without_a_compiler_the_fallback_is_used_and_said_in_one_line(tmp_path):
    """No compiler on PATH and an empty build folder: the Python kernel, and one line saying why."""
    code = "from doodle_rnn import gru_cell; print(gru_cell.status()); print(gru_cell.is_compiled())"
    env = {**os.environ, "PATH": str(tmp_path), "DOODLE_GRU_CELL_DIR": str(tmp_path / "build")}
    env.pop("DOODLE_GRU_CELL", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    status, compiled = out.stdout.splitlines()
    assert status.startswith("Python kernel (the compiled cell is unavailable: ")
    assert compiled == "False"
