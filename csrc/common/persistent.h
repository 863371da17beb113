// The plan of the persistent CUDA kernels (cuda/persistent.cu): how the hidden units of one layer
// are shared among the thread blocks of one cooperative launch, what each block keeps in shared
// memory, and whether a shape fits at all. Plain __host__ __device__ arithmetic, so that the CPU
// tests check it through rnnkit._C on machines without a GPU (tests/library/test_persistent_plan.py).
//
// Forward, per block: the W_hh rows of the gates of its units, [units * gates, H], stay in shared
// memory for the whole sequence; each step stages `chunk` rows of h_prev ([chunk, H]) at a time.
// Backward, per block: the W_hh columns of its units, [units, G] (G = gates * H); each step stages
// `chunk` rows of the previous step's gate gradients ([chunk, G]) at a time.
// A block works on tiles of kTileRows batch rows, so a chunk is a multiple of kTileRows (rows past
// the active batch are staged as zeros).
#pragma once

#include <cstdint>
#include <string>

#include "math.h"  // RNNKIT_HD

namespace rnnkit {
namespace persistent {

constexpr int64_t kTileRows = 4;  // batch rows of one warp's tile
constexpr int64_t kAlign = 16;    // bytes: the staging buffer starts on this boundary

// Why a shape does not fit (None when it does).
enum class Refusal : int { None = 0, Empty = 1, NoBlocks = 2, WeightsTooLarge = 3, StageTooLarge = 4 };

struct Plan {
  int64_t blocks = 0;      // thread blocks of the launch (all resident at once)
  int64_t units = 0;       // hidden units per block (the last block may own fewer)
  int64_t chunk = 0;       // batch rows staged in shared memory at a time
  int64_t weight_bytes = 0;
  int64_t smem_bytes = 0;  // dynamic shared memory per block
  Refusal refusal = Refusal::None;
  RNNKIT_HD bool fits() const { return refusal == Refusal::None; }
};

// What a shape needs, given the device:
//   H: hidden units; N: batch (the largest active batch); gates: per unit (LSTM 4, GRU 3, RNN 1)
//   elem_bytes: bytes of one stored value (2 for float16/bfloat16, 4, 8)
//   backward: the backward kernel (stages [chunk, G] rows) or the forward one ([chunk, H])
//   max_blocks: blocks that can be resident at once (one per SM: each uses most of its memory)
//   smem_limit: dynamic shared memory a block may use (the device's opt-in limit)
RNNKIT_HD Plan make_plan(int64_t H, int64_t N, int64_t gates, int64_t elem_bytes, bool backward,
                         int64_t max_blocks, int64_t smem_limit) {
  Plan p;
  if (H <= 0 || N <= 0 || gates <= 0 || elem_bytes <= 0) {
    p.refusal = Refusal::Empty;
    return p;
  }
  if (max_blocks <= 0) {
    p.refusal = Refusal::NoBlocks;
    return p;
  }
  p.units = (H + max_blocks - 1) / max_blocks;
  p.blocks = (H + p.units - 1) / p.units;
  p.weight_bytes = p.units * gates * H * elem_bytes;
  const int64_t stage_at = (p.weight_bytes + kAlign - 1) / kAlign * kAlign;
  const int64_t row_bytes = (backward ? gates * H : H) * elem_bytes;
  if (stage_at + kTileRows * row_bytes > smem_limit) {
    p.refusal = stage_at > smem_limit ? Refusal::WeightsTooLarge : Refusal::StageTooLarge;
    return p;
  }
  const int64_t wanted = (N + kTileRows - 1) / kTileRows * kTileRows;
  const int64_t room = (smem_limit - stage_at) / row_bytes / kTileRows * kTileRows;
  p.chunk = wanted < room ? wanted : room;
  p.smem_bytes = stage_at + p.chunk * row_bytes;
  return p;
}

// The first hidden unit of block b, and how many it owns (0 past the last unit).
RNNKIT_HD int64_t first_unit(const Plan& p, int64_t b) { return b * p.units; }
RNNKIT_HD int64_t unit_count(const Plan& p, int64_t H, int64_t b) {
  const int64_t left = H - b * p.units;
  return left <= 0 ? 0 : (left < p.units ? left : p.units);
}

// The order and batch sizes of the steps on the device: padded input (batch_sizes null) has N
// rows every step, at row t * N; packed input reads the host plan's two tables, copied once.
struct Steps {
  const int64_t* batch_sizes;  // [T] or null
  const int64_t* offsets;      // [T] or null
  int64_t T, N;
  bool reverse;

  RNNKIT_HD int64_t forward_time(int64_t s) const { return reverse ? T - 1 - s : s; }
  RNNKIT_HD int64_t backward_time(int64_t s) const { return reverse ? s : T - 1 - s; }
  RNNKIT_HD int64_t batch(int64_t t) const { return batch_sizes ? batch_sizes[t] : N; }
  RNNKIT_HD int64_t offset(int64_t t) const { return offsets ? offsets[t] : t * N; }
};

// Forward step s's rows: batch bs from packed row `row`; its h_prev is the output of the step
// before for rows below bs_src (from packed row row_src), h0 for the rows that start here.
struct ForwardRows {
  int64_t bs, row, bs_src, row_src;
};
RNNKIT_HD ForwardRows forward_rows(const Steps& steps, int64_t s) {
  const int64_t t = steps.forward_time(s);
  ForwardRows r{steps.batch(t), steps.offset(t), 0, 0};
  if (s > 0) {
    const int64_t t_src = steps.forward_time(s - 1);
    r.bs_src = steps.batch(t_src);
    r.row_src = steps.offset(t_src);
  }
  return r;
}

// Backward step s of T + 1 (s == T: the last pass, which only turns the last gate gradients into
// grad_h0): the current step's rows (bs from `row`; none in the last pass) and those of the step
// before in backward order (bs_prev from row_prev; none at s = 0), whose gate gradients give this
// step's carried dh; rows_all, the rows either touches.
struct BackwardRows {
  int64_t bs, row, bs_prev, row_prev, rows_all;
};
RNNKIT_HD BackwardRows backward_rows(const Steps& steps, int64_t s) {
  BackwardRows r{0, 0, 0, 0, 0};
  if (s < steps.T) {
    const int64_t t = steps.backward_time(s);
    r.bs = steps.batch(t);
    r.row = steps.offset(t);
  }
  if (s > 0) {
    const int64_t tp = steps.backward_time(s - 1);
    r.bs_prev = steps.batch(tp);
    r.row_prev = steps.offset(tp);
  }
  r.rows_all = r.bs > r.bs_prev ? r.bs : r.bs_prev;
  return r;
}

// RNNKIT_CUDA_PERSISTENT: "0" forbids the persistent loop, "1" forces it wherever the shape fits,
// "auto" (also unset or empty) lets prefers_persistent() choose.
enum class Choice : int { Off = 0, On = 1, Auto = 2 };

// The choice `auto` makes, for one layer call: H hidden units, N the largest active batch,
// elem_bytes the stored value's size. The bounds are those of the shapes where the persistent loop
// beat the general one clearly, forward and forward+backward, on an H200 (docs/kernels.md, "Which
// loop runs"): active batch up to 4 with H up to 1024, or up to 16 with H up to 256; float16 and
// bfloat16 only (float32 and float64 were not measured at these batches). The same bounds serve
// every cell: GRU and RNN do 3/4 and 1/4 of LSTM's recurrent product per step in the persistent
// loop, while the general loop pays the same two launches per step for all three.
constexpr int64_t kAutoSmallBatch = 4, kAutoSmallBatchMaxH = 1024;
constexpr int64_t kAutoMidBatch = 16, kAutoMidBatchMaxH = 256;
inline bool prefers_persistent(int64_t H, int64_t N, int64_t elem_bytes) {
  if (H <= 0 || N <= 0 || elem_bytes != 2) return false;
  return (N <= kAutoSmallBatch && H <= kAutoSmallBatchMaxH) ||
         (N <= kAutoMidBatch && H <= kAutoMidBatchMaxH);
}

inline const char* refusal_text(Refusal r) {
  switch (r) {
    case Refusal::None: return "fits";
    case Refusal::Empty: return "empty shape";
    case Refusal::NoBlocks: return "no resident blocks";
    case Refusal::WeightsTooLarge: return "W_hh slice does not fit in shared memory";
    case Refusal::StageTooLarge: return "no room left to stage a tile of rows";
  }
  return "unknown";
}

// Which loop the last CUDA layer call ran ("persistent", or "general: <why>"), forward and
// backward; defined in cuda/persistent.cu, read by rnnkit._C.persistent_last() in CUDA builds.
std::string last_forward();
std::string last_backward();

}  // namespace persistent
}  // namespace rnnkit
