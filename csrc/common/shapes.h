// Shape checks of one layer's arguments, shared by both backends. They guard the kernels; the
// Python modules check user input first with torch.nn's messages.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "checks.h"
#include "gates.h"
#include "plan.h"

namespace rnnkit {

// The Elman RNN's nonlinearity argument.
inline gates::Activation parse_activation(const std::string& nonlinearity, const char* op) {
  if (nonlinearity == "tanh") return gates::Activation::Tanh;
  if (nonlinearity == "relu") return gates::Activation::Relu;
  TORCH_CHECK(false, op, ": expected nonlinearity 'tanh' or 'relu', got '", nonlinearity, "'");
}

struct LayerShape {
  int64_t I = 0;  // input features
  int64_t H = 0;  // hidden features
  int64_t R = 0;  // recurrent (output) features: H, or proj_size
  int64_t G = 0;  // gate rows: gates_per_unit * H
};

// input: [T, N, I] or [P, I]; h0: [N, R]; w_ih: [G, I]; w_hh: [G, R]; b_ih, b_hh: [G];
// w_hr: [R, H] (LSTM with projection only).
inline LayerShape layer_shape(const char* op, int64_t gates_per_unit, const at::Tensor& input,
                              const SequencePlan& plan, const at::Tensor& h0,
                              const at::Tensor& w_ih, const at::Tensor& w_hh,
                              const c10::optional<at::Tensor>& b_ih,
                              const c10::optional<at::Tensor>& b_hh,
                              const c10::optional<at::Tensor>& w_hr) {
  checks::ndim(w_ih, 2, op, "w_ih (G, I)");
  LayerShape s;
  s.G = w_ih.size(0);
  TORCH_CHECK(s.G % gates_per_unit == 0, op, ": expected w_ih with a multiple of ",
              gates_per_unit, " rows (", gates_per_unit, " gates per hidden unit), got ", s.G);
  s.H = s.G / gates_per_unit;
  s.I = w_ih.size(1);
  s.R = w_hr.has_value() ? w_hr->size(0) : s.H;
  TORCH_CHECK(input.size(-1) == s.I, op, ": expected input with ", s.I,
              " features (w_ih is [G, I] = ", checks::shape_str(w_ih.sizes()), "), got ",
              input.size(-1));
  checks::shape(w_hh, {s.G, s.R}, op, "w_hh (G, R)");
  if (b_ih.has_value()) checks::shape(*b_ih, {s.G}, op, "b_ih (G)");
  if (b_hh.has_value()) checks::shape(*b_hh, {s.G}, op, "b_hh (G)");
  if (w_hr.has_value()) {
    checks::ndim(*w_hr, 2, op, "w_hr (R, H)");
    checks::shape(*w_hr, {s.R, s.H}, op, "w_hr (R, H)");
  }
  checks::shape(h0, {plan.N, s.R}, op, "h0 (N, R)");
  checks::like(h0, input, op, "h0");
  checks::like(w_ih, input, op, "w_ih");
  checks::like(w_hh, input, op, "w_hh");
  checks::like(b_ih, input, op, "b_ih");
  checks::like(b_hh, input, op, "b_hh");
  checks::like(w_hr, input, op, "w_hr");
  return s;
}

// The gradient of a layer's output and final hidden state must match their shapes, when given.
inline void grad_shapes(const char* op, const c10::optional<at::Tensor>& grad_output,
                        const at::Tensor& output, const c10::optional<at::Tensor>& grad_h_n,
                        const at::Tensor& h0) {
  if (grad_output.has_value()) {
    checks::shape(*grad_output, output.sizes(), op, "grad_output");
    checks::like(*grad_output, output, op, "grad_output");
  }
  if (grad_h_n.has_value()) {
    checks::shape(*grad_h_n, h0.sizes(), op, "grad_h_n");
    checks::like(*grad_h_n, output, op, "grad_h_n");
  }
}

// What a backward operator reads from its forward: the output, [T, N, R] or [P, R] (the input's
// shape with R features), in the input's dtype, and the workspace [P, W] (absent for the Elman
// RNN) in ws_dtype (the backend's compute dtype), both on the input's device. Their sizes bound
// every read of the backward kernels.
inline void saved_shapes(const char* op, const at::Tensor& input, const at::Tensor& output,
                         int64_t R, const at::Tensor* workspace, int64_t P, int64_t W,
                         at::ScalarType ws_dtype) {
  auto expected = input.sizes().vec();
  expected.back() = R;
  checks::shape(output, expected, op, "output (the forward's output)");
  checks::like(output, input, op, "output");
  if (workspace != nullptr) {
    checks::shape(*workspace, {P, W}, op, "workspace (P, W)");
    TORCH_CHECK(workspace->scalar_type() == ws_dtype, op, ": expected workspace to have dtype ",
                ws_dtype, " (the kernels' compute dtype for input of dtype ", input.scalar_type(),
                "), got ", workspace->scalar_type());
    TORCH_CHECK(workspace->device() == input.device(), op, ": expected workspace on device ",
                input.device(), " (the device of input), got ", workspace->device());
  }
}

}  // namespace rnnkit
