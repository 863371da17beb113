// A bfloat16 layer's gate gradients as the weight products of common/weight_grads.h take them
// (GateGrads): rounded to bfloat16, with their float32 column sums (the bias gradients) and, where
// the weight gradients have kTransposeRows rows or more, transposed. The backward time loop hands
// over each step's rows once the step has them final, and they are rounded a run of kRows rows at
// a time while still in cache (they were a pass over all of them after the loop, reading tens of
// MB back from memory); Backend::gate_grads hands over all rows at once. Where a run starts
// depends on the sequence's plan only, not on the threads, so the sums are the same in every call.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "../common/weight_grads.h"
#include "memory.h"
#include "weights.h"

namespace rnnkit {
namespace cpu {

class RoundGateGrads {
 public:
  static constexpr int64_t kTransposeRows = 1024;  // docs/kernels.md has why
  static constexpr int64_t kRows = 256;            // rows rounded at a time: one run of the sums

  // da: [P, G] float32, unit column stride; da_hh: [P, G], whose last G - shared columns W_hh's
  // gradient takes instead of da's (weight_grads.h; shared = G where da_hh is da).
  RoundGateGrads(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared)
      : da_(da.const_data_ptr<float>()),
        tail_(da_hh.const_data_ptr<float>() + shared),
        ld_(da.stride(0)),
        ld_hh_(da_hh.stride(0)),
        P_(da.size(0)),
        G_(da.size(1)),
        u_(G_ - shared) {
    const auto options = da.options().dtype(at::kBFloat16);
    g_.a = large_buffer({P_, G_}, options);
    g_.sums = at::zeros({G_ + u_}, da.options());
    if (G_ >= kTransposeRows)
      g_.t = large_buffer({G_ + u_, P_}, options);
    else if (u_ > 0)
      g_.rec = large_buffer({P_, u_}, options);
  }

  // Rows [row, row + n) are final. Rows come in adjacent ranges, in either order.
  void rows_done(int64_t row, int64_t n) {
    if (n <= 0) return;
    if (hi_ == lo_) {
      lo_ = row, hi_ = row + n;
    } else if (row + n == lo_) {
      lo_ = row;
    } else if (row == hi_) {
      hi_ += n;
    } else {
      round(lo_, hi_);
      lo_ = row, hi_ = row + n;
    }
    if (hi_ - lo_ >= kRows) {
      round(lo_, hi_);
      lo_ = hi_ = 0;
    }
  }

  // Every row must have been handed over.
  GateGrads finish() {
    if (hi_ > lo_) round(lo_, hi_);
    lo_ = hi_ = 0;
    return g_;
  }

 private:
  void round(int64_t lo, int64_t hi) {
    using bf16 = c10::BFloat16;
    bf16* const t = g_.t.defined() ? g_.t.data_ptr<bf16>() : nullptr;
    float* const sums = g_.sums.data_ptr<float>();
    convert_rows_with_sums<bf16>(
        da_ + lo * ld_, ld_, hi - lo, G_,
        {g_.a.data_ptr<bf16>() + lo * G_, t ? t + lo : nullptr, P_, u_, sums});
    if (u_ > 0)
      convert_rows_with_sums<bf16>(
          tail_ + lo * ld_hh_, ld_hh_, hi - lo, u_,
          {t ? nullptr : g_.rec.data_ptr<bf16>() + lo * u_, t ? t + G_ * P_ + lo : nullptr, P_,
           0, sums + G_});
  }

  const float* da_;
  const float* tail_;
  int64_t ld_, ld_hh_, P_, G_, u_;
  GateGrads g_;
  int64_t lo_ = 0, hi_ = 0;  // rows handed over and not yet rounded
};

}  // namespace cpu
}  // namespace rnnkit
