"""The recurrent classifier: strokes-as-steps in, class logits out.

`GRUClassifier` keeps the reference project's parameter names and shapes (`gru.weight_ih_l0`, ...,
`norm.weight`, `fc.weight`) so the reference's checkpoints load unchanged: the weights live in an
`nn.GRU` (or `nn.LSTM`) called `gru`.

Two ways to run the same weights, with the same numbers (tests hold them to 1e-5):

- `packed`: `nn.GRU` over a packed sequence, the reference's way; cuDNN on CUDA, and the path used
  when tracing/exporting (ONNX) and for LSTM.
- `fused` (the CPU default for GRU training, and for inference with bf16 products): `_GRUScan`
  below, a GRU written for this shape of work. The batch is sorted by length and packed (only the
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
        # (validation 2,600-2,830 vs 1,530-1,740 drawings/s); in fp32 inference the two are even
        # (1,510-1,640 vs 1,530-1,740) and nn.GRU is the reference's own code.
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


def _mm_add_fp32(add: torch.Tensor, a: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> None:
    """out[i] = add[i] + a[i] @ w[i] for each direction i, in fp32.

    One 2-D product per direction: MKL reads the strided rows directly, where a batched `baddbmm`
    copies them (~1.8x slower).
    """
    for i in range(len(a)):
        torch.addmm(add[i], a[i], w[i], out=out[i])


def _mm_add_bf16(add: torch.Tensor, a: torch.Tensor, w_bf16: torch.Tensor, out: torch.Tensor) -> None:
    """out = add + a @ w_bf16 for all directions in one batched product with bf16 operands.

    oneDNN runs it ~14% faster than one product per direction; the sum and `out` stay fp32.
    """
    torch.add(add, torch.bmm(a.to(w_bf16.dtype), w_bf16), out=out)


class _GRUScan(torch.autograd.Function):
    """The recurrent part of one GRU layer, all directions at once, over packed, length-sorted drawings.

    x_proj: [D, N, 3H] input projections (x W_ih^T + b_ih, columns [n | r | z]), each direction in its own time order, D
    directions, N packed rows (see the picture above); w_hh: [D, 3H, H]; b_hh: [D, 3H]; counts, starts:
    the rows of each step; last: [B] the packed row of each drawing's final step; prev: [N - counts[0]]
    the packed row of the previous step for every row after step 0. N may exceed the packed steps
    (shape padding, see `_padded_rows`): those tail rows stay zero, and their `prev` entries point
    anywhere. mm_dtype: None for fp32 products, torch.bfloat16 for bf16 products (states, gates and
    gradients stay fp32). Returns the outputs (hidden states) [D, N, H] and the final states [D, B, H].

    Why packed: nothing is computed or stored for padding. With randomly composed batches the longest
    drawing is about 2.5x the mean, so padded buffers were mostly zeros, and allocating them (hundreds
    of MB per batch, fresh pages from the kernel each time) cost as much as the arithmetic.
    Why a hand-written backward: autograd over a Python time loop would compute small weight-gradient
    products at every step; here the backward loop only carries the hidden-state gradient and the
    weight gradients come from one large product over all steps afterwards.
    """

    @staticmethod
    def forward(ctx, x_proj, w_hh, b_hh, counts, starts, last, prev, mm_dtype=None):  # type: ignore[override]
        dirs, rows, three_h = x_proj.shape
        hidden = three_h // 3
        batch = counts[0] if counts else 0
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        if mm_dtype is None:
            mm_add, w_hh_t, bias = _mm_add_fp32, w_hh.transpose(1, 2).contiguous(), b_hh
        else:
            mm_add, w_hh_t, bias = (
                _mm_add_bf16,
                w_hh.transpose(1, 2).contiguous().to(mm_dtype),
                b_hh.unsqueeze(1),
            )
        states = x_proj.new_empty(dirs, rows, hidden)
        used = starts[-1] + counts[-1] if counts else 0
        states[:, used:] = 0  # rows past the packed steps (shape padding) stay zero
        # Per row: the hidden projection h W_hh^T + b_hh (its n part is needed backward) and the gates
        # r, z, n after their nonlinearities. Kept for every row when a backward pass will need them;
        # without gradients (validation) one step's worth is reused.
        h_proj_all = x_proj.new_empty(dirs, rows if save else batch, three_h)
        gates_all = x_proj.new_empty(dirs, rows if save else batch, three_h)
        h_zero = x_proj.new_zeros(dirs, batch, hidden)
        for t, n in enumerate(counts):
            row = starts[t]
            buf = row if save else 0
            h_prev = states[:, starts[t - 1] : starts[t - 1] + n] if t else h_zero
            h_proj = h_proj_all[:, buf : buf + n]
            gates = gates_all[:, buf : buf + n]
            x_p = x_proj[:, row : row + n]
            mm_add(bias, h_prev, w_hh_t, h_proj)
            r_z = gates[..., : 2 * hidden]  # r and z together: the same sum and sigmoid
            torch.add(x_p[..., hidden:], h_proj[..., : 2 * hidden], out=r_z)
            r_z.sigmoid_()
            cand = gates[..., 2 * hidden :]  # n
            torch.addcmul(x_p[..., :hidden], r_z[..., :hidden], h_proj[..., 2 * hidden :], out=cand)
            cand.tanh_()
            torch.lerp(cand, h_prev, r_z[..., hidden:], out=states[:, row : row + n])
        final = states[:, last]
        if save:
            ctx.save_for_backward(w_hh, states, h_proj_all, gates_all, prev)
            ctx.counts, ctx.starts = counts, starts
            ctx.mm_dtype = mm_dtype
        ctx.set_materialize_grads(False)
        return states, final

    @staticmethod
    def backward(ctx, g_states, g_final):  # type: ignore[override]
        w_hh, states, h_proj_all, gates_all, prev = ctx.saved_tensors
        counts, starts, mm_dtype = ctx.counts, ctx.starts, ctx.mm_dtype
        if mm_dtype is None:
            mm_add, w_hh_mm = _mm_add_fp32, w_hh
        else:
            mm_add, w_hh_mm = _mm_add_bf16, w_hh.to(mm_dtype)
        dirs, rows, hidden = states.shape
        batch = counts[0]
        # d_h: gradient of the loss with respect to the running hidden state (rows of one step)
        d_h = g_final.clone() if g_final is not None else states.new_zeros(dirs, batch, hidden)
        # gradients of the pre-activations, one buffer [n's input part | r | z | n-part of h W_hh^T + b_hh]:
        # [..., :3H] is the input projection's gradient, [..., H:] the hidden projection's (see above)
        d_all = states.new_empty(dirs, rows, 4 * hidden)
        d_all[:, starts[-1] + counts[-1] :] = 0
        h_zero = states.new_zeros(dirs, batch, hidden)
        one = states.new_ones(())  # 1 - x as addcmul(one, x, x, value=-1) etc.: no scalar tensor per op
        for t in range(len(counts) - 1, -1, -1):
            n, row = counts[t], starts[t]
            d_ht = d_h[:, :n]
            if g_states is not None:
                d_ht += g_states[:, row : row + n]
            gates = gates_all[:, row : row + n]
            r, z, cand = gates[..., :hidden], gates[..., hidden : 2 * hidden], gates[..., 2 * hidden :]
            h_proj_n = h_proj_all[:, row : row + n, 2 * hidden :]
            d_row = d_all[:, row : row + n]
            d_cand, d_gates = d_row[..., :hidden], d_row[..., hidden:]  # d_gates: [r | z | n_h]
            d_hz = d_ht * z
            # n = tanh(.) -> d_n_pre = dh (1 - z) (1 - n^2)
            torch.sub(d_ht, d_hz, out=d_cand)
            d_cand.mul_(torch.addcmul(one, cand, cand, value=-1))
            # z gate: dz_pre = dh (h_prev - n) z (1 - z)
            h_prev = states[:, starts[t - 1] : starts[t - 1] + n] if t else h_zero
            torch.mul(
                d_ht * (h_prev - cand),
                torch.addcmul(z, z, z, value=-1),
                out=d_gates[..., hidden : 2 * hidden],
            )
            # r gate: dr_pre = d_n_pre (h W_hn^T + b_hn) r (1 - r)
            torch.mul(d_cand * h_proj_n, torch.addcmul(r, r, r, value=-1), out=d_gates[..., :hidden])
            torch.mul(d_cand, r, out=d_gates[..., 2 * hidden :])
            # dh_{t-1} = dh z + d_gates W_hh
            mm_add(d_hz, d_gates, w_hh_mm, d_h[:, :n])
        g_x_proj = d_all[..., : 3 * hidden] if ctx.needs_input_grad[0] else None  # [n_in | r | z]: a view
        d_gates_all = d_all[..., hidden:]
        g_w = g_b = None
        if ctx.needs_input_grad[1]:
            # sum over steps t >= 1 of d_gates_t^T h_{t-1}; step 0 (h_{-1} = 0) adds nothing
            d_gates_later, h_prev_rows = d_gates_all[:, batch:], states[:, prev]
            if mm_dtype is not None:
                d_gates_later, h_prev_rows = d_gates_later.to(mm_dtype), h_prev_rows.to(mm_dtype)
            g_w = torch.stack([torch.mm(d_gates_later[i].t(), h_prev_rows[i]) for i in range(dirs)])
            g_w = g_w.to(w_hh.dtype)
        if ctx.needs_input_grad[2]:
            g_b = d_gates_all.sum(dim=1)
        return g_x_proj, g_w, g_b, None, None, None, None, None


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


def _input_proj_fp32(inputs: list[torch.Tensor], w_ih: torch.Tensor, b_ih: torch.Tensor) -> torch.Tensor:
    """x W_ih^T + b_ih for every packed row of each direction's input, in fp32: [D, N, 3H]."""
    return torch.stack([torch.addmm(b_ih[i], inputs[i], w_ih[i].t()) for i in range(len(inputs))])


def _input_proj_bf16(
    inputs: list[torch.Tensor], w_ih: torch.Tensor, b_ih: torch.Tensor, mm_dtype: torch.dtype
) -> torch.Tensor:
    """x W_ih^T + b_ih with bf16 operands; the bias is added to the product in fp32: [D, N, 3H]."""
    w_low = w_ih.to(mm_dtype)
    proj = torch.stack([torch.mm(inputs[i].to(mm_dtype), w_low[i].t()) for i in range(len(inputs))])
    return proj.float() + b_ih.unsqueeze(1)


def gru_final_states(
    gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor, training: bool, mm_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The final states of `gru`'s last layer (all directions) for padded `x`, via `_GRUScan`.

    Equal to running `gru` over the packed sequence; padding past a drawing's length is never read.
    `mm_dtype=torch.bfloat16` runs the matrix products in bf16 while hidden states, gates and gradients
    stay fp32; the trainer asks for it where bf16 products measure >= 1.25x fp32 (`devices.cpu_bf16_speedup`:
    0.5x to 4.8x on the machines measured so far).
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
    # Packed layout (the picture above `_mm_add_fp32`): row of (step t, sorted drawing i) = pos[t, i]
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
        inputs = [packed, packed[flip]]
    else:
        inputs = [packed]
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
            if mm_dtype is None:
                x_proj = _input_proj_fp32(inputs, w_ih, b_ih)
            else:
                x_proj = _input_proj_bf16(inputs, w_ih, b_ih, mm_dtype)
            states, final = _GRUScan.apply(x_proj, w_hh, b_hh, counts, starts, last, prev, mm_dtype)
            if layer < gru.num_layers - 1:
                if training and gru.dropout > 0:
                    states = _dropout(states, gru.dropout)
                if dirs == 2:
                    # the next layer's input at each step: [forward state | reverse state] of that step,
                    # in the forward time order for the forward direction and flipped for the reverse one
                    fwd_in_rev_time = _Flip.apply(states[0], flip)
                    rev_in_fwd_time = _Flip.apply(states[1], flip)
                    inputs = [
                        torch.cat([states[0], rev_in_fwd_time], -1),
                        torch.cat([fwd_in_rev_time, states[1]], -1),
                    ]
                else:
                    inputs = [states[0]]
    final_cat = torch.cat(list(final), dim=-1)  # [B, D * H], sorted order
    return final_cat[torch.argsort(order_d)]
