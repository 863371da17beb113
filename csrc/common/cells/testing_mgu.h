// TEST ONLY: a minimal gated unit, registered as rnnkit_testing::mgu (common/registry.h) to show
// that a new cell is this one header. Not part of rnnkit's API;
// tests/library/test_testing_cell.py checks it against plain PyTorch.
// Reset-after form, as torch.nn's GRU:
//   f = σ(x_f + h_f)   n = tanh(x_n + f ⊙ h_n)   h = (1 - f) ⊙ h_prev + f ⊙ n
// where x = W_ih x + b_ih and h_ = W_hh h_prev + b_hh.
#pragma once

#include "../cell.h"

namespace rnnkit {
namespace cells {

struct TestingMgu {
  static constexpr const char* kLibrary = "rnnkit_testing";  // test-only operators
  static constexpr const char* kName = "mgu";
  static constexpr int64_t kGates = 2;
  static constexpr bool kCellState = false, kProjection = false, kRecurrentApart = true,
                        kGatesInOutput = false, kDirectGrad = true;
  static constexpr int64_t kSharedGates = 1;  // f: da_rec equals da there (backward)

  // Workspace row: [f, n | h_n].
  struct Layout {
    int64_t H;
    bool proj;
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
    const V h_n = h(1), h_prev = L::load(io.h_prev + n * H + j);
    const V f = gates::sigmoid(x(0) + h(0));
    const V cand = math::rk_tanh(x(1) + f * h_n);
    const V h_new = h_prev + f * (cand - h_prev);
    if (io.save) {
      L::store(g + j, f);
      L::store(g + H + j, cand);
      L::store(g + Layout{H, false}.h_n() + j, h_n);
    }
    L::store(io.out + n * H + j, h_new);
    L::store(io.h_next + n * H + j, h_new);
  }

  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void backward(const StepBackward<scalar_t, compute_t>& io, int64_t n,
                                 int64_t j) {
    using V = typename L::V;
    const int64_t H = io.H;
    const compute_t* g = io.ws + n * io.W;
    const V one(1), dh = io.template grad_h<L>(n, j);
    const V f = L::load(g + j), cand = L::load(g + H + j);
    const V h_n = L::load(g + Layout{H, false}.h_n() + j);
    const V h_prev = L::load(io.h_prev + n * H + j);
    const V da_n = dh * f * (one - cand * cand);
    const V da_f = (dh * (cand - h_prev) + da_n * h_n) * f * (one - f);
    compute_t* dx = io.da + n * kGates * H;
    compute_t* dr = io.da_rec + n * kGates * H;
    L::store(dx + j, da_f);
    L::store(dx + H + j, da_n);
    L::store(dr + j, da_f);
    L::store(dr + H + j, da_n * f);
    L::store(io.dh + n * H + j, dh * (one - f));
  }
};

}  // namespace cells
}  // namespace rnnkit
