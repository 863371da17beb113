// The CPU kernels of every cell's operators: the one time loop (time_loop.h) for each cell of
// common/registry.h; and the LSTM's second-order recurrences (lstm_second_order.h).
#include <torch/library.h>

#include <vector>

#include "../common/operators.h"
#include "../common/registry.h"
#include "balance.h"
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

// TEST ONLY: rnnkit_testing::balanced_split (its schema in rnnkit.cpp says what it computes).
inline std::vector<int64_t> balanced_split(int64_t n, int64_t grain, int64_t threads,
                                           at::ArrayRef<double> cost) {
  TORCH_CHECK(threads >= 1 && threads <= ThreadRates::kMaxThreads, "balanced_split: expected 1 "
              "to ", ThreadRates::kMaxThreads, " threads, got ", threads);
  TORCH_CHECK(n >= 0 && grain >= 1, "balanced_split: expected n >= 0 and grain >= 1, got n = ",
              n, ", grain = ", grain);
  const int64_t size = static_cast<int64_t>(cost.size());
  TORCH_CHECK(size % threads == 0, "balanced_split: expected a cost per thread per run, a "
              "multiple of ", threads, " values, got ", size);
  ThreadRates rates;
  std::vector<int64_t> bounds(threads + 1);
  std::vector<double> seconds(threads);
  for (int64_t run = 0; run < size / threads; ++run) {
    rates.split(int(threads), n, grain, bounds.data());
    for (int64_t t = 0; t < threads; ++t)
      seconds[t] = double(bounds[t + 1] - bounds[t]) * cost[run * threads + t];
    rates.record(int(threads), bounds.data(), seconds.data());
  }
  rates.split(int(threads), n, grain, bounds.data());
  return bounds;
}

}  // namespace cpu
}  // namespace rnnkit

// TEST ONLY: the cells of rnnkit_testing (common/registry.h), and one WeightB product.
TORCH_LIBRARY_IMPL(rnnkit_testing, CPU, m) {
  rnnkit::TestingCells::for_each(
      [&]<typename Cell>() { rnnkit::register_kernels<Cell, rnnkit::cpu::Backend>(m); });
  m.impl("weight_product", &rnnkit::cpu::weight_product);
}

// (an operator without tensor arguments has no device to dispatch on)
TORCH_LIBRARY_IMPL(rnnkit_testing, CompositeExplicitAutograd, m) {
  m.impl("balanced_split", &rnnkit::cpu::balanced_split);
}
