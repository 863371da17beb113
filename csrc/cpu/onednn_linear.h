// oneDNN's product with a weight reordered once into its own blocked layout, reached through the
// two operators torch registers for it (mkldnn::_reorder_linear_weight, mkldnn::_linear_pointwise):
// torch's library hides oneDNN's own symbols, so its operators are the way in. A time loop
// multiplies by the same W_hh at every step, and a plain at::mm reorders it on every call; with
// the weight reordered once, the bfloat16 step product runs faster (docs/kernels.md gives the
// measurements). Called boxed, by name: the operators exist only in builds with oneDNN
// (available() says whether this one has them), and a boxed call does not depend on how their
// C++ signature spells its argument types.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdint>
#include <optional>
#include <string>

namespace rnnkit {
namespace cpu {
namespace onednn_linear {

// The operator named `name` with a CPU kernel, or nullopt.
inline std::optional<c10::OperatorHandle> cpu_operator(const char* name) {
  const auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
  if (!handle.has_value() || !handle->hasKernelForDispatchKey(c10::DispatchKey::CPU))
    return std::nullopt;
  return handle;
}

inline const std::optional<c10::OperatorHandle>& reorder_op() {
  static const auto op = cpu_operator("mkldnn::_reorder_linear_weight");
  return op;
}

inline const std::optional<c10::OperatorHandle>& linear_op() {
  static const auto op = cpu_operator("mkldnn::_linear_pointwise");
  return op;
}

// Whether this build of torch has both operators.
inline bool available() { return reorder_op().has_value() && linear_op().has_value(); }

// weight [Nc, K] (a linear layer's weight: the product is x weight^T), reordered for products of
// up to max_m rows. An opaque oneDNN tensor that owns a copy of the weight.
inline at::Tensor reorder(const at::Tensor& weight, int64_t max_m) {
  torch::jit::Stack stack{weight.contiguous(), c10::IValue(max_m)};
  reorder_op()->callBoxed(&stack);
  return stack[0].toTensor();
}

// a [M, K] (rows contiguous) times the reordered weight transposed: [M, Nc], a new tensor in
// a's dtype (oneDNN sums in float32 and rounds once).
inline at::Tensor multiply(const at::Tensor& a, const at::Tensor& reordered) {
  torch::jit::Stack stack{a,
                          reordered,
                          c10::IValue(),  // no bias
                          c10::IValue(std::string("none")),
                          c10::IValue(c10::List<std::optional<c10::Scalar>>()),
                          c10::IValue()};  // algorithm: none
  linear_op()->callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace onednn_linear
}  // namespace cpu
}  // namespace rnnkit
