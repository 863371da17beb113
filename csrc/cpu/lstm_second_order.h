// The LSTM layer's second-order path (rnnkit/lstm_second_order.py) on the CPU: its two
// recurrences, each step's product with W_hh through WeightB (MKL's packed sgemm, the weight
// packed once per call) and the step's pointwise work in one pass over its rows, and the second
// adjoint's sources in one pass over every row (sources() below). The Python module
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
// with h_{-1} = h0, c_{-1} = c0. Absent sources (None) are zero. The first backward runs
// lstm_adjoint_steps without src_c and src_a, the second with those of sources().
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "loops.h"
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

// ---- one row's pointwise work (function parameters, so that __restrict__ lets the compiler
// vectorise; several may point into the same workspace row, which nothing here writes) --------

// dc = dh o (1 - τ²) [+ src_c] [+ dc_next f_next, or + dc_next alone when f_next is null].
template <typename V>
void dc_row(int64_t H, const V* __restrict__ dh, const V* __restrict__ o,
            const V* __restrict__ tau, const V* __restrict__ src_c,
            const V* __restrict__ dc_next, const V* __restrict__ f_next, V* __restrict__ dc) {
  for (int64_t j = 0; j < H; ++j) dc[j] = dh[j] * o[j] * (V(1) - tau[j] * tau[j]);
  if (src_c != nullptr)
    for (int64_t j = 0; j < H; ++j) dc[j] += src_c[j];
  if (dc_next != nullptr && f_next != nullptr)
    for (int64_t j = 0; j < H; ++j) dc[j] += dc_next[j] * f_next[j];
  else if (dc_next != nullptr)
    for (int64_t j = 0; j < H; ++j) dc[j] += dc_next[j];
}

// One gate's pre-activation gradient: da = d act(s) y [+ src], act(s) = s (1 - s) for a sigmoid
// gate, 1 - s² for the tanh gate.
template <bool kTanh, typename V>
void gate_row(int64_t H, const V* __restrict__ d, const V* __restrict__ s,
              const V* __restrict__ y, const V* __restrict__ src, V* __restrict__ da) {
  for (int64_t j = 0; j < H; ++j)
    da[j] = d[j] * (kTanh ? V(1) - s[j] * s[j] : s[j] * (V(1) - s[j])) * y[j];
  if (src != nullptr)
    for (int64_t j = 0; j < H; ++j) da[j] += src[j];
}

// The tangent's c and h of one row, from its ȧ (a: i, f, g, o) and the previous ċ.
template <typename V>
void tangent_row(int64_t H, const V* __restrict__ i, const V* __restrict__ f,
                 const V* __restrict__ g, const V* __restrict__ o, const V* __restrict__ c_prev,
                 const V* __restrict__ tau, const V* __restrict__ c_prev_dot,
                 const V* __restrict__ a, V* __restrict__ c_dot, V* __restrict__ h_dot) {
  for (int64_t j = 0; j < H; ++j) {
    const V c = f[j] * c_prev_dot[j] + a[j] * i[j] * (V(1) - i[j]) * g[j] +
                a[H + j] * f[j] * (V(1) - f[j]) * c_prev[j] +
                a[2 * H + j] * (V(1) - g[j] * g[j]) * i[j];
    c_dot[j] = c;
    h_dot[j] = a[3 * H + j] * o[j] * (V(1) - o[j]) * tau[j] + o[j] * (V(1) - tau[j] * tau[j]) * c;
  }
}

// The second adjoint's sources of one row (sources() below states them); a_next_f, f_next and
// dc_next are the next step's (null at the last step).
template <typename V>
void source_row(int64_t H, const V* __restrict__ i, const V* __restrict__ f,
                const V* __restrict__ g, const V* __restrict__ o, const V* __restrict__ c_prev,
                const V* __restrict__ tau, const V* __restrict__ a,
                const V* __restrict__ c_dot, const V* __restrict__ c_prev_dot,
                const V* __restrict__ dh, const V* __restrict__ dc,
                const V* __restrict__ a_next_f, const V* __restrict__ f_next,
                const V* __restrict__ dc_next, V* __restrict__ sa, V* __restrict__ sc) {
  for (int64_t j = 0; j < H; ++j) {
    const V ta = tau[j], tanh_prime = V(1) - ta * ta, cdot = c_dot[j];
    const V act_i = i[j] * (V(1) - i[j]), act_f = f[j] * (V(1) - f[j]),
            act_g = V(1) - g[j] * g[j], act_o = o[j] * (V(1) - o[j]);
    const V ai = a[j], af = a[H + j], ag = a[2 * H + j], ao = a[3 * H + j];
    sa[j] = dc[j] * (act_i * g[j] * (V(1) - 2 * i[j]) * ai + act_i * act_g * ag);
    sa[H + j] = dc[j] * (act_f * c_prev[j] * (V(1) - 2 * f[j]) * af + act_f * c_prev_dot[j]);
    sa[2 * H + j] = dc[j] * (V(-2) * act_g * g[j] * i[j] * ag + act_g * act_i * ai);
    sa[3 * H + j] = dh[j] * (act_o * ta * (V(1) - 2 * o[j]) * ao + act_o * tanh_prime * cdot);
    sc[j] = dh[j] * tanh_prime * (act_o * ao - 2 * o[j] * ta * cdot);
  }
  if (f_next != nullptr)
    for (int64_t j = 0; j < H; ++j)
      sc[j] += dc_next[j] * f_next[j] * (V(1) - f_next[j]) * a_next_f[j];
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
    // One step's pointwise pass over row n, with the sources that are present.
    const auto row = [&](int64_t t, bool last, int64_t n) {
      const int64_t r = t * N + n;  // the row, over all steps
      const V *i = ws + r * 5 * H, *f = i + H, *g = f + H, *o = g + H;
      const V* dc_next =  // this row of dc_last (if any), or of dc_{t+1}
          last ? (cl != nullptr ? cl + n * H : nullptr) : dcp + (r + N) * H;
      const V* sar = sa != nullptr ? sa + r * G : nullptr;
      const V* dhr = dhp + r * H;
      V* dcr = dcp + r * H;
      V* dar = dap + r * G;
      dc_row<V>(H, dhr, o, tp + r * H, sc != nullptr ? sc + r * H : nullptr, dc_next,
                last ? nullptr : f + N * 5 * H, dcr);
      // da = [dc, dc, dc, dh] * [i(1-i) g, f(1-f) c_prev, (1-g²) i, o(1-o) τ] (+ src_a)
      gate_row<false, V>(H, dcr, i, g, sar, dar);
      gate_row<false, V>(H, dcr, f, cpp + r * H, sar ? sar + H : nullptr, dar + H);
      gate_row<true, V>(H, dcr, g, i, sar ? sar + 2 * H : nullptr, dar + 2 * H);
      gate_row<false, V>(H, dhr, o, tp + r * H, sar ? sar + 3 * H : nullptr, dar + 3 * H);
    };
    for (int64_t t = T - 1; t >= 0; --t) {
      const bool last = t == T - 1;
      V* dh_t = dhp + t * NH;
      if (sh != nullptr) std::copy(sh + t * NH, sh + (t + 1) * NH, dh_t);
      else std::fill(dh_t, dh_t + NH, V(0));
      if (last && hl != nullptr)
        for (int64_t e = 0; e < NH; ++e) dh_t[e] += hl[e];
      if (!last) w.multiply(N, dap + (t + 1) * NG, G, V(1), dh_t, H);
      for_each_row(N, H, [&](int64_t n) { row(t, last, n); });
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
      for_each_row(N, H, [&](int64_t n) {
        const int64_t r = t * N + n;
        const V* i = ws + r * 5 * H;
        tangent_row<V>(H, i, i + H, i + 2 * H, i + 3 * H, cpp + r * H, tp + r * H,
                       c_prev_dot + n * H, ap + r * G, cdp + r * H, hdp + r * H);
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
// tangents ȧ (a_dot) and ċ (c_dot, c0_dot before the first step), and the first backward's
// dh, dc:
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
    for_each_row(T * N, H, [&](int64_t r) {  // r = t * N + n
      const int64_t t = r / N, n = r % N;
      const V* w = ws + r * 5 * H;  // i, f, g, o, c
      const bool has_next = t + 1 < T;
      source_row<V>(H, w, w + H, w + 2 * H, w + 3 * H, cpp + r * H, tp + r * H, ad + r * G,
                    cd + r * H, t > 0 ? cd + (r - N) * H : c0d + n * H, dhp + r * H,
                    dcp + r * H, has_next ? ad + (r + N) * G + H : nullptr,
                    has_next ? w + N * 5 * H + H : nullptr,
                    has_next ? dcp + (r + N) * H : nullptr, sap + r * G, scp + r * H);
    });
  });
  return {src_a, src_c};
}

}  // namespace second_order
}  // namespace cpu
}  // namespace rnnkit
