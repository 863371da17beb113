// The device code of the persistent loops (launched by cuda/persistent.cu; plan and partition in
// common/persistent.h).
//
// Forward, one cooperative launch per layer call. Block b owns hidden units J = [j0, j0 + u) and
// keeps the W_hh rows of their gates in shared memory. Each step it stages h_prev (written by
// every block the step before) chunk by chunk, and each warp computes a tile: the K gate sums of
// one unit for kTileRows batch rows, lanes striding over H, then a butterfly reduction. The lane
// that holds batch row n then runs the cell's pointwise code (common/gates.h) for (n, j) and
// writes h; a grid-wide barrier ends the step.
// Backward, one launch: block b keeps the W_hh columns of its units, [u, G]. Step s first turns
// the gate gradients of the step before (in backward order, all blocks') into the carried dh of
// its units (dh[n, j] = dgates_prev[n, :] . W_hh[:, j]), then runs the pointwise backward of its
// units for the current step; one grid-wide barrier per step. A last pass after the loop gives
// grad_h0.
// Values that other blocks wrote during the launch are read with __ldcg (through L2, not the
// SM's L1), so no stale line is read after the barrier.
#pragma once

#include <ATen/OpMathType.h>
#include <cooperative_groups.h>

#include <cstdint>
#include <cstring>

#include "../common/gates.h"
#include "../common/mma_tile.h"
#include "../common/persistent.h"
#include "persistent.cuh"

namespace rnnkit {
namespace cuda {
namespace persistent {

constexpr int kPersistentThreads = 256;
constexpr int kWarp = 32;
constexpr int kNB = int(rnnkit::persistent::kTileRows);

using rnnkit::persistent::Plan;
using rnnkit::persistent::Steps;

constexpr int gates_of(Cell c) { return c == Cell::Lstm ? 4 : c == Cell::Gru ? 3 : 1; }

// RNNKIT_CUDA_PERSISTENT_VARIANT (cuda/persistent.cu). Basic and Wide do the same arithmetic in
// the same order, so the two give identical values; Wide stages rows in 16-byte pieces and lets
// the lanes of a tile run their rows' pointwise code at once, Basic (the first version) stages
// one value per load and runs the rows one after another. Mma (persistent_mma.cuh) does the
// step's product on tensor cores, float16 and bfloat16 only; its sums add in another order.
enum class Variant : int { Basic = 0, Wide = 1, Mma = 2 };

template <typename scalar_t>
struct ForwardParams {
  Steps steps;
  Plan plan;
  int64_t H, W;             // hidden units; workspace width (LSTM 5H, GRU 4H, RNN 0)
  int64_t stage_offset;     // bytes from the start of shared memory to the staging buffer
  gates::Activation act;
  Variant variant;
  bool wide_rows;           // rows staged in 16-byte pieces (whole pieces, aligned sources)
  const scalar_t* w_hh;     // [G, H]
  const scalar_t* h0;       // [N, H]
  scalar_t* out;            // [P, H]
  scalar_t* h_n;            // [N, H]
  scalar_t* c_n;            // [N, H] LSTM
  scalar_t* ws;             // [P, W] LSTM, GRU
  const scalar_t* b_hh;     // [3H] GRU, or null
  mma::TilePlan tiles{};    // the mma variant's layout (persistent_mma.cuh)
};

template <typename scalar_t>
struct BackwardParams {
  Steps steps;
  Plan plan;
  int64_t H, W;
  int64_t stage_offset;
  gates::Activation act;
  Variant variant;
  bool wide_rows;           // as in ForwardParams
  const scalar_t* w_hh;     // [G, H]
  const scalar_t* h_prev;   // [P, H] GRU
  const scalar_t* c_prev;   // [P, H] LSTM
  const scalar_t* out;      // [P, H] RNN
  const scalar_t* ws;       // [P, W] LSTM, GRU
  const scalar_t* gout;     // [P, H] or null
  scalar_t* dh;             // [N, H]
  scalar_t* dc;             // [N, H] LSTM
  scalar_t* dgates;         // [P, G]
  scalar_t* dx;             // [P, G] GRU
  mma::TilePlan tiles{};    // as in ForwardParams
};

// A value another block wrote during this launch, through L2.
template <typename scalar_t>
__device__ __forceinline__ scalar_t load_shared_by_grid(const scalar_t* p) {
  if constexpr (sizeof(scalar_t) == 2) {
    const unsigned short bits = __ldcg(reinterpret_cast<const unsigned short*>(p));
    scalar_t v;
    memcpy(&v, &bits, 2);
    return v;
  } else {
    return __ldcg(p);
  }
}

template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> ld(const scalar_t* p) {
  return static_cast<at::opmath_type<scalar_t>>(*p);
}
template <typename scalar_t>
__device__ __forceinline__ void st(scalar_t* p, at::opmath_type<scalar_t> v) {
  *p = static_cast<scalar_t>(v);
}

// Stages rows [c0, c0 + chunk) of a row-major matrix with `len` values a row into dst
// ([chunk, ld], shared memory, ld >= len): row n comes from src(n), or is zero where src(n) is
// null; values past len are left as they are. Wide: 16-byte pieces (len * sizeof(scalar_t) and
// ld * sizeof(scalar_t) multiples of 16, every source row 16-byte aligned), kBatch pieces a
// thread loaded before any is stored, so their L2 latencies overlap. Otherwise one value at a
// time, as the basic variant always does.
template <typename scalar_t, typename Src>
__device__ __forceinline__ void stage_rows(scalar_t* dst, int chunk, int len, int ld, int64_t c0,
                                           bool wide, Src src) {
  if (wide) {
    // kBatch: 8 pieces, so that a step's rows at issue 17's shapes (LSTM N=16, H=768: 6 pieces a
    // thread forward, 24 backward) take one or three L2 round trips rather than two or six.
    constexpr int kPiece = 16 / int(sizeof(scalar_t)), kBatch = 8;
    const int pieces = len / kPiece, total = chunk * pieces, ld_pieces = ld / kPiece;
    uint4* out = reinterpret_cast<uint4*>(dst);
    for (int base = threadIdx.x; base < total; base += kBatch * blockDim.x) {
      uint4 v[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = base + i * blockDim.x;
        v[i] = make_uint4(0u, 0u, 0u, 0u);
        if (e < total) {
          const int nl = e / pieces, q = e - nl * pieces;
          const scalar_t* row = src(c0 + nl);
          if (row != nullptr) v[i] = __ldcg(reinterpret_cast<const uint4*>(row) + q);
        }
      }
#pragma unroll
      for (int i = 0; i < kBatch; ++i) {
        const int e = base + i * blockDim.x;
        if (e < total) {
          const int nl = e / pieces;
          out[nl * ld_pieces + (e - nl * pieces)] = v[i];
        }
      }
    }
  } else {
    for (int e = threadIdx.x; e < chunk * len; e += blockDim.x) {
      const int nl = e / len, k = e - nl * len;
      const scalar_t* row = src(c0 + nl);
      dst[nl * ld + k] = row != nullptr ? load_shared_by_grid(row + k) : scalar_t(0);
    }
  }
}

// acc[r][b] of lane `lane` (< kNB) as a plain register: every lane holds every sum after the
// butterfly, so lane b can take batch row b of the tile without an indexed register array.
template <int RB, typename acc_t>
__device__ __forceinline__ void sums_of_lane(const acc_t (&acc)[RB][kNB], int lane,
                                             acc_t (&sum)[RB]) {
#pragma unroll
  for (int r = 0; r < RB; ++r) {
    sum[r] = acc[r][0];
#pragma unroll
    for (int b = 1; b < kNB; ++b)
      if (lane == b) sum[r] = acc[r][b];
  }
}

// acc[r][b] = sum_k w[r * w_ld + k] * x[b * x_ld + k] over k < len, summed over the warp: every
// lane ends with every sum. w and x are in shared memory; x has kNB rows.
template <int RB, typename scalar_t, typename acc_t>
__device__ __forceinline__ void dot_tile(const scalar_t* w, int w_ld, const scalar_t* x, int x_ld,
                                         int len, int lane, acc_t (&acc)[RB][kNB]) {
#pragma unroll
  for (int r = 0; r < RB; ++r)
#pragma unroll
    for (int b = 0; b < kNB; ++b) acc[r][b] = acc_t(0);
  for (int k = lane; k < len; k += kWarp) {
    acc_t xv[kNB];
#pragma unroll
    for (int b = 0; b < kNB; ++b) xv[b] = static_cast<acc_t>(x[b * x_ld + k]);
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      const acc_t wv = static_cast<acc_t>(w[r * w_ld + k]);
#pragma unroll
      for (int b = 0; b < kNB; ++b) acc[r][b] += wv * xv[b];
    }
  }
#pragma unroll
  for (int r = 0; r < RB; ++r)
#pragma unroll
    for (int b = 0; b < kNB; ++b)
#pragma unroll
      for (int off = kWarp / 2; off > 0; off /= 2)
        acc[r][b] += __shfl_xor_sync(0xffffffffu, acc[r][b], off);
}

// What the pointwise forward of unit j, row n reads besides the recurrent sums: the step's input
// pre-activations (RNN: the pre-activation in `out`) and the LSTM's cell state. None of it depends
// on this step's h, so the wide variant loads it before the product and its latency overlaps.
template <typename scalar_t, Cell C>
struct UnitInputs {
  at::opmath_type<scalar_t> x[gates_of(C)];
  at::opmath_type<scalar_t> c;  // LSTM
};

template <typename scalar_t, Cell C>
__device__ __forceinline__ UnitInputs<scalar_t, C> load_unit_inputs(
    const ForwardParams<scalar_t>& p, int64_t rr, int64_t n, int64_t j) {
  UnitInputs<scalar_t, C> in;
  const int64_t H = p.H;
  if constexpr (C == Cell::Rnn) {
    in.x[0] = ld(p.out + rr * H + j);
    in.c = 0;
  } else {
    const scalar_t* g = p.ws + rr * p.W;
#pragma unroll
    for (int k = 0; k < gates_of(C); ++k) in.x[k] = ld(g + k * H + j);
    in.c = C == Cell::Lstm ? ld(p.c_n + n * H + j) : 0;
  }
  return in;
}

// The pointwise forward of unit j, batch row n (packed row rr), given the K recurrent sums.
template <typename scalar_t, Cell C>
__device__ __forceinline__ void forward_unit(const ForwardParams<scalar_t>& p, int64_t rr,
                                             int64_t n, int64_t j,
                                             const at::opmath_type<scalar_t> (&sum)[gates_of(C)],
                                             at::opmath_type<scalar_t> h_prev,
                                             const UnitInputs<scalar_t, C>& in) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H;
  acc_t h;
  if constexpr (C == Cell::Lstm) {
    scalar_t* g = p.ws + rr * p.W;
    const auto r = gates::lstm_forward(in.x[0] + sum[0], in.x[1] + sum[1], in.x[2] + sum[2],
                                       in.x[3] + sum[3], in.c);
    st(g + j, r.i);
    st(g + H + j, r.f);
    st(g + 2 * H + j, r.g);
    st(g + 3 * H + j, r.o);
    st(g + 4 * H + j, r.c);
    st(p.c_n + n * H + j, r.c);
    h = r.h;
  } else if constexpr (C == Cell::Gru) {
    scalar_t* g = p.ws + rr * p.W;
    acc_t h_r = sum[0], h_z = sum[1], h_n = sum[2];
    if (p.b_hh) {
      h_r += ld(p.b_hh + j);
      h_z += ld(p.b_hh + H + j);
      h_n += ld(p.b_hh + 2 * H + j);
    }
    const auto r = gates::gru_forward(in.x[0], in.x[1], in.x[2], h_r, h_z, h_n, h_prev);
    st(g + j, r.r);
    st(g + H + j, r.z);
    st(g + 2 * H + j, r.n);
    st(g + 3 * H + j, h_n);
    h = r.h;
  } else {
    h = gates::rnn_forward(in.x[0] + sum[0], p.act);
  }
  st(p.out + rr * H + j, h);
  st(p.h_n + n * H + j, h);
}

template <typename scalar_t, Cell C>
__global__ void __launch_bounds__(kPersistentThreads)
    forward_kernel(const ForwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = gates_of(C);
  extern __shared__ __align__(16) unsigned char smem[];
  scalar_t* w_s = reinterpret_cast<scalar_t*>(smem);                  // [u * K, H]
  scalar_t* h_s = reinterpret_cast<scalar_t*>(smem + p.stage_offset);  // [chunk, H]
  const int H = int(p.H);
  const int64_t j0 = rnnkit::persistent::first_unit(p.plan, blockIdx.x);
  const int u = int(rnnkit::persistent::unit_count(p.plan, p.H, blockIdx.x));
  for (int e = threadIdx.x; e < u * K * H; e += blockDim.x) {
    const int r = e / H, k = e - r * H, jl = r / K, g = r - jl * K;
    w_s[e] = p.w_hh[(int64_t(g) * H + j0 + jl) * H + k];
  }
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  const int chunk = int(p.plan.chunk);
  for (int64_t s = 0; s < p.steps.T; ++s) {
    const rnnkit::persistent::ForwardRows rows_of = rnnkit::persistent::forward_rows(p.steps, s);
    const int64_t bs = rows_of.bs, row = rows_of.row;
    const int64_t bs_src = rows_of.bs_src, row_src = rows_of.row_src;
    for (int64_t c0 = 0; c0 < bs; c0 += chunk) {
      __syncthreads();  // the previous chunk's tiles are done with h_s (and w_s is loaded)
      // h0 is read through L2 too: harmless for a tensor nobody writes during the launch.
      stage_rows(h_s, chunk, H, H, c0, p.variant == Variant::Wide && p.wide_rows,
                 [&](int64_t n) -> const scalar_t* {
                   if (n >= bs) return nullptr;
                   return n < bs_src ? p.out + (row_src + n) * H : p.h0 + n * H;
                 });
      __syncthreads();
      const int64_t rows = bs - c0 < chunk ? bs - c0 : chunk;
      const int groups = int((rows + kNB - 1) / kNB);
      for (int it = warp; it < u * groups; it += warps) {
        const int jl = it / groups, grp = it - jl * groups;
        acc_t acc[K][kNB];
        if (p.variant == Variant::Wide) {  // lanes 0 .. kNB-1 at once, one row each
          const int64_t n = c0 + grp * kNB + lane, j = j0 + jl;
          const bool mine = lane < kNB && n < bs;
          UnitInputs<scalar_t, C> in{};
          if (mine) in = load_unit_inputs<scalar_t, C>(p, row + n, n, j);
          dot_tile<K>(w_s + jl * K * H, H, h_s + grp * kNB * H, H, H, lane, acc);
          if (mine) {
            acc_t sum[K];
            sums_of_lane<K>(acc, lane, sum);
            forward_unit<scalar_t, C>(p, row + n, n, j, sum,
                                      static_cast<acc_t>(h_s[(grp * kNB + lane) * H + j]), in);
          }
          continue;
        }
        dot_tile<K>(w_s + jl * K * H, H, h_s + grp * kNB * H, H, H, lane, acc);
#pragma unroll
        for (int b = 0; b < kNB; ++b) {
          const int64_t n = c0 + grp * kNB + b;
          if (lane == b && n < bs) {
            acc_t sum[K];
#pragma unroll
            for (int g = 0; g < K; ++g) sum[g] = acc[g][b];
            const int64_t j = j0 + jl;
            forward_unit<scalar_t, C>(p, row + n, n, j, sum,
                                      static_cast<acc_t>(h_s[(grp * kNB + b) * H + j]),
                                      load_unit_inputs<scalar_t, C>(p, row + n, n, j));
          }
        }
      }
    }
    grid.sync();
  }
}

// What the pointwise backward of unit j, row n reads besides the gradient of its h: the forward's
// saved values, the output's gradient, the LSTM's carried dc. As in the forward, none of it depends
// on this step's product, so the wide variant loads it first.
template <typename scalar_t, Cell C>
struct GradInputs {
  static constexpr int kSaved = C == Cell::Lstm ? 5 : C == Cell::Gru ? 4 : 1;
  at::opmath_type<scalar_t> saved[kSaved];  // LSTM i f g o c; GRU r z n h_n; RNN its output h
  at::opmath_type<scalar_t> gout;           // the output's gradient (0 without one)
  at::opmath_type<scalar_t> dc;             // LSTM
  at::opmath_type<scalar_t> prev;           // LSTM c_prev, GRU h_prev
};

template <typename scalar_t, Cell C>
__device__ __forceinline__ GradInputs<scalar_t, C> load_grad_inputs(
    const BackwardParams<scalar_t>& p, int64_t rr, int64_t n, int64_t j) {
  GradInputs<scalar_t, C> in{};
  const int64_t H = p.H;
  in.gout = p.gout ? ld(p.gout + rr * H + j) : 0;
  if constexpr (C == Cell::Rnn) {
    in.saved[0] = ld(p.out + rr * H + j);
  } else {
    const scalar_t* g = p.ws + rr * p.W;
#pragma unroll
    for (int k = 0; k < GradInputs<scalar_t, C>::kSaved; ++k) in.saved[k] = ld(g + k * H + j);
    if constexpr (C == Cell::Lstm) {
      in.dc = ld(p.dc + n * H + j);
      in.prev = ld(p.c_prev + rr * H + j);
    } else {
      in.prev = ld(p.h_prev + rr * H + j);
    }
  }
  return in;
}

// The pointwise backward of unit j, batch row n (packed row rr), given the gradient of its h.
template <typename scalar_t, Cell C>
__device__ __forceinline__ void backward_unit(const BackwardParams<scalar_t>& p, int64_t rr,
                                              int64_t n, int64_t j,
                                              at::opmath_type<scalar_t> dh,
                                              const GradInputs<scalar_t, C>& in) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t H = p.H, G = int64_t(gates_of(C)) * H;
  const acc_t grad_h = p.gout ? dh + in.gout : dh;
  scalar_t* dg = p.dgates + rr * G;
  if constexpr (C == Cell::Lstm) {
    const auto r = gates::lstm_backward(grad_h, in.dc, in.saved[0], in.saved[1], in.saved[2],
                                        in.saved[3], in.saved[4], in.prev);
    st(dg + j, r.da_i);
    st(dg + H + j, r.da_f);
    st(dg + 2 * H + j, r.da_g);
    st(dg + 3 * H + j, r.da_o);
    st(p.dc + n * H + j, r.dc_prev);
  } else if constexpr (C == Cell::Gru) {
    const auto r = gates::gru_backward(grad_h, in.saved[0], in.saved[1], in.saved[2],
                                       in.saved[3], in.prev);
    scalar_t* dx = p.dx + rr * G;
    st(dx + j, r.dx_r);
    st(dx + H + j, r.dx_z);
    st(dx + 2 * H + j, r.dx_n);
    st(dg + j, r.dx_r);
    st(dg + H + j, r.dx_z);
    st(dg + 2 * H + j, r.dh_n);
    st(p.dh + n * H + j, r.dh_prev_direct);
  } else {
    st(dg + j, gates::rnn_backward(grad_h, in.saved[0], p.act));
  }
}

// Row n, unit j of a backward step, given its sum of dgates_prev W_hh and the dh it carried in:
// the step's dh (rows the previous step had), then the pointwise backward (rows this step has;
// its packed row is row + n).
template <typename scalar_t, Cell C>
__device__ __forceinline__ void finish_backward(const BackwardParams<scalar_t>& p, int64_t n,
                                                int64_t j, at::opmath_type<scalar_t> sum,
                                                at::opmath_type<scalar_t> dh_in,
                                                const GradInputs<scalar_t, C>& in, int64_t bs,
                                                int64_t bs_prev, int64_t row) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t grad = dh_in;
  if (n < bs_prev) {
    // LSTM and RNN: dh = dgates_prev W_hh; GRU adds it to the direct part z ⊙ dh.
    scalar_t* dh = p.dh + n * p.H + j;
    st(dh, (C == Cell::Gru ? dh_in : acc_t(0)) + sum);
    grad = ld(dh);  // the stored value, as the general loop's next step reads it
  }
  if (n < bs) backward_unit<scalar_t, C>(p, row + n, n, j, grad, in);
}

template <typename scalar_t, Cell C>
__global__ void __launch_bounds__(kPersistentThreads)
    backward_kernel(const BackwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = gates_of(C);
  extern __shared__ __align__(16) unsigned char smem[];
  const int H = int(p.H), G = K * H;
  scalar_t* w_s = reinterpret_cast<scalar_t*>(smem);                  // [u, G]: W_hh[:, J]^T
  scalar_t* d_s = reinterpret_cast<scalar_t*>(smem + p.stage_offset);  // [chunk, G]
  const int64_t j0 = rnnkit::persistent::first_unit(p.plan, blockIdx.x);
  const int u = int(rnnkit::persistent::unit_count(p.plan, p.H, blockIdx.x));
  for (int e = threadIdx.x; e < u * G; e += blockDim.x) {
    const int jl = e / G, g = e - jl * G;
    w_s[e] = p.w_hh[int64_t(g) * H + j0 + jl];
  }
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  const int chunk = int(p.plan.chunk);
  // s == T is the last pass: grad_h0 from the gate gradients of the last step, no pointwise.
  for (int64_t s = 0; s <= p.steps.T; ++s) {
    const rnnkit::persistent::BackwardRows rows_of = rnnkit::persistent::backward_rows(p.steps, s);
    const int64_t bs = rows_of.bs, row = rows_of.row, rows_all = rows_of.rows_all;
    const int64_t bs_prev = rows_of.bs_prev, row_prev = rows_of.row_prev;
    for (int64_t c0 = 0; c0 < rows_all; c0 += chunk) {
      __syncthreads();
      stage_rows(d_s, chunk, G, G, c0, p.variant == Variant::Wide && p.wide_rows,
                 [&](int64_t n) -> const scalar_t* {
                   return n < bs_prev ? p.dgates + (row_prev + n) * G : nullptr;
                 });
      __syncthreads();
      const int64_t rows = rows_all - c0 < chunk ? rows_all - c0 : chunk;
      const int groups = int((rows + kNB - 1) / kNB);
      for (int it = warp; it < u * groups; it += warps) {
        const int jl = it / groups, grp = it - jl * groups;
        acc_t acc[1][kNB];
        const int64_t j = j0 + jl;
        auto finish = [&](int64_t n, acc_t sum, acc_t dh_in, const GradInputs<scalar_t, C>& in) {
          finish_backward<scalar_t, C>(p, n, j, sum, dh_in, in, bs, bs_prev, row);
        };
        if (p.variant == Variant::Wide) {  // lanes 0 .. kNB-1 at once, one row each
          const int64_t n = c0 + grp * kNB + lane;
          const bool mine = lane < kNB && n < rows_all;
          acc_t dh_in = 0;
          GradInputs<scalar_t, C> in{};
          if (mine) dh_in = ld(p.dh + n * H + j);
          if (mine && n < bs) in = load_grad_inputs<scalar_t, C>(p, row + n, n, j);
          dot_tile<1>(w_s + jl * G, G, d_s + grp * kNB * G, G, G, lane, acc);
          if (mine) {
            acc_t sum[1];
            sums_of_lane<1>(acc, lane, sum);
            finish(n, sum[0], dh_in, in);
          }
          continue;
        }
        dot_tile<1>(w_s + jl * G, G, d_s + grp * kNB * G, G, G, lane, acc);
#pragma unroll
        for (int b = 0; b < kNB; ++b) {
          const int64_t n = c0 + grp * kNB + b;
          if (lane == b && n < rows_all) {
            const acc_t dh_in = ld(p.dh + n * H + j);
            finish(n, acc[0][b], dh_in,
                   n < bs ? load_grad_inputs<scalar_t, C>(p, row + n, n, j)
                          : GradInputs<scalar_t, C>{});
          }
        }
      }
    }
    if (s < p.steps.T) grid.sync();
  }
}

}  // namespace persistent
}  // namespace cuda
}  // namespace rnnkit
