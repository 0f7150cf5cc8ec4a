"""The recurrent classifier: strokes-as-steps in, class logits out.

`GRUClassifier` keeps the reference project's parameter names and shapes (`gru.weight_ih_l0`, ...,
`norm.weight`, `fc.weight`) so the reference's checkpoints load unchanged: the weights live in an
`nn.GRU` (or `nn.LSTM`) called `gru`.

Two ways to run the same weights, with the same numbers (tests hold them to 1e-5):

- `packed`: `nn.GRU` over a packed sequence, the reference's way; cuDNN on CUDA, and the path used
  when tracing/exporting (ONNX) and for LSTM.
- `fused` (the CPU default for GRU): `_GRUScan` below, a GRU written for this shape of work. The
  batch is sorted by length and each step only updates the drawings still running (no padding
  compute, like packing, but with whole-batch matrix products); the reverse direction runs forward
  over each drawing flipped within its own length, so it starts at the drawing's true end; input
  projections are one matrix product over all steps, both directions run in one batched product per
  step, and the backward pass computes weight gradients in one product after the time loop.

Either way a drawing's logits never depend on how much padding its batch needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
        # The attribute is called `gru` for both kinds so parameter names match the reference's.
        self.gru = rnn_cls(
            input_size=cfg.input_size,
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
        # auto: the fused kernel (with its hand-written backward) only pays off for training on CPU; for
        # inference the packed nn.GRU was faster (benchmarks: 1,703 vs 973-1,135 drawings/s at batch 192)
        return self.impl == "fused" or (x.device.type == "cpu" and torch.is_grad_enabled())

    def final_states(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Last layer's final hidden state(s), both directions concatenated: [B, H * dirs]."""
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


class _GRUScan(torch.autograd.Function):
    """The recurrent part of one GRU layer, all directions at once, over length-sorted drawings.

    gi: [D, T, B, 3H] input projections (x W_ih^T + b_ih), each direction in its own time order;
    w_hh: [D, 3H, H]; b_hh: [D, 3H]; counts[t]: rows still running at step t (rows are sorted by
    length, longest first, so the running rows are always a prefix). Returns the outputs [D, T, B, H]
    (zero past each drawing's end) and each drawing's final state [D, B, H].

    Why a hand-written backward: autograd over a Python time loop would compute small weight-gradient
    products at every step; here the backward loop only carries the hidden-state gradient and the
    weight gradients come from one large product over all steps afterwards.
    """

    @staticmethod
    def forward(ctx, gi, w_hh, b_hh, counts, last, mm_dtype=None):  # type: ignore[override]
        d, t_max, b, g = gi.shape
        h = g // 3
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        # Per-direction 2-D products: MKL reads strided rows directly, where baddbmm copies (~1.8x slower).
        wt = w_hh.transpose(1, 2).contiguous()
        wt_m = wt.to(mm_dtype) if mm_dtype is not None else None
        out = gi.new_zeros(d, t_max, b, h)
        steps = t_max if save else 1
        gh_all = gi.new_empty(d, steps, b, g)  # h W_hh^T + b_hh per step (its n part is needed backward)
        act_all = gi.new_empty(d, steps, b, g)  # r, z, n after their nonlinearities
        h0 = gi.new_zeros(d, b, h)
        for t in range(t_max):
            n = counts[t]
            s = t if save else 0
            hp = out[:, t - 1, :n] if t else h0[:, :n]
            gh = gh_all[:, s, :n]
            act = act_all[:, s, :n]
            gx = gi[:, t, :n]
            for i in range(d):
                if wt_m is None:
                    torch.addmm(b_hh[i], hp[i], wt[i], out=gh[i])
                else:  # low-precision product, fp32 state and gates
                    torch.add(b_hh[i], torch.mm(hp[i].to(mm_dtype), wt_m[i]), out=gh[i])
            rz = act[..., : 2 * h]
            torch.add(gx[..., : 2 * h], gh[..., : 2 * h], out=rz)
            rz.sigmoid_()
            nn_ = act[..., 2 * h :]
            torch.addcmul(gx[..., 2 * h :], rz[..., :h], gh[..., 2 * h :], out=nn_)
            nn_.tanh_()
            torch.lerp(nn_, hp, rz[..., h:], out=out[:, t, :n])
        final = out[:, last, torch.arange(b, device=gi.device)]
        if save:
            ctx.save_for_backward(w_hh, out, gh_all, act_all)
            ctx.counts = counts
            ctx.mm_dtype = mm_dtype
        ctx.set_materialize_grads(False)
        return out, final

    @staticmethod
    def backward(ctx, g_out, g_final):  # type: ignore[override]
        w_hh, out, gh_all, act_all = ctx.saved_tensors
        counts = ctx.counts
        mdt = ctx.mm_dtype
        w_m = w_hh.to(mdt) if mdt is not None else w_hh
        d, t_max, b, h = out.shape
        dh = g_final.clone() if g_final is not None else out.new_zeros(d, b, h)
        dgh_all = out.new_zeros(d, t_max, b, 3 * h)
        dn_all = out.new_zeros(d, t_max, b, h)
        for t in range(t_max - 1, -1, -1):
            n = counts[t]
            if n == 0:
                continue
            dht = dh[:, :n]
            if g_out is not None:
                dht += g_out[:, t, :n]
            act = act_all[:, t, :n]
            r, z, nn_ = act[..., :h], act[..., h : 2 * h], act[..., 2 * h :]
            hn = gh_all[:, t, :n, 2 * h :]
            dgh = dgh_all[:, t, :n]
            dn = dn_all[:, t, :n]
            # n' = tanh(.) -> dn_pre = dh (1 - z) (1 - n^2)
            torch.mul(dht, 1 - z, out=dn)
            dn.mul_(1 - nn_ * nn_)
            # z gate: dz_pre = dh (h_prev - n) z (1 - z)
            hp = out[:, t - 1, :n] if t else torch.zeros_like(dht)
            torch.mul(dht * (hp - nn_), z * (1 - z), out=dgh[..., h : 2 * h])
            # r gate: dr_pre = dn_pre hn r (1 - r)
            torch.mul(dn * hn, r * (1 - r), out=dgh[..., :h])
            torch.mul(dn, r, out=dgh[..., 2 * h :])
            carry = dht * z
            for i in range(d):
                if mdt is None:
                    torch.addmm(carry[i], dgh[i], w_hh[i], out=dh[i, :n])
                else:
                    torch.add(carry[i], torch.mm(dgh[i].to(mdt), w_m[i]), out=dh[i, :n])
        g_gi = torch.cat([dgh_all[..., : 2 * h], dn_all], dim=-1) if ctx.needs_input_grad[0] else None
        g_w = g_b = None
        if ctx.needs_input_grad[1] and t_max > 1:
            a, b_ = dgh_all[:, 1:].reshape(d, -1, 3 * h), out[:, :-1].reshape(d, -1, h)
            if mdt is not None:
                a, b_ = a.to(mdt), b_.to(mdt)
            g_w = torch.stack([torch.mm(a[i].t(), b_[i]) for i in range(d)]).to(w_hh.dtype)
        elif ctx.needs_input_grad[1]:
            g_w = w_hh.new_zeros(w_hh.shape)
        if ctx.needs_input_grad[2]:
            g_b = dgh_all.sum(dim=(1, 2))
        return g_gi, g_w, g_b, None, None, None


def gru_final_states(
    gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor, training: bool, mm_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The final states of `gru`'s last layer (all directions) for padded `x`, via `_GRUScan`.

    Equal to running `gru` over the packed sequence; padding past a drawing's length is never read.
    `mm_dtype=torch.bfloat16` runs the matrix products in bf16 (about 4x the fp32 rate on CPUs with
    AVX512-BF16/AMX) while hidden states, gates and gradients stay fp32.
    """
    bsz = x.shape[0]
    lens_cpu = lengths.detach().to("cpu", torch.int64)
    order = torch.argsort(lens_cpu, descending=True, stable=True)
    lens = lens_cpu[order]
    t_max = int(lens[0]) if bsz else 0
    counts = (bsz - torch.cumsum(torch.bincount(lens, minlength=t_max + 1), 0))[:t_max].tolist()
    dev = x.device
    order_d = order.to(dev)
    xs = (
        x[order_d, :t_max].transpose(0, 1).to(gru.weight_hh_l0.dtype)
    )  # [T, B, F] time-major, longest drawing first
    dirs = 2 if gru.bidirectional else 1
    if dirs == 2:
        t_idx = torch.arange(t_max).unsqueeze(1)
        lrow = lens.unsqueeze(0)
        flip = torch.where(t_idx < lrow, lrow - 1 - t_idx, t_idx).to(dev)  # [T, B], an involution

        def flip_time(a: torch.Tensor) -> torch.Tensor:
            return a.gather(0, flip.unsqueeze(-1).expand_as(a))

        inputs = [xs, flip_time(xs)]
    else:
        inputs = [xs]
    last = (lens - 1).clamp_min(0).to(dev)
    sfx = ["", "_reverse"][:dirs]
    final = None
    with torch.autocast(dev.type, enabled=False):
        for layer in range(gru.num_layers):
            w_ih = torch.stack([getattr(gru, f"weight_ih_l{layer}{s}") for s in sfx])
            w_hh = torch.stack([getattr(gru, f"weight_hh_l{layer}{s}") for s in sfx])
            b_ih = torch.stack([getattr(gru, f"bias_ih_l{layer}{s}") for s in sfx])
            b_hh = torch.stack([getattr(gru, f"bias_hh_l{layer}{s}") for s in sfx])
            inp = torch.stack(inputs)  # [D, T, B, F]
            d, t, b, f = inp.shape
            flat = inp.reshape(d, t * b, f)
            if mm_dtype is None:
                gi = torch.stack([torch.addmm(b_ih[i], flat[i], w_ih[i].t()) for i in range(d)])
            else:
                fl, wl = flat.to(mm_dtype), w_ih.to(mm_dtype)
                gi = torch.stack([torch.mm(fl[i], wl[i].t()) for i in range(d)]).float() + b_ih.unsqueeze(1)
            out, final = _GRUScan.apply(gi.view(d, t, b, -1), w_hh, b_hh, counts, last, mm_dtype)
            if layer < gru.num_layers - 1:
                if training and gru.dropout > 0:
                    out = F.dropout(out, gru.dropout, training=True)
                if dirs == 2:
                    inputs = [
                        torch.cat([out[0], flip_time(out[1])], -1),
                        torch.cat([flip_time(out[0]), out[1]], -1),
                    ]
                else:
                    inputs = [out[0]]
    states = torch.cat(list(final), dim=-1)  # [B, D * H], sorted order
    return states[torch.argsort(order_d)]
