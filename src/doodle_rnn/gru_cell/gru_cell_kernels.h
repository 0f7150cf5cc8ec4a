// The element-wise side of one GRU step, one packed row at a time, for the compiled cell (gru_cell.cpp).
//
// Plain C++ with no torch types, so a test program or `-fopt-info-vec` can compile it alone. Every loop
// runs over the H hidden units of one row with no branch and no library call inside (the optional parts
// are template switches, exp and tanh are written out below), so the compiler vectorises it.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace gru_cell {

using bf16_bits = uint16_t;  // a bfloat16 as its 16 bits (c10::BFloat16 has the same layout)

inline float bf16_to_float(bf16_bits v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline bf16_bits float_to_bf16(float f) {  // round to nearest even, as torch's .to(torch.bfloat16)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<bf16_bits>(f != f ? 0x7FC0u : rounded);
}

// exp for float in a form the compiler vectorises (no libm call): Cephes' expf (range reduction by
// ln 2, a degree-5 polynomial, the power of two built from its exponent bits), relative error ~1e-7.
inline float exp_f(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float round = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  float fx = (x * 1.44269504088896341f + round) - round;
  float r = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }

// tanh for float: Cephes' tanhf (an odd polynomial below 0.625, 1 - 2 / (e^2|x| + 1) above), both
// computed and one selected, so the loop has no branch.
inline float tanh_(float x) {
  float a = std::fabs(x);
  float big = 1.0f - 2.0f / (exp_f(a + a) + 1.0f);
  big = std::copysign(big, x);
  float z = x * x;
  float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                  1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  return a > 0.625f ? big : small;
}

// double (gradcheck and the float64 equality tests): the library's functions; speed does not matter.
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

template <typename T>
inline T load(const T* p, int64_t j) { return p[j]; }
inline float load(const bf16_bits* p, int64_t j) { return bf16_to_float(p[j]); }

// One row forward. hp: h_{t-1} W_hh^T without the bias ([r | z | n], T or bf16 bits); xp: the input
// projection ([n | r | z]); writes the new state, the gates [r | z | n], the n-part of h W_hh^T + b_hh
// (read backward) and, with LOW, the new state in bf16 for the next step's product.
template <typename T, typename HP, bool LOW>
inline void gates_row(int64_t H, const T* __restrict xp, const HP* __restrict hp, const T* __restrict b,
                      const T* __restrict h_prev, T* __restrict h_out, T* __restrict r_out,
                      T* __restrict z_out, T* __restrict n_out, T* __restrict hn_out,
                      bf16_bits* __restrict h_low) {
  for (int64_t j = 0; j < H; ++j) {
    T r = sigmoid(xp[H + j] + load(hp, j) + b[j]);
    T z = sigmoid(xp[2 * H + j] + load(hp, H + j) + b[H + j]);
    T hn = load(hp, 2 * H + j) + b[2 * H + j];
    T n = tanh_(xp[j] + r * hn);
    T out = n + z * (h_prev[j] - n);
    h_out[j] = out;
    r_out[j] = r;
    z_out[j] = z;
    n_out[j] = n;
    hn_out[j] = hn;
    if constexpr (LOW) h_low[j] = float_to_bf16(out);
  }
}

// The same with the gates of the row as one [r | z | n] block.
template <typename T, typename HP, bool LOW>
inline void gates_row(int64_t H, const T* xp, const HP* hp, const T* b, const T* h_prev, T* h_out, T* gates,
                      T* hn_out, bf16_bits* h_low) {
  gates_row<T, HP, LOW>(H, xp, hp, b, h_prev, h_out, gates, gates + H, gates + 2 * H, hn_out, h_low);
}

// One row backward. dh: the state's gradient (read, plus `prod` with PROD and `g_state` with GSTATE;
// then replaced by dh z, the part that reaches h_{t-1} directly); writes d_n_in, d_r, d_z, d_n_h (the
// four H-wide parts of the row's [d_n_in | d_r | d_z | d_n_h], passed apart so that the compiler knows
// they do not overlap), adds them to the bias-gradient sums s_*, and with LOW writes [d_r | d_z | d_n_h]
// in bf16 (l_*) for the next product.
template <typename T, typename P, bool PROD, bool GSTATE, bool LOW>
inline void grad_row(int64_t H, T* __restrict dh, const P* __restrict prod, const T* __restrict g_state,
                     const T* __restrict r_, const T* __restrict z_, const T* __restrict n_,
                     const T* __restrict hn, const T* __restrict h_prev, T* __restrict d_n_in,
                     T* __restrict d_r_out, T* __restrict d_z_out, T* __restrict d_nh_out,
                     double* __restrict s_n, double* __restrict s_r, double* __restrict s_z,
                     double* __restrict s_nh, bf16_bits* __restrict l_r, bf16_bits* __restrict l_z,
                     bf16_bits* __restrict l_nh) {
  for (int64_t j = 0; j < H; ++j) {
    T g = dh[j];
    if constexpr (PROD) g += load(prod, j);
    if constexpr (GSTATE) g += g_state[j];
    T r = r_[j], z = z_[j], n = n_[j];
    T d_n = (g - g * z) * (T(1) - n * n);
    T d_z = g * (h_prev[j] - n) * (z - z * z);
    T d_r = d_n * hn[j] * (r - r * r);
    T d_nh = d_n * r;
    d_n_in[j] = d_n;
    d_r_out[j] = d_r;
    d_z_out[j] = d_z;
    d_nh_out[j] = d_nh;
    s_n[j] += d_n;
    s_r[j] += d_r;
    s_z[j] += d_z;
    s_nh[j] += d_nh;
    dh[j] = g * z;
    if constexpr (LOW) {
      l_r[j] = float_to_bf16(d_r);
      l_z[j] = float_to_bf16(d_z);
      l_nh[j] = float_to_bf16(d_nh);
    }
  }
}

// The same for a row laid out as in the cell: gates [r | z | n], d [d_n_in | d_r | d_z | d_n_h], acc
// [4H], d_low [3H] (with LOW).
template <typename T, typename P, bool PROD, bool GSTATE, bool LOW>
inline void grad_row(int64_t H, T* dh, const P* prod, const T* g_state, const T* gates, const T* hn,
                     const T* h_prev, T* d, double* acc, bf16_bits* d_low) {
  bf16_bits* l = LOW ? d_low : nullptr;
  grad_row<T, P, PROD, GSTATE, LOW>(H, dh, prod, g_state, gates, gates + H, gates + 2 * H, hn, h_prev, d, d + H,
                                    d + 2 * H, d + 3 * H, acc, acc + H, acc + 2 * H, acc + 3 * H, l,
                                    LOW ? l + H : nullptr, LOW ? l + 2 * H : nullptr);
}

}  // namespace gru_cell
