// The Elman RNN (tanh or relu) as a cell description (common/cell.h): one gate, no workspace.
// The pre-activations accumulate in the output rows and the activation is applied in place, so
// backward reads h of every step and nothing else.
#pragma once

#include "../cell.h"

namespace rnnkit {
namespace cells {

struct Rnn {
  static constexpr const char* kName = "rnn";
  static constexpr int64_t kGates = 1;
  static constexpr bool kCellState = false, kProjection = false, kRecurrentApart = false,
                        kGatesInOutput = true, kDirectGrad = false;

  // No workspace: backward reads the output.
  struct Layout {
    int64_t H;
    bool proj;
    RNNKIT_HD constexpr int64_t width() const { return 0; }
  };

  // gates and out are the same rows here (kGatesInOutput).
  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void forward(const StepForward<scalar_t, compute_t>& io, int64_t n, int64_t j) {
    const int64_t k = n * io.H + j;
    const auto h = gates::rnn_forward(io.template input_side<L>(n, 0, j), io.act);
    L::store(io.out + k, h);
    L::store(io.h_next + k, h);
  }

  template <typename L, typename scalar_t, typename compute_t>
  RNNKIT_HD static void backward(const StepBackward<scalar_t, compute_t>& io, int64_t n,
                                 int64_t j) {
    const int64_t k = n * io.H + j;
    L::store(io.da + k, gates::rnn_backward(io.template grad_h<L>(n, j), L::load(io.out + k),
                                            io.act));
  }
};

}  // namespace cells
}  // namespace rnnkit
