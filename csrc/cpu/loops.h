// The pointwise loop every CPU kernel runs: rows in parallel, hidden units in SIMD registers.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

namespace rnnkit {
namespace cpu {

// Loads and stores of one lane group: a SIMD register, or a single scalar for the tail.
template <typename V, typename scalar_t>
struct Lanes;

template <typename scalar_t>
struct Lanes<at::vec::Vectorized<scalar_t>, scalar_t> {
  using V = at::vec::Vectorized<scalar_t>;
  static V load(const scalar_t* p) { return V::loadu(p); }
  static void store(scalar_t* p, const V& v) { v.store(p); }
};

template <typename scalar_t>
struct Lanes<scalar_t, scalar_t> {
  using V = scalar_t;
  static V load(const scalar_t* p) { return *p; }
  static void store(scalar_t* p, V v) { *p = v; }
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

template <typename scalar_t, typename Body>
void for_each_unit(int64_t rows, int64_t H, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kUnitsPerTask / std::max<int64_t>(H, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) unit_loop<scalar_t>(n, 0, H, body);
  });
}

// The row operations of a row-norm cell's pointwise code (common/row_norm.h) on the CPU: one
// thread runs a whole row, units and sums a SIMD register at a time.
template <typename scalar_t>
struct HostRow {
  using One = Lanes<scalar_t, scalar_t>;
  template <typename F>
  void units(int64_t count, const F& f) const {
    unit_loop<scalar_t>(0, 0, count, [&](int64_t, int64_t j, auto lanes) { f(j, lanes); });
  }
  template <typename F>
  scalar_t sum(int64_t count, const F& f) const {
    using Vec = at::vec::Vectorized<scalar_t>;
    Vec lanes(scalar_t(0));
    int64_t j = 0;
    for (; j + Vec::size() <= count; j += Vec::size())
      lanes = lanes + f(j, Lanes<Vec, scalar_t>{});
    scalar_t total(0);
    for (; j < count; ++j) total += f(j, One{});
    scalar_t parts[Vec::size()];
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
template <typename scalar_t>
std::vector<scalar_t> bias_sum(int64_t G, const scalar_t* a, const scalar_t* b) {
  std::vector<scalar_t> sum(G);
  for (int64_t k = 0; k < G; ++k) sum[k] = (a ? a[k] : scalar_t(0)) + (b ? b[k] : scalar_t(0));
  return sum;
}

}  // namespace cpu
}  // namespace rnnkit
