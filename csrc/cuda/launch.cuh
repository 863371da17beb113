// What every CUDA file of rnnkit shares: the pointwise launcher and small tensor helpers.
//
// A step's pointwise work is a plain struct (the parameters: raw pointers, sizes) with a
// __device__ operator()(n, j) that handles hidden unit j of batch row n by calling the gates::
// templates. for_each_unit launches one thin kernel that hands every (n, j) of a [rows, H] grid
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

// The CUDA kernel runs when any argument is on a CUDA device; the input itself must be.
inline void check_on_cuda(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), op, ": expected input on a CUDA device (another argument is on ",
              "CUDA, so the CUDA kernel was chosen), got input on ", input.device());
}

// The raw pointer of a tensor, or null for an undefined one (absent bias, no projection).
template <typename scalar_t>
scalar_t* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

// A value of the compute type from memory, and back.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_op(const scalar_t* p) {
  return static_cast<at::opmath_type<scalar_t>>(*p);
}
template <typename scalar_t>
__device__ __forceinline__ void store_op(scalar_t* p, at::opmath_type<scalar_t> v) {
  *p = static_cast<scalar_t>(v);
}

// The dtypes the CUDA kernels take; every other dtype gets checks::floating's message first.
#define RNNKIT_DISPATCH_CUDA(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

}  // namespace cuda
}  // namespace rnnkit
