// The CPU kernels of every cell's operators: the one time loop (time_loop.h) for each cell of
// common/registry.h; and the LSTM's second-order recurrences (lstm_second_order.h).
#include <torch/library.h>

#include "../common/operators.h"
#include "../common/registry.h"
#include "blas.h"
#include "lstm_second_order.h"
#include "time_loop.h"
#include "weights.h"

namespace rnnkit {

// Declared in rnnkit.cpp, for rnnkit.build_info()["cpu_blas"].
const char* cpu_blas_path() { return cpu::blas_path(); }
// Declared in rnnkit.cpp, for rnnkit.build_info()["cpu_bf16_path"].
const char* cpu_bf16_path() { return cpu::reduced_path_name(); }

}  // namespace rnnkit

TORCH_LIBRARY_IMPL(rnnkit, CPU, m) {
  rnnkit::Cells::for_each(
      [&]<typename Cell>() { rnnkit::register_kernels<Cell, rnnkit::cpu::Backend>(m); });
  m.impl("lstm_adjoint_steps", &rnnkit::cpu::second_order::adjoint_steps);
  m.impl("lstm_tangent_steps", &rnnkit::cpu::second_order::tangent_steps);
  m.impl("lstm_second_order_sources", &rnnkit::cpu::second_order::sources);
}

// TEST ONLY: the cells of rnnkit_testing (common/registry.h).
TORCH_LIBRARY_IMPL(rnnkit_testing, CPU, m) {
  rnnkit::TestingCells::for_each(
      [&]<typename Cell>() { rnnkit::register_kernels<Cell, rnnkit::cpu::Backend>(m); });
}
