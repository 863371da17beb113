// The order and sizes of the time steps of one layer and direction, read once on the host.
//
// Padded input [T, N, I] is the special case of packed input [P, I] in which every step has the
// full batch (batch_sizes = [N] * T, P = T * N); one code path serves both. For packed input the
// active batch shrinks as sequences end (batch_sizes is non-increasing), and the rows of step t
// are rows offset[t] .. offset[t] + batch_sizes[t] of the packed tensor, as in torch.nn's
// PackedSequence and cuDNN's packed layout.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "checks.h"

namespace rnnkit {

struct SequencePlan {
  std::vector<int64_t> batch_sizes;  // [T]: active batch of each step
  std::vector<int64_t> offsets;      // [T]: first packed row of each step
  int64_t N = 0;                     // full batch (batch_sizes[0], or N of padded input)
  int64_t P = 0;                     // packed rows, sum of batch_sizes
  bool reverse = false;              // the direction runs from the last step to the first

  int64_t T() const { return static_cast<int64_t>(batch_sizes.size()); }
  // The time index of the s-th step the forward pass processes.
  int64_t forward_step(int64_t s) const { return reverse ? T() - 1 - s : s; }
  // The time index of the s-th step the backward pass processes (the forward order, reversed).
  int64_t backward_step(int64_t s) const { return reverse ? s : T() - 1 - s; }
};

// input: [T, N, I] when batch_sizes is absent; [P, I] with batch_sizes [T] (int64) otherwise.
inline SequencePlan make_plan(const at::Tensor& input, const c10::optional<at::Tensor>& batch_sizes,
                              bool reverse, const char* op) {
  SequencePlan plan;
  plan.reverse = reverse;
  if (!batch_sizes.has_value()) {
    checks::ndim(input, 3, op, "input (T, N, I) without batch_sizes");
    const int64_t T = input.size(0);
    plan.N = input.size(1);
    plan.batch_sizes.assign(T, plan.N);
  } else {
    checks::ndim(input, 2, op, "packed input (P, I) with batch_sizes");
    const at::Tensor bs = batch_sizes->to(at::kCPU);
    TORCH_CHECK(bs.scalar_type() == at::kLong && bs.dim() == 1, op,
                ": expected batch_sizes as a 1-D int64 tensor, got ", bs.dim(), "-D ",
                bs.scalar_type());
    const at::Tensor c = bs.contiguous();
    const int64_t* p = c.data_ptr<int64_t>();
    plan.batch_sizes.assign(p, p + c.numel());
    plan.N = plan.batch_sizes.empty() ? 0 : plan.batch_sizes[0];
    for (int64_t t = 0; t < plan.T(); ++t) {
      const int64_t b = plan.batch_sizes[t];
      TORCH_CHECK(b > 0, op, ": expected every batch size to be positive, got batch_sizes[", t,
                  "] = ", b);
      TORCH_CHECK(t == 0 || b <= plan.batch_sizes[t - 1], op,
                  ": expected non-increasing batch_sizes (sequences sorted by length), got "
                  "batch_sizes[", t - 1, "] = ", plan.batch_sizes[t - 1], " < batch_sizes[", t,
                  "] = ", b);
    }
  }
  // P adds up at most `rows` (the rows input really has), so the sum cannot overflow int64 even
  // for absurd batch sizes.
  const int64_t rows = batch_sizes.has_value() ? input.size(0) : plan.T() * plan.N;
  plan.offsets.resize(plan.T());
  for (int64_t t = 0; t < plan.T(); ++t) {
    TORCH_CHECK(plan.batch_sizes[t] <= rows - plan.P, op, ": packed input has ", rows,
                " rows but batch_sizes add up to more (", plan.P, " rows before batch_sizes[", t,
                "] = ", plan.batch_sizes[t], ")");
    plan.offsets[t] = plan.P;
    plan.P += plan.batch_sizes[t];
  }
  TORCH_CHECK(rows == plan.P, op, ": packed input has ", rows,
              " rows but batch_sizes add up to ", plan.P);
  return plan;
}

// The state each step of a layer started from, in the packed row order.
//   states: [P, F] the state after each step (the layer's output, or its cell states)
//   init:   [N, F] the initial state
//   prev:   [P, F] the buffer to fill (contiguous, in the states' dtype), which is returned:
//           row r holds the state the step of row r read
// Used by the backward passes, which need h_prev (and c_prev) of every step for the weight
// gradient products; both backends call it. Padded input is the states shifted by one step;
// packed input gathers rows, on the CPU with one copy per row, elsewhere with tensor copies.
inline at::Tensor previous_states(const at::Tensor& states, const at::Tensor& init,
                                  const SequencePlan& plan, at::Tensor prev) {
  const int64_t T = plan.T(), N = plan.N;
  TORCH_CHECK(prev.is_contiguous() && prev.dim() == 2 && prev.size(0) == plan.P &&
                  prev.size(1) == states.size(1) && prev.scalar_type() == states.scalar_type(),
              "previous_states: expected a contiguous [", plan.P, ", ", states.size(1), "] ",
              states.scalar_type(), " buffer, got ", prev.scalar_type(), " ", prev.sizes());
  if (T == 0) return prev;
  const bool padded = plan.batch_sizes.front() == plan.batch_sizes.back();
  if (padded) {
    // Every step has the full batch: the previous states are the states shifted by one step.
    const int64_t first = plan.reverse ? plan.P - N : 0;  // the rows that read init
    prev.narrow(0, first, N).copy_(init);
    prev.narrow(0, plan.reverse ? 0 : N, plan.P - N)
        .copy_(states.narrow(0, plan.reverse ? N : 0, plan.P - N));
    return prev;
  }
  // Step t's first `carried` rows ran the neighbouring step src(t) (the one before it in the
  // pass's order) and read its output; the rest start from init.
  const auto src = [&](int64_t t) { return plan.reverse ? t + 1 : t - 1; };
  const auto carried = [&](int64_t t) {
    const int64_t s = src(t);
    return (s < 0 || s >= T) ? int64_t(0) : std::min(plan.batch_sizes[t], plan.batch_sizes[s]);
  };
  if (states.is_cpu()) {
    // Rows are copied as bytes; states may be a column slice (row stride above F).
    const at::Tensor from = states.stride(1) == 1 ? states : states.contiguous();
    const at::Tensor first = init.contiguous();
    const int64_t row_bytes = from.size(1) * from.element_size();
    const int64_t ld = from.stride(0) * from.element_size();
    const char* s = static_cast<const char*>(from.data_ptr());
    const char* i = static_cast<const char*>(first.data_ptr());
    char* d = static_cast<char*>(prev.data_ptr());
    const int64_t step_bytes = std::max<int64_t>(N * row_bytes, 1);  // at most, per step
    const int64_t grain = std::max<int64_t>(1, (int64_t(256) << 10) / step_bytes);
    at::parallel_for(0, T, grain, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c = carried(t);
        for (int64_t n = 0; n < plan.batch_sizes[t]; ++n)
          std::memcpy(d + (plan.offsets[t] + n) * row_bytes,
                      n < c ? s + (plan.offsets[src(t)] + n) * ld : i + n * row_bytes, row_bytes);
      }
    });
    return prev;
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t bs = plan.batch_sizes[t], c = carried(t);
    at::Tensor dst = prev.narrow(0, plan.offsets[t], bs);
    if (c > 0) dst.narrow(0, 0, c).copy_(states.narrow(0, plan.offsets[src(t)], c));
    if (c < bs) dst.narrow(0, c, bs - c).copy_(init.narrow(0, c, bs - c));
  }
  return prev;
}

}  // namespace rnnkit
