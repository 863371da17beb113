// The layer-normalised LSTM (haste's LayerNormLSTM, after Ba et al. 2016) as a row-norm cell
// (common/cell.h, common/row_norm.h). Per step, for each batch row:
//   a = LN(x W_ih^T; gamma_x) + LN(h_prev W_hh^T; gamma_h) + b_ih + b_hh
//   i, f, g, o from a as in torch.nn;   c = f ⊙ c_prev + i ⊙ g
//   h = o ⊙ tanh(LN(c; gamma_c, beta_c))
// where LN(v; gamma, beta) = gamma ⊙ (v - mean(v)) / sqrt(var(v) + eps) + beta over the whole row
// (all 4H pre-activations as one vector, as haste does; H for c). The input and recurrent
// normalisations have no shift of their own: the biases are theirs.
// Norm parameters (io.norm): [gamma_x (4H) | gamma_h (4H) | gamma_c (H) | beta_c (H)].
#pragma once

#include "../cell.h"
#include "../row_norm.h"

namespace rnnkit {
namespace cells {

struct LayerNormLstm {
  static constexpr const char* kName = "layernorm_lstm";
  static constexpr int64_t kGates = 4;
  static constexpr bool kCellState = true, kProjection = false, kRecurrentApart = true,
                        kGatesInOutput = false, kDirectGrad = false, kRowNorm = true;

  // Workspace row: [i, f, g, o | c | x_hat (4H) | h_hat (4H) | c_hat (H) | rstd_x, rstd_h,
  // rstd_c]: the gates, the cell state, the normalised input projection, recurrent product and
  // cell state, and the three 1/std of the row; padded to norm::kRowAlign values.
  struct Layout {
    int64_t H;
    bool proj;
    RNNKIT_HD constexpr int64_t gates() const { return 0; }
    RNNKIT_HD constexpr int64_t c() const { return kGates * H; }
    RNNKIT_HD constexpr int64_t x_hat() const { return c() + H; }
    RNNKIT_HD constexpr int64_t h_hat() const { return x_hat() + kGates * H; }
    RNNKIT_HD constexpr int64_t c_hat() const { return h_hat() + kGates * H; }
    RNNKIT_HD constexpr int64_t rstd() const { return c_hat() + H; }
    RNNKIT_HD constexpr int64_t width() const { return norm::aligned_width(rstd() + 3); }
    // The normalised values x_hat | h_hat | c_hat, which the gains scale.
    RNNKIT_HD constexpr int64_t norm_values() const { return x_hat(); }
    RNNKIT_HD constexpr int64_t norm_width() const { return rstd() - x_hat(); }
    RNNKIT_HD constexpr int64_t norm_params() const { return norm_width() + H; }
  };

  template <typename Ops, typename scalar_t, typename compute_t>
  RNNKIT_HD static void forward_row(const StepForward<scalar_t, compute_t>& io, int64_t n,
                                    const Ops& ops) {
    const int64_t H = io.H, G = kGates * H;
    const Layout at{H, false};
    compute_t* g = io.gates + n * io.ld_gates;  // [G] x W_ih^T in, the gates out (+ the saved row)
    const compute_t* rec = io.rec + n * G;      // [G] h_prev W_hh^T
    compute_t* c = io.c + n * H;                // [H] c_prev in, c out
    const compute_t *gamma_x = io.norm, *gamma_h = io.norm + G, *gamma_c = io.norm + 2 * G,
                    *beta_c = io.norm + 2 * G + H;
    const auto mx = norm::moments(ops, g, G);
    const auto mh = norm::moments(ops, rec, G);
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      V a[kGates];
      for (int64_t k = 0; k < kGates; ++k) {
        const int64_t e = k * H + j;
        const V x_hat = (L::load(g + e) - V(mx.mean)) * V(mx.rstd);
        const V h_hat = (L::load(rec + e) - V(mh.mean)) * V(mh.rstd);
        a[k] = x_hat * L::load(gamma_x + e) + h_hat * L::load(gamma_h + e);
        if (io.bias) a[k] = a[k] + L::load(io.bias + e);
        if (io.rec_bias) a[k] = a[k] + L::load(io.rec_bias + e);
        if (io.save) {
          L::store(g + at.x_hat() + e, x_hat);
          L::store(g + at.h_hat() + e, h_hat);
        }
      }
      const auto r = gates::lstm_forward(a[0], a[1], a[2], a[3], L::load(c + j));
      // The gates go to g in inference too (a scratch row there): the second pass reads o.
      L::store(g + j, r.i);
      L::store(g + H + j, r.f);
      L::store(g + 2 * H + j, r.g);
      L::store(g + 3 * H + j, r.o);
      if (io.save) L::store(g + at.c() + j, r.c);
      L::store(c + j, r.c);
    });
    const auto mc = norm::moments(ops, c, H);
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      const V c_hat = (L::load(c + j) - V(mc.mean)) * V(mc.rstd);
      if (io.save) L::store(g + at.c_hat() + j, c_hat);
      const V h = L::load(g + 3 * H + j) *
                  math::rk_tanh(c_hat * L::load(gamma_c + j) + L::load(beta_c + j));
      L::store(io.out + n * io.R + j, h);
      L::store(io.h_next + n * io.R + j, h);
    });
    if (io.save && ops.leader()) {
      using One = typename Ops::One;
      One::store(g + at.rstd(), mx.rstd);
      One::store(g + at.rstd() + 1, mh.rstd);
      One::store(g + at.rstd() + 2, mc.rstd);
      for (int64_t k = at.rstd() + 3; k < at.width(); ++k) One::store(g + k, 0);  // padding
    }
  }

  // dp row: [d of the input side after its gain (4H) | of the recurrent side (4H) | of LN(c)
  // (H)]; the first two are the same here (both sides add into a), the GRU's differ.
  template <typename Ops, typename scalar_t, typename compute_t>
  RNNKIT_HD static void backward_row(const StepBackward<scalar_t, compute_t>& io, int64_t n,
                                     const Ops& ops) {
    using One = typename Ops::One;
    using A = typename One::V;
    const int64_t H = io.H, G = kGates * H;
    const Layout at{H, false};
    const compute_t* w = io.ws + n * io.W;
    compute_t* dp = io.dp + n * io.Wn;
    compute_t* dc_row = io.dc + n * H;
    const compute_t *gamma_x = io.norm, *gamma_h = io.norm + G, *gamma_c = io.norm + 2 * G,
                    *beta_c = io.norm + 2 * G + H;
    const A rstd_x = One::load(w + at.rstd()), rstd_h = One::load(w + at.rstd() + 1),
            rstd_c = One::load(w + at.rstd() + 2);
    const compute_t* c_hat = w + at.c_hat();
    compute_t* d_ln_c = dp + 2 * G;  // [H] the gradient of LN(c)
    // 1. h = o ⊙ tanh(LN(c)): the gradients of LN(c) and of o's pre-activation.
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      const V one(1), dh = io.template grad_h<L>(n, j), o = L::load(w + 3 * H + j);
      const V tc = math::rk_tanh(L::load(c_hat + j) * L::load(gamma_c + j) + L::load(beta_c + j));
      L::store(d_ln_c + j, dh * o * (one - tc * tc));
      L::store(dp + 3 * H + j, dh * tc * o * (one - o));
    });
    // 2. through LN(c) to c, then the other gates and c_prev.
    const auto m = norm::grad_means(ops, d_ln_c, gamma_c, c_hat, H);
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      const V one(1), i = L::load(w + j), f = L::load(w + H + j), g = L::load(w + 2 * H + j);
      const V dc = L::load(dc_row + j) + norm::grad_x(L::load(d_ln_c + j), L::load(gamma_c + j),
                                                      L::load(c_hat + j), rstd_c, m);
      L::store(dp + j, dc * g * i * (one - i));
      L::store(dp + H + j, dc * L::load(io.c_prev + n * H + j) * f * (one - f));
      L::store(dp + 2 * H + j, dc * i * (one - g * g));
      L::store(dc_row + j, dc * f);
      for (int64_t k = 0; k < kGates; ++k) L::store(dp + G + k * H + j, L::load(dp + k * H + j));
    });
    // 3. through the two normalisations to the input projection and the recurrent product.
    norm::backward(ops, G, dp, gamma_x, w + at.x_hat(), rstd_x, io.da + n * G);
    norm::backward(ops, G, dp + G, gamma_h, w + at.h_hat(), rstd_h, io.da_rec + n * G);
  }
};

}  // namespace cells
}  // namespace rnnkit
