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


class _GRUScan(torch.autograd.Function):
    """The recurrent part of one GRU layer, all directions at once, over packed, length-sorted drawings.

    Rows are packed like a `PackedSequence`: step t's rows are `off[t] : off[t] + counts[t]`, and
    because drawings are sorted longest first, the drawings running at step t are the first
    `counts[t]` of step t - 1 (so a step's previous states are a prefix of the previous step's rows).
    gi: [D, N, 3H] input projections (x W_ih^T + b_ih), each direction in its own time order;
    w_hh: [D, 3H, H]; b_hh: [D, 3H]; last: [B] the packed row of each drawing's final step;
    prev: [N - counts[0]] the packed row of the previous step for every row after step 0. N may
    exceed the packed steps (shape padding, see `_padded_rows`): those tail rows stay zero, and their
    `prev` entries point anywhere. Returns the outputs [D, N, H] and the final states [D, B, H].

    Why packed: nothing is computed or stored for padding. With randomly composed batches the longest
    drawing is about 2.5x the mean, so padded buffers were mostly zeros, and allocating them (hundreds
    of MB per batch, fresh pages from the kernel each time) cost as much as the arithmetic.
    Why a hand-written backward: autograd over a Python time loop would compute small weight-gradient
    products at every step; here the backward loop only carries the hidden-state gradient and the
    weight gradients come from one large product over all steps afterwards.
    """

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, counts, off, last, prev, mm_dtype=None):  # type: ignore[override]
        d, rows, g = gi.shape
        h = g // 3
        b = counts[0] if counts else 0
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        # fp32: per-direction 2-D products (MKL reads strided rows directly, where baddbmm copies, ~1.8x
        # slower); bf16: one batched product for all directions (oneDNN; ~14% faster than per direction).
        wt = w_hh.transpose(1, 2).contiguous()
        wt_m = wt.to(mm_dtype) if mm_dtype is not None else None
        b_hh_b = b_hh.unsqueeze(1)
        out = gi.new_empty(d, rows, h)
        used = off[-1] + counts[-1] if counts else 0
        out[:, used:] = 0  # rows past the packed steps (shape padding) stay zero
        # h W_hh^T + b_hh (its n part is needed backward) and r, z, n after their nonlinearities; without
        # gradients one step's worth is reused.
        gh_all = gi.new_empty(d, rows if save else b, g)
        act_all = gi.new_empty(d, rows if save else b, g)
        h0 = gi.new_zeros(d, b, h)
        for t, n in enumerate(counts):
            o = off[t]
            s = o if save else 0
            hp = out[:, off[t - 1] : off[t - 1] + n] if t else h0
            gh = gh_all[:, s : s + n]
            act = act_all[:, s : s + n]
            gx = gi[:, o : o + n]
            if wt_m is None:
                for i in range(d):
                    torch.addmm(b_hh[i], hp[i], wt[i], out=gh[i])
            else:  # low-precision products (all directions in one), fp32 state and gates
                torch.add(b_hh_b, torch.bmm(hp.to(mm_dtype), wt_m), out=gh)
            rz = act[..., : 2 * h]
            torch.add(gx[..., : 2 * h], gh[..., : 2 * h], out=rz)
            rz.sigmoid_()
            nn_ = act[..., 2 * h :]
            torch.addcmul(gx[..., 2 * h :], rz[..., :h], gh[..., 2 * h :], out=nn_)
            nn_.tanh_()
            torch.lerp(nn_, hp, rz[..., h:], out=out[:, o : o + n])
        final = out[:, last]
        if save:
            ctx.save_for_backward(w_hh, out, gh_all, act_all, prev)
            ctx.counts, ctx.off = counts, off
            ctx.mm_dtype = mm_dtype
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, g_out, g_final):  # type: ignore[override]
        w_hh, out, gh_all, act_all, prev = ctx.saved_tensors
        counts, off = ctx.counts, ctx.off
        mdt = ctx.mm_dtype
        w_m = w_hh.to(mdt) if mdt is not None else w_hh
        d, rows, h = out.shape
        b = counts[0]
        dh = g_final.clone() if g_final is not None else out.new_zeros(d, b, h)
        dgh_all = out.new_empty(d, rows, 3 * h)
        dn_all = out.new_empty(d, rows, h)
        used = off[-1] + counts[-1]
        dgh_all[:, used:] = 0
        dn_all[:, used:] = 0
        zeros = out.new_zeros(d, b, h)
        for t in range(len(counts) - 1, -1, -1):
            n, o = counts[t], off[t]
            dht = dh[:, :n]
            if g_out is not None:
                dht += g_out[:, o : o + n]
            act = act_all[:, o : o + n]
            r, z, nn_ = act[..., :h], act[..., h : 2 * h], act[..., 2 * h :]
            hn = gh_all[:, o : o + n, 2 * h :]
            dgh = dgh_all[:, o : o + n]
            dn = dn_all[:, o : o + n]
            # n' = tanh(.) -> dn_pre = dh (1 - z) (1 - n^2)
            torch.mul(dht, 1 - z, out=dn)
            dn.mul_(1 - nn_ * nn_)
            # z gate: dz_pre = dh (h_prev - n) z (1 - z)
            hp = out[:, off[t - 1] : off[t - 1] + n] if t else zeros
            torch.mul(dht * (hp - nn_), z * (1 - z), out=dgh[..., h : 2 * h])
            # r gate: dr_pre = dn_pre hn r (1 - r)
            torch.mul(dn * hn, r * (1 - r), out=dgh[..., :h])
            torch.mul(dn, r, out=dgh[..., 2 * h :])
            carry = dht * z
            if mdt is None:
                for i in range(d):
                    torch.addmm(carry[i], dgh[i], w_hh[i], out=dh[i, :n])
            else:
                torch.add(carry, torch.bmm(dgh.to(mdt), w_m), out=dh[:, :n])
        g_gi = torch.cat([dgh_all[..., : 2 * h], dn_all], dim=-1) if ctx.needs_input_grad[0] else None
        g_w = g_b = None
        if ctx.needs_input_grad[1]:
            # sum over steps t >= 1 of dgh_t^T h_{t-1}; step 0 (h_{-1} = 0) adds nothing
            a, b_ = dgh_all[:, b:], out[:, prev]
            if mdt is not None:
                a, b_ = a.to(mdt), b_.to(mdt)
            g_w = torch.stack([torch.mm(a[i].t(), b_[i]) for i in range(d)]).to(w_hh.dtype)
        if ctx.needs_input_grad[2]:
            g_b = dgh_all.sum(dim=1)
        return g_gi, g_w, g_b, None, None, None, None, None


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


def gru_final_states(
    gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor, training: bool, mm_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The final states of `gru`'s last layer (all directions) for padded `x`, via `_GRUScan`.

    Equal to running `gru` over the packed sequence; padding past a drawing's length is never read.
    `mm_dtype=torch.bfloat16` runs the matrix products in bf16 (about 4x the fp32 rate on CPUs with
    AVX512-BF16/AMX) while hidden states, gates and gradients stay fp32.
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
    off = (torch.cumsum(counts_t, 0) - counts_t).tolist()
    # Packed layout (time-major, running drawings only): row of (t, i) = pos[t, i]
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
    final = None
    with torch.autocast(dev.type, enabled=False):
        for layer in range(gru.num_layers):
            w_ih = torch.stack([getattr(gru, f"weight_ih_l{layer}{s}") for s in sfx])
            w_hh = torch.stack([getattr(gru, f"weight_hh_l{layer}{s}") for s in sfx])
            b_ih = torch.stack([getattr(gru, f"bias_ih_l{layer}{s}") for s in sfx])
            b_hh = torch.stack([getattr(gru, f"bias_hh_l{layer}{s}") for s in sfx])
            if mm_dtype is None:
                gi = torch.stack([torch.addmm(b_ih[i], inputs[i], w_ih[i].t()) for i in range(dirs)])
            else:
                wl = w_ih.to(mm_dtype)
                gi = torch.stack([torch.mm(inputs[i].to(mm_dtype), wl[i].t()) for i in range(dirs)])
                gi = gi.float() + b_ih.unsqueeze(1)
            out, final = _GRUScan.apply(gi, w_hh, b_hh, counts, off, last, prev, mm_dtype)
            if layer < gru.num_layers - 1:
                if training and gru.dropout > 0:
                    out = _dropout(out, gru.dropout)
                if dirs == 2:
                    o0f, o1f = _Flip.apply(out[0], flip), _Flip.apply(out[1], flip)
                    inputs = [torch.cat([out[0], o1f], -1), torch.cat([o0f, out[1]], -1)]
                else:
                    inputs = [out[0]]
    states = torch.cat(list(final), dim=-1)  # [B, D * H], sorted order
    return states[torch.argsort(order_d)]
