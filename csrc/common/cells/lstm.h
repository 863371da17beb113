// The LSTM as a cell description (common/cell.h): gates i, f, g, o (torch.nn's order), a cell
// state, and an optional projection of h (proj_size).
#pragma once

#include "../cell.h"

namespace rnnkit {
namespace cells {

struct Lstm {
  static constexpr const char* kName = "lstm";
  static constexpr int64_t kGates = 4;
  static constexpr bool kCellState = true, kProjection = true, kRecurrentApart = false,
                        kGatesInOutput = false, kDirectGrad = false;

  // Workspace row: [i, f, g, o | c | h_pre], h_pre = o ⊙ tanh(c) before the projection, saved
  // with a projection only.
  struct Layout {
    int64_t H;
    bool proj;
    RNNKIT_HD constexpr int64_t gates() const { return 0; }
    RNNKIT_HD constexpr int64_t c() const { return kGates * H; }
    RNNKIT_HD constexpr int64_t h_pre() const { return c() + H; }
    RNNKIT_HD constexpr int64_t width() const { return h_pre() + (proj ? H : 0); }
  };

  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void forward(const StepForward<scalar_t, compute_t>& io, int64_t n, int64_t j) {
    const int64_t H = io.H;
    compute_t* g = io.gates + n * io.ld_gates;
    const auto a = [&](int64_t k) { return io.template input_side<L>(n, k, j); };
    const auto r = gates::lstm_forward(a(0), a(1), a(2), a(3), L::load(io.c + n * H + j));
    if (io.save) {
      L::store(g + j, r.i);
      L::store(g + H + j, r.f);
      L::store(g + 2 * H + j, r.g);
      L::store(g + 3 * H + j, r.o);
      L::store(g + Layout{H, false}.c() + j, r.c);
    }
    L::store(io.c + n * H + j, r.c);
    if (io.h_pre) {  // the time loop projects it
      L::store(io.h_pre + n * io.ld_h_pre + j, r.h);
    } else {
      L::store(io.out + n * io.R + j, r.h);
      L::store(io.h_next + n * io.R + j, r.h);
    }
  }

  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void backward(const StepBackward<scalar_t, compute_t>& io, int64_t n,
                                 int64_t j) {
    const int64_t H = io.H;
    const compute_t* g = io.ws + n * io.W;
    const auto r = gates::lstm_backward(
        io.template grad_h<L>(n, j), L::load(io.dc + n * H + j), L::load(g + j),
        L::load(g + H + j), L::load(g + 2 * H + j), L::load(g + 3 * H + j),
        L::load(g + Layout{H, false}.c() + j), L::load(io.c_prev + n * H + j));
    compute_t* da = io.da + n * kGates * H;
    L::store(da + j, r.da_i);
    L::store(da + H + j, r.da_f);
    L::store(da + 2 * H + j, r.da_g);
    L::store(da + 3 * H + j, r.da_o);
    L::store(io.dc + n * H + j, r.dc_prev);
  }
};

}  // namespace cells
}  // namespace rnnkit
