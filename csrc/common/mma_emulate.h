// A CPU stand-in for the tensor-core block product of the persistent loops' mma variant
// (mma_tile.h; the kernels are cuda/persistent_mma.cuh), for the tests on machines without a GPU:
// the same tasks handed to the same warps, the same fragment offsets into the same shared-memory
// layout, the same weight gather, chains and partial sums, with each mma.sync done by emulate_mma
// below from the fragment maps. Host code only; rnnkit._C.mma_block_product and mma_block_sums
// run it.
#pragma once

#include <cstdint>
#include <vector>

#include "mma_tile.h"

namespace rnnkit {
namespace mma {

// One mma.sync.m16n8k16 (Half) or m16n8k8 (Tf32) as a warp issues it: each lane's registers in
// (a[lane][r][e]: value e of register r, read as float; TF32's rounding is not modelled),
// d[lane][i] += value i of the lane's part of the product A B. The tile matrices are rebuilt from
// the registers through the fragment maps.
inline void emulate_mma(Kind kind, const float (&a)[kLanes][4][2], const float (&b)[kLanes][2][2],
                        float (&d)[kLanes][4]) {
  constexpr int kMaxK = 16;
  float A[kM][kMaxK] = {}, B[kMaxK][kN] = {};
  const int values = per_register(kind);
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int r = 0; r < 4; ++r) {
      const Coord c = a_coord(kind, lane, r);
      for (int e = 0; e < values; ++e) A[c.row][c.col + e] = a[lane][r][e];
    }
    for (int r = 0; r < 2; ++r) {
      const Coord c = b_coord(kind, lane, r);
      for (int e = 0; e < values; ++e) B[c.row + e][c.col] = b[lane][r][e];
    }
  }
  for (int lane = 0; lane < kLanes; ++lane)
    for (int i = 0; i < 4; ++i) {
      const Coord c = c_coord(lane, i);
      float s = 0.0f;
      for (int k = 0; k < k_step(kind); ++k) s += A[c.row][k] * B[k][c.col];
      d[lane][i] += s;
    }
}

// The product of one staged chunk of `rows` rows as the block's `warps` warps compute it:
// x [chunk, ld] and wt [cols_padded, ld] as laid out in shared memory (x_index, wt_index; zero
// padded), partial [splits, chunk, cols_padded] out.
inline void emulate_block_product(const TilePlan& t, const float* x, const float* wt,
                                  int64_t rows, int64_t warps, float* partial) {
  const int64_t tasks = task_count(t, round_up(rows, kM) / kM);
  for (int64_t w = 0; w < warps; ++w)
    for (int64_t it = w; it < tasks; it += warps) {
      const Task task = task_of(t, it);
      float acc[kChains][kLanes][4] = {};
      const int values = per_register(t.kind), step = k_step(t.kind);
      int chain = 0;
      for (int64_t ks = task.ks; ks < t.k_steps(); ks += t.splits, chain = (chain + 1) % kChains) {
        float a[kLanes][4][2] = {}, b[kLanes][2][2] = {};
        for (int lane = 0; lane < kLanes; ++lane) {
          for (int r = 0; r < 4; ++r) {
            const int64_t off = a_offset(t, t.kind, lane, r, int64_t(task.mt) * kM, ks * step);
            for (int e = 0; e < values; ++e) a[lane][r][e] = x[off + e];
          }
          for (int r = 0; r < 2; ++r) {
            const int64_t off = b_offset(t, t.kind, lane, r, int64_t(task.nt) * kN, ks * step);
            for (int e = 0; e < values; ++e) b[lane][r][e] = wt[off + e];
          }
        }
        emulate_mma(t.kind, a, b, acc[chain]);
      }
      for (int lane = 0; lane < kLanes; ++lane)
        for (int i = 0; i < 4; ++i) {
          float sum = 0.0f;
          for (int c = 0; c < kChains; ++c) sum += acc[c][lane][i];
          partial[c_index(t, task, lane, i)] = sum;
        }
    }
}

// The partial sums of one chunk: x [rows, len] (row major) staged as the kernels stage it (zero
// padded), then the emulated block product with Wt already laid out in ws [cols_padded, ld].
inline std::vector<float> chunk_partials(const TilePlan& t, const float* x, int64_t rows,
                                         const std::vector<float>& ws, int64_t warps) {
  std::vector<float> xs(size_t(t.chunk * t.ld), 0.0f);
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t k = 0; k < t.len; ++k) xs[size_t(x_index(t, m, k))] = x[m * t.len + k];
  std::vector<float> partial(size_t(t.splits * t.chunk * t.cols_padded), 0.0f);
  emulate_block_product(t, xs.data(), ws.data(), rows, warps, partial.data());
  return partial;
}

// S[m, c] = sum_k x[m, k] wt[c, k] for m < rows, c < t.cols, through the layout, the emulated
// warps and the partial sums: x [rows, len] and wt [cols, len], row major, rows <= t.chunk.
inline std::vector<float> block_product(const TilePlan& t, const float* x, const float* wt,
                                        int64_t rows, int64_t warps) {
  std::vector<float> ws(size_t(t.cols_padded * t.ld), 0.0f);
  for (int64_t c = 0; c < t.cols; ++c)
    for (int64_t k = 0; k < t.len; ++k) ws[size_t(wt_index(t, c, k))] = wt[c * t.len + k];
  const std::vector<float> partial = chunk_partials(t, x, rows, ws, warps);
  std::vector<float> s(size_t(rows * t.cols));
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t c = 0; c < t.cols; ++c) s[size_t(m * t.cols + c)] = partial_sum(t, partial.data(), m, c);
  return s;
}

// One block's sums for one chunk of rows, as the kernels reach them: Wt gathered from w_hh ([G, H]
// row major, G = K * H) by forward_weight or backward_weight, the rows x [rows, len] staged, the
// emulated product, then, item by item of the pointwise pass (item_of, column_of), the sums:
// forward, out[item][g] for its K gates; backward, out[item] (one sum). `units`, `j0` and `u`:
// the partition's units per block and this block's first unit and count (persistent.h).
inline std::vector<float> block_sums(const TilePlan& t, bool backward, const float* w_hh,
                                     int64_t H, int64_t K, int64_t j0, int64_t u, const float* x,
                                     int64_t rows, int64_t warps) {
  std::vector<float> ws(size_t(t.cols_padded * t.ld), 0.0f);
  for (int64_t e = 0; e < u * K * H; ++e) {
    const WeightMove m = backward ? backward_weight(t, e, H, K, j0) : forward_weight(t, e, H, K, j0);
    ws[size_t(m.dst)] = w_hh[m.src];
  }
  const std::vector<float> partial = chunk_partials(t, x, rows, ws, warps);
  const int gates = backward ? 1 : int(K);
  std::vector<float> out;
  for (int e = 0; e < int(rows * u); ++e) {
    const Item it = item_of(e, int(u));
    for (int g = 0; g < gates; ++g)
      out.push_back(partial_sum(t, partial.data(), it.row, column_of(it.unit, g, int(K), backward)));
  }
  return out;
}

}  // namespace mma
}  // namespace rnnkit
