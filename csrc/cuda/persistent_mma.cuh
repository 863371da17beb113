// The mma variant of the persistent loops (RNNKIT_CUDA_PERSISTENT_VARIANT=mma): the kernels of
// persistent_kernels.cuh with each step's recurrent product on tensor cores. The partition, the
// steps, the staging and the pointwise code are theirs; the product is common/mma_tile.h's:
// block b computes S = X Wt^T for its staged rows X and its slice Wt of W_hh with
// mma.sync (m16n8k16 on float16 and bfloat16, m16n8k8 on float32 as TF32; float sums), its warps
// taking the output tiles and shares of the k steps in turn (mma::task_of), and sums the shares
// from shared memory (mma::partial_sum). Compute capability 8.0 and later; cuda/persistent.cu
// chooses it (float32 only where torch allows TF32 products).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/mma_tile.h"
#include "persistent_kernels.cuh"

namespace rnnkit {
namespace cuda {
namespace persistent {

// The instruction a dtype's values take: 16-bit values Half, float32 values TF32.
template <typename scalar_t>
constexpr mma::Kind kind_of() {
  return sizeof(scalar_t) == 2 ? mma::Kind::Half : mma::Kind::Tf32;
}

// d += a b: one mma.sync.m16n8k16 (16-bit values) or m16n8k8 (TF32), registers as in mma_tile.h's
// fragment maps.
template <typename scalar_t>
__device__ __forceinline__ void mma_step(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    static_assert(std::is_same_v<scalar_t, float>, "mma_step: float16, bfloat16 or float32");
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // the host never launches the mma variant below compute capability 8.0
#endif
}

// One register of A or B from shared memory: the pair of 16-bit values at p (4-byte aligned:
// every such offset is even), or the float32 value at p rounded to TF32.
template <typename scalar_t>
__device__ __forceinline__ uint32_t register_at(const scalar_t* p) {
  if constexpr (sizeof(scalar_t) == 2) {
    return *reinterpret_cast<const uint32_t*>(p);
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(*p));
    return r;
#else
    __trap();
    return 0u;
#endif
  }
}

// partial = the block's product of the staged rows x [chunk, ld] (rows < `rows` of them matter)
// and wt [cols_padded, ld], by shares of k steps (mma::emulate_block_product is the same on the
// CPU). The caller synchronises the block before reading partial.
template <typename scalar_t>
__device__ __forceinline__ void block_product(const mma::TilePlan& t, const scalar_t* x,
                                              const scalar_t* wt, int64_t rows, float* partial) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  constexpr mma::Kind kind = kind_of<scalar_t>();
  const int64_t tasks = mma::task_count(t, mma::round_up(rows, mma::kM) / mma::kM);
  const int64_t k_steps = t.k_steps(), step = mma::k_step(kind);
  for (int64_t it = warp; it < tasks; it += warps) {
    const mma::Task task = mma::task_of(t, it);
    const int64_t m0 = int64_t(task.mt) * mma::kM, n0 = int64_t(task.nt) * mma::kN;
    // Two chains of sums (the task's even and odd k steps), so that one mma need not wait for
    // the one before it; added at the end, as emulate_block_product does.
    static_assert(mma::kChains == 2, "block_product keeps two chains");
    float acc[2][4] = {};
    const auto step_into = [&](int64_t ks, float(&sums)[4]) {
      uint32_t a[4], b[2];
#pragma unroll
      for (int r = 0; r < 4; ++r)
        a[r] = register_at(x + mma::a_offset(t, kind, lane, r, m0, ks * step));
#pragma unroll
      for (int r = 0; r < 2; ++r)
        b[r] = register_at(wt + mma::b_offset(t, kind, lane, r, n0, ks * step));
      mma_step<scalar_t>(sums, a, b);
    };
    int64_t ks = task.ks;
    for (; ks + t.splits < k_steps; ks += 2 * t.splits) {
      step_into(ks, acc[0]);
      step_into(ks + t.splits, acc[1]);
    }
    if (ks < k_steps) step_into(ks, acc[0]);
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[mma::c_index(t, task, lane, i)] = acc[0][i] + acc[1][i];
  }
}

// Shared memory of both kernels (mma::make_tile_plan): Wt, then the staged rows X, then the
// partial sums. All of it starts as zeros, so the padding of rows and columns stays zero.
struct MmaShared {
  unsigned char* base;
  __device__ void zero(const mma::TilePlan& t) const {
    for (int64_t e = threadIdx.x; e < t.smem_bytes / 4; e += blockDim.x)
      reinterpret_cast<uint32_t*>(base)[e] = 0u;
  }
  template <typename scalar_t>
  __device__ scalar_t* wt() const { return reinterpret_cast<scalar_t*>(base); }
  template <typename scalar_t>
  __device__ scalar_t* x(const mma::TilePlan& t) const {
    return reinterpret_cast<scalar_t*>(base + t.stage_offset);
  }
  __device__ float* partial(const mma::TilePlan& t) const {
    return reinterpret_cast<float*>(base + t.partial_offset);
  }
};

template <typename scalar_t, Cell C>
__global__ void __launch_bounds__(kPersistentThreads)
    forward_mma_kernel(const ForwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = gates_of(C);
  extern __shared__ __align__(16) unsigned char smem[];
  const mma::TilePlan& t = p.tiles;
  const MmaShared shared{smem};
  scalar_t* w_s = shared.wt<scalar_t>();   // [u * K, ld]: row jl * K + g = W_hh[g * H + j0 + jl]
  scalar_t* h_s = shared.x<scalar_t>(t);   // [chunk, ld]
  float* part = shared.partial(t);         // [splits, chunk, cols_padded]
  const int H = int(p.H);
  const int64_t j0 = rnnkit::persistent::first_unit(p.plan, blockIdx.x);
  const int u = int(rnnkit::persistent::unit_count(p.plan, p.H, blockIdx.x));
  shared.zero(t);
  __syncthreads();
  for (int e = threadIdx.x; e < u * K * H; e += blockDim.x) {
    const mma::WeightMove m = mma::forward_weight(t, e, H, K, j0);
    w_s[m.dst] = p.w_hh[m.src];
  }
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int chunk = int(t.chunk);
  for (int64_t s = 0; s < p.steps.T; ++s) {
    const rnnkit::persistent::ForwardRows rows_of = rnnkit::persistent::forward_rows(p.steps, s);
    const int64_t bs = rows_of.bs, row = rows_of.row;
    const int64_t bs_src = rows_of.bs_src, row_src = rows_of.row_src;
    for (int64_t c0 = 0; c0 < bs; c0 += chunk) {
      const int64_t rows = bs - c0 < chunk ? bs - c0 : chunk;
      const int items = int(rows) * u;
      // A thread's first (row, unit) of the chunk loads its pointwise inputs before the staging
      // and the product, so their latency overlaps them (the same thread wrote its c last step).
      UnitInputs<scalar_t, C> first{};
      if (int(threadIdx.x) < items) {
        const mma::Item it = mma::item_of(threadIdx.x, u);
        const int64_t n = c0 + it.row, j = j0 + it.unit;
        first = load_unit_inputs<scalar_t, C>(p, row + n, n, j);
      }
      __syncthreads();  // the previous chunk is done with h_s and part (and w_s is loaded)
      stage_rows(h_s, chunk, H, int(t.ld), c0, p.wide_rows, [&](int64_t n) -> const scalar_t* {
        if (n >= bs) return nullptr;
        return n < bs_src ? p.out + (row_src + n) * H : p.h0 + n * H;
      });
      __syncthreads();
      block_product(t, h_s, w_s, rows, part);
      __syncthreads();
      for (int e = threadIdx.x; e < items; e += blockDim.x) {
        const mma::Item it = mma::item_of(e, u);
        const int64_t n = c0 + it.row, j = j0 + it.unit;
        acc_t sum[K];
#pragma unroll
        for (int g = 0; g < K; ++g)
          sum[g] = mma::partial_sum(t, part, it.row, mma::column_of(it.unit, g, K, false));
        forward_unit<scalar_t, C>(p, row + n, n, j, sum,
                                  static_cast<acc_t>(h_s[mma::x_index(t, it.row, j)]),
                                  e == int(threadIdx.x) ? first
                                                   : load_unit_inputs<scalar_t, C>(p, row + n, n, j));
      }
    }
    grid.sync();
  }
}

template <typename scalar_t, Cell C>
__global__ void __launch_bounds__(kPersistentThreads)
    backward_mma_kernel(const BackwardParams<scalar_t> p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = gates_of(C);
  extern __shared__ __align__(16) unsigned char smem[];
  const mma::TilePlan& t = p.tiles;
  const MmaShared shared{smem};
  const int H = int(p.H), G = K * H;
  scalar_t* w_s = shared.wt<scalar_t>();  // [u, ld]: row jl = W_hh[:, j0 + jl]
  scalar_t* d_s = shared.x<scalar_t>(t);  // [chunk, ld]: gate gradients of the step before
  float* part = shared.partial(t);
  const int64_t j0 = rnnkit::persistent::first_unit(p.plan, blockIdx.x);
  const int u = int(rnnkit::persistent::unit_count(p.plan, p.H, blockIdx.x));
  shared.zero(t);
  __syncthreads();
  for (int e = threadIdx.x; e < u * G; e += blockDim.x) {
    const mma::WeightMove m = mma::backward_weight(t, e, H, K, j0);
    w_s[m.dst] = p.w_hh[m.src];
  }
  cooperative_groups::grid_group grid = cooperative_groups::this_grid();
  const int chunk = int(t.chunk);
  // s == T is the last pass: grad_h0 from the gate gradients of the last step, no pointwise.
  for (int64_t s = 0; s <= p.steps.T; ++s) {
    const rnnkit::persistent::BackwardRows rows_of = rnnkit::persistent::backward_rows(p.steps, s);
    const int64_t bs = rows_of.bs, row = rows_of.row, rows_all = rows_of.rows_all;
    const int64_t bs_prev = rows_of.bs_prev, row_prev = rows_of.row_prev;
    for (int64_t c0 = 0; c0 < rows_all; c0 += chunk) {
      const int64_t rows = rows_all - c0 < chunk ? rows_all - c0 : chunk;
      const int items = int(rows) * u;
      // As in the forward: a thread's first (row, unit) loads its inputs (the dh and dc it
      // carried, written by this thread last step, and the saved values) before the product.
      const auto inputs_of = [&](int e, acc_t* dh_in) {
        const mma::Item it = mma::item_of(e, u);
        const int64_t n = c0 + it.row, j = j0 + it.unit;
        *dh_in = ld(p.dh + n * H + j);
        return n < bs ? load_grad_inputs<scalar_t, C>(p, row + n, n, j) : GradInputs<scalar_t, C>{};
      };
      acc_t first_dh = 0;
      GradInputs<scalar_t, C> first{};
      if (int(threadIdx.x) < items) first = inputs_of(threadIdx.x, &first_dh);
      __syncthreads();
      stage_rows(d_s, chunk, G, int(t.ld), c0, p.wide_rows, [&](int64_t n) -> const scalar_t* {
        return n < bs_prev ? p.dgates + (row_prev + n) * G : nullptr;
      });
      __syncthreads();
      block_product(t, d_s, w_s, rows, part);
      __syncthreads();
      for (int e = threadIdx.x; e < items; e += blockDim.x) {
        const mma::Item it = mma::item_of(e, u);
        const int64_t n = c0 + it.row, j = j0 + it.unit;
        acc_t dh_in = first_dh;
        const GradInputs<scalar_t, C> in = e == int(threadIdx.x) ? first : inputs_of(e, &dh_in);
        finish_backward<scalar_t, C>(
            p, n, j, mma::partial_sum(t, part, it.row, mma::column_of(it.unit, 0, K, true)),
            dh_in, in, bs, bs_prev, row);
      }
    }
    if (s < p.steps.T) grid.sync();
  }
}

}  // namespace persistent
}  // namespace cuda
}  // namespace rnnkit
