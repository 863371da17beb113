// Row-major matrix products on raw device pointers, for the time loops (the counterpart of
// cpu/blas.h, with the same argument convention).
//
// Fast path: cuBLAS itself, on torch's handle for the current device
// (at::cuda::getCurrentCUDABlasHandle sets the current stream, torch's workspace and its TF32
// setting), so a step costs one cuBLAS call and no ATen dispatch, and CUDA graph capture works.
// float16 and bfloat16 compute in float (cublasGemmEx, CUBLAS_COMPUTE_32F). Portable path:
// ATen's addmm_out on tensor views, taken when a size does not fit cuBLAS's int, when K == 0, or
// when the environment sets RNNKIT_CUDA_GEMM=aten (the tests run both paths).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cublas_v2.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>

namespace rnnkit {
namespace cuda {

namespace detail {
inline bool fits_int(int64_t v) { return v >= 0 && v <= std::numeric_limits<int>::max(); }

inline bool aten_gemm_requested() {
  const char* v = std::getenv("RNNKIT_CUDA_GEMM");
  return v != nullptr && std::strcmp(v, "aten") == 0;
}

// A row-major device view [rows, cols] with row stride ld, as a tensor that does not own memory.
template <typename scalar_t>
at::Tensor view(const scalar_t* p, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  const auto options = at::TensorOptions()
                           .dtype(c10::CppTypeToScalarType<scalar_t>::value)
                           .device(at::kCUDA, c10::cuda::current_device());
  at::Tensor t = at::from_blob(const_cast<scalar_t*>(p), {rows, cols}, {ld, 1}, options);
  return transposed ? t.t() : t;
}

// Column-major C = alpha op(A) op(B) + beta C through cuBLAS (all sizes fit int).
template <typename scalar_t>
void cublas_gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 at::opmath_type<scalar_t> alpha, const scalar_t* a, int lda, const scalar_t* b,
                 int ldb, at::opmath_type<scalar_t> beta, scalar_t* c, int ldc) {
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
  if constexpr (std::is_same_v<scalar_t, double>) {
    TORCH_CUDABLAS_CHECK(cublasDgemm(handle, ta, tb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc));
  } else if constexpr (std::is_same_v<scalar_t, float>) {
    TORCH_CUDABLAS_CHECK(cublasSgemm(handle, ta, tb, m, n, k, &alpha, a, lda, b, ldb, &beta, c, ldc));
  } else {
    static_assert(std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>,
                  "rnnkit gemm: float64, float32, float16 or bfloat16");
    constexpr cudaDataType_t type = std::is_same_v<scalar_t, at::Half> ? CUDA_R_16F : CUDA_R_16BF;
    const float alpha_f = alpha, beta_f = beta;
    TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, ta, tb, m, n, k, &alpha_f, a, type, lda, b, type, ldb,
                                      &beta_f, c, type, ldc, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  }
}
}  // namespace detail

// C = alpha * op(A) @ op(B) + beta * C, all row-major device memory.
//   op(A): [M, K] (A is [K, M] when trans_a), op(B): [K, Nc] (B is [Nc, K] when trans_b),
//   C: [M, Nc]; lda, ldb, ldc are the row strides.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t Nc, int64_t K,
          at::opmath_type<scalar_t> alpha, const scalar_t* A, int64_t lda, const scalar_t* B,
          int64_t ldb, at::opmath_type<scalar_t> beta, scalar_t* C, int64_t ldc) {
  if (M == 0 || Nc == 0) return;
  const bool fits = detail::fits_int(M) && detail::fits_int(Nc) && detail::fits_int(K) &&
                    detail::fits_int(lda) && detail::fits_int(ldb) && detail::fits_int(ldc);
  if (K > 0 && fits && !detail::aten_gemm_requested()) {
    // A row-major matrix is its transpose in column-major, so C^T = op(B)^T op(A)^T.
    detail::cublas_gemm<scalar_t>(trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                  trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, int(Nc), int(M), int(K),
                                  alpha, B, int(ldb), A, int(lda), beta, C, int(ldc));
    return;
  }
  at::Tensor c = detail::view<scalar_t>(C, M, Nc, ldc, false);
  if (K == 0) {  // nothing to multiply: C = beta * C
    if (beta == 0) {
      c.zero_();
    } else {
      c.mul_(beta);
    }
    return;
  }
  at::Tensor a = detail::view(A, trans_a ? K : M, trans_a ? M : K, lda, trans_a);
  at::Tensor b = detail::view(B, trans_b ? Nc : K, trans_b ? K : Nc, ldb, trans_b);
  if (beta == 0) {
    at::mm_out(c, a, b);
    if (alpha != 1) c.mul_(alpha);
  } else {
    at::addmm_out(c, c, a, b, beta, alpha);
  }
}

}  // namespace cuda
}  // namespace rnnkit
