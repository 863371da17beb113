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
#define RNNKIT_HD inline
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
