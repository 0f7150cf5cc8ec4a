"""Today's kernel in Python: the fused GRU's time loop as ~10 tensor operations per step.

The fallback where the compiled cell (`gru_cell.cpp`) cannot be built or loaded, and the reference it
is tested against. Same interface as `compiled.py`: `forward` returns the states and what `backward`
needs; `backward` returns the pre-activation gradients [D, N, 4H] and the gradient of b_hh.
"""

from __future__ import annotations

import torch


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


def forward(x_proj, w_hh, b_hh, counts, starts, mm_dtype, save):
    """The states [D, N, H] and, when `save`, the per-row tensors the backward pass reads."""
    dirs, rows, three_h = x_proj.shape
    hidden = three_h // 3
    batch = counts[0] if counts else 0
    if mm_dtype is None:
        mm_add, w_hh_t, bias = _mm_add_fp32, w_hh.transpose(1, 2).contiguous(), b_hh
    else:
        mm_add, w_hh_t, bias = _mm_add_bf16, w_hh.transpose(1, 2).contiguous().to(mm_dtype), b_hh.unsqueeze(1)
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
    return states, (h_proj_all[..., 2 * hidden :], gates_all)


def backward(saved, states, w_hh, g_states, g_final, counts, starts, mm_dtype):
    """Gradients of the pre-activations [D, N, 4H] (layout [n_in | r | z | n_h]) and of b_hh [D, 3H]."""
    h_proj_n_all, gates_all = saved
    if mm_dtype is None:
        mm_add, w_hh_mm = _mm_add_fp32, w_hh
    else:
        mm_add, w_hh_mm = _mm_add_bf16, w_hh.to(mm_dtype)
    dirs, rows, hidden = states.shape
    batch = counts[0]
    # d_h: gradient of the loss with respect to the running hidden state (rows of one step)
    d_h = g_final.clone() if g_final is not None else states.new_zeros(dirs, batch, hidden)
    # gradients of the pre-activations, one buffer [n's input part | r | z | n-part of h W_hh^T + b_hh]:
    # [..., :3H] is the input projection's gradient, [..., H:] the hidden projection's (see model.py)
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
        h_proj_n = h_proj_n_all[:, row : row + n]
        d_row = d_all[:, row : row + n]
        d_cand, d_gates = d_row[..., :hidden], d_row[..., hidden:]  # d_gates: [r | z | n_h]
        d_hz = d_ht * z
        # n = tanh(.) -> d_n_pre = dh (1 - z) (1 - n^2)
        torch.sub(d_ht, d_hz, out=d_cand)
        d_cand.mul_(torch.addcmul(one, cand, cand, value=-1))
        # z gate: dz_pre = dh (h_prev - n) z (1 - z)
        h_prev = states[:, starts[t - 1] : starts[t - 1] + n] if t else h_zero
        torch.mul(
            d_ht * (h_prev - cand), torch.addcmul(z, z, z, value=-1), out=d_gates[..., hidden : 2 * hidden]
        )
        # r gate: dr_pre = d_n_pre (h W_hn^T + b_hn) r (1 - r)
        torch.mul(d_cand * h_proj_n, torch.addcmul(r, r, r, value=-1), out=d_gates[..., :hidden])
        torch.mul(d_cand, r, out=d_gates[..., 2 * hidden :])
        # dh_{t-1} = dh z + d_gates W_hh
        mm_add(d_hz, d_gates, w_hh_mm, d_h[:, :n])
    return d_all, d_all[..., hidden:].sum(dim=1)
