// The CPU's input projection in chunks of steps: inference projects a chunk just before its steps
// run, into one reused buffer, instead of storing the gates of the whole sequence.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../common/plan.h"

namespace rnnkit {
namespace cpu {

// The input projection of a layer in chunks of consecutive steps (in the order the forward pass
// takes them). The rows of a chunk's steps are contiguous in the packed layout, so each chunk is
// one matrix product.
//   whole = true (training): one chunk, the whole sequence, into the workspace that backward
//     reads anyway.
//   whole = false (inference): chunks of kMinRows to kMaxRows rows (as many as fit in kBytes of
//     row_bytes each), each projected into the same buffer just before its steps run, so the
//     gates of the whole sequence are never stored. Larger chunks make faster products
//     (docs/kernels.md); the byte bound keeps the buffer in the caches.
class ProjectionChunks {
 public:
  static constexpr int64_t kMinRows = 256, kMaxRows = 1024, kBytes = int64_t(8) << 20;

  ProjectionChunks(const SequencePlan& plan, bool whole, int64_t row_bytes) : plan_(plan) {
    const int64_t rows =
        std::clamp<int64_t>(kBytes / std::max<int64_t>(row_bytes, 1), kMinRows, kMaxRows);
    steps_ = whole ? std::max<int64_t>(plan.T(), 1)
                   : std::max<int64_t>(1, rows / std::max<int64_t>(plan.N, 1));
  }
  int64_t count() const { return (plan_.T() + steps_ - 1) / steps_; }
  int64_t first_step(int64_t k) const { return k * steps_; }
  int64_t end_step(int64_t k) const { return std::min(plan_.T(), (k + 1) * steps_); }
  // The first packed row of chunk k, and its number of rows.
  int64_t first_row(int64_t k) const {
    return plan_.offsets[plan_.forward_step(plan_.reverse ? end_step(k) - 1 : first_step(k))];
  }
  int64_t rows(int64_t k) const {
    int64_t total = 0;
    for (int64_t s = first_step(k); s < end_step(k); ++s)
      total += plan_.batch_sizes[plan_.forward_step(s)];
    return total;
  }
  // Rows a buffer for any one chunk needs (at least 1, so that it can be allocated).
  int64_t max_rows() const {
    return std::max<int64_t>(1, std::min(plan_.P, steps_ * plan_.N));
  }

 private:
  const SequencePlan& plan_;
  int64_t steps_ = 1;
};

}  // namespace cpu
}  // namespace rnnkit
