// The operators of a cell: their schemas, and their kernels on one backend, from layer.h's
// layer_forward and layer_backward. A cell's operators take one of three signatures, chosen from
// its description:
//   with a cell state (LSTM):           name(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
//                                       w_hr, reverse, train) -> (output, h_n, c_n, workspace)
//   saving no workspace (Elman RNN):    name(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
//                                       nonlinearity, reverse) -> (output, h_n)
//   any other (GRU):                    name(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
//                                       reverse, train) -> (output, h_n, workspace)
// and last, on the layer operators and their backward, the zoneout arguments of zoneout_schema
// (zoneout_h, zoneout_h_p, and for a cell state zoneout_c, zoneout_c_p; defaults: none);
// each with name_backward, and the one-step forms name_cell and name_cell_backward, which are
// the layer run over a sequence of length 1 (one code path, one set of tests, for both).
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "layer.h"
#include "norm_operators.h"

namespace rnnkit {

// The zoneout arguments (layer.h's zoneout_schema) that every layer operator and its backward
// take last: h's, and c's for a cell with a cell state. The one-step *_cell operators take none.
template <typename Cell>
std::string zoneout_schema() {
  return zoneout_schema(Cell::kCellState);
}

// ---- with a cell state (LSTM) ---------------------------------------------------------------
template <typename Cell, typename Backend>
struct StateCellOps {
  static void define(torch::Library& m) {
    const std::string n = Cell::kName;
    m.def((n + "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
               "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse, "
               "bool train=True" + zoneout_schema<Cell>() +
               ") -> (Tensor output, Tensor h_n, Tensor c_n, Tensor workspace)")
              .c_str());
    m.def((n + "_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, "
               "Tensor input, Tensor? batch_sizes, Tensor h0, Tensor c0, Tensor w_ih, "
               "Tensor w_hh, Tensor? w_hr, Tensor output, Tensor workspace, bool reverse" +
               zoneout_schema<Cell>() +
               ") -> (Tensor grad_input, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, "
               "Tensor grad_w_hh, Tensor grad_bias, Tensor grad_w_hr)")
              .c_str());
    m.def((n + "_cell(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, "
               "Tensor? b_ih, Tensor? b_hh) -> (Tensor hy, Tensor cy, Tensor workspace)")
              .c_str());
    m.def((n + "_cell_backward(Tensor? grad_hy, Tensor? grad_cy, Tensor input, Tensor hx, "
               "Tensor cx, Tensor w_ih, Tensor w_hh, Tensor hy, Tensor workspace) -> "
               "(Tensor grad_input, Tensor grad_hx, Tensor grad_cx, Tensor grad_w_ih, "
               "Tensor grad_w_hh, Tensor grad_bias)")
              .c_str());
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> layer(
      const Tensor& input, const optional<Tensor>& batch_sizes, const Tensor& h0,
      const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
      const optional<Tensor>& b_hh, const optional<Tensor>& w_hr, bool reverse, bool train,
      const optional<Tensor>& zoneout_h, double zoneout_h_p, const optional<Tensor>& zoneout_c,
      double zoneout_c_p) {
    const LayerResult r = layer_forward<Cell, Backend>(
        {.input = input, .batch_sizes = batch_sizes, .h0 = h0, .c0 = c0, .w_ih = w_ih,
         .w_hh = w_hh, .b_ih = b_ih, .b_hh = b_hh, .w_hr = w_hr, .reverse = reverse,
         .train = train, .zoneout = {zoneout_h, zoneout_c, zoneout_h_p, zoneout_c_p}});
    return {r.output, r.h_n, r.c_n, r.workspace};
  }

  // grad_bias is the gradient of b_ih and of b_hh alike; grad_w_hr is [0] without a projection.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_grad(
      const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n,
      const optional<Tensor>& grad_c_n, const Tensor& input, const optional<Tensor>& batch_sizes,
      const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
      const optional<Tensor>& w_hr, const Tensor& output, const Tensor& workspace, bool reverse,
      const optional<Tensor>& zoneout_h, double zoneout_h_p, const optional<Tensor>& zoneout_c,
      double zoneout_c_p) {
    const LayerGrads r = layer_backward<Cell, Backend>(
        {.grad_output = grad_output, .grad_h_n = grad_h_n, .grad_c_n = grad_c_n, .input = input,
         .batch_sizes = batch_sizes, .h0 = h0, .c0 = c0, .w_ih = w_ih, .w_hh = w_hh,
         .w_hr = w_hr, .output = output, .workspace = workspace, .reverse = reverse,
         .zoneout = {zoneout_h, zoneout_c, zoneout_h_p, zoneout_c_p}});
    return {r.g.input, r.h0, r.c0, r.g.w_ih, r.g.w_hh, r.g.b_ih, r.w_hr};
  }

  // input [N, I], hx [N, H], cx [N, H] -> hy [N, H], cy [N, H], workspace [N, W]
  static std::tuple<Tensor, Tensor, Tensor> cell(const Tensor& input, const Tensor& hx,
                                                 const Tensor& cx, const Tensor& w_ih,
                                                 const Tensor& w_hh, const optional<Tensor>& b_ih,
                                                 const optional<Tensor>& b_hh) {
    const auto r = layer(input.unsqueeze(0), c10::nullopt, hx, cx, w_ih, w_hh, b_ih, b_hh,
                         c10::nullopt, /*reverse=*/false, /*train=*/true, c10::nullopt, 0,
                         c10::nullopt, 0);
    return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cell_grad(
      const optional<Tensor>& grad_hy, const optional<Tensor>& grad_cy, const Tensor& input,
      const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
      const Tensor& hy, const Tensor& workspace) {
    const auto r = layer_grad(c10::nullopt, grad_hy, grad_cy, input.unsqueeze(0), c10::nullopt,
                              hx, cx, w_ih, w_hh, c10::nullopt, hy.unsqueeze(0), workspace,
                              /*reverse=*/false, c10::nullopt, 0, c10::nullopt, 0);
    return {std::get<0>(r).squeeze(0), std::get<1>(r), std::get<2>(r),
            std::get<3>(r),            std::get<4>(r), std::get<5>(r)};
  }
};

// ---- saving no workspace (Elman RNN) --------------------------------------------------------
template <typename Cell, typename Backend>
struct OutputOnlyOps {
  static void define(torch::Library& m) {
    const std::string n = Cell::kName;
    m.def((n + "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
               "Tensor? b_ih, Tensor? b_hh, str nonlinearity, bool reverse" +
               zoneout_schema<Cell>() +
               ") -> (Tensor output, Tensor h_n)")
              .c_str());
    m.def((n + "_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, "
               "Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor output, "
               "str nonlinearity, bool reverse" + zoneout_schema<Cell>() +
               ") -> (Tensor grad_input, Tensor grad_h0, "
               "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)")
              .c_str());
    m.def((n + "_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
               "Tensor? b_hh, str nonlinearity) -> Tensor hy")
              .c_str());
    m.def((n + "_cell_backward(Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
               "Tensor w_hh, Tensor hy, str nonlinearity) -> (Tensor grad_input, "
               "Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)")
              .c_str());
  }

  static std::tuple<Tensor, Tensor> layer(const Tensor& input,
                                          const optional<Tensor>& batch_sizes, const Tensor& h0,
                                          const Tensor& w_ih, const Tensor& w_hh,
                                          const optional<Tensor>& b_ih,
                                          const optional<Tensor>& b_hh,
                                          const std::string& nonlinearity, bool reverse,
                                          const optional<Tensor>& zoneout_h, double zoneout_h_p) {
    const LayerResult r = layer_forward<Cell, Backend>(
        {.input = input, .batch_sizes = batch_sizes, .h0 = h0, .w_ih = w_ih, .w_hh = w_hh,
         .b_ih = b_ih, .b_hh = b_hh, .reverse = reverse, .nonlinearity = &nonlinearity,
         .zoneout = {.mask_h = zoneout_h, .p_h = zoneout_h_p}});
    return {r.output, r.h_n};
  }

  // grad_bias is the gradient of b_ih and of b_hh alike.
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> layer_grad(
      const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
      const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
      const Tensor& w_hh, const Tensor& output, const std::string& nonlinearity, bool reverse,
      const optional<Tensor>& zoneout_h, double zoneout_h_p) {
    const LayerGrads r = layer_backward<Cell, Backend>(
        {.grad_output = grad_output, .grad_h_n = grad_h_n, .input = input,
         .batch_sizes = batch_sizes, .h0 = h0, .w_ih = w_ih, .w_hh = w_hh, .output = output,
         .reverse = reverse, .nonlinearity = &nonlinearity,
         .zoneout = {.mask_h = zoneout_h, .p_h = zoneout_h_p}});
    return {r.g.input, r.h0, r.g.w_ih, r.g.w_hh, r.g.b_ih};
  }

  static Tensor cell(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                     const Tensor& w_hh, const optional<Tensor>& b_ih,
                     const optional<Tensor>& b_hh, const std::string& nonlinearity) {
    return std::get<1>(layer(input.unsqueeze(0), c10::nullopt, hx, w_ih, w_hh, b_ih, b_hh,
                             nonlinearity, /*reverse=*/false, c10::nullopt, 0));
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> cell_grad(
      const optional<Tensor>& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
      const Tensor& w_hh, const Tensor& hy, const std::string& nonlinearity) {
    const auto r = layer_grad(c10::nullopt, grad_hy, input.unsqueeze(0), c10::nullopt, hx, w_ih,
                              w_hh, hy.unsqueeze(0), nonlinearity, /*reverse=*/false,
                              c10::nullopt, 0);
    return {std::get<0>(r).squeeze(0), std::get<1>(r), std::get<2>(r), std::get<3>(r),
            std::get<4>(r)};
  }
};

// ---- any other (GRU): h alone, a workspace, a bias gradient for b_ih and b_hh each -----------
template <typename Cell, typename Backend>
struct GatedOps {
  static void define(torch::Library& m) {
    const std::string n = Cell::kName;
    m.def((n + "(Tensor input, Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, "
               "Tensor? b_ih, Tensor? b_hh, bool reverse, bool train=True" +
               zoneout_schema<Cell>() +
               ") -> (Tensor output, Tensor h_n, Tensor workspace)")
              .c_str());
    m.def((n + "_backward(Tensor? grad_output, Tensor? grad_h_n, Tensor input, "
               "Tensor? batch_sizes, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor output, "
               "Tensor workspace, bool reverse" + zoneout_schema<Cell>() +
               ") -> (Tensor grad_input, Tensor grad_h0, "
               "Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)")
              .c_str());
    m.def((n + "_cell(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
               "Tensor? b_hh) -> (Tensor hy, Tensor workspace)")
              .c_str());
    m.def((n + "_cell_backward(Tensor? grad_hy, Tensor input, Tensor hx, Tensor w_ih, "
               "Tensor w_hh, Tensor hy, Tensor workspace) -> (Tensor grad_input, "
               "Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_b_ih, "
               "Tensor grad_b_hh)")
              .c_str());
  }

  static std::tuple<Tensor, Tensor, Tensor> layer(const Tensor& input,
                                                  const optional<Tensor>& batch_sizes,
                                                  const Tensor& h0, const Tensor& w_ih,
                                                  const Tensor& w_hh,
                                                  const optional<Tensor>& b_ih,
                                                  const optional<Tensor>& b_hh, bool reverse,
                                                  bool train, const optional<Tensor>& zoneout_h,
                                                  double zoneout_h_p) {
    const LayerResult r = layer_forward<Cell, Backend>(
        {.input = input, .batch_sizes = batch_sizes, .h0 = h0, .w_ih = w_ih, .w_hh = w_hh,
         .b_ih = b_ih, .b_hh = b_hh, .reverse = reverse, .train = train,
         .zoneout = {.mask_h = zoneout_h, .p_h = zoneout_h_p}});
    return {r.output, r.h_n, r.workspace};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> layer_grad(
      const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
      const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
      const Tensor& w_hh, const Tensor& output, const Tensor& workspace, bool reverse,
      const optional<Tensor>& zoneout_h, double zoneout_h_p) {
    const LayerGrads r = layer_backward<Cell, Backend>(
        {.grad_output = grad_output, .grad_h_n = grad_h_n, .input = input,
         .batch_sizes = batch_sizes, .h0 = h0, .w_ih = w_ih, .w_hh = w_hh, .output = output,
         .workspace = workspace, .reverse = reverse,
         .zoneout = {.mask_h = zoneout_h, .p_h = zoneout_h_p}});
    return {r.g.input, r.h0, r.g.w_ih, r.g.w_hh, r.g.b_ih, r.g.b_hh};
  }

  // input [N, I], hx [N, H] -> hy [N, H], workspace [N, W]
  static std::tuple<Tensor, Tensor> cell(const Tensor& input, const Tensor& hx,
                                         const Tensor& w_ih, const Tensor& w_hh,
                                         const optional<Tensor>& b_ih,
                                         const optional<Tensor>& b_hh) {
    const auto r = layer(input.unsqueeze(0), c10::nullopt, hx, w_ih, w_hh, b_ih, b_hh,
                         /*reverse=*/false, /*train=*/true, c10::nullopt, 0);
    return {std::get<1>(r), std::get<2>(r)};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> cell_grad(
      const optional<Tensor>& grad_hy, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
      const Tensor& w_hh, const Tensor& hy, const Tensor& workspace) {
    const auto r = layer_grad(c10::nullopt, grad_hy, input.unsqueeze(0), c10::nullopt, hx, w_ih,
                              w_hh, hy.unsqueeze(0), workspace, /*reverse=*/false,
                              c10::nullopt, 0);
    return {std::get<0>(r).squeeze(0), std::get<1>(r), std::get<2>(r),
            std::get<3>(r),            std::get<4>(r), std::get<5>(r)};
  }
};

// The operator family of a cell, from its description (row-norm cells: norm_operators.h).
template <typename Cell, typename Backend>
using OpsOf = std::conditional_t<
    row_norm<Cell>(), NormOps<Cell, Backend>,
    std::conditional_t<Cell::kCellState, StateCellOps<Cell, Backend>,
                       std::conditional_t<Cell::kGatesInOutput, OutputOnlyOps<Cell, Backend>,
                                          GatedOps<Cell, Backend>>>>;

// Defines the operators of a cell (rnnkit.cpp).
template <typename Cell>
void define_operators(torch::Library& m) {
  OpsOf<Cell, void>::define(m);
}

// Registers a backend's kernels for the operators of a cell (cpu/register.cpp, cuda/register.cu).
template <typename Cell, typename Backend>
void register_kernels(torch::Library& m) {
  using Ops = OpsOf<Cell, Backend>;
  const std::string n = Cell::kName;
  m.impl(n.c_str(), &Ops::layer);
  m.impl((n + "_backward").c_str(), &Ops::layer_grad);
  if constexpr (requires { &Ops::cell; }) {
    m.impl((n + "_cell").c_str(), &Ops::cell);
    m.impl((n + "_cell_backward").c_str(), &Ops::cell_grad);
  }
}

}  // namespace rnnkit
