// The pointwise loop every CPU kernel runs: rows in parallel, hidden units in SIMD registers.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "balance.h"

namespace rnnkit {
namespace cpu {

// Loads and stores of one lane group: a SIMD register, or a single scalar for the tail. The
// lanes hold the compute type (float for float16 and bfloat16: at::opmath_type); memory holds
// either the compute type (the workspace, gates, c, gradients) or a reduced storage type (x, h,
// the output), which load widens and store rounds to nearest.
template <typename S>
constexpr bool kReduced = std::is_same_v<S, c10::BFloat16> || std::is_same_v<S, c10::Half>;

template <typename V, typename compute_t>
struct Lanes;

template <typename compute_t>
struct Lanes<at::vec::Vectorized<compute_t>, compute_t> {
  using V = at::vec::Vectorized<compute_t>;
  static V load(const compute_t* p) { return V::loadu(p); }
  static void store(compute_t* p, const V& v) { v.store(p); }
  template <typename S>
    requires kReduced<S>
  static V load(const S* p) {
    V v;
    at::vec::load_to_float<S>(p, v);
    return v;
  }
  template <typename S>
    requires kReduced<S>
  static void store(S* p, const V& v) {
    at::vec::convert_from_float<S>(v, v).store(p, V::size());
  }
};

template <typename compute_t>
struct Lanes<compute_t, compute_t> {
  using V = compute_t;
  static V load(const compute_t* p) { return *p; }
  static void store(compute_t* p, V v) { *p = v; }
  template <typename S>
    requires kReduced<S>
  static V load(const S* p) { return static_cast<V>(*p); }
  template <typename S>
    requires kReduced<S>
  static void store(S* p, V v) { *p = static_cast<S>(v); }
};

// Calls body(n, j, Lanes<V, scalar_t>{}) for hidden units j0 <= j < j1 of batch row n, with j
// stepping by a SIMD register's width while one fits, then one by one.
template <typename scalar_t, typename Body>
inline void unit_loop(int64_t n, int64_t j0, int64_t j1, const Body& body) {
  using Vec = at::vec::Vectorized<scalar_t>;
  constexpr int64_t kWidth = Vec::size();
  int64_t j = j0;
  for (; j + kWidth <= j1; j += kWidth) body(n, j, Lanes<Vec, scalar_t>{});
  for (; j < j1; ++j) body(n, j, Lanes<scalar_t, scalar_t>{});
}

// unit_loop over every batch row n < rows and every hidden unit j < H. Rows are shared out
// between threads in chunks of at least kUnitsPerTask units: a hand-off to a waiting thread
// costs about a microsecond, and a task that size of the cheapest pass (the RNN's one tanh)
// takes two or more.
constexpr int64_t kUnitsPerTask = 2048;

// A loop that runs at every step passes its ThreadRates, so that its rows are split as the
// threads' rates on it say (balance.h).
template <typename scalar_t, typename Body>
void for_each_unit(int64_t rows, int64_t H, const Body& body, ThreadRates* rates = nullptr) {
  const int64_t grain = std::max<int64_t>(1, kUnitsPerTask / std::max<int64_t>(H, 1));
  const auto share = [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) unit_loop<scalar_t>(n, 0, H, body);
  };
  if (rates != nullptr) {
    balanced_for(*rates, rows, grain, share);
  } else {
    at::parallel_for(0, rows, grain, share);
  }
}

// The row operations of a row-norm cell's pointwise code (common/row_norm.h) on the CPU: one
// thread runs a whole row, units and sums a SIMD register at a time. compute_t is the lanes' type
// and that of the sums (float for float16 and bfloat16 storage: Lanes widens what it loads).
template <typename compute_t>
struct HostRow {
  using One = Lanes<compute_t, compute_t>;
  template <typename F>
  void units(int64_t count, const F& f) const {
    unit_loop<compute_t>(0, 0, count, [&](int64_t, int64_t j, auto lanes) { f(j, lanes); });
  }
  template <typename F>
  compute_t sum(int64_t count, const F& f) const {
    using Vec = at::vec::Vectorized<compute_t>;
    Vec lanes(compute_t(0));
    int64_t j = 0;
    for (; j + Vec::size() <= count; j += Vec::size())
      lanes = lanes + f(j, Lanes<Vec, compute_t>{});
    compute_t total(0);
    for (; j < count; ++j) total += f(j, One{});
    compute_t parts[Vec::size()];
    lanes.store(parts);
    for (int64_t k = 0; k < Vec::size(); ++k) total += parts[k];
    return total;
  }
  bool leader() const { return true; }
};

// body(n) for every batch row n < rows, rows shared out between threads as for_each_unit does.
template <typename Body>
void for_each_row(int64_t rows, int64_t H, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kUnitsPerTask / std::max<int64_t>(H, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) body(n);
  });
}

// a + b, G values (either may be null: it counts as zeros): the biases of a layer, which the
// pointwise passes add to the pre-activations.
// The sum is in the compute type (float for bfloat16 biases).
template <typename compute_t, typename scalar_t>
std::vector<compute_t> bias_sum(int64_t G, const scalar_t* a, const scalar_t* b) {
  std::vector<compute_t> sum(G);
  for (int64_t k = 0; k < G; ++k)
    sum[k] = (a ? compute_t(a[k]) : compute_t(0)) + (b ? compute_t(b[k]) : compute_t(0));
  return sum;
}

}  // namespace cpu
}  // namespace rnnkit
