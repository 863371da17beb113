// bfloat16 products on AMX tiles, for the per-step and per-sequence products with a weight.
//
// C [M, N] (float32, row stride ldc) = A [M, K] (bfloat16, row stride lda) op(B) + beta C, with
// op(B) [K, N] packed once per call (PackedTiles) into the layout the tile instruction reads:
// column panels of 16 outputs, each a run of 1 KiB tiles over k, a tile holding 32 values of k
// for its 16 columns as 16 rows of bfloat16 pairs, (B[k][n], B[k+1][n]) side by side ("VNNI").
// Each task keeps a 32 x 32 block of C in four tile registers, and per 32 values of k loads two
// row tiles of A and two column tiles of B and issues four tdpbf16ps (16 x 16 x 32 each, float32
// sums). Threads split the column panels in proportion to their recent rates (balance.h): the
// same split from step to step while the cores keep their speeds, so that a thread's share of a
// step's weight stays in its own L2 across the steps (W_hh at H = 512 in bfloat16: 1 MiB a
// thread on two).
//
// A whose rows or k do not fill whole tiles (M % 32, K % 32) goes through a zero-padded copy, and
// blocks of C that overhang M or N through a 32 x 32 scratch block, so that no tile load or store
// reaches past the caller's buffers. The padded values are zeros: they add nothing to a sum.
//
// Used where the CPU has AMX-BF16, the kernel grants this process the tile state
// (arch_prctl(ARCH_REQ_XCOMP_PERM)), and the compiler has the AMX intrinsics (GCC 11 or later,
// Clang 12 or later, x86-64). tests/library/test_weight_product.py checks the products (and so
// the packed layout) against float64 where the tiles are.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "balance.h"

#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define RNNKIT_HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define RNNKIT_HAVE_AMX 0
#endif

namespace rnnkit {
namespace cpu {
namespace amx {

constexpr int64_t kRows = 16;               // rows of an A or C tile
constexpr int64_t kK = 32;                  // values of k in an A or B tile (64 bytes of bfloat16)
constexpr int64_t kCols = 16;               // columns of a B or C tile
constexpr int64_t kTileValues = kK * kCols;  // a packed B tile: 512 bfloat16, 1 KiB
constexpr int64_t kBlock = 32;              // a task's block of C: 2 x 2 tiles

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// op(B) packed once: K padded to a multiple of kK and N to a multiple of kBlock, with zeros.
class PackedTiles {
 public:
  // op(B) = B^T when trans_b (B is [N, K], a weight as stored), else B ([K, N]); row stride ldb.
  PackedTiles(bool trans_b, int64_t K, int64_t N, const c10::BFloat16* B, int64_t ldb)
      : K_(K), N_(N), Kp_(round_up(std::max<int64_t>(K, 1), kK)),
        Np_(round_up(std::max<int64_t>(N, 1), kBlock)) {
    data_.reset(new uint16_t[size_t(Kp_ * Np_)]);  // uninitialised: every tile is written below
    const uint16_t* b = reinterpret_cast<const uint16_t*>(B);
    const int64_t panels = Np_ / kCols, tiles = Kp_ / kK;
    at::parallel_for(0, panels, 8, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t t = 0; t < tiles; ++t) pack_tile(trans_b, b, ldb, p, t);
    });
  }
  int64_t K() const { return K_; }
  int64_t N() const { return N_; }
  int64_t Kp() const { return Kp_; }
  int64_t Np() const { return Np_; }
  // The first tile of the column panel holding column n (a multiple of kCols).
  const uint16_t* panel(int64_t n) const { return data_.get() + (n / kCols) * Kp_ * kCols; }

 private:
  // One tile: its 16 rows of pairs, row kp holding (B[k][n], B[k+1][n]) for k = 32t + 2kp.
  // For a stored weight (trans_b) a pair is one 32-bit word of a row of B, so a whole tile inside
  // B is B's 16 x 16 block of words transposed: ATen's register transpose, a bit-exact move.
  void pack_tile(bool trans_b, const uint16_t* b, int64_t ldb, int64_t p, int64_t t) {
    uint16_t* tile = data_.get() + (p * (Kp_ / kK) + t) * kTileValues;
    const int64_t n0 = p * kCols, k0 = t * kK;
    if (trans_b && n0 + kCols <= N_ && k0 + kK <= K_ && ldb % 2 == 0 &&
        reinterpret_cast<std::uintptr_t>(b) % sizeof(float) == 0) {
      at::vec::transpose_mxn<float>(reinterpret_cast<const float*>(b + n0 * ldb + k0), ldb / 2,
                                    reinterpret_cast<float*>(tile), kCols, int(kCols),
                                    int(kK / 2));
      return;
    }
    for (int64_t c = 0; c < kCols; ++c) {
      const int64_t n = n0 + c;
      for (int64_t kk = 0; kk < kK; ++kk) {
        const int64_t k = k0 + kk;
        uint16_t v = 0;
        if (n < N_ && k < K_) v = trans_b ? b[n * ldb + k] : b[k * ldb + n];
        tile[(kk / 2) * (2 * kCols) + c * 2 + kk % 2] = v;
      }
    }
  }

  int64_t K_ = 0, N_ = 0, Kp_ = 0, Np_ = 0;
  std::unique_ptr<uint16_t[]> data_;
};

#if RNNKIT_HAVE_AMX

// The tile state for this process: the kernel hands it out on request (Linux 5.16 and later).
inline bool permitted() {
  static const bool ok = [] {
    constexpr long kReqXcompPerm = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kXtiledata = 18;         // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
  }();
  return ok;
}

// Palette 1, the eight tiles 16 rows of 64 bytes: C in 0-3, A in 4-5, B in 6-7.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile"))) inline void configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  // ldtilecfg with the whole struct as its operand: GCC 12's _tile_loadconfig names only its
  // first 8 bytes, which lets the compiler drop the stores that fill the rest.
  asm volatile("ldtilecfg %0" ::"m"(cfg));
}

__attribute__((target("amx-tile"))) inline void release() { _tile_release(); }

// The 32 x 32 block of C at C (row stride ldc floats) += the 32 rows of A at A (row stride lda)
// times the two column panels at b0 and b1 (kt tiles of k each); C starts from zero unless
// accumulate.
__attribute__((target("amx-tile,amx-bf16"))) inline void block(const uint16_t* A, int64_t lda,
                                                               const uint16_t* b0,
                                                               const uint16_t* b1, int64_t kt,
                                                               float* C, int64_t ldc,
                                                               bool accumulate) {
  const int64_t sa = lda * int64_t(sizeof(uint16_t)), sc = ldc * int64_t(sizeof(float));
  float* c1 = C + kRows * ldc;
  if (accumulate) {
    _tile_loadd(0, C, sc);
    _tile_loadd(1, C + kCols, sc);
    _tile_loadd(2, c1, sc);
    _tile_loadd(3, c1 + kCols, sc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  const uint16_t* a1 = A + kRows * lda;
  constexpr int64_t sb = 2 * kCols * int64_t(sizeof(uint16_t));
  for (int64_t t = 0; t < kt; ++t) {
    // Each product as soon as its two operands are in, so loads overlap the products before.
    _tile_loadd(4, A + t * kK, sa);
    _tile_loadd(6, b0 + t * kTileValues, sb);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + t * kTileValues, sb);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + t * kK, sa);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, C, sc);
  _tile_stored(1, C + kCols, sc);
  _tile_stored(2, c1, sc);
  _tile_stored(3, c1 + kCols, sc);
}

#else

inline bool permitted() { return false; }
inline void configure() {}
inline void release() {}
inline void block(const uint16_t*, int64_t, const uint16_t*, const uint16_t*, int64_t, float*,
                  int64_t, bool) {}

#endif

// Whether the products can run here: compiled in, the CPU has the tiles, the OS grants them.
inline bool usable(bool cpu_has_amx_bf16) {
  return RNNKIT_HAVE_AMX && cpu_has_amx_bf16 && permitted();
}

// Columns [n0, n1) of C = A op(B) (+ C when accumulate) for every row m < M, n0 a multiple of
// kBlock: one thread's share, on tiles this thread has configured. A: [M, Kp] bfloat16 with zeros
// past K, rows readable up to a multiple of kBlock (row stride lda); WeightB (weights.h) pads a
// caller's A to that.
inline void multiply_columns(int64_t M, const uint16_t* A, int64_t lda, const PackedTiles& B,
                             bool accumulate, float* C, int64_t ldc, int64_t n0, int64_t n1) {
  const int64_t N = std::min(B.N(), n1), kt = B.Kp() / kK;
  alignas(64) float scratch[kBlock * kBlock];
  for (int64_t m0 = 0; m0 < M; m0 += kBlock) {
    const int64_t rows = std::min(kBlock, M - m0);
    const uint16_t* a = A + m0 * lda;
    for (int64_t c0 = n0; c0 < N; c0 += kBlock) {
      const int64_t cols = std::min(kBlock, N - c0);
      const uint16_t* b0 = B.panel(c0);
      const uint16_t* b1 = b0 + B.Kp() * kCols;
      if (rows == kBlock && cols == kBlock) {
        block(a, lda, b0, b1, kt, C + m0 * ldc + c0, ldc, accumulate);
        continue;
      }
      if (accumulate) {
        std::fill(scratch, scratch + kBlock * kBlock, 0.0f);
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(scratch + r * kBlock, C + (m0 + r) * ldc + c0, sizeof(float) * cols);
      }
      block(a, lda, b0, b1, kt, scratch, kBlock, accumulate);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(C + (m0 + r) * ldc + c0, scratch + r * kBlock, sizeof(float) * cols);
    }
  }
}

// C = A op(B) + beta C, the column blocks split over the threads as rates says (A as for
// multiply_columns).
inline void multiply_padded(int64_t M, const uint16_t* A, int64_t lda, const PackedTiles& B,
                            float beta, float* C, int64_t ldc, ThreadRates& rates) {
  const int64_t kt = B.Kp() / kK;
  const int64_t row_blocks = round_up(M, kBlock) / kBlock, col_blocks = B.Np() / kBlock;
  if (beta != 0.0f && beta != 1.0f)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < B.N(); ++n) C[m * ldc + n] *= beta;
  // Column blocks per task: at least 64 tile products' worth of work before a thread is woken.
  const int64_t grain = std::max<int64_t>(1, 64 / std::max<int64_t>(row_blocks * kt, 1));
  balanced_for(rates, col_blocks, grain, [&](int64_t j0, int64_t j1) {
    configure();
    multiply_columns(M, A, lda, B, beta != 0.0f, C, ldc, j0 * kBlock, j1 * kBlock);
    release();
  });
}

}  // namespace amx
}  // namespace cpu
}  // namespace rnnkit
