// Row-major matrix products on raw pointers, for the time loops.
//
// Fast path: the Fortran BLAS entry points sgemm_ / dgemm_, which torch's CPU library exports on
// x86 (MKL). They take raw pointers, so a time step allocates nothing. They are declared weak: on
// a torch build that does not export them (ARM wheels, say), the pointers are null and every
// product goes through ATen's addmm_out on tensor views instead (the portable path). Which path
// this build took is reported by rnnkit.build_info()["cpu_blas"].
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace rnnkit {
namespace cpu {

inline const char* blas_path() {
  return (sgemm_ != nullptr && dgemm_ != nullptr) ? "blas (sgemm_/dgemm_ from torch's library)"
                                                  : "aten (addmm_out)";
}

namespace detail {
inline bool fits_int(int64_t v) { return v <= std::numeric_limits<int>::max(); }

template <typename scalar_t>
bool fortran_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, scalar_t alpha,
                  const scalar_t* a, int64_t lda, const scalar_t* b, int64_t ldb, scalar_t beta,
                  scalar_t* c, int64_t ldc) {
  if (!(fits_int(m) && fits_int(n) && fits_int(k) && fits_int(lda) && fits_int(ldb) &&
        fits_int(ldc)))
    return false;
  const int mi = int(m), ni = int(n), ki = int(k), la = int(lda), lb = int(ldb), lc = int(ldc);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (sgemm_ == nullptr) return false;
    sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
    return true;
  } else {
    if (dgemm_ == nullptr) return false;
    dgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
    return true;
  }
}

// A row-major view [rows, cols] with row stride ld, as a tensor that does not own its memory.
template <typename scalar_t>
at::Tensor view(const scalar_t* p, int64_t rows, int64_t cols, int64_t ld, bool transposed) {
  at::Tensor t = at::from_blob(const_cast<scalar_t*>(p), {rows, cols}, {ld, 1},
                               at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
  return transposed ? t.t() : t;
}
}  // namespace detail

// C = alpha * op(A) @ op(B) + beta * C, all row-major.
//   op(A): [M, K] (A is [K, M] when trans_a), op(B): [K, Nc] (B is [Nc, K] when trans_b),
//   C: [M, Nc]; lda, ldb, ldc are the row strides.
template <typename scalar_t>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t Nc, int64_t K, scalar_t alpha,
          const scalar_t* A, int64_t lda, const scalar_t* B, int64_t ldb, scalar_t beta,
          scalar_t* C, int64_t ldc) {
  if (M == 0 || Nc == 0) return;
  if (K == 0) {  // nothing to multiply: C = beta * C
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < Nc; ++n)
        C[m * ldc + n] = beta == scalar_t(0) ? scalar_t(0) : beta * C[m * ldc + n];
    return;
  }
  // A row-major matrix is its transpose in column-major, so C^T = op(B)^T op(A)^T.
  if (detail::fortran_gemm<scalar_t>(trans_b ? 'T' : 'N', trans_a ? 'T' : 'N', Nc, M, K, alpha, B,
                                     ldb, A, lda, beta, C, ldc))
    return;
  at::Tensor a = detail::view(A, trans_a ? K : M, trans_a ? M : K, lda, trans_a);
  at::Tensor b = detail::view(B, trans_b ? Nc : K, trans_b ? K : Nc, ldb, trans_b);
  at::Tensor c = detail::view<scalar_t>(C, M, Nc, ldc, false);
  if (beta == scalar_t(0)) {
    at::mm_out(c, a, b);
    if (alpha != scalar_t(1)) c.mul_(alpha);
  } else {
    at::addmm_out(c, c, a, b, beta, alpha);
  }
}

}  // namespace cpu
}  // namespace rnnkit
