// Elementary functions that the gate arithmetic in gates.h is written with.
//
// Every function has an overload for plain scalars (float, double: host and device) and, in the
// CPU build, one for at::vec::Vectorized<T>, so the same template in gates.h runs on one value at
// a time on the GPU and on a whole SIMD register at a time on the CPU.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RNNKIT_HD __host__ __device__ __forceinline__
#else
#if defined(__GNUC__) || defined(__clang__)
// Forced inline on the CPU as on the GPU: the cells' pointwise functions are small and hot, and
// GCC's inliner budget is per translation unit, so whether it inlined them changed with
// unrelated code in the same unit (docs/kernels.md, "Backward through time").
#define RNNKIT_HD inline __attribute__((always_inline))
#else
#define RNNKIT_HD inline
#endif
#include <ATen/cpu/vec/vec.h>
#endif

namespace rnnkit {
namespace math {

// ---- scalars --------------------------------------------------------------------------------
RNNKIT_HD float rk_exp(float x) { return ::expf(x); }
RNNKIT_HD double rk_exp(double x) { return ::exp(x); }
RNNKIT_HD float rk_tanh(float x) { return ::tanhf(x); }
RNNKIT_HD double rk_tanh(double x) { return ::tanh(x); }
// relu that keeps NaN (NaN < 0 is false), as torch.relu does.
template <typename T>
RNNKIT_HD T rk_relu(T x) { return x < T(0) ? T(0) : x; }
// value unless y <= 0, then 0: the relu backward, as torch's threshold_backward (y <= 0 -> 0).
// Written as "y <= 0" and not "y > 0" so that a NaN y lets the gradient through, as torch does.
template <typename T>
RNNKIT_HD T rk_where_positive(T y, T value) { return y <= T(0) ? T(0) : value; }

// ---- SIMD registers (CPU only) --------------------------------------------------------------
#if !defined(__CUDACC__) && !defined(__HIPCC__)
template <typename T>
inline at::vec::Vectorized<T> rk_exp(const at::vec::Vectorized<T>& x) { return x.exp(); }
template <typename T>
inline at::vec::Vectorized<T> rk_tanh(const at::vec::Vectorized<T>& x) { return x.tanh(); }
#if defined(CPU_CAPABILITY_AVX512)
// exp of 16 float lanes, as accurate as Sleef's expf16_u10 (which the template above calls) and
// cheaper: within 0.93 ULP of the exact value in a scan of 611 million floats (Sleef's: 0.98),
// and an LSTM step's pointwise pass ran 15-25% faster with it in a loop of its own (the layers:
// docs/kernels.md). exp(x) = 2^n e^r with n = round(x / ln 2) and r = x - n ln 2,
// ln 2 in two parts (the first has 15 significant bits, so n times it is exact); e^r, |r| <=
// ln 2 / 2, by its Taylor series to r^7 (the first term left out is under 0.1 ULP); 2^n applied
// by vscalefps, which also gives subnormal results, 0 below them and inf above FLT_MAX. x is
// first held to [-104, 89], past which the result is 0 or inf already; min and max take x as
// their second operand, which they return when it is NaN.
RNNKIT_HD at::vec::Vectorized<float> rk_exp(const at::vec::Vectorized<float>& v) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), v));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  for (const float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return at::vec::Vectorized<float>(_mm512_scalef_ps(p, n));
}
#endif
// tanh of float lanes, within 1.4 ULP of the exact value (Sleef's, which the template above
// calls, is within 1, at 2.2 times the cost; tanh is most of the cost of the LSTM's pointwise
// pass). tanh is odd: it is computed on |x| and given x's sign bit, which also keeps -0.
//   |x| < 0.55: the Taylor series of tanh up to x^17 (each term under 0.13 of the one before)
//   otherwise:  1 - 2 / (exp(2|x|) + 1), which loses at most a bit to cancellation there and
//               is 1 once exp overflows; NaN stays NaN.
RNNKIT_HD at::vec::Vectorized<float> rk_tanh(const at::vec::Vectorized<float>& x) {
  using V = at::vec::Vectorized<float>;
  const V a = x.abs(), a2 = a * a;
  V p(6404582.0f / 10854718875.0f);  // coefficients of x^17, x^15, ..., x^3
  for (const float c : {-929569.0f / 638512875.0f, 21844.0f / 6081075.0f, -1382.0f / 155925.0f,
                        62.0f / 2835.0f, -17.0f / 315.0f, 2.0f / 15.0f, -1.0f / 3.0f})
    p = at::vec::fmadd(p, a2, V(c));
  const V series = at::vec::fmadd(p * a2, a, a);
  const V from_exp = V(1.0f) - V(2.0f) / (rk_exp(a + a) + V(1.0f));
  const V magnitude = V::blendv(from_exp, series, a < V(0.55f));
  return magnitude | (x & V(-0.0f));
}
template <typename T>
inline at::vec::Vectorized<T> rk_relu(const at::vec::Vectorized<T>& x) {
  const auto zero = at::vec::Vectorized<T>(T(0));
  // x where x >= 0 or x is NaN, else 0.
  return at::vec::Vectorized<T>::blendv(x, zero, x < zero);
}
template <typename T>
inline at::vec::Vectorized<T> rk_where_positive(const at::vec::Vectorized<T>& y,
                                                const at::vec::Vectorized<T>& value) {
  const auto zero = at::vec::Vectorized<T>(T(0));
  return at::vec::Vectorized<T>::blendv(value, zero, y <= zero);
}
#endif

}  // namespace math
}  // namespace rnnkit
