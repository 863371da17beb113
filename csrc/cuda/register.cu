// The CUDA kernels of every cell's operators: the one time loop (time_loop.cuh) for each cell of
// common/registry.h.
#include <torch/library.h>

#include "../common/operators.h"
#include "../common/registry.h"
#include "time_loop.cuh"

TORCH_LIBRARY_IMPL(rnnkit, CUDA, m) {
  rnnkit::Cells::for_each(
      [&]<typename Cell>() { rnnkit::register_kernels<Cell, rnnkit::cuda::Backend>(m); });
}

// TEST ONLY: the cells of rnnkit_testing (common/registry.h).
TORCH_LIBRARY_IMPL(rnnkit_testing, CUDA, m) {
  rnnkit::TestingCells::for_each(
      [&]<typename Cell>() { rnnkit::register_kernels<Cell, rnnkit::cuda::Backend>(m); });
}
