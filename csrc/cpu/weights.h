// The B operand of the time loops' products (w_ih, w_hh, w_hr), for every storage type: float and
// double (storage = compute type) and the reduced types bfloat16 and float16, whose products
// take reduced inputs and give float32 results (the gate pre-activations, the gradients), with
// float32 accumulation.
//
// Three paths for the reduced types, chosen once per process (reduced_path()):
//   OneDnn   ATen's product in the reduced type (oneDNN on an x86 CPU with AVX-512), which
//            accumulates in float32 and rounds its result to the reduced type; the time loop
//            widens that onto its float32 buffer (A, when it comes in float32, is narrowed first).
//   Float32  B is widened to float32 once per call (and packed for MKL's packed sgemm where the
//            float32 path would pack it), A is widened per product; then the float32 product.
//            Portable: it needs only what the float32 kernels need.
//   Mkl      MKL's cblas_gemm_bf16bf16f32 / cblas_gemm_f16f16f32 on the reduced operands, C in
//            float32 with beta. torch's CPU library exports them on x86 (declared weak: absent,
//            this path is never chosen).
//   Amx      bfloat16 only: rnnkit's own tile product (amx.h), B packed once per call into tile
//            layout, float32 C with beta. A weight multiplied once with few rows (a cell's step)
//            is not worth packing and takes the OneDnn product instead.
// The default for bfloat16: Amx on a CPU with AMX-BF16 (where the OS grants the tiles); OneDnn on
// one with AVX512-BF16 and no AMX (AMD EPYC), where oneDNN's bf16 product measured 2.3x sgemm's
// rate and MKL's bf16 one below sgemm (docs/kernels.md, benchmarks/bench_bf16_products.py; torch
// exports no oneDNN entry point with a float32 result, hence the rounding); Float32 elsewhere.
// float16: Float32 (MKL's float16 product has no tiles on AMX-BF16 CPUs and measured below
// sgemm; oneDNN's needs AVX512-FP16). RNNKIT_CPU_BF16_PATH=float32|mkl|onednn|amx overrides the
// choice (amx for bfloat16 only, where usable; float16 then takes Float32).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "amx.h"
#include "bf16_dot.h"
#include "blas.h"
#include "loops.h"
#include "memory.h"
#include "onednn_linear.h"

extern "C" {
// MKL's products of reduced inputs into float32 (CBLAS, LP64: int sizes; the enums as ints;
// MKL_BF16 and MKL_F16 are 16-bit integers holding the bits).
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                            const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                            float* c, int ldc) __attribute__((weak));
void cblas_gemm_f16f16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                          const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                          float* c, int ldc) __attribute__((weak));
}

namespace rnnkit {
namespace cpu {

enum class ReducedPath { Float32, Mkl, OneDnn, Amx };

// CPUID leaf 7: AMX-BF16 (subleaf 0, EDX bit 22), AVX512-BF16 (subleaf 1, EAX bit 5).
inline bool cpuid_bit(unsigned subleaf, int reg, int bit) {
#if defined(__x86_64__) || defined(__i386__)
  unsigned r[4] = {0, 0, 0, 0};
  if (!__get_cpuid_count(7, subleaf, &r[0], &r[1], &r[2], &r[3])) return false;
  return (r[reg] >> bit) & 1u;
#else
  return false;
#endif
}
inline bool cpu_has_amx_bf16() { return cpuid_bit(0, 3, 22); }
inline bool cpu_has_avx512_bf16() { return cpuid_bit(1, 0, 5); }
// rnnkit's own AMX product can run: built in, the CPU has AMX-BF16, the OS grants the tiles.
inline bool amx_usable() {
  static const bool usable = amx::usable(cpu_has_amx_bf16());
  return usable;
}

// Whether the small-batch path multiplies bfloat16 weights with AVX512-BF16 (bf16_dot.h): the
// CPU has it, the build's float registers are 16 wide, and RNNKIT_CPU_BF16_DOT is not 0.
inline bool use_bf16_dot() {
  static const bool use = [] {
    const char* env = std::getenv("RNNKIT_CPU_BF16_DOT");
    return bf16_dot::kAvailable && at::vec::Vectorized<float>::size() == bf16_dot::V &&
           cpu_has_avx512_bf16() && !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return use;
}

// Whether the OneDnn path multiplies the per-step weights reordered once (onednn_linear.h):
// bfloat16, this torch has the operators, and RNNKIT_CPU_BF16_REORDER is not 0.
template <typename scalar_t>
bool use_onednn_reorder() {
  static const bool use = [] {
    const char* env = std::getenv("RNNKIT_CPU_BF16_REORDER");
    return std::is_same_v<scalar_t, c10::BFloat16> && onednn_linear::available() &&
           !(env != nullptr && std::strcmp(env, "0") == 0);
  }();
  return use;
}

template <typename scalar_t>
ReducedPath reduced_path() {
  static const ReducedPath path = [] {
    const bool mkl = cblas_gemm_bf16bf16f32 != nullptr && cblas_gemm_f16f16f32 != nullptr;
    const char* env = std::getenv("RNNKIT_CPU_BF16_PATH");
    if (env != nullptr && std::strcmp(env, "float32") == 0) return ReducedPath::Float32;
    if (env != nullptr && std::strcmp(env, "onednn") == 0) return ReducedPath::OneDnn;
    if (env != nullptr && std::strcmp(env, "mkl") == 0 && mkl) return ReducedPath::Mkl;
    constexpr bool bf16 = std::is_same_v<scalar_t, c10::BFloat16>;
    if (!bf16) return ReducedPath::Float32;
    if (amx_usable()) return ReducedPath::Amx;  // also what RNNKIT_CPU_BF16_PATH=amx asks for
    if (cpu_has_avx512_bf16()) return ReducedPath::OneDnn;
    return ReducedPath::Float32;
  }();
  return path;
}

// For rnnkit.build_info()["cpu_bf16_path"]: the products with a weight, then the small-batch path.
inline const char* reduced_path_name() {
  static const std::string name = [] {
    std::string s;
    switch (reduced_path<c10::BFloat16>()) {
      case ReducedPath::Mkl: s = "mkl bf16->f32 (cblas_gemm_bf16bf16f32)"; break;
      case ReducedPath::Amx:
        s = "amx bf16->f32 (own tile product, weights packed once per call; cell steps: onednn)";
        break;
      case ReducedPath::OneDnn:
        s = use_onednn_reorder<c10::BFloat16>()
                ? "onednn bf16 (at::mm; step products on a weight reordered once), widened"
                : "onednn bf16 (at::mm), widened";
        break;
      default: s = "f32 sgemm on widened bf16"; break;
    }
    return s + (use_bf16_dot() ? "; small batches: avx512_bf16 dot, bf16 weights"
                               : "; small batches: own SIMD, f32 weights");
  }();
  return name.c_str();
}

// Rows per task of a row-parallel conversion: about 32K values each, so that a small one (a
// cell's step, a few rows) stays on the calling thread and a large one (a step at N = 64 and
// H = 512, a whole sequence) splits over the threads.
inline int64_t conversion_grain(int64_t cols) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(cols, 1));
}

// dst[r, :K] = src[r, :K] for r < rows, converted, with zeros in dst[r, K:ld_dst] and in every
// row from rows to padded_rows (row strides ld_src and ld_dst); rows split over threads (inline
// inside a parallel region).
template <typename To, typename From>
void convert_rows_padded(const From* src, int64_t ld_src, int64_t rows, int64_t K, To* dst,
                         int64_t ld_dst, int64_t padded_rows) {
  at::parallel_for(0, padded_rows, conversion_grain(ld_dst), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      To* row = dst + r * ld_dst;
      const int64_t done = r < rows ? K : 0;
      if (done > 0) at::vec::convert(src + r * ld_src, row, done);
      std::fill(row + done, row + ld_dst, To(0));
    }
  });
}

// dst[r, :K] = src[r, :K] for r < rows (row strides ld_src and K), converted.
template <typename To, typename From>
void convert_rows(const From* src, int64_t ld_src, int64_t rows, int64_t K, To* dst) {
  convert_rows_padded(src, ld_src, rows, K, dst, K, rows);
}

// Where convert_rows_with_sums writes: the rounded rows (row-major, row stride cols) and/or the
// same values transposed (column c as row (c + rotate) mod cols, row stride ld_t), and the sums,
// which it adds to.
template <typename To>
struct RoundedRows {
  To* rows = nullptr;
  To* transposed = nullptr;
  int64_t ld_t = 0, rotate = 0;
  float* sums = nullptr;
};

// Rounds src[r, c] (row stride ld_src) for r < rows and c < cols, and adds the float32 sums over r
// (before the rounding) to dst.sums: the gate gradients of a bfloat16 layer's weight products and
// its bias gradients, in one pass over src. The transposed copy is taken from the rounded rows of
// a block while they are in cache: oneDNN multiplies a contiguous transposed left operand faster
// than a transposed view (the weight gradients, d^T x); without dst.rows, a block is rounded into
// a buffer of the thread's own. Columns split over threads, so that each thread owns its sums;
// rows are summed in runs of kRun into a partial sum first, which keeps the rounding error of a
// long sequence's sum near that of a pairwise one.
template <typename To>
void convert_rows_with_sums(const float* src, int64_t ld_src, int64_t rows, int64_t cols,
                            const RoundedRows<To>& dst) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t kW = Vec::size(), kRun = 256, kBlock = 32;  // kBlock: transposed at a time
  TORCH_CHECK(dst.rows != nullptr || dst.transposed != nullptr, "convert_rows_with_sums: no "
              "destination");
  TORCH_CHECK(dst.rotate >= 0 && dst.rotate <= cols, "convert_rows_with_sums: rotate ",
              dst.rotate, " outside [0, ", cols, "]");
  const int64_t blocks = (cols + kW - 1) / kW, wrap = cols - dst.rotate;
  at::parallel_for(0, blocks, conversion_grain(rows * kW), [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kW, c1 = std::min(cols, b1 * kW), width = c1 - c0;
    std::vector<float> run(size_t(width), 0.0f);
    std::vector<To> staged(dst.rows == nullptr ? size_t(kBlock * width) : 0);
    const int64_t ld = dst.rows == nullptr ? width : cols;
    for (int64_t r0 = 0; r0 < rows; r0 += kRun) {
      const int64_t r1 = std::min(rows, r0 + kRun);
      for (int64_t rb = r0; rb < r1; rb += kBlock) {
        const int64_t re = std::min(r1, rb + kBlock);
        // row r (of rb to re), column c0 of the rounded block
        const auto rounded = [&](int64_t r) {
          return dst.rows == nullptr ? staged.data() + (r - rb) * ld : dst.rows + r * ld + c0;
        };
        for (int64_t r = rb; r < re; ++r) {
          const float* s = src + r * ld_src + c0;
          To* d = rounded(r);
          int64_t c = 0;
          for (; c + 2 * kW <= width; c += 2 * kW) {
            const Vec v0 = Vec::loadu(s + c), v1 = Vec::loadu(s + c + kW);
            (Vec::loadu(run.data() + c) + v0).store(run.data() + c);
            (Vec::loadu(run.data() + c + kW) + v1).store(run.data() + c + kW);
            at::vec::convert_from_float<To>(v0, v1).store(d + c);
          }
          for (; c < width; ++c) {
            run[size_t(c)] += s[c];
            d[c] = To(s[c]);
          }
        }
        if (dst.transposed == nullptr) continue;
        for (int64_t c = c0; c < c1;) {
          const int64_t end = std::min({c1, c + kBlock, c < wrap ? wrap : cols});
          const int64_t row = c < wrap ? c + dst.rotate : c - wrap;
          at::vec::transpose_mxn<To>(rounded(rb) + (c - c0), ld,
                                     dst.transposed + row * dst.ld_t + rb, dst.ld_t,
                                     int(re - rb), int(end - c));
          c = end;
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        dst.sums[c0 + c] += run[size_t(c)];
        run[size_t(c)] = 0.0f;
      }
    }
  });
}

// C[m, :cols] = widen(src[m, :cols]) + beta C[m, :cols] for m < rows (row strides cols and ldc),
// vectorised, rows split over threads.
template <typename From>
void widen_rows_into(const From* src, int64_t rows, int64_t cols, float beta, float* C,
                     int64_t ldc) {
  using Vec = at::vec::Vectorized<float>;
  constexpr int64_t kChunk = 256;  // widened through a stack buffer of this many values
  at::parallel_for(0, rows, conversion_grain(cols), [&](int64_t m0, int64_t m1) {
    float wide[kChunk];
    for (int64_t m = m0; m < m1; ++m) {
      const From* row = src + m * cols;
      float* dst = C + m * ldc;
      if (beta == 0.0f) {
        at::vec::convert(row, dst, cols);
        continue;
      }
      for (int64_t c0 = 0; c0 < cols; c0 += kChunk) {
        const int64_t n = std::min(kChunk, cols - c0);
        at::vec::convert(row + c0, wide, n);
        int64_t c = 0;
        for (; c + Vec::size() <= n; c += Vec::size()) {
          const Vec sum = at::vec::fmadd(Vec(beta), Vec::loadu(dst + c0 + c), Vec::loadu(wide + c));
          sum.store(dst + c0 + c);
        }
        for (; c < n; ++c) dst[c0 + c] = beta * dst[c0 + c] + wide[c];
      }
    }
  });
}

// The fewest rows of A for which the Amx path packs a weight that is multiplied once. Packing
// reads and writes the whole weight, which a product of a few rows (a cell's step) does not repay;
// the input projection of a sequence (T x N rows) does. Chosen, not measured as a threshold.
// A weight of at most kAmxSmallWeight values is packed from kAmxSmallRows rows on: oneDNN's
// product of a few rows costs tens of microseconds a call beyond its arithmetic, more than
// packing so small a weight (docs/kernels.md, "The product path").
constexpr int64_t kAmxPackRows = 256;
constexpr int64_t kAmxSmallRows = 16;
constexpr int64_t kAmxSmallWeight = int64_t(1) << 18;  // 512 KiB of bfloat16

inline bool amx_packs(int64_t max_m, int64_t K, int64_t Nc) {
  return max_m >= kAmxPackRows || (max_m >= kAmxSmallRows && K * Nc <= kAmxSmallWeight);
}

template <typename scalar_t, typename compute_t>
class WeightB;

// Storage = compute type: MKL's packed sgemm where PackedB packs, else gemm().
template <typename scalar_t>
class WeightB<scalar_t, scalar_t> {
 public:
  // op(B): [K, Nc] (B is [Nc, K] when trans_b), row stride ldb; A has at most max_m rows.
  WeightB(bool trans_b, int64_t max_m, int64_t Nc, int64_t K, const scalar_t* B, int64_t ldb,
          bool pack)
      : b_(trans_b, max_m, Nc, K, B, ldb, pack) {}
  // C = A op(B) + beta C; A: [M, K] (row stride lda), C: [M, Nc] (row stride ldc).
  void multiply(int64_t M, const scalar_t* A, int64_t lda, scalar_t beta, scalar_t* C,
                int64_t ldc) const {
    b_.multiply(M, A, lda, beta, C, ldc);
  }

 private:
  PackedB<scalar_t> b_;
};

// bfloat16 and float16 storage, float32 results. A may be in either type. Not thread-safe: the
// conversion buffers are the object's own (the time loops multiply from one thread).
template <typename scalar_t>
  requires kReduced<scalar_t>
class WeightB<scalar_t, float> {
 public:
  WeightB(bool trans_b, int64_t max_m, int64_t Nc, int64_t K, const scalar_t* B, int64_t ldb,
          bool pack)
      : trans_b_(trans_b), Nc_(Nc), K_(K), B_(B), ldb_(ldb), path_(reduced_path<scalar_t>()) {
    if (B == nullptr) return;  // an absent weight (no projection): never multiplied
    if (path_ == ReducedPath::Float32) {
      const int64_t rows = trans_b ? Nc : K, cols = trans_b ? K : Nc;
      b32_.resize(size_t(rows * cols));
      convert_rows(B, ldb, rows, cols, b32_.data());
      packed_.emplace(trans_b, max_m, Nc, K, b32_.data(), cols, pack);
    }
    // On the Amx path, a weight multiplied at every step (pack) or by many rows at once is packed
    // into tiles; one multiplied once by a few rows takes oneDNN's product unpacked.
    if (path_ == ReducedPath::Amx) {
      if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
        if (pack || amx_packs(max_m, K, Nc)) tiles_.emplace(trans_b, K, Nc, B, ldb);
      }
      if (!tiles_.has_value()) path_ = ReducedPath::OneDnn;
    }
    // A weight multiplied at every step (pack) is reordered once for oneDNN, when it can be.
    if (path_ == ReducedPath::OneDnn && pack && use_onednn_reorder<scalar_t>() && Nc > 0 &&
        K > 0) {
      const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
      const at::Tensor w =  // [Nc, K], as a linear layer's weight
          trans_b ? at::from_blob(const_cast<scalar_t*>(B), {Nc, K}, {ldb, 1}, options)
                  : at::from_blob(const_cast<scalar_t*>(B), {K, Nc}, {ldb, 1}, options).t();
      reordered_ = onednn_linear::reorder(w, max_m);
    }
  }

  template <typename A_t>
  void multiply(int64_t M, const A_t* A, int64_t lda, float beta, float* C, int64_t ldc) const {
    static_assert(std::is_same_v<A_t, float> || std::is_same_v<A_t, scalar_t>);
    if (M <= 0 || Nc_ == 0) return;
    if (path_ == ReducedPath::Amx) {
      amx_gemm(M, A, lda, beta, C, ldc);
      return;
    }
    if (path_ == ReducedPath::Float32) {
      if constexpr (std::is_same_v<A_t, float>) {
        packed_->multiply(M, A, lda, beta, C, ldc);
      } else {
        float* a32 = a32_.get(M * K_);
        convert_rows(A, lda, M, K_, a32);
        packed_->multiply(M, a32, K_, beta, C, ldc);
      }
      return;
    }
    const scalar_t* a = nullptr;
    if constexpr (std::is_same_v<A_t, float>) {
      scalar_t* a16 = a16_.get(M * K_);
      convert_rows(A, lda, M, K_, a16);
      a = a16;
      lda = K_;
    } else {
      a = A;
    }
    if (path_ == ReducedPath::Mkl) {
      mkl_gemm(M, a, lda, beta, C, ldc);
    } else {
      onednn_gemm(M, a, lda, beta, C, ldc);
    }
  }

 private:
  // C = widen(round(A op(B))) + beta C, the product by ATen in the reduced type.
  void onednn_gemm(int64_t M, const scalar_t* A, int64_t lda, float beta, float* C,
                   int64_t ldc) const {
    const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
    if (reordered_.has_value()) {
      at::Tensor a = at::from_blob(const_cast<scalar_t*>(A), {M, K_}, {lda, 1}, options);
      if (lda != K_) a = a.contiguous();
      const at::Tensor c = onednn_linear::multiply(a, *reordered_);
      widen_rows_into(c.const_data_ptr<scalar_t>(), M, Nc_, beta, C, ldc);
      return;
    }
    const at::Tensor a = at::from_blob(const_cast<scalar_t*>(A), {M, K_}, {lda, 1}, options);
    const at::Tensor b =
        trans_b_ ? at::from_blob(const_cast<scalar_t*>(B_), {Nc_, K_}, {ldb_, 1}, options).t()
                 : at::from_blob(const_cast<scalar_t*>(B_), {K_, Nc_}, {ldb_, 1}, options);
    scalar_t* c16 = c16_.get(M * Nc_);
    at::Tensor c = at::from_blob(c16, {M, Nc_}, options);
    at::mm_out(c, a, b);
    widen_rows_into(c16, M, Nc_, beta, C, ldc);
  }

  // C = A op(B) + beta C on the tiles. A goes through a zero-padded bfloat16 copy (rows split
  // over the threads) unless it is bfloat16 in whole tiles (M and K multiples of 32).
  template <typename A_t>
  void amx_gemm(int64_t M, const A_t* A, int64_t lda, float beta, float* C, int64_t ldc) const {
    const amx::PackedTiles& b = *tiles_;
    if constexpr (std::is_same_v<A_t, scalar_t>) {
      if (M % amx::kBlock == 0 && b.Kp() == K_) {
        amx::multiply_padded(M, reinterpret_cast<const uint16_t*>(A), lda, b, beta, C, ldc, rates_);
        return;
      }
    }
    const int64_t Kp = b.Kp(), Mp = amx::round_up(M, amx::kBlock);
    scalar_t* a16 = a16_.get(Mp * Kp);
    convert_rows_padded(A, lda, M, K_, a16, Kp, Mp);
    amx::multiply_padded(M, reinterpret_cast<const uint16_t*>(a16), Kp, b, beta, C, ldc, rates_);
  }

  void mkl_gemm(int64_t M, const scalar_t* A, int64_t lda, float beta, float* C,
                int64_t ldc) const {
    constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
    auto* f = std::is_same_v<scalar_t, c10::BFloat16> ? cblas_gemm_bf16bf16f32
                                                      : cblas_gemm_f16f16f32;
    if (K_ == 0) {  // nothing to multiply: C = beta * C
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < Nc_; ++n)
          C[m * ldc + n] = beta == 0.0f ? 0.0f : beta * C[m * ldc + n];
      return;
    }
    f(kRowMajor, kNoTrans, trans_b_ ? kTrans : kNoTrans, int(M), int(Nc_), int(K_), 1.0f,
      reinterpret_cast<const uint16_t*>(A), int(lda), reinterpret_cast<const uint16_t*>(B_),
      int(ldb_), beta, C, int(ldc));
  }

  bool trans_b_;
  int64_t Nc_, K_;
  const scalar_t* B_;
  int64_t ldb_;
  ReducedPath path_;  // Amx becomes OneDnn for a weight not worth packing
  std::vector<float> b32_;               // Float32: B widened
  std::optional<PackedB<float>> packed_;  // Float32: its product
  mutable Scratch<float> a32_;           // Float32: A widened
  mutable Scratch<scalar_t> a16_;        // Mkl, OneDnn: A narrowed; Amx: A padded to tiles
  mutable Scratch<scalar_t> c16_;        // OneDnn: the rounded product
  std::optional<at::Tensor> reordered_;  // OneDnn with pack: B^T reordered (onednn_linear.h)
  std::optional<amx::PackedTiles> tiles_;  // Amx: op(B) in tile layout
  mutable ThreadRates rates_;              // Amx: the threads' rates on this weight's products
};

}  // namespace cpu
}  // namespace rnnkit
