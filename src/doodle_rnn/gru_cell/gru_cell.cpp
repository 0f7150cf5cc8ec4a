// The time loop of the fused CPU GRU (doodle_rnn.gru_cell), forward and backward, in C++.
//
// Same layout and numbers as the Python kernel (python_kernel.py, and the picture in model.py): D
// directions, N packed rows, step t holds rows starts[t] .. starts[t] + counts[t], the input projection
// x_proj [D, N, 3H] has columns [n | r | z], W_hh's rows and b_hh are [r | z | n].
//
// What is compiled: the element-wise side of every step (the gates' sums, sigmoid, tanh and the state
// update forward; the gate derivatives, dh z and the bias-gradient sums backward) is one pass per row
// (gru_cell_kernels.h), in loops the compiler vectorises, instead of ~10 tensor operations per step;
// and the time loop itself, so no Python runs per step. The recurrent matrix products stay ATen's
// (MKL for fp32, oneDNN for bf16). With bf16 products the pass also writes the bf16 copy that the next
// product reads, so no separate cast runs.
//
// Threads: the directions are independent until the layer ends, so each runs its whole time loop on
// its own thread (at::parallel_for over directions; its products then run single-threaded inside).
// Two threads meet once per layer instead of at every operation of every step, which matters on a
// small, shared machine where a barrier waits for whichever thread was descheduled. The work of each
// direction is the same whatever the thread count, so results do not depend on it.

#include <torch/extension.h>

#include <cstdint>
#include <vector>

#include "gru_cell_kernels.h"

namespace {

using gru_cell::bf16_bits;
using gru_cell::gates_row;
using gru_cell::grad_row;

inline bf16_bits* bits(const at::Tensor& t) { return reinterpret_cast<bf16_bits*>(t.data_ptr<at::BFloat16>()); }

// fn(d) for every direction: one thread each where there are threads, inline for one direction.
template <typename F>
void each_direction(int64_t D, const F& fn) {
  if (D == 1) {
    fn(0);
    return;
  }
  at::parallel_for(0, D, 1, [&](int64_t d0, int64_t d1) {
    for (int64_t d = d0; d < d1; ++d) fn(d);
  });
}

// One direction's tensors (views of the layer's [D, ...] buffers) and sizes.
struct Steps {
  const std::vector<int64_t>& counts;
  const std::vector<int64_t>& starts;
  int64_t steps() const { return static_cast<int64_t>(counts.size()); }
};

// Forward over all steps of one direction. x: [N, 3H]; w_t: [H, 3H] (fp32/fp64, or bf16 products);
// b: [3H]; st: [N, H] states out; gates [K, 3H] and hn [K, H] out, K = N when saved, else B (reused).
template <typename T>
void forward_direction(const Steps& s, const at::Tensor& x, const at::Tensor& w_t, const at::Tensor& b,
                       const at::Tensor& st, const at::Tensor& gates, const at::Tensor& hn, bool save) {
  const int64_t H = st.size(1), B = s.counts[0];
  const bool low = w_t.scalar_type() == at::kBFloat16;
  auto opts = st.options();
  at::Tensor hp = at::empty({B, 3 * H}, low ? opts.dtype(at::kBFloat16) : opts);  // h_{t-1} W_hh^T
  at::Tensor h_low = low ? at::empty({B, H}, opts.dtype(at::kBFloat16)) : at::Tensor();
  at::Tensor zeros = at::zeros({3 * H}, opts);  // h_{-1} and its product
  const T *xp = x.data_ptr<T>(), *bp = b.data_ptr<T>(), *zero = zeros.data_ptr<T>();
  T *sp = st.data_ptr<T>(), *gp = gates.data_ptr<T>(), *hnp = hn.data_ptr<T>();
  for (int64_t t = 0; t < s.steps(); ++t) {
    const int64_t n = s.counts[t], row = s.starts[t], prow = t ? s.starts[t - 1] : 0, k = save ? row : 0;
    if (t) {
      at::Tensor out = hp.narrow(0, 0, n);
      at::mm_out(out, low ? h_low.narrow(0, 0, n) : st.narrow(0, prow, n), w_t);
    }
    for (int64_t i = 0; i < n; ++i) {
      const T* h_prev = t ? sp + (prow + i) * H : zero;
      T* out = sp + (row + i) * H;
      T* g = gp + (k + i) * 3 * H;
      T* hn_row = hnp + (k + i) * H;
      if constexpr (std::is_same_v<T, float>) {
        if (low && t) {
          gates_row<T, bf16_bits, true>(H, xp + (row + i) * 3 * H, bits(hp) + i * 3 * H, bp, h_prev, out, g, hn_row,
                                        bits(h_low) + i * H);
          continue;
        }
      }
      gates_row<T, T, false>(H, xp + (row + i) * 3 * H, t ? hp.data_ptr<T>() + i * 3 * H : zero, bp, h_prev, out,
                             g, hn_row, nullptr);
      if constexpr (std::is_same_v<T, float>) {
        if (low) {  // step 0 (no product before it): the bf16 copy of the state for the next product
          for (int64_t j = 0; j < H; ++j) bits(h_low)[i * H + j] = gru_cell::float_to_bf16(out[j]);
        }
      }
    }
  }
}

// Rows i0 .. i1 of one step's gate derivatives (see grad_row), the variant chosen once per call.
template <typename T, typename P, bool PROD, bool GSTATE, bool LOW>
void grad_rows(int64_t H, int64_t i0, int64_t i1, int64_t row, const T* h_prev0, bool first, T* dh, const P* prod,
               const T* gs, const T* ga, const T* hn, T* da, double* acc, bf16_bits* dl) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t r = row + i;
    grad_row<T, P, PROD, GSTATE, LOW>(H, dh + i * H, PROD ? prod + i * H : nullptr, GSTATE ? gs + r * H : nullptr,
                                      ga + r * 3 * H, hn + r * H, first ? h_prev0 : h_prev0 + i * H, da + r * 4 * H,
                                      acc, LOW ? dl + i * 3 * H : nullptr);
  }
}

template <typename T, typename P, bool PROD, bool LOW>
void grad_rows(bool with_gs, int64_t H, int64_t i0, int64_t i1, int64_t row, const T* h_prev0, bool first, T* dh,
               const P* prod, const T* gs, const T* ga, const T* hn, T* da, double* acc, bf16_bits* dl) {
  if (with_gs) {
    grad_rows<T, P, PROD, true, LOW>(H, i0, i1, row, h_prev0, first, dh, prod, gs, ga, hn, da, acc, dl);
  } else {
    grad_rows<T, P, PROD, false, LOW>(H, i0, i1, row, h_prev0, first, dh, prod, gs, ga, hn, da, acc, dl);
  }
}

// Backward over all steps of one direction, last step first. d_h: [B, H] the running state gradient
// (starts as the final states' gradient); gs: [N, H] the outputs' gradient or undefined; w: [3H, H];
// da: [N, 4H] out; acc: [4H] (double) the bias-gradient sums out.
template <typename T>
void backward_direction(const Steps& s, const at::Tensor& d_h, const at::Tensor& gs, const at::Tensor& w,
                        const at::Tensor& st, const at::Tensor& hn, const at::Tensor& gates, const at::Tensor& da,
                        const at::Tensor& acc) {
  const int64_t H = st.size(1), B = s.counts[0];
  const bool low = w.scalar_type() == at::kBFloat16;
  auto opts = st.options();
  at::Tensor prod = low ? at::empty({B, H}, opts.dtype(at::kBFloat16)) : at::Tensor();  // d_gates W_hh
  at::Tensor d_low = low ? at::empty({B, 3 * H}, opts.dtype(at::kBFloat16)) : at::Tensor();
  at::Tensor zeros = at::zeros({H}, opts);
  T *dh = d_h.data_ptr<T>(), *dap = da.data_ptr<T>();
  const T *sp = st.data_ptr<T>(), *hnp = hn.data_ptr<T>(), *gp = gates.data_ptr<T>();
  const T* gsp = gs.defined() ? gs.data_ptr<T>() : nullptr;
  double* ac = acc.data_ptr<double>();
  for (int64_t t = s.steps() - 1; t >= 0; --t) {
    const int64_t n = s.counts[t], row = s.starts[t];
    const bool first = t == 0;
    const T* h_prev0 = first ? zeros.data_ptr<T>() : sp + s.starts[t - 1] * H;
    if constexpr (std::is_same_v<T, float>) {
      if (low) {
        // bf16: rows below counts[t + 1] add the later step's product d_gates W_hh from `prod`; the
        // rest (drawings whose last step this is) have none
        const int64_t p_rows = t < s.steps() - 1 ? s.counts[t + 1] : 0;
        const bf16_bits* pp = bits(prod);
        bf16_bits* dl = bits(d_low);
        grad_rows<T, bf16_bits, true, true>(gsp, H, 0, p_rows, row, h_prev0, first, dh, pp, gsp, gp, hnp, dap, ac, dl);
        grad_rows<T, bf16_bits, false, true>(gsp, H, p_rows, n, row, h_prev0, first, dh, pp, gsp, gp, hnp, dap, ac, dl);
        if (first) break;
        at::Tensor out = prod.narrow(0, 0, n);
        at::mm_out(out, d_low.narrow(0, 0, n), w);
        continue;
      }
    }
    grad_rows<T, T, false, false>(gsp, H, 0, n, row, h_prev0, first, dh, nullptr, gsp, gp, hnp, dap, ac, nullptr);
    if (first) break;  // the gradient for h_{-1} = 0 is not needed
    d_h.narrow(0, 0, n).addmm_(da.narrow(0, row, n).narrow(1, H, 3 * H), w);  // dh z + d_gates W_hh
  }
}

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x_proj, const at::Tensor& w_hh_t, const at::Tensor& b_hh,
                                     const std::vector<int64_t>& counts, const std::vector<int64_t>& starts,
                                     bool save) {
  const int64_t D = x_proj.size(0), N = x_proj.size(1), H = x_proj.size(2) / 3;
  const int64_t B = counts.empty() ? 0 : counts[0];
  auto opts = x_proj.options();
  at::Tensor states = at::empty({D, N, H}, opts);
  const int64_t used = counts.empty() ? 0 : starts.back() + counts.back();
  states.narrow(1, used, N - used).zero_();  // rows past the packed steps (shape padding) stay zero
  // Kept for every row when a backward pass will need them; without gradients one step's worth is reused.
  const int64_t kept = save ? N : B;
  at::Tensor gates = at::empty({D, kept, 3 * H}, opts);
  at::Tensor hn = at::empty({D, kept, H}, opts);
  if (!counts.empty()) {
    const Steps s{counts, starts};
    each_direction(D, [&](int64_t d) {
      forward_direction<T>(s, x_proj[d], w_hh_t[d], b_hh[d], states[d], gates[d], hn[d], save);
    });
  }
  return {states, hn, gates};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& g_states, const at::Tensor& g_final, const at::Tensor& w_hh,
                                      const at::Tensor& states, const at::Tensor& hn, const at::Tensor& gates,
                                      const std::vector<int64_t>& counts, const std::vector<int64_t>& starts) {
  const int64_t D = states.size(0), N = states.size(1), H = states.size(2), B = counts[0];
  auto opts = states.options();
  at::Tensor d_h = g_final.defined() ? g_final.contiguous().clone() : at::zeros({D, B, H}, opts);
  // [d_n_in | d_r | d_z | d_n_h] per row: [..., :3H] the input projection's gradient, [..., H:] the hidden one's
  at::Tensor d_all = at::empty({D, N, 4 * H}, opts);
  d_all.narrow(1, starts.back() + counts.back(), N - starts.back() - counts.back()).zero_();
  at::Tensor acc = at::zeros({D, 4 * H}, opts.dtype(at::kDouble));
  at::Tensor gs = g_states.defined() ? g_states.contiguous() : at::Tensor();
  const Steps s{counts, starts};
  each_direction(D, [&](int64_t d) {
    backward_direction<T>(s, d_h[d], gs.defined() ? gs[d] : at::Tensor(), w_hh[d], states[d], hn[d], gates[d],
                          d_all[d], acc[d]);
  });
  return {d_all, acc.to(states.scalar_type())};
}

std::vector<at::Tensor> scan_forward(const at::Tensor& x_proj, const at::Tensor& w_hh_t, const at::Tensor& b_hh,
                                     const std::vector<int64_t>& counts, const std::vector<int64_t>& starts,
                                     bool save) {
  TORCH_CHECK(x_proj.is_contiguous() && w_hh_t.is_contiguous() && b_hh.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(x_proj.device().is_cpu(), "the compiled GRU cell runs on CPU");
  if (x_proj.scalar_type() == at::kDouble) {
    TORCH_CHECK(w_hh_t.scalar_type() == at::kDouble, "float64 inputs need float64 products");
    return forward_impl<double>(x_proj, w_hh_t, b_hh, counts, starts, save);
  }
  TORCH_CHECK(x_proj.scalar_type() == at::kFloat, "float32 or float64 inputs");
  return forward_impl<float>(x_proj, w_hh_t, b_hh, counts, starts, save);
}

std::vector<at::Tensor> scan_backward(const c10::optional<at::Tensor>& g_states,
                                      const c10::optional<at::Tensor>& g_final, const at::Tensor& w_hh,
                                      const at::Tensor& states, const at::Tensor& hn, const at::Tensor& gates,
                                      const std::vector<int64_t>& counts, const std::vector<int64_t>& starts) {
  TORCH_CHECK(w_hh.is_contiguous() && states.is_contiguous(), "contiguous inputs");
  TORCH_CHECK(!counts.empty(), "no steps");
  at::Tensor gs = g_states.has_value() ? *g_states : at::Tensor();
  at::Tensor gf = g_final.has_value() ? *g_final : at::Tensor();
  if (states.scalar_type() == at::kDouble) return backward_impl<double>(gs, gf, w_hh, states, hn, gates, counts, starts);
  return backward_impl<float>(gs, gf, w_hh, states, hn, gates, counts, starts);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scan_forward", &scan_forward, "GRU time loop forward: states, n-part of h W_hh^T + b_hh, gates");
  m.def("scan_backward", &scan_backward, "GRU time loop backward: pre-activation gradients, bias sums");
}
