// Layer normalisation inside a cell's pointwise pass: the row-wise hook of the time loops.
//
// A cell with kRowNorm (common/cell.h) normalises whole rows (the 4H recurrent pre-activations
// of a batch row, its H cell states), so its pointwise code needs statistics of a row before it
// can finish any unit of it. Such a cell writes forward_row(io, n, ops) and backward_row(io, n,
// ops) instead of the per-unit forward and backward; the time loops call them once per active
// row, after the step's recurrent product, with the backend's row operations `ops`:
//   ops.units(count, f)   f(j, lanes) for every j < count: a SIMD register at a time then one by
//                         one on the CPU, the block's threads striding over j on CUDA; on CUDA
//                         the block waits for all of them before it returns
//   ops.sum(count, f)     the sum over j < count of f(j, lanes) (lanes as for units), one
//                         opmath value; on CUDA a block reduction whose result every thread gets
//   ops.leader()          true for one thread of the row (the one that writes per-row values)
//   Ops::One              lanes of one value (load, store, V): the per-row values
// The normalisation arithmetic below is written once on these, for both backends. Every row it
// reads or writes is in the compute type (StepForward's compute_t: the workspace, the products,
// the norm parameters, the gradients), so bfloat16 and float16 layers normalise in float32.
#pragma once

#include <cmath>
#include <cstdint>

#include "math.h"

namespace rnnkit {
namespace norm {

// torch.nn.functional.layer_norm's default epsilon (and haste's).
constexpr double kEps = 1e-5;

// Workspace widths of row-norm cells round up to a multiple of this many values, so that every
// row starts as aligned as the first (the input projection is written into the rows).
constexpr int64_t kRowAlign = 16;
RNNKIT_HD constexpr int64_t aligned_width(int64_t width) {
  return (width + kRowAlign - 1) / kRowAlign * kRowAlign;
}

RNNKIT_HD float rk_rsqrt(float x) { return 1.0f / ::sqrtf(x); }
RNNKIT_HD double rk_rsqrt(double x) { return 1.0 / ::sqrt(x); }

template <typename A>
struct Moments {
  A mean, rstd;  // the row's mean and 1 / sqrt(variance + eps) (biased variance, as torch)
};

// Mean and 1/std of x[0 .. count), two passes (no cancellation for rows far from zero mean).
template <typename Ops, typename scalar_t>
RNNKIT_HD Moments<typename Ops::One::V> moments(const Ops& ops, const scalar_t* x, int64_t count) {
  using One = typename Ops::One;
  using A = typename One::V;
  const A mean = ops.sum(count, [&](int64_t j, auto lanes) {
                   using L = decltype(lanes);
                   return L::load(x + j);
                 }) / A(count);
  const A var = ops.sum(count, [&](int64_t j, auto lanes) {
                  using L = decltype(lanes);
                  using V = typename L::V;
                  const V d = L::load(x + j) - V(mean);
                  return d * d;
                }) / A(count);
  return {mean, rk_rsqrt(var + A(kEps))};
}

// The two row means layer norm's backward needs, for y = gamma ⊙ x_hat + beta and dy the
// gradient of y: mean(dy ⊙ gamma) and mean(dy ⊙ gamma ⊙ x_hat). Then
//   dx = rstd ⊙ (dy ⊙ gamma - m.first - x_hat ⊙ m.second)      (grad_x below)
template <typename A>
struct GradMeans {
  A first, second;
};

template <typename Ops, typename scalar_t>
RNNKIT_HD GradMeans<typename Ops::One::V> grad_means(const Ops& ops, const scalar_t* dy,
                                                     const scalar_t* gamma,
                                                     const scalar_t* x_hat, int64_t count) {
  using One = typename Ops::One;
  using A = typename One::V;
  const A first = ops.sum(count, [&](int64_t j, auto lanes) {
    using L = decltype(lanes);
    return L::load(dy + j) * L::load(gamma + j);
  });
  const A second = ops.sum(count, [&](int64_t j, auto lanes) {
    using L = decltype(lanes);
    return L::load(dy + j) * L::load(gamma + j) * L::load(x_hat + j);
  });
  return {first / A(count), second / A(count)};
}

// The gradient of layer norm's input, for one value (lanes of one or several).
template <typename V, typename A>
RNNKIT_HD V grad_x(V dy, V gamma, V x_hat, A rstd, const GradMeans<A>& m) {
  return V(rstd) * (dy * gamma - V(m.first) - x_hat * V(m.second));
}

// dx[0 .. count) from dy, gamma and the saved x_hat and rstd of one row.
template <typename Ops, typename scalar_t, typename A>
RNNKIT_HD void backward(const Ops& ops, int64_t count, const scalar_t* dy, const scalar_t* gamma,
                        const scalar_t* x_hat, A rstd, scalar_t* dx) {
  const GradMeans<A> m = grad_means(ops, dy, gamma, x_hat, count);
  ops.units(count, [&](int64_t j, auto lanes) {
    using L = decltype(lanes);
    L::store(dx + j, grad_x(L::load(dy + j), L::load(gamma + j), L::load(x_hat + j), rstd, m));
  });
}

}  // namespace norm
}  // namespace rnnkit
