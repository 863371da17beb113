// The layer-normalised GRU (haste's LayerNormGRU) as a row-norm cell (common/cell.h,
// common/row_norm.h). Per step, for each batch row, with the gates r, z, n of torch.nn:
//   x_ = LN(x W_ih^T; gamma_x) + b_ih        h_ = LN(h_prev W_hh^T; gamma_h) + b_hh
//   r = σ(x_r + h_r)   z = σ(x_z + h_z)   n = tanh(x_n + r ⊙ h_n)   h = (1 - z) ⊙ n + z ⊙ h_prev
// LN over the whole row (all 3H values as one vector, as haste does), without a shift of its own:
// the biases are the shifts. Norm parameters (io.norm): [gamma_x (3H) | gamma_h (3H)].
#pragma once

#include "../cell.h"
#include "../row_norm.h"

namespace rnnkit {
namespace cells {

struct LayerNormGru {
  static constexpr const char* kName = "layernorm_gru";
  static constexpr int64_t kGates = 3;
  static constexpr bool kCellState = false, kProjection = false, kRecurrentApart = true,
                        kGatesInOutput = false, kDirectGrad = true, kRowNorm = true;

  // Workspace row: [r, z, n | h_n | x_hat (3H) | h_hat (3H) | rstd_x, rstd_h], h_n = the
  // recurrent side of n (after its gain and b_hn); padded to norm::kRowAlign values.
  struct Layout {
    int64_t H;
    bool proj;
    RNNKIT_HD constexpr int64_t gates() const { return 0; }
    RNNKIT_HD constexpr int64_t h_n() const { return kGates * H; }
    RNNKIT_HD constexpr int64_t x_hat() const { return h_n() + H; }
    RNNKIT_HD constexpr int64_t h_hat() const { return x_hat() + kGates * H; }
    RNNKIT_HD constexpr int64_t rstd() const { return h_hat() + kGates * H; }
    RNNKIT_HD constexpr int64_t width() const { return norm::aligned_width(rstd() + 2); }
    // The normalised values x_hat | h_hat, which the gains scale.
    RNNKIT_HD constexpr int64_t norm_values() const { return x_hat(); }
    RNNKIT_HD constexpr int64_t norm_width() const { return rstd() - x_hat(); }
    RNNKIT_HD constexpr int64_t norm_params() const { return norm_width(); }
  };

  template <typename Ops, typename scalar_t, typename compute_t>
  RNNKIT_HD static void forward_row(const StepForward<scalar_t, compute_t>& io, int64_t n,
                                    const Ops& ops) {
    const int64_t H = io.H, G = kGates * H;
    const Layout at{H, false};
    compute_t* g = io.gates + n * io.ld_gates;  // [G] x W_ih^T in, the gates out (+ the saved row)
    const compute_t* rec = io.rec + n * G;      // [G] h_prev W_hh^T
    const compute_t *gamma_x = io.norm, *gamma_h = io.norm + G;
    const auto mx = norm::moments(ops, g, G);
    const auto mh = norm::moments(ops, rec, G);
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      using V = typename L::V;
      V x[kGates], h[kGates];
      for (int64_t k = 0; k < kGates; ++k) {
        const int64_t e = k * H + j;
        const V x_hat = (L::load(g + e) - V(mx.mean)) * V(mx.rstd);
        const V h_hat = (L::load(rec + e) - V(mh.mean)) * V(mh.rstd);
        x[k] = x_hat * L::load(gamma_x + e);
        h[k] = h_hat * L::load(gamma_h + e);
        if (io.bias) x[k] = x[k] + L::load(io.bias + e);
        if (io.rec_bias) h[k] = h[k] + L::load(io.rec_bias + e);
        if (io.save) {
          L::store(g + at.x_hat() + e, x_hat);
          L::store(g + at.h_hat() + e, h_hat);
        }
      }
      const auto r =
          gates::gru_forward(x[0], x[1], x[2], h[0], h[1], h[2], L::load(io.h_prev + n * H + j));
      if (io.save) {
        L::store(g + j, r.r);
        L::store(g + H + j, r.z);
        L::store(g + 2 * H + j, r.n);
        L::store(g + at.h_n() + j, h[2]);
      }
      L::store(io.out + n * H + j, r.h);
      L::store(io.h_next + n * H + j, r.h);
    });
    if (io.save && ops.leader()) {
      using One = typename Ops::One;
      One::store(g + at.rstd(), mx.rstd);
      One::store(g + at.rstd() + 1, mh.rstd);
      for (int64_t k = at.rstd() + 2; k < at.width(); ++k) One::store(g + k, 0);  // padding
    }
  }

  // dp row: [d of the input side after its gain (3H) | of the recurrent side (3H)].
  template <typename Ops, typename scalar_t, typename compute_t>
  RNNKIT_HD static void backward_row(const StepBackward<scalar_t, compute_t>& io, int64_t n,
                                     const Ops& ops) {
    using One = typename Ops::One;
    const int64_t H = io.H, G = kGates * H;
    const Layout at{H, false};
    const compute_t* w = io.ws + n * io.W;
    compute_t* dp = io.dp + n * io.Wn;
    ops.units(H, [&](int64_t j, auto lanes) {
      using L = decltype(lanes);
      const auto r = gates::gru_backward(io.template grad_h<L>(n, j), L::load(w + j),
                                         L::load(w + H + j), L::load(w + 2 * H + j),
                                         L::load(w + at.h_n() + j),
                                         L::load(io.h_prev + n * H + j));
      L::store(dp + j, r.dx_r);
      L::store(dp + H + j, r.dx_z);
      L::store(dp + 2 * H + j, r.dx_n);
      L::store(dp + G + j, r.dx_r);
      L::store(dp + G + H + j, r.dx_z);
      L::store(dp + G + 2 * H + j, r.dh_n);
      L::store(io.dh + n * H + j, r.dh_prev_direct);
    });
    norm::backward(ops, G, dp, io.norm, w + at.x_hat(), One::load(w + at.rstd()),
                   io.da + n * G);
    norm::backward(ops, G, dp + G, io.norm + G, w + at.h_hat(), One::load(w + at.rstd() + 1),
                   io.da_rec + n * G);
  }
};

}  // namespace cells
}  // namespace rnnkit
