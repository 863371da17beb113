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

namespace rnnkit {
namespace cpu {

// TEST ONLY: rnnkit_testing::weight_product (its schema in rnnkit.cpp says what it computes).
inline at::Tensor weight_product(const at::Tensor& a, const at::Tensor& b, bool trans_b,
                                 const at::Tensor& c, double beta, bool pack,
                                 int64_t repeats) {
  TORCH_CHECK(repeats >= 1, "weight_product: expected repeats >= 1, got ", repeats);
  TORCH_CHECK(b.dim() == 2 && b.is_contiguous() &&
                  (b.scalar_type() == at::kBFloat16 || b.scalar_type() == at::kHalf),
              "weight_product: expected b contiguous 2-d bfloat16 or float16, got ",
              b.scalar_type(), " of sizes ", b.sizes());
  TORCH_CHECK(a.dim() == 2 && a.is_contiguous() &&
                  (a.scalar_type() == b.scalar_type() || a.scalar_type() == at::kFloat),
              "weight_product: expected a contiguous 2-d in b's dtype or float32, got ",
              a.scalar_type(), " of sizes ", a.sizes());
  const int64_t M = a.size(0), K = a.size(1), N = trans_b ? b.size(0) : b.size(1);
  TORCH_CHECK((trans_b ? b.size(1) : b.size(0)) == K,
              "weight_product: a has ", K, " columns but op(b) has ",
              trans_b ? b.size(1) : b.size(0), " rows");
  TORCH_CHECK(c.scalar_type() == at::kFloat && c.dim() == 2 && c.size(0) == M &&
                  c.size(1) == N,
              "weight_product: expected c float32 of sizes [", M, ", ", N, "], got ",
              c.scalar_type(), " of sizes ", c.sizes());
  at::Tensor out = c.contiguous().clone();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(b.scalar_type(), "weight_product", [&] {
    const WeightB<scalar_t, float> w(trans_b, M, N, K, b.const_data_ptr<scalar_t>(), b.size(1),
                                     pack);
    for (int64_t r = 0; r < repeats; ++r) {
      if (a.scalar_type() == at::kFloat)
        w.multiply(M, a.const_data_ptr<float>(), K, float(beta), out.data_ptr<float>(), N);
      else
        w.multiply(M, a.const_data_ptr<scalar_t>(), K, float(beta), out.data_ptr<float>(), N);
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace rnnkit

// TEST ONLY: the cells of rnnkit_testing (common/registry.h), and one WeightB product.
TORCH_LIBRARY_IMPL(rnnkit_testing, CPU, m) {
  rnnkit::TestingCells::for_each(
      [&]<typename Cell>() { rnnkit::register_kernels<Cell, rnnkit::cpu::Backend>(m); });
  m.impl("weight_product", &rnnkit::cpu::weight_product);
}
