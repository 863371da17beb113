// The tensor-core product of the persistent loops' mma variant (cuda/persistent_mma.cuh): PTX's
// mma.sync.m16n8k16 with 16-bit inputs (float16 or bfloat16), or mma.sync.m16n8k8 with TF32
// inputs (float32 values, where torch allows TF32), float sums; the shared-memory layout the
// kernels stage into, and how a block's product is split among its warps. Plain
// __host__ __device__ arithmetic: the CPU tests run these same offsets, split and sums with an
// emulated mma (mma_emulate.h, rnnkit._C.mma_block_product), since no GPU is needed for them.
//
// Each step a block computes S[m, c] = sum_k X[m, k] Wt[c, k] for its staged rows m and its
// columns c (shapes in shared memory, in the input's dtype, row stride ld):
//   forward:  X = h_prev rows [chunk, H], Wt = the W_hh rows of its units' gates [u * K, H]
//             (c = unit * K + gate);
//   backward: X = the previous step's gate gradients [chunk, G], Wt = W_hh's columns of its
//             units [u, G] (c = unit).
// X is the mma's A (M = 16 rows a tile), Wt^T its B (N = 8 columns a tile), k runs 16 (TF32: 8)
// at a time. Columns past the block's last (up to a multiple of 8) and k past the row length (up
// to a whole step) are zeros in shared memory, so every tile is whole.
#pragma once

#include <cstdint>

#include "math.h"  // RNNKIT_HD
#include "persistent.h"

namespace rnnkit {
namespace mma {

constexpr int kM = 16, kN = 8;  // rows and columns of one output tile
constexpr int kLanes = 32;
// A warp's task keeps this many chains of sums (alternate k steps), added at the end.
constexpr int kChains = 2;

// The two instructions: Half, mma.sync.m16n8k16 on 16-bit values (two to a register); Tf32,
// mma.sync.m16n8k8 on float32 values read as TF32 (one to a register).
enum class Kind : int { Half = 0, Tf32 = 1 };
RNNKIT_HD int k_step(Kind kind) { return kind == Kind::Half ? 16 : 8; }
RNNKIT_HD int value_bytes(Kind kind) { return kind == Kind::Half ? 2 : 4; }
RNNKIT_HD int per_register(Kind kind) { return kind == Kind::Half ? 2 : 1; }
// Values after each staged row: 16 bytes, so consecutive rows start 4 banks apart and the 8 rows
// one fragment load touches fall in different banks.
RNNKIT_HD int row_pad(Kind kind) { return 16 / value_bytes(kind); }

RNNKIT_HD constexpr int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Coord {
  int row, col;
};

// PTX's groupID and threadID_in_group of a lane.
RNNKIT_HD int group_of(int lane) { return lane >> 2; }
RNNKIT_HD int thread_in_group(int lane) { return lane & 3; }

// Where the values a lane holds sit in the tile (PTX ISA, "Matrix Fragments for mma.m16n8k16"
// with 16-bit types and "for mma.m16n8k8" with .tf32). A (16 x k_step, row major): four 32-bit
// registers r; register r's first value is at a_coord(kind, lane, r), a Half register's second
// one column to the right.
RNNKIT_HD Coord a_coord(Kind kind, int lane, int r) {
  if (kind == Kind::Tf32) return {group_of(lane) + 8 * (r & 1), thread_in_group(lane) + 4 * (r >> 1)};
  return {group_of(lane) + 8 * (r & 1), 2 * thread_in_group(lane) + 8 * (r >> 1)};
}
// B (k_step x 8, k by n): two 32-bit registers r; (k, n) of the first value, a Half register's
// second at k + 1.
RNNKIT_HD Coord b_coord(Kind kind, int lane, int r) {
  if (kind == Kind::Tf32) return {thread_in_group(lane) + 4 * r, group_of(lane)};
  return {2 * thread_in_group(lane) + 8 * r, group_of(lane)};
}
// C and D (16 x 8 float): four values i.
RNNKIT_HD Coord c_coord(int lane, int i) {
  return {group_of(lane) + 8 * (i >> 1), 2 * thread_in_group(lane) + (i & 1)};
}

// What a block of the mma variant keeps in shared memory, and how its warps split the product.
struct TilePlan {
  int64_t cols = 0;         // C: columns of the block's product (forward u * K, backward u)
  int64_t cols_padded = 0;  // C rounded up to a multiple of kN
  int64_t len = 0;          // k: the staged rows' length (forward H, backward G)
  int64_t ld = 0;           // row stride of X and Wt in shared memory, in values
  int64_t chunk = 0;        // rows of X staged at a time, a multiple of kM
  int64_t splits = 0;       // warps that share one output tile, each a share of the k steps
  int64_t stage_offset = 0, partial_offset = 0, smem_bytes = 0;  // bytes
  Kind kind = Kind::Half;
  rnnkit::persistent::Refusal refusal = rnnkit::persistent::Refusal::None;
  RNNKIT_HD bool fits() const { return refusal == rnnkit::persistent::Refusal::None; }
  RNNKIT_HD int64_t k_steps() const { return round_up(len, k_step(kind)) / k_step(kind); }
  RNNKIT_HD int64_t n_tiles() const { return cols_padded / kN; }
};

// The tile plan of a block owning `units` hidden units (the largest of the partition,
// persistent::make_plan): H hidden, N the largest active batch, gates per unit, backward or
// forward, `warps` per block, smem_limit the dynamic shared memory a block may use, kind the
// instruction (and so the values' size). Shared memory: Wt [cols_padded, ld], then X
// [chunk, ld], then the partial sums [splits, chunk, cols_padded] in float.
RNNKIT_HD TilePlan make_tile_plan(int64_t H, int64_t N, int64_t gates, int64_t units,
                                  bool backward, int64_t warps, int64_t smem_limit,
                                  Kind kind = Kind::Half) {
  using rnnkit::persistent::Refusal;
  TilePlan t;
  t.kind = kind;
  if (H <= 0 || N <= 0 || gates <= 0 || units <= 0 || warps <= 0) {
    t.refusal = Refusal::Empty;
    return t;
  }
  t.cols = backward ? units : units * gates;
  t.cols_padded = round_up(t.cols, kN);
  t.len = backward ? gates * H : H;
  t.ld = round_up(t.len, k_step(kind)) + row_pad(kind);
  const int64_t align = rnnkit::persistent::kAlign, bytes = value_bytes(kind);
  t.stage_offset = round_up(t.cols_padded * t.ld * bytes, align);
  const int64_t row_bytes = t.ld * bytes;
  // Splits for one tile of rows: as many as leave every warp a task, at most one per k step.
  const int64_t tiles = t.n_tiles();
  int64_t splits = warps / tiles;
  if (splits < 1) splits = 1;
  if (splits > t.k_steps()) splits = t.k_steps();
  t.splits = splits;
  const int64_t partial_row = t.splits * t.cols_padded * 4;  // bytes of sums per staged row
  if (t.stage_offset + kM * (row_bytes + partial_row) + align > smem_limit) {
    t.refusal = t.stage_offset > smem_limit ? Refusal::WeightsTooLarge : Refusal::StageTooLarge;
    return t;
  }
  const int64_t wanted = round_up(N, kM);
  const int64_t room =
      (smem_limit - t.stage_offset - align) / (row_bytes + partial_row) / kM * kM;
  t.chunk = wanted < room ? wanted : room;
  t.partial_offset = round_up(t.stage_offset + t.chunk * row_bytes, align);
  t.smem_bytes = t.partial_offset + t.chunk * partial_row;
  return t;
}

// One warp's task: output tile (mt, nt) over the k steps ks, ks + splits, ...
struct Task {
  int mt, nt, ks;
};

// Tasks for `m_tiles` tiles of rows: m_tiles * n_tiles * splits of them, handed to the warps in
// turn (warp w runs tasks w, w + warps, ...).
RNNKIT_HD int64_t task_count(const TilePlan& t, int64_t m_tiles) {
  return m_tiles * t.n_tiles() * t.splits;
}
RNNKIT_HD Task task_of(const TilePlan& t, int64_t it) {
  const int64_t per_m = t.n_tiles() * t.splits;
  const int64_t mt = it / per_m, rest = it - mt * per_m;
  return {int(mt), int(rest / t.splits), int(rest % t.splits)};
}

// Where X's row m, value k and Wt's row c, value k sit in shared memory (in values from the
// start of each); the padding past len and past cols is zero.
RNNKIT_HD int64_t x_index(const TilePlan& t, int64_t m, int64_t k) { return m * t.ld + k; }
RNNKIT_HD int64_t wt_index(const TilePlan& t, int64_t c, int64_t k) { return c * t.ld + k; }

// Offsets, in values, of the first value of register r of a lane's fragment for the tile whose
// top-left corner is (m0, k0) of X, or (k0, n0) of B = Wt^T (Wt's row n0 + n, column k0 + k).
// kind is t.kind, passed apart so that a kernel can give it as a constant.
RNNKIT_HD int64_t a_offset(const TilePlan& t, Kind kind, int lane, int r, int64_t m0, int64_t k0) {
  const Coord a = a_coord(kind, lane, r);
  return x_index(t, m0 + a.row, k0 + a.col);
}
RNNKIT_HD int64_t b_offset(const TilePlan& t, Kind kind, int lane, int r, int64_t n0, int64_t k0) {
  const Coord b = b_coord(kind, lane, r);
  return wt_index(t, n0 + b.col, k0 + b.row);
}

// The partial sums: [splits, chunk, cols_padded] floats. Where value i of a lane's sums for task
// `task` goes, and the full sum of row m (of the chunk), column c.
RNNKIT_HD int64_t partial_index(const TilePlan& t, int ks, int64_t m, int64_t c) {
  return (int64_t(ks) * t.chunk + m) * t.cols_padded + c;
}
RNNKIT_HD int64_t c_index(const TilePlan& t, const Task& task, int lane, int i) {
  const Coord c = c_coord(lane, i);
  return partial_index(t, task.ks, int64_t(task.mt) * kM + c.row, int64_t(task.nt) * kN + c.col);
}
RNNKIT_HD float partial_sum(const TilePlan& t, const float* partial, int64_t m, int64_t c) {
  float s = 0.0f;
  for (int ks = 0; ks < int(t.splits); ++ks) s += partial[partial_index(t, ks, m, c)];
  return s;
}

// How a block fills Wt from W_hh ([G, H], row major) at the start of a launch: element e of
// u * K * H (u: its units, K gates each, j0 its first unit) goes from W_hh[src] to wt[dst].
struct WeightMove {
  int64_t dst, src;
};
// Forward: Wt's row r = jl * K + g is W_hh's row g * H + j0 + jl (gate g of unit j0 + jl).
RNNKIT_HD WeightMove forward_weight(const TilePlan& t, int64_t e, int64_t H, int64_t K,
                                    int64_t j0) {
  const int64_t r = e / H, k = e - r * H, jl = r / K, g = r - jl * K;
  return {wt_index(t, r, k), (g * H + j0 + jl) * H + k};
}
// Backward: Wt's row jl is W_hh's column j0 + jl, all G of its values.
RNNKIT_HD WeightMove backward_weight(const TilePlan& t, int64_t e, int64_t H, int64_t K,
                                     int64_t j0) {
  const int64_t G = K * H, jl = e / G, g = e - jl * G;
  return {wt_index(t, jl, g), g * H + j0 + jl};
}

// The pointwise pass after a chunk's product: item e of rows * u is (row of the chunk, unit of the
// block); its sums sit in column column_of(unit, gate) of the product.
struct Item {
  int row, unit;
};
RNNKIT_HD Item item_of(int e, int u) { return {e / u, e - (e / u) * u}; }
RNNKIT_HD int64_t column_of(int unit, int gate, int K, bool backward) {
  return backward ? unit : int64_t(unit) * K + gate;
}

}  // namespace mma
}  // namespace rnnkit
