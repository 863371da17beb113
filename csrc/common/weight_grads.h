// The end of every layer's backward, the same on both backends: once backward through time has
// the gradients of the pre-activations of every step, the gradients of the input and of the
// weights are one large product each over all steps (ATen sends them to MKL, oneDNN or cuBLAS).
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

// Gate gradients as the weight products take them, with their sums over rows (the bias
// gradients).
struct GateGrads {
  at::Tensor a;     // [P, C] in the product dtype
  at::Tensor sums;  // [C] in the gradients' own dtype
};

// What a backend without a fused pass does (Backend::gate_grads): a rounding and, where the bias
// gradients are wanted (sums), a sum, each a pass over d.
inline GateGrads gate_grads_apart(const at::Tensor& d, at::ScalarType product, bool sums) {
  return {d.to(product), sums ? d.sum(0) : at::Tensor()};
}

// da:     [P, G] gradients of the input-side pre-activations (x w_ih^T + b_ih)
// da_hh:  [P, G] gradients of the recurrent-side pre-activations (h_prev w_hh^T + b_hh); the same
//         tensor as da except for the GRU, whose reset gate scales the recurrent part of n only
// shared: the leading columns in which da_hh equals da (the GRU's r and z: common/cell.h's
//         shared_gates); their rounding, sum and product rows are taken from da once
// x:      [P, I] the layer's input; h_prev: [P, R] the state each row's step read
// w_ih:   [G, I]; input_sizes: the sizes of the layer's input, which grad input takes
// da and da_hh may be in a wider dtype than x (float32 gradients of a bfloat16 or float16 layer
// on the CPU). For bfloat16 they are rounded to it for the products, which accumulate in float32
// (oneDNN's and ATen's bfloat16 products do) and round each result once. float16 has too little
// range for gate gradients (small ones fall to subnormals), so its products take the float32
// gradients and widened operands instead. The bias gradients are summed in da's dtype; every
// result is rounded to x's dtype at the end. Backend::gate_grads rounds and sums (the CPU does
// both in one pass). biases: false where the caller has the bias gradients from elsewhere (a
// layer-normalised cell's, norm_grads in layer.h); b_ih and b_hh are then left undefined.
template <typename Backend>
WeightGrads weight_grads(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared,
                         const at::Tensor& x, const at::Tensor& h_prev, const at::Tensor& w_ih,
                         at::IntArrayRef input_sizes, bool biases) {
  const at::ScalarType dtype = x.scalar_type();
  const at::ScalarType product = dtype == at::kHalf ? da.scalar_type() : dtype;
  const int64_t G = da.size(1);
  const GateGrads in = Backend::gate_grads(da, product, biases);
  const at::Tensor h = h_prev.to(product);
  WeightGrads g;
  g.input = at::mm(in.a, w_ih.to(product)).to(dtype).view(input_sizes);
  g.w_ih = at::mm(in.a.t(), x.to(product)).to(dtype);
  if (biases) g.b_ih = in.sums.to(dtype);
  if (da_hh.is_same(da)) {
    g.w_hh = at::mm(in.a.t(), h).to(dtype);
    g.b_hh = g.b_ih;
    return g;
  }
  // The recurrent side: the shared columns from da's rounding, the rest from da_hh's.
  const GateGrads rec = Backend::gate_grads(da_hh.narrow(1, shared, G - shared), product, biases);
  // (at::cat, not mm_out into one result: an out= product refuses inputs that require grad,
  // which they do when autograd calls this backward with create_graph.)
  g.w_hh = at::cat({at::mm(in.a.narrow(1, 0, shared).t(), h), at::mm(rec.a.t(), h)}).to(dtype);
  if (biases) g.b_hh = at::cat({in.sums.narrow(0, 0, shared), rec.sums}).to(dtype);
  return g;
}

}  // namespace rnnkit
