// The GRU as a cell description (common/cell.h): gates r, z, n (torch.nn's order). The reset gate
// scales the recurrent part of n only (n = tanh(x_n + r ⊙ (W_hn h + b_hn))), so the recurrent
// product is kept apart from the input projection.
#pragma once

#include "../cell.h"

namespace rnnkit {
namespace cells {

struct Gru {
  static constexpr const char* kName = "gru";
  static constexpr int64_t kGates = 3;
  static constexpr bool kCellState = false, kProjection = false, kRecurrentApart = true,
                        kGatesInOutput = false, kDirectGrad = true;
  static constexpr int64_t kSharedGates = 2;  // r and z: da_rec equals da there (backward)

  // Workspace row: [r, z, n | h_n], h_n = W_hn h_prev + b_hn the recurrent part of n.
  struct Layout {
    int64_t H;
    bool proj;
    RNNKIT_HD constexpr int64_t gates() const { return 0; }
    RNNKIT_HD constexpr int64_t h_n() const { return kGates * H; }
    RNNKIT_HD constexpr int64_t width() const { return h_n() + H; }
  };

  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void forward(const StepForward<scalar_t, compute_t>& io, int64_t n, int64_t j) {
    using V = typename L::V;
    const int64_t H = io.H;
    compute_t* g = io.gates + n * io.ld_gates;
    const auto x = [&](int64_t k) { return io.template input_side<L>(n, k, j); };
    const auto h = [&](int64_t k) { return io.template recurrent_side<L>(n, k, j, kGates * H); };
    const V h_n = h(2);
    const auto r = gates::gru_forward(x(0), x(1), x(2), h(0), h(1), h_n,
                                      L::load(io.h_prev + n * H + j));
    if (io.save) {
      L::store(g + j, r.r);
      L::store(g + H + j, r.z);
      L::store(g + 2 * H + j, r.n);
      L::store(g + Layout{H, false}.h_n() + j, h_n);
    }
    L::store(io.out + n * H + j, r.h);
    L::store(io.h_next + n * H + j, r.h);
  }

  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void backward(const StepBackward<scalar_t, compute_t>& io, int64_t n,
                                 int64_t j) {
    const int64_t H = io.H;
    const compute_t* g = io.ws + n * io.W;
    const auto r = gates::gru_backward(io.template grad_h<L>(n, j), L::load(g + j),
                                       L::load(g + H + j), L::load(g + 2 * H + j),
                                       L::load(g + Layout{H, false}.h_n() + j),
                                       L::load(io.h_prev + n * H + j));
    compute_t* dx = io.da + n * kGates * H;
    compute_t* dh = io.da_rec + n * kGates * H;
    L::store(dx + j, r.dx_r);
    L::store(dx + H + j, r.dx_z);
    L::store(dx + 2 * H + j, r.dx_n);
    L::store(dh + j, r.dx_r);
    L::store(dh + H + j, r.dx_z);
    L::store(dh + 2 * H + j, r.dh_n);
    L::store(io.dh + n * H + j, r.dh_prev_direct);
  }
};

}  // namespace cells
}  // namespace rnnkit
