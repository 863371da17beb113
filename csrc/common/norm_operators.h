// The operators of a row-norm cell (common/cell.h kRowNorm: the layer-normalised LSTM and GRU).
// One signature for both, the cell state optional:
//   name(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, norm, reverse, train, zoneout_h,
//       zoneout_h_p, zoneout_c, zoneout_c_p) -> (output, h_n, c_n, workspace)
//   name_backward(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, norm,
//       output, workspace, reverse, zoneout_h, zoneout_h_p, zoneout_c, zoneout_c_p)
//       -> (grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_norm)
// c0 is the cell state of a cell that has one and None otherwise; then c_n and grad_c0 are empty,
// [0], and zoneout_c must be None and zoneout_c_p 0. The zoneout arguments are layer.h's
// (ZoneoutArgs, defaults: none). norm is the cell's norm parameters in one vector,
// [Layout::norm_params()] (the Python modules keep them as separate parameters and concatenate
// them). A one-step cell is the layer
// over a sequence of length 1 (rnnkit/layernorm.py), so there are no *_cell operators.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "layer.h"

namespace rnnkit {

template <typename Cell, typename Backend>
struct NormOps {
  static void define(torch::Library& m) {
    const std::string n = Cell::kName;
    m.def((n + "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
               "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor norm, bool reverse, "
               "bool train=True" + zoneout_schema(true) +
               ") -> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)")
              .c_str());
    m.def((n + "_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
               "Tensor input, Tensor? batch_sizes, Tensor h0, Tensor? c0, Tensor w_ih, "
               "Tensor w_hh, Tensor norm, Tensor output, Tensor workspace, bool reverse" +
               zoneout_schema(true) +
               ") -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
               "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh, Tensor grad_norm)")
              .c_str());
  }

  // The cell state as layer.h takes it: required with one, refused without.
  static Tensor cell_state(const optional<Tensor>& c0, bool backward) {
    const char* op = op_name<Cell>(backward);
    if constexpr (Cell::kCellState) {
      TORCH_CHECK(c0.has_value(), op, ": expected c0 (N, H), the initial cell state, got None");
      return *c0;
    } else {
      TORCH_CHECK(!c0.has_value(), op, ": expected c0 None (", Cell::kName,
                  " has no cell state), got a tensor of shape ", checks::shape_str(c0->sizes()));
      return Tensor();
    }
  }

  // The zoneout arguments as layer.h takes them: c's refused without a cell state.
  static ZoneoutArgs zoneout_args(const optional<Tensor>& mask_h, double p_h,
                             const optional<Tensor>& mask_c, double p_c, bool backward) {
    if constexpr (!Cell::kCellState) {
      TORCH_CHECK(!mask_c.has_value() && p_c == 0, op_name<Cell>(backward),
                  ": expected zoneout_c None and zoneout_c_p 0 (", Cell::kName,
                  " has no cell state), got ",
                  mask_c.has_value() ? "a mask" : "zoneout_c_p = " + std::to_string(p_c));
    }
    return {mask_h, mask_c, p_h, p_c};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> layer(
      const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0,
      const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
      const optional<Tensor>& b_ih, const optional<Tensor>& b_hh, const Tensor& norm,
      bool reverse, bool train, const optional<Tensor>& zoneout_h, double zoneout_h_p,
      const optional<Tensor>& zoneout_c, double zoneout_c_p) {
    const LayerResult r = layer_forward<Cell, Backend>(
        {.input = input, .batch_sizes = batch_sizes, .h0 = h0, .c0 = cell_state(c0, false),
         .w_ih = w_ih, .w_hh = w_hh, .b_ih = b_ih, .b_hh = b_hh, .reverse = reverse,
         .train = train, .norm = norm,
         .zoneout = zoneout_args(zoneout_h, zoneout_h_p, zoneout_c, zoneout_c_p, false)});
    return {r.output, r.h_n, r.c_n.defined() ? r.c_n : at::empty({0}, input.options()),
            r.workspace};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_grad(
      const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n,
      const optional<Tensor>& grad_c_n, const Tensor& input, const optional<Tensor>& batch_sizes,
      const Tensor& h0, const optional<Tensor>& c0, const Tensor& w_ih, const Tensor& w_hh,
      const Tensor& norm, const Tensor& output, const Tensor& workspace, bool reverse,
      const optional<Tensor>& zoneout_h, double zoneout_h_p, const optional<Tensor>& zoneout_c,
      double zoneout_c_p) {
    if constexpr (!Cell::kCellState) {
      TORCH_CHECK(!grad_c_n.has_value(), op_name<Cell>(true), ": expected grad_c_n None (",
                  Cell::kName, " has no cell state)");
    }
    const LayerGrads r = layer_backward<Cell, Backend>(
        {.grad_output = grad_output, .grad_h_n = grad_h_n, .grad_c_n = grad_c_n, .input = input,
         .batch_sizes = batch_sizes, .h0 = h0, .c0 = cell_state(c0, true), .w_ih = w_ih,
         .w_hh = w_hh, .output = output, .workspace = workspace, .reverse = reverse,
         .norm = norm,
         .zoneout = zoneout_args(zoneout_h, zoneout_h_p, zoneout_c, zoneout_c_p, true)});
    return {r.g.input, r.h0, r.c0.defined() ? r.c0 : at::empty({0}, input.options()),
            r.g.w_ih,  r.g.w_hh, r.g.b_ih, r.g.b_hh, r.norm};
  }
};

}  // namespace rnnkit
