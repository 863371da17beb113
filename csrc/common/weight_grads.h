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
// gradients). da's columns are the gates in W_ih's row order; the GRU's da_hh differs from da in
// its last u = G - shared columns (n), which W_hh's gradient takes instead of da's.
struct GateGrads {
  at::Tensor a;     // [P, G]: da in the product dtype, the left operand of the input's gradient
  at::Tensor sums;  // [G + u]: the sums of da's columns, then of da_hh's last u; or undefined
  // Where the backend writes it (the CPU, for bfloat16 products of G >= 1024 rows): [G + u, P],
  // contiguous, the rows da[:, shared:], da[:, :shared], da_hh[:, shared:] in the product dtype,
  // so that W_ih's gradient is t[0, G) x (its rows rotated by u) and W_hh's t[u, G + u) h: one
  // product each, on a left operand that oneDNN multiplies faster than a transposed view.
  at::Tensor t;
  at::Tensor rec;  // else, for u > 0: [P, u] da_hh's last u columns in the product dtype
};

// The leading columns in which W_hh's gradient takes da's gradients: `shared` where da_hh is a
// tensor of its own (the GRU), all G where it is da.
inline int64_t columns_from_da(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared) {
  return da_hh.is_same(da) ? da.size(1) : shared;
}

// What a backend without a fused pass does (Backend::gate_grads): a rounding and, where the bias
// gradients are wanted, a sum, each a pass over the gradients; no t.
inline GateGrads gate_grads_apart(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared,
                                  at::ScalarType product, bool sums) {
  const int64_t u = da.size(1) - shared;
  GateGrads g;
  g.a = da.to(product);
  if (sums) g.sums = da.sum(0);
  if (u == 0) return g;
  const at::Tensor tail = da_hh.narrow(1, shared, u);
  g.rec = tail.to(product);
  if (sums) g.sums = at::cat({g.sums, tail.sum(0)});
  return g;
}

// da:     [P, G] gradients of the input-side pre-activations (x w_ih^T + b_ih)
// da_hh:  [P, G] gradients of the recurrent-side pre-activations (h_prev w_hh^T + b_hh); the same
//         tensor as da except for the GRU, whose reset gate scales the recurrent part of n only
// shared: the leading columns in which da_hh equals da (the GRU's r and z: common/cell.h's
//         shared_gates; G for the others)
// x:      [P, I] the layer's input; h_prev: [P, R] the state each row's step read
// w_ih:   [G, I]; input_sizes: the sizes of the layer's input, which grad input takes
// da and da_hh may be in a wider dtype than x (float32 gradients of a bfloat16 or float16 layer
// on the CPU). For bfloat16 they are rounded to it for the products, which accumulate in float32
// (oneDNN's and ATen's bfloat16 products do) and round each result once. float16 has too little
// range for gate gradients (small ones fall to subnormals), so its products take the float32
// gradients and widened operands instead. The bias gradients are summed in da's dtype; every
// result is rounded to x's dtype at the end. Backend::gate_grads rounds, sums and transposes (the
// CPU does all three in one pass), unless the backend's time loop did and passes them as `in`.
// biases: false where the caller has the bias gradients from elsewhere (a layer-normalised
// cell's, norm_grads in layer.h); b_ih and b_hh are then left undefined.
template <typename Backend>
WeightGrads weight_grads(const at::Tensor& da, const at::Tensor& da_hh, int64_t shared,
                         const at::Tensor& x, const at::Tensor& h_prev, const at::Tensor& w_ih,
                         at::IntArrayRef input_sizes, bool biases, GateGrads in = {}) {
  const at::ScalarType dtype = x.scalar_type();
  const at::ScalarType product = dtype == at::kHalf ? da.scalar_type() : dtype;
  const int64_t G = da.size(1), u = G - columns_from_da(da, da_hh, shared);
  if (!in.a.defined()) in = Backend::gate_grads(da, da_hh, G - u, product, biases);
  WeightGrads g;
  g.input = at::mm(in.a, w_ih.to(product)).to(dtype).view(input_sizes);
  const at::Tensor h = h_prev.to(product);
  if (in.t.defined()) {
    const at::Tensor rotated = at::mm(in.t.narrow(0, 0, G), x.to(product));
    g.w_ih = (u == 0 ? rotated : at::cat({rotated.narrow(0, u, G - u), rotated.narrow(0, 0, u)}))
                 .to(dtype);
    g.w_hh = at::mm(in.t.narrow(0, u, G), h).to(dtype);
  } else {
    g.w_ih = at::mm(in.a.t(), x.to(product)).to(dtype);
    // (at::cat, not mm_out into one result: an out= product refuses inputs that require grad,
    // which they do when autograd calls this backward with create_graph.)
    g.w_hh = (u == 0 ? at::mm(in.a.t(), h)
                     : at::cat({at::mm(in.a.narrow(1, 0, G - u).t(), h), at::mm(in.rec.t(), h)}))
                 .to(dtype);
  }
  if (biases) {
    g.b_ih = in.sums.narrow(0, 0, G).to(dtype);
    g.b_hh = u == 0 ? g.b_ih
                    : at::cat({in.sums.narrow(0, 0, G - u), in.sums.narrow(0, G, u)}).to(dtype);
  }
  return g;
}

}  // namespace rnnkit
