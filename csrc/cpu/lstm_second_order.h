// The two recurrences of the LSTM layer's second-order path (rnnkit/lstm_second_order.py), on
// the CPU: each step's product with W_hh through WeightB (MKL's packed sgemm, the weight packed
// once per call) and the step's pointwise work in one pass over its rows. The Python module
// arranges the inputs per step in processing order (step t is [t] of every [T, N, .] tensor)
// and keeps a loop of torch operations for the other backends; its docstring has the equations.
//
// Each reads the forward per step as check_forward() says (the workspace rows, c_prev, tanh(c))
// and forms the coefficients itself: k = ∂h/∂c = o (1 - τ²) and, per gate, coef =
// ∂(c or h)/∂(pre-activation) = [i(1-i) g, f(1-f) c_prev, (1-g²) i, o(1-o) τ].
//
//   lstm_adjoint_steps: per step, last to first,
//     dh_t = src_h[t] + (t < T-1 ? da_{t+1} W_hh : dh_last)
//     dc_t = dh_t k_t + src_c[t] + (t < T-1 ? dc_{t+1} f_{t+1} : dc_last)
//     da_t = [dc_t, dc_t, dc_t, dh_t] * coef_t + src_a[t]
//   lstm_tangent_steps: per step, first to last,
//     a_t = a_in[t] + h_{t-1} W_hh^T
//     c_t = f_t c_{t-1} + sum over gates i, f, g of a_t[gate] coef_t[gate]
//     h_t = a_t[o] coef_t[o] + k_t c_t
// with h_{-1} = h0, c_{-1} = c0. Absent sources (None) are zero.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "weights.h"

namespace rnnkit {
namespace cpu {
namespace second_order {

// A tensor of `shape`, contiguous, on the CPU, in `dtype`; named in the error.
inline void check(const char* op, const char* name, const at::Tensor& t,
                  c10::IntArrayRef shape, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.sizes() == shape &&
                  t.is_contiguous(),
              "rnnkit::", op, ": expected ", name, " as a contiguous CPU tensor of shape ", shape,
              " and dtype ", dtype, ", got shape ", t.sizes(), ", dtype ", t.scalar_type(),
              ", device ", t.device(), t.is_contiguous() ? "" : ", not contiguous");
}

inline void check(const char* op, const char* name, const std::optional<at::Tensor>& t,
                  c10::IntArrayRef shape, at::ScalarType dtype) {
  if (t.has_value()) check(op, name, *t, shape, dtype);
}

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

// Rows per task of the pointwise passes: small steps stay on one thread.
inline int64_t grain(int64_t H) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(H, 1)); }

// The forward of one layer call per step, as every kernel here reads it: steps [T, N, 5H], the
// workspace rows (i, f, g, o, c) in processing order; c_prev [T, N, H]; tau = tanh(c) [T, N, H].
// Checks them and returns T, N, H.
inline std::tuple<int64_t, int64_t, int64_t> check_forward(const char* op,
                                                           const at::Tensor& steps,
                                                           const at::Tensor& c_prev,
                                                           const at::Tensor& tau) {
  TORCH_CHECK(tau.dim() == 3, "rnnkit::", op, ": expected tau of shape [T, N, H], got ",
              tau.sizes());
  const int64_t T = tau.size(0), N = tau.size(1), H = tau.size(2);
  const auto dtype = tau.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "rnnkit::", op,
              ": expected float32 or float64, got ", dtype);
  check(op, "tau", tau, {T, N, H}, dtype);
  check(op, "steps", steps, {T, N, 5 * H}, dtype);
  check(op, "c_prev", c_prev, {T, N, H}, dtype);
  return {T, N, H};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> adjoint_steps(
    const std::optional<at::Tensor>& src_h, const std::optional<at::Tensor>& src_c,
    const std::optional<at::Tensor>& src_a, const std::optional<at::Tensor>& dh_last,
    const std::optional<at::Tensor>& dc_last, const at::Tensor& steps, const at::Tensor& c_prev,
    const at::Tensor& tau, const at::Tensor& w_hh) {
  constexpr const char* op = "lstm_adjoint_steps";
  const auto [T, N, H] = check_forward(op, steps, c_prev, tau);
  const int64_t G = 4 * H;
  const auto dtype = tau.scalar_type();
  check(op, "w_hh", w_hh, {G, H}, dtype);
  check(op, "src_h", src_h, {T, N, H}, dtype);
  check(op, "src_c", src_c, {T, N, H}, dtype);
  check(op, "src_a", src_a, {T, N, G}, dtype);
  check(op, "dh_last", dh_last, {N, H}, dtype);
  check(op, "dc_last", dc_last, {N, H}, dtype);
  at::Tensor da = at::empty({T, N, G}, tau.options());
  at::Tensor dh = at::empty({T, N, H}, tau.options());
  at::Tensor dc = at::empty({T, N, H}, tau.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, op, [&] {
    using V = scalar_t;
    const V *sh = data_or_null<V>(src_h), *sc = data_or_null<V>(src_c),
            *sa = data_or_null<V>(src_a), *hl = data_or_null<V>(dh_last),
            *cl = data_or_null<V>(dc_last);
    const V *ws = steps.const_data_ptr<V>(), *cpp = c_prev.const_data_ptr<V>(),
            *tp = tau.const_data_ptr<V>();
    V *dap = da.data_ptr<V>(), *dhp = dh.data_ptr<V>(), *dcp = dc.data_ptr<V>();
    // da_{t+1} [N, 4H] times W_hh [4H, H]: op(B) = W_hh as stored, K = 4H, Nc = H.
    const WeightB<V, V> w(/*trans_b=*/false, N, H, G, w_hh.const_data_ptr<V>(), H,
                          /*pack=*/T > 1);
    const int64_t NH = N * H, NG = N * G;
    // One step's pointwise pass over rows [n0, n1), with the sources that are present.
    const auto rows = [&]<bool kSrcC, bool kSrcA>(int64_t t, bool last, int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t r = t * N + n;  // the row, over all steps
        const V *__restrict__ i = ws + r * 5 * H, *__restrict__ f = i + H,
                *__restrict__ g = f + H, *__restrict__ o = g + H;
        const V* __restrict__ f_next = last ? nullptr : f + N * 5 * H;
        const V* __restrict__ dc_next =  // this row of dc_last (if any), or of dc_{t+1}
            last ? (cl != nullptr ? cl + n * H : nullptr) : dcp + (r + N) * H;
        const V *__restrict__ cpr = cpp + r * H, *__restrict__ ta = tp + r * H,
                *__restrict__ dhr = dhp + r * H;
        const V* __restrict__ scr = kSrcC ? sc + r * H : nullptr;
        const V* __restrict__ sar = kSrcA ? sa + r * G : nullptr;
        V* __restrict__ dcr = dcp + r * H;
        V* __restrict__ dar = dap + r * G;
        for (int64_t j = 0; j < H; ++j) {
          V v = dhr[j] * o[j] * (V(1) - ta[j] * ta[j]);  // dh k
          if constexpr (kSrcC) v += scr[j];
          if (f_next != nullptr) v += dc_next[j] * f_next[j];
          else if (dc_next != nullptr) v += dc_next[j];
          dcr[j] = v;
        }
        // da = [dc, dc, dc, dh] * [i(1-i) g, f(1-f) c_prev, (1-g²) i, o(1-o) τ] (+ src_a)
        for (int64_t j = 0; j < H; ++j) {
          V d = dcr[j] * i[j] * (V(1) - i[j]) * g[j];
          if constexpr (kSrcA) d += sar[j];
          dar[j] = d;
        }
        for (int64_t j = 0; j < H; ++j) {
          V d = dcr[j] * f[j] * (V(1) - f[j]) * cpr[j];
          if constexpr (kSrcA) d += sar[H + j];
          dar[H + j] = d;
        }
        for (int64_t j = 0; j < H; ++j) {
          V d = dcr[j] * (V(1) - g[j] * g[j]) * i[j];
          if constexpr (kSrcA) d += sar[2 * H + j];
          dar[2 * H + j] = d;
        }
        for (int64_t j = 0; j < H; ++j) {
          V d = dhr[j] * o[j] * (V(1) - o[j]) * ta[j];
          if constexpr (kSrcA) d += sar[3 * H + j];
          dar[3 * H + j] = d;
        }
      }
    };
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = t == T - 1;
      V* dh_t = dhp + t * NH;
      if (sh != nullptr) std::copy(sh + t * NH, sh + (t + 1) * NH, dh_t);
      else std::fill(dh_t, dh_t + NH, V(0));
      if (last && hl != nullptr)
        for (int64_t e = 0; e < NH; ++e) dh_t[e] += hl[e];
      if (!last) w.multiply(N, dap + (t + 1) * NG, G, V(1), dh_t, H);
      at::parallel_for(0, N, grain(H), [&](int64_t n0, int64_t n1) {
        if (sc != nullptr && sa != nullptr) rows.template operator()<true, true>(t, last, n0, n1);
        else if (sc != nullptr) rows.template operator()<true, false>(t, last, n0, n1);
        else if (sa != nullptr) rows.template operator()<false, true>(t, last, n0, n1);
        else rows.template operator()<false, false>(t, last, n0, n1);
      });
    }
  });
  return {da, dh, dc};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> tangent_steps(
    const at::Tensor& a_in, const at::Tensor& h0_dot, const at::Tensor& c0_dot,
    const at::Tensor& steps, const at::Tensor& c_prev, const at::Tensor& tau,
    const at::Tensor& w_hh) {
  constexpr const char* op = "lstm_tangent_steps";
  const auto [T, N, H] = check_forward(op, steps, c_prev, tau);
  const int64_t G = 4 * H;
  const auto dtype = tau.scalar_type();
  check(op, "a_in", a_in, {T, N, G}, dtype);
  check(op, "h0_dot", h0_dot, {N, H}, dtype);
  check(op, "c0_dot", c0_dot, {N, H}, dtype);
  check(op, "w_hh", w_hh, {G, H}, dtype);
  at::Tensor a_dot = a_in.clone();
  at::Tensor c_dot = at::empty({T, N, H}, tau.options());
  at::Tensor h_dot = at::empty({T, N, H}, tau.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, op, [&] {
    using V = scalar_t;
    const V *ws = steps.const_data_ptr<V>(), *cpp = c_prev.const_data_ptr<V>(),
            *tp = tau.const_data_ptr<V>();
    V *ap = a_dot.data_ptr<V>(), *cdp = c_dot.data_ptr<V>(), *hdp = h_dot.data_ptr<V>();
    // h_{t-1} [N, H] times W_hh^T: W_hh is [4H, H] = [Nc, K], so trans_b.
    const WeightB<V, V> w(/*trans_b=*/true, N, G, H, w_hh.const_data_ptr<V>(), H,
                          /*pack=*/T > 1);
    const int64_t NH = N * H, NG = N * G;
    const V* h_prev = h0_dot.const_data_ptr<V>();
    const V* c_prev_dot = c0_dot.const_data_ptr<V>();
    for (int64_t t = 0; t < T; ++t) {
      w.multiply(N, h_prev, H, V(1), ap + t * NG, G);
      at::parallel_for(0, N, grain(H), [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n) {
          const int64_t r = t * N + n;
          const V *__restrict__ i = ws + r * 5 * H, *__restrict__ f = i + H,
                  *__restrict__ g = f + H, *__restrict__ o = g + H;
          const V *__restrict__ cpr = cpp + r * H, *__restrict__ ta = tp + r * H,
                  *__restrict__ cpd = c_prev_dot + n * H;
          const V* __restrict__ a = ap + r * G;
          V *__restrict__ cr = cdp + r * H, *__restrict__ hr = hdp + r * H;
          for (int64_t j = 0; j < H; ++j) {
            const V c = f[j] * cpd[j] + a[j] * i[j] * (V(1) - i[j]) * g[j] +
                        a[H + j] * f[j] * (V(1) - f[j]) * cpr[j] +
                        a[2 * H + j] * (V(1) - g[j] * g[j]) * i[j];
            cr[j] = c;
            hr[j] = a[3 * H + j] * o[j] * (V(1) - o[j]) * ta[j] +
                    o[j] * (V(1) - ta[j] * ta[j]) * c;
          }
        }
      });
      h_prev = hdp + t * NH;
      c_prev_dot = cdp + t * NH;
    }
  });
  return {a_dot, c_dot, h_dot};
}

// The sources of the second adjoint (rnnkit/lstm_second_order.py, LstmGrad.backward), in one
// pass over every step: with the gates i, f, g, o and cell state c of the workspace rows
// (steps [T, N, 5H]), τ = tanh(c), the activations' derivatives act = [i(1-i), f(1-f), 1-g²,
// o(1-o)], their own derivatives coef' = act [g (1-2i), c_prev (1-2f), -2 g i, τ (1-2o)], the
// tangents ȧ (a_dot) and ċ (c_dot, c0_dot before the first step), and the first backward's dh, dc:
//   src_a = [dc, dc, dc, dh] * (coef' ȧ + act [ġ, ċ_prev, i̇, (1-τ²) ċ])
//   src_c = dh (1-τ²) (ȯ - 2 o τ ċ) + dc_{t+1} ḟ_{t+1}
// where i̇ = act_i ȧ_i and so on.
inline std::tuple<at::Tensor, at::Tensor> sources(const at::Tensor& steps,
                                                  const at::Tensor& c_prev,
                                                  const at::Tensor& tau, const at::Tensor& a_dot,
                                                  const at::Tensor& c_dot,
                                                  const at::Tensor& c0_dot, const at::Tensor& dh,
                                                  const at::Tensor& dc) {
  constexpr const char* op = "lstm_second_order_sources";
  TORCH_CHECK(tau.dim() == 3, "rnnkit::", op, ": expected tau of shape [T, N, H], got ",
              tau.sizes());
  const int64_t T = tau.size(0), N = tau.size(1), H = tau.size(2), G = 4 * H;
  const auto dtype = tau.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "rnnkit::", op,
              ": expected float32 or float64, got ", dtype);
  check(op, "steps", steps, {T, N, 5 * H}, dtype);
  check(op, "c_prev", c_prev, {T, N, H}, dtype);
  check(op, "tau", tau, {T, N, H}, dtype);
  check(op, "a_dot", a_dot, {T, N, G}, dtype);
  check(op, "c_dot", c_dot, {T, N, H}, dtype);
  check(op, "c0_dot", c0_dot, {N, H}, dtype);
  check(op, "dh", dh, {T, N, H}, dtype);
  check(op, "dc", dc, {T, N, H}, dtype);
  at::Tensor src_a = at::empty({T, N, G}, tau.options());
  at::Tensor src_c = at::empty({T, N, H}, tau.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, op, [&] {
    using V = scalar_t;
    const V *ws = steps.const_data_ptr<V>(), *cpp = c_prev.const_data_ptr<V>(),
            *tp = tau.const_data_ptr<V>(), *ad = a_dot.const_data_ptr<V>(),
            *cd = c_dot.const_data_ptr<V>(), *c0d = c0_dot.const_data_ptr<V>(),
            *dhp = dh.const_data_ptr<V>(), *dcp = dc.const_data_ptr<V>();
    V *sap = src_a.data_ptr<V>(), *scp = src_c.data_ptr<V>();
    const int64_t NH = N * H;
    at::parallel_for(0, T * N, grain(H), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {  // r = t * N + n
        const int64_t t = r / N, n = r % N;
        const V* __restrict__ w = ws + r * 5 * H;  // i, f, g, o, c
        const V* __restrict__ w_next = t + 1 < T ? w + N * 5 * H : nullptr;
        const V* __restrict__ a = ad + r * G;
        const V* __restrict__ a_next = t + 1 < T ? a + N * G : nullptr;
        const V* __restrict__ cdot_prev = t > 0 ? cd + (r - N) * H : c0d + n * H;
        V* __restrict__ sa = sap + r * G;
        V* __restrict__ sc = scp + r * H;
        for (int64_t j = 0; j < H; ++j) {
          const int64_t e = r * H + j;
          const V i = w[j], f = w[H + j], g = w[2 * H + j], o = w[3 * H + j];
          const V ta = tp[e], tanh_prime = V(1) - ta * ta, cdot = cd[e];
          const V act_i = i * (V(1) - i), act_f = f * (V(1) - f), act_g = V(1) - g * g,
                  act_o = o * (V(1) - o);
          const V ai = a[j], af = a[H + j], ag = a[2 * H + j], ao = a[3 * H + j];
          const V dcv = dcp[e], dhv = dhp[e];
          sa[j] = dcv * (act_i * g * (V(1) - 2 * i) * ai + act_i * act_g * ag);
          sa[H + j] = dcv * (act_f * cpp[e] * (V(1) - 2 * f) * af + act_f * cdot_prev[j]);
          sa[2 * H + j] = dcv * (-2 * act_g * g * i * ag + act_g * act_i * ai);
          sa[3 * H + j] = dhv * (act_o * ta * (V(1) - 2 * o) * ao + act_o * tanh_prime * cdot);
          V c = dhv * tanh_prime * (act_o * ao - 2 * o * ta * cdot);
          if (w_next != nullptr) {
            const V f_next = w_next[H + j];
            c += dcp[e + NH] * f_next * (V(1) - f_next) * a_next[H + j];
          }
          sc[j] = c;
        }
      }
    });
  });
  return {src_a, src_c};
}

}  // namespace second_order
}  // namespace cpu
}  // namespace rnnkit
