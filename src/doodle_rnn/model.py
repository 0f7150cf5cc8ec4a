"""The recurrent classifier: strokes-as-steps in, class logits out.

`GRUClassifier` keeps the reference project's parameter names and shapes (`gru.weight_ih_l0`, ...,
`norm.weight`, `fc.weight`) so the reference's checkpoints load unchanged: the weights live in an
`nn.GRU` (or `nn.LSTM`) called `gru`.

Two ways to run the same weights, with the same numbers (tests hold them to 1e-5):

- `packed`: `nn.GRU` over a packed sequence, the reference's way; cuDNN on CUDA, and the path used
  when tracing/exporting (ONNX) and for LSTM.
- `fused` (the CPU default for GRU training, and for inference with bf16 products): `gru_final_states`
  below over `gru_cell.gru_scan`, a GRU written for this shape of work (its time loop compiled C++ where
  the machine can build it, see `doodle_rnn.gru_cell`). The batch is sorted by length and packed (only the
  steps of drawings still running are stored or computed, like a `PackedSequence`); the reverse
  direction runs forward over each drawing flipped within its own length, so it starts at the
  drawing's true end; input projections are one matrix product over all packed steps, and the
  backward pass computes weight gradients in one product after the time loop.

Either way a drawing's logits never depend on how much padding its batch needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from doodle_rnn.gru_cell import gru_scan

IMPLS = ("auto", "fused", "packed")


@dataclass
class ModelConfig:
    num_classes: int
    input_size: int = 3
    hidden_size: int = 192
    num_layers: int = 2
    bidirectional: bool = True
    dropout: float = 0.2
    rnn: str = "gru"  # "gru" or "lstm"
    # Optional 1-D convolutions over the steps before the GRU (TensorFlow's Quick, Draw! RNN tutorial
    # has such a front end): each sees `conv_kernel` neighbouring steps, so the GRU reads local shape
    # features instead of single pen moves. Empty: the reference model.
    conv_channels: list[int] = field(default_factory=list)
    conv_kernel: int = 5

    def to_dict(self) -> dict:
        return asdict(self)


class GRUClassifier(nn.Module):
    def __init__(self, cfg: ModelConfig, impl: str = "auto"):
        super().__init__()
        self.cfg = cfg
        if cfg.rnn not in ("gru", "lstm"):
            raise ValueError(f"rnn must be 'gru' or 'lstm', not {cfg.rnn!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
        self.impl = impl
        # bf16 matrix products in the fused path (set by the trainer on CPUs with fast bf16); None: fp32
        self.matmul_dtype: torch.dtype | None = None
        rnn_cls = nn.GRU if cfg.rnn == "gru" else nn.LSTM
        self.conv = (
            _ConvFrontEnd(cfg.input_size, cfg.conv_channels, cfg.conv_kernel) if cfg.conv_channels else None
        )
        # The attribute is called `gru` for both kinds so parameter names match the reference's.
        self.gru = rnn_cls(
            input_size=cfg.conv_channels[-1] if cfg.conv_channels else cfg.input_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
        )
        width = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(width, cfg.num_classes)

    def use_fused(self, x: torch.Tensor) -> bool:
        if self.impl == "packed" or self.cfg.rnn != "gru":
            return False
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return False
        # auto: on CPU the fused kernel for training, and for inference when its products run in bf16
        # (validation 2,600-2,830 vs 1,530-1,740 drawings/s). In fp32 inference nn.GRU, the reference's
        # own code: on a quiet 2-core box the compiled cell's fp32 validation ran at 0.91-0.97x of it with
        # 2 threads (benchmarks/bench_gru_cell.py, 2 pairs, 2026-12-07); its 121-211 vs 58-79 drawings/s
        # lead was measured on a busy box, where nn.GRU's per-operation thread barriers waited on
        # descheduled threads.
        if self.impl == "fused":
            return True
        return x.device.type == "cpu" and (torch.is_grad_enabled() or self.matmul_dtype is not None)

    def final_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Last layer's final hidden state(s), both directions concatenated: [B, H * dirs]."""
        if self.conv is not None:
            x = self.conv(x, lengths)
        if self.use_fused(x):
            return gru_final_states(self.gru, x, lengths, self.training, self.matmul_dtype)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        if isinstance(h, tuple):  # LSTM returns (h, c)
            h = h[0]
        dirs = 2 if self.cfg.bidirectional else 1
        return torch.cat(list(h[-dirs:]), dim=-1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: [B, T, 3] float features (padded), lengths: [B] true lengths -> logits [B, C]."""
        return self.fc(self.drop(self.norm(self.final_states(x, lengths))))


class _ConvFrontEnd(nn.Module):
    """Conv1d + ReLU layers that keep the length; steps past each drawing's length are zeroed after
    every layer, so a drawing's features never depend on how much padding its batch has (a lone
    drawing sees the convolution's own zero padding at its end; in a batch it sees the zeroed steps).
    """

    def __init__(self, in_channels: int, channels: list[int], kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError("conv_kernel must be odd (the convolution keeps the number of steps)")
        sizes = [in_channels, *channels]
        self.layers = nn.ModuleList(
            nn.Conv1d(a, b, kernel, padding=kernel // 2) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[1], device=x.device)
        mask = (steps[None, :] < lengths.to(x.device)[:, None]).unsqueeze(1).to(x.dtype)  # [B, 1, T]
        h = x.transpose(1, 2) * mask
        for conv in self.layers:
            h = F.relu(conv(h)) * mask
        return h.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------------------
# The fused GRU (`impl="fused"`): the same numbers as nn.GRU, computed over packed rows.
#
# One GRU step for one direction (PyTorch's definition; `*` is elementwise, x_t the input, h the state):
#
#     r   = sigmoid(x_t W_ir^T + b_ir + h_{t-1} W_hr^T + b_hr)          reset gate
#     z   = sigmoid(x_t W_iz^T + b_iz + h_{t-1} W_hz^T + b_hz)          update gate
#     n   = tanh   (x_t W_in^T + b_in + r * (h_{t-1} W_hn^T + b_hn))    candidate state
#     h_t = (1 - z) * n + z * h_{t-1}  =  lerp(n, h_{t-1}, z)
#
# W_ih = [W_ir; W_iz; W_in] and W_hh likewise, so one product gives all three gates: the input
# projection x W_ih^T + b_ih ([.., 3H], computed for every step at once before the time loop) and the
# hidden projection h W_hh^T + b_hh ([.., 3H], one product per step). The hidden projection is laid out
# [r | z | n] like W_hh; the input projection [n | r | z] (W_ih's rows reordered), so that backward one
# buffer [n_in | r | z | n_h] holds both gradients as plain slices: [n_in | r | z] is the input
# projection's and [r | z | n_h] the hidden projection's, and no concatenation copies them apart.
#
# Packed rows. Drawings are sorted longest first; step t holds the `counts[t]` drawings still running,
# in rows `starts[t] : starts[t] + counts[t]` (time-major, like a PackedSequence). For lengths 4, 3, 1:
#
#     step t:       0           1        2        3
#     rows:     | 0  1  2 |   3  4   |  5  6  |   7   | 8 ... (shape padding: zero, never read)
#     drawing:    A  B  C     A  B      A  B      A
#     counts:       3           2        2        1
#     starts:       0           3        5        7
#
# The drawings running at step t are the first counts[t] of step t - 1, so a step's previous states
# are the first rows of the previous step (`prev[row]` names that row for every row after step 0).
# The reverse direction runs forward over each drawing flipped within its own length (A's steps
# 3 2 1 0), so both directions share this layout and start at each drawing's true first/last point.
# ---------------------------------------------------------------------------------------------------


class _Flip(torch.autograd.Function):
    """Rows of `x` reordered by `flip`, a permutation that is its own inverse (time reversal per drawing).

    The gradient of a gather is a scatter-add, which autograd runs as a slow accumulating `index_put`;
    for an involution it is the same gather again (2.6 ms per call, ~4% of a training step, saved).
    """

    @staticmethod
    def forward(ctx, x, flip):  # type: ignore[override]
        ctx.save_for_backward(flip)
        return x[flip]

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (flip,) = ctx.saved_tensors
        return g[flip], None


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout, as `F.dropout` in training, with its mask from thresholded uniform noise.

    On CPU `F.dropout` draws its mask with `bernoulli_`, about 3x slower than `rand_like(x) >= p`
    (32 vs 11 ms for one layer's packed outputs of a 192-drawing batch); same distribution.
    """
    mask = (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


def _padded_rows(rows: int) -> int:
    """`rows` rounded up to a multiple of 64 (up to 4,096) or 512 (beyond).

    oneDNN (which runs bf16 products on CPU) compiles and caches a kernel per matrix shape and keeps
    memory for each; with the packed row count of every batch a new shape, a training process grew by
    ~3 MB a batch (1.5 -> 3.3 GB over 340 batches). Rounded row counts are a handful of shapes, and
    memory stays flat, for at most 5% more rows in the input projections.
    """
    granule = 64 if rows <= 4096 else 512
    return -(-rows // granule) * granule


def _low_mm(a: torch.Tensor, b: torch.Tensor, mm_dtype: torch.dtype | None) -> torch.Tensor:
    """a @ b, with `mm_dtype` operands when given (the result back in a's precision)."""
    if mm_dtype is None:
        return torch.mm(a, b)
    return torch.mm(a.to(mm_dtype), b.to(mm_dtype)).to(a.dtype)


class _InputProj(torch.autograd.Function):
    """x W_ih^T + b_ih for every packed row of each direction, written into one [D, N, 3H] buffer.

    Each direction's input comes in `k` parts side by side (layer 2 of a bidirectional GRU reads
    [forward state | reverse state]); each part meets its own columns of W_ih, so the parts are never
    concatenated, and the directions' products land in their slice of the result instead of being
    stacked (the concatenation and the stack were 22% and 11% of the operator time of a fused
    validation pass, one thread). With `mm_dtype` the products run in bf16 and are summed with the
    bias in fp32.
    """

    @staticmethod
    def forward(ctx, w_ih, b_ih, k, mm_dtype, *parts):  # type: ignore[override]
        dirs = len(parts) // k
        out = parts[0].new_empty(dirs, parts[0].shape[0], w_ih.shape[1])
        for i in range(dirs):
            col = 0
            if mm_dtype is not None:
                out[i].copy_(b_ih[i])  # the bias, to which the bf16 products are added in fp32
            for j, part in enumerate(parts[i * k : (i + 1) * k]):
                w_part = w_ih[i, :, col : col + part.shape[1]].t()
                col += part.shape[1]
                if mm_dtype is not None:
                    out[i].add_(_low_mm(part, w_part, mm_dtype))
                elif j == 0:
                    torch.addmm(b_ih[i], part, w_part, out=out[i])
                else:
                    out[i].addmm_(part, w_part)
        ctx.save_for_backward(w_ih, *parts)
        ctx.k, ctx.mm_dtype = k, mm_dtype
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        w_ih, *parts = ctx.saved_tensors
        k, mm_dtype = ctx.k, ctx.mm_dtype
        g_w = torch.empty_like(w_ih) if ctx.needs_input_grad[0] else None
        g_parts = []
        for i in range(len(parts) // k):
            col = 0
            for j, part in enumerate(parts[i * k : (i + 1) * k]):
                cols = slice(col, col + part.shape[1])
                col += part.shape[1]
                if ctx.needs_input_grad[4 + i * k + j]:
                    g_parts.append(_low_mm(g[i], w_ih[i, :, cols], mm_dtype))
                else:
                    g_parts.append(None)
                if g_w is not None:
                    g_w[i, :, cols] = _low_mm(g[i].t(), part, mm_dtype)
        g_b = g.sum(dim=1) if ctx.needs_input_grad[1] else None
        return g_w, g_b, None, None, *g_parts


def _input_proj(
    inputs: list[list[torch.Tensor]], w_ih: torch.Tensor, b_ih: torch.Tensor, mm_dtype: torch.dtype | None
) -> torch.Tensor:
    """x W_ih^T + b_ih for each direction's input, given as parts side by side: [D, N, 3H]."""
    k = len(inputs[0])
    return _InputProj.apply(w_ih, b_ih, k, mm_dtype, *[p for parts in inputs for p in parts])


def gru_final_states(
    gru: nn.GRU,
    x: torch.Tensor,
    lengths: torch.Tensor,
    training: bool,
    mm_dtype: torch.dtype | None = None,
    impl=None,
) -> torch.Tensor:
    """The final states of `gru`'s last layer (all directions) for padded `x`, via `gru_cell.gru_scan`.

    Equal to running `gru` over the packed sequence; padding past a drawing's length is never read.
    `mm_dtype=torch.bfloat16` runs the matrix products in bf16 while hidden states, gates and gradients
    stay fp32; the trainer asks for it where bf16 products measure >= 1.25x fp32 (`devices.cpu_bf16_speedup`:
    0.5x to 4.8x on the machines measured so far). `impl`: a `gru_cell` kernel to use instead of this
    process's choice (tests and benchmarks compare them).
    """
    bsz = x.shape[0]
    dev = x.device
    lens_cpu = lengths.detach().to("cpu", torch.int64)
    if bsz and int(lens_cpu.min()) < 1:
        raise ValueError("every drawing needs at least one step")
    order = torch.argsort(lens_cpu, descending=True, stable=True)
    lens = lens_cpu[order]
    t_max = int(lens[0]) if bsz else 0
    counts_t = bsz - torch.cumsum(torch.bincount(lens, minlength=t_max + 1), 0)[:t_max]
    counts = counts_t.tolist()
    starts = (torch.cumsum(counts_t, 0) - counts_t).tolist()
    # Packed layout (the picture above `_Flip`): row of (step t, sorted drawing i) = pos[t, i]
    running = torch.arange(t_max).unsqueeze(1) < lens.unsqueeze(0)  # [T, B]
    t_idx, b_idx = running.nonzero(as_tuple=True)  # in packed row order
    pos = torch.full((t_max, bsz), -1, dtype=torch.int64)
    pos[t_idx, b_idx] = torch.arange(len(t_idx))
    last = pos[lens - 1, torch.arange(bsz)].to(dev)
    rows = len(t_idx)
    padded = _padded_rows(rows)
    pad = torch.arange(rows, padded)  # tail rows: zero, read by no step, mapped to themselves
    later = t_idx > 0
    prev = torch.cat([pos[t_idx[later] - 1, b_idx[later]], torch.zeros(padded - rows, dtype=torch.int64)]).to(
        dev
    )
    order_d = order.to(dev)
    packed = x[order_d, :t_max].transpose(0, 1)[running.to(dev)].to(gru.weight_hh_l0.dtype)  # [N, F]
    packed = F.pad(packed, (0, 0, 0, padded - rows))
    dirs = 2 if gru.bidirectional else 1
    if dirs == 2:
        # each drawing reversed within its own length: (t, i) <-> (len_i - 1 - t, i), an involution
        flip = torch.cat([pos[lens[b_idx] - 1 - t_idx, b_idx], pad]).to(dev)
        inputs = [[packed], [packed[flip]]]
    else:
        inputs = [[packed]]
    sfx = ["", "_reverse"][:dirs]
    hidden = gru.hidden_size
    n_r_z = torch.cat([torch.arange(2 * hidden, 3 * hidden), torch.arange(2 * hidden)]).to(dev)  # W_ih rows
    final = None
    with torch.autocast(dev.type, enabled=False):
        for layer in range(gru.num_layers):
            w_ih = torch.stack([getattr(gru, f"weight_ih_l{layer}{s}") for s in sfx])[:, n_r_z]
            w_hh = torch.stack([getattr(gru, f"weight_hh_l{layer}{s}") for s in sfx])
            b_ih = torch.stack([getattr(gru, f"bias_ih_l{layer}{s}") for s in sfx])[:, n_r_z]
            b_hh = torch.stack([getattr(gru, f"bias_hh_l{layer}{s}") for s in sfx])
            x_proj = _input_proj(inputs, w_ih, b_ih, mm_dtype)
            states, final = gru_scan(x_proj, w_hh, b_hh, counts, starts, last, prev, mm_dtype, impl)
            if layer < gru.num_layers - 1:
                if training and gru.dropout > 0:
                    states = _dropout(states, gru.dropout)
                if dirs == 2:
                    # the next layer's input at each step: [forward state | reverse state] of that step,
                    # in the forward time order for the forward direction and flipped for the reverse one.
                    # unbind, not states[0] and states[1]: its gradient is one stack, where each index's
                    # is a zero-filled [D, N, H] tensor with its slice copied in
                    fwd, rev = states.unbind(0)
                    fwd_in_rev_time, rev_in_fwd_time = _Flip.apply(fwd, flip), _Flip.apply(rev, flip)
                    inputs = [[fwd, rev_in_fwd_time], [fwd_in_rev_time, rev]]
                else:
                    inputs = [[states[0]]]
    final_cat = torch.cat(list(final), dim=-1)  # [B, D * H], sorted order
    return final_cat[torch.argsort(order_d)]
