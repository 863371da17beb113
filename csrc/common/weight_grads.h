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
// da and da_hh may be in a wider dtype than x (float32 gradients of a bfloat16 or float16 layer
// on the CPU). For bfloat16 they are rounded to it for the products, which accumulate in float32
// (oneDNN's and ATen's bfloat16 products do) and round each result once. float16 has too little
// range for gate gradients (small ones fall to subnormals), so its products take the float32
// gradients and widened operands instead. The bias gradients are summed in da's dtype; every
// result is rounded to x's dtype at the end.
inline WeightGrads weight_grads(const at::Tensor& da, const at::Tensor& da_hh, const at::Tensor& x,
                                const at::Tensor& h_prev, const at::Tensor& w_ih,
                                at::IntArrayRef input_sizes) {
  const at::ScalarType dtype = x.scalar_type();
  const at::ScalarType product = dtype == at::kHalf ? da.scalar_type() : dtype;
  const at::Tensor a = da.to(product);
  const at::Tensor a_hh = da_hh.is_same(da) ? a : da_hh.to(product);
  const at::Tensor b_ih = da.sum(0).to(dtype);
  return {at::mm(a, w_ih.to(product)).to(dtype).view(input_sizes),
          at::mm(a.t(), x.to(product)).to(dtype), at::mm(a_hh.t(), h_prev.to(product)).to(dtype),
          b_ih, da_hh.is_same(da) ? b_ih : da_hh.sum(0).to(dtype)};
}

}  // namespace rnnkit
