// The end of every layer's backward, the same on both backends: once backward through time has
// the gradients of the pre-activations of every step, the gradients of the input and of the
// weights are one large product each over all steps (ATen sends them to MKL or cuBLAS).
#pragma once

#include <ATen/ATen.h>

namespace rnnkit {

struct WeightGrads {
  at::Tensor input;  // [input's sizes]
  at::Tensor w_ih;   // [G, I]
  at::Tensor w_hh;   // [G, R]
  at::Tensor b_ih;   // [G]
  at::Tensor b_hh;   // [G]
};

// da:     [P, G] gradients of the input-side pre-activations (x w_ih^T + b_ih)
// da_hh:  [P, G] gradients of the recurrent-side pre-activations (h_prev w_hh^T + b_hh); the same
//         tensor as da except for the GRU, whose reset gate scales the recurrent part of n only
// x:      [P, I] the layer's input; h_prev: [P, R] the state each row's step read
// w_ih:   [G, I]; input_sizes: the sizes of the layer's input, which grad input takes
inline WeightGrads weight_grads(const at::Tensor& da, const at::Tensor& da_hh, const at::Tensor& x,
                                const at::Tensor& h_prev, const at::Tensor& w_ih,
                                at::IntArrayRef input_sizes) {
  const at::Tensor b_ih = da.sum(0);
  return {at::mm(da, w_ih).view(input_sizes), at::mm(da.t(), x), at::mm(da_hh.t(), h_prev), b_ih,
          da_hh.is_same(da) ? b_ih : da_hh.sum(0)};
}

}  // namespace rnnkit
