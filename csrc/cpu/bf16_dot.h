// The small-batch recurrent product (recurrent.h) on bfloat16 weights with AVX512-BF16's dot
// product instruction (vdpbf16ps: 16 float32 lanes, each += the products of a pair of bfloat16
// values), for CPUs that have it; chosen at run time (cpu_has_avx512_bf16 in weights.h).
//
// A block of V = 16 hidden units holds, for every pair p of recurrent inputs (r = 2p, 2p + 1) and
// every gate k, the 16 units' two weights side by side:
//   block[((p * K + k) * V + v) * 2 + e] = W_hh[k * H + b * V + v][2p + e]
// (zero past H and past R), half the bytes of the float32 block, so that a thread's share of
// W_hh stays in its cache at twice the hidden size. The sums are float32.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define RNNKIT_BF16_DOT 1
#else
#define RNNKIT_BF16_DOT 0
#endif

namespace rnnkit {
namespace cpu {
namespace bf16_dot {

constexpr int64_t V = 16;
// Whether this build can hold the kernel at all (an x86-64 compiler that takes target attributes).
constexpr bool kAvailable = RNNKIT_BF16_DOT;

inline int64_t pairs(int64_t R) { return (R + 1) / 2; }

// The pair (h[2p], h[2p + 1]) of a row of R values as one 32-bit lane value (zero past R).
inline uint32_t pair_at(const c10::BFloat16* h, int64_t p, int64_t R) {
  const uint32_t lo = h[2 * p].x, hi = 2 * p + 1 < R ? h[2 * p + 1].x : 0;
  return lo | (hi << 16);
}

// Block b of W_hh ([K * H, R]) in the layout above; block: [pairs(R), K, V, 2]. Read as 32-bit
// words (a pair of adjacent weights of one row each), a gate's rows of the block [units, P]
// transposed are its slice of the block [P, V], so with R even the words go through ATen's
// 16 x 16 register transpose (a bit-exact move, as for float32 weights in recurrent.h); an odd R
// pads each row's last pair, one word at a time. This runs once per call: packed one value at a
// time, a whole W_hh at N = 1 cost as much as tens of steps.
inline void pack_block(const c10::BFloat16* w_hh, int64_t K, int64_t H, int64_t R, int64_t b,
                       uint16_t* block) {
  const int64_t P = pairs(R), units = std::min<int64_t>(V, H - b * V);
  if (units < V) std::fill(block, block + P * K * V * 2, uint16_t(0));
  const bool words = R % 2 == 0 && reinterpret_cast<std::uintptr_t>(w_hh) % sizeof(float) == 0;
  for (int64_t k = 0; k < K; ++k) {
    const c10::BFloat16* rows = w_hh + (k * H + b * V) * R;  // [units, R]
    if (words) {
      at::vec::transpose_mxn<float>(reinterpret_cast<const float*>(rows), P,
                                    reinterpret_cast<float*>(block) + k * V, K * V, int(units),
                                    int(P));
      continue;
    }
    for (int64_t v = 0; v < units; ++v)
      for (int64_t p = 0; p < P; ++p) {
        const uint32_t word = pair_at(rows + v * R, p, R);
        std::memcpy(block + ((p * K + k) * V + v) * 2, &word, sizeof(word));
      }
  }
}

// Block b of a weight w ([R, H], row stride H) that multiplies by its columns (backward through
// time's da W_hh): for every pair p of rows (r = 2p, 2p + 1), the block's V columns' two weights
// side by side,
//   block[(p * V + v) * 2 + e] = w[2p + e][b * V + v]        (zero past H and past R)
// which is pack_block's layout, K = 1, for the transposed weight. Two row slices interleaved.
inline void pack_columns(const c10::BFloat16* w, int64_t R, int64_t H, int64_t b,
                         uint16_t* block) {
  const int64_t c0 = b * V, units = std::min<int64_t>(V, H - c0);
  const uint16_t* src = reinterpret_cast<const uint16_t*>(w);
  for (int64_t p = 0; p < pairs(R); ++p) {
    const uint16_t* even = src + 2 * p * H + c0;
    const bool odd = 2 * p + 1 < R;
    uint16_t* to = block + p * V * 2;
    for (int64_t v = 0; v < V; ++v) {
      to[2 * v] = v < units ? even[v] : 0;
      to[2 * v + 1] = v < units && odd ? even[H + v] : 0;
    }
  }
}

#if RNNKIT_BF16_DOT
// acc[n * ld_acc + k * H + j + v] (+)= sum_r h[n * R + r] W_hh[k * H + j + v][r] for n < ROWS,
// v < width, from the packed block (below: product_rows; first, its step over one pair p).
// WHOLE: the pair lies inside the row (2p + 1 < R), so it is the 32-bit word at h + 2p, one
// broadcast load; else pair_at pads it.
template <int K, int ROWS, bool WHOLE = true>
__attribute__((target("avx512f,avx512bf16"), always_inline)) inline void accumulate_pair(
    const uint16_t* block, int64_t R, const c10::BFloat16* h, int64_t p, __m512 (&sum)[ROWS][K]) {
  __m512i w[K];
  for (int k = 0; k < K; ++k)
    w[k] = _mm512_loadu_si512(static_cast<const void*>(block + (p * K + k) * V * 2));
  for (int n = 0; n < ROWS; ++n) {
    uint32_t word;
    if constexpr (WHOLE) {
      std::memcpy(&word, h + n * R + 2 * p, sizeof(word));
    } else {
      word = pair_at(h + n * R, p, R);
    }
    const __m512i hp = _mm512_set1_epi32(int(word));
    for (int k = 0; k < K; ++k)
      sum[n][k] = _mm512_dpbf16_ps(sum[n][k], (__m512bh)hp, (__m512bh)w[k]);
  }
}

// Consecutive pairs go to CHAINS separate sums, so that enough dot products are in flight: with
// K * ROWS sums each would wait for the previous pair's result (docs/kernels.md gives what it
// measured). Two chains for one or two rows, and at least eight sums in all (one gate, one row:
// backward through time's product and the RNN's).
template <int K, int ROWS>
__attribute__((target("avx512f,avx512bf16"))) void product_rows(
    const uint16_t* block, int64_t R, const c10::BFloat16* h, float* acc, int64_t ld_acc,
    int64_t H, int64_t j, int64_t width, bool accumulate) {
  constexpr int CHAINS = std::max(ROWS <= 2 ? 2 : 1, 8 / (K * ROWS));
  __m512 sum[CHAINS][ROWS][K];
  for (int c = 0; c < CHAINS; ++c)
    for (int n = 0; n < ROWS; ++n)
      for (int k = 0; k < K; ++k) sum[c][n][k] = _mm512_setzero_ps();
  const int64_t P = pairs(R), whole = R / 2;
  int64_t p = 0;
  for (; p + CHAINS <= whole; p += CHAINS)
    for (int c = 0; c < CHAINS; ++c) accumulate_pair<K, ROWS>(block, R, h, p + c, sum[c]);
  for (; p < whole; ++p) accumulate_pair<K, ROWS>(block, R, h, p, sum[0]);
  for (; p < P; ++p) accumulate_pair<K, ROWS, false>(block, R, h, p, sum[0]);
  const __mmask16 mask = width >= V ? __mmask16(0xFFFF) : __mmask16((1u << width) - 1);
  for (int n = 0; n < ROWS; ++n)
    for (int k = 0; k < K; ++k) {
      float* dst = acc + n * ld_acc + k * H + j;
      __m512 total = sum[0][n][k];
      for (int c = 1; c < CHAINS; ++c) total = _mm512_add_ps(total, sum[c][n][k]);
      if (accumulate) total = _mm512_add_ps(total, _mm512_maskz_loadu_ps(mask, dst));
      _mm512_mask_storeu_ps(dst, mask, total);
    }
}

#else
template <int K, int ROWS>
void product_rows(const uint16_t*, int64_t, const c10::BFloat16*, float*, int64_t, int64_t, int64_t,
                  int64_t, bool) {}  // never called: kAvailable is false
#endif

}  // namespace bf16_dot
}  // namespace cpu
}  // namespace rnnkit
