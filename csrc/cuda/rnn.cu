// Elman RNN (tanh or relu) on CUDA: the whole-sequence forward and backward of one layer and
// direction, and the cell step built on them (common/cells.h). As in cpu/rnn.cpp, the
// pre-activations accumulate in the output buffer and the activation is applied in place, so the
// forward saves nothing beyond its output.
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

constexpr const char* kOp = "rnnkit::rnn";

// Pointwise forward of one step, unit j of active row n.
template <typename scalar_t>
struct RnnForwardStep {
  scalar_t* out;  // [bs, H]: this step's output rows; pre-activations in, h out
  scalar_t* h;    // [N, H]: h out (rows < bs)
  int64_t H;
  gates::Activation act;

  __device__ void operator()(int64_t n, int64_t j) const {
    const auto y = gates::rnn_forward(load_op(out + n * H + j), act);
    store_op(out + n * H + j, y);
    store_op(h + n * H + j, y);
  }
};

// Pointwise backward of one step, unit j of active row n.
template <typename scalar_t>
struct RnnBackwardStep {
  const scalar_t* out;   // [bs, H]: this step's output rows (h)
  const scalar_t* gout;  // [bs, H] or null: grad_output rows of this step
  const scalar_t* dh;    // [N, H]: the carried gradient of h (rows < bs)
  scalar_t* da;          // [bs, H]: out, gradients of the pre-activations
  int64_t H;
  gates::Activation act;

  __device__ void operator()(int64_t n, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t k = n * H + j;
    acc_t grad_h = load_op(dh + k);
    if (gout) grad_h += load_op(gout + k);
    store_op(da + k, gates::rnn_backward(grad_h, load_op(out + k), act));
  }
};

std::tuple<Tensor, Tensor> rnn_forward(const Tensor& input, const optional<Tensor>& batch_sizes,
                                       const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
                                       const optional<Tensor>& b_ih, const optional<Tensor>& b_hh,
                                       const std::string& nonlinearity, bool reverse) {
  check_on_cuda(input, kOp);
  checks::floating(input, true, kOp);
  const gates::Activation act = parse_activation(nonlinearity, kOp);
  const c10::cuda::CUDAGuard guard(input.device());
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, kOp);
  const LayerShape d = layer_shape(kOp, 1, input, plan, h0, w_ih, w_hh, b_ih, b_hh, c10::nullopt);
  const int64_t H = d.H;

  const Tensor x = input.contiguous().view({plan.P, d.I});
  auto out_sizes = input.sizes().vec();
  out_sizes.back() = H;
  Tensor output = at::empty(out_sizes, input.options());
  Tensor out2d = output.view({plan.P, H});
  Tensor h_n = h0.contiguous().clone();
  const Tensor wh = w_hh.contiguous();  // [H, H]

  // Input projection of every step, both biases folded in.
  if (b_ih.has_value() || b_hh.has_value()) {
    const Tensor bias = b_ih.has_value() && b_hh.has_value() ? *b_ih + *b_hh
                        : b_ih.has_value()                   ? *b_ih
                                                             : *b_hh;
    at::addmm_out(out2d, bias, x, w_ih.t());
  } else {
    at::mm_out(out2d, x, w_ih.t());
  }

  if (!persistent::forward({persistent::Cell::Rnn, &plan, wh, h0.contiguous(), out2d, h_n,
                            Tensor(), Tensor(), Tensor(), act, nullptr}))
  RNNKIT_DISPATCH_CUDA(input.scalar_type(), "rnnkit_rnn_cuda", [&] {
    for (int64_t s = 0; s < plan.T(); ++s) {
      const int64_t t = plan.forward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
      gemm<scalar_t>(false, true, bs, H, H, 1, ptr<scalar_t>(h_n), H, ptr<scalar_t>(wh), H, 1,
                     ptr<scalar_t>(out2d) + row * H, H);
      RnnForwardStep<scalar_t> step{ptr<scalar_t>(out2d) + row * H, ptr<scalar_t>(h_n), H, act};
      for_each_unit(bs, H, step);
    }
  });
  return {output, h_n};
}

// Returns grad_input, grad_h0, grad_w_ih, grad_w_hh, grad_bias (the same for b_ih and b_hh).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward(
    const optional<Tensor>& grad_output, const optional<Tensor>& grad_h_n, const Tensor& input,
    const optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& output, const std::string& nonlinearity, bool reverse) {
  constexpr const char* op = "rnnkit::rnn_backward";
  check_on_cuda(input, op);
  checks::floating(input, true, op);
  const gates::Activation act = parse_activation(nonlinearity, op);
  const c10::cuda::CUDAGuard guard(input.device());
  const SequencePlan plan = make_plan(input, batch_sizes, reverse, op);
  const LayerShape d =
      layer_shape(op, 1, input, plan, h0, w_ih, w_hh, c10::nullopt, c10::nullopt, c10::nullopt);
  const int64_t H = d.H;
  saved_shapes(op, input, output, H, nullptr, plan.P, 0);
  grad_shapes(op, grad_output, output, grad_h_n, h0);

  const Tensor x = input.contiguous().view({plan.P, d.I});
  const Tensor out2d = output.contiguous().view({plan.P, H});
  const Tensor h_prev = previous_states(out2d, h0.contiguous(), plan);
  const Tensor gout =
      grad_output.has_value() ? grad_output->contiguous().view({plan.P, H}) : Tensor();
  Tensor dh = grad_h_n.has_value() ? grad_h_n->contiguous().clone() : at::zeros_like(h0);
  Tensor da = at::empty({plan.P, H}, input.options());
  const Tensor wh = w_hh.contiguous();  // [H, H]

  if (!persistent::backward({persistent::Cell::Rnn, &plan, wh, Tensor(), Tensor(), out2d,
                             Tensor(), gout, dh, Tensor(), da, Tensor(), act, nullptr}))
  RNNKIT_DISPATCH_CUDA(input.scalar_type(), "rnnkit_rnn_backward_cuda", [&] {
    for (int64_t s = 0; s < plan.T(); ++s) {
      const int64_t t = plan.backward_step(s), bs = plan.batch_sizes[t], row = plan.offsets[t];
      RnnBackwardStep<scalar_t> step{ptr<scalar_t>(out2d) + row * H,
                                     gout.defined() ? ptr<scalar_t>(gout) + row * H : nullptr,
                                     ptr<scalar_t>(dh), ptr<scalar_t>(da) + row * H, H, act};
      for_each_unit(bs, H, step);
      gemm<scalar_t>(false, false, bs, H, H, 1, ptr<scalar_t>(da) + row * H, H, ptr<scalar_t>(wh), H,
                     0, ptr<scalar_t>(dh), H);
    }
  });
  const WeightGrads g = weight_grads(da, da, x, h_prev, w_ih, input.sizes());
  return {g.input, dh, g.w_ih, g.w_hh, g.b_ih};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkit, CUDA, m) {
  cells::register_rnn<&rnn_forward, &rnn_backward>(m);
}

}  // namespace cuda
}  // namespace rnnkit
