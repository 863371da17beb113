// What every CUDA file of rnnkit shares: the pointwise launcher and the device's lanes.
//
// A step's pointwise work is a plain struct (the parameters: raw pointers, sizes) with a
// __device__ operator()(n, j) that handles hidden unit j of batch row n by calling a cell's
// pointwise code. for_each_unit launches one thin kernel that hands every (n, j) of a [rows, H] grid
// to it, on the current stream, and checks the launch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

#include "../common/index.h"

namespace rnnkit {
namespace cuda {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

template <typename Step>
__global__ void __launch_bounds__(kThreads) unit_kernel(Step step, int64_t rows, int64_t H) {
  const int64_t count = rows * H;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < count; e += stride) {
    const index::Unit u = index::unit_of(e, H);
    step(u.n, u.j);
  }
}

// Runs step(n, j) for every n < rows, j < H on the current stream.
template <typename Step>
void for_each_unit(int64_t rows, int64_t H, const Step& step) {
  const int64_t count = rows * H;
  if (count <= 0) return;
  const int64_t blocks = index::grid_blocks(count, kThreads, kMaxBlocks);
  unit_kernel<Step><<<unsigned(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      step, rows, H);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename Step>
__global__ void __launch_bounds__(kThreads) row_kernel(Step step, int64_t rows) {
  for (int64_t n = blockIdx.x; n < rows; n += gridDim.x) step(n);  // uniform per block
}

// Runs step(n) for every n < rows on the current stream, one block of kThreads threads per row:
// the row passes of row-norm cells (common/row_norm.h), whose threads share the row's sums.
template <typename Step>
void for_each_row(int64_t rows, const Step& step) {
  if (rows <= 0) return;
  const int64_t blocks = rows < kMaxBlocks ? rows : kMaxBlocks;
  row_kernel<Step><<<unsigned(blocks), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(step,
                                                                                        rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The CUDA kernel runs when any argument is on a CUDA device; the input itself must be.
inline void check_on_cuda(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), op, ": expected input on a CUDA device (another argument is on ",
              "CUDA, so the CUDA kernel was chosen), got input on ", input.device());
}

// The lanes of a cell's pointwise code on CUDA (common/cell.h): one value per thread, computed
// in the opmath type (float for float16 and bfloat16).
template <typename scalar_t>
struct DeviceLanes {
  using V = at::opmath_type<scalar_t>;
  __host__ __device__ __forceinline__ static V load(const scalar_t* p) {
    return static_cast<V>(*p);
  }
  __host__ __device__ __forceinline__ static void store(scalar_t* p, V v) {
    *p = static_cast<scalar_t>(v);
  }
};

// The sum of v over the block's threads, which every thread gets back (blockDim.x a multiple of
// 32, at most 1024). Two barriers: the partial sums are read by all, then free for the next call.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A partial[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  A total(0);
  for (int w = 0; w < int(blockDim.x) / 32; ++w) total += partial[w];
  __syncthreads();
  return total;
}

// The row operations of a row-norm cell's pointwise code (common/row_norm.h) on CUDA: the block
// of one row, its threads striding over the units. Declared __host__ __device__ only so that the
// cells' RNNKIT_HD code may call them; they run on the device alone (row_kernel).
template <typename scalar_t>
struct DeviceRow {
  using One = DeviceLanes<scalar_t>;
  using A = typename One::V;
  template <typename F>
  __host__ __device__ __forceinline__ void units(int64_t count, const F& f) const {
#ifdef __CUDA_ARCH__
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x) f(j, One{});
    __syncthreads();
#endif
  }
  template <typename F>
  __host__ __device__ __forceinline__ A sum(int64_t count, const F& f) const {
#ifdef __CUDA_ARCH__
    A total(0);
    for (int64_t j = threadIdx.x; j < count; j += blockDim.x) total += f(j, One{});
    return block_sum(total);
#else
    return A(0);
#endif
  }
  __host__ __device__ __forceinline__ bool leader() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x == 0;
#else
    return true;
#endif
  }
};

// The dtypes the CUDA kernels take; every other dtype gets checks::floating's message first.
#define RNNKIT_DISPATCH_CUDA(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace cuda
}  // namespace rnnkit
