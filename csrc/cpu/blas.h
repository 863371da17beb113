// Row-major matrix products on raw pointers, for the time loops.
//
// Fast path: the Fortran BLAS entry points sgemm_ / dgemm_, which torch's CPU library exports on
// x86 (MKL). They take raw pointers, so a time step allocates nothing. They are declared weak: on
// a torch build that does not export them (ARM wheels, say), the pointers are null and every
// product goes through ATen's addmm_out on tensor views instead (the portable path). Which path
// this build took is reported by rnnkit.build_info()["cpu_blas"].
//
// PackedB serves the products that reuse one weight matrix at every time step: with MKL (float32)
// it packs the matrix once into MKL's internal layout (cblas_sgemm_pack) and each step reads
// that (cblas_sgemm_compute), faster than sgemm_ at the shapes of one step (docs/kernels.md,
// benchmarks/bench_blas.py). These are weak symbols too; without them PackedB multiplies with
// gemm().
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
// MKL's packed products (LP64: int sizes; the enums are passed as their int values).
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha,
                      const float* src, int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc)
    __attribute__((weak));
}

namespace rnnkit {
namespace cpu {

inline bool has_packed_sgemm() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr &&
         cblas_sgemm_compute != nullptr;
}

inline const char* blas_path() {
  if (sgemm_ == nullptr || dgemm_ == nullptr) return "aten (addmm_out)";
  return has_packed_sgemm() ? "blas (sgemm_/dgemm_ from torch's library; MKL packed sgemm for "
                              "the per-step products)"
                            : "blas (sgemm_/dgemm_ from torch's library)";
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

// The B operand of C = A op(B) + beta C for a run of products that share it (a layer's W_hh at
// every step). op(B): [K, Nc] (B is [Nc, K] when trans_b), row stride ldb; A has at most max_m
// rows. With `pack` (worth it when there are several
// products) and MKL's packed sgemm available, B is packed once here; otherwise multiply() is
// gemm() on B as it is. B must outlive this object.
template <typename scalar_t>
class PackedB {
 public:
  PackedB(bool trans_b, int64_t max_m, int64_t Nc, int64_t K, const scalar_t* B, int64_t ldb,
          bool pack)
      : trans_b_(trans_b), Nc_(Nc), K_(K), B_(B), ldb_(ldb) {
    if constexpr (std::is_same_v<scalar_t, float>) {
      using detail::fits_int;
      if (!pack || !has_packed_sgemm() || max_m <= 0 || Nc == 0 || K == 0 ||
          !(fits_int(max_m) && fits_int(Nc) && fits_int(K) && fits_int(ldb)))
        return;
      const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(max_m), int(Nc), int(K));
      constexpr size_t kAlign = 64;
      packed_.reset(static_cast<float*>(std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign)));
      TORCH_CHECK(packed_ != nullptr, "rnnkit: out of memory packing a ", Nc, " x ", K,
                  " weight matrix");
      cblas_sgemm_pack(kRowMajor, kBMatrix, trans_b ? kTrans : kNoTrans, int(max_m), int(Nc),
                       int(K), 1.0f, B, int(ldb), packed_.get());
      max_m_ = max_m;
    }
  }

  // C = A op(B) + beta C for A: [M, K] (row stride lda), C: [M, Nc] (row stride ldc), M <= max_m.
  void multiply(int64_t M, const scalar_t* A, int64_t lda, scalar_t beta, scalar_t* C,
                int64_t ldc) const {
    if constexpr (std::is_same_v<scalar_t, float>) {
      using detail::fits_int;
      if (packed_ && M > 0 && M <= max_m_ && fits_int(lda) && fits_int(ldc)) {
        cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(M), int(Nc_), int(K_), A, int(lda),
                            packed_.get(), int(K_), beta, C, int(ldc));
        return;
      }
    }
    gemm<scalar_t>(false, trans_b_, M, Nc_, K_, scalar_t(1), A, lda, B_, ldb_, beta, C, ldc);
  }

 private:
  // CBLAS enum values (cblas.h): layout, transposition, packed-matrix identifiers.
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151,
                       kBMatrix = 162;
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  bool trans_b_;
  int64_t Nc_, K_;
  const scalar_t* B_;
  int64_t ldb_;
  int64_t max_m_ = 0;
  std::unique_ptr<float, Free> packed_;  // null: multiply() is gemm()
};

}  // namespace cpu
}  // namespace rnnkit
