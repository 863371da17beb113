// One time step of a cell is a layer run over a sequence of length 1: the cell operators of both
// backends are these thin wrappers around the backend's layer functions, so one code path (and
// one set of tests) covers both.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace rnnkit {
namespace cells {

using at::Tensor;
using c10::optional;

// ---- LSTM: input [N, I], hx [N, H], cx [N, H] -> hy [N, H], cy [N, H], workspace [N, 5H] ----
template <typename LayerForward>
std::tuple<Tensor, Tensor, Tensor> lstm_cell(LayerForward layer, const Tensor& input,
                                             const Tensor& hx, const Tensor& cx,
                                             const Tensor& w_ih, const Tensor& w_hh,
                                             const optional<Tensor>& b_ih,
                                             const optional<Tensor>& b_hh) {
  auto r = layer(input.unsqueeze(0), c10::nullopt, hx, cx, w_ih, w_hh, b_ih, b_hh, c10::nullopt,
                 /*reverse=*/false, /*train=*/true);
  return {std::get<1>(r), std::get<2>(r), std::get<3>(r)};
}

template <typename LayerBackward>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward(
    LayerBackward layer, const optional<Tensor>& grad_hy, const optional<Tensor>& grad_cy,
    const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& hy, const Tensor& workspace) {
  auto r = layer(c10::nullopt, grad_hy, grad_cy, input.unsqueeze(0), c10::nullopt, hx, cx, w_ih,
                 w_hh, c10::nullopt, hy.unsqueeze(0), workspace, false);
  return {std::get<0>(r).squeeze(0), std::get<1>(r), std::get<2>(r),
          std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

// ---- GRU: input [N, I], hx [N, H] -> hy [N, H], workspace [N, 4H] ----------------------------
template <typename LayerForward>
std::tuple<Tensor, Tensor> gru_cell(LayerForward layer, const Tensor& input, const Tensor& hx,
                                    const Tensor& w_ih, const Tensor& w_hh,
                                    const optional<Tensor>& b_ih, const optional<Tensor>& b_hh) {
  auto r = layer(input.unsqueeze(0), c10::nullopt, hx, w_ih, w_hh, b_ih, b_hh, /*reverse=*/false,
                 /*train=*/true);
  return {std::get<1>(r), std::get<2>(r)};
}

template <typename LayerBackward>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward(
    LayerBackward layer, const optional<Tensor>& grad_hy, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& hy, const Tensor& workspace) {
  auto r = layer(c10::nullopt, grad_hy, input.unsqueeze(0), c10::nullopt, hx, w_ih, w_hh,
                 hy.unsqueeze(0), workspace, false);
  return {std::get<0>(r).squeeze(0), std::get<1>(r), std::get<2>(r),
          std::get<3>(r), std::get<4>(r), std::get<5>(r)};
}

// ---- Elman RNN: input [N, I], hx [N, H] -> hy [N, H] -----------------------------------------
template <typename LayerForward>
Tensor rnn_cell(LayerForward layer, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                const Tensor& w_hh, const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                const std::string& nonlinearity) {
  auto r = layer(input.unsqueeze(0), c10::nullopt, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity, false);
  return std::get<1>(r);
}

template <typename LayerBackward>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward(
    LayerBackward layer, const optional<Tensor>& grad_hy, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& hy, const std::string& nonlinearity) {
  auto r = layer(c10::nullopt, grad_hy, input.unsqueeze(0), c10::nullopt, hx, w_ih, w_hh,
                 hy.unsqueeze(0), nonlinearity, false);
  return {std::get<0>(r).squeeze(0), std::get<1>(r), std::get<2>(r), std::get<3>(r),
          std::get<4>(r)};
}

// ---- registration: a backend's four operators of each family, from its two layer functions ----
template <auto Forward, auto Backward>
void register_lstm(torch::Library& m) {
  m.impl("lstm", Forward);
  m.impl("lstm_backward", Backward);
  m.impl("lstm_cell", [](const Tensor& input, const Tensor& hx, const Tensor& cx,
                         const Tensor& w_ih, const Tensor& w_hh, const optional<Tensor>& b_ih,
                         const optional<Tensor>& b_hh) {
    return lstm_cell(Forward, input, hx, cx, w_ih, w_hh, b_ih, b_hh);
  });
  m.impl("lstm_cell_backward",
         [](const optional<Tensor>& grad_hy, const optional<Tensor>& grad_cy, const Tensor& input,
            const Tensor& hx, const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh,
            const Tensor& hy, const Tensor& workspace) {
           return lstm_cell_backward(Backward, grad_hy, grad_cy, input, hx, cx, w_ih, w_hh, hy,
                                     workspace);
         });
}

template <auto Forward, auto Backward>
void register_gru(torch::Library& m) {
  m.impl("gru", Forward);
  m.impl("gru_backward", Backward);
  m.impl("gru_cell", [](const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                        const Tensor& w_hh, const optional<Tensor>& b_ih,
                        const optional<Tensor>& b_hh) {
    return gru_cell(Forward, input, hx, w_ih, w_hh, b_ih, b_hh);
  });
  m.impl("gru_cell_backward",
         [](const optional<Tensor>& grad_hy, const Tensor& input, const Tensor& hx,
            const Tensor& w_ih, const Tensor& w_hh, const Tensor& hy, const Tensor& workspace) {
           return gru_cell_backward(Backward, grad_hy, input, hx, w_ih, w_hh, hy, workspace);
         });
}

template <auto Forward, auto Backward>
void register_rnn(torch::Library& m) {
  m.impl("rnn", Forward);
  m.impl("rnn_backward", Backward);
  m.impl("rnn_cell", [](const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                        const Tensor& w_hh, const optional<Tensor>& b_ih,
                        const optional<Tensor>& b_hh, const std::string& nonlinearity) {
    return rnn_cell(Forward, input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
  });
  m.impl("rnn_cell_backward",
         [](const optional<Tensor>& grad_hy, const Tensor& input, const Tensor& hx,
            const Tensor& w_ih, const Tensor& w_hh, const Tensor& hy,
            const std::string& nonlinearity) {
           return rnn_cell_backward(Backward, grad_hy, input, hx, w_ih, w_hh, hy, nonlinearity);
         });
}

}  // namespace cells
}  // namespace rnnkit
