// Argument checks shared by every launcher. Each failure names the operator, the argument, what
// was expected and what came, so a user can act on it without reading the source.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace rnnkit {
namespace checks {

inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream s;
  s << "[";
  for (size_t k = 0; k < sizes.size(); ++k) s << (k ? ", " : "") << sizes[k];
  s << "]";
  return s.str();
}

// t must have exactly the given shape.
inline void shape(const at::Tensor& t, at::IntArrayRef expected, const char* op, const char* what) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": expected ", what, " of shape ", shape_str(expected),
              ", got ", shape_str(t.sizes()));
}

// t must have the given number of dimensions.
inline void ndim(const at::Tensor& t, int64_t expected, const char* op, const char* what) {
  TORCH_CHECK(t.dim() == expected, op, ": expected ", what, " with ", expected,
              " dimensions, got ", t.dim(), " dimensions of shape ", shape_str(t.sizes()));
}

// t must have the dtype and device of ref (the input).
inline void like(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* what) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", what, " to have dtype ",
              ref.scalar_type(), " (the dtype of input), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", what, " on device ", ref.device(),
              " (the device of input), got ", t.device());
}

inline void like(const c10::optional<at::Tensor>& t, const at::Tensor& ref, const char* op,
                 const char* what) {
  if (t.has_value()) like(*t, ref, op, what);
}

// The dtypes a backend computes in.
inline void floating(const at::Tensor& t, bool half_types, const char* op) {
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kDouble ||
                  (half_types && (dt == at::kHalf || dt == at::kBFloat16));
  TORCH_CHECK(ok, op, ": expected input of dtype ",
              half_types ? "float32, float64, float16 or bfloat16" : "float32 or float64",
              " on device ", t.device(), ", got ", t.scalar_type());
}

}  // namespace checks
}  // namespace rnnkit
