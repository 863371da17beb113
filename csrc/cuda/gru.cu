// GRU on CUDA: the whole-sequence forward and backward of one layer and direction, and the cell
// step built on them (common/cells.h). Same plan, semantics and workspace as cpu/gru.cpp: the
// recurrent product of a step goes to its own buffer, because the reset gate scales only the
// recurrent part of the n gate (n = tanh(x_n + r ⊙ (W_hn h + b_hn))).
//
// Workspace per packed row: [r, z, n | h_n] (4H), as on the CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../common/cells.h"
#include "../common/gates.h"
#include "../common/plan.h"
#include "../common/shapes.h"
#include "../common/weight_grads.h"
#include "blas.cuh"
#include "launch.cuh"
#include "persistent.cuh"

namespace rnnkit {
namespace cuda {
namespace {

using at::Tensor;
using c10::optional;

constexpr const char* kOp = "rnnkit::gru";

// Pointwise forward of one step, unit j of active row n.
template <typename scalar_t>
struct GruForwardStep {
  scalar_t* ws;          // [bs, 4H]: this step's rows; input-side pre-activations in, [r,z,n|h_n] out
  const scalar_t* gh;    // [bs, 3H]: the recurrent product W_hh h_prev of this step
  const scalar_t* b_hh;  // [3H] or null
  scalar_t* h;           // [N, H]: h_prev in, h out (rows < bs)
  scalar_t* out;         // [bs, H]: this step's output rows
  int64_t H;

  __device__ void operator()(int64_t n, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t G = 3 * H, W = 4 * H;
    scalar_t* g = ws + n * W;
    const scalar_t* r_h = gh + n * G;
    acc_t h_r = load_op(r_h + j), h_z = load_op(r_h + H + j), h_n = load_op(r_h + 2 * H + j);
    if (b_hh) {
      h_r += load_op(b_hh + j);
      h_z += load_op(b_hh + H + j);
      h_n += load_op(b_hh + 2 * H + j);
    }
    const auto r = gates::gru_forward(load_op(g + j), load_op(g + H + j), load_op(g + 2 * H + j), h_r, h_z,
                                      h_n, load_op(h + n * H + j));
    store_op(g + j, r.r);
    store_op(g + H + j, r.z);
    store_op(g + 2 * H + j, r.n);
    store_op(g + 3 * H + j, h_n);
    store_op(out + n * H + j, r.h);
    store_op(h + n * H + j, r.h);
  }
};

// Pointwise backward of one step, unit j of active row n.
template <typename scalar_t>
struct GruBackwardStep {
  const scalar_t* ws;      // [bs, 4H]: this step's workspace rows
  const scalar_t* h_prev;  // [bs, H]: the hidden state this step started from
  const scalar_t* gout;    // [bs, H] or null: grad_output rows of this step
  scalar_t* dh;            // [N, H]: gradient of h in, its direct part z ⊙ dh out (rows < bs)
  scalar_t* dx;            // [bs, 3H]: out, gradients of the input-side pre-activations
  scalar_t* dhh;           // [bs, 3H]: out, gradients of the recurrent-side pre-activations
  int64_t H;

  __device__ void operator()(int64_t n, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t G = 3 * H, W = 4 * H;
    const scalar_t* g = ws + n * W;
    acc_t grad_h = load_op(dh + n * H + j);
    if (gout) grad_h += load_op(gout + n * H + j);
    const auto r = gates::gru_backward(grad_h, load_op(g + j), load_op(g + H + j), load_op(g + 2 * H + j),
                                       load_op(g + 3 * H + j), load_op(h_prev + n * H + j));
    scalar_t* gx = dx + n * G;
    scalar_t* gr = dhh + n * G;
    store_op(gx + j, r.dx_r);
    store_op(gx + H + j, r.dx_z);
    store_op(gx + 2 * H + j, r.dx_n);
    store_op(gr + j, r.dx_r);
    store_op(gr + H + j, r.dx_z);
    store_op(gr + 2 * H + j, r.dh_n);
    store_op(dh + n * H + j, r.dh_prev_direct);
  }
};

std::tuple<Tensor, Tensor, Tensor> gru_forward(const Tensor& input,
                                               const optional<Tensor>& batch_sizes,
                                               const Tensor& h0, const Tensor& w_ih,
                                               const Tensor& w_hh, const optional<Tensor>& b_ih,
                                               const optional<Tensor>& b_hh, bool reverse,
                                               bool train) {
  check_on_cuda(input, kOp);
  checks::floating(input, true, kOp);
  const c10::cuda::CUDAGuard guard(input.device());
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, kOp);
  const LayerShape d = layer_shape(kOp, 3, input, plan, h0, w_ih, w_hh, b_ih, b_hh, c10::nullopt);
  const int64_t H = d.H, G = d.G, W = 4 * H;

  const Tensor x = input.contiguous().view({plan.P, d.I});
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  Tensor output = at::empty(out_sizes, input.options());
  const Tensor out2d = output.view({plan.P, H});
  Tensor h_n = h0.contiguous().clone();
  Tensor ws = at::empty({plan.P, W}, input.options());
  Tensor gh = at::empty({plan.N, G}, input.options());
  const Tensor wh = w_hh.contiguous();  // [3H, H]
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : Tensor();

  // Input projection of every step: ws[:, :3H] = x w_ih^T + b_ih.
  Tensor pre = ws.narrow(1, 0, G);
  if (b_ih.has_value()) {
    at::addmm_out(pre, *b_ih, x, w_ih.t());
  } else {
    at::mm_out(pre, x, w_ih.t());
  }

  if (!persistent::forward({persistent::Cell::Gru, &plan, wh, h0.contiguous(), out2d, h_n,
                            Tensor(), ws, bh, gates::Activation::Tanh, nullptr}))
  RNNKIT_DISPATCH_CUDA(input.scalar_type(), "rnnkit_gru_cuda", [&] {
    for (int64_t s = 0; s < plan.T(); ++s) {
      const int64_t t = plan.forward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
      gemm<scalar_t>(false, true, bs, G, H, 1, ptr<scalar_t>(h_n), H, ptr<scalar_t>(wh), H, 0,
                     ptr<scalar_t>(gh), G);
      GruForwardStep<scalar_t> step{ptr<scalar_t>(ws) + row * W, ptr<scalar_t>(gh),
                                    ptr<scalar_t>(bh), ptr<scalar_t>(h_n),
                                    ptr<scalar_t>(out2d) + row * H, H};
      for_each_unit(bs, H, step);
    }
  });
  // Without train the workspace goes back to the caching allocator here (see lstm.cu).
  return {output, h_n, train ? ws : at::empty({0}, input.options())};
}

// Returns grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward(
    const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const Tensor& workspace, bool reverse) {
  constexpr const char* op = "rnnkit::gru_backward";
  check_on_cuda(input, op);
  checks::floating(input, true, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, op);
  const LayerShape d =
      layer_shape(op, 3, input, plan, h0, w_ih, w_hh, c10::nullopt, c10::nullopt, c10::nullopt);
  const int64_t H = d.H, G = d.G, W = 4 * H;
  saved_shapes(op, input, output, H, &workspace, plan.P, W);
  grad_shapes(op, grad_output, output, grad_h_n, h0);

  const Tensor x = input.contiguous().view({plan.P, d.I});
  const Tensor h_prev = previous_states(output.contiguous().view({plan.P, H}), h0.contiguous(), plan);
  const Tensor ws = workspace.contiguous();
  const Tensor gout =
      grad_output.has_value() ? grad_output->contiguous().view({plan.P, H}) : Tensor();
  Tensor dh = grad_h_n.has_value() ? grad_h_n->contiguous().clone() : at::zeros_like(h0);
  Tensor dx = at::empty({plan.P, G}, input.options());
  Tensor dhh = at::empty({plan.P, G}, input.options());
  const Tensor wh = w_hh.contiguous();  // [3H, H]

  if (!persistent::backward({persistent::Cell::Gru, &plan, wh, h_prev, Tensor(), Tensor(), ws,
                             gout, dh, Tensor(), dhh, dx, gates::Activation::Tanh, nullptr}))
  RNNKIT_DISPATCH_CUDA(input.scalar_type(), "rnnkit_gru_backward_cuda", [&] {
    for (int64_t s = 0; s < plan.T(); ++s) {
      const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
      GruBackwardStep<scalar_t> step{ptr<scalar_t>(ws) + row * W,
                                     ptr<scalar_t>(h_prev) + row * H,
                                     gout.defined() ? ptr<scalar_t>(gout) + row * H : nullptr,
                                     ptr<scalar_t>(dh),
                                     ptr<scalar_t>(dx) + row * G,
                                     ptr<scalar_t>(dhh) + row * G, H};
      for_each_unit(bs, H, step);
      // dh_prev = z ⊙ dh (stored by the step) + dhh_t w_hh
      gemm<scalar_t>(false, false, bs, H, G, 1, ptr<scalar_t>(dhh) + row * G, G, ptr<scalar_t>(wh),
                     H, 1, ptr<scalar_t>(dh), H);
    }
  });
  const WeightGrads g = weight_grads(dx, dhh, x, h_prev, w_ih, input.sizes());
  return {g.input, dh, g.w_ih, g.w_hh, g.b_ih, g.b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CUDA, m) {
  cells::register_gru<&gru_forward, &gru_backward>(m);
}

}  // namespace cuda
}  // namespace rnnkit
